import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { services, uniqueName } from '../../../test/helpers.js';
import { type Change, comparePositions, parsePosition } from '../../core/changes.js';
import { isStrataError } from '../../core/errors.js';
import {
  createPostgresChangeCapture,
  type PostgresCaptureWarning,
  type PostgresChangeCapture,
  type PostgresChangeCaptureOptions,
} from './postgres-change-source.js';
import { createPostgresDriver, type PostgresDriver } from './postgres-driver.js';
import { compareLsns, parseLsn } from './postgres-lsn.js';
import { createPostgresTestDatabase, type PostgresTestDatabase } from './postgres-test-database.js';

/** Polls `condition` every few milliseconds; fails after `timeoutMs` instead of waiting forever. */
async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

function ids(changes: readonly Change[]): unknown[] {
  return changes.map((c) => (c.after ?? c.before)?.id);
}

function expectIncreasing(changes: readonly Change[]): void {
  for (let i = 1; i < changes.length; i++) {
    expect(comparePositions(changes[i - 1]!.position, changes[i]!.position)).toBeLessThan(0);
  }
}

interface Harness {
  capture: PostgresChangeCapture;
  changes: Change[];
  batches: Change[][];
  errors: unknown[];
  warnings: PostgresCaptureWarning[];
}

describe.skipIf(!services.postgres)('postgres change capture', () => {
  let testDb: PostgresTestDatabase;
  let db: PostgresDriver;
  const slots: string[] = [];
  const harnesses: Harness[] = [];

  beforeAll(async () => {
    testDb = await createPostgresTestDatabase({ prefix: 'strata_pg_capture' });
    db = createPostgresDriver(testDb.url);
  });

  afterAll(async () => {
    for (const h of harnesses) await h.capture.stop().catch(() => undefined);
    if (db !== undefined && slots.length > 0) {
      // Slots outlive their connections; drop only the ones these tests created.
      await until(async () => {
        const { rows } = await db.query<{ n: number }>(
          'select count(*)::int as n from pg_replication_slots where slot_name = any($1) and active',
          [slots],
        );
        return rows[0]!.n === 0;
      });
      await db.query(
        'select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = any($1)',
        [slots],
      );
      const { rows } = await db.query(
        'select slot_name from pg_replication_slots where slot_name = any($1)',
        [slots],
      );
      expect(rows).toEqual([]);
    }
    await db?.close();
    await testDb?.drop();
  });

  /** A fresh source name, its slot remembered for cleanup. */
  function newSource(prefix = 'cap'): string {
    const source = uniqueName(prefix).toLowerCase();
    slots.push(`strata_${source}`);
    return source;
  }

  async function start(
    options: Omit<PostgresChangeCaptureOptions, 'url'>,
    behaviour: { ack?: boolean; onBatch?: (batch: Change[], h: Harness) => Promise<void> | void } = {},
  ): Promise<Harness> {
    const errors: unknown[] = [];
    const warnings: PostgresCaptureWarning[] = [];
    const capture = createPostgresChangeCapture({
      url: testDb.url,
      heartbeat: '100ms',
      onError: (err) => errors.push(err),
      onWarning: (w) => warnings.push(w),
      backoff: { initialDelay: 20, maxDelay: 200 },
      ...options,
    });
    const h: Harness = { capture, changes: [], batches: [], errors, warnings };
    harnesses.push(h);
    await capture.start(async (batch) => {
      await behaviour.onBatch?.(batch, h);
      h.batches.push(batch);
      h.changes.push(...batch);
      if (behaviour.ack !== false) await capture.acknowledge(batch[batch.length - 1]!.position);
    });
    return h;
  }

  async function slotState(slot: string): Promise<{ confirmed: string; active: boolean } | undefined> {
    const { rows } = await db.query<{ confirmed: string; active: boolean }>(
      'select confirmed_flush_lsn::text as confirmed, active from pg_replication_slots where slot_name = $1',
      [slot],
    );
    return rows[0];
  }

  describe('validation', () => {
    it('refuses a table that does not exist, naming it, before creating anything', async () => {
      await db.exec('create table v_ok (id int primary key)');
      const source = newSource();
      const capture = createPostgresChangeCapture({
        url: testDb.url,
        source,
        tables: ['v_ok', 'public.v_missing'],
      });
      const err = await capture.start(async () => undefined).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONFIG')).toBe(true);
      expect(err).toMatchObject({ option: 'tables', details: { table: 'public.v_missing' } });
      expect((err as Error).message).toContain('public.v_missing');
      expect(await slotState(`strata_${source}`)).toBeUndefined();
      const pubs = await db.query('select 1 from pg_publication where pubname = $1', [`strata_${source}`]);
      expect(pubs.rows).toEqual([]);

      const twice = createPostgresChangeCapture({ url: testDb.url, source, tables: ['v_ok', 'public.v_ok'] });
      const dup = await twice.start(async () => undefined).catch((e: unknown) => e);
      expect(dup).toMatchObject({ code: 'E_CONFIG', option: 'tables', details: { table: 'public.v_ok' } });
    });

    it('refuses a table without a primary key, naming it, unless REPLICA IDENTITY FULL', async () => {
      await db.exec('create table v_nopk (a int, b text)');
      const source = newSource();
      const capture = createPostgresChangeCapture({ url: testDb.url, source, tables: ['v_nopk'] });
      const err = await capture.start(async () => undefined).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONFIG')).toBe(true);
      expect((err as Error).message).toContain('v_nopk');
      expect(err).toMatchObject({ details: { table: 'v_nopk' } });
      expect(await slotState(`strata_${source}`)).toBeUndefined();

      await db.exec(`insert into v_nopk values (1, 'x')`);
      const h = await start({ source, tables: ['v_nopk'], replicaIdentityFull: true });
      try {
        await until(() => h.changes.length === 1);
        expect(h.changes[0]).toMatchObject({ key: { a: 1, b: 'x' }, snapshot: true });
        await db.exec(`update v_nopk set b = 'y'`);
        await until(() => h.changes.length === 3);
        // The whole row is the identity: a changed row is a different row.
        expect(h.changes.slice(1).map((c) => [c.op, c.key])).toEqual([
          ['delete', { a: 1, b: 'x' }],
          ['insert', { a: 1, b: 'y' }],
        ]);
      } finally {
        await h.capture.drop();
      }
    });

    it('reports an unreachable server as E_CONNECTION naming host and port', async () => {
      const probe = createServer();
      const port = await new Promise<number>((resolve) =>
        probe.listen(0, '127.0.0.1', () => resolve((probe.address() as { port: number }).port)),
      );
      await new Promise((r) => probe.close(r));
      const capture = createPostgresChangeCapture({
        url: `postgres://postgres@127.0.0.1:${port}/postgres`,
        source: 'unreachable',
        tables: ['t'],
        connectTimeout: '1s',
      });
      const err = await capture.start(async () => undefined).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
      expect((err as Error).message).toContain(`127.0.0.1:${port}`);
      await capture.stop();
    });

    it('refuses to start twice and stops twice without harm', async () => {
      await db.exec('create table v_twice (id int primary key)');
      const h = await start({ source: newSource(), tables: ['v_twice'] });
      try {
        const err = await h.capture.start(async () => undefined).catch((e: unknown) => e);
        expect(isStrataError(err, 'E_CONFLICT')).toBe(true);
        await Promise.all([h.capture.stop(), h.capture.stop()]);
        await h.capture.stop();
        expect(h.capture.stats().status).toBe('stopped');
      } finally {
        await h.capture.drop();
      }
    });
  });

  describe('snapshot and stream', () => {
    it('delivers existing rows as snapshot inserts, then streamed changes, in position order', async () => {
      await db.exec(`
        create table s_users (id int primary key, name text not null, score int8);
        create table s_orders (id int primary key, user_id int not null, amount numeric);
        insert into s_users select g, 'user' || g, 9007199254740993 from generate_series(1, 5) g;
        insert into s_orders select g, g, 10.5 from generate_series(1, 3) g;`);
      const source = newSource();
      const h = await start({ source, tables: ['s_users', 'public.s_orders'], batchSize: 2 });
      try {
        await until(() => h.changes.length === 8);
        const snap = h.changes;
        expect(snap.every((c) => c.snapshot === true && c.op === 'insert' && c.before === null)).toBe(true);
        expect(h.batches.every((b) => b.length <= 2)).toBe(true);
        expect(snap.map((c) => c.table)).toEqual([
          ...Array(5).fill('s_users'),
          ...Array(3).fill('public.s_orders'),
        ]);
        expect(ids(snap)).toEqual([1, 2, 3, 4, 5, 1, 2, 3]);
        expect(snap[0]).toMatchObject({
          source,
          key: { id: 1 },
          after: { id: 1, name: 'user1', score: 9007199254740993n },
          txId: null,
        });
        expect(snap[5]!.after).toEqual({ id: 1, user_id: 1, amount: '10.5' });
        expectIncreasing(snap);
        const majors = new Set(snap.map((c) => parsePosition(c.position).major));
        expect(majors.size).toBe(1);

        await until(async () => (await h.capture.stats()).snapshot.state === 'done');
        const state = await db.query<{ snapshot_done: boolean }>(
          'select snapshot_done from strata_capture_state where source = $1',
          [source],
        );
        expect(state.rows).toEqual([{ snapshot_done: true }]);

        const before = Date.now();
        await db.transaction(async (tx) => {
          await tx.query(`insert into s_users values (6, 'six', 1)`);
          await tx.query(`update s_users set name = 'one' where id = 1`);
          await tx.query(`delete from s_orders where id = 3`);
        });
        await db.exec(`insert into s_orders values (4, 6, 1)`);
        await until(() => h.changes.length === 12);
        const streamed = h.changes.slice(8);
        expect(streamed.map((c) => [c.table, c.op, c.key])).toEqual([
          ['s_users', 'insert', { id: 6 }],
          ['s_users', 'update', { id: 1 }],
          ['public.s_orders', 'delete', { id: 3 }],
          ['public.s_orders', 'insert', { id: 4 }],
        ]);
        expect(streamed[0]).toMatchObject({ before: null, after: { id: 6, name: 'six', score: 1 } });
        expect(streamed[1]).toMatchObject({
          before: null,
          after: { id: 1, name: 'one', score: 9007199254740993n },
        });
        expect(streamed[2]).toMatchObject({ before: { id: 3 }, after: null });
        expect(streamed.every((c) => c.snapshot === undefined && typeof c.txId === 'string')).toBe(true);
        expect(streamed[0]!.txId).toBe(streamed[2]!.txId);
        expect(streamed[3]!.txId).not.toBe(streamed[0]!.txId);
        expect(streamed[0]!.commitTime).toBeGreaterThanOrEqual(before - 5_000);
        expect(streamed.slice(0, 3).map((c) => parsePosition(c.position).minor)).toEqual([0, 1, 2]);
        expect(new Set(streamed.slice(0, 3).map((c) => parsePosition(c.position).major)).size).toBe(1);
        expectIncreasing(h.changes);
        expect(h.errors).toEqual([]);
      } finally {
        await h.capture.drop();
      }
    });

    it('neither loses nor duplicates a row inserted while the snapshot is taken', async () => {
      await db.exec(`create table s_race (id int primary key);
        insert into s_race select generate_series(1, 200);`);
      const writer = createPostgresDriver(testDb.url);
      let next = 201;
      let writing = true;
      const writes = (async () => {
        while (writing) await writer.query('insert into s_race values ($1)', [next++]);
      })();
      let h: Harness | undefined;
      try {
        await until(() => next > 230);
        h = await start({ source: newSource(), tables: ['s_race'], batchSize: 50 });
        const capture = h;
        await until(() => capture.changes.some((c) => !c.snapshot));
        writing = false;
        await writes;
        const last = next - 1;
        await until(() => capture.changes.some((c) => c.key.id === last));
        const seen = capture.changes.map((c) => c.key.id as number);
        expect(seen.length).toBe(last);
        expect(new Set(seen).size).toBe(last);
        expect(capture.changes.filter((c) => c.snapshot).length).toBeGreaterThanOrEqual(230);
        expectIncreasing(capture.changes);
      } finally {
        writing = false;
        await writes;
        await writer.close();
        await h?.capture.drop();
      }
    });

    it('delivers an update that changes the primary key as a delete and an insert', async () => {
      await db.exec(`create table s_rekey (id int primary key, v text)`);
      const h = await start({ source: newSource(), tables: ['s_rekey'], snapshot: false });
      try {
        await db.exec(`insert into s_rekey values (1, 'a'); update s_rekey set id = 2 where id = 1;`);
        await until(() => h.changes.length === 3);
        expect(h.changes.map((c) => [c.op, c.key, c.before, c.after])).toEqual([
          ['insert', { id: 1 }, null, { id: 1, v: 'a' }],
          ['delete', { id: 1 }, { id: 1 }, null],
          ['insert', { id: 2 }, null, { id: 2, v: 'a' }],
        ]);
      } finally {
        await h.capture.drop();
      }
    });
  });

  describe('acknowledgement', () => {
    it('confirms the slot only on acknowledge; what was not acknowledged comes again after a restart', async () => {
      await db.exec('create table a_rows (id int primary key)');
      const source = newSource();
      const slot = `strata_${source}`;
      const first = await start({ source, tables: ['a_rows'], snapshot: false }, { ack: false });
      const created = (await slotState(slot))!.confirmed;
      for (const id of [1, 2, 3]) await db.query('insert into a_rows values ($1)', [id]);
      await until(() => first.changes.length === 3);
      // Received, and a keepalive past it too, yet not confirmed.
      await db.exec('create table a_other (id int); insert into a_other values (1)');
      const { rows } = await db.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn');
      await until(() => compareLsns(first.capture.stats().receivedLsn ?? '0/0', rows[0]!.lsn) >= 0);
      expect((await slotState(slot))!.confirmed).toBe(created);
      await first.capture.stop();
      expect((await slotState(slot))!.confirmed).toBe(created);

      const second = await start({ source, tables: ['a_rows'], snapshot: false }, { ack: false });
      await until(() => second.changes.length === 3);
      expect(second.changes.map((c) => c.position)).toEqual(first.changes.map((c) => c.position));
      expect((await slotState(slot))!.confirmed).toBe(created);
      const last = second.changes[2]!.position;
      await second.capture.acknowledge(last);
      const commitLsn = parsePosition(last).major;
      await until(async () => parseLsn((await slotState(slot))!.confirmed) > commitLsn);
      await second.capture.stop();

      const third = await start({ source, tables: ['a_rows'], snapshot: false });
      try {
        await db.query('insert into a_rows values (4)');
        await until(() => third.changes.length >= 1);
        expect(ids(third.changes)).toEqual([4]);
      } finally {
        await third.capture.drop();
      }
    });

    it('gives a failing callback the same batch again while the slot keeps its position', async () => {
      await db.exec('create table a_fail (id int primary key)');
      const source = newSource();
      const slot = `strata_${source}`;
      let failures = 0;
      let logDown = true;
      const h = await start(
        { source, tables: ['a_fail'], snapshot: false },
        {
          onBatch: (batch) => {
            if (logDown) {
              failures++;
              throw new Error(`log down (${batch.length})`);
            }
          },
        },
      );
      try {
        const confirmed = (await slotState(slot))!.confirmed;
        await db.exec('insert into a_fail values (1), (2)');
        await until(() => failures >= 3);
        expect((await slotState(slot))!.confirmed).toBe(confirmed);
        expect(h.changes).toEqual([]);
        logDown = false;
        await until(() => h.changes.length === 2);
        expect(ids(h.changes)).toEqual([1, 2]);
        expect(h.errors.length).toBeGreaterThanOrEqual(3);
        expect(h.errors.every((e) => (e as Error).message.startsWith('log down'))).toBe(true);
        await until(async () => compareLsns((await slotState(slot))!.confirmed, confirmed) > 0);
      } finally {
        await h.capture.drop();
      }
    });
  });

  describe('column handling', () => {
    it('lists unchanged TOASTed columns instead of inventing them', async () => {
      await db.exec('create table c_toast (id int primary key, big text, n int)');
      const big = randomBytes(15_000).toString('base64');
      const h = await start({ source: newSource(), tables: ['c_toast'], snapshot: false });
      try {
        await db.query('insert into c_toast values (1, $1, 1)', [big]);
        await db.exec('update c_toast set n = 2 where id = 1');
        await until(() => h.changes.length === 2);
        expect(h.changes[0]!.after).toEqual({ id: 1, big, n: 1 });
        expect(h.changes[1]).toMatchObject({ op: 'update', after: { id: 1, n: 2 }, unchanged: ['big'] });
        expect(h.changes[1]!.after).not.toHaveProperty('big');
      } finally {
        await h.capture.drop();
      }
    });

    it('fills unchanged TOASTed columns from the old row under REPLICA IDENTITY FULL', async () => {
      await db.exec('create table c_toast_full (id int primary key, big text, n int)');
      const big = randomBytes(15_000).toString('base64');
      await db.query('insert into c_toast_full values (1, $1, 1)', [big]);
      const h = await start({
        source: newSource(),
        tables: ['c_toast_full'],
        snapshot: false,
        replicaIdentityFull: true,
      });
      try {
        await db.exec('update c_toast_full set n = 2 where id = 1');
        await until(() => h.changes.length === 1);
        const [update] = h.changes;
        expect(update).toMatchObject({
          op: 'update',
          before: { id: 1, big, n: 1 },
          after: { id: 1, big, n: 2 },
        });
        expect(update!.unchanged).toBeUndefined();
      } finally {
        await h.capture.drop();
      }
    });

    it('streams a column added while it runs, without a restart', async () => {
      await db.exec('create table c_alter (id int primary key)');
      const h = await start({ source: newSource(), tables: ['c_alter'], snapshot: false });
      try {
        await db.exec('insert into c_alter values (1)');
        await until(() => h.changes.length === 1);
        await db.exec(
          `alter table c_alter add column label text default 'x'; insert into c_alter values (2, 'two');`,
        );
        await db.exec(`update c_alter set label = 'one' where id = 1`);
        await until(() => h.changes.length === 3);
        expect(h.changes.map((c) => c.after)).toEqual([
          { id: 1 },
          { id: 2, label: 'two' },
          { id: 1, label: 'one' },
        ]);
      } finally {
        await h.capture.drop();
      }
    });

    it('warns about a truncate instead of delivering it', async () => {
      await db.exec('create table c_trunc (id int primary key); insert into c_trunc values (1)');
      const h = await start({ source: newSource(), tables: ['c_trunc'], snapshot: false });
      try {
        await db.exec('truncate c_trunc; insert into c_trunc values (2)');
        await until(() => h.changes.length === 1);
        expect(ids(h.changes)).toEqual([2]);
        expect(h.warnings).toContainEqual(expect.objectContaining({ code: 'W_TRUNCATE', table: 'c_trunc' }));
      } finally {
        await h.capture.drop();
      }
    });
  });

  describe('slot health', () => {
    it('advances an idle slot while another database writes WAL', async () => {
      await db.exec('create table h_idle (id int primary key)');
      const source = newSource();
      const slot = `strata_${source}`;
      const other = await createPostgresTestDatabase({ prefix: 'strata_pg_capture_other' });
      const otherDb = createPostgresDriver(other.url);
      const h = await start({ source, tables: ['h_idle'], snapshot: false });
      try {
        const startedAt = (await slotState(slot))!.confirmed;
        await otherDb.exec('create table busy (id int); insert into busy select generate_series(1, 1000);');
        const { rows } = await otherDb.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn');
        const written = rows[0]!.lsn;
        expect(compareLsns(written, startedAt)).toBeGreaterThan(0);
        await until(async () => compareLsns((await slotState(slot))!.confirmed, written) >= 0);
        expect(h.changes).toEqual([]);
      } finally {
        await h.capture.drop();
        await otherDb.close();
        await other.drop();
      }
    });

    it('warns with the retained WAL size when the slot falls behind', async () => {
      await db.exec('create table h_lag (id int primary key)');
      const h = await start({
        source: newSource(),
        tables: ['h_lag'],
        snapshot: false,
        lagWarning: { bytes: 1 },
      });
      try {
        await db.exec('insert into h_lag select generate_series(1, 100)');
        await until(() => h.warnings.some((w) => w.code === 'W_SLOT_LAG'));
        const warning = h.warnings.find((w) => w.code === 'W_SLOT_LAG')!;
        expect(warning.slot).toBe(h.capture.slot);
        expect(warning.retainedBytes).toBeGreaterThan(1);
        expect(h.capture.stats().retainedBytes).toBeGreaterThan(1);
      } finally {
        await h.capture.drop();
      }
    });

    it('reopens a terminated stream and resumes from the confirmed position without losing a change', async () => {
      await db.exec('create table h_kill (id int primary key)');
      const source = newSource();
      const slot = `strata_${source}`;
      const h = await start({ source, tables: ['h_kill'], snapshot: false, batchSize: 3 });
      try {
        let id = 0;
        const insert = async (n: number) => {
          for (let i = 0; i < n; i++) await db.query('insert into h_kill values ($1)', [++id]);
        };
        await insert(20);
        await until(() => h.changes.length >= 10);
        const { rows } = await db.query<{ pid: number }>(
          'select pg_terminate_backend(active_pid) as pid from pg_replication_slots where slot_name = $1 and active',
          [slot],
        );
        expect(rows).toHaveLength(1);
        await insert(20);
        await until(() => h.capture.stats().reconnects >= 1);
        await insert(20);
        await until(() => h.changes.some((c) => c.key.id === 60));
        const firstSeen: number[] = [];
        for (const c of h.changes)
          if (!firstSeen.includes(c.key.id as number)) firstSeen.push(c.key.id as number);
        expect(firstSeen).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
        // Redeliveries repeat positions; they never go back past an acknowledged one.
        const distinct = [...new Set(h.changes.map((c) => c.position))];
        expectIncreasing(distinct.map((position) => ({ position }) as Change));
        expect(h.errors.some((e) => isStrataError(e, 'E_CONNECTION'))).toBe(true);
      } finally {
        await h.capture.drop();
      }
    });

    it('after dying mid-snapshot, keeps the slot, numbers new rows after the old ones and streams the gap', async () => {
      await db.exec(`create table h_crash (id int primary key, v text);
        insert into h_crash select g, 'v' || g from generate_series(1, 6) g;`);
      const source = newSource();
      const slot = `strata_${source}`;
      let stopping: Promise<void> | undefined;
      const first = await start(
        { source, tables: ['h_crash'], batchSize: 2 },
        {
          onBatch: (_batch, self) => {
            stopping ??= self.capture.stop();
          },
        },
      );
      await until(() => stopping !== undefined);
      await stopping;
      expect(first.changes).toHaveLength(2);
      const state = await db.query<{ snapshot_done: boolean }>(
        'select snapshot_done from strata_capture_state where source = $1',
        [source],
      );
      expect(state.rows).toEqual([{ snapshot_done: false }]);
      const kept = (await slotState(slot))!.confirmed;

      await db.exec(`delete from h_crash where id = 1; update h_crash set v = 'six' where id = 6;
        insert into h_crash values (10, 'ten');`);
      const second = await start({ source, tables: ['h_crash'], batchSize: 2 });
      try {
        await until(() => second.changes.filter((c) => !c.snapshot).length === 3);
        const snap = second.changes.filter((c) => c.snapshot);
        expect(ids(snap)).toEqual([2, 3, 4, 5, 6, 10]);
        expect(comparePositions(snap[0]!.position, first.changes[1]!.position)).toBeGreaterThan(0);
        const streamed = second.changes.filter((c) => !c.snapshot);
        expect(streamed.map((c) => [c.op, c.key])).toEqual([
          ['delete', { id: 1 }],
          ['update', { id: 6 }],
          ['insert', { id: 10 }],
        ]);
        expectIncreasing(second.changes);
        expect(parseLsn((await slotState(slot))!.confirmed) >= parseLsn(kept)).toBe(true);
        await until(() => second.capture.stats().snapshot.state === 'done');
      } finally {
        await second.capture.drop();
      }
    });
  });

  describe('management', () => {
    it('alters the publication when the table list changes', async () => {
      await db.exec('create table m_a (id int primary key); create table m_b (id int primary key)');
      const source = newSource();
      const one = await start({ source, tables: ['m_a'] });
      await one.capture.stop();
      const two = await start({ source, tables: ['m_a', 'm_b'] });
      try {
        const { rows } = await db.query<{ tablename: string }>(
          'select tablename::text from pg_publication_tables where pubname = $1 order by 1',
          [`strata_${source}`],
        );
        expect(rows.map((r) => r.tablename)).toEqual(['m_a', 'm_b']);
        await db.exec('insert into m_b values (1)');
        await until(() => two.changes.length === 1);
        expect(two.changes[0]).toMatchObject({ table: 'm_b', op: 'insert', key: { id: 1 } });
      } finally {
        await two.capture.drop();
      }
    });

    it('stop waits for the running callback, then closes the stream', async () => {
      await db.exec('create table m_stop (id int primary key)');
      const source = newSource();
      let release!: () => void;
      const released = new Promise<void>((r) => {
        release = r;
      });
      const order: string[] = [];
      const h = await start(
        { source, tables: ['m_stop'], snapshot: false },
        {
          onBatch: async () => {
            order.push('callback started');
            await released;
            order.push('callback settled');
          },
        },
      );
      try {
        await db.exec('insert into m_stop values (1)');
        await until(() => order.length === 1);
        const stopped = h.capture.stop().then(() => order.push('stopped'));
        // The stream stays open while the callback runs.
        expect((await slotState(`strata_${source}`))!.active).toBe(true);
        expect(order).toEqual(['callback started']);
        release();
        await stopped;
        expect(order).toEqual(['callback started', 'callback settled', 'stopped']);
        await until(async () => (await slotState(`strata_${source}`))!.active === false);
      } finally {
        release();
        await h.capture.drop();
      }
    });

    it('drop removes the slot, the publication and the snapshot record', async () => {
      await db.exec('create table m_drop (id int primary key)');
      const source = newSource();
      const h = await start({ source, tables: ['m_drop'] });
      expect(await slotState(`strata_${source}`)).toBeDefined();
      await h.capture.drop();
      expect(await slotState(`strata_${source}`)).toBeUndefined();
      const pubs = await db.query('select 1 from pg_publication where pubname = $1', [`strata_${source}`]);
      expect(pubs.rows).toEqual([]);
      const state = await db.query('select 1 from strata_capture_state where source = $1', [source]);
      expect(state.rows).toEqual([]);
    });
  });
});
