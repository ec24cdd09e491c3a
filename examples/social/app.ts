/**
 * The social reference application: assembles the engines (SQLite files and the memory tier by
 * default; PostgreSQL and Redis when their URLs are set), the sharded stores, the HTTP API,
 * `/metrics`, the dashboard and the telemetry behind it.
 */
import { accessSync, constants, mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { ConfigError, isStrataError, type SqlDriver, StrataError } from 'strata';
import { createSqlCheckpointStore } from 'strata/changes';
import { type Caching, openCaching } from './caching.js';
import { type Pipeline, startPipeline } from './changes.js';
import { registerDashboard } from './dashboard.js';
import { type EventSourcing, startEventSourcing } from './event-sourcing.js';
import { errorHandler, notFoundHandler } from './http-errors.js';
import {
  checkReplicaCount,
  checkReplicaUrls,
  createSocialReplicas,
  replicaUrlsFromEnv,
  type SocialReplicas,
} from './replicas.js';
import { SocialRepository, sumCounts } from './repository.js';
import { registerRoutes } from './routes.js';
import { type ShardTelemetry, shardTopology, startShardTelemetry } from './shard-status.js';
import { openStores, type SocialStores } from './stores.js';
import { Telemetry, type TelemetryOptions } from './telemetry.js';

/** Options of the reference app; every one has a default that works with nothing installed. */
export interface SocialAppOptions {
  /** Where the SQLite files live (default `./data`); with `databaseUrl`, still the home of the embedded log and queue. */
  dataDir?: string;
  /**
   * PostgreSQL URL; when set the app stores its data there instead of SQLite: the URL's database
   * is the meta database, and the shards are databases `<db>_shard_<n>` on the same server.
   */
  databaseUrl?: string | undefined;
  /**
   * Shards of a new data directory or database (default 2). Once a shard map exists the map
   * decides; a different count is `E_CONFIG` (option `shards`): reshard to change it.
   */
  shards?: number | undefined;
  /** Redis URL; when set the key-value tier is Redis instead of memory. */
  redisUrl?: string | undefined;
  /** NATS URL; when set the change log is a JetStream stream instead of a SQLite file. */
  natsUrl?: string | undefined;
  /** Run change capture, the change log and its consumers (default true). */
  changes?: boolean;
  /** Address to bind (default `127.0.0.1`). */
  host?: string;
  /** Port to bind (default 3000; 0 picks a free one). */
  port?: number;
  /** Largest accepted request body in bytes (default 64 KiB). */
  bodyLimit?: number;
  /**
   * How long cached profiles, posts and first feed pages stay fresh (default `5m`). Changes
   * invalidate them sooner: the change log's invalidation consumers drop changed pages.
   */
  cacheTtl?: string;
  /**
   * Embedded SQLite read replicas per shard, fed from the shard's changes in the change log
   * (default 1; 0 disables them). Needs `changes`; ignored on PostgreSQL (see `replicaUrls`).
   */
  replicas?: number;
  /**
   * PostgreSQL only: URLs of streaming standbys of the primary server (default: the
   * comma-separated `STRATA_REPLICA_URLS`); each shard reads its database on every standby.
   * Without any, every read goes to the primary.
   */
  replicaUrls?: string[] | undefined;
  /**
   * The secret (at least 16 bytes) that signs the `strata_token` cookie's tokens; processes that
   * serve the same users need the same one (default: random per process, so a restart makes old
   * cookies merely useless).
   */
  tokenSecret?: string | undefined;
  /** Fastify request logging (default false). */
  logger?: boolean;
  telemetry?: TelemetryOptions;
}

/** The assembled app, not yet listening. */
export interface SocialApp {
  server: FastifyInstance;
  repo: SocialRepository;
  telemetry: Telemetry;
  /** The meta database (index tables, id leases, shard map, checkpoints, user stats). */
  db: SqlDriver;
  /** The meta database, the shards, the router, the id generator and the shard-map store. */
  stores: SocialStores;
  /** The cache and the like-counter write-behind. */
  caching: Caching;
  /** Which engines back the app, for the banner and `strata status`. */
  engines: { database: string; cache: string; changeLog: string };
  /** Capture, log, relays and consumers; undefined with `changes: false`. */
  pipeline: Pipeline | undefined;
  /** The read replica sets of the shards (`enabled` false when there are none). */
  replicas: SocialReplicas;
  /** The event store in the meta database, the account lifecycle and the feed projection. */
  events: EventSourcing;
  /** Stops the server and closes every engine connection. */
  close(): Promise<void>;
}

/** A listening app. */
export interface RunningSocialApp extends SocialApp {
  /** Base URL of the API with the port actually bound. */
  url: string;
  dashboardUrl: string;
  metricsUrl: string;
}

const ROUTES_WITHOUT_TELEMETRY = ['/dashboard', '/metrics', '/api/status'];

function ensureWritableDir(dir: string): string {
  const abs = resolve(dir);
  try {
    mkdirSync(abs, { recursive: true });
    accessSync(abs, constants.W_OK);
  } catch (err) {
    throw new ConfigError('data-dir', `directory ${abs} cannot be created or written`, { cause: err });
  }
  return abs;
}

/** Builds the app: engines opened and migrated, routes registered; call `server.listen` or use `startSocialApp`. */
export async function createSocialApp(options: SocialAppOptions = {}): Promise<SocialApp> {
  const bodyLimit = options.bodyLimit ?? 64 * 1024;
  if (!Number.isInteger(bodyLimit) || bodyLimit < 1)
    throw new ConfigError('bodyLimit', 'must be a positive integer');
  const replicaCount = checkReplicaCount(options.replicas);
  const replicaUrls = checkReplicaUrls(
    options.replicaUrls ?? replicaUrlsFromEnv(process.env.STRATA_REPLICA_URLS),
  );
  const dataDir = ensureWritableDir(options.dataDir ?? './data');
  const stores = await openStores({
    dataDir,
    databaseUrl: options.databaseUrl || undefined,
    shards: options.shards,
  });
  let caching: Caching | undefined;
  let pipeline: Pipeline | undefined;
  let shardTelemetry: ShardTelemetry | undefined;
  let replicas: SocialReplicas | undefined;
  let events: EventSourcing | undefined;
  try {
    const repo = new SocialRepository(stores);
    const telemetry = new Telemetry(options.telemetry);
    const server = Fastify({
      logger: options.logger ?? false,
      bodyLimit,
      routerOptions: { maxParamLength: 200 },
    });
    server.setErrorHandler(errorHandler);
    server.setNotFoundHandler(notFoundHandler);
    server.addHook('onResponse', async (request, reply) => {
      const route = request.routeOptions.url ?? 'unmatched';
      if (ROUTES_WITHOUT_TELEMETRY.some((prefix) => route.startsWith(prefix))) return;
      telemetry.recordRequest(request.method, route, reply.statusCode, reply.elapsedTime);
    });
    server.get('/metrics', async (_req, reply) => {
      reply.type(telemetry.registry.contentType);
      return telemetry.registry.metrics();
    });

    const shards = shardTopology(stores);
    telemetry.setTopology({
      nodes: [
        {
          id: 'api',
          kind: 'api',
          label: 'HTTP API',
          engine: 'fastify',
          detail: 'users, accounts, posts, comments, likes, follows, feed',
        },
        shards.nodes[0]!,
        {
          id: 'db',
          kind: 'store',
          label: 'social database',
          engine: stores.engine,
          detail: stores.metaDetail,
        },
        ...shards.nodes.slice(1),
      ],
      edges: [
        { from: 'api', to: 'router', label: 'reads, writes' },
        { from: 'api', to: 'db', label: 'index lookups' },
        ...shards.edges,
      ],
    });
    caching = await openCaching({
      recountLikes: (postIds) => repo.recountLikes(postIds),
      telemetry,
      dataDir,
      redisUrl: options.redisUrl,
      ...(options.cacheTtl ? { ttl: options.cacheTtl } : {}),
    });
    events = await startEventSourcing({
      meta: stores.meta,
      engine: stores.engine,
      checkpoints: createSqlCheckpointStore(stores.meta),
      cache: caching.cache,
      telemetry,
    });
    repo.accounts = events.accounts;
    if (options.changes !== false) {
      pipeline = await startPipeline({
        stores,
        cache: caching.cache,
        telemetry,
        dataDir,
        natsUrl: options.natsUrl,
        replicas: replicaCount,
        events: events.store,
      });
    }
    replicas = await createSocialReplicas({
      stores,
      telemetry,
      embedded: pipeline?.replicas,
      replicaUrls,
      tokenSecret: options.tokenSecret,
    });
    const openReplicas = replicas;
    if (replicas.enabled) repo.reads = replicas;
    const openEvents = events;
    registerRoutes(server, {
      repo,
      cache: caching.cache,
      likeCounts: caching.likeCounts,
      replicas: openReplicas,
      accounts: openEvents.accounts,
    });
    const sharding = startShardTelemetry(stores, repo, telemetry);
    shardTelemetry = sharding;
    const changeLog = pipeline?.logLabel ?? 'off';
    const engines = { database: stores.engine, cache: caching.label, changeLog };
    const startedAt = Date.now();
    const openCache = caching;
    server.get('/api/status', async () => {
      const shardStatus = await sharding.status();
      return {
        app: 'social',
        startedAt,
        uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
        engines,
        topology: telemetry.topology(),
        latest: telemetry.latest() ?? null,
        counts: sumCounts(Object.values(shardStatus.rows)),
        shards: shardStatus,
        cache: { ...openCache.cache.stats(), writeBehind: openCache.likeCounts.stats() },
        replicas: openReplicas.status(),
        changes:
          pipeline === undefined
            ? null
            : {
                log: pipeline.logLabel,
                head: await pipeline.log.head().catch(() => null),
                relay: pipeline.relay.stats(),
                relays: pipeline.relays.map((r) => r.stats()),
                consumers: pipeline.consumers.map((c) => c.stats()),
              },
        events: await openEvents.status(),
      };
    });
    registerDashboard(server, telemetry);
    telemetry.start();

    const running = pipeline;
    return {
      server,
      repo,
      telemetry,
      db: stores.meta,
      stores,
      caching: openCache,
      pipeline: running,
      replicas: openReplicas,
      events: openEvents,
      engines,
      async close() {
        telemetry.stop();
        await server.close();
        await sharding.stop();
        await openReplicas.close();
        // Pending like counts reach the shards before they close.
        await openCache.likeCounts.close();
        await running?.close();
        await openEvents.close();
        await openCache.close();
        await stores.close();
      },
    };
  } catch (err) {
    await shardTelemetry?.stop().catch(() => undefined);
    await replicas?.close().catch(() => undefined);
    await pipeline?.close().catch(() => undefined);
    await events?.close().catch(() => undefined);
    await caching?.close().catch(() => undefined);
    await stores.close();
    throw err;
  }
}

/** Builds the app and listens; `E_CONFIG` (option `port`) names a port that is already taken. */
export async function startSocialApp(options: SocialAppOptions = {}): Promise<RunningSocialApp> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 3000;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new ConfigError('port', 'must be 0..65535');
  const app = await createSocialApp(options);
  try {
    await app.server.listen({ host, port });
  } catch (err) {
    await app.close();
    const code = (err as { code?: string }).code;
    if (code === 'EADDRINUSE') {
      throw new ConfigError(
        'port',
        `port ${port} on ${host} is already in use; choose another with --port (0 picks a free one)`,
        {
          cause: err,
        },
      );
    }
    if (code === 'EADDRNOTAVAIL' || code === 'EACCES') {
      throw new ConfigError('host', `cannot bind ${host}:${port} (${code})`, { cause: err });
    }
    throw isStrataError(err)
      ? err
      : new StrataError('E_LISTEN', 'the server could not start listening', { cause: err });
  }
  const address = app.server.server.address();
  const boundPort = typeof address === 'object' && address !== null ? address.port : port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${shownHost}:${boundPort}`;
  return { ...app, url, dashboardUrl: `${url}/dashboard`, metricsUrl: `${url}/metrics` };
}
