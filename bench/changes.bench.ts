/**
 * Change data capture end to end, beside the floor, in one run:
 * - PostgreSQL -> strata (logical replication capture -> relay -> NATS JetStream log -> consumer)
 *   beside a bare pg-logical-replication consumer of the same WAL: changes per second for a
 *   backlog of bulk inserts, and commit-to-handler latency for single-row commits;
 * - the SQLite path: triggers + outbox -> relay -> embedded log -> consumer, and what capture
 *   costs a writer (inserts per second with and without the triggers);
 * - reconcile of two 1,000,000-row tables with 100 differences.
 */

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { LogicalReplicationService, PgoutputPlugin } from 'pg-logical-replication';
import { sql } from 'strata';
import { createConsumer, createRelay, createSqlCheckpointStore, reconcile } from 'strata/changes';
import { createNatsChangeLog } from 'strata/nats';
import {
  createPostgresChangeCapture,
  createPostgresDriver,
  createPostgresTestDatabase,
} from 'strata/postgres';
import { createSqliteChangeCapture, createSqliteChangeLog, createSqliteDriver } from 'strata/sqlite';
import { type Benchmark, type BenchRow, percentile, withRatios } from './harness.js';

const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222';

function row(
  group: string,
  name: string,
  opsPerSec: number,
  extra: Record<string, string | number> = {},
  baseline = false,
): BenchRow {
  return { group, name, baseline, opsPerSec, p50Us: Number.NaN, p99Us: Number.NaN, ratio: 1, extra };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

async function until(condition: () => boolean, what: string, ms = 300_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A bare pg-logical-replication consumer: the floor. Counts inserts and records arrival times. */
async function startFloor(url: string, slot: string, publication: string, onInsert: (id: number) => void) {
  const service = new LogicalReplicationService(
    { connectionString: url },
    { acknowledge: { auto: true, timeoutSeconds: 10 } },
  );
  service.on('data', (_lsn: string, log: { tag?: string; new?: { id?: unknown } }) => {
    if (log.tag === 'insert') onInsert(Number(log.new?.id));
  });
  service.on('error', () => undefined);
  const plugin = new PgoutputPlugin({ protoVersion: 1, publicationNames: [publication] });
  void service.subscribe(plugin, slot).catch(() => undefined);
  return { stop: () => service.stop() };
}

/** A strata consumer in its own process, as deployed: counts inserts and reports arrival times. */
async function startConsumerProcess(logSpec: string, reportEvery: number) {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      new URL('./servers/changes-consumer.ts', import.meta.url).pathname,
      logSpec,
      String(reportEvery),
    ],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const state = { count: 0, arrivals: new Map<number, number>() };
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`consumer exited with ${code}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line === 'ready') resolve();
      else if (line.startsWith('n ')) state.count = Number(line.slice(2));
      else if (line.startsWith('t ')) {
        const [, id, at] = line.split(' ');
        state.arrivals.set(Number(id), Number(at));
      }
    });
  });
  return { state, stop: () => child.kill('SIGKILL') };
}

async function postgresPipeline(rounds: number, bulkRows: number, latencyCommits: number) {
  const database = await createPostgresTestDatabase({ prefix: 'bench_changes' });
  const admin = new pg.Client({ connectionString: database.url });
  admin.on('error', () => undefined);
  await admin.connect();
  await admin.query('create table items (id bigint primary key, v integer not null, payload text not null)');
  await admin.query('create publication bench_floor_pub for table items');
  await admin.query(`select pg_create_logical_replication_slot('bench_floor', 'pgoutput')`);
  const stream = `bench_changes_${process.pid}`;
  const logSpec = `${NATS_URL}#${stream}`;
  const log = await createNatsChangeLog({ url: NATS_URL, name: stream });
  const capture = createPostgresChangeCapture({ url: database.url, source: 'bench', tables: ['items'] });
  const relay = createRelay({ source: capture, log });
  let nextId = 1;
  const insertBulk = async () => {
    const first = nextId;
    nextId += bulkRows;
    for (let done = 0; done < bulkRows; done += 10_000) {
      await admin.query(
        `insert into items (id, v, payload) select g, g, md5(g::text) from generate_series(${first + done}, ${first + done + 9_999}) g`,
      );
    }
  };
  const commitSingles = async () => {
    const committed = new Map<number, number>();
    for (let i = 0; i < latencyCommits; i++) {
      const id = nextId++;
      await admin.query('insert into items (id, v, payload) values ($1, $2, $3)', [id, i, 'x']);
      committed.set(id, performance.timeOrigin + performance.now());
      await new Promise((r) => setTimeout(r, 5));
    }
    return committed;
  };
  const latencies = (committed: Map<number, number>, arrivals: Map<number, number>) =>
    [...committed.entries()].map(([id, t]) => Math.max(0, (arrivals.get(id) ?? Number.NaN) - t) * 1000);

  const floorRates: number[] = [];
  const strataRates: number[] = [];
  let floorLat: number[] = [];
  let strataLat: number[] = [];
  try {
    await relay.start();
    // Each pipeline alone, in turn: throughput of a burst of bulk inserts, end to end.
    for (let r = 0; r < rounds; r++) {
      let floorCount = 0;
      const floor = await startFloor(database.url, 'bench_floor', 'bench_floor_pub', () => {
        floorCount++;
      });
      await new Promise((res) => setTimeout(res, 500));
      let t0 = performance.now();
      await insertBulk();
      await until(() => floorCount >= bulkRows, 'the floor');
      floorRates.push(bulkRows / ((performance.now() - t0) / 1000));
      await floor.stop();

      const consumer = await startConsumerProcess(logSpec, 1000);
      await new Promise((res) => setTimeout(res, 500));
      t0 = performance.now();
      await insertBulk();
      await until(() => consumer.state.count >= bulkRows, 'the strata pipeline');
      strataRates.push(bulkRows / ((performance.now() - t0) / 1000));
      consumer.stop();
    }
    // Latency of single-row commits, each pipeline alone.
    const floorArrivals = new Map<number, number>();
    const floor = await startFloor(database.url, 'bench_floor', 'bench_floor_pub', (id) => {
      floorArrivals.set(id, performance.timeOrigin + performance.now());
    });
    await new Promise((res) => setTimeout(res, 500));
    const floorCommitted = await commitSingles();
    await until(
      () => [...floorCommitted.keys()].every((id) => floorArrivals.has(id)),
      'floor latency samples',
      60_000,
    );
    floorLat = latencies(floorCommitted, floorArrivals);
    await floor.stop();
    const consumer = await startConsumerProcess(logSpec, 1);
    await new Promise((res) => setTimeout(res, 500));
    const strataCommitted = await commitSingles();
    await until(
      () => [...strataCommitted.keys()].every((id) => consumer.state.arrivals.has(id)),
      'strata latency samples',
      60_000,
    );
    strataLat = latencies(strataCommitted, consumer.state.arrivals);
    consumer.stop();
    return { floorRate: median(floorRates), strataRate: median(strataRates), floorLat, strataLat };
  } finally {
    await relay.stop();
    await log.close();
    const nats = await import('strata/nats');
    const client = await nats.connectNats(NATS_URL);
    await client.deleteStream(stream).catch(() => undefined);
    await client.close();
    await admin.end();
    await database.drop();
  }
}

async function sqlitePipeline(rows: number) {
  const dir = mkdtempSync(join(tmpdir(), 'strata-bench-changes-'));
  try {
    const plain = createSqliteDriver(join(dir, 'plain.db'));
    const captured = createSqliteDriver(join(dir, 'app.db'));
    for (const db of [plain, captured])
      await db.exec('create table items (id integer primary key, v integer not null, payload text not null)');
    const capture = createSqliteChangeCapture(captured, { source: 'bench', tables: ['items'] });
    await capture.install();
    const write = async (db: typeof plain) => {
      const t0 = performance.now();
      for (let done = 0; done < rows; done += 1_000) {
        await db.transaction(async (tx) => {
          for (let i = 1; i <= 1_000; i++) {
            await tx.query(sql`insert into items (id, v, payload) values (${done + i}, ${i}, ${'payload'})`);
          }
        });
      }
      return rows / ((performance.now() - t0) / 1000);
    };
    const plainRate = await write(plain);
    const capturedRate = await write(captured);

    const log = createSqliteChangeLog({ filename: join(dir, 'log.db') });
    const viewDb = createSqliteDriver(join(dir, 'view.db'));
    const checkpoints = createSqlCheckpointStore(viewDb);
    await checkpoints.migrate();
    let handled = 0;
    const relay = createRelay({ source: capture, log });
    const consumer = createConsumer({
      name: 'bench',
      log,
      checkpoints,
      batchSize: 1000,
      lease: false,
      pollInterval: '50ms',
      handleBatch: (entries) => {
        handled += entries.length;
      },
    });
    const t0 = performance.now();
    await relay.start();
    await consumer.start();
    await until(() => handled >= rows, 'the SQLite pipeline');
    const pipelineRate = rows / ((performance.now() - t0) / 1000);
    await consumer.stop();
    await relay.stop();
    await log.close();
    await viewDb.close();
    await plain.close();
    await captured.close();
    return { plainRate, capturedRate, pipelineRate };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Injects exactly 100 differences into the copy: 34 rows missing, 33 extra, 33 different. */
const DIFF_SQL = (rows: number) => {
  const step = Math.floor(rows / 40);
  const missing = Array.from({ length: 34 }, (_, i) => 1 + i * step);
  const different = Array.from({ length: 33 }, (_, i) => 2 + i * step);
  return [
    `delete from items where id in (${missing.join(', ')})`,
    ...Array.from(
      { length: 33 },
      (_, i) => `insert into items (id, v, payload) values (${rows + 1000 + i}, 1, 'extra')`,
    ),
    `update items set payload = 'changed' where id in (${different.join(', ')})`,
  ];
};

async function reconcileBench(rows: number) {
  const out: Array<{ pair: string; seconds: number; found: number; expected: number; scanSeconds: number }> =
    [];
  // SQLite <-> SQLite
  const dir = mkdtempSync(join(tmpdir(), 'strata-bench-reconcile-'));
  try {
    const a = createSqliteDriver(join(dir, 'a.db'));
    const b = createSqliteDriver(join(dir, 'b.db'));
    for (const db of [a, b]) {
      await db.exec(`create table items (id integer primary key, v integer not null, payload text not null);
        with recursive n(x) as (select 1 union all select x + 1 from n where x < ${rows})
        insert into items select x, x % 1000, 'payload ' || x from n;`);
    }
    for (const stmt of DIFF_SQL(rows)) await b.exec(stmt);
    out.push(await timeReconcile('sqlite <-> sqlite', a, b));
    await a.close();
    await b.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // PostgreSQL <-> PostgreSQL (two databases on the server)
  const dbA = await createPostgresTestDatabase({ prefix: 'bench_rec_a' });
  const dbB = await createPostgresTestDatabase({ prefix: 'bench_rec_b' });
  try {
    const a = createPostgresDriver({ url: dbA.url, maxConnections: 2 });
    const b = createPostgresDriver({ url: dbB.url, maxConnections: 2 });
    for (const db of [a, b]) {
      await db.exec(`create table items (id bigint primary key, v integer not null, payload text not null);
        insert into items select g, g % 1000, 'payload ' || g from generate_series(1, ${rows}) g; analyze items;`);
    }
    for (const stmt of DIFF_SQL(rows)) await b.exec(stmt);
    out.push(await timeReconcile('postgres <-> postgres', a, b));
    await a.close();
    await b.close();
  } finally {
    await dbA.drop();
    await dbB.drop();
  }
  return out;
}

async function timeReconcile(pair: string, a: import('strata').SqlDriver, b: import('strata').SqlDriver) {
  const expected = 100;
  // Baseline: read both tables in key order once, the least any comparison must do.
  const s0 = performance.now();
  for (const db of [a, b]) {
    let last = 0;
    for (;;) {
      const { rows } = await db.query<{ id: number }>(
        sql`select id, v, payload from items where id > ${last} order by id limit ${10_000}`,
      );
      if (rows.length === 0) break;
      last = Number(rows[rows.length - 1]!.id);
    }
  }
  const scanSeconds = (performance.now() - s0) / 1000;
  const t0 = performance.now();
  const report = await reconcile({
    source: { driver: a, table: 'items' },
    target: { driver: b, table: 'items' },
  });
  const seconds = (performance.now() - t0) / 1000;
  const m = report.mismatches;
  return {
    pair,
    seconds,
    found: m.missing.length + m.extra.length + m.different.length,
    expected,
    scanSeconds,
  };
}

const bench: Benchmark = {
  name: 'changes',
  title:
    'changes: PostgreSQL -> strata -> NATS JetStream -> consumer, beside bare pg-logical-replication; the SQLite path',
  async run(options) {
    const quick = options.sampleMs !== undefined && options.sampleMs < 300;
    const bulk = quick ? 20_000 : 100_000;
    const pgResult = await postgresPipeline(quick ? 1 : 3, bulk, quick ? 100 : 500);
    const lite = await sqlitePipeline(quick ? 10_000 : 50_000);
    const recRows = quick ? 100_000 : 1_000_000;
    const rec = await reconcileBench(recRows);
    const ms = (us: number) => `${(us / 1000).toFixed(2)}ms`;
    const rows: BenchRow[] = [
      row(
        'pg bulk insert backlog (changes/s)',
        'bare pg-logical-replication consumer (floor)',
        pgResult.floorRate,
        {},
        true,
      ),
      row(
        'pg bulk insert backlog (changes/s)',
        'strata capture -> relay -> JetStream -> consumer',
        pgResult.strataRate,
      ),
      {
        ...row(
          'pg single-row commit -> handler',
          'bare pg-logical-replication consumer (floor)',
          Number.NaN,
          {},
          true,
        ),
        p50Us: percentile(pgResult.floorLat, 50),
        p99Us: percentile(pgResult.floorLat, 99),
      },
      {
        ...row(
          'pg single-row commit -> handler',
          'strata capture -> relay -> JetStream -> consumer',
          Number.NaN,
        ),
        p50Us: percentile(pgResult.strataLat, 50),
        p99Us: percentile(pgResult.strataLat, 99),
      },
      row('sqlite writer inserts/s', 'without capture triggers', lite.plainRate, {}, true),
      row('sqlite writer inserts/s', 'with capture triggers (outbox)', lite.capturedRate),
      row(
        'sqlite pipeline (changes/s)',
        'triggers -> relay -> embedded log -> consumer',
        lite.pipelineRate,
        {},
        true,
      ),
      ...rec.flatMap((r) => [
        row(
          `reconcile ${r.pair}, ${recRows.toLocaleString('en-US')} rows (rows/s)`,
          'read both tables once in key order (floor)',
          (2 * recRows) / r.scanSeconds,
          { seconds: r.scanSeconds.toFixed(2) },
          true,
        ),
        row(
          `reconcile ${r.pair}, ${recRows.toLocaleString('en-US')} rows (rows/s)`,
          'strata reconcile',
          (2 * recRows) / r.seconds,
          {
            seconds: r.seconds.toFixed(2),
            found: `${r.found}/${r.expected}`,
          },
        ),
      ]),
    ];
    return {
      name: 'changes',
      title: bench.title,
      rows: withRatios(rows),
      notes: [
        `PostgreSQL: ${bulk.toLocaleString('en-US')} rows inserted in transactions of 10,000 per round; each pipeline measured alone on its own slot, in turn; median of ${quick ? 1 : 3} rounds; time from the first insert to the last change handled. strata runs as deployed: capture + relay in one process, the consumer in another, the log in JetStream.`,
        `Latency: ${quick ? 100 : 500} single-row commits 5 ms apart; from COMMIT returning to the handler seeing the row (p50 ${ms(percentile(pgResult.strataLat, 50))}, p99 ${ms(percentile(pgResult.strataLat, 99))} for strata).`,
        'Targets: at least 20,000 changes/s, at least 70% of the floor, p99 under 20 ms.',
      ],
    };
  },
};

export default bench;
