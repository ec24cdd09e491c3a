/**
 * The event store beside Emmett (@event-driven-io/emmett-postgresql) on the same PostgreSQL
 * server and database, in one run:
 * - append latency of one event, one append at a time (target: strata p50 under 2 ms);
 * - throughput of 16 concurrent writers, each on its own stream (target: at least 5x Emmett);
 * - batches of 100 events per append (target: at least 2x Emmett);
 * - subscription delivery latency, from the start of an append to the subscriber's handler, with
 *   the subscriber on its own connection pool as in another process (target: strata p99 under
 *   20 ms); strata is woken by LISTEN/NOTIFY through its consumer runtime, Emmett's consumer polls;
 * - SQLite appends per second, one event per append and batches of 100 (target: 50,000 events/s
 *   with batching); Emmett's PostgreSQL store has no SQLite counterpart here, so no peer row.
 *
 * Emmett lives in bench/peers (its own package.json, out of the main lockfile because it pins an
 * older commander as a peer dependency); it is installed there on first use. Both stores get a
 * pool of the same size and the same payloads; cases are sampled interleaved after a warm-up and
 * the table quotes medians.
 */

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createConsumer, createSqlCheckpointStore } from 'strata/changes';
import type { EventStore, NewEvent } from 'strata/events';
import {
  createPostgresDriver,
  createPostgresEventStore,
  createPostgresTestDatabase,
  type PostgresDriver,
} from 'strata/postgres';
import { createSqliteDriver, createSqliteEventStore } from 'strata/sqlite';
import {
  type BenchCase,
  type Benchmark,
  type BenchRow,
  type MeasureOptions,
  measureCases,
  percentile,
  withRatios,
} from './harness.js';

/** Connections per pool, the same for both stores' writers. */
const POOL = 20;
const WRITERS = 16;
const BATCH = 100;
/** Streams the sequential appends and the batches rotate over. */
const STREAMS = 1000;

// ---------------------------------------------------------------------------------------------
// Emmett, loaded from bench/peers through the few members the benchmark calls.

interface EmmettEvent {
  type: string;
  data: Record<string, unknown>;
}

interface EmmettConsumer {
  reactor(options: {
    processorId: string;
    startFrom?: 'BEGINNING' | 'END' | 'CURRENT' | { lastCheckpoint: bigint };
    eachMessage: (message: EmmettEvent) => Promise<void> | void;
  }): unknown;
  /** Runs until stopped: the promise settles when the consumer stops. */
  start(): Promise<void>;
  close(): Promise<void>;
}

interface EmmettStore {
  appendToStream(stream: string, events: EmmettEvent[]): Promise<unknown>;
  consumer(options?: { pulling?: { batchSize?: number; pullingFrequencyInMs?: number } }): EmmettConsumer;
  schema: { migrate(): Promise<unknown> };
  close(): Promise<void>;
}

interface PgPoolLike {
  query(text: string): Promise<{ rows: Array<Record<string, unknown>> }>;
  end(): Promise<void>;
}

interface Emmett {
  version: string;
  pool(url: string, max: number): PgPoolLike;
  store(url: string, pool: PgPoolLike): EmmettStore;
}

const PEERS = fileURLToPath(new URL('./peers/', import.meta.url));
const EMMETT_DIR = join(PEERS, 'node_modules', '@event-driven-io', 'emmett-postgresql');

/** Emmett from bench/peers, installing it there first when missing; a reason string when it cannot. */
async function loadEmmett(): Promise<Emmett | string> {
  if (!existsSync(join(EMMETT_DIR, 'package.json'))) {
    console.log('installing the benchmark peers: npm install --prefix bench/peers --no-audit --no-fund');
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const done = spawnSync(npm, ['install', '--prefix', PEERS, '--no-audit', '--no-fund'], {
      stdio: 'inherit',
    });
    if (done.status !== 0 || !existsSync(join(EMMETT_DIR, 'package.json'))) {
      return 'Emmett is not installed: run `npm install --prefix bench/peers --no-audit --no-fund`';
    }
  }
  const pkg = JSON.parse(readFileSync(join(EMMETT_DIR, 'package.json'), 'utf8')) as {
    version: string;
    exports: { '.': { import: { default: string } } };
  };
  const mod = (await import(pathToFileURL(join(EMMETT_DIR, pkg.exports['.'].import.default)).href)) as {
    getPostgreSQLEventStore(url: string, options: { connectionOptions: { pool: unknown } }): EmmettStore;
  };
  // Emmett's own copy of pg (the one its pool must come from), not strata's.
  const pg = createRequire(join(PEERS, 'package.json'))('pg') as {
    Pool: new (options: { connectionString: string; max: number }) => PgPoolLike;
  };
  return {
    version: pkg.version,
    pool: (url, max) => new pg.Pool({ connectionString: url, max }),
    store: (url, pool) => mod.getPostgreSQLEventStore(url, { connectionOptions: { pool } }),
  };
}

// ---------------------------------------------------------------------------------------------
// Payloads: the same objects for both stores (`{ type, data }` is an event to either).

let serial = 0;

function itemAdded(cart: string): NewEvent & EmmettEvent {
  serial++;
  return {
    type: 'ItemAdded',
    data: {
      cartId: cart,
      sku: `sku-${serial % 5000}`,
      quantity: 1 + (serial % 3),
      unitPrice: 19.99,
      addedBy: 'user-42',
    },
  };
}

const batchOf = (cart: string) => Array.from({ length: BATCH }, () => itemAdded(cart));

function appendCases(strata: EventStore, emmett: EmmettStore | undefined): BenchCase[] {
  const counters = { a: 0, b: 0, c: 0, d: 0, e: 0, f: 0 };
  const cases: BenchCase[] = [];
  const both = (
    group: string,
    concurrency: number | undefined,
    strataRun: () => Promise<unknown>,
    emmettRun: (e: EmmettStore) => Promise<unknown>,
  ) => {
    if (emmett !== undefined) {
      cases.push({ group, name: 'Emmett', baseline: true, concurrency, run: () => emmettRun(emmett) });
    }
    cases.push({ group, name: 'strata', baseline: emmett === undefined, concurrency, run: strataRun });
  };
  both(
    'append 1 event, one at a time',
    undefined,
    () => {
      const s = `cart-${counters.a++ % STREAMS}`;
      return strata.append(s, [itemAdded(s)]);
    },
    (e) => {
      const s = `cart-${counters.b++ % STREAMS}`;
      return e.appendToStream(s, [itemAdded(s)]);
    },
  );
  // The harness starts the 16 operations of a round in order, so each goes to its own stream.
  both(
    `${WRITERS} concurrent writers, one stream each`,
    WRITERS,
    () => {
      const s = `writer-${counters.c++ % WRITERS}`;
      return strata.append(s, [itemAdded(s)]);
    },
    (e) => {
      const s = `writer-${counters.d++ % WRITERS}`;
      return e.appendToStream(s, [itemAdded(s)]);
    },
  );
  both(
    `batches of ${BATCH} events (events/s)`,
    undefined,
    () => {
      const s = `batch-${counters.e++ % STREAMS}`;
      return strata.append(s, batchOf(s));
    },
    (e) => {
      const s = `batch-${counters.f++ % STREAMS}`;
      return e.appendToStream(s, batchOf(s));
    },
  );
  return cases;
}

// ---------------------------------------------------------------------------------------------
// Subscription delivery latency

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(condition: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await sleep(1);
  }
  return true;
}

/** A running subscriber: `received` gets the delivery latency (µs) of each probe it handles. */
interface Subscriber {
  received: number[];
  append(i: number): Promise<unknown>;
  stop(): Promise<void>;
}

const probe = (i: number) => ({ type: 'Probe', data: { i, t: performance.now() } });

function latencyOf(data: unknown, into: number[]): void {
  const t = (data as { t?: unknown } | null)?.t;
  if (typeof t === 'number') into.push((performance.now() - t) * 1000);
}

/** strata: a second store on its own driver (as in another process), woken by NOTIFY. */
async function strataSubscriber(writer: EventStore, url: string, tablePrefix: string): Promise<Subscriber> {
  const driver = createPostgresDriver({ url, maxConnections: 4 });
  const reader = createPostgresEventStore({ driver, tablePrefix });
  const checkpoints = createSqlCheckpointStore(driver, { tablePrefix: 'bench_strata_cp' });
  await checkpoints.migrate();
  const received: number[] = [];
  const consumer = createConsumer({
    name: 'latency',
    log: reader.asChangeLog(),
    checkpoints,
    startFrom: 'end',
    tables: ['probe'],
    handle: (entry) => latencyOf((entry.after as { data?: unknown } | null)?.data, received),
  });
  await consumer.start();
  return {
    received,
    append: (i) => writer.append(`probe-${i % 10}`, [probe(i)]),
    async stop() {
      await consumer.stop();
      await reader.close();
      await driver.close();
    },
  };
}

/** Emmett: a second store on its own pool, its consumer with a reactor (50 ms pulling, the default), from the log's end. */
async function emmettSubscriber(emmett: Emmett, writer: EmmettStore, url: string): Promise<Subscriber> {
  const pool = emmett.pool(url, 4);
  const reader = emmett.store(url, pool);
  const consumer = reader.consumer({ pulling: { pullingFrequencyInMs: 50 } });
  const received: number[] = [];
  // Emmett 0.42's `startFrom: 'END'` reads the first position, not the last (its query orders
  // ascending), and would replay the whole log: start after the current last position instead.
  const { rows } = await pool.query('select coalesce(max(global_position), 0) as p from emt_messages');
  consumer.reactor({
    processorId: 'latency',
    startFrom: { lastCheckpoint: BigInt(String(rows[0]?.p ?? 0)) },
    eachMessage: (message) => {
      if (message.type === 'Probe') latencyOf(message.data, received);
    },
  });
  // `start()` settles only when the consumer stops.
  const running = consumer.start().catch((err: unknown) => {
    console.error(`Emmett consumer failed: ${err instanceof Error ? err.message : String(err)}`);
  });
  return {
    received,
    append: (i) => writer.appendToStream(`probe-${i % 10}`, [probe(i)]),
    async stop() {
      await consumer.close();
      await running;
      await reader.close();
      await pool.end();
    },
  };
}

/**
 * One round: `count` probes appended one after another, `gapMs` apart; returns the latencies (µs)
 * of those delivered within 10 s after the last append.
 */
async function latencyRound(sub: Subscriber, count: number, gapMs: number): Promise<number[]> {
  sub.received.length = 0;
  for (let i = 0; i < count; i++) {
    await sub.append(i);
    await sleep(gapMs);
  }
  await until(() => sub.received.length >= count, 10_000);
  return [...sub.received];
}

/** Warm-up: a probe every 200 ms until one is delivered (the consumer is running and listening). */
async function warmUp(name: string, sub: Subscriber): Promise<void> {
  sub.received.length = 0;
  for (let i = 0; i < 150 && sub.received.length === 0; i++) {
    await sub.append(i);
    await until(() => sub.received.length > 0, 200);
  }
  if (sub.received.length === 0)
    throw new Error(`the ${name} subscriber received nothing in 30 s of warm-up`);
  await sleep(200);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 0 ? (s[mid - 1]! + s[mid]!) / 2 : s[mid]!;
}

interface LatencyFigures {
  p50Us: number;
  p99Us: number;
  delivered: number;
  sent: number;
}

/** Rounds alternate between the subscribers; each figure is the median over rounds. */
async function subscriptionLatency(
  subs: Array<{ name: string; sub: Subscriber }>,
  rounds: number,
  count: number,
  gapMs: number,
): Promise<Map<string, LatencyFigures>> {
  const perRound = new Map<string, { p50: number[]; p99: number[]; delivered: number }>();
  for (const { name, sub } of subs) {
    await warmUp(name, sub);
    perRound.set(name, { p50: [], p99: [], delivered: 0 });
  }
  for (let r = 0; r < rounds; r++) {
    for (const { name, sub } of subs) {
      const lat = await latencyRound(sub, count, gapMs);
      const figures = perRound.get(name)!;
      figures.p50.push(percentile(lat, 50));
      figures.p99.push(percentile(lat, 99));
      figures.delivered += lat.length;
      await sleep(100);
    }
  }
  const out = new Map<string, LatencyFigures>();
  for (const [name, f] of perRound) {
    out.set(name, {
      p50Us: median(f.p50),
      p99Us: median(f.p99),
      delivered: f.delivered,
      sent: rounds * count,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

const ms = (us: number) => `${(us / 1000).toFixed(2)} ms`;
const int = (n: number) => Math.round(n).toLocaleString('en-US');
const verdict = (met: boolean) => (met ? 'met' : 'NOT MET');

const benchmark: Benchmark = {
  name: 'events',
  title: `Event store: strata beside Emmett on the same PostgreSQL (pools of ${POOL}), and strata on SQLite`,
  async run(options: MeasureOptions) {
    const quick = options.samples !== undefined && options.samples < 5;
    const measure: MeasureOptions = { samples: 7, sampleMs: 500, warmupMs: 300, ...options };
    const notes: string[] = [];
    const rows: BenchRow[] = [];

    const emmett = await loadEmmett();
    if (typeof emmett === 'string') notes.push(`${emmett}; Emmett rows skipped.`);

    const db = await createPostgresTestDatabase({ prefix: 'strata_bench_events' });
    let driver: PostgresDriver | undefined;
    let strata: EventStore | undefined;
    let emmettPool: PgPoolLike | undefined;
    let emmettStore: EmmettStore | undefined;
    let syncCommit = 'unknown';
    const subs: Array<{ name: string; sub: Subscriber }> = [];
    try {
      driver = createPostgresDriver({ url: db.url, maxConnections: POOL });
      strata = createPostgresEventStore({ driver, tablePrefix: 'bench' });
      await strata.migrate();
      const { rows: setting } = await driver.query<{ s: string }>('select current_setting($1) as s', [
        'synchronous_commit',
      ]);
      syncCommit = setting[0]?.s ?? 'unknown';
      if (typeof emmett !== 'string') {
        emmettPool = emmett.pool(db.url, POOL);
        emmettStore = emmett.store(db.url, emmettPool);
        await emmettStore.schema.migrate();
      }

      // Appends: every case sampled in turn, so both stores see the same machine and table sizes.
      const measured = await measureCases(appendCases(strata, emmettStore), measure);
      for (const r of measured) {
        if (r.group.startsWith('batches')) r.opsPerSec *= BATCH;
      }
      rows.push(...withRatios(measured));

      // Subscriptions.
      subs.push({ name: 'strata', sub: await strataSubscriber(strata, db.url, 'bench') });
      if (typeof emmett !== 'string' && emmettStore !== undefined) {
        subs.push({ name: 'Emmett', sub: await emmettSubscriber(emmett, emmettStore, db.url) });
      }
      const rounds = quick ? 3 : 5;
      const count = quick ? 50 : 200;
      const gapMs = 10;
      const latency = await subscriptionLatency(subs, rounds, count, gapMs);
      const group = 'subscription delivery: append start -> handler';
      for (const name of ['Emmett', 'strata']) {
        const f = latency.get(name);
        if (f === undefined) continue;
        rows.push({
          group,
          name: name === 'Emmett' ? 'Emmett consumer + reactor (polling)' : 'strata consumer (LISTEN/NOTIFY)',
          baseline: name === 'Emmett',
          opsPerSec: Number.NaN,
          p50Us: f.p50Us,
          p99Us: f.p99Us,
          ratio: Number.NaN,
          extra: { delivered: `${f.delivered}/${f.sent}` },
        });
      }
      notes.push(
        `Subscriptions: ${rounds} rounds of ${count} single-event appends ${gapMs} ms apart per store, rounds alternating; latency from the start of the append to the handler, the subscriber on its own pool (as another process would be); p50 and p99 are medians over rounds.`,
      );
    } finally {
      for (const { sub } of subs) await sub.stop().catch(() => undefined);
      await strata?.close();
      await driver?.close();
      await emmettStore?.close().catch(() => undefined);
      await emmettPool?.end().catch(() => undefined);
      await db.drop();
    }

    // SQLite: the embedded default, one event per append and batches of 100.
    const dir = mkdtempSync(join(tmpdir(), 'strata-bench-events-'));
    const lite = createSqliteDriver(join(dir, 'events.db'));
    const liteStore = createSqliteEventStore({ driver: lite, tablePrefix: 'bench' });
    try {
      await liteStore.migrate();
      let a = 0;
      let b = 0;
      const liteRows = await measureCases(
        [
          {
            group: 'SQLite appends (events/s)',
            name: 'strata, 1 event per append',
            baseline: true,
            run: () => {
              const s = `cart-${a++ % STREAMS}`;
              return liteStore.append(s, [itemAdded(s)]);
            },
          },
          {
            group: 'SQLite appends (events/s)',
            name: `strata, ${BATCH} events per append`,
            run: () => {
              const s = `batch-${b++ % STREAMS}`;
              return liteStore.append(s, batchOf(s));
            },
          },
        ],
        measure,
      );
      liteRows[1]!.opsPerSec *= BATCH;
      rows.push(...withRatios(liteRows));
    } finally {
      await liteStore.close();
      await lite.close();
      rmSync(dir, { recursive: true, force: true });
    }

    // Targets.
    const find = (group: string, name: string) =>
      rows.find((r) => r.group.startsWith(group) && r.name === name);
    const single = find('append 1 event', 'strata');
    if (single !== undefined) {
      notes.push(
        `Append latency: strata p50 ${ms(single.p50Us)} (target under 2 ms: ${verdict(single.p50Us < 2000)})${
          find('append 1 event', 'Emmett') === undefined
            ? ''
            : `; Emmett p50 ${ms(find('append 1 event', 'Emmett')!.p50Us)}`
        }.`,
      );
    }
    const concurrent = find(`${WRITERS} concurrent`, 'strata');
    if (
      concurrent !== undefined &&
      Number.isFinite(concurrent.ratio) &&
      find(`${WRITERS} concurrent`, 'Emmett')
    ) {
      notes.push(
        `${WRITERS} concurrent writers: strata ${int(concurrent.opsPerSec)} appends/s, ${concurrent.ratio.toFixed(2)}x Emmett (target at least 5x: ${verdict(concurrent.ratio >= 5)}).`,
      );
    }
    const batched = find('batches', 'strata');
    if (batched !== undefined && find('batches', 'Emmett')) {
      notes.push(
        `Batches of ${BATCH}: strata ${int(batched.opsPerSec)} events/s, ${batched.ratio.toFixed(2)}x Emmett (target at least 2x: ${verdict(batched.ratio >= 2)}).`,
      );
    }
    const sub = find('subscription', 'strata consumer (LISTEN/NOTIFY)');
    const emmettSub = find('subscription', 'Emmett consumer + reactor (polling)');
    if (sub !== undefined) {
      notes.push(
        `Subscription delivery: strata p99 ${ms(sub.p99Us)} (target under 20 ms: ${verdict(sub.p99Us < 20_000)})${
          emmettSub === undefined ? '' : `; Emmett p99 ${ms(emmettSub.p99Us)}`
        }.`,
      );
    }
    if (emmettSub !== undefined) {
      notes.push(
        "Emmett's puller waits between reads whenever a read returns less than a full batch, starting at 100 ms and doubling to 1 s while caught up; `pullingFrequencyInMs` (50 ms) applies only while a backlog remains, so a trickle of events sees up to a second of delay.",
      );
    }
    if (typeof emmett !== 'string') {
      notes.push(
        'What each append writes: Emmett 0.42 keeps one index on its messages table (stream, position) and none on the global position or the message id, so its readers scan the table; strata keeps five (position, stream + version, event id, type, category) so reads by position, type and category and idempotent retries by id are index lookups, and it takes a shared advisory lock per transaction for the never-skipping global order (appends to distinct streams that arrive together share one transaction and one commit).',
      );
    }
    const liteBatch = find('SQLite', `strata, ${BATCH} events per append`);
    if (liteBatch !== undefined) {
      notes.push(
        `SQLite: ${int(liteBatch.opsPerSec)} events/s in batches of ${BATCH} (target at least 50,000/s: ${verdict(liteBatch.opsPerSec >= 50_000)}); file in WAL mode, synchronous=normal (the driver's default).`,
      );
    }
    notes.push(
      `Emmett ${typeof emmett === 'string' ? '(not run)' : emmett.version} and strata each on a pg pool of ${POOL} in one database created for the run; payload: one ~100-byte JSON event per append (or ${BATCH}), no expected-version check on either side; PostgreSQL with synchronous_commit=${syncCommit}. Samples interleaved, medians of ${measure.samples} x ${measure.sampleMs} ms after ${measure.warmupMs} ms of warm-up per case.`,
    );
    return { name: 'events', title: this.title, rows, notes };
  },
};

export default benchmark;
