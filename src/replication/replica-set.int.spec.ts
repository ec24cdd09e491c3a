/**
 * The replica set on real PostgreSQL streaming replicas (the two standbys of the test server that
 * scripts/services.sh keeps on 5441 and 5442), with real lag: replay delayed with
 * `recovery_min_apply_delay` or paused with `pg_wal_replay_pause()`.
 *
 * The standbys are shared by every spec file, so every test that delays or pauses them lives in
 * this file (whose tests run one after another) and undoes it in a `finally`; the file also resets
 * them before it starts and after it ends. Outages go through TCP proxies in front of the shared
 * servers, never by stopping them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTcpProxy, type TcpProxy } from '../../test/fixtures/tcp-proxy.js';
import { env, services } from '../../test/helpers.js';
import {
  createPostgresDriver,
  type PostgresDriver,
  type PostgresDriverOptions,
} from '../backends/postgres/postgres-driver.js';
import { parseLsn } from '../backends/postgres/postgres-lsn.js';
import {
  pauseReplay,
  postgresWalPosition,
  resumeReplay,
  setReplayDelay,
  withReplayLag,
} from '../backends/postgres/postgres-replication.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../backends/postgres/postgres-test-database.js';
import { isStrataError } from '../core/errors.js';
import { createReplicaSet, type ReplicaSet, type ReplicaSetOptions } from './replica-set.js';

const tokenSecret = 'replica-set-int-spec-secret';

/** Polls `condition` every 20 ms; fails after `timeoutMs` instead of waiting forever. */
async function until(
  condition: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await condition()) return;
    } catch {
      // Not there yet (a database or table the standby has not replayed).
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs `task(i)` for i in 0..n-1 with at most `concurrency` at once. */
async function pool(n: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) await task(next++);
    }),
  );
}

function withDatabase(serverUrl: string, database: string, port?: number): string {
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  if (port !== undefined) {
    url.hostname = '127.0.0.1';
    url.port = String(port);
  }
  return url.toString();
}

function hostPortOf(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname || '127.0.0.1', port: Number(u.port || 5432) };
}

describe.skipIf(!services.pgReplicas)('replica set on PostgreSQL streaming replicas', () => {
  let db: PostgresTestDatabase;
  let primary: PostgresDriver;
  let r1: PostgresDriver;
  let r2: PostgresDriver;
  /** Connections to the standbys' `postgres` database for lag injection. */
  let admins: PostgresDriver[] = [];
  const sets: ReplicaSet[] = [];
  const drivers: PostgresDriver[] = [];
  const proxies: TcpProxy[] = [];

  const quiet = { onBackgroundError: () => undefined };

  async function resetStandbys(): Promise<void> {
    for (const admin of admins) {
      await resumeReplay(admin);
      await setReplayDelay(admin, null);
    }
  }

  function makeSet(extra: Partial<ReplicaSetOptions> = {}): ReplicaSet {
    const set = createReplicaSet({
      primary,
      replicas: [
        { name: 'replica_1', driver: r1 },
        { name: 'replica_2', driver: r2 },
      ],
      position: postgresWalPosition(),
      tokenSecret,
      clusterId: 'int',
      ...extra,
    });
    sets.push(set);
    return set;
  }

  function driver(url: string, extra: PostgresDriverOptions = {}): PostgresDriver {
    const d = createPostgresDriver({ url, maxConnections: 20, ...quiet, ...extra });
    drivers.push(d);
    return d;
  }

  beforeAll(async () => {
    admins = env.postgresReplicaUrls.map((url) => createPostgresDriver({ url, maxConnections: 2, ...quiet }));
    await resetStandbys();
    db = await createPostgresTestDatabase({ prefix: 'strata_replicas' });
    primary = driver(db.url, { maxConnections: 30 });
    r1 = driver(withDatabase(env.postgresReplicaUrls[0]!, db.name));
    r2 = driver(withDatabase(env.postgresReplicaUrls[1]!, db.name));
    await primary.exec(
      `create table notes (id bigserial primary key, author text not null, body text not null)`,
    );
    for (const replica of [r1, r2]) {
      await until(
        async () =>
          (await replica.query(`select to_regclass('notes') is not null as ok`)).rows[0]?.ok === true,
        'the table on the standby',
      );
    }
  });

  afterAll(async () => {
    try {
      await resetStandbys();
    } finally {
      for (const set of sets) await set.close();
      for (const proxy of proxies) await proxy.close();
      for (const d of drivers) await d.close();
      for (const admin of admins) await admin.close();
      await db?.drop();
    }
  });

  it('returns a token at or after the commit and serves the session read from a replica that has it', async () => {
    const set = makeSet();
    await set.refresh();
    const written = await set.query<{ id: number }>(
      'insert into notes (author, body) values ($1, $2) returning id',
      ['ada', 'first note'],
    );
    const position = set.parseToken(written.token);
    const now = await primary.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn');
    expect(position).toBeLessThanOrEqual(parseLsn(now.rows[0]!.lsn));
    const read = await set.read(
      async (exec, info) => ({
        info,
        rows: (
          await exec.query<{ body: string }>('select body from notes where id = $1', [written.rows[0]!.id])
        ).rows,
        replay: (await exec.query<{ lsn: string }>('select pg_last_wal_replay_lsn()::text as lsn')).rows[0]!
          .lsn,
      }),
      { consistency: { session: written.token } },
    );
    expect(read.info.replica).toBe(true);
    expect(read.rows).toEqual([{ body: 'first note' }]);
    expect(parseLsn(read.replay)).toBeGreaterThanOrEqual(position);
    const stats = await set.refresh();
    expect(stats.kind).toBe('postgres-wal');
    expect(stats.primary.state).toBe('up');
    for (const replica of stats.replicas) {
      expect(replica.state).toBe('healthy');
      expect(replica.position).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
      expect(replica.lag).toBeGreaterThanOrEqual(0);
      expect(replica.lagSeconds).toBeGreaterThanOrEqual(0);
    }
  });

  it('under 1 s of injected replay lag, 2,000 write-then-read pairs never miss their own write and replicas serve most reads', async () => {
    await withReplayLag(admins, '1s', async () => {
      const set = makeSet({ session: { wait: '3s' } });
      await set.refresh();
      // The lag is real: an eventual read right after a write does not see it.
      const probe = await set.query<{ id: number }>(
        'insert into notes (author, body) values ($1, $2) returning id',
        ['probe', 'lagging'],
      );
      const stale = await set.read(
        async (exec, info) => ({
          info,
          n: (await exec.query('select 1 from notes where id = $1', [probe.rows[0]!.id])).rowCount,
        }),
        { consistency: 'eventual' },
      );
      expect(stale).toMatchObject({ info: { replica: true }, n: 0 });

      const pairs = 2_000;
      let misses = 0;
      let onReplicas = 0;
      await pool(pairs, 200, async (i) => {
        const body = `note ${i}`;
        const { rows, token } = await set.query<{ id: number }>(
          'insert into notes (author, body) values ($1, $2) returning id',
          [`client${i % 200}`, body],
        );
        const seen = await set.read(
          async (exec, info) => ({
            info,
            rows: (await exec.query<{ body: string }>('select body from notes where id = $1', [rows[0]!.id]))
              .rows,
          }),
          { consistency: { session: token } },
        );
        if (seen.rows[0]?.body !== body) misses++;
        if (seen.info.replica) onReplicas++;
      });
      const stats = set.stats();
      const share = onReplicas / pairs;
      console.info(
        `replication: ${pairs} write-then-read pairs under 1 s lag: ${misses} misses, ${(share * 100).toFixed(1)}% ` +
          `served by replicas, session wait p50 ${stats.session.waitP50Ms} ms, p99 ${stats.session.waitP99Ms} ms`,
      );
      expect(misses).toBe(0);
      expect(share).toBeGreaterThan(0.9);
      expect(stats.session.servedByReplicas + stats.session.fallbacks).toBe(stats.session.reads);
      // Reads really waited for the delayed replay.
      expect(stats.session.waitP50Ms).toBeGreaterThan(500);
    });
  });

  it('with a wait shorter than the lag, session reads fall back to the primary and still never miss', async () => {
    try {
      for (const admin of admins) await setReplayDelay(admin, '1s');
      const set = makeSet({ session: { wait: '200ms' } });
      await set.refresh();
      const pairs = 200;
      let misses = 0;
      await pool(pairs, 50, async (i) => {
        const { rows, token } = await set.query<{ id: number }>(
          'insert into notes (author, body) values ($1, $2) returning id',
          ['short-wait', `short ${i}`],
        );
        const seen = await set.read<{ body: string }>('select body from notes where id = $1', {
          params: [rows[0]!.id],
          consistency: { session: token },
        });
        if (seen.rows[0]?.body !== `short ${i}`) misses++;
      });
      const stats = set.stats();
      expect(misses).toBe(0);
      expect(stats.session.fallbacks).toBeGreaterThan(pairs / 2);
      expect(stats.fallbacks.session).toBe(stats.session.fallbacks);
      expect(stats.primary.reads).toBe(stats.session.fallbacks);
    } finally {
      for (const admin of admins) await setReplayDelay(admin, null);
    }
  });

  it('with one replica delayed, session reads go to the other and least-lag prefers it', async () => {
    try {
      await setReplayDelay(admins[0]!, '1s');
      const set = makeSet({ balance: 'least-lag', health: { interval: '100ms' } });
      let misses = 0;
      await pool(300, 30, async (i) => {
        const { rows, token } = await set.query<{ id: number }>(
          'insert into notes (author, body) values ($1, $2) returning id',
          ['one-delayed', `one ${i}`],
        );
        const seen = await set.read<{ body: string }>('select body from notes where id = $1', {
          params: [rows[0]!.id],
          consistency: { session: token },
        });
        if (seen.rows[0]?.body !== `one ${i}`) misses++;
      });
      expect(misses).toBe(0);
      const session = set.stats();
      const [delayed, prompt] = session.replicas;
      expect(prompt!.reads).toBeGreaterThan(delayed!.reads * 3);
      expect(session.session.fallbacks).toBeLessThan(30);

      // Eventual reads under write traffic: the delayed replica has more WAL to replay.
      await until(async () => {
        await set.query(`insert into notes (author, body) values ('lag', 'traffic')`);
        const s = await set.refresh();
        return (s.replicas[0]!.lag ?? 0) > (s.replicas[1]!.lag ?? 0);
      }, 'the delayed replica to show more lag');
      const before = set.stats().replicas.map((r) => r.reads);
      for (let i = 0; i < 20; i++) await set.read('select 1', { consistency: 'eventual' });
      const after = set.stats().replicas.map((r) => r.reads);
      expect(after[1]! - before[1]!).toBeGreaterThan(after[0]! - before[0]!);
    } finally {
      await setReplayDelay(admins[0]!, null);
    }
  });

  it('with replay paused: eventual reads are stale, session and bounded reads go to the primary, lagging replicas leave and return', async () => {
    const set = makeSet({
      health: { interval: '100ms', maxLag: '1500ms' },
      session: { wait: '300ms' },
    });
    await set.refresh();
    let token: string;
    let id: number;
    try {
      for (const admin of admins) await pauseReplay(admin);
      const written = await set.query<{ id: number }>(
        'insert into notes (author, body) values ($1, $2) returning id',
        ['paused', 'while paused'],
      );
      token = written.token;
      id = written.rows[0]!.id;
      const select = (exec: { query: PostgresDriver['query'] }) =>
        exec.query<{ body: string }>('select body from notes where id = $1', [id]);

      const eventual = await set.read(async (exec, info) => ({ info, rows: (await select(exec)).rows }), {
        consistency: 'eventual',
      });
      expect(eventual.info.replica).toBe(true);
      expect(eventual.rows).toEqual([]);

      const session = await set.read(async (exec, info) => ({ info, rows: (await select(exec)).rows }), {
        consistency: { session: token },
      });
      expect(session.info).toMatchObject({ node: 'primary', replica: false });
      // It waited for a replica before falling back (timers may fire a millisecond early, so no exact bound).
      expect(session.info.waitedMs).toBeGreaterThan(200);
      expect(set.stats().fallbacks.session).toBeGreaterThanOrEqual(1);
      expect(session.rows).toEqual([{ body: 'while paused' }]);

      await until(() => set.stats().replicas.every((r) => (r.lagSeconds ?? 0) > 0.5), 'lag over 0.5 s');
      const bounded = await set.read(async (_exec, info) => info, { consistency: { maxLag: '500ms' } });
      expect(bounded.node).toBe('primary');
      expect(set.stats().fallbacks.maxLag).toBeGreaterThanOrEqual(1);

      await until(() => set.stats().replicas.every((r) => r.state === 'lagging'), 'both replicas lagging');
      const outOfRotation = await set.read(async (_exec, info) => info, { consistency: 'eventual' });
      expect(outOfRotation.node).toBe('primary');
    } finally {
      for (const admin of admins) await resumeReplay(admin);
    }
    await until(
      () => set.stats().replicas.every((r) => r.state === 'healthy'),
      'both replicas healthy again',
    );
    const caughtUp = await set.read(
      async (exec, info) => ({
        info,
        rows: (await exec.query('select body from notes where id = $1', [id])).rows,
      }),
      {
        consistency: { session: token },
      },
    );
    expect(caughtUp.info.replica).toBe(true);
    expect(caughtUp.rows).toEqual([{ body: 'while paused' }]);
  });

  it('loses no read while a replica goes away in the middle of a read load, and takes it back once it returns', async () => {
    const target = hostPortOf(env.postgresReplicaUrls[0]!);
    const proxy = await startTcpProxy(target);
    proxies.push(proxy);
    const viaProxy = driver(withDatabase(env.postgresReplicaUrls[0]!, db.name, proxy.port), {
      connectTimeout: '1s',
    });
    const set = createReplicaSet({
      primary,
      replicas: [
        { name: 'replica_1', driver: viaProxy },
        { name: 'replica_2', driver: r2 },
      ],
      position: postgresWalPosition(),
      health: { interval: '100ms', failures: 2 },
    });
    sets.push(set);
    await set.refresh();
    const { rows } = await set.query<{ id: number }>(
      'insert into notes (author, body) values ($1, $2) returning id',
      ['load', 'read me'],
    );
    const id = rows[0]!.id;
    // Both standbys have the row before the load starts (an earlier test may have left them catching up).
    for (const replica of [viaProxy, r2]) {
      await until(
        async () => (await replica.query('select 1 from notes where id = $1', [id])).rows.length === 1,
        'the row on both standbys',
      );
    }
    let failed = 0;
    let wrong = 0;
    let reads = 0;
    let running = true;
    const load = Promise.all(
      Array.from({ length: 16 }, async () => {
        while (running) {
          try {
            const r = await set.read<{ body: string }>('select body from notes where id = $1', {
              params: [id],
              consistency: 'eventual',
            });
            if (r.rows[0]?.body !== 'read me') wrong++;
          } catch {
            failed++;
          }
          reads++;
        }
      }),
    );
    try {
      await until(() => set.stats().replicas[0]!.reads > 200, 'replica_1 serving reads');
      await proxy.stop();
      await until(() => set.stats().replicas[0]!.state === 'down', 'replica_1 marked down');
      const readsWhileDown = reads;
      await until(() => reads > readsWhileDown + 500, 'reads while replica_1 is down');
      const servedBeforeReturn = set.stats().replicas[0]!.reads;
      await proxy.start();
      await until(() => set.stats().replicas[0]!.state === 'healthy', 'replica_1 back in the rotation');
      await until(() => set.stats().replicas[0]!.reads > servedBeforeReturn + 100, 'replica_1 serving again');
    } finally {
      running = false;
      await load;
    }
    const stats = set.stats();
    expect(failed).toBe(0);
    expect(wrong).toBe(0);
    expect(stats.replicas[0]!.errors + stats.replicas[0]!.failedProbes).toBeGreaterThan(0);
    console.info(
      `replication: ${reads} reads across a replica outage, ${failed} failed, ${stats.reads.retries} retried elsewhere`,
    );
  });

  it('when the primary is unreachable, writes fail with E_CONNECTION naming it while eventual and session reads keep working', async () => {
    const proxy = await startTcpProxy(hostPortOf(db.url));
    proxies.push(proxy);
    const viaProxy = driver(withDatabase(db.url, db.name, proxy.port), { connectTimeout: '1s' });
    const set = createReplicaSet({
      primary: viaProxy,
      replicas: [
        { name: 'replica_1', driver: r1 },
        { name: 'replica_2', driver: r2 },
      ],
      position: postgresWalPosition(),
      health: { interval: '100ms' },
    });
    sets.push(set);
    const { rows, token } = await set.query<{ id: number }>(
      'insert into notes (author, body) values ($1, $2) returning id',
      ['outage', 'before the outage'],
    );
    await until(async () => {
      const r = await set.read(async (_e, info) => info, { consistency: { session: token } });
      return r.replica;
    }, 'the replicas to have the write');
    await proxy.stop();
    try {
      const err = await set
        .query('insert into notes (author, body) values ($1, $2)', ['outage', 'during'])
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
      expect(err).toMatchObject({ host: '127.0.0.1', port: proxy.port });
      expect((err as Error).message).toContain(`127.0.0.1:${proxy.port}`);
      await until(() => set.stats().primary.state === 'down', 'the primary marked down');
      for (let i = 0; i < 50; i++) {
        const r = await set.read(
          async (exec, info) => ({
            info,
            rows: (await exec.query<{ body: string }>('select body from notes where id = $1', [rows[0]!.id]))
              .rows,
          }),
          { consistency: i % 2 === 0 ? 'eventual' : { session: token } },
        );
        expect(r.info.replica).toBe(true);
        expect(r.rows).toEqual([{ body: 'before the outage' }]);
      }
      await expect(set.read('select 1', { consistency: 'strong' })).rejects.toMatchObject({
        code: 'E_CONNECTION',
      });
      expect(set.stats().replicas.every((r) => r.healthy)).toBe(true);
    } finally {
      await proxy.start();
    }
    const again = await set.query('insert into notes (author, body) values ($1, $2)', ['outage', 'after']);
    expect(again.rowCount).toBe(1);
  });

  it('keeps a replica entry that never answers out of the way: no read fails', async () => {
    const closed = await startTcpProxy({ host: '127.0.0.1', port: 1 });
    proxies.push(closed);
    await closed.stop();
    const dead = driver(withDatabase(env.postgresReplicaUrls[0]!, db.name, closed.port), {
      connectTimeout: '500ms',
    });
    const set = createReplicaSet({
      primary,
      replicas: [
        { name: 'gone', driver: dead },
        { name: 'replica_2', driver: r2 },
      ],
      position: postgresWalPosition(),
    });
    sets.push(set);
    for (let i = 0; i < 30; i++) {
      const r = await set.read(async (exec, info) => {
        await exec.query('select 1');
        return info;
      });
      expect(r.node).toBe('replica_2');
    }
    await until(() => set.stats().replicas[0]!.state === 'down', 'the dead entry marked down');
    expect(set.stats().replicas[0]!.lastErrorCode).toBe('E_CONNECTION');
  });

  it('refuses a "replica" that is not a standby of this primary', async () => {
    const notStandby = driver(db.url);
    const other = services.pgServers ? driver(env.postgresServerUrls[0]!) : undefined;
    const set = createReplicaSet({
      primary,
      replicas: [
        { name: 'the_primary', driver: notStandby },
        ...(other === undefined ? [] : [{ name: 'another_server', driver: other }]),
        { name: 'replica_2', driver: r2 },
      ],
      position: postgresWalPosition(),
    });
    sets.push(set);
    const stats = await set.refresh();
    expect(stats.replicas.map((r) => [r.name, r.state, r.lastErrorCode])).toEqual([
      ['the_primary', 'down', 'E_NOT_REPLICA'],
      ...(other === undefined ? [] : [['another_server', 'down', 'E_NOT_REPLICA']]),
      ['replica_2', 'healthy', undefined],
    ]);
    for (let i = 0; i < 5; i++) expect((await set.read(async (_e, info) => info)).node).toBe('replica_2');
  });

  it('accepts tokens of another replica set of the same cluster and refuses those of another cluster', async () => {
    const a = makeSet();
    const b = makeSet();
    const c = makeSet({ clusterId: 'other' });
    const { token } = await a.query(`insert into notes (author, body) values ('x', 'y')`);
    expect((await b.read('select 1', { consistency: { session: token } })).rowCount).toBe(1);
    await expect(c.read('select 1', { consistency: { session: token } })).rejects.toMatchObject({
      code: 'E_TOKEN',
      problem: 'other-cluster',
    });
    await expect(b.read('select 1', { consistency: { session: `${token}x` } })).rejects.toMatchObject({
      code: 'E_TOKEN',
    });
  });
});
