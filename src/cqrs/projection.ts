/**
 * Projections: SQL read models built from events. A projection is a plain frozen definition
 * (its tables, the event types it handles, its DDL and how one event changes its rows) that runs
 * in one of two ways:
 *
 * - inline: inside the transaction that appends the events (see `createCommandHandler`), so the
 *   read model commits or rolls back with them;
 * - asynchronously: as a named consumer of the event store's change-log view, with a durable
 *   checkpoint, retries, dead letters and lag, through the shared consumer runtime.
 *
 * Either way every applied event is recorded per stream in the projection's positions table
 * (`<name>__positions`) in the same transaction as the rows it changed, so a redelivered or
 * replayed event is skipped (exactly-once effect per stream) and a rebuild can tell whether its
 * shadow tables hold everything the live ones do.
 */
import { type Consumer, type ConsumerOptions, createConsumer } from '../changes/consumer.js';
import {
  assertConsumerName,
  createSqlCheckpointStore,
  type SqlCheckpointStore,
} from '../changes/sql-checkpoint-store.js';
import type { LogEntry } from '../core/changes.js';
import { ConfigError } from '../core/errors.js';
import {
  configIdentifier,
  isSqlFragment,
  nameHash32,
  type SqlDriver,
  type SqlExecutor,
  type SqlFragment,
  sql,
} from '../core/sql.js';
import type { EventStore, RecordedEvent } from '../events/types.js';

/** The projection's tables as quoted identifiers, by logical name, for DDL and `apply`. */
export type ProjectionTables<K extends string = string> = Readonly<Record<K, SqlFragment>>;
/** The projection's physical table names, by logical name (to derive index names from). */
export type ProjectionTableNames<K extends string = string> = Readonly<Record<K, string>>;

/** What `defineProjection` takes. */
export interface ProjectionDefinition<K extends string = string> {
  /** The projection's name: a SQL identifier of at most 43 characters (it names `<name>__positions`). */
  name: string;
  /**
   * Its tables: logical name to physical table name (identifiers of at most 54 characters, so
   * that `<table>__rebuild` fits). A rebuild fills `<table>__rebuild` and renames it in.
   */
  tables: Record<K, string>;
  /** The event types it handles; other events are skipped. */
  handles: readonly string[];
  /** Only events of these stream types (categories) reach an async projection (default all). */
  streamTypes?: readonly string[];
  /**
   * The DDL creating its tables (idempotent: `create table if not exists`). Name tables only
   * through `t` and derive index names from `names` (`sql.id(`${names.rows}_by_owner`)`), so
   * the same DDL creates the shadow tables of a rebuild.
   */
  schema: (t: ProjectionTables<K>, names: ProjectionTableNames<K>) => SqlFragment | readonly SqlFragment[];
  /**
   * Applies one event to the tables in `t` through `executor` (the transaction). Runs at most once
   * per event and stream order per stream; events of different streams may arrive in any order.
   */
  apply: (executor: SqlExecutor, event: RecordedEvent, t: ProjectionTables<K>) => Promise<void> | void;
}

/** A validated projection: a frozen definition with `kind: 'projection'`. */
export interface Projection<K extends string = string> extends Readonly<ProjectionDefinition<K>> {
  readonly kind: 'projection';
  readonly tables: Readonly<Record<K, string>>;
  readonly handles: readonly string[];
  /** The table recording the last position applied per stream (`<name>__positions`). */
  readonly positionsTable: string;
}

/** The suffix of a rebuild's shadow tables. */
export const SHADOW_SUFFIX = '__rebuild';
const MAX_PROJECTION_NAME = 63 - '__positions'.length - SHADOW_SUFFIX.length;
const MAX_TABLE_NAME = 63 - SHADOW_SUFFIX.length;

/**
 * Validates a projection definition once and returns it frozen. Throws `E_CONFIG` naming the
 * option: a name or table that is not a SQL identifier (or too long to take the rebuild suffix),
 * no tables, no handled types, or `schema` / `apply` not functions.
 */
export function defineProjection<K extends string>(definition: ProjectionDefinition<K>): Projection<K> {
  if (typeof definition !== 'object' || definition === null) {
    throw new ConfigError('projection', 'expected a projection definition object');
  }
  const name = configIdentifier(definition.name, 'name');
  if (name.length > MAX_PROJECTION_NAME) {
    throw new ConfigError('name', `a projection name is at most ${MAX_PROJECTION_NAME} characters`);
  }
  if (typeof definition.tables !== 'object' || definition.tables === null) {
    throw new ConfigError('tables', 'expected an object of logical name to table name');
  }
  const entries = Object.entries(definition.tables) as Array<[K, unknown]>;
  if (entries.length === 0) throw new ConfigError('tables', 'a projection needs at least one table');
  const positionsTable = `${name}__positions`;
  const seen = new Set<string>();
  const tables = {} as Record<K, string>;
  for (const [key, table] of entries) {
    const option = `tables.${key}`;
    const physical = configIdentifier(table, option);
    if (physical.length > MAX_TABLE_NAME) {
      throw new ConfigError(option, `a table name is at most ${MAX_TABLE_NAME} characters`);
    }
    if (physical.endsWith(SHADOW_SUFFIX)) {
      throw new ConfigError(option, `a table name must not end with ${SHADOW_SUFFIX}`);
    }
    const folded = physical.toLowerCase();
    if (seen.has(folded) || folded === positionsTable.toLowerCase()) {
      throw new ConfigError(option, 'the table is used twice (or is the positions table)');
    }
    seen.add(folded);
    tables[key] = physical;
  }
  if (
    !Array.isArray(definition.handles) ||
    definition.handles.length === 0 ||
    definition.handles.some((t) => typeof t !== 'string' || t.length === 0)
  ) {
    throw new ConfigError('handles', 'expected a non-empty array of event types');
  }
  const streamTypes = definition.streamTypes;
  if (
    streamTypes !== undefined &&
    (!Array.isArray(streamTypes) || streamTypes.some((t) => typeof t !== 'string' || t.length === 0))
  ) {
    throw new ConfigError('streamTypes', 'expected an array of stream types');
  }
  if (typeof definition.schema !== 'function') throw new ConfigError('schema', 'expected a function');
  if (typeof definition.apply !== 'function') throw new ConfigError('apply', 'expected a function');
  return Object.freeze({
    kind: 'projection' as const,
    name,
    tables: Object.freeze(tables),
    handles: Object.freeze([...new Set(definition.handles)]),
    ...(streamTypes === undefined ? {} : { streamTypes: Object.freeze([...streamTypes]) }),
    schema: definition.schema,
    apply: definition.apply,
    positionsTable,
  });
}

/** Throws `E_CONFIG` naming `option` unless `value` is a projection from `defineProjection`. */
export function assertProjection(value: unknown, option: string): asserts value is Projection {
  const p = value as Partial<Projection> | null;
  if (typeof p !== 'object' || p === null || p.kind !== 'projection' || !Object.isFrozen(p)) {
    throw new ConfigError(option, 'expected a projection from defineProjection');
  }
}

// ---------------------------------------------------------------------------------------------
// Internals shared with the command handler and the rebuild

/** One set of physical tables of a projection: the live ones, or a rebuild's shadow. */
export interface ProjectionTarget {
  /** Data tables: logical name to physical name. */
  names: ProjectionTableNames;
  /** Data tables as identifiers. */
  tables: ProjectionTables;
  /** The positions table's physical name. */
  positions: string;
}

/** The live tables (`suffix` empty) or the shadow tables (`SHADOW_SUFFIX`) of `projection`. */
export function projectionTarget(projection: Projection, suffix = ''): ProjectionTarget {
  const names: Record<string, string> = {};
  const tables: Record<string, SqlFragment> = {};
  for (const [key, table] of Object.entries<string>(projection.tables)) {
    names[key] = `${table}${suffix}`;
    tables[key] = sql.id(`${table}${suffix}`);
  }
  return {
    names: Object.freeze(names),
    tables: Object.freeze(tables),
    positions: `${projection.positionsTable}${suffix}`,
  };
}

/** Runs the projection's DDL for `target` and creates its positions table (idempotent). */
export async function createProjectionTables(
  executor: SqlExecutor,
  projection: Projection,
  target: ProjectionTarget,
): Promise<void> {
  const ddl = projection.schema(target.tables, target.names);
  const statements = isSqlFragment(ddl) ? [ddl] : ddl;
  if (!Array.isArray(statements) || statements.some((s) => !isSqlFragment(s))) {
    throw new ConfigError('schema', 'must return a sql fragment or an array of them');
  }
  for (const statement of statements) await executor.query(statement);
  const bigint = executor.dialect.name === 'postgres' ? 'bigint' : 'integer';
  await executor.query(
    sql`create table if not exists ${sql.id(target.positions)} (
      stream text primary key,
      position ${sql.raw(bigint)} not null
    )`,
  );
}

/** Creates the live tables of `projections` on `driver`, in one transaction (idempotent). */
export async function migrateProjections(
  driver: SqlDriver,
  projections: readonly Projection[],
): Promise<void> {
  projections.forEach((p, i) => {
    assertProjection(p, `projections[${i}]`);
  });
  await driver.transaction(async (tx) => {
    for (const p of projections) await createProjectionTables(tx, p, projectionTarget(p));
  });
}

// On engines with concurrent writers (PostgreSQL), inline writers of a projection hold a shared
// transaction-scoped advisory lock from the start of their transaction, before the append takes
// its place in the global log; a rebuild's swap takes it exclusively. Holding it, the swap knows
// no inline writer is in flight, and no blocked writer holds readers of the log back.
const LOCK_NAMESPACE = nameHash32('strata.projection') | 0;

/**
 * Takes the projections' inline-writer fence in `executor`'s transaction: shared for writers,
 * exclusive for a rebuild's swap. A no-op on SQLite, whose write lock admits one writer at a time.
 */
export async function lockProjections(
  executor: SqlExecutor,
  projections: readonly Projection[],
  mode: 'shared' | 'exclusive',
): Promise<void> {
  // Advisory locks are PostgreSQL's; SQLite's write lock already admits one writer at a time.
  if (executor.dialect.name !== 'postgres') return;
  const fn = sql.raw(mode === 'shared' ? 'pg_advisory_xact_lock_shared' : 'pg_advisory_xact_lock');
  const keys = [...new Set(projections.map((p) => nameHash32(p.name) | 0))].sort((a, b) => a - b);
  for (const key of keys) await executor.query(sql`select ${fn}(${LOCK_NAMESPACE}::int4, ${key}::int4)`);
}

/** True when `projection` handles events of `type`. */
export function handlesType(projection: Projection, type: string): boolean {
  return projection.handles.includes(type);
}

/**
 * Applies `events` (of any types, in log order per stream) to `target` through `executor`:
 * each handled event whose stream is not already at or past its position is recorded in the
 * positions table and applied. Returns how many were applied. Call it inside a transaction.
 */
export async function applyProjectionEvents(
  executor: SqlExecutor,
  projection: Projection,
  events: readonly RecordedEvent[],
  target: ProjectionTarget = projectionTarget(projection),
): Promise<number> {
  const positions = sql.id(target.positions);
  let applied = 0;
  for (const event of events) {
    if (!handlesType(projection, event.type)) continue;
    // The position row first: it is the lock a rebuild's swap waits on (see rebuild.ts).
    const { rowCount } = await executor.query(
      sql`insert into ${positions} (stream, position) values (${event.stream}, ${event.position})
          on conflict (stream) do update set position = excluded.position
          where ${positions}.position < excluded.position`,
    );
    if (rowCount === 0) continue;
    await projection.apply(executor, event, target.tables);
    applied++;
  }
  return applied;
}

// ---------------------------------------------------------------------------------------------
// Asynchronous projections

/** Options for `createProjectionConsumer`; the rest are the consumer runtime's own. */
export interface ProjectionConsumerOptions
  extends Omit<ConsumerOptions, 'name' | 'log' | 'checkpoints' | 'handle' | 'handleBatch' | 'tables'> {
  projection: Projection;
  /** The event store whose change-log view it follows. */
  store: EventStore;
  /** The database of the read model (and, by default, of the checkpoint). */
  driver: SqlDriver;
  /** Where the checkpoint lives (default a SQL checkpoint store on `driver`, prefix `strata`). */
  checkpoints?: SqlCheckpointStore;
  /** The consumer's durable name (default `projection.<name>`). */
  consumer?: string;
}

/** Where an async projection is, for the dashboard and tests. */
export interface ProjectionStatus {
  projection: string;
  consumer: string;
  state: 'stopped' | 'starting' | 'standby' | 'running' | 'paused';
  /** The checkpoint: every event up to this global position is applied. */
  position: number;
  /** The newest position of the log, as last seen. */
  head: number;
  /** Events behind the head. */
  lag: number;
  /** Age of the oldest unapplied event in seconds (0 when caught up). */
  lagSeconds: number;
  deadLetters: number;
  lastErrorCode: string | undefined;
}

/** An async projection running as a named consumer. */
export interface ProjectionConsumer {
  readonly name: string;
  /** Creates the tables and the checkpoint store's tables, then starts the consumer. */
  start(): Promise<void>;
  /** Stops after running batches finish; their progress is saved. Safe to call twice. */
  stop(): Promise<void>;
  /** Resolves once every event up to `position` (default the head now) is applied. */
  drained(position?: number): Promise<void>;
  status(): ProjectionStatus;
  /** The underlying consumer. */
  readonly consumer: Consumer;
}

/** The default consumer name of an async projection. */
export function projectionConsumerName(projection: Projection): string {
  return `projection.${projection.name}`;
}

/**
 * Runs `projection` as a consumer of the store's change-log view: at least once delivery, each
 * batch applied in one transaction of `driver` together with its positions, so a redelivered
 * event is skipped. Throws `E_CONFIG` for invalid options; call `start()`.
 */
export function createProjectionConsumer(options: ProjectionConsumerOptions): ProjectionConsumer {
  const { projection, store, driver, checkpoints: given, consumer: consumerName, ...rest } = options;
  assertProjection(projection, 'projection');
  if (typeof store?.asChangeLog !== 'function') throw new ConfigError('store', 'expected an event store');
  if (typeof driver?.transaction !== 'function') throw new ConfigError('driver', 'expected a SqlDriver');
  const name = consumerName ?? projectionConsumerName(projection);
  assertConsumerName(name, 'consumer');
  const checkpoints = given ?? createSqlCheckpointStore(driver);
  const target = projectionTarget(projection);
  const consumer = createConsumer({
    // One batch at a time unless asked: a projection whose apply reads rows that other streams'
    // events write (a join, a fan-out) would miss another batch's uncommitted rows.
    concurrency: 1,
    ...rest,
    name,
    log: store.asChangeLog(),
    checkpoints,
    ...(projection.streamTypes === undefined ? {} : { tables: projection.streamTypes }),
    handleBatch: async (entries: LogEntry[]) => {
      const events = entries
        .map((e) => e.after as unknown as RecordedEvent | null)
        .filter((e): e is RecordedEvent => e !== null && handlesType(projection, e.type));
      if (events.length === 0) return;
      await driver.transaction((tx) => applyProjectionEvents(tx, projection, events, target), {
        retry: true,
      });
    },
  });
  return Object.freeze({
    name,
    consumer,
    async start() {
      await migrateProjections(driver, [projection]);
      if (given === undefined) await checkpoints.migrate();
      await consumer.start();
    },
    stop: () => consumer.stop(),
    drained: (position?: number) => consumer.drained(position),
    status(): ProjectionStatus {
      const s = consumer.stats();
      return {
        projection: projection.name,
        consumer: name,
        state: s.status,
        position: s.checkpoint,
        head: s.head,
        lag: s.lagChanges,
        lagSeconds: s.lagSeconds,
        deadLetters: s.deadLetters,
        lastErrorCode: s.lastErrorCode,
      };
    },
  });
}
