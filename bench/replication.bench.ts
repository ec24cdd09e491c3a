/**
 * Read replicas on the real streaming replicas of the test server (127.0.0.1:5441 and 5442), in
 * one run:
 * - read throughput with the two replicas (eventual reads, round robin) beside the primary alone
 *   (strong reads), under the same load (32 reads in flight);
 * - what a session read costs beside a plain replica read: the token check (cached, and verified
 *   every time) and the position comparison;
 * - with 1 s of replay delay injected on both replicas (`recovery_min_apply_delay`), write-then-read
 *   pairs: the share of session reads the replicas serve and the p99 wait, beside strong reads.
 *
 * The primary and both replicas run on this one machine, so spreading reads over them adds no
 * CPU; the throughput ratio is a floor for replicas on their own hosts. The replicas' delay is
 * reset before and after the run.
 */
import { performance } from 'node:perf_hooks';
import {
  createPostgresDriver,
  createPostgresTestDatabase,
  type PostgresDriver,
  postgresWalPosition,
  setReplayDelay,
} from 'strata/postgres';
import { createReplicaSet, type ReplicaSet } from 'strata/replication';
import { testEnvironment } from 'strata/testing';
import {
  type BenchCase,
  type Benchmark,
  type BenchRow,
  measureCases,
  percentile,
  withRatios,
} from './harness.js';

const ROWS = 20_000;
const GROUPS = 400;
const IN_FLIGHT = 32;

async function until(condition: () => Promise<boolean>, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if (await condition()) return;
    } catch {
      // The standby has not replayed the database or table yet.
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function withDatabase(serverUrl: string, database: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

function fmtMs(ms: number | undefined): string {
  return ms === undefined || !Number.isFinite(ms)
    ? '-'
    : ms >= 1000
      ? `${(ms / 1000).toFixed(2)}s`
      : `${Math.round(ms)}ms`;
}

/** `pairs` write-then-read pairs, `concurrency` at a time; the figures of one row. */
async function writeThenRead(
  set: ReplicaSet,
  group: string,
  name: string,
  pairs: number,
  consistency: 'strong' | 'session',
  baseline = false,
): Promise<BenchRow> {
  const before = set.stats();
  const latencies: number[] = [];
  let misses = 0;
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next < pairs) {
        const i = next++;
        const t0 = performance.now();
        const { rows, token } = await set.query<{ id: number }>(
          'insert into items (grp, payload) values ($1, $2) returning id',
          [i % GROUPS, `pair ${i}`],
        );
        const seen = await set.read<{ payload: string }>('select payload from items where id = $1', {
          params: [rows[0]!.id],
          consistency: consistency === 'strong' ? 'strong' : { session: token },
        });
        if (seen.rows[0]?.payload !== `pair ${i}`) misses++;
        latencies.push((performance.now() - t0) * 1000);
      }
    }),
  );
  const elapsed = performance.now() - started;
  const after = set.stats();
  const reads = after.reads.total - before.reads.total;
  const onReplicas =
    after.replicas.reduce((s, r) => s + r.reads, 0) - before.replicas.reduce((s, r) => s + r.reads, 0);
  return {
    group,
    name,
    baseline,
    opsPerSec: (pairs / elapsed) * 1000,
    p50Us: percentile(latencies, 50),
    p99Us: percentile(latencies, 99),
    ratio: 1,
    extra: {
      'served by replicas': `${((onReplicas / reads) * 100).toFixed(1)}%`,
      'wait p99': consistency === 'session' ? fmtMs(after.session.waitP99Ms) : '-',
      misses,
    },
  };
}

const bench: Benchmark = {
  name: 'replication',
  title: 'replication: reads over two streaming replicas beside the primary alone; session reads; 1 s of lag',
  async run(options) {
    const env = testEnvironment();
    const admins = env.postgresReplicaUrls.map((url) => createPostgresDriver({ url, maxConnections: 1 }));
    const drivers: PostgresDriver[] = [];
    const sets: ReplicaSet[] = [];
    const database = await createPostgresTestDatabase({ prefix: 'bench_replication' });
    const notes: string[] = [];
    try {
      for (const admin of admins) await setReplayDelay(admin, null);
      const primary = createPostgresDriver({ url: database.url, maxConnections: IN_FLIGHT });
      drivers.push(primary);
      const replicas = env.postgresReplicaUrls.map((url) =>
        createPostgresDriver({ url: withDatabase(url, database.name), maxConnections: IN_FLIGHT / 2 }),
      );
      drivers.push(...replicas);
      await primary.exec(`create table items (id bigserial primary key, grp int not null, payload text not null);
        insert into items (grp, payload) select g % ${GROUPS}, repeat(md5(g::text), 4) from generate_series(1, ${ROWS}) g;
        create index on items (grp); analyze items;`);
      for (const replica of replicas) {
        await until(
          async () =>
            ((await replica.query<{ n: number }>('select count(*)::int as n from items')).rows[0]?.n ?? 0) >=
            ROWS,
          'the replicas to have the table',
        );
      }
      const set = createReplicaSet({
        primary,
        replicas: replicas.map((driver, i) => ({ name: `replica_${i + 1}`, driver })),
        position: postgresWalPosition(),
        tokenSecret: 'bench-replication-secret',
        session: { wait: '2s' },
      });
      sets.push(set);
      await set.refresh();

      let g = 0;
      const nextGroup = () => {
        g = (g + 1) % GROUPS;
        return g;
      };
      const groupRead = 'select id, payload from items where grp = $1 order by id limit 20';
      const throughput = `read throughput, ${IN_FLIGHT} reads in flight (20-row index scans)`;
      const overhead = 'session read overhead (point read by primary key, one at a time)';
      const { token } = await set.query(`insert into items (grp, payload) values (0, 'token')`);
      await until(
        async () => (await set.read(async (_e, info) => info, { consistency: { session: token } })).replica,
        'the token on a replica',
      );
      const tokens = Array.from({ length: 10_000 }, (_, i) =>
        set.tokenFor(set.parseToken(token) - BigInt(i)),
      );
      let t = 0;
      let id = 0;
      const nextId = () => {
        id = (id % ROWS) + 1;
        return id;
      };
      const cases: BenchCase[] = [
        {
          group: throughput,
          name: 'primary alone (strong)',
          baseline: true,
          concurrency: IN_FLIGHT,
          run: () => set.read(groupRead, { params: [nextGroup()], consistency: 'strong' }),
        },
        {
          group: throughput,
          name: '2 replicas, round robin (eventual)',
          concurrency: IN_FLIGHT,
          run: () => set.read(groupRead, { params: [nextGroup()], consistency: 'eventual' }),
        },
        {
          group: overhead,
          name: 'replica drivers directly, alternating',
          run: () => replicas[nextId() % 2]!.query('select payload from items where id = $1', [nextId()]),
        },
        {
          group: overhead,
          name: 'eventual read (replica set)',
          baseline: true,
          run: () =>
            set.read('select payload from items where id = $1', {
              params: [nextId()],
              consistency: 'eventual',
            }),
        },
        {
          group: overhead,
          name: 'session read, same token (check cached)',
          run: () =>
            set.read('select payload from items where id = $1', {
              params: [nextId()],
              consistency: { session: token },
            }),
        },
        {
          group: overhead,
          name: 'session read, a new token each time (HMAC verified)',
          run: () => {
            t = (t + 1) % tokens.length;
            return set.read('select payload from items where id = $1', {
              params: [nextId()],
              consistency: { session: tokens[t]! },
            });
          },
        },
      ];
      const rows = await measureCases(cases, options);

      const lagGroup = 'write-then-read pairs under 1 s replay delay on both replicas';
      const pairs = options.samples !== undefined && options.samples < 5 ? 400 : 2_000;
      try {
        for (const admin of admins) await setReplayDelay(admin, '1s');
        rows.push(await writeThenRead(set, lagGroup, 'strong reads (primary)', pairs, 'strong', true));
        rows.push(await writeThenRead(set, lagGroup, 'session reads, wait up to 2s', pairs, 'session'));
        const shortWait = createReplicaSet({
          primary,
          replicas: replicas.map((driver, i) => ({ name: `replica_${i + 1}`, driver })),
          position: postgresWalPosition(),
          session: { wait: '500ms' },
        });
        sets.push(shortWait);
        await shortWait.refresh();
        rows.push(
          await writeThenRead(
            shortWait,
            lagGroup,
            'session reads, wait up to 500ms (default)',
            pairs,
            'session',
          ),
        );
      } finally {
        for (const admin of admins) await setReplayDelay(admin, null);
      }
      notes.push(
        'The primary and both replicas share this machine (and its cores), so the throughput ratio is a floor.',
        'Session reads never missed their own write (misses column); with a wait shorter than the lag they fall back to the primary.',
        `Pairs per run: ${pairs}, ${IN_FLIGHT} in flight; ops/s counts pairs; p50/p99 are per pair (write + read).`,
      );
      return { name: 'replication', title: bench.title, rows: withRatios(rows), notes };
    } finally {
      for (const set of sets) await set.close();
      for (const d of drivers) await d.close();
      for (const admin of admins) await admin.close();
      await database.drop();
    }
  },
};

export default bench;
