/**
 * The social app's stores: one meta database and N shard databases behind a shard router.
 *
 * - Embedded (default): the meta database is `<dataDir>/social.db` and the shards are
 *   `<dataDir>/shard-0.db`, `shard-1.db`, ... (SQLite files).
 * - PostgreSQL (`databaseUrl`): the meta database is the one the URL names, and the shards are
 *   databases `<db>_shard_0`, `<db>_shard_1`, ... on the same server, created when missing.
 *
 * The meta database holds the index tables, the id worker leases, the shard map, consumer
 * checkpoints, applied positions and `user_stats`. The shard map (a hash strategy over
 * `s0, s1, ...`) is saved under `social` in the shard-map store on the first start; every later
 * start routes by the map that is active in the store, so a reshard's cutover outlives restarts.
 * Posts are time-partitioned by month on every shard, with partitions premade ahead and kept
 * ready by a periodic `maintain()`.
 */
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  ConfigError,
  type Duration,
  isStrataError,
  Mutex,
  parseOptionalDuration,
  type SqlDriver,
  StrataError,
  sql,
} from 'strata';
import {
  type ActiveShardMap,
  createIdGenerator,
  createShardMapStore,
  createShardRouter,
  createTimePartitioning,
  hashStrategy,
  type IdGenerator,
  type ShardId,
  type ShardMapStore,
  type ShardRouter,
  type ShardStrategy,
  type TablePlacement,
  type TimePartitioning,
} from 'strata/sharding';
import { createSqliteDriver } from 'strata/sqlite';
import { migrateMeta, migrateShard } from './schema.js';

/** The name of the app's shard map in the shard-map store. */
export const SHARD_MAP_NAME = 'social';
/** Shards of a new data directory or database when `shards` is not given. */
export const DEFAULT_SHARDS = 2;
/** The largest shard count `openStores` accepts. */
export const MAX_SHARDS = 64;

const DEFAULT_MAINTAIN_EVERY_MS = 3_600_000;
const MAP_POLL = '2s';

/** Options of `openStores`. */
export interface SocialStoresOptions {
  /** Directory of the SQLite files (without `databaseUrl`). */
  dataDir: string;
  /** PostgreSQL URL of the meta database; the shards are databases beside it on the same server. */
  databaseUrl?: string | undefined;
  /**
   * Shards of a new store (default 2). Once a shard map exists, the map decides; a different
   * explicit count is `E_CONFIG` (change the shard count with a reshard instead).
   */
  shards?: number | undefined;
  /** How often the posts partitions are maintained (default `1h`). */
  maintainEvery?: Duration;
}

/** One shard: its store, where it lives, and its partitioned `posts` table. */
export interface SocialShard {
  readonly id: ShardId;
  readonly driver: SqlDriver;
  /** The file (SQLite) or `host:port/database` (PostgreSQL), for the dashboard. */
  readonly detail: string;
  /** The shard's PostgreSQL URL (undefined on SQLite). */
  readonly url: string | undefined;
  /** Monthly partitions of `posts` on this shard. */
  readonly posts: TimePartitioning;
}

/** What `openStores` opens; `close()` releases all of it. */
export interface SocialStores {
  /** `sqlite` or `postgres`. */
  readonly engine: 'sqlite' | 'postgres';
  /** The meta database (index tables, id leases, shard map, checkpoints, user stats). */
  readonly meta: SqlDriver;
  /** Where the meta database lives, for the dashboard. */
  readonly metaDetail: string;
  /** Routes keys to shards by the active shard map. */
  readonly router: ShardRouter;
  /** The shard stores by shard id. */
  readonly shards: Readonly<Record<ShardId, SqlDriver>>;
  /** Each shard with its location and posts partitioning, in map order. */
  readonly shardList: readonly SocialShard[];
  /** Global snowflake ids (a worker id leased in the meta database). */
  readonly ids: IdGenerator<number>;
  /** The shard-map store in the meta database. */
  readonly mapStore: ShardMapStore;
  /** The active shard map as last read from the store (polled every 2s). */
  map(): ActiveShardMap;
  /**
   * True once the store's active map names other shards than the ones this process opened: a
   * reshard to another shard count was cut over, and routing by it needs a restart.
   */
  restartRequired(): boolean;
  /** The table holding the rows of `posts` created at `createdAt` on a shard: the period table on SQLite, `posts` on PostgreSQL. */
  postTable(createdAt: number): string;
  /**
   * Makes sure the partition for `createdAt` exists on `shard` (and that listeners of
   * `onPartitionsAdded` ran for a new one) before a post is written there; returns `postTable`.
   */
  preparePostTable(shard: ShardId, createdAt: number): Promise<string>;
  /** The partition tables of `posts` on `shard` that rows are written to (the default partition included on PostgreSQL). */
  postPartitions(shard: ShardId): readonly string[];
  /** Calls `listener` (awaited) after new partitions were created on a shard, before any row is written to them. */
  onPartitionsAdded(listener: (shard: ShardId) => Promise<void>): () => void;
  /** Runs partition maintenance on every shard now (also run at start and every `maintainEvery`). */
  maintain(): Promise<void>;
  /** Stops the timers, releases the id lease and closes every store. */
  close(): Promise<void>;
}

/** The router's table map: users and everything of a user's on the user's shard. */
export function socialTables(engine: 'sqlite' | 'postgres'): Record<string, TablePlacement> {
  return {
    users: { key: 'id' },
    posts: {
      key: 'user_id',
      colocateWith: 'users',
      primaryKey: engine === 'postgres' ? ['id', 'created_at'] : ['id'],
    },
    comments: { key: 'post_user_id', colocateWith: 'users', primaryKey: ['id'] },
    likes: { key: 'post_user_id', colocateWith: 'users', primaryKey: ['post_id', 'user_id'] },
    follows: { key: 'follower_id', colocateWith: 'users', primaryKey: ['follower_id', 'followee_id'] },
  };
}

function checkShardCount(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_SHARDS) {
    throw new ConfigError('shards', `must be an integer from 1 to ${MAX_SHARDS}`);
  }
  return value;
}

/** The part of a shard id that names its file or database: `3` for `s3`, else the id itself. */
function shardSuffix(id: ShardId): string {
  const numbered = /^s(\d{1,4})$/.exec(id);
  if (numbered !== null) return numbered[1]!;
  if (/^[A-Za-z0-9_]{1,32}$/.test(id)) return id;
  throw new ConfigError('shards', 'a shard id of the shard map cannot name a file or database', {
    details: { map: SHARD_MAP_NAME },
  });
}

function endpointOf(url: URL, database: string): string {
  return `${url.hostname}:${url.port || '5432'}/${database}`;
}

async function openMeta(
  options: SocialStoresOptions,
): Promise<{ meta: SqlDriver; detail: string; engine: 'sqlite' | 'postgres' }> {
  if (options.databaseUrl) {
    const { createPostgresDriver } = await import('strata/postgres');
    const meta = createPostgresDriver({ url: options.databaseUrl, name: 'social' });
    try {
      await meta.ping();
      const { rows } = await meta.query<{ db: string }>(sql`select current_database() as db`);
      return { meta, detail: endpointOf(new URL(options.databaseUrl), rows[0]!.db), engine: 'postgres' };
    } catch (err) {
      await meta.close();
      throw err;
    }
  }
  const dir = resolve(options.dataDir);
  mkdirSync(dir, { recursive: true });
  const file = resolve(dir, 'social.db');
  return { meta: createSqliteDriver({ filename: file, name: 'social' }), detail: file, engine: 'sqlite' };
}

/** The active shard map, saving the first one (`shards` hash shards) when there is none. */
async function activeMap(mapStore: ShardMapStore, shards: number | undefined): Promise<ActiveShardMap> {
  await mapStore.migrate();
  let map = await mapStore.active(SHARD_MAP_NAME);
  if (map === undefined) {
    const count = shards ?? DEFAULT_SHARDS;
    await mapStore.save(
      SHARD_MAP_NAME,
      hashStrategy({ shards: Array.from({ length: count }, (_, i) => `s${i}`) }),
    );
    // Two processes starting at once may both save; only the first version becomes active.
    map = await mapStore.active(SHARD_MAP_NAME);
  }
  if (map === undefined) {
    throw new StrataError('E_NOT_FOUND', 'the shard map could not be saved', {
      details: { map: SHARD_MAP_NAME },
    });
  }
  if (map.strategy.kind === 'time') {
    throw new ConfigError(
      'shards',
      'the active shard map is a time strategy; it must place users on shards',
      {
        details: { map: SHARD_MAP_NAME },
      },
    );
  }
  if (shards !== undefined && map.strategy.shards.length !== shards) {
    throw new ConfigError(
      'shards',
      `the shard map of these stores has ${map.strategy.shards.length} shards; change the count with a reshard`,
      { details: { map: SHARD_MAP_NAME, version: map.version, shards: map.strategy.shards.length } },
    );
  }
  return map;
}

/** Creates database `name` on the server of `admin` unless it exists. */
async function ensureDatabase(admin: SqlDriver, name: string): Promise<void> {
  const { rows } = await admin.query(sql`select 1 from pg_database where datname = ${name}`);
  if (rows.length > 0) return;
  try {
    await admin.query(sql`create database ${sql.id(name)}`);
  } catch (err) {
    // Another process created it meanwhile (duplicate database, or the catalog's unique index).
    const state = isStrataError(err) ? (err.details as { sqlState?: unknown }).sqlState : undefined;
    if (state !== '42P04' && state !== '23505') throw err;
  }
}

/**
 * The store spec (`sqlite:<file>` or a `postgres://` URL) of shard `id` of the app whose meta
 * store is `databaseUrl` (PostgreSQL: `<db>_shard_N` beside it) or whose data directory is
 * `dataDir` (SQLite: `shard-N.db`), for the CLI commands that work on one shard.
 */
export function shardStoreSpec(id: ShardId, dataDir: string, databaseUrl: string | undefined): string {
  const suffix = shardSuffix(id);
  if (databaseUrl === undefined) return `sqlite:${resolve(dataDir, `shard-${suffix}.db`)}`;
  const url = new URL(databaseUrl);
  const db = decodeURIComponent(url.pathname.replace(/^\//, '')) || process.env.PGDATABASE || 'postgres';
  url.pathname = `/${db}_shard_${suffix}`;
  return url.toString();
}

async function openShard(
  id: ShardId,
  engine: 'sqlite' | 'postgres',
  options: SocialStoresOptions,
  meta: SqlDriver,
): Promise<SocialShard> {
  const suffix = shardSuffix(id);
  let driver: SqlDriver;
  let detail: string;
  let url: string | undefined;
  if (engine === 'postgres') {
    const { rows } = await meta.query<{ db: string }>(sql`select current_database() as db`);
    const name = `${rows[0]!.db}_shard_${suffix}`;
    try {
      sql.id(name);
    } catch (err) {
      throw new ConfigError(
        'databaseUrl',
        'the database name must be letters, digits and underscores, short enough to name its shard databases',
        { cause: err },
      );
    }
    await ensureDatabase(meta, name);
    const shardUrl = new URL(options.databaseUrl!);
    shardUrl.pathname = `/${name}`;
    url = shardUrl.toString();
    const { createPostgresDriver } = await import('strata/postgres');
    driver = createPostgresDriver({ url, name: `social-${id}` });
    detail = endpointOf(shardUrl, name);
  } else {
    detail = resolve(options.dataDir, `shard-${suffix}.db`);
    driver = createSqliteDriver({ filename: detail, name: `social-${id}` });
  }
  try {
    const posts = createTimePartitioning(driver, {
      table: 'posts',
      column: 'created_at',
      period: 'month',
      premake: 3,
    });
    await migrateShard(driver, posts);
    return { id, driver, detail, url, posts };
  } catch (err) {
    await driver.close();
    throw err;
  }
}

async function partitionTables(posts: TimePartitioning): Promise<string[]> {
  const status = await posts.status({ estimate: true });
  return status.filter((p) => p.kind !== 'detached').map((p) => p.name);
}

function reporter(what: string): (err: unknown) => void {
  return (err) => {
    const code = isStrataError(err) ? err.code : err instanceof Error ? err.name : 'unknown';
    process.stderr.write(`strata social: ${what} failed (${code})\n`);
  };
}

const reportMaintenanceFailure = reporter('posts partition maintenance');
const reportWatchFailure = reporter('reading the shard map');

/**
 * Opens (and migrates) the meta database and every shard of the active shard map, leases an id
 * worker, and starts partition maintenance. Rejects with `E_CONFIG` naming `shards` for a bad or
 * conflicting shard count, `databaseUrl` for a database whose name cannot name shard databases,
 * and with the engines' errors (`E_CONNECTION`) when a store cannot be opened; whatever was
 * opened is closed again.
 */
export async function openStores(options: SocialStoresOptions): Promise<SocialStores> {
  const requested = checkShardCount(options.shards);
  const maintainEveryMs = parseOptionalDuration(
    options.maintainEvery,
    'maintainEvery',
    DEFAULT_MAINTAIN_EVERY_MS,
    {
      allowZero: false,
    },
  );
  const { meta, detail: metaDetail, engine } = await openMeta(options);
  const opened: SocialShard[] = [];
  let ids: IdGenerator<number> | undefined;
  try {
    await migrateMeta(meta);
    const mapStore = createShardMapStore(meta);
    let current = await activeMap(mapStore, requested);
    const strategy = current.strategy as ShardStrategy;
    for (const id of strategy.shards) opened.push(await openShard(id, engine, options, meta));
    const shards = Object.fromEntries(opened.map((s) => [s.id, s.driver]));
    // The meta database also holds the directory table should a reshard move to a directory strategy.
    const router = createShardRouter({ shards, strategy, tables: socialTables(engine), directory: meta });
    await router.directory?.migrate();
    ids = await createIdGenerator({ allocate: { store: meta, name: SHARD_MAP_NAME } });
    const idGen = ids;

    const byId = new Map(opened.map((s) => [s.id, s]));
    const known = new Map<ShardId, readonly string[]>();
    for (const s of opened) known.set(s.id, await partitionTables(s.posts));
    const locks = new Map(opened.map((s) => [s.id, new Mutex()]));
    const listeners = new Set<(shard: ShardId) => Promise<void>>();
    const shardOf = (id: ShardId): SocialShard => {
      const s = byId.get(id);
      if (s === undefined) throw new ConfigError('shard', 'not a shard of these stores');
      return s;
    };
    // Shards whose new partitions the listeners have not all taken in yet (a listener failed):
    // they are offered again before the next write to a new partition and at the next maintain.
    const pending = new Set<ShardId>();
    const added = async (shard: SocialShard) => {
      known.set(shard.id, await partitionTables(shard.posts));
      pending.add(shard.id);
      for (const listener of listeners) await listener(shard.id);
      pending.delete(shard.id);
    };
    const postTable = (createdAt: number) =>
      engine === 'postgres' ? 'posts' : opened[0]!.posts.partitionOf(createdAt);

    let restart = false;
    // A reshard run by another process (`strata reshard`) announces its cutover in the map's
    // state: writes wait at the router's gate until the new version is active, so none lands on
    // an old shard after the reshard's last catch-up. A new version over other shards than the
    // ones open here cannot be routed without a restart: writes stay held (and time out) then.
    let held = false;
    const stopWatch = mapStore.watch(
      SHARD_MAP_NAME,
      (map) => {
        current = map;
        if (map.strategy.kind === 'time') return;
        if (map.state === 'cutover') {
          if (!held) {
            held = true;
            router.pauseWrites().catch(reportWatchFailure);
          }
          return;
        }
        const next = map.strategy;
        const same =
          next.shards.length === router.shards.size && next.shards.every((s) => router.shards.has(s));
        restart = !same;
        if (same && map.version !== router.strategy.version) router.setStrategy(next);
        if (held && same) {
          held = false;
          router.resumeWrites();
        }
      },
      { pollInterval: MAP_POLL, since: current.revision, onError: reportWatchFailure },
    );

    const maintainAll = async () => {
      for (const shard of opened) {
        await locks.get(shard.id)!.run(async () => {
          const report = await shard.posts.maintain();
          if (report.created.length > 0 || pending.has(shard.id)) await added(shard);
        });
      }
    };
    let maintaining: Promise<void> | undefined;
    const timer = setInterval(() => {
      maintaining ??= maintainAll()
        .catch(reportMaintenanceFailure)
        .finally(() => {
          maintaining = undefined;
        });
    }, maintainEveryMs);
    timer.unref();

    let closed = false;
    return {
      engine,
      meta,
      metaDetail,
      router,
      shards,
      shardList: opened,
      ids: idGen,
      mapStore,
      map: () => current,
      restartRequired: () => restart,
      postTable,
      async preparePostTable(shardId, createdAt) {
        const shard = shardOf(shardId);
        const table = shard.posts.partitionOf(createdAt);
        const ready = () => known.get(shardId)!.includes(table) && !pending.has(shardId);
        if (!ready()) {
          await locks.get(shardId)!.run(async () => {
            if (ready()) return;
            await shard.posts.tableFor(createdAt);
            await added(shard);
          });
        }
        return postTable(createdAt);
      },
      postPartitions: (shardId) => known.get(shardOf(shardId).id)!,
      onPartitionsAdded(listener) {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
      maintain: maintainAll,
      async close() {
        if (closed) return;
        closed = true;
        clearInterval(timer);
        stopWatch();
        await maintaining;
        await idGen.close().catch(() => undefined);
        for (const s of opened) await s.driver.close();
        await meta.close();
      },
    };
  } catch (err) {
    await ids?.close().catch(() => undefined);
    for (const s of opened) await s.driver.close().catch(() => undefined);
    await meta.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Drops the shard databases (`<db>_shard_*`) that `openStores` created beside the PostgreSQL
 * database of `databaseUrl`, first ending and dropping their replication slots; for tests and
 * teardown. Resolves to the names dropped. The meta database itself is left alone.
 */
export async function dropShardDatabases(databaseUrl: string): Promise<string[]> {
  const { createPostgresDriver } = await import('strata/postgres');
  const admin = createPostgresDriver({ url: databaseUrl, maxConnections: 1 });
  try {
    const { rows: current } = await admin.query<{ db: string }>(sql`select current_database() as db`);
    const prefix = `${current[0]!.db}_shard_`;
    const { rows } = await admin.query<{ name: string }>(
      sql`select datname as name from pg_database where left(datname, ${prefix.length}) = ${prefix}`,
    );
    const dropped: string[] = [];
    for (const { name } of rows) {
      for (let attempt = 0; attempt < 20; attempt++) {
        await admin.query(
          sql`select pg_terminate_backend(active_pid) from pg_replication_slots
              where database = ${name} and active_pid is not null`,
        );
        await admin.query(
          sql`select pg_drop_replication_slot(slot_name) from pg_replication_slots
              where database = ${name} and not active`,
        );
        const { rows: left } = await admin.query<{ n: number }>(
          sql`select count(*)::int as n from pg_replication_slots where database = ${name}`,
        );
        if (Number(left[0]!.n) === 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      await admin.query(sql`drop database if exists ${sql.id(name)} with (force)`);
      dropped.push(name);
    }
    return dropped;
  } finally {
    await admin.close();
  }
}
