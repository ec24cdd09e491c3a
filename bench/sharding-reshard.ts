/**
 * The reshard part of the sharding benchmark: rows resharded from 2 to 4 shards while a writer
 * keeps inserting and updating through the router; reports the duration, rows per second, the
 * longest write pause the reshard recorded and the longest single write the writer saw, and what
 * a check against the writer's own record found (lost, duplicated, stale or misplaced rows).
 *
 * SQLite shards carry 1,000,000 rows (100,000 with --quick); PostgreSQL shards on two servers,
 * moved by logical replication, carry 200,000 (20,000 with --quick) to keep the run short.
 * There is no peer to run beside it here (Vitess' Reshard needs its own cluster), so the rows
 * stand alone; the target is the longest write pause under 1 s.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { type SqlDriver, sql } from 'strata';
import { createPostgresDriver, createPostgresTestDatabase, type PostgresTestDatabase } from 'strata/postgres';
import {
  createReshard,
  createShardMapStore,
  createShardRouter,
  hashStrategy,
  placeSync,
  postgresReshardCapture,
  type ReshardCaptureFactory,
} from 'strata/sharding';
import { createSqliteDriver } from 'strata/sqlite';
import { probeServices, testEnvironment } from 'strata/testing';
import type { BenchRow } from './harness.js';

export interface ReshardBenchResult {
  rows: BenchRow[];
  notes: string[];
}

const FROM = hashStrategy({ shards: ['s0', 's1'] });
const TO = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
const DDL = 'create table users (id bigint primary key, name text not null, score integer not null)';

interface Cluster {
  engine: string;
  drivers: Record<string, SqlDriver>;
  state: SqlDriver;
  capture?: ReshardCaptureFactory;
  close(): Promise<void>;
}

interface Outcome {
  rows: number;
  ms: number;
  pauseMs: number;
  worstWriteMs: number;
  writes: number;
  p50WriteUs: number;
  p99WriteUs: number;
  lost: number;
  duplicated: number;
  stale: number;
  misplaced: number;
}

/** Seeds `n` users on the shards `FROM` places them on, in multi-row inserts. */
async function seed(c: Cluster, n: number): Promise<void> {
  for (const shard of FROM.shards) {
    await c.drivers[shard]!.transaction(async (tx) => {
      let values = [];
      for (let id = 1; id <= n; id++) {
        if (placeSync(FROM, id) !== shard) continue;
        values.push(sql`(${id}, ${`user ${id}`}, ${0})`);
        if (values.length === 500) {
          await tx.query(sql`insert into users (id, name, score) values ${sql.join(values)}`);
          values = [];
        }
      }
      if (values.length > 0)
        await tx.query(sql`insert into users (id, name, score) values ${sql.join(values)}`);
    });
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

async function reshardOnce(c: Cluster, n: number, workDir: string): Promise<Outcome> {
  await seed(c, n);
  const mapStore = createShardMapStore(c.state);
  // Writes go through the old map's router (its write gate is what the cutover pauses), to
  // whichever router routes at the time: the new map's from the cutover on.
  const pick = (strategy: typeof FROM) =>
    Object.fromEntries(strategy.shards.map((id) => [id, c.drivers[id]!])) as Record<string, SqlDriver>;
  const router = createShardRouter({ shards: pick(FROM), strategy: FROM, tables: { users: { key: 'id' } } });
  const next = createShardRouter({ shards: pick(TO), strategy: TO, tables: { users: { key: 'id' } } });
  let current = router;
  // The writer's own record of every acknowledged write: id -> score.
  const expected = new Map<number, number>();
  let nextId = n + 1;
  let stop = false;
  const latencies: number[] = [];
  const writer = (async () => {
    let i = 0;
    while (!stop) {
      const insert = i++ % 4 === 0;
      const id = insert ? nextId++ : 1 + ((i * 7919) % n);
      const started = performance.now();
      if (insert) {
        await router.withWrite(async () => {
          const { driver } = await current.forKey(id);
          await driver.query(sql`insert into users (id, name, score) values (${id}, ${`user ${id}`}, ${1})`);
        });
        expected.set(id, 1);
      } else {
        await router.withWrite(async () => {
          const { driver } = await current.forKey(id);
          await driver.query(sql`update users set score = score + 1 where id = ${id}`);
        });
        expected.set(id, (expected.get(id) ?? 0) + 1);
      }
      latencies.push(performance.now() - started);
      // One write at a time with a breath between: a steady application load, not a flood.
      await yieldToEventLoop();
    }
  })();
  const reshard = createReshard({
    name: 'users',
    mapStore,
    from: FROM,
    to: TO,
    shards: c.drivers,
    tables: { users: { key: 'id' } },
    state: c.state,
    workDir,
    router,
    onCutover: () => {
      current = next;
    },
    chunkSize: 2_000,
    ...(c.capture ? { capture: c.capture } : {}),
  });
  const started = performance.now();
  let status: Awaited<ReturnType<typeof reshard.run>>;
  try {
    status = await reshard.run();
  } finally {
    stop = true;
    await writer;
  }
  const ms = performance.now() - started;

  // The check: every row on the shard the new map places it, exactly once, with the last value written.
  const seen = new Map<number, number>();
  let duplicated = 0;
  let misplaced = 0;
  for (const [shard, driver] of Object.entries(c.drivers)) {
    const rows = await driver.query<{ id: number | string; score: number }>(sql`select id, score from users`);
    for (const row of rows.rows) {
      const id = Number(row.id);
      if (seen.has(id)) duplicated++;
      seen.set(id, Number(row.score));
      if (placeSync(TO, id) !== shard) misplaced++;
    }
  }
  let lost = 0;
  let stale = 0;
  const total = nextId - 1;
  for (let id = 1; id <= total; id++) {
    const value = seen.get(id);
    if (value === undefined) {
      // An insert still in flight when the writer stopped was never acknowledged: not lost.
      if (expected.has(id) || id <= n) lost++;
      continue;
    }
    if (value !== (expected.get(id) ?? 0)) stale++;
  }
  latencies.sort((a, b) => a - b);
  return {
    rows: n,
    ms,
    pauseMs: status.longestPauseMs ?? Number.NaN,
    worstWriteMs: latencies.at(-1) ?? 0,
    writes: latencies.length,
    p50WriteUs: percentile(latencies, 0.5) * 1000,
    p99WriteUs: percentile(latencies, 0.99) * 1000,
    lost,
    duplicated,
    stale,
    misplaced,
  };
}

function sqliteCluster(dir: string): Cluster {
  const drivers: Record<string, SqlDriver> = {};
  for (const id of TO.shards) drivers[id] = createSqliteDriver(join(dir, `${id}.db`));
  const state = createSqliteDriver(join(dir, 'state.db'));
  return {
    engine: 'SQLite files',
    drivers,
    state,
    async close() {
      for (const d of Object.values(drivers)) await d.close();
      await state.close();
    },
  };
}

async function postgresCluster(): Promise<Cluster> {
  const env = testEnvironment();
  const servers = env.postgresServerUrls.length > 0 ? env.postgresServerUrls : [env.postgresUrl];
  const databases: PostgresTestDatabase[] = [];
  const drivers: Record<string, SqlDriver> = {};
  const urls: Record<string, string> = {};
  for (const [i, id] of TO.shards.entries()) {
    const db = await createPostgresTestDatabase({
      url: servers[i % servers.length]!,
      prefix: `strata_bench_rs_${id}`,
    });
    databases.push(db);
    urls[id] = db.url;
    drivers[id] = createPostgresDriver({ url: db.url, maxConnections: 4 });
  }
  const stateDb = await createPostgresTestDatabase({ url: env.postgresUrl, prefix: 'strata_bench_rs_state' });
  databases.push(stateDb);
  const state = createPostgresDriver({ url: stateDb.url, maxConnections: 2 });
  return {
    engine: 'PostgreSQL, 2 servers, logical replication',
    drivers,
    state,
    capture: postgresReshardCapture({ urls }),
    async close() {
      for (const d of Object.values(drivers)) await d.close();
      await state.close();
      for (const db of databases) await db.drop();
    },
  };
}

function benchRow(engine: string, o: Outcome): BenchRow {
  return {
    group: 'reshard 2 -> 4 under writes',
    name: `${engine}, ${o.rows.toLocaleString('en-US')} rows`,
    baseline: false,
    opsPerSec: o.rows / (o.ms / 1000),
    p50Us: o.p50WriteUs,
    p99Us: o.p99WriteUs,
    ratio: 1,
    extra: {
      duration: `${(o.ms / 1000).toFixed(1)} s`,
      'longest pause': `${o.pauseMs.toFixed(1)} ms`,
      'slowest write': `${o.worstWriteMs.toFixed(1)} ms`,
      writes: o.writes,
      'lost/dup/stale/misplaced': `${o.lost}/${o.duplicated}/${o.stale}/${o.misplaced}`,
    },
  };
}

function note(engine: string, o: Outcome): string {
  const clean = o.lost + o.duplicated + o.stale + o.misplaced === 0;
  return (
    `Reshard 2 -> 4 on ${engine}, ${o.rows.toLocaleString('en-US')} rows under ${o.writes.toLocaleString('en-US')} writes: ` +
    `${(o.ms / 1000).toFixed(1)} s (${Math.round(o.rows / (o.ms / 1000)).toLocaleString('en-US')} rows/s); ` +
    `longest write pause ${o.pauseMs.toFixed(1)} ms (target under 1 s: ${o.pauseMs < 1000 ? 'met' : 'NOT MET'}), ` +
    `slowest single write ${o.worstWriteMs.toFixed(1)} ms; ` +
    `check against the writer's record: ${clean ? 'no lost, duplicated, stale or misplaced row' : `lost ${o.lost}, duplicated ${o.duplicated}, stale ${o.stale}, misplaced ${o.misplaced}`}.`
  );
}

export async function reshardUnderLoad(options: { quick: boolean }): Promise<ReshardBenchResult> {
  const rows: BenchRow[] = [];
  const notes: string[] = [];

  const dir = mkdtempSync(join(tmpdir(), 'strata-bench-reshard-'));
  try {
    const c = sqliteCluster(dir);
    for (const d of Object.values(c.drivers)) await d.exec(DDL);
    try {
      const o = await reshardOnce(c, options.quick ? 100_000 : 1_000_000, dir);
      rows.push(benchRow(c.engine, o));
      notes.push(note(c.engine, o));
    } finally {
      await c.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  const services = await probeServices();
  if (!services.postgres) {
    notes.push('Reshard on PostgreSQL skipped: no server reachable.');
    return { rows, notes };
  }
  const pgDir = mkdtempSync(join(tmpdir(), 'strata-bench-reshard-pg-'));
  try {
    const c = await postgresCluster();
    try {
      for (const d of Object.values(c.drivers)) await d.exec(DDL);
      const o = await reshardOnce(c, options.quick ? 20_000 : 200_000, pgDir);
      rows.push(benchRow(c.engine, o));
      notes.push(note(c.engine, o));
    } finally {
      await c.close();
    }
  } finally {
    rmSync(pgDir, { recursive: true, force: true });
  }
  return { rows, notes };
}
