/**
 * The contracts of `strata/sharding`: shard keys, strategies (plain frozen, versioned
 * definitions), the router's table map, and the results of cross-shard reads.
 */
import type { Duration } from '../core/duration.js';
import type { SqlDriver, SqlExecutor, SqlFragment, SqlTransaction } from '../core/sql.js';

/** A value a row is placed by: an id, a tenant name, a date. */
export type ShardKey = string | number | bigint | Date;

/** A shard's id, as named in the router's `shards` map (`'s0'`, `'eu-1'`). */
export type ShardId = string;

/** Places a key on a shard by hashing (jump consistent hash: adding a shard moves ~1/N of keys). */
export interface HashStrategy {
  readonly kind: 'hash';
  readonly version: number;
  /** Shards in bucket order; a new shard is appended, so only keys moving to it change shard. */
  readonly shards: readonly ShardId[];
  /** Hash seed (default 0); two strategies with other seeds place keys independently. */
  readonly seed: number;
}

/** One range of a range strategy: keys from `from` (inclusive) up to `to` (exclusive). */
export interface KeyRange {
  readonly shard: ShardId;
  /** Lower bound, inclusive; absent on the first range (open end). */
  readonly from?: number | string;
  /** Upper bound, exclusive; absent on the last range (open end). */
  readonly to?: number | string;
}

/** Places a key by ranges of ids or dates (dates as ISO strings or epoch ms). */
export interface RangeStrategy {
  readonly kind: 'range';
  readonly version: number;
  /** What the bounds compare: numbers, strings, or dates (epoch ms). */
  readonly keyType: 'number' | 'string' | 'date';
  /** Contiguous ranges in order, without holes or overlaps, open at both ends. */
  readonly ranges: readonly KeyRange[];
  /** The shards the ranges name, in order of first appearance (derived from `ranges`). */
  readonly shards: readonly ShardId[];
}

/** Places a key by looking it up in a directory table (tenant placement); unknown keys use `fallback`. */
export interface DirectoryStrategy {
  readonly kind: 'directory';
  readonly version: number;
  /** The table that holds key -> shard (created by `migrate`). */
  readonly table: string;
  /** Where keys without a directory entry go (default: the first shard of `shards`). */
  readonly fallback: HashStrategy | RangeStrategy | undefined;
  readonly shards: readonly ShardId[];
  /** How long a looked-up placement is cached in process (ms). */
  readonly cacheTtlMs: number;
}

/** Places a timestamp into a period (day, month, year): time partitions, and shards by time. */
export interface TimeStrategy {
  readonly kind: 'time';
  readonly version: number;
  readonly period: 'day' | 'month' | 'year';
  /** Time zone of period boundaries: always UTC. */
  readonly zone: 'UTC';
}

/** Any strategy definition. */
export type ShardStrategy = HashStrategy | RangeStrategy | DirectoryStrategy;

/** The directory of a directory strategy: key -> shard entries in a SQL table, cached in process. */
export interface ShardDirectory {
  readonly strategy: DirectoryStrategy;
  /** Creates the directory table when missing. */
  migrate(): Promise<void>;
  /** Places `key` on `shard` (insert or replace); `E_CONFIG` when `shard` is not a strategy shard. */
  assign(key: ShardKey, shard: ShardId): Promise<void>;
  /** Removes the entry of `key` (it falls back again); true when there was one. */
  unassign(key: ShardKey): Promise<boolean>;
  /** The shard of `key`: its entry, else the fallback's placement (`E_SHARD_KEY` for a bad key). */
  lookup(key: unknown): Promise<ShardId>;
  /** Forgets cached placements, so the next lookups read the table. */
  clearCache(): void;
}

/** How a table is placed by the router. */
export type TablePlacement =
  | {
      /** Rows are placed by the value of `key` (a column name). */
      readonly key: string;
      /** Documentation of co-location: this table shares the shard key of another table. */
      readonly colocateWith?: string;
      /** The columns that identify a row, for `moveRow` (default: the `key` column). */
      readonly primaryKey?: string | readonly string[];
    }
  | {
      /** A reference table: a full copy on every shard (small, read everywhere). */
      readonly reference: true;
    }
  | {
      /** Vertical partitioning: the whole table lives in this named store. */
      readonly store: string;
    };

/** Ordering of merged rows. */
export interface OrderBy {
  readonly column: string;
  readonly desc?: boolean;
  /**
   * The column holds exact decimals that arrive as text (PostgreSQL `numeric`, and `sum`/`avg` of
   * `bigint`): compare them as numbers, not as strings (default false).
   */
  readonly decimal?: boolean;
}

/** Aggregates merged across shards (each shard's query must return these columns). */
export interface ScatterAggregates {
  /** Columns that group the rows (each shard groups by them too); default: one row for all. */
  readonly groupBy?: readonly string[];
  /** Columns holding per-shard counts: summed. */
  readonly count?: readonly string[];
  readonly sum?: readonly string[];
  readonly min?: readonly string[];
  readonly max?: readonly string[];
  /**
   * Averages: `{ column: 'avg_age', sum: 'sum_age', count: 'n' }` computes sum(sum)/sum(count);
   * each shard must return the sum and count columns (an average of averages would be wrong).
   */
  readonly avg?: ReadonlyArray<{ readonly column: string; readonly sum: string; readonly count: string }>;
  /**
   * Columns holding exact decimals as text (PostgreSQL `numeric`, and `sum` of `bigint`): their
   * min and max compare as numbers and their sums are exact, returned as decimal text like the
   * engine's own. Without it, such text compares as text ('9.5' > '10.25').
   */
  readonly decimal?: readonly string[];
}

/** Options of a scatter-gather read. */
export interface ScatterOptions {
  /** Shards to ask (default all). */
  readonly shards?: readonly ShardId[];
  /** Merge order (each shard should order the same way and apply the same limit). */
  readonly orderBy?: readonly OrderBy[];
  /** Rows after merging (default all). */
  readonly limit?: number;
  /** Merge per-shard aggregate rows into one row. */
  readonly aggregate?: ScatterAggregates;
  /** Per-shard timeout (default the router's, 5s). */
  readonly timeout?: number | string;
  /** `fail` (default): any failed shard fails the read; `partial`: return what answered. */
  readonly partial?: 'fail' | 'partial';
}

/** One shard that did not answer a scatter. */
export interface ShardFailure {
  readonly shard: ShardId;
  readonly code: string;
  readonly message: string;
}

/** The merged result of a scatter-gather read. */
export interface ScatterResult<R> {
  readonly rows: R[];
  /** Shards that did not answer (only with `partial: 'partial'`). */
  readonly failures: ShardFailure[];
  /** Shards that answered. */
  readonly answered: ShardId[];
}

/** A shard with its store. */
export interface ShardHandle {
  readonly id: ShardId;
  readonly driver: SqlDriver;
}

/** The router: maps keys to shards and runs work there. See `createShardRouter`. */
export interface ShardRouter {
  readonly strategy: ShardStrategy;
  readonly shards: ReadonlyMap<ShardId, SqlDriver>;
  /** The table map the router was created with (frozen). */
  readonly tables: Readonly<Record<string, TablePlacement>>;
  /** The directory of a directory strategy (undefined for the others). */
  readonly directory: ShardDirectory | undefined;
  /** The shard id of `key` (`E_SHARD_KEY` for a missing, null or wrong-typed key). */
  shardOf(key: unknown): Promise<ShardId>;
  /** The shard id of `key` without awaiting (hash and range strategies only; directory: `E_CONFIG`). */
  shardOfSync(key: unknown): ShardId;
  /** The shard of `key` with its store. */
  forKey(key: unknown): Promise<ShardHandle>;
  /** The shard of a row of `table` (by the table's key column). */
  forRow(table: string, row: Record<string, unknown>): Promise<ShardHandle>;
  /** Runs one statement on the shard of `key`. */
  query<R = Record<string, unknown>>(
    key: unknown,
    statement: SqlFragment | string,
    params?: readonly unknown[],
  ): Promise<R[]>;
  /** Runs `fn` in a transaction on the shard of `key`. */
  transaction<T>(key: unknown, fn: (tx: SqlTransaction) => Promise<T>): Promise<T>;
  /** Groups keys by shard (order within a group kept). */
  groupByShard<K>(keys: readonly K[]): Promise<Map<ShardId, K[]>>;
  /** Runs a read on several shards in parallel and merges the rows. */
  scatter<R = Record<string, unknown>>(
    statement: SqlFragment | string,
    options?: ScatterOptions,
  ): Promise<ScatterResult<R>>;
  /**
   * Runs a statement on every shard (reference tables, DDL) in parallel, each bounded by `timeout`
   * (default the router's `broadcastTimeout`, 60s); `E_SHARD` listing the shards that failed or timed out.
   */
  broadcast(statement: SqlFragment | string, options?: { readonly timeout?: Duration }): Promise<void>;
  /** The store of a vertically partitioned table (`E_CONFIG` for other tables: use `forKey` / `forRow`). */
  storeOf(table: string): SqlDriver;
  /**
   * Moves a row whose shard key changes, as one step for the caller: the move is journaled on the
   * old shard (with the old row checked and, on PostgreSQL, locked), the row is inserted on the
   * new shard, then the old row and the journal entry are deleted in one transaction. A failure
   * undoes what was done and rethrows (`E_NOT_FOUND` without an old row, `E_CONFLICT` while
   * another move of the row is in progress); a crash leaves a journal entry that `recoverMoves`
   * finishes. Same shard: an update in place.
   */
  moveRow(table: string, oldKey: unknown, newRow: Record<string, unknown>): Promise<void>;
  /**
   * Finishes the moves a crash interrupted: for each journal entry older than `olderThan`
   * (default 1m, so moves in flight in live processes are left alone) on each shard, copies the row
   * to its new shard (kept if already there) and deletes the old row with the entry; when the old
   * row is gone (deleted by the application meanwhile) the copy is deleted too. Whoever deletes an
   * entry finishes its move, so concurrent recoveries and a late `moveRow` never both act. Run it
   * at startup; resolves with the counts.
   */
  recoverMoves(options?: { olderThan?: Duration }): Promise<{ completed: number; dropped: number }>;
  /** Routes by a new strategy from now on (after a reshard's cutover). */
  setStrategy(strategy: ShardStrategy): void;
  /** Pauses writes through the router (`withWrite`) until `resume`; bounded by `maxPause`. */
  pauseWrites(): Promise<void>;
  resumeWrites(): void;
  /** Runs a write through the router's write gate (so a cutover can pause it). */
  withWrite<T>(fn: () => Promise<T>): Promise<T>;
}

/** What a shard executor looks like to code that does not care whether it is sharded. */
export type ShardExecutor = SqlExecutor;
