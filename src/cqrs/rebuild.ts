/**
 * Rebuilding a projection without downtime: replay the whole log into shadow tables
 * (`<table>__rebuild`), catch up to the head, then swap them in within one transaction, so a
 * reader sees either the old tables or the new ones, never an empty or partial table.
 *
 * The swap must not lose an event that inline handlers (or an async consumer) applied to the live
 * tables after the shadow's last catch-up. On PostgreSQL the swap transaction first takes the
 * projection's inline-writer fence exclusively (writers take it shared before they append), so
 * no inline writer is in flight and none holds readers of the log back; it catches up inside the
 * transaction, locks the live positions table and then the data tables (the order writers take
 * them in), and catches up again until the shadow holds every position the live tables hold.
 * Writers blocked behind the swap resolve the table names again once it commits and write to the
 * new tables; events the shadow already holds are skipped there by its positions table. On SQLite
 * the transaction's write lock admits no other writer, but reading the log would wait for it: when
 * the live tables are ahead, the swap rolls back, catches up outside and tries again.
 *
 * Progress is saved with each batch, so an interrupted rebuild resumes where it stopped.
 */
import type { SqlCheckpointStore } from '../changes/sql-checkpoint-store.js';
import { type Clock, systemClock } from '../core/clock.js';
import { ConfigError, StrataError } from '../core/errors.js';
import {
  configIdentifier,
  quoteIdentifierStandard,
  type SqlDriver,
  type SqlExecutor,
  sql,
} from '../core/sql.js';
import { defaultStreamType } from '../events/event-store.js';
import type { EventStore } from '../events/types.js';
import {
  applyProjectionEvents,
  assertProjection,
  createProjectionTables,
  lockProjections,
  migrateProjections,
  type Projection,
  type ProjectionTarget,
  projectionTarget,
  SHADOW_SUFFIX,
} from './projection.js';

/** Progress of a rebuild, reported after each batch and before each swap attempt. */
export interface RebuildProgress {
  projection: string;
  /** `replay`: a batch went into the shadow tables; `swap`: a swap is about to be attempted. */
  phase: 'replay' | 'swap';
  /** The global position the shadow tables hold every event up to. */
  position: number;
  /** The log's head when the batch was read. */
  head: number;
  /** Events applied to the shadow tables by this run so far. */
  applied: number;
}

/** Options for `rebuildProjection`. */
export interface RebuildOptions {
  projection: Projection;
  store: EventStore;
  /** The read model's database. */
  driver: SqlDriver;
  /** Events per batch (default 500, at most 10 000). */
  batchSize?: number;
  /** Called after each batch and before each swap attempt; a throw stops the rebuild (resumable). */
  onProgress?: (progress: RebuildProgress) => void | Promise<void>;
  /** Start from position 0 even when an interrupted rebuild could be resumed (default false). */
  restart?: boolean;
  /** Swap attempts before giving up with `E_REBUILD_BEHIND` (default 20). */
  maxSwapAttempts?: number;
  /**
   * The checkpoint store of the projection's async consumer: the swap moves that consumer's
   * checkpoint up to the rebuilt position in the same transaction (never backwards).
   */
  checkpoints?: SqlCheckpointStore;
  /** The async consumer's name (default `projection.<name>`); used with `checkpoints`. */
  consumer?: string;
  /**
   * The store's stream type of a stream, for projections limited by `streamTypes` (default the
   * store's default: the part before the first `-`); pass the store's own if you configured one.
   */
  streamType?: (stream: string) => string;
  /** Prefix of the rebuild bookkeeping table `<prefix>_projections` (default `strata`). */
  tablePrefix?: string;
  clock?: Clock;
}

/** The outcome of a rebuild. */
export interface RebuildResult {
  projection: string;
  /** The position the swapped-in tables hold every event up to. */
  position: number;
  /** Events applied to the shadow tables by this run. */
  applied: number;
  /** The position an interrupted rebuild was resumed from (0: started from the beginning). */
  resumedFrom: number;
  /** Swap attempts (more than 1 when writers moved the live tables ahead meanwhile). */
  swapAttempts: number;
}

const MAX_BATCH = 10_000;

/** Thrown inside the swap transaction to roll it back: the live tables are ahead of the shadow. */
class Behind extends Error {
  constructor(readonly applied: number) {
    super('behind');
  }
}

/**
 * Rebuilds `projection` from position 0 into shadow tables and swaps them in. Throws `E_CONFIG`
 * for invalid options, `E_REBUILD_BEHIND` (with `projection`, `position`, `applied`) when writers
 * kept the live tables ahead through every swap attempt, and the errors of the store, driver or
 * projection; the live tables are untouched by any failure and a later call resumes.
 * Run one rebuild of a projection at a time.
 */
export async function rebuildProjection(options: RebuildOptions): Promise<RebuildResult> {
  const { projection, store, driver } = options;
  assertProjection(projection, 'projection');
  if (typeof store?.readAll !== 'function') throw new ConfigError('store', 'expected an event store');
  if (typeof driver?.transaction !== 'function') throw new ConfigError('driver', 'expected a SqlDriver');
  const batchSize = options.batchSize ?? 500;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH) {
    throw new ConfigError('batchSize', `must be an integer from 1 to ${MAX_BATCH}`);
  }
  const maxSwaps = options.maxSwapAttempts ?? 20;
  if (!Number.isSafeInteger(maxSwaps) || maxSwaps < 1) {
    throw new ConfigError('maxSwapAttempts', 'must be a positive integer');
  }
  if (options.onProgress !== undefined && typeof options.onProgress !== 'function') {
    throw new ConfigError('onProgress', 'expected a function');
  }
  const registry = sql.id(`${configIdentifier(options.tablePrefix ?? 'strata', 'tablePrefix')}_projections`);
  const consumer = options.consumer ?? `projection.${projection.name}`;
  const clock = options.clock ?? systemClock;
  const live = projectionTarget(projection);
  const shadow = projectionTarget(projection, SHADOW_SUFFIX);
  const bigint = driver.dialect.name === 'postgres' ? 'bigint' : 'integer';

  await migrateProjections(driver, [projection]);
  await driver.query(
    sql`create table if not exists ${registry} (
      name text primary key,
      rebuild_position ${sql.raw(bigint)},
      rebuilt_position ${sql.raw(bigint)},
      rebuilt_at ${sql.raw(bigint)}
    )`,
  );

  // Resume when an earlier run left its shadow tables and position (created in one transaction).
  const { rows } = await driver.query<{ rebuild_position: number | string | null }>(
    sql`select rebuild_position from ${registry} where name = ${projection.name}`,
  );
  const saved = rows[0]?.rebuild_position;
  let position = 0;
  if (saved !== null && saved !== undefined && options.restart !== true) {
    position = Number(saved);
  } else {
    await driver.transaction(async (tx) => {
      await dropTables(tx, shadow);
      await createProjectionTables(tx, projection, shadow);
      await tx.query(
        sql`insert into ${registry} (name, rebuild_position) values (${projection.name}, ${0})
            on conflict (name) do update set rebuild_position = excluded.rebuild_position`,
      );
    });
  }
  const resumedFrom = position;
  let applied = 0;
  const report = async (phase: RebuildProgress['phase'], head: number) => {
    await options.onProgress?.({ projection: projection.name, phase, position, head, applied });
  };

  /**
   * Replays into the shadow tables until a read comes back short: caught up with the head. Each
   * batch commits on its own, or, given `within` (the swap's transaction), inside it.
   */
  const wanted = projection.streamTypes === undefined ? undefined : new Set(projection.streamTypes);
  const streamType = options.streamType ?? defaultStreamType;
  const catchUp = async (within?: SqlExecutor): Promise<void> => {
    for (;;) {
      // The head first: a short read then proves nothing handled lies at or below it.
      const head = await store.head();
      const read = await store.readAll(position, batchSize, { types: projection.handles });
      // What the async consumer sees: only the stream types it follows, when it names some.
      const events = wanted === undefined ? read : read.filter((e) => wanted.has(streamType(e.stream)));
      // Positions move by what was read, filtered or not; a short read means caught up.
      const last = read.at(-1)?.position ?? position;
      const next = read.length < batchSize ? Math.max(last, head, position) : last;
      if (next === position && read.length === 0) return;
      const batch = async (tx: SqlExecutor) => {
        const n = await applyProjectionEvents(tx, projection, events, shadow);
        await tx.query(
          sql`update ${registry} set rebuild_position = ${next} where name = ${projection.name}`,
        );
        return n;
      };
      applied +=
        within === undefined ? await driver.transaction(batch, { retry: true }) : await batch(within);
      position = next;
      // Inside the swap, locks are held: a callback reading the live tables would wait on them.
      if (within === undefined) await report('replay', head);
      if (read.length < batchSize) return;
    }
  };

  /** The highest position applied to the live tables. */
  const appliedLive = async (tx: SqlExecutor): Promise<number> => {
    const { rows: found } = await tx.query<{ applied: number | string | null }>(
      sql`select max(position) as applied from ${sql.id(live.positions)}`,
    );
    return Number(found[0]?.applied ?? 0);
  };

  const swap = async (tx: SqlExecutor): Promise<void> => {
    const liveNames = [live.positions, ...Object.values(live.names)];
    if (tx.dialect.capabilities.concurrentWriters) {
      // No inline writer in flight from here on, and none holding readers of the log back: the
      // last catch-up runs inside this transaction, so writers cannot outrun it.
      await lockProjections(tx, [projection], 'exclusive');
      await catchUp(tx);
      // Positions first, then data: the order writers take them in (see applyProjectionEvents).
      await tx.query(sql`lock table ${sql.join(liveNames.map((n) => sql.id(n)))} in access exclusive mode`);
      // An async consumer may have applied committed events meanwhile: they are readable, catch up.
      for (let round = 0; (await appliedLive(tx)) > position; round++) {
        if (round >= maxSwaps) throw new Behind(await appliedLive(tx));
        const before = position;
        await catchUp(tx);
        if (position === before) await new Promise((resolve) => setTimeout(resolve, 10));
      }
    } else {
      // One writer at a time (SQLite): this transaction holds the write lock, but reading the log
      // would wait for it; when writers got ahead, roll back and catch up outside.
      const ahead = await appliedLive(tx);
      if (ahead > position) throw new Behind(ahead);
    }
    for (const name of liveNames) await tx.query(sql`drop table ${sql.id(name)}`);
    const pairs: Array<[string, string]> = [
      [shadow.positions, live.positions],
      ...Object.keys(live.names).map((k): [string, string] => [shadow.names[k]!, live.names[k]!]),
    ];
    for (const [from, to] of pairs) {
      await tx.query(sql`alter table ${sql.id(from)} rename to ${sql.id(to)}`);
      await renameIndexes(tx, from, to);
    }
    await tx.query(
      sql`update ${registry} set rebuild_position = null, rebuilt_position = ${position}, rebuilt_at = ${clock.now()}
          where name = ${projection.name}`,
    );
    if (options.checkpoints !== undefined) await options.checkpoints.saveIn(tx, consumer, position);
  };

  for (let attempt = 1; ; attempt++) {
    await catchUp();
    await report('swap', position);
    // What a rolled-back swap applied inside its transaction is gone: so is its progress.
    const before = { position, applied };
    try {
      await driver.transaction(swap);
      return { projection: projection.name, position, applied, resumedFrom, swapAttempts: attempt };
    } catch (err) {
      position = before.position;
      applied = before.applied;
      if (!(err instanceof Behind)) throw err;
      if (attempt >= maxSwaps) {
        throw new StrataError(
          'E_REBUILD_BEHIND',
          `rebuild of projection "${projection.name}" could not catch up with its writers; run it again`,
          { details: { projection: projection.name, position, applied: err.applied, attempts: attempt } },
        );
      }
    }
  }
}

/** Gives the indexes the shadow table's DDL created the names the live table's DDL gives them. */
async function renameIndexes(tx: SqlExecutor, from: string, to: string): Promise<void> {
  if (tx.dialect.name === 'postgres') {
    const { rows } = await tx.query<{ name: string }>(
      sql`select c.relname as name from pg_index i join pg_class c on c.oid = i.indexrelid
          where i.indrelid = to_regclass(${quoteIdentifierStandard(to)})`,
    );
    for (const { name } of rows) {
      if (!name.startsWith(from)) continue;
      await tx.query(sql`alter index ${sql.id(name)} rename to ${sql.id(to + name.slice(from.length))}`);
    }
    return;
  }
  // SQLite cannot rename an index: recreate it under the new name from its stored DDL.
  const { rows } = await tx.query<{ name: string; sql: string }>(
    sql`select name, sql from sqlite_master where type = 'index' and tbl_name = ${to} and sql is not null`,
  );
  for (const index of rows) {
    if (!index.name.startsWith(from)) continue;
    const renamed = to + index.name.slice(from.length);
    await tx.query(sql`drop index ${sql.id(index.name)}`);
    await tx.exec(index.sql.replace(index.name, renamed));
  }
}

async function dropTables(tx: SqlExecutor, target: ProjectionTarget): Promise<void> {
  for (const name of [target.positions, ...Object.values(target.names)]) {
    await tx.query(sql`drop table if exists ${sql.id(name)}`);
  }
}
