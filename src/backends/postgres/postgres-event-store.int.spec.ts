import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { raceTwoProcesses } from '../../../test/fixtures/event-store-race.js';
import { services, uniqueName } from '../../../test/helpers.js';
import { createConsumer } from '../../changes/consumer.js';
import { createSqlCheckpointStore } from '../../changes/sql-checkpoint-store.js';
import type { LogEntry } from '../../core/changes.js';
import { isStrataError } from '../../core/errors.js';
import type { SqlTransaction } from '../../core/sql.js';
import type { RecordedEvent } from '../../events/types.js';
import { describeEventStoreConformance } from '../../testing/event-store-conformance.js';
import { createPostgresDriver, type PostgresDriver } from './postgres-driver.js';
import {
  createPostgresEventStore,
  type PostgresEventStore,
  type PostgresEventStoreOptions,
  type PostgresEventStoreWarning,
} from './postgres-event-store.js';
import { createPostgresTestDatabase, type PostgresTestDatabase } from './postgres-test-database.js';

async function until(condition: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A promise with its resolve function, to hold a transaction open until the test says so. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open: () => void = () => undefined;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

describe.skipIf(!services.postgres)('postgres event store', () => {
  let testDb: PostgresTestDatabase;
  let driver: PostgresDriver;
  const drivers: PostgresDriver[] = [];
  const stores: PostgresEventStore[] = [];

  const store = async (options: Partial<PostgresEventStoreOptions> = {}, on = driver) => {
    const s = createPostgresEventStore({
      driver: on,
      tablePrefix: uniqueName('es').slice(0, 40),
      ...options,
    });
    stores.push(s);
    await s.migrate();
    return s;
  };

  beforeAll(async () => {
    testDb = await createPostgresTestDatabase({ prefix: 'strata_events' });
    driver = createPostgresDriver({ url: testDb.url, maxConnections: 24 });
    drivers.push(driver);
  });

  afterAll(async () => {
    for (const s of stores) await s.close();
    for (const d of drivers) await d.close();
    await testDb?.drop();
  });

  describeEventStoreConformance('postgres', (options) => createPostgresEventStore({ driver, ...options }));

  it('chaos: 16 writers, rollbacks, transactions held open and direct appends; the subscriber gets every committed event exactly once, a naive reader skips', async () => {
    const s = await store();
    const table = `"${s.name}"`;
    const streams = Array.from({ length: 32 }, (_, i) => `chaos-${i}`);
    const committed = new Set<string>();
    const rolledBack = new Set<string>();
    let held = 0;
    let conflicts = 0;
    class Rollback extends Error {}
    const deadline = Date.now() + 6_000;

    const writer = async (w: number) => {
      for (let i = 0; Date.now() < deadline; i++) {
        const stream = streams[Math.floor(Math.random() * streams.length)]!;
        const ids = Array.from({ length: 1 + Math.floor(Math.random() * 3) }, (_, k) => `w${w}-${i}-${k}`);
        const roll = Math.random();
        const exact = Math.random() < 0.3 ? ((await s.streamInfo(stream))?.version ?? 0) : undefined;
        const events = ids.map((id) => ({ id, type: 'Chaos', data: { w, i } }));
        const expected = exact === undefined ? {} : { expected: exact };
        try {
          if (roll >= 0.5 && roll <= 0.8) {
            // The store's own transaction, in one round trip, maybe together with other writers'.
            await s.append(stream, events, expected);
            for (const id of ids) committed.add(id);
            continue;
          }
          await driver.transaction(async (tx) => {
            await s.append(stream, events, { executor: tx, ...expected });
            if (roll < 0.08) {
              held++;
              await sleep(1_000 + Math.random() * 2_000);
            }
            if (roll > 0.8) throw new Rollback();
          });
          for (const id of ids) committed.add(id);
        } catch (err) {
          if (err instanceof Rollback) for (const id of ids) rolledBack.add(id);
          else if (isStrataError(err, 'E_VERSION_CONFLICT')) conflicts++;
          else throw err;
        }
      }
    };

    let writing = true;
    const seen: RecordedEvent[] = [];
    const subscriber = async () => {
      let after = 0;
      for (;;) {
        // Decided before the read: an empty read that began while a writer was in flight proves nothing.
        const last = !writing;
        const batch = await s.readAll(after, 100);
        seen.push(...batch);
        if (batch.length > 0) after = batch.at(-1)!.position;
        else if (last) return;
        else await sleep(2);
      }
    };
    // The mistake the store avoids: "everything after the last position I saw".
    const naive = new Set<string>();
    const naiveReader = async () => {
      let after = 0;
      for (;;) {
        const last = !writing;
        const { rows } = await driver.query<{ position: number; id: string }>(
          `select position, id from ${table} where position > $1 order by position limit 100`,
          [after],
        );
        for (const row of rows) naive.add(row.id);
        if (rows.length > 0) after = rows.at(-1)!.position;
        else if (last) return;
        else await sleep(2);
      }
    };

    const readers = [subscriber(), naiveReader()];
    await Promise.all(Array.from({ length: 16 }, (_, w) => writer(w)));
    writing = false;
    await Promise.all(readers);

    expect(held).toBeGreaterThan(0);
    expect(rolledBack.size).toBeGreaterThan(0);
    expect(committed.size).toBeGreaterThan(100);
    const ids = seen.map((e) => e.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.filter((id) => !committed.has(id))).toEqual([]);
    expect([...committed].filter((id) => !ids.includes(id))).toEqual([]);
    for (let i = 1; i < seen.length; i++) expect(seen[i]!.position).toBeGreaterThan(seen[i - 1]!.position);
    for (const stream of streams) {
      const versions = seen.filter((e) => e.stream === stream).map((e) => e.version);
      expect(versions).toEqual(versions.map((_, i) => i + 1));
    }
    const skipped = [...committed].filter((id) => !naive.has(id));
    expect(skipped.length).toBeGreaterThan(0);
    console.info(
      `chaos: ${committed.size} committed, ${rolledBack.size} rolled back, ${held} held, ${conflicts} conflicts; naive reader skipped ${skipped.length}`,
    );
  });

  it('holds readers back where a transaction-id (xmin) filter alone would skip, and names the transaction', async () => {
    const s = await store();
    const [first] = (await s.append('before-1', [{ type: 'E0', data: {} }])).positions;
    const xGate = gate();
    const yGate = gate();
    const xAppended = gate();
    const yHasXid = gate();
    let xPid = 0;
    let xXid = '';
    // Y takes its transaction id first, then appends after X has taken a lower position.
    const y = driver.transaction(async (tx) => {
      await tx.query('select pg_current_xact_id()');
      yHasXid.open();
      await yGate.promise;
      await s.append('y-1', [{ id: 'y', type: 'Y', data: {} }], { executor: tx });
    });
    await yHasXid.promise;
    const x = driver.transaction(async (tx: SqlTransaction) => {
      await s.append('x-1', [{ id: 'x', type: 'X', data: {} }], { executor: tx });
      const { rows } = await tx.query<{ pid: number; xid: string }>(
        'select pg_backend_pid() as pid, backend_xid::text as xid from pg_stat_activity where pid = pg_backend_pid()',
      );
      xPid = rows[0]!.pid;
      xXid = rows[0]!.xid;
      xAppended.open();
      await xGate.promise;
    });
    try {
      await xAppended.promise;
      yGate.open();
      await y;

      // A reader trusting `tx < xmin` would now return y and move past x's lower position. (Other
      // transactions of the cluster, autovacuum's among them, can lower xmin for a while: wait.)
      await until(async () => {
        const { rows } = await driver.query<{ id: string }>(
          `select id from "${s.name}" where tx < pg_snapshot_xmin(pg_current_snapshot()) and position > $1 order by position`,
          [first],
        );
        return rows.map((r) => r.id).join() === 'y';
      }, 'a transaction-id reader to see y');
      expect(await s.readAll(first!, 10)).toEqual([]);
      expect(await s.head()).toBe(first);
      const blocking = await s.blockedBy();
      expect(blocking).toMatchObject({ pid: xPid, xid: xXid, position: first! + 1 });
      expect(blocking!.since).toBeLessThanOrEqual(Date.now() + 1_000);

      xGate.open();
      await x;
      expect((await s.readAll(first!, 10)).map((e) => e.id)).toEqual(['x', 'y']);
      expect(await s.blockedBy()).toBeUndefined();
    } finally {
      // A failed assertion must not leave a transaction (and its pooled connection) open.
      yGate.open();
      xGate.open();
      await Promise.allSettled([x, y]);
    }
  });

  it('warns once when a transaction holds readers back longer than longTransactionWarning', async () => {
    const warnings: PostgresEventStoreWarning[] = [];
    const s = await store({ longTransactionWarning: '200ms', onWarning: (w) => warnings.push(w) });
    const release = gate();
    const appended = gate();
    let pid = 0;
    const held = driver.transaction(async (tx) => {
      await s.append('long-1', [{ type: 'Held', data: {} }], { executor: tx });
      pid = (await tx.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      appended.open();
      await release.promise;
    });
    try {
      await appended.promise;
      await s.append('short-1', [{ type: 'Quick', data: {} }]);
      await until(async () => {
        await s.head();
        return warnings.length > 0;
      }, 'the long-transaction warning');
      expect(warnings[0]).toMatchObject({ code: 'W_LONG_TRANSACTION', pid, position: 1 });
      expect(warnings[0]!.ageMs).toBeGreaterThanOrEqual(200);
      expect(warnings[0]!.message).not.toContain('long-1');
      for (let i = 0; i < 5; i++) await s.head();
      expect(warnings).toHaveLength(1);
    } finally {
      release.open();
      await held;
    }
    expect((await s.readAll(0, 10)).map((e) => e.stream)).toEqual(['long-1', 'short-1']);
  });

  it('feeds the consumer runtime: catch-up, then live woken by NOTIFY well before a 10s poll, with dead letters', async () => {
    const prefix = uniqueName('sub').slice(0, 40);
    const reader = await store({ tablePrefix: prefix });
    const otherDriver = createPostgresDriver({ url: testDb.url, maxConnections: 2 });
    drivers.push(otherDriver);
    const writer = await store({ tablePrefix: prefix }, otherDriver);
    const checkpoints = createSqlCheckpointStore(driver, { tablePrefix: `${prefix}_cp` });
    await checkpoints.migrate();
    for (let i = 0; i < 10; i++) {
      await writer.append(`acct-${i % 3}`, [{ type: 'Deposited', data: { i, poison: i === 4 } }]);
    }
    const handled: LogEntry[] = [];
    const consumer = createConsumer({
      name: 'balances',
      log: reader.asChangeLog(),
      checkpoints,
      pollInterval: '10s',
      retry: { attempts: 2, initialDelay: 5, maxDelay: 10 },
      handle: (entry) => {
        const event = entry.after as unknown as RecordedEvent;
        if (event.data.poison === true) throw new Error('cannot handle this one');
        handled.push(entry);
      },
    });
    await consumer.start();
    try {
      await until(() => handled.length === 9, 'the catch-up');
      // Live: appended through another pool, so only the notification can wake this reader.
      await until(async () => {
        const { rows } = await driver.query<{ n: number }>(
          `select count(*)::int as n from pg_stat_activity where datname = current_database() and query = $1`,
          [`LISTEN "${reader.name}"`],
        );
        return rows[0]!.n > 0;
      }, 'the listening connection');
      const started = Date.now();
      await writer.append('acct-9', [{ type: 'Deposited', data: { i: 10 } }]);
      await until(() => handled.length === 10, 'the live event', 5_000);
      expect(Date.now() - started).toBeLessThan(5_000);
      await consumer.drained();
      const head = await reader.head();
      expect((await checkpoints.load('balances'))?.offset).toBe(head);
      const letters = await checkpoints.deadLetters('balances');
      expect(letters).toHaveLength(1);
      expect(letters[0]!.entry.after).toMatchObject({ stream: 'acct-1', data: { i: 4, poison: true } });
      // Per stream, in version order.
      for (const stream of ['acct-0', 'acct-1', 'acct-2']) {
        const versions = handled
          .filter((e) => e.key.stream === stream)
          .map((e) => (e.after as { version: number }).version);
        expect(versions).toEqual([...versions].sort((a, b) => a - b));
      }
    } finally {
      await consumer.stop();
    }
  });

  it('reconnects its listening connection after the server drops it', async () => {
    const errors: unknown[] = [];
    const prefix = uniqueName('lis').slice(0, 40);
    const s = await store({ tablePrefix: prefix, onBackgroundError: (err) => errors.push(err) });
    const otherDriver = createPostgresDriver({ url: testDb.url, maxConnections: 2 });
    drivers.push(otherDriver);
    const writer = await store({ tablePrefix: prefix }, otherDriver);
    let woken = 0;
    const stop = s.watch(() => {
      woken++;
    });
    const listenerPid = async () => {
      const { rows } = await driver.query<{ pid: number }>(
        'select pid from pg_stat_activity where datname = current_database() and query = $1',
        [`LISTEN "${s.name}"`],
      );
      return rows[0]?.pid;
    };
    try {
      await until(async () => (await listenerPid()) !== undefined, 'the listening connection');
      const pid = (await listenerPid())!;
      await driver.query('select pg_terminate_backend($1)', [pid]);
      await until(async () => {
        const next = await listenerPid();
        return next !== undefined && next !== pid;
      }, 'a new listening connection');
      await until(() => errors.some((e) => isStrataError(e, 'E_CONNECTION')), 'the reported connection loss');
      await sleep(50);
      const before = woken;
      await writer.append('wake-1', [{ type: 'Wake', data: {} }]);
      await until(() => woken > before, 'a notification on the new connection', 5_000);
    } finally {
      stop();
    }
  });

  it('two processes racing on one stream with the same expected version: exactly one wins', async () => {
    const s = await store();
    await s.append('race-1', [{ type: 'Started', data: {} }]);
    const prefix = s.name.replace(/_events$/, '');
    const outcomes = await raceTwoProcesses('postgres', testDb.url, prefix, 'race-1', 1);
    expect(outcomes.filter((o) => o.ok)).toEqual([{ ok: true, version: 2 }]);
    expect(outcomes.filter((o) => !o.ok)).toEqual([
      { ok: false, code: 'E_VERSION_CONFLICT', details: { stream: 'race-1', expected: 1, actual: 2 } },
    ]);
    expect((await s.readStream('race-1')).map((e) => e.type)).toEqual(['Started', 'Raced']);
  }, 60_000);

  it('appends inside the caller transaction: committed with it, or rolled back with it', async () => {
    const s = await store();
    await expect(
      driver.transaction(async (tx) => {
        await s.append('tx-1', [{ type: 'A', data: {} }], { executor: tx });
        throw new Error('changed my mind');
      }),
    ).rejects.toThrow('changed my mind');
    expect(await s.streamInfo('tx-1')).toBeUndefined();
    expect(await s.head()).toBe(0);
    await driver.transaction(async (tx) => {
      await s.append('tx-1', [{ type: 'A', data: {} }], { executor: tx, expected: 'no_stream' });
      await s.append('tx-2', [{ type: 'B', data: {} }], { executor: tx, expected: 'no_stream' });
    });
    expect((await s.readAll(0, 10)).map((e) => e.stream)).toEqual(['tx-1', 'tx-2']);
    const row = (await driver.query<{ tx: string }>(`select tx::text as tx from "${s.name}" limit 1`))
      .rows[0];
    expect((await s.asChangeLog().read(0, 1))[0]?.txId).toBe(row?.tx);
  });

  it('commits appends made together in one transaction, each succeeding or failing on its own', async () => {
    const s = await store();
    await s.append('gone-1', [{ type: 'A', data: {} }]);
    await s.deleteStream('gone-1');
    await s.append('kept-1', [{ id: 'retry-1', type: 'A', data: { n: 1 } }]);
    await s.append('kept-2', [{ id: 'taken-1', type: 'A', data: { n: 1 } }]);
    await s.append('race-1', [{ type: 'A', data: {} }]);
    const before = await s.head();
    // Started in one turn of the event loop, so they reach the server together.
    const settled = await Promise.allSettled([
      ...Array.from({ length: 8 }, (_, i) =>
        s.append(
          `new-${i}`,
          [
            { type: 'B', data: { i } },
            { type: 'C', data: { i } },
          ],
          { expected: 'no_stream' },
        ),
      ),
      s.append('ghost-1', [{ type: 'B', data: {} }], { expected: 5 }),
      s.append('ghost-2', [{ type: 'B', data: {} }], { expected: 'stream_exists' }),
      s.append('gone-1', [{ type: 'B', data: {} }]),
      s.append('kept-1', [{ id: 'retry-1', type: 'A', data: { n: 1 } }]),
      s.append('other-1', [{ id: 'taken-1', type: 'A', data: { n: 1 } }]),
      s.append('race-1', [{ type: 'B', data: { who: 1 } }], { expected: 1 }),
      s.append('race-1', [{ type: 'B', data: { who: 2 } }], { expected: 1 }),
      s.appendMany([
        { stream: 'many-1', expected: 'no_stream', events: [{ type: 'B', data: {} }] },
        { stream: 'many-2', expected: 3, events: [{ type: 'B', data: {} }] },
      ]),
    ]);
    const [news, rest] = [settled.slice(0, 8), settled.slice(8)];
    const failure = (r: PromiseSettledResult<unknown> | undefined) =>
      r?.status === 'rejected' ? (r.reason as { code?: string; details?: unknown }) : undefined;

    for (const [i, r] of news.entries()) {
      expect(r.status).toBe('fulfilled');
      const events = await s.readStream(`new-${i}`);
      expect(r.status === 'fulfilled' && r.value).toEqual({
        version: 2,
        positions: events.map((e) => e.position),
        alreadyAppended: false,
      });
    }
    expect(failure(rest[0])).toMatchObject({
      code: 'E_VERSION_CONFLICT',
      details: { stream: 'ghost-1', expected: 5, actual: 0 },
    });
    expect(failure(rest[1])).toMatchObject({
      code: 'E_VERSION_CONFLICT',
      details: { stream: 'ghost-2', expected: 'stream_exists', actual: 0 },
    });
    // A failed call leaves nothing behind, not even the row that locked its new stream.
    expect(await s.streamInfo('ghost-1')).toBeUndefined();
    expect(await s.streamInfo('ghost-2')).toBeUndefined();
    expect(failure(rest[2])).toMatchObject({ code: 'E_STREAM_DELETED' });
    expect(rest[3]).toMatchObject({ status: 'fulfilled', value: { version: 1, alreadyAppended: true } });
    expect(failure(rest[4])).toMatchObject({ code: 'E_DUPLICATE_EVENT' });
    expect(await s.streamInfo('other-1')).toBeUndefined();
    const raced = [rest[5], rest[6]];
    expect(raced.filter((r) => r?.status === 'fulfilled')).toHaveLength(1);
    expect(raced.map(failure).find((f) => f !== undefined)).toMatchObject({
      code: 'E_VERSION_CONFLICT',
      details: { stream: 'race-1', expected: 1, actual: 2 },
    });
    expect(failure(rest[7])).toMatchObject({
      code: 'E_VERSION_CONFLICT',
      details: { stream: 'many-2', expected: 3, actual: 0 },
    });
    expect(await s.streamInfo('many-1')).toBeUndefined();

    const log = await s.asChangeLog().read(before, 100);
    expect(log.map((e) => (e.after as { stream: string }).stream).sort()).toEqual(
      [...Array.from({ length: 8 }, (_, i) => [`new-${i}`, `new-${i}`]).flat(), 'race-1'].sort(),
    );
    for (let i = 1; i < log.length; i++) expect(log[i]!.offset).toBeGreaterThan(log[i - 1]!.offset!);
    // Calls sent together share a transaction: at least two streams' events carry one txId.
    const streamsByTx = new Map<unknown, Set<string>>();
    for (const e of log) {
      const set = streamsByTx.get(e.txId) ?? new Set<string>();
      set.add((e.after as { stream: string }).stream);
      streamsByTx.set(e.txId, set);
    }
    expect(Math.max(...[...streamsByTx.values()].map((set) => set.size))).toBeGreaterThan(1);

    // jsonb refuses a NUL character: the server fails the whole transaction, and each call is
    // redone alone, so only the bad one fails.
    const again = await Promise.allSettled([
      s.append('fine-1', [{ type: 'B', data: {} }]),
      s.append('bad-1', [{ type: 'B', data: { text: 'a\u0000b' } }]),
      s.append('fine-2', [{ type: 'B', data: {} }]),
    ]);
    expect(again.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(failure(again[1])).toMatchObject({ code: 'E_QUERY' });
    expect(await s.streamInfo('bad-1')).toBeUndefined();
    expect((await s.readStream('fine-2')).map((e) => e.type)).toEqual(['B']);
  });

  it('refuses a driver that is not a PostgreSQL driver, and bad options, at construction', () => {
    for (const bad of [{}, { driver: {} }, { driver: { transaction() {}, dialect: { name: 'sqlite' } } }]) {
      expect(() => createPostgresEventStore(bad as unknown as PostgresEventStoreOptions)).toThrow(
        expect.objectContaining({ code: 'E_CONFIG', option: 'driver' }),
      );
    }
    expect(() => createPostgresEventStore({ driver, longTransactionWarning: '-1s' })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'longTransactionWarning' }),
    );
    expect(() => createPostgresEventStore({ driver, tablePrefix: 'bad-prefix' })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'tablePrefix' }),
    );
  });
});
