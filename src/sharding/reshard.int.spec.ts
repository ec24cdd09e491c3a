/**
 * Online resharding on real engines: SQLite files and PostgreSQL databases on two servers as
 * shards, with a writer inserting, updating and deleting through the router the whole time. After
 * each reshard the union of all shards is compared with a reference database the writer also
 * wrote to (`reconcile`: no lost, duplicated or stale row), every row sits where the new strategy
 * places it, capture is gone, and the longest write pause is reported.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as yieldToEvents } from 'node:timers/promises';
import { Command } from 'commander';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, tempDir } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { reconcile } from '../changes/reconcile.js';
import { registerShards } from '../cli/shards.js';
import { isStrataError, type StrataError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { createShardMapStore, type ShardMapStore } from './map-store.js';
import { createReshard, type ReshardOptions, type ReshardProgress } from './reshard.js';
import { postgresReshardCapture } from './reshard-capture.js';
import { createShardRouter } from './router.js';
import { createDirectory, directoryStrategy, hashStrategy, placeSync, rangeStrategy } from './strategies.js';
import type { ShardId, ShardRouter, ShardStrategy } from './types.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

type Engine = 'sqlite' | 'postgres';

const DDL: Record<Engine, string[]> = {
  sqlite: [
    'create table users (id integer primary key, name text not null, score integer not null, avatar blob)',
    'create table posts (id integer primary key, user_id integer not null, body text not null, likes integer not null)',
  ],
  postgres: [
    'create table users (id bigint primary key, name text not null, score integer not null, avatar bytea)',
    'create table posts (id bigint primary key, user_id bigint not null, body text not null, likes integer not null)',
  ],
};

const TABLES = { users: { key: 'id' }, posts: { key: 'user_id', primaryKey: 'id' } } as const;
const TABLE_PLACEMENT = {
  users: { key: 'id' },
  posts: { key: 'user_id', primaryKey: 'id', colocateWith: 'users' },
};

/** A small deterministic PRNG, so a failing run can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Cluster {
  engine: Engine;
  dir: string;
  drivers: Record<ShardId, SqlDriver>;
  urls: Record<ShardId, string>;
  reference: SqlDriver;
  state: SqlDriver;
  mapStore: ShardMapStore;
}

async function sqliteCluster(shards: readonly ShardId[], ddls = DDL.sqlite): Promise<Cluster> {
  const dir = tempDir('strata-reshard-');
  const drivers: Record<ShardId, SqlDriver> = {};
  for (const id of shards) {
    const driver = createSqliteDriver(join(dir.path, `${id}.db`));
    for (const ddl of ddls) await driver.exec(ddl);
    drivers[id] = driver;
  }
  const reference = createSqliteDriver(join(dir.path, 'reference.db'));
  for (const ddl of DDL.sqlite) await reference.exec(ddl);
  const state = createSqliteDriver(join(dir.path, 'state.db'));
  cleanups.push(async () => {
    for (const d of [...Object.values(drivers), reference, state]) await d.close();
    dir.remove();
  });
  const mapStore = createShardMapStore(state);
  await mapStore.migrate();
  return { engine: 'sqlite', dir: dir.path, drivers, urls: {}, reference, state, mapStore };
}

/** Shards alternate between the two extra servers; state lives on the main server. */
async function postgresCluster(shards: readonly ShardId[]): Promise<Cluster> {
  const dir = tempDir('strata-reshard-pg-');
  const drivers: Record<ShardId, SqlDriver> = {};
  const urls: Record<ShardId, string> = {};
  for (const [i, id] of shards.entries()) {
    const server = env.postgresServerUrls[i % env.postgresServerUrls.length]!;
    const database = await createPostgresTestDatabase({ url: server, prefix: `strata_reshard_${id}` });
    const driver = createPostgresDriver({ url: database.url, maxConnections: 4 });
    for (const ddl of DDL.postgres) await driver.exec(ddl);
    drivers[id] = driver;
    urls[id] = database.url;
    cleanups.push(async () => {
      await driver.close();
      await database.drop();
    });
  }
  const stateDb = await createPostgresTestDatabase({ prefix: 'strata_reshard_state' });
  const state = createPostgresDriver(stateDb.url);
  const reference = createSqliteDriver(join(dir.path, 'reference.db'));
  for (const ddl of DDL.sqlite) await reference.exec(ddl);
  cleanups.push(async () => {
    await state.close();
    await stateDb.drop();
    await reference.close();
    dir.remove();
  });
  const mapStore = createShardMapStore(state);
  await mapStore.migrate();
  return { engine: 'postgres', dir: dir.path, drivers, urls, reference, state, mapStore };
}

function router(c: Cluster, strategy: ShardStrategy): ShardRouter {
  const shards = Object.fromEntries(strategy.shards.map((s) => [s, c.drivers[s]!]));
  return createShardRouter({ shards, strategy, tables: TABLE_PLACEMENT, directory: c.state });
}

async function insertAll(driver: SqlDriver, table: string, rows: Record<string, unknown>[]): Promise<void> {
  if (rows.length === 0) return;
  const columns = Object.keys(rows[0]!);
  await driver.transaction(async (tx) => {
    for (let i = 0; i < rows.length; i += 200) {
      const values = rows.slice(i, i + 200).map((r) => sql`(${sql.join(columns.map((c) => r[c]))})`);
      await tx.query(
        sql`insert into ${sql.id(table)} (${sql.join(columns.map((c) => sql.id(c)))}) values ${sql.join(values)}`,
      );
    }
  });
}

/** Seeds `users` users and twice as many posts, placed by `strategy`, and the same rows into the reference. */
async function seed(c: Cluster, strategy: ShardStrategy, users: number): Promise<Map<number, number>> {
  const r = router(c, strategy);
  const postOwner = new Map<number, number>();
  const userRows = Array.from({ length: users }, (_, i) => ({
    id: i + 1,
    name: `user ${i + 1}`,
    score: (i * 37) % 1000,
    avatar: i % 5 === 0 ? Buffer.from([i % 256, 1, 2, 3]) : null,
  }));
  const postRows = Array.from({ length: users * 2 }, (_, i) => {
    const userId = ((i * 7) % users) + 1;
    postOwner.set(i + 1, userId);
    return { id: i + 1, user_id: userId, body: `post ${i + 1} by ${userId}`, likes: i % 13 };
  });
  for (const [table, rows, key] of [
    ['users', userRows, 'id'],
    ['posts', postRows, 'user_id'],
  ] as const) {
    const byShard = new Map<ShardId, Record<string, unknown>[]>();
    for (const row of rows) {
      const shard = await r.shardOf((row as Record<string, unknown>)[key]);
      byShard.set(shard, [...(byShard.get(shard) ?? []), row]);
    }
    for (const [shard, list] of byShard) await insertAll(c.drivers[shard]!, table, list);
    await insertAll(c.reference, table, rows as Record<string, unknown>[]);
  }
  return postOwner;
}

/**
 * Writes continuously through the router's write gate from several loops at once: inserts of
 * users and posts, updates of both, and some deletes of posts, each to the reference and, a
 * moment later (so writes are in flight when a cutover pauses), to the shard routed to. Writes of one
 * shard key are serialized, so the shards and the reference see them in the same order.
 */
class Writer {
  ops = 0;
  #stopped = false;
  #loops: Promise<void>[] = [];
  readonly #locks = new Map<number, Promise<void>>();
  current: ShardRouter;
  error: unknown;
  private readonly random: () => number;

  constructor(
    private readonly gate: ShardRouter,
    private readonly reference: SqlDriver,
    private readonly owners: Map<number, number>,
    private nextUser: number,
    private nextPost: number,
    seedValue: number,
  ) {
    this.current = gate;
    this.random = prng(seedValue);
  }

  start(concurrency = 3): void {
    for (let i = 0; i < concurrency; i++) {
      this.#loops.push(
        this.#run().catch((err: unknown) => {
          this.error ??= err;
        }),
      );
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#loops);
    if (this.error !== undefined) throw this.error;
  }

  async #write(key: number, statement: ReturnType<typeof sql>): Promise<void> {
    const previous = this.#locks.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    this.#locks.set(key, mine);
    await previous;
    try {
      await this.gate.withWrite(async () => {
        const { driver } = await this.current.forKey(key);
        await this.reference.query(statement);
        await new Promise((r) => setTimeout(r, 1));
        await driver.query(statement);
      });
    } finally {
      if (this.#locks.get(key) === mine) this.#locks.delete(key);
      release();
    }
  }

  async step(): Promise<void> {
    const pick = this.random();
    const anyUser = 1 + Math.floor(this.random() * (this.nextUser - 1));
    if (pick < 0.25) {
      const id = this.nextUser++;
      await this.#write(
        id,
        sql`insert into users (id, name, score, avatar) values (${id}, ${`new user ${id}`}, ${id % 100}, ${null})`,
      );
    } else if (pick < 0.5) {
      const id = this.nextPost++;
      this.owners.set(id, anyUser);
      await this.#write(
        anyUser,
        sql`insert into posts (id, user_id, body, likes) values (${id}, ${anyUser}, ${`new post ${id}`}, ${0})`,
      );
    } else if (pick < 0.7) {
      const score = Math.floor(this.random() * 10_000);
      await this.#write(
        anyUser,
        sql`update users set score = ${score}, name = ${`renamed ${score}`} where id = ${anyUser}`,
      );
    } else if (pick < 0.93) {
      const post = 1 + Math.floor(this.random() * (this.nextPost - 1));
      await this.#write(this.owners.get(post)!, sql`update posts set likes = likes + 1 where id = ${post}`);
    } else {
      const post = 1 + Math.floor(this.random() * (this.nextPost - 1));
      await this.#write(this.owners.get(post)!, sql`delete from posts where id = ${post}`);
    }
    this.ops++;
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      await this.step();
      // Let timers and I/O of the reshard run between writes, as a server's requests would.
      await yieldToEvents();
    }
  }
}

/** Every table of all `shards` merged: rows placed elsewhere than `strategy` says, duplicates, and the reconcile reports against the reference. */
async function checkFinal(c: Cluster, shards: readonly ShardId[], strategy: ShardStrategy) {
  const union = createSqliteDriver(join(c.dir, `union-${Math.random().toString(36).slice(2)}.db`));
  for (const ddl of DDL.sqlite) await union.exec(ddl);
  const directory = strategy.kind === 'directory' ? createDirectory(strategy, c.state) : undefined;
  let misplaced = 0;
  let duplicates = 0;
  for (const [table, key] of [
    ['users', 'id'],
    ['posts', 'user_id'],
  ] as const) {
    for (const shard of shards) {
      const { rows } = await c.drivers[shard]!.query(sql`select * from ${sql.id(table)}`);
      for (const row of rows) {
        const placed =
          directory !== undefined ? await directory.lookup(row[key]) : placeSync(strategy, row[key]);
        if (placed !== shard) misplaced++;
        const columns = Object.keys(row);
        const inserted = await union.query(
          sql`insert or ignore into ${sql.id(table)} (${sql.join(columns.map((x) => sql.id(x)))})
              values (${sql.join(columns.map((x) => (typeof row[x] === 'bigint' ? Number(row[x]) : row[x])))})`,
        );
        if (inserted.rowCount === 0) duplicates++;
      }
    }
  }
  const reports = [];
  for (const table of ['users', 'posts']) {
    reports.push(
      await reconcile({ source: { driver: c.reference, table }, target: { driver: union, table } }),
    );
  }
  await union.close();
  return { misplaced, duplicates, reports };
}

async function expectClean(c: Cluster, shards: readonly ShardId[], strategy: ShardStrategy): Promise<void> {
  const { misplaced, duplicates, reports } = await checkFinal(c, shards, strategy);
  expect(misplaced).toBe(0);
  expect(duplicates).toBe(0);
  for (const report of reports) {
    expect(report.mismatches).toEqual({ missing: [], extra: [], different: [] });
    expect(report.clean).toBe(true);
    expect(report.rowsSource).toBeGreaterThan(0);
  }
}

/** What a reshard installs on a SQLite shard: triggers, outbox and fence tables. */
async function leftovers(c: Cluster): Promise<number> {
  let n = 0;
  for (const driver of Object.values(c.drivers)) {
    if (c.engine === 'sqlite') {
      const { rows } = await driver.query<{ n: number }>(
        sql`select count(*) as n from sqlite_schema where name like ${'_strata_r%'}`,
      );
      n += Number(rows[0]!.n);
    } else {
      const { rows } = await driver.query<{ n: number }>(
        sql`select (select count(*) from pg_replication_slots where database = current_database())
                 + (select count(*) from pg_publication)
                 + (select count(*) from pg_class where relname like ${'\\_strata\\_rsf%'}) as n`,
      );
      n += Number(rows[0]!.n);
    }
  }
  return n;
}

async function rejection(promise: Promise<unknown>): Promise<StrataError> {
  try {
    await promise;
  } catch (err) {
    if (isStrataError(err)) return err;
    throw err;
  }
  throw new Error('expected a strata error');
}

interface Scenario {
  cluster: Cluster;
  from: ShardStrategy;
  to: ShardStrategy;
  users?: number;
  options?: Partial<ReshardOptions>;
  /** Extra work before the reshard (directory entries). */
  prepare?: () => Promise<void>;
}

/** Runs a reshard with a writer going from before it starts until after it finished, then checks everything. */
async function reshardUnderLoad(s: Scenario) {
  const { cluster: c, from, to } = s;
  const users = s.users ?? 1_500;
  const owners = await seed(c, from, users);
  await s.prepare?.();
  const gate = router(c, from);
  const target = router(c, to);
  const writer = new Writer(gate, c.reference, owners, users + 1, users * 2 + 1, 42);
  const steps = new Set<string>();
  let opsAtStart = 0;
  const reshard = createReshard({
    name: 'users',
    mapStore: c.mapStore,
    from,
    to,
    shards: c.drivers,
    tables: TABLES,
    state: c.state,
    workDir: c.dir,
    router: gate,
    onCutover: () => {
      writer.current = target;
    },
    chunkSize: 200,
    ...(c.engine === 'postgres' ? { capture: postgresReshardCapture({ urls: c.urls }) } : {}),
    ...s.options,
    onProgress: (p: ReshardProgress) => {
      if (!steps.has(p.step)) {
        steps.add(p.step);
        if (p.step === 'copy') opsAtStart = writer.ops;
      }
    },
  });
  writer.start();
  const status = await reshard.run();
  const opsDuring = writer.ops - opsAtStart;
  // A few more writes under the new map, then stop.
  const after = writer.ops;
  while (writer.ops < after + 100) await new Promise((r) => setTimeout(r, 5));
  await writer.stop();
  return { status, opsDuring, steps, reshard, writer };
}

describe('online resharding on SQLite shards', () => {
  it('splits 2 hash shards into 4 under continuous writes: no lost, duplicated or stale row', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    const { status, opsDuring, steps } = await reshardUnderLoad({ cluster: c, from, to });
    expect(status.step).toBe('done');
    expect([...steps]).toEqual(['capture', 'copy', 'catchup', 'verify', 'cutover', 'cleanup', 'done']);
    expect(opsDuring).toBeGreaterThan(100);
    expect(status.rowsCopied).toBeGreaterThan(0);
    expect(status.longestPauseMs).toBeDefined();
    expect(status.longestPauseMs!).toBeLessThan(1_000);
    console.info(
      `reshard 2->4 (sqlite): longest write pause ${status.longestPauseMs} ms, ${opsDuring} writes during`,
    );
    await expectClean(c, ['s0', 's1', 's2', 's3'], to);
    expect(await leftovers(c)).toBe(0);
    expect(readdirSync(c.dir).filter((f) => f.startsWith('reshard-'))).toEqual([]);
    const active = await c.mapStore.active('users');
    expect(active?.state).toBe('stable');
    expect(active?.version).toBe(status.toVersion);
    expect(active?.strategy.kind === 'hash' && active.strategy.shards).toEqual(['s0', 's1', 's2', 's3']);
  });

  it('moves and cleans up tables related by a foreign key (children deleted before parents)', async () => {
    // SQLite enforces foreign keys on strata's driver by default: posts reference their user.
    const fk = [
      DDL.sqlite[0]!,
      'create table posts (id integer primary key, user_id integer not null references users (id), body text not null, likes integer not null)',
    ];
    const c = await sqliteCluster(['s0', 's1', 's2', 's3'], fk);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    await seed(c, from, 200);
    const options = {
      name: 'users',
      mapStore: c.mapStore,
      from,
      to,
      shards: c.drivers,
      tables: TABLES,
      state: c.state,
      workDir: c.dir,
    };
    // An abort after the copy deletes the copies, children first ...
    await createReshard(options).run({ until: 'verify' });
    await createReshard(options).abort();
    await expectClean(c, ['s0', 's1', 's2', 's3'], from);
    // ... and a full run deletes the moved rows from their old shards the same way.
    const status = await createReshard(options).run();
    expect(status.step).toBe('done');
    await expectClean(c, ['s0', 's1', 's2', 's3'], to);
    expect(await leftovers(c)).toBe(0);
  });

  it('merges 4 hash shards into 2 under continuous writes, never touching the rows the targets own', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    const to = hashStrategy({ shards: ['s0', 's1'] });
    const { status } = await reshardUnderLoad({ cluster: c, from, to });
    expect(status.step).toBe('done');
    // Jump hash: only the two removed shards lose rows, so only they are captured and copied.
    expect(status.sources).toEqual(['s2', 's3']);
    expect(status.longestPauseMs!).toBeLessThan(1_000);
    await expectClean(c, ['s0', 's1', 's2', 's3'], to);
    for (const shard of ['s2', 's3']) {
      const { rows } = await c.drivers[shard]!.query<{ n: number }>('select count(*) as n from users');
      expect(rows[0]!.n).toBe(0);
    }
    expect(await leftovers(c)).toBe(0);
  });

  it('splits one range into two under continuous writes, capturing only the shard that loses rows', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2']);
    const from = rangeStrategy({
      keyType: 'number',
      ranges: [
        { shard: 's0', to: 1_000 },
        { shard: 's1', from: 1_000 },
      ],
    });
    const to = rangeStrategy({
      keyType: 'number',
      ranges: [
        { shard: 's0', to: 1_000 },
        { shard: 's1', from: 1_000, to: 1_250 },
        { shard: 's2', from: 1_250 },
      ],
    });
    const { status } = await reshardUnderLoad({ cluster: c, from, to });
    expect(status.step).toBe('done');
    expect(status.sources).toEqual(['s1']);
    await expectClean(c, ['s0', 's1', 's2'], to);
    const { rows } = await c.drivers.s2!.query<{ n: number }>('select count(*) as n from users');
    expect(rows[0]!.n).toBeGreaterThan(0);
    expect(await leftovers(c)).toBe(0);
  });

  it('moves one tenant to a shard of its own with a directory strategy', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = directoryStrategy({ shards: ['s0', 's1', 's2'], fallback: from, table: 'tenants_v2' });
    const tenant = 7;
    const { status } = await reshardUnderLoad({
      cluster: c,
      from,
      to,
      prepare: async () => {
        const directory = createDirectory(to, c.state);
        await directory.migrate();
        await directory.assign(tenant, 's2');
      },
    });
    expect(status.step).toBe('done');
    await expectClean(c, ['s0', 's1', 's2'], to);
    const moved = await c.drivers.s2!.query<{ id: number }>('select id from users');
    expect(moved.rows.map((r) => r.id)).toEqual([tenant]);
    const posts = await c.drivers.s2!.query<{ user_id: number }>('select distinct user_id from posts');
    expect(posts.rows.map((r) => r.user_id)).toEqual([tenant]);
    expect(await leftovers(c)).toBe(0);
  });

  it('plans the rows each source sends to each target without changing anything', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    await seed(c, from, 800);
    const reshard = createReshard({
      name: 'users',
      mapStore: c.mapStore,
      from,
      to,
      shards: c.drivers,
      tables: TABLES,
      state: c.state,
      workDir: c.dir,
    });
    const plan = await reshard.plan();
    expect(plan.estimated).toBe(false);
    expect(plan.rows).toBe(800 * 3);
    const expected = new Map<string, number>();
    for (let id = 1; id <= 800; id++) {
      const [src, dst] = [placeSync(from, id), placeSync(to, id)];
      if (src !== dst) expected.set(`users ${src} ${dst}`, (expected.get(`users ${src} ${dst}`) ?? 0) + 1);
    }
    for (let id = 1; id <= 1_600; id++) {
      const user = (((id - 1) * 7) % 800) + 1;
      const [src, dst] = [placeSync(from, user), placeSync(to, user)];
      if (src !== dst) expected.set(`posts ${src} ${dst}`, (expected.get(`posts ${src} ${dst}`) ?? 0) + 1);
    }
    const got = new Map(plan.moves.map((m) => [`${m.table} ${m.source} ${m.target}`, m.rows]));
    expect(got).toEqual(expected);
    expect(plan.moving).toBe([...expected.values()].reduce((a, b) => a + b, 0));
    expect(await reshard.status()).toBeUndefined();
    expect(await leftovers(c)).toBe(0);
  });

  it('continues in a new instance where the last one stopped', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    await seed(c, from, 500);
    const make = () =>
      createReshard({
        name: 'users',
        mapStore: c.mapStore,
        from,
        to,
        shards: c.drivers,
        tables: TABLES,
        state: c.state,
        workDir: c.dir,
        chunkSize: 100,
      });
    const first = await make().run({ until: 'verify' });
    expect(first.step).toBe('verify');
    expect((await c.mapStore.active('users'))?.state).toBe('resharding');
    const second = await make().run();
    expect(second.step).toBe('done');
    expect(second.rowsScanned).toBe(first.rowsScanned);
    await expectClean(c, ['s0', 's1', 's2', 's3'], to);
    // Running a finished reshard again returns its status and does nothing.
    expect((await make().run()).step).toBe('done');
  });

  it('fails verification on a damaged copy and never cuts over', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    await seed(c, from, 400);
    const reshard = createReshard({
      name: 'users',
      mapStore: c.mapStore,
      from,
      to,
      shards: c.drivers,
      tables: TABLES,
      state: c.state,
      workDir: c.dir,
      verifyRounds: 2,
    });
    await reshard.run({ until: 'verify' });
    const onS2 = await c.drivers.s2!.query<{ id: number }>('select id from users order by id limit 2');
    const [changed, removed] = onS2.rows.map((r) => r.id);
    await c.drivers.s2!.query(sql`update users set name = ${'tampered'} where id = ${changed}`);
    await c.drivers.s2!.query(sql`delete from users where id = ${removed}`);
    await c.drivers.s3!.query(sql`insert into users (id, name, score) values (${999_999}, ${'stray'}, ${1})`);
    const err = await rejection(reshard.run());
    expect(err.code).toBe('E_VERIFY');
    expect(err.details).toMatchObject({ missing: 1, extra: 1, different: 1 });
    const status = await reshard.status();
    expect(status?.step).toBe('verify');
    expect(status?.lastVerify).toEqual({ missing: 1, extra: 1, different: 1 });
    const active = await c.mapStore.active('users');
    expect(active?.version).toBe(status?.fromVersion);
    await reshard.abort();
    expect(await leftovers(c)).toBe(0);
  });

  for (const step of ['capture', 'copy', 'catchup', 'verify', 'cutover'] as const) {
    it(`abort before ${step} removes the copies and capture and keeps the old map and its data`, async () => {
      const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
      const from = hashStrategy({ shards: ['s0', 's1'] });
      const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
      const owners = await seed(c, from, 400);
      const reshard = createReshard({
        name: 'users',
        mapStore: c.mapStore,
        from,
        to,
        shards: c.drivers,
        tables: TABLES,
        state: c.state,
        workDir: c.dir,
        chunkSize: 100,
      });
      const status = await reshard.run({ until: step });
      expect(status.step).toBe(step);
      // Writes keep going to the old map before the abort.
      const writer = new Writer(router(c, from), c.reference, owners, 401, 801, 7);
      for (let i = 0; i < 200; i++) await writer.step();
      const aborted = await reshard.abort();
      expect(aborted.step).toBe('aborted');
      await expectClean(c, ['s0', 's1', 's2', 's3'], from);
      for (const shard of ['s2', 's3']) {
        const { rows } = await c.drivers[shard]!.query<{ n: number }>('select count(*) as n from posts');
        expect(rows[0]!.n).toBe(0);
      }
      const active = await c.mapStore.active('users');
      expect(active?.version).toBe(aborted.fromVersion);
      expect(active?.state).toBe('stable');
      expect(await leftovers(c)).toBe(0);
      // Aborting twice is harmless; a new run starts a fresh reshard.
      expect((await reshard.abort()).step).toBe('aborted');
    });
  }

  it('abort from another instance stops a run in the middle of the copy', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    await seed(c, from, 600);
    const options: ReshardOptions = {
      name: 'users',
      mapStore: c.mapStore,
      from,
      to,
      shards: c.drivers,
      tables: TABLES,
      state: c.state,
      workDir: c.dir,
      chunkSize: 50,
      lease: '1s',
    };
    const other = createReshard(options);
    let aborting: Promise<unknown> | undefined;
    let chunks = 0;
    const reshard = createReshard({
      ...options,
      onProgress: (p) => {
        if (p.step === 'copy' && p.event === 'chunk' && ++chunks === 3) aborting = other.abort();
      },
    });
    const err = await rejection(reshard.run());
    expect(err.code).toBe('E_ABORTED');
    await aborting;
    expect((await reshard.status())?.step).toBe('aborted');
    await expectClean(c, ['s0', 's1', 's2', 's3'], from);
    expect(await leftovers(c)).toBe(0);
    const done = await reshard.run();
    expect(done.step).toBe('done');
    await expectClean(c, ['s0', 's1', 's2', 's3'], to);
  });

  it('refuses to abort after the cutover, and a second reshard while one is in progress', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    await seed(c, from, 100);
    const base = {
      name: 'users',
      mapStore: c.mapStore,
      shards: c.drivers,
      tables: TABLES,
      state: c.state,
      workDir: c.dir,
    };
    const reshard = createReshard({ ...base, from, to });
    await reshard.run({ until: 'copy' });
    const other = createReshard({ ...base, to: hashStrategy({ shards: ['s0', 's1', 's2'] }) });
    expect((await rejection(other.run())).code).toBe('E_CONFLICT');
    await reshard.run();
    expect((await rejection(reshard.abort())).code).toBe('E_CONFLICT');
  });

  it('validates its options when created', () => {
    const thrown = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return err as StrataError;
      }
      throw new Error('expected a throw');
    };
    const d = createSqliteDriver(':memory:');
    cleanups.push(() => d.close());
    const store = createShardMapStore(d);
    const base: ReshardOptions = {
      name: 'users',
      mapStore: store,
      to: hashStrategy({ shards: ['a', 'b'] }),
      shards: { a: d, b: d },
      tables: { users: { key: 'id' } },
      state: d,
      workDir: '/tmp',
    };
    const option = (o: Partial<ReshardOptions>) => {
      const err = thrown(() => createReshard({ ...base, ...o }));
      expect(err.code).toBe('E_CONFIG');
      return (err as StrataError & { option: string }).option;
    };
    expect(option({ name: 'bad name!' })).toBe('name');
    expect(option({ shards: { a: d } })).toBe('shards');
    expect(option({ tables: { users: { key: 'bad-column' } } })).toBe('tables.users.key');
    expect(option({ tables: {} })).toBe('tables');
    expect(option({ chunkSize: 0 })).toBe('chunkSize');
    expect(option({ lease: 'soon' })).toBe('lease');
    expect(option({ to: { kind: 'time', period: 'day', version: 1, zone: 'UTC' } as never })).toBe('to');
    const r = createShardRouter({ shards: { a: d }, strategy: hashStrategy({ shards: ['a'] }) });
    expect(option({ router: r })).toBe('router');
  });
});

describe.skipIf(!services.postgres || !services.pgServers)('online resharding on PostgreSQL servers', () => {
  it('splits 2 shards on two servers into 4 under continuous writes, by logical replication', async () => {
    const c = await postgresCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    const { status, opsDuring } = await reshardUnderLoad({ cluster: c, from, to, users: 800 });
    expect(status.step).toBe('done');
    expect(opsDuring).toBeGreaterThan(50);
    expect(status.longestPauseMs!).toBeLessThan(1_000);
    console.info(
      `reshard 2->4 (postgres): longest write pause ${status.longestPauseMs} ms, ${opsDuring} writes during`,
    );
    await expectClean(c, ['s0', 's1', 's2', 's3'], to);
    expect(await leftovers(c)).toBe(0);
  });

  it('runs two reshards of same-named maps in other databases of the same servers at once', async () => {
    // Replication slots are per server: each run must capture its own database only.
    const a = await postgresCluster(['s0', 's1', 's2']);
    const b = await postgresCluster(['s0', 's1', 's2']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2'] });
    await seed(a, from, 150);
    await seed(b, from, 150);
    const run = (c: Cluster) =>
      createReshard({
        name: 'users',
        mapStore: c.mapStore,
        from,
        to,
        shards: c.drivers,
        tables: TABLES,
        state: c.state,
        workDir: c.dir,
        capture: postgresReshardCapture({ urls: c.urls }),
      }).run();
    const [sa, sb] = await Promise.all([run(a), run(b)]);
    expect([sa.step, sb.step]).toEqual(['done', 'done']);
    await expectClean(a, ['s0', 's1', 's2'], to);
    await expectClean(b, ['s0', 's1', 's2'], to);
    expect(await leftovers(a)).toBe(0);
    expect(await leftovers(b)).toBe(0);
  });

  it('aborts after the copy on PostgreSQL, dropping slots and publications', async () => {
    const c = await postgresCluster(['s0', 's1', 's2']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    const to = hashStrategy({ shards: ['s0', 's1', 's2'] });
    await seed(c, from, 200);
    const reshard = createReshard({
      name: 'users',
      mapStore: c.mapStore,
      from,
      to,
      shards: c.drivers,
      tables: TABLES,
      state: c.state,
      workDir: c.dir,
      capture: postgresReshardCapture({ urls: c.urls }),
    });
    await reshard.run({ until: 'verify' });
    expect(await leftovers(c)).toBeGreaterThan(0);
    await reshard.abort();
    await expectClean(c, ['s0', 's1', 's2'], from);
    expect(await leftovers(c)).toBe(0);
  });
});

describe('strata shards status and strata reshard', () => {
  async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const io = {
      stdout: {
        write: (t: string) => {
          out += t;
          return true;
        },
      } as never,
      stderr: {
        write: (t: string) => {
          err += t;
          return true;
        },
      } as never,
      env: {},
    };
    const program = new Command('strata').exitOverride();
    registerShards(program, io);
    process.exitCode = undefined;
    try {
      await program.parseAsync(['node', 'strata', ...args]);
    } catch (e) {
      err += e instanceof Error ? e.message : String(e);
      return { code: isStrataError(e, 'E_CONFIG') ? 2 : 1, out, err };
    }
    const code = typeof process.exitCode === 'number' ? process.exitCode : 0;
    process.exitCode = undefined;
    return { code, out, err };
  }

  it('shows rows, size and share per shard, plans with --dry-run, reshards with --to and resumes', async () => {
    const c = await sqliteCluster(['s0', 's1', 's2', 's3']);
    const from = hashStrategy({ shards: ['s0', 's1'] });
    await seed(c, from, 300);
    await c.mapStore.save('users', from);
    const shardFlags = ['s0', 's1', 's2', 's3'].flatMap((s) => [
      '--shard',
      `${s}=sqlite:${join(c.dir, `${s}.db`)}`,
    ]);
    const common = ['--map', 'users', '--state', `sqlite:${join(c.dir, 'state.db')}`, ...shardFlags];
    const tables = ['--table', 'users:id', '--table', 'posts:user_id:id'];

    const status = await cli(['shards', 'status', ...common, '--table', 'users', '--table', 'posts']);
    expect(status.err).toBe('');
    expect(status.out).toContain('hash');
    expect(status.out).toMatch(/s0\s+\d+\s+\d+/);
    expect(status.out).toContain('skew');

    const dry = await cli(['reshard', ...common, ...tables, '--to', '4', '--dry-run', '--work-dir', c.dir]);
    expect(dry.err).toBe('');
    expect(dry.out).toContain('s0 -> s2');
    expect(dry.out).toContain('dry run');
    expect((await c.mapStore.active('users'))?.version).toBe(1);

    const run = await cli(['reshard', ...common, ...tables, '--to', '4', '--work-dir', c.dir]);
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).toContain('done');
    expect(run.out).toMatch(/longest write pause/);
    await expectClean(c, ['s0', 's1', 's2', 's3'], hashStrategy({ shards: ['s0', 's1', 's2', 's3'] }));

    const again = await cli(['shards', 'status', ...common, '--table', 'users']);
    expect(again.out).toMatch(/s3\s+\d+/);

    const bad = await cli(['reshard', ...common, ...tables, '--to', 'many', '--work-dir', c.dir]);
    expect(bad.code).toBe(2);
  });
});
