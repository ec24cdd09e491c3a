/**
 * The app's event store and what runs on it: the store lives in the meta database (tables
 * `strata_events`, `strata_streams`, `strata_snapshots`, the prefix `strata events tail` and
 * `strata projections` default to), the account lifecycle (`accounts.ts`) is decided and
 * projected inline, and the feed (`feed.ts`) is projected asynchronously.
 *
 * Figures for the dashboard and `/metrics`: the store's head, and per projection its position,
 * its lag in events and seconds, and its state, refreshed once a second in the background (the
 * telemetry reads figures synchronously).
 */

import { Gauge } from 'prom-client';
import { type SqlDriver, sql } from 'strata';
import type { Cache } from 'strata/cache';
import {
  type Consumer,
  type ConsumerStats,
  createSqlCheckpointStore,
  type SqlCheckpointStore,
} from 'strata/changes';
import {
  createProjectionConsumer,
  migrateProjections,
  type Projection,
  type ProjectionConsumer,
} from 'strata/cqrs';
import type { EventStore } from 'strata/events';
import { Accounts, accountEventTypes, accountsProjection } from './accounts.js';
import { createFeedInvalidation, feedEventTypes, feedProjection } from './feed.js';
import type { Telemetry, TopologyNode } from './telemetry.js';

/** The event store's table prefix: the default of the CLI's event commands. */
export const EVENT_STORE_PREFIX = 'strata';

/** The checkpoint tables' prefix of the event store's consumers other than projections. */
export const EVENT_CONSUMERS_PREFIX = 'social_events';

/** The app's projections: `accounts` (inline) and `feed` (async), for `strata projections`. */
export function socialProjections(): Projection[] {
  return [accountsProjection, feedProjection];
}

/** Opens the app's event store in the meta database `meta` (SQLite or PostgreSQL), with its event types. */
export async function openSocialEventStore(meta: SqlDriver): Promise<EventStore> {
  const types = [...accountEventTypes, ...feedEventTypes];
  if (meta.dialect.name === 'postgres') {
    const { createPostgresEventStore } = await import('strata/postgres');
    return createPostgresEventStore({
      driver: meta as Parameters<typeof createPostgresEventStore>[0]['driver'],
      tablePrefix: EVENT_STORE_PREFIX,
      types,
    });
  }
  const { createSqliteEventStore } = await import('strata/sqlite');
  return createSqliteEventStore({
    driver: meta as Parameters<typeof createSqliteEventStore>[0]['driver'],
    tablePrefix: EVENT_STORE_PREFIX,
    types,
  });
}

/** One projection as `/api/status` reports it. */
export interface ProjectionReport {
  name: string;
  mode: 'inline' | 'async';
  /** `inline` for inline projections; the consumer's state for async ones. */
  state: string;
  /** The global position it has applied every handled event up to. */
  position: number;
  /** Events of the store behind the head (0 for inline projections: they commit with the events). */
  lag: number;
  /** Age of the oldest event not applied yet, seconds. */
  lagSeconds: number;
  deadLetters: number;
  lastErrorCode: string | null;
}

/** The `events` part of `/api/status`. */
export interface EventsStatus {
  store: string;
  engine: 'sqlite' | 'postgres';
  head: number;
  projections: ProjectionReport[];
  /** Other consumers of the event store (the feed's cache invalidation). */
  consumers: ConsumerStats[];
}

export interface EventSourcing {
  store: EventStore;
  accounts: Accounts;
  /** The async `feed` projection. */
  feed: ProjectionConsumer;
  /** Drops cached feed pages once the projection applied what changed them. */
  invalidation: Consumer;
  status(): Promise<EventsStatus>;
  close(): Promise<void>;
}

export interface EventSourcingOptions {
  meta: SqlDriver;
  engine: 'sqlite' | 'postgres';
  checkpoints: SqlCheckpointStore;
  cache: Cache;
  telemetry: Telemetry;
  /** Run the feed projection and its cache invalidation here (default true). */
  consumers?: boolean;
}

/** Opens the store, migrates the read models, starts the feed projection, registers figures. */
export async function startEventSourcing(o: EventSourcingOptions): Promise<EventSourcing> {
  const store = await openSocialEventStore(o.meta);
  const accounts = new Accounts(store, o.meta);
  const feed = createProjectionConsumer({
    projection: feedProjection,
    store,
    driver: o.meta,
    checkpoints: o.checkpoints,
    batchSize: 200,
    // One batch at a time: fan-out joins posts with followers, which other batches write.
    concurrency: 1,
    pollInterval: '200ms',
  });
  // Other consumers of the event store keep their checkpoints apart from the change log's, so
  // `strata changes consumers` does not measure them against the change log's head.
  const ownCheckpoints = createSqlCheckpointStore(o.meta, { tablePrefix: EVENT_CONSUMERS_PREFIX });
  const invalidation = createFeedInvalidation({
    store,
    meta: o.meta,
    checkpoints: ownCheckpoints,
    projectionCheckpoints: o.checkpoints,
    cache: o.cache,
  });
  const run = o.consumers !== false;
  try {
    await accounts.migrate();
    // The feed's tables too: the API reads them even where the projection runs elsewhere.
    await migrateProjections(o.meta, [feedProjection]);
    await o.checkpoints.migrate();
    await ownCheckpoints.migrate();
    if (run) {
      await feed.start();
      await invalidation.start();
    }
  } catch (err) {
    await invalidation.stop().catch(() => undefined);
    await feed.stop().catch(() => undefined);
    await store.close().catch(() => undefined);
    throw err;
  }

  const accountsPosition = async (): Promise<number> => {
    const { rows } = await o.meta.query<{ p: unknown }>(
      sql`select max(position) as p from ${sql.id(accountsProjection.positionsTable)}`,
    );
    return Number(rows[0]?.p ?? 0);
  };

  const status = async (): Promise<EventsStatus> => {
    const head = await store.head();
    const f = feed.status();
    const feedPosition = run ? f.position : ((await o.checkpoints.load(feed.name))?.offset ?? 0);
    return {
      store: `${EVENT_STORE_PREFIX}_events`,
      engine: o.engine,
      head,
      projections: [
        {
          name: accountsProjection.name,
          mode: 'inline',
          state: 'inline',
          position: await accountsPosition(),
          lag: 0,
          lagSeconds: 0,
          deadLetters: 0,
          lastErrorCode: null,
        },
        {
          name: feedProjection.name,
          mode: 'async',
          state: run ? f.state : 'elsewhere',
          position: feedPosition,
          lag: Math.max(0, head - feedPosition),
          lagSeconds: run ? f.lagSeconds : 0,
          deadLetters: f.deadLetters,
          lastErrorCode: f.lastErrorCode ?? null,
        },
      ],
      consumers: run ? [invalidation.stats()] : [],
    };
  };

  // The figures read a snapshot that a background loop refreshes: reading them is synchronous.
  let latest: EventsStatus | undefined;
  let stopped = false;
  const refresh = async () => {
    try {
      latest = await status();
      const feedReport = latest.projections.find((p) => p.name === feedProjection.name)!;
      o.telemetry.updateNode('projection-feed', {
        status:
          feedReport.state === 'running' || feedReport.state === 'elsewhere'
            ? feedReport.lastErrorCode === null
              ? 'ok'
              : 'degraded'
            : feedReport.state === 'stopped'
              ? 'down'
              : 'degraded',
      });
    } catch {
      // A failed refresh keeps the last figures; the next one tries again.
    }
  };
  await refresh();
  const timer = setInterval(() => {
    if (!stopped) void refresh();
  }, 1_000);
  timer.unref();

  const byName = (field: 'position' | 'lag' | 'lagSeconds') => (): Record<string, number> =>
    Object.fromEntries((latest?.projections ?? []).map((p) => [p.name, p[field]]));
  o.telemetry.addFigure({
    id: 'event_store_head',
    panel: 'Event store positions',
    unit: 'count',
    help: "The event store's head: the global position of the newest event.",
    read: (): Record<string, number> => (latest === undefined ? {} : { head: latest.head }),
  });
  o.telemetry.addFigure({
    id: 'projection_position',
    panel: 'Event store positions',
    unit: 'count',
    help: 'The position each projection has applied every event up to.',
    read: byName('position'),
  });
  o.telemetry.addFigure({
    id: 'projection_lag_events',
    panel: 'Projection lag (events)',
    unit: 'count',
    help: 'Events of the store each projection has not applied yet (inline projections are never behind).',
    read: byName('lag'),
  });
  o.telemetry.addFigure({
    id: 'projection_lag_seconds',
    panel: 'Projection lag (seconds)',
    unit: 's',
    help: 'Age of the oldest event each projection has not applied yet.',
    read: byName('lagSeconds'),
  });
  const gauges = [
    new Gauge({
      name: 'strata_event_store_head',
      help: "The event store's head: the global position of the newest event.",
      registers: [o.telemetry.registry],
      collect() {
        if (latest !== undefined) this.set(latest.head);
      },
    }),
    new Gauge({
      name: 'strata_projection_lag',
      help: 'Events of the event store a projection has not applied yet.',
      labelNames: ['projection'],
      registers: [o.telemetry.registry],
      collect() {
        for (const p of latest?.projections ?? []) this.set({ projection: p.name }, p.lag);
      },
    }),
    new Gauge({
      name: 'strata_projection_lag_seconds',
      help: 'Age of the oldest event a projection has not applied yet, seconds.',
      labelNames: ['projection'],
      registers: [o.telemetry.registry],
      collect() {
        for (const p of latest?.projections ?? []) this.set({ projection: p.name }, p.lagSeconds);
      },
    }),
    new Gauge({
      name: 'strata_projection_position',
      help: 'The global position a projection has applied every event up to.',
      labelNames: ['projection'],
      registers: [o.telemetry.registry],
      collect() {
        for (const p of latest?.projections ?? []) this.set({ projection: p.name }, p.position);
      },
    }),
  ];

  const nodes: Array<[TopologyNode, Array<{ from: string; to: string; label: string }>]> = [
    [
      {
        id: 'events',
        kind: 'store',
        label: 'event store',
        engine: o.engine,
        detail: `${EVENT_STORE_PREFIX}_events in the meta database`,
      },
      [{ from: 'api', to: 'events', label: 'account commands' }],
    ],
    [
      {
        id: 'projection-accounts',
        kind: 'view',
        label: 'accounts projection',
        engine: 'projection',
        detail: 'inline · accounts table',
      },
      [
        { from: 'events', to: 'projection-accounts', label: 'in the append' },
        { from: 'api', to: 'projection-accounts', label: 'suspended?' },
      ],
    ],
    [
      {
        id: 'projection-feed',
        kind: 'view',
        label: 'feed projection',
        engine: 'projection',
        detail: 'async · feed_items',
        status: 'ok',
      },
      [
        { from: 'events', to: 'projection-feed', label: 'posts, follows' },
        { from: 'api', to: 'projection-feed', label: 'feed pages' },
      ],
    ],
  ];
  for (const [node, edges] of nodes) o.telemetry.addToTopology(node, edges);
  await refresh();

  return {
    store,
    accounts,
    feed,
    invalidation,
    status,
    async close() {
      stopped = true;
      clearInterval(timer);
      for (const id of [
        'event_store_head',
        'projection_position',
        'projection_lag_events',
        'projection_lag_seconds',
      ]) {
        o.telemetry.removeFigure(id);
      }
      for (const g of gauges)
        o.telemetry.registry.removeSingleMetric((g as unknown as { name: string }).name);
      await invalidation.stop();
      await feed.stop();
      await store.close();
    },
  };
}
