/**
 * The social app's change pipeline: every shard's tables are captured (SQLite triggers, or
 * PostgreSQL logical replication), one capture per shard with its own source name; a relay per
 * shard moves the changes into the one change log (an embedded SQLite file, or NATS JetStream),
 * and consumers derive data from them:
 *
 * - `user-stats`: per-user counters (posts, comments, likes received, followers) in the meta
 *   database's `user_stats` table, applied idempotently by position;
 * - `feed-events`: turns new posts and follows into the feed's domain events in the event store
 *   (see `feed.ts`; the feed is a projection of them, and its cache is invalidated from there);
 * - `cache-invalidation`: drops cached profiles and post pages whose rows changed.
 *
 * Posts are time-partitioned, so a shard captures each partition table (`posts_p2025_01`, and
 * PostgreSQL's `posts_default`); their changes enter the log as changes of `posts`. When a shard
 * gets a new partition, its capture is restarted with the longer table list before any row is
 * written to the new partition, so no change escapes capture.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { SqlDriver, SqlExecutor } from 'strata';
import { sql } from 'strata';
import { type Cache, createCacheInvalidator } from 'strata/cache';
import {
  applyIfNewer,
  type Change,
  type ChangeLog,
  type ChangeSource,
  type Consumer,
  createConsumer,
  createRelay,
  createSqlCheckpointStore,
  type LogEntry,
  migrateApplied,
  type Position,
  type Relay,
  type RelayStats,
  type SqlCheckpointStore,
} from 'strata/changes';
import type { EventStore } from 'strata/events';
import type { ShardId } from 'strata/sharding';
import type { SqliteDriver } from 'strata/sqlite';
import { createSqliteChangeCapture, createSqliteChangeLog, createSqliteDriver } from 'strata/sqlite';
import { postKey, userKey } from './caching.js';
import { createFeedBridge } from './feed.js';
import { type EmbeddedReplicas, gatedLog, openEmbeddedReplicas } from './replicas.js';
import type { SocialShard, SocialStores } from './stores.js';
import type { Telemetry } from './telemetry.js';

/** The tables the pipeline captures, as they appear in the log. */
export const CAPTURED_TABLES = ['users', 'posts', 'comments', 'likes', 'follows'] as const;

export interface PipelineOptions {
  stores: SocialStores;
  /** The app's cache, invalidated from the log. */
  cache: Cache;
  telemetry: Telemetry;
  /** Directory of the embedded log file (when no NATS URL is given). */
  dataDir: string;
  /** NATS URL: the log is a JetStream stream instead of a SQLite file. */
  natsUrl?: string | undefined;
  /**
   * Embedded SQLite read replicas per shard, fed from the log (default 0). Only on SQLite: on
   * PostgreSQL the replicas are streaming standbys.
   */
  replicas?: number;
  /** The app's event store: the `feed-events` consumer appends the feed's domain events to it. */
  events?: EventStore | undefined;
}

export interface Pipeline {
  /** One change source per shard, in shard-map order. */
  sources: ChangeSource[];
  log: ChangeLog;
  /** One relay per shard, in shard-map order. */
  relays: Relay[];
  /** All relays as one: starts and stops them together, and sums their figures. */
  relay: Relay;
  checkpoints: SqlCheckpointStore;
  consumers: Consumer[];
  /** Where the log lives, for the banner and `strata status`. */
  logLabel: string;
  /** The log as a `--log` spec for the CLI (`sqlite:<file>` or `nats://...#stream`). */
  logSpec: string;
  /** The embedded read replicas of each shard (undefined when there are none). */
  replicas: EmbeddedReplicas | undefined;
  close(): Promise<void>;
}

async function bump(
  tx: SqlExecutor,
  userId: unknown,
  column: 'posts' | 'comments' | 'likes_received' | 'followers',
  by: number,
) {
  if (userId === null || userId === undefined) return;
  await tx.query(
    sql`insert into user_stats (user_id, ${sql.id(column)}) values (${userId}, ${Math.max(0, by)})
        on conflict (user_id) do update set ${sql.id(column)} = user_stats.${sql.id(column)} + ${by}`,
  );
}

/** Applies one change to `user_stats` (inside the caller's meta transaction). */
async function applyStats(tx: SqlExecutor, e: LogEntry): Promise<void> {
  const sign = e.op === 'insert' ? 1 : e.op === 'delete' ? -1 : 0;
  if (sign === 0) return;
  const row = (e.op === 'delete' ? e.before : e.after) ?? {};
  switch (e.table) {
    case 'posts':
      return bump(tx, row.user_id, 'posts', sign);
    case 'comments':
      return bump(tx, row.user_id, 'comments', sign);
    case 'follows':
      return bump(tx, row.followee_id ?? e.key.followee_id, 'followers', sign);
    case 'likes': {
      let author = row.post_user_id;
      if (author === undefined || author === null) {
        // A change without the whole row: the post's author from the index table.
        const { rows } = await tx.query<{ user_id: unknown }>(
          sql`select user_id from post_owners where post_id = ${row.post_id ?? e.key.post_id}`,
        );
        author = rows[0]?.user_id;
      }
      return bump(tx, author, 'likes_received', sign);
    }
  }
}

/**
 * The identity of this database incarnation, kept in the database itself. Source names and the
 * log are derived from it: a database that is dropped and recreated restarts its positions, and
 * must neither have its new changes skipped as "already appended" by an old log, nor have its
 * consumers replay the old database's changes.
 */
export async function databaseIdentity(db: SqlDriver): Promise<string> {
  await db.query(
    sql`create table if not exists strata_database_identity (id text primary key, created_at bigint not null)`,
  );
  const candidate = randomBytes(4).toString('hex');
  await db.query(
    sql`insert into strata_database_identity (id, created_at)
        select ${candidate}, ${Date.now()} where not exists (select 1 from strata_database_identity)`,
  );
  const { rows } = await db.query<{ id: string }>(
    sql`select id from strata_database_identity order by created_at limit 1`,
  );
  return rows[0]!.id;
}

const PARTITION = /^posts_(?:p\d{4}(?:_\d{2}){0,2}|default)$/;

/** A change of a posts partition as a change of `posts`; other changes as they are. */
function logicalTable(change: Change): Change {
  return PARTITION.test(change.table) ? { ...change, table: 'posts' } : change;
}

/**
 * One shard's capture, reopened with the shard's current table list on each start, so that a
 * relay restart picks up new partitions; acknowledgements go to the capture that runs now.
 */
class ShardCapture implements ChangeSource {
  #current: ChangeSource | undefined;

  constructor(
    readonly name: string,
    private readonly open: () => Promise<ChangeSource>,
  ) {}

  async start(onChanges: (changes: Change[]) => Promise<void>): Promise<void> {
    const capture = await this.open();
    this.#current = capture;
    await capture.start((changes) => onChanges(changes.map(logicalTable)));
  }

  acknowledge(position: Position): Promise<void> {
    return this.#current === undefined ? Promise.resolve() : this.#current.acknowledge(position);
  }

  async stop(): Promise<void> {
    await this.#current?.stop();
  }
}

function shardTables(stores: SocialStores, shard: ShardId): string[] {
  return ['users', ...stores.postPartitions(shard), 'comments', 'likes', 'follows'];
}

function captureOf(stores: SocialStores, shard: SocialShard, source: string): ShardCapture {
  return new ShardCapture(source, async () => {
    const tables = shardTables(stores, shard.id);
    if (stores.engine === 'postgres') {
      const { createPostgresChangeCapture } = await import('strata/postgres');
      // Whole rows in `before`: a deleted like still names its post's author.
      return createPostgresChangeCapture({ url: shard.url!, source, tables, replicaIdentityFull: true });
    }
    return createSqliteChangeCapture(shard.driver as SqliteDriver, { source, tables });
  });
}

async function openLog(
  o: PipelineOptions,
  identity: string,
): Promise<{ log: ChangeLog; label: string; detail: string }> {
  if (o.natsUrl) {
    const { createNatsChangeLog } = await import('strata/nats');
    const stream = `social_changes_${identity}`;
    const log = await createNatsChangeLog({ url: o.natsUrl, name: stream });
    return { log, label: 'nats', detail: `JetStream stream ${stream}` };
  }
  const file = join(o.dataDir, `changes-${identity}.db`);
  return { log: createSqliteChangeLog({ filename: file }), label: 'sqlite', detail: file };
}

const STATUS_RANK: Record<RelayStats['status'], number> = {
  stopped: 0,
  idle: 1,
  running: 2,
  'backing-off': 3,
};

/** Several relays as one: their figures summed, the most recent position and the worst status. */
function combinedRelay(relays: readonly Relay[], log: ChangeLog): Relay {
  return {
    async start() {
      for (const r of relays) await r.start();
    },
    async stop() {
      for (const r of relays) await r.stop();
    },
    stats() {
      const all = relays.map((r) => r.stats());
      const latest = all.reduce<RelayStats | undefined>(
        (best, s) => ((s.lastRelayedAt ?? 0) > (best?.lastRelayedAt ?? 0) ? s : best),
        undefined,
      );
      return {
        source: all.map((s) => s.source).join(','),
        log: log.name,
        status: all.reduce<RelayStats['status']>(
          (worst, s) => (STATUS_RANK[s.status] > STATUS_RANK[worst] ? s.status : worst),
          'stopped',
        ),
        relayed: all.reduce((n, s) => n + s.relayed, 0),
        duplicates: all.reduce((n, s) => n + s.duplicates, 0),
        failures: all.reduce((n, s) => n + s.failures, 0),
        lastPosition: latest?.lastPosition,
        lastOffset: Math.max(0, ...all.map((s) => s.lastOffset)),
        lastRelayedAt: latest?.lastRelayedAt,
        lastErrorCode: all.find((s) => s.lastErrorCode !== undefined)?.lastErrorCode,
      };
    },
  };
}

/** Starts capture and a relay per shard, the log and the consumers, and registers them on the dashboard. */
export async function startPipeline(o: PipelineOptions): Promise<Pipeline> {
  const { stores } = o;
  const meta = stores.meta;
  await migrateApplied(meta);
  const checkpoints = createSqlCheckpointStore(meta);
  await checkpoints.migrate();
  const identity = await databaseIdentity(meta);
  const { log, label: logLabel, detail: logDetail } = await openLog(o, identity);

  const sources: ChangeSource[] = [];
  const relays: Relay[] = [];
  const byShard = new Map<ShardId, Relay>();
  for (const shard of stores.shardList) {
    const source = captureOf(stores, shard, `social-${await databaseIdentity(shard.driver)}-${shard.id}`);
    const relay = createRelay({ source, log });
    sources.push(source);
    relays.push(relay);
    byShard.set(shard.id, relay);
  }
  const relay = combinedRelay(relays, log);
  const replicaCount = stores.engine === 'sqlite' ? (o.replicas ?? 0) : 0;
  let replicas: EmbeddedReplicas | undefined;
  if (replicaCount > 0) {
    try {
      replicas = await openEmbeddedReplicas({
        stores,
        log,
        logKind: logLabel,
        sources: sources.map((s) => (s as ShardCapture).name),
        dataDir: o.dataDir,
        count: replicaCount,
      });
    } catch (err) {
      await log.close().catch(() => undefined);
      throw err;
    }
  }
  // Consumers that drop cache entries read an entry only once the replicas applied it, so a
  // dropped entry is not refilled from a replica that has not seen the change.
  const cacheLog = replicas === undefined ? log : gatedLog(log, replicas);
  let closed = false;
  // A new partition is captured before any row is written to it: the relay (and with it the
  // capture) restarts with the longer table list; what was not acknowledged is delivered again.
  const stopListening = stores.onPartitionsAdded(async (shard) => {
    const shardRelay = byShard.get(shard);
    if (closed || shardRelay === undefined) return;
    await shardRelay.stop();
    await shardRelay.start();
  });

  const stats = createConsumer({
    name: 'user-stats',
    log,
    checkpoints,
    tables: ['posts', 'comments', 'likes', 'follows'],
    batchSize: 200,
    pollInterval: '500ms',
    handleBatch: (entries) =>
      meta.transaction(async (tx) => {
        for (const e of entries) await applyIfNewer(tx, 'user-stats', e, () => applyStats(tx, e));
      }),
  });

  // The feed's read model is built from the event store: the bridge appends its domain events.
  const bridge = o.events === undefined ? undefined : createFeedBridge({ log, checkpoints, store: o.events });

  // Profiles and post pages: a changed row drops its cached pages.
  const cacheInvalidation = createCacheInvalidator({
    name: 'cache-invalidation',
    cache: o.cache,
    log: cacheLog,
    checkpoints,
    pollInterval: '200ms',
    keys: {
      users: (row) => [userKey(Number(row.id))],
      posts: (row) => [postKey(Number(row.id))],
      likes: (row) => [postKey(Number(row.post_id))],
      comments: (row) => [postKey(Number(row.post_id))],
    },
  });

  const consumers = bridge === undefined ? [stats, cacheInvalidation] : [stats, bridge, cacheInvalidation];
  try {
    await relay.start();
    for (const c of consumers) await c.start();
  } catch (err) {
    closed = true;
    stopListening();
    for (const c of consumers) await c.stop().catch(() => undefined);
    await relay.stop().catch(() => undefined);
    await replicas?.close().catch(() => undefined);
    await log.close().catch(() => undefined);
    throw err;
  }

  const postgres = stores.engine === 'postgres';
  for (const shard of stores.shardList) {
    o.telemetry.addToTopology(
      {
        id: `capture-${shard.id}`,
        kind: 'log',
        label: `change capture ${shard.id}`,
        engine: stores.engine,
        detail: postgres ? 'logical replication (pgoutput)' : 'triggers + outbox table',
      },
      [
        { from: `shard-${shard.id}`, to: `capture-${shard.id}`, label: 'committed rows' },
        { from: `capture-${shard.id}`, to: 'log', label: 'relay' },
      ],
    );
  }
  o.telemetry.addToTopology({
    id: 'log',
    kind: 'log',
    label: 'change log',
    engine: logLabel,
    detail: logDetail,
  });
  o.telemetry.addToTopology(
    {
      id: 'consumer-user-stats',
      kind: 'consumer',
      label: 'user-stats',
      engine: 'consumer',
      detail: 'user_stats table',
    },
    [
      { from: 'log', to: 'consumer-user-stats', label: 'posts, likes, ...' },
      { from: 'consumer-user-stats', to: 'db', label: 'counters' },
    ],
  );
  if (bridge !== undefined) {
    o.telemetry.addToTopology(
      {
        id: 'consumer-feed-events',
        kind: 'consumer',
        label: 'feed-events',
        engine: 'consumer',
        detail: 'posts, follows as events',
      },
      [
        { from: 'log', to: 'consumer-feed-events', label: 'posts, follows' },
        { from: 'consumer-feed-events', to: 'events', label: 'post_published, ...' },
      ],
    );
  }
  o.telemetry.addToTopology(
    {
      id: 'consumer-cache-invalidation',
      kind: 'consumer',
      label: 'cache-invalidation',
      engine: 'consumer',
      detail: 'drops changed profiles and posts',
    },
    [
      { from: 'log', to: 'consumer-cache-invalidation', label: 'users, posts, likes' },
      { from: 'consumer-cache-invalidation', to: 'kv', label: 'delete keys' },
    ],
  );
  o.telemetry.addFigure({
    id: 'consumer_lag_changes',
    panel: 'Consumer lag (changes)',
    unit: 'count',
    help: 'Changes in the log that each consumer has not processed yet.',
    read: () => Object.fromEntries(consumers.map((c) => [c.stats().name, c.stats().lagChanges])),
  });
  o.telemetry.addFigure({
    id: 'consumer_lag_seconds',
    panel: 'Consumer lag (seconds)',
    unit: 's',
    help: 'Age of the oldest change each consumer has not processed yet.',
    read: () => Object.fromEntries(consumers.map((c) => [c.stats().name, c.stats().lagSeconds])),
  });
  const lastRelayed = new Map<ShardId, number>();
  o.telemetry.addFigure({
    id: 'relay_changes_per_second',
    panel: 'Change log throughput',
    unit: 'ops/s',
    help: "Changes each shard's relay moved from capture into the log, per second.",
    read: () => {
      const out: Record<string, number> = {};
      for (const [shard, r] of byShard) {
        const now = r.stats().relayed;
        out[shard] = now - (lastRelayed.get(shard) ?? 0);
        lastRelayed.set(shard, now);
      }
      return out;
    },
  });

  return {
    sources,
    log,
    relays,
    relay,
    checkpoints,
    consumers,
    logLabel,
    logSpec: o.natsUrl ? `${o.natsUrl}#${logDetail.split(' ').pop()}` : `sqlite:${logDetail}`,
    replicas,
    async close() {
      closed = true;
      stopListening();
      for (const c of consumers) await c.stop();
      await relay.stop();
      await replicas?.close();
      await log.close();
    },
  };
}

/**
 * The change log of the app whose meta database is `databaseUrl` (else `<dataDir>/social.db`),
 * as a `--log` spec for the CLI; undefined when that database has no identity yet (never started).
 */
export async function appLogSpec(options: {
  dataDir: string;
  databaseUrl?: string | undefined;
  natsUrl?: string | undefined;
}): Promise<string | undefined> {
  let db: SqlDriver;
  if (options.databaseUrl) {
    const { createPostgresDriver } = await import('strata/postgres');
    db = createPostgresDriver({ url: options.databaseUrl, maxConnections: 1 });
  } else {
    const file = join(options.dataDir, 'social.db');
    if (!existsSync(file)) return undefined;
    db = createSqliteDriver(file);
  }
  try {
    const { rows } = await db
      .query<{ id: string }>(sql`select id from strata_database_identity order by created_at limit 1`)
      .catch(() => ({ rows: [] as { id: string }[] }));
    const id = rows[0]?.id;
    if (id === undefined) return undefined;
    return options.natsUrl
      ? `${options.natsUrl}#social_changes_${id}`
      : `sqlite:${join(options.dataDir, `changes-${id}.db`)}`;
  } finally {
    await db.close();
  }
}
