/**
 * The social app's read replicas: a replica set per shard, so that reads of profiles, feeds and
 * post lists can leave the primary.
 *
 * - Embedded (default): each shard gets `replicas` SQLite files (`shard-<n>-replica-<k>.db` in
 *   the data directory) that apply the shard's changes from the change log; positions are the
 *   shard's outbox sequence (`changeLogPosition`), lag is counted in changes.
 * - PostgreSQL: with `replicaUrls` (streaming standbys of the primary server), each shard's set
 *   reads the shard's database on every standby; positions are WAL LSNs, lag is in WAL bytes.
 *   Without replica URLs every read goes to the primary.
 *
 * A user's own data is read with `session` consistency (read-your-writes) from the token of
 * their last write, which travels in a cookie (see `read-session.ts`); other users' data with
 * `eventual` consistency. A read that finds nothing on a replica is asked again of the primary, so
 * a row that has not reached the replica yet is never reported missing. Writes stay on the primary.
 */
import { existsSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Gauge } from 'prom-client';
import { ConfigError, isStrataError, type SqlDriver, type SqlExecutor } from 'strata';
import type { ChangeLog, LogEntry } from 'strata/changes';
import {
  type Consistency,
  createReplicaSet,
  type ReplicaOptions,
  type ReplicaSet,
  type ReplicaSetStats,
} from 'strata/replication';
import type { ShardId } from 'strata/sharding';
import { changeLogPosition, createSqliteReplica, type SqliteReplica } from 'strata/sqlite';
import type { ReadConsistency, ShardReads } from './repository.js';
import type { SocialStores } from './stores.js';
import type { Telemetry, TopologyNode } from './telemetry.js';

/** The most replicas per shard the app opens. */
export const MAX_REPLICAS = 8;
/** Embedded replicas per shard when `replicas` is not given. */
export const DEFAULT_REPLICAS = 1;

const REFRESH_MS = 1_000;
/** How long cache invalidation waits for the replicas to apply a change before it goes ahead. */
const GATE_TIMEOUT = '2s';

/**
 * The DDL of an embedded replica: the shard's tables with their primary keys and the indexes the
 * reads use, without other constraints (rows arrive one change at a time). `posts` is one plain
 * table: the capture logs every monthly partition's changes as changes of `posts`.
 */
const REPLICA_SCHEMA = `
  create table users (
    id integer primary key, handle text not null, email text not null, name text not null,
    bio text not null default '', created_at integer not null, updated_at integer not null
  );
  create table posts (
    id integer primary key, user_id integer not null, body text not null,
    like_count integer not null default 0, comment_count integer not null default 0,
    created_at integer not null
  );
  create index posts_user_id_idx on posts (user_id, id);
  create table comments (
    id integer primary key, post_id integer not null, post_user_id integer not null,
    user_id integer not null, body text not null, created_at integer not null
  );
  create index comments_post_id_idx on comments (post_id, id);
  create table likes (
    post_id integer not null, post_user_id integer not null, user_id integer not null,
    created_at integer not null, primary key (post_id, user_id)
  );
  create table follows (
    follower_id integer not null, followee_id integer not null, created_at integer not null,
    primary key (follower_id, followee_id)
  );
  create index follows_followee_idx on follows (followee_id);
`;

/** Checks the `replicas` option: an integer from 0 (none) to `MAX_REPLICAS`. */
export function checkReplicaCount(value: unknown): number {
  if (value === undefined) return DEFAULT_REPLICAS;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_REPLICAS) {
    throw new ConfigError('replicas', `must be an integer from 0 to ${MAX_REPLICAS}`);
  }
  return value;
}

/** Checks `replicaUrls`: PostgreSQL URLs of standbys of the primary server. */
export function checkReplicaUrls(value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.length > MAX_REPLICAS) {
    throw new ConfigError('replicaUrls', `expected at most ${MAX_REPLICAS} postgres:// URLs`);
  }
  return value.map((url: unknown) => {
    if (typeof url !== 'string' || !/^postgres(ql)?:\/\//.test(url)) {
      throw new ConfigError('replicaUrls', 'each replica must be a postgres:// URL');
    }
    try {
      new URL(url);
    } catch (err) {
      throw new ConfigError('replicaUrls', 'a replica URL is not a valid URL', { cause: err });
    }
    return url;
  });
}

/** Replica URLs from `STRATA_REPLICA_URLS` (comma-separated; blanks ignored). */
export function replicaUrlsFromEnv(text: string | undefined): string[] | undefined {
  if (text === undefined) return undefined;
  const urls = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  return urls.length === 0 ? undefined : urls;
}

// ---------------------------------------------------------------------------------------------
// Embedded replicas

/** The embedded replicas of every shard, fed from the change log. */
export interface EmbeddedReplicas {
  /** The replicas of each shard, in shard-map order. */
  readonly byShard: ReadonlyMap<ShardId, readonly SqliteReplica[]>;
  /**
   * Resolves once every replica has applied the log up to `offset`, or after a short timeout (a
   * stuck replica leaves the rotation by its lag; it must not hold cache invalidation back).
   */
  caughtUp(offset: number): Promise<void>;
  close(): Promise<void>;
}

function removeDatabaseFile(file: string): void {
  for (const suffix of ['', '-wal', '-shm']) rmSync(`${file}${suffix}`, { force: true });
}

/**
 * Opens one replica file; a file that replicates another source (the shard was recreated) or that
 * is ahead of the log (the log was replaced) is a stale copy, and is rebuilt from the log.
 */
async function openReplica(
  file: string,
  log: ChangeLog,
  source: string,
  name: string,
): Promise<SqliteReplica> {
  const open = () =>
    createSqliteReplica({ filename: file, log, source, name, schema: REPLICA_SCHEMA, pollInterval: '250ms' });
  let replica: SqliteReplica;
  try {
    replica = open();
  } catch (err) {
    if (!isStrataError(err, 'E_CONFIG') || !existsSync(file)) throw err;
    removeDatabaseFile(file);
    replica = open();
  }
  const status = await replica.status();
  if (status.offset > (await log.head())) {
    await replica.close();
    removeDatabaseFile(file);
    replica = open();
  }
  await replica.start();
  return replica;
}

/**
 * Opens and starts `count` replicas per shard in `dataDir`, each applying the changes of its
 * shard's source (`sources`, in shard-map order) from `log`. The log's kind is part of the file
 * name, since positions in one log mean nothing in another.
 */
export async function openEmbeddedReplicas(o: {
  stores: SocialStores;
  log: ChangeLog;
  logKind: string;
  sources: readonly string[];
  dataDir: string;
  count: number;
}): Promise<EmbeddedReplicas> {
  const byShard = new Map<ShardId, SqliteReplica[]>();
  const all: SqliteReplica[] = [];
  try {
    for (const [index, shard] of o.stores.shardList.entries()) {
      const suffix = /^s(\d{1,4})$/.exec(shard.id)?.[1] ?? shard.id;
      const list: SqliteReplica[] = [];
      for (let k = 1; k <= o.count; k++) {
        const tail = o.logKind === 'sqlite' ? '' : `-${o.logKind}`;
        const file = resolve(join(o.dataDir, `shard-${suffix}-replica-${k}${tail}.db`));
        const replica = await openReplica(file, o.log, o.sources[index]!, `social-${shard.id}-r${k}`);
        list.push(replica);
        all.push(replica);
      }
      byShard.set(shard.id, list);
    }
  } catch (err) {
    for (const r of all) await r.close().catch(() => undefined);
    throw err;
  }
  return {
    byShard,
    async caughtUp(offset) {
      await Promise.all(all.map((r) => r.caughtUp({ offset, timeout: GATE_TIMEOUT }).catch(() => undefined)));
    },
    async close() {
      for (const r of all) await r.close();
    },
  };
}

/**
 * The log as consumers that invalidate caches should read it: an entry is handed out only once
 * the embedded replicas have applied it, so a cache entry dropped for a change is never refilled
 * from a replica that has not seen the change yet.
 */
export function gatedLog(log: ChangeLog, replicas: EmbeddedReplicas): ChangeLog {
  return {
    get name() {
      return log.name;
    },
    append: (changes) => log.append(changes),
    async read(after, limit, options) {
      const entries: LogEntry[] = await log.read(after, limit, options);
      const last = entries.at(-1);
      if (last !== undefined) await replicas.caughtUp(last.offset);
      return entries;
    },
    head: () => log.head(),
    lastPosition: (source) => log.lastPosition(source),
    watch: (listener) => log.watch(listener),
    // The underlying log belongs to the pipeline, which closes it.
    close: async () => undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Replica sets

/** One replica as `/api/status` reports it. */
export interface ReplicaStatus {
  /** `<shard>/<replica>`, as in the figures and metrics. */
  id: string;
  shard: ShardId;
  name: string;
  /** A file or `host:port/database`. */
  detail: string;
  state: ReplicaSetStats['replicas'][number]['state'];
  healthy: boolean;
  /** Lag in `unit` (changes or WAL bytes), as last measured. */
  lag: number | null;
  unit: 'changes' | 'bytes';
  /** Lag in seconds, as last measured. */
  lagSeconds: number | null;
  position: string | null;
  reads: number;
  /** Share of its shard's reads this replica served (0..1). */
  share: number;
}

/** The `replicas` part of `/api/status`. */
export interface ReplicasStatus {
  /** `embedded` (SQLite files), `postgres` (standbys) or `off`. */
  mode: 'embedded' | 'postgres' | 'off';
  /** Replicas per shard. */
  perShard: number;
  replicas: ReplicaStatus[];
  shards: Array<{
    shard: ShardId;
    primary: { reads: number; share: number; position: string | null; state: string };
    reads: ReplicaSetStats['reads'];
    /** Session (read-your-writes) reads: served by replicas, and fallen back to the primary. */
    session: { reads: number; servedByReplicas: number; fallbacks: number; waitP99Ms: number | null };
    fallbacks: ReplicaSetStats['fallbacks'];
  }>;
  /** Token cookies refused (malformed, forged, from another process or cluster). */
  badTokens: number;
  /** Reads that found nothing on a replica and were asked again of the primary. */
  missRetries: number;
}

/** The app's replica sets: routed reads, tokens, figures. */
export interface SocialReplicas extends ShardReads {
  /** True when at least one shard has a replica. */
  readonly enabled: boolean;
  /** The token of the primary's position on `shard` now (after a write there). */
  token(shard: ShardId): Promise<string>;
  /** True when `token` is a valid token of `shard`'s set. */
  accepts(shard: ShardId, token: string): boolean;
  /** Counts a refused token cookie. */
  countBadToken(): void;
  /** The `replicas` part of `/api/status`. */
  status(): ReplicasStatus;
  close(): Promise<void>;
}

interface ShardSet {
  shard: ShardId;
  primary: SqlDriver;
  set: ReplicaSet;
  details: Map<string, string>;
  ownDrivers: SqlDriver[];
}

function nodeStatus(state: string): TopologyNode['status'] {
  return state === 'down' ? 'down' : state === 'lagging' ? 'degraded' : 'ok';
}

/** A replica URL pointed at `database` (the shard's database on that standby). */
function urlForDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * Builds the replica sets (embedded replicas from `embedded`, or standbys from `replicaUrls` on
 * PostgreSQL), registers their figures, metrics and topology, and starts their monitors. With no
 * replica at all, `enabled` is false and every read goes to the shard's primary.
 */
export async function createSocialReplicas(o: {
  stores: SocialStores;
  telemetry: Telemetry;
  embedded?: EmbeddedReplicas | undefined;
  replicaUrls?: readonly string[] | undefined;
  /** The HMAC secret of tokens (default random: tokens are only valid in this process). */
  tokenSecret?: string | undefined;
}): Promise<SocialReplicas> {
  const { stores, telemetry } = o;
  const postgres = stores.engine === 'postgres';
  const urls = postgres ? [...(o.replicaUrls ?? [])] : [];
  const mode: ReplicasStatus['mode'] = postgres
    ? urls.length > 0
      ? 'postgres'
      : 'off'
    : o.embedded !== undefined && [...o.embedded.byShard.values()].some((l) => l.length > 0)
      ? 'embedded'
      : 'off';
  const unit: 'changes' | 'bytes' = postgres ? 'bytes' : 'changes';
  const sets = new Map<ShardId, ShardSet>();
  let badTokens = 0;
  let missRetries = 0;

  if (mode !== 'off') {
    const pg = postgres ? await import('strata/postgres') : undefined;
    const position = pg === undefined ? changeLogPosition() : pg.postgresWalPosition();
    for (const shard of stores.shardList) {
      const replicas: ReplicaOptions[] = [];
      const details = new Map<string, string>();
      const ownDrivers: SqlDriver[] = [];
      if (mode === 'embedded') {
        for (const [k, replica] of (o.embedded!.byShard.get(shard.id) ?? []).entries()) {
          const name = `r${k + 1}`;
          replicas.push({ name, driver: replica.driver });
          details.set(name, replica.filename);
        }
      } else {
        const database = decodeURIComponent(new URL(shard.url!).pathname.replace(/^\//, ''));
        for (const [k, url] of urls.entries()) {
          const name = `r${k + 1}`;
          const replicaUrl = urlForDatabase(url, database);
          // Created lazily by the pool: a standby that does not answer is reported down, not fatal.
          const driver = pg!.createPostgresDriver({
            url: replicaUrl,
            name: `social-${shard.id}-${name}`,
            maxConnections: 4,
            connectTimeout: '2s',
            onBackgroundError: () => undefined,
          });
          ownDrivers.push(driver);
          replicas.push({ name, driver });
          const u = new URL(replicaUrl);
          details.set(name, `${u.hostname}:${u.port || '5432'}/${database}`);
        }
      }
      const set = createReplicaSet({
        primary: shard.driver,
        replicas,
        position,
        clusterId: `social-${shard.id}`,
        ...(o.tokenSecret === undefined ? {} : { tokenSecret: o.tokenSecret }),
        health: { interval: '250ms', maxLag: '10s' },
        session: { wait: '500ms' },
      });
      sets.set(shard.id, { shard: shard.id, primary: shard.driver, set, details, ownDrivers });
    }
  }

  const all = () => [...sets.values()];
  const replicaRows = (): ReplicaStatus[] =>
    all().flatMap(({ shard, set, details }) =>
      set.stats().replicas.map((r) => ({
        id: `${shard}/${r.name}`,
        shard,
        name: r.name,
        detail: details.get(r.name) ?? '',
        state: r.state,
        healthy: r.healthy,
        lag: r.lag ?? null,
        unit,
        lagSeconds: r.lagSeconds ?? null,
        position: r.position ?? null,
        reads: r.reads,
        share: r.share,
      })),
    );

  // Topology: a box per replica, fed by the log (embedded) or the shard's WAL (PostgreSQL).
  for (const { shard, details } of all()) {
    for (const [name, detail] of details) {
      const id = `replica-${shard}-${name}`;
      telemetry.addToTopology(
        {
          id,
          kind: 'replica',
          label: `replica ${shard}/${name}`,
          engine: stores.engine,
          detail: mode === 'embedded' ? (detail.split(/[\\/]/).pop() ?? detail) : detail,
        },
        [
          mode === 'embedded'
            ? { from: 'log', to: id, label: `applies ${shard} changes` }
            : { from: `shard-${shard}`, to: id, label: 'WAL streaming' },
          { from: 'router', to: id, label: 'eventual, session reads' },
        ],
      );
    }
  }
  const refreshNodes = () => {
    for (const r of replicaRows()) {
      telemetry.updateNode(`replica-${r.shard}-${r.name}`, { status: nodeStatus(r.state) });
    }
  };
  const timer = mode === 'off' ? undefined : setInterval(refreshNodes, REFRESH_MS);
  timer?.unref();

  const figureIds: string[] = [];
  const addFigure = (figure: Parameters<Telemetry['addFigure']>[0]) => {
    figureIds.push(figure.id);
    telemetry.addFigure(figure);
  };
  const gauges: string[] = [];
  if (mode !== 'off') {
    const lagId = unit === 'changes' ? 'replica_lag_changes' : 'replica_lag_bytes';
    addFigure({
      id: lagId,
      panel: unit === 'changes' ? 'Replica lag (changes)' : 'Replica lag (WAL bytes)',
      unit: 'count',
      help:
        unit === 'changes'
          ? 'Changes of its shard each replica has not applied yet, as last measured.'
          : 'WAL bytes each standby has not replayed yet, as last measured.',
      read: () => Object.fromEntries(replicaRows().flatMap((r) => (r.lag === null ? [] : [[r.id, r.lag]]))),
    });
    addFigure({
      id: 'replica_lag_seconds',
      panel: 'Replica lag (seconds)',
      unit: 's',
      help: 'How stale each replica is, in seconds: at most the age of the oldest write it has not applied.',
      read: () =>
        Object.fromEntries(
          replicaRows().flatMap((r) => (r.lagSeconds === null ? [] : [[r.id, r.lagSeconds]])),
        ),
    });
    addFigure({
      id: 'replica_read_share',
      panel: 'Reads served by replicas',
      unit: 'ratio',
      help: "Share of its shard's routed reads (profiles, feeds, post lists) each replica served since start.",
      read: () => Object.fromEntries(replicaRows().map((r) => [r.id, r.share])),
    });
    addFigure({
      id: 'replica_session_fallbacks',
      panel: 'Read-your-writes on the primary',
      unit: 'count',
      help: "Session reads (a user's own data after a write) that no replica could serve in time, so the primary did, per shard since start; and token cookies refused.",
      read: () => {
        const out: Record<string, number> = {};
        for (const { shard, set } of all()) out[shard] = set.stats().session.fallbacks;
        out['bad tokens'] = badTokens;
        return out;
      },
    });

    const registry = telemetry.registry;
    const gauge = (name: string, help: string, labelNames: string[], collect: (g: Gauge) => void) => {
      const g: Gauge = new Gauge({
        name,
        help,
        labelNames,
        registers: [registry],
        collect() {
          g.reset();
          collect(g);
        },
      });
      gauges.push(name);
    };
    gauge(
      'strata_replica_lag',
      `Replica lag in ${unit}, as last measured.`,
      ['shard', 'replica', 'unit'],
      (g) => {
        for (const r of replicaRows())
          if (r.lag !== null) g.set({ shard: r.shard, replica: r.name, unit }, r.lag);
      },
    );
    gauge(
      'strata_replica_lag_seconds',
      'Replica lag in seconds, as last measured.',
      ['shard', 'replica'],
      (g) => {
        for (const r of replicaRows()) {
          if (r.lagSeconds !== null) g.set({ shard: r.shard, replica: r.name }, r.lagSeconds);
        }
      },
    );
    gauge(
      'strata_replica_healthy',
      '1 while a replica is in the read rotation, else 0.',
      ['shard', 'replica'],
      (g) => {
        for (const r of replicaRows()) g.set({ shard: r.shard, replica: r.name }, r.healthy ? 1 : 0);
      },
    );
    gauge(
      'strata_replica_reads',
      'Routed reads served since start, by shard and node (a replica, or primary).',
      ['shard', 'node'],
      (g) => {
        for (const { shard, set } of all()) {
          const s = set.stats();
          g.set({ shard, node: 'primary' }, s.primary.reads);
          for (const r of s.replicas) g.set({ shard, node: r.name }, r.reads);
        }
      },
    );
    gauge(
      'strata_replica_read_share',
      "Share of its shard's routed reads each replica served since start (0..1).",
      ['shard', 'replica'],
      (g) => {
        for (const r of replicaRows()) g.set({ shard: r.shard, replica: r.name }, r.share);
      },
    );
    gauge(
      'strata_replica_session_fallbacks',
      'Session (read-your-writes) reads served by the primary because no replica caught up in time, since start.',
      ['shard'],
      (g) => {
        for (const { shard, set } of all()) g.set({ shard }, set.stats().session.fallbacks);
      },
    );
    gauge('strata_replica_bad_tokens', 'Consistency token cookies refused since start.', [], (g) => {
      g.set(badTokens);
    });
  }

  const setOf = (shard: ShardId) => sets.get(shard)?.set;
  const primaryOf = (shard: ShardId): SqlExecutor => {
    const driver = stores.router.shards.get(shard);
    if (driver === undefined) throw new ConfigError('shard', 'not a shard of these stores');
    return driver;
  };

  return {
    enabled: mode !== 'off',
    async read<T>(shard: ShardId, consistency: ReadConsistency, fn: (db: SqlExecutor) => Promise<T>) {
      const set = setOf(shard);
      if (set === undefined || consistency === 'strong') return fn(primaryOf(shard));
      let onReplica = false;
      try {
        return await set.read(
          (db, info) => {
            onReplica = info.replica;
            return fn(db);
          },
          { consistency: consistency as Consistency },
        );
      } catch (err) {
        // A row may not have reached the replica yet: only the primary may say it is missing.
        if (!onReplica || !isStrataError(err, 'E_NOT_FOUND')) throw err;
        missRetries++;
        return set.read((db) => fn(db), { consistency: 'strong' });
      }
    },
    async token(shard) {
      const set = setOf(shard);
      if (set === undefined) throw new ConfigError('shard', 'this shard has no replica set');
      return set.token();
    },
    accepts(shard, token) {
      const set = setOf(shard);
      if (set === undefined) return false;
      try {
        set.parseToken(token);
        return true;
      } catch {
        return false;
      }
    },
    countBadToken() {
      badTokens++;
    },
    status() {
      return {
        mode,
        perShard: mode === 'off' ? 0 : Math.max(0, ...all().map((s) => s.details.size)),
        replicas: replicaRows(),
        shards: all().map(({ shard, set }) => {
          const s = set.stats();
          return {
            shard,
            primary: {
              reads: s.primary.reads,
              share: s.primary.share,
              position: s.primary.position ?? null,
              state: s.primary.state,
            },
            reads: s.reads,
            session: {
              reads: s.session.reads,
              servedByReplicas: s.session.servedByReplicas,
              fallbacks: s.session.fallbacks,
              waitP99Ms: s.session.waitP99Ms ?? null,
            },
            fallbacks: s.fallbacks,
          };
        }),
        badTokens,
        missRetries,
      };
    },
    async close() {
      if (timer !== undefined) clearInterval(timer);
      for (const id of figureIds) telemetry.removeFigure(id);
      for (const name of gauges) telemetry.registry.removeSingleMetric(name);
      for (const s of all()) {
        await s.set.close();
        for (const d of s.ownDrivers) await d.close().catch(() => undefined);
      }
    },
  };
}
