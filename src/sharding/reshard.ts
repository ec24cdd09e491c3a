/**
 * Online resharding: split (2 shards to 4), merge (4 to 2), range splits and moving a tenant to a
 * shard of its own, while the application keeps writing. The steps, each durable and resumable:
 *
 * 1. `capture`: change capture starts on every source shard that may lose rows (triggers into an
 *    outbox, or a logical replication slot), relayed into an embedded change log in `workDir`.
 * 2. `copy`: each source table is read in primary-key order, in chunks; rows whose placement under
 *    the new strategy is another shard are upserted there; the last key read is saved per chunk.
 * 3. `catchup`: the log is applied from its first entry, with a saved offset, until a fence
 *    written on every source after the copy has come through.
 * 4. `verify`: every moved row is compared with its copy (and every copy with its source), with
 *    reconcile's value normalization; differences are checked again after another catch-up and a
 *    difference that persists fails the step (`E_VERIFY`), so a bad copy is never cut over.
 * 5. `cutover`: writes pause (the router's write gate; the map state `cutover` for routers of other
 *    processes), a fence on every source is caught up, the new strategy is activated in the map
 *    store, routing switches, writes resume. Only this final delta is applied while paused.
 * 6. `cleanup`: capture is removed, moved rows are deleted from their old shards in chunks.
 *
 * How the log is applied, and why it is correct: a log entry only says that a row (a primary key)
 * changed on a source. The applier then reads that key's current rows on every source shard (a
 * row counts only on the shard the old strategy places it: elsewhere it is one of our copies) and
 * makes every target agree with them: the row is upserted on the shard the new strategy places
 * it, and copies elsewhere are deleted. Capture starts before the copy reads anything, so any
 * change after the copy read a row has a log entry that is applied after the copy; the last
 * entry of a key is applied after that change committed, and re-reads the sources then, so the
 * target converges to the sources whatever the order of entries across sources, and deletes and
 * moves between shards (`moveRow`) need no old row image. At cutover writes are paused before the
 * fences are written, so after the fences every key has had its last change applied: the targets
 * equal the sources exactly. Rows on a merge target that the old strategy places there are the
 * application's own and are never overwritten or deleted.
 *
 * `abort()` undoes everything up to the cutover's activation: copies are deleted from the targets
 * and capture is removed; the old map stays active.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { encodeTokens, keyTuple, normalizeValue } from '../changes/reconcile.js';
import { createRelay, type Relay } from '../changes/relay.js';
import { Mutex } from '../core/async.js';
import type { ChangeLog, LogEntry } from '../core/changes.js';
import { type Clock, sleep, systemClock, type TimerHandle } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ConfigError, isStrataError, StrataError, TimeoutError } from '../core/errors.js';
import { assertIdentifier, type Row, reportBackgroundError, type SqlDriver, sql } from '../core/sql.js';
import { murmur3_32 } from './hashing.js';
import type { ShardMapStore } from './map-store.js';
import { defaultReshardCapture, type ReshardCapture, type ReshardCaptureFactory } from './reshard-capture.js';
import {
  checkShardTable,
  countRows,
  deleteByKeys,
  type KeyValues,
  keyOf,
  type ReshardTable,
  scanPage,
  selectByKeys,
  upsertRows,
} from './reshard-sql.js';
import { RESHARD_STEPS, ReshardStateStore, type ReshardStep, type StoredReshard } from './reshard-state.js';
import { compareCodePoints, createDirectory, placeSync, validateStrategy } from './strategies.js';
import type { RangeStrategy, ShardId, ShardRouter, ShardStrategy } from './types.js';

export type { ReshardStep } from './reshard-state.js';

// ---------------------------------------------------------------------------------------------
// Public types

/** How a resharded table is placed. */
export interface ReshardTableOptions {
  /** The shard key column. */
  readonly key: string;
  /** The primary key column(s), as the table declares them (default: the shard key column). */
  readonly primaryKey?: string | readonly string[];
}

/** The parts of the router a reshard uses: its write gate, and the switch of its strategy. */
export type ReshardRouter = Pick<
  ShardRouter,
  'pauseWrites' | 'resumeWrites' | 'setStrategy' | 'shards' | 'tables'
>;

/** Progress of a running reshard, reported after each durable checkpoint. */
export interface ReshardProgress {
  readonly name: string;
  /** The step in progress. */
  readonly step: ReshardStep;
  /**
   * What just happened: `started` (the step began), `chunk` (a chunk was copied, verified or
   * cleaned), `batch` (log entries were applied), `paused` (cutover: writes are paused),
   * `activated` (cutover: the new map is active), `finished` (the reshard is done or aborted).
   */
  readonly event: 'started' | 'chunk' | 'batch' | 'paused' | 'activated' | 'finished';
  /** Rows in the source tables when the reshard was planned (the copy's total). */
  readonly rowsEstimated: number;
  /** Source rows read by the copy so far. */
  readonly rowsScanned: number;
  /** Rows written to targets by the copy so far. */
  readonly rowsCopied: number;
  /** Log entries applied so far. */
  readonly changesApplied: number;
  /** Rows read by the verification so far (this run). */
  readonly rowsVerified: number;
  /** Moved rows deleted from their old shards (cleanup) or copies deleted from targets (abort). */
  readonly rowsCleaned: number;
  /** How long writes were paused, on `activated`. */
  readonly pauseMs?: number;
}

/** Options for `createReshard`. */
export interface ReshardOptions {
  /** The shard map's name in `mapStore`; one reshard per map at a time, known by this name. */
  name: string;
  /** Where the map's versions live; the new strategy is saved there and activated at cutover. */
  mapStore: ShardMapStore;
  /** The current strategy (default: the map's active version); saved as the first version when the map is new. */
  from?: ShardStrategy;
  /** The new strategy. */
  to: ShardStrategy;
  /** A driver for every shard of both strategies; the reshard never closes them. */
  shards: Readonly<Record<ShardId, SqlDriver>>;
  /** The tables to move (default: the router's tables placed by key). */
  tables?: Readonly<Record<string, ReshardTableOptions>>;
  /** Where the reshard's state table lives (often the map store's database). */
  state: SqlDriver;
  /** The state table (default `strata_reshard`). */
  stateTable?: string;
  /** A directory for the embedded change log (`reshard-<map>.db`), removed after cleanup or abort. */
  workDir: string;
  /** Capture on source shards (default SQLite triggers; PostgreSQL shards need `postgresReshardCapture`). */
  capture?: ReshardCaptureFactory;
  /** The store of directory tables, for directory strategies (default `state`). */
  directory?: SqlDriver;
  /** This process's router: its writes pause at cutover and it switches to `to` (unless `onCutover` is given). */
  router?: ReshardRouter;
  /**
   * Switches this process's routing to `to`; called while writes are paused, after the new map
   * is active (default `router.setStrategy(to)`). If it throws, writes stay paused (fail closed).
   */
  onCutover?: (to: ShardStrategy) => void | Promise<void>;
  /** Rows per copy, verify and cleanup chunk (default 1000). */
  chunkSize?: number;
  /** How long a process holds the reshard without renewing; a restart after a crash waits this long (default 15s). */
  lease?: Duration;
  /** The longest the final catch-up may take while writes are paused; then writes resume and cutover is retried (default 5s). */
  cutoverTimeout?: Duration;
  /** Cutover attempts before giving up with `E_TIMEOUT` (default 3). */
  cutoverAttempts?: number;
  /** Wait after the map state becomes `cutover` before pausing, so routers of other processes see it (default 0). */
  settle?: Duration;
  /** Catch-up rounds that differences get to disappear before verification fails (default 5). */
  verifyRounds?: number;
  /** Called after each checkpoint; awaited, so a slow callback slows the reshard. */
  onProgress?: (progress: ReshardProgress) => void | Promise<void>;
  /** Where failures of background work go (relays, capture); default a process warning. */
  onError?: (err: unknown) => void;
  /** The clock of leases, timestamps and waits (default the system clock). */
  clock?: Clock;
}

/** Rows to move from one source shard to one target shard, for one table. */
export interface ReshardMove {
  /** The table. */
  readonly table: string;
  readonly source: ShardId;
  readonly target: ShardId;
  readonly rows: number;
}

/** What `plan()` found: the rows each source would send to each target. */
export interface ReshardPlan {
  /** The shard map's name. */
  readonly name: string;
  /** The active strategy. */
  readonly from: ShardStrategy;
  /** The new strategy. */
  readonly to: ShardStrategy;
  /** Shards that may lose rows (captured and copied from). */
  readonly sources: readonly ShardId[];
  /** The new strategy's shards. */
  readonly targets: readonly ShardId[];
  /** Rows in the source tables. */
  readonly rows: number;
  /** Rows that move. */
  readonly moving: number;
  /** Rows that move, per table, source and target (pairs without rows are left out). */
  readonly moves: readonly ReshardMove[];
  /** True when large tables were sampled rather than read in full. */
  readonly estimated: boolean;
}

/** Differences a verification found. */
export interface ReshardVerifyCounts {
  /** Rows of a source missing on their target. */
  readonly missing: number;
  /** Copies that should not exist (their source row is gone or placed elsewhere). */
  readonly extra: number;
  /** Copies whose values differ from their source row. */
  readonly different: number;
}

/** Where a reshard is, from its durable state. */
export interface ReshardStatus {
  /** The shard map's name. */
  readonly name: string;
  /** The step in progress (or `done`, `aborting`, `aborted`). */
  readonly step: ReshardStep;
  readonly from: ShardStrategy;
  readonly to: ShardStrategy;
  /** The map store versions of `from` and `to`. */
  readonly fromVersion: number;
  readonly toVersion: number;
  /** Shards that may lose rows: captured, copied from and cleaned up. */
  readonly sources: readonly ShardId[];
  /** The new strategy's shards. */
  readonly targets: readonly ShardId[];
  /** Rows in the source tables when planned. */
  readonly rowsEstimated: number;
  /** Source rows read by the copy. */
  readonly rowsScanned: number;
  /** Rows the copy wrote to targets. */
  readonly rowsCopied: number;
  /** Log entries applied by the catch-up. */
  readonly changesApplied: number;
  /** Rows deleted by cleanup (moved rows on their old shards) or by abort (copies on targets). */
  readonly rowsCleaned: number;
  /** The last verification's differences that persisted, if it failed. */
  readonly lastVerify: ReshardVerifyCounts | undefined;
  /** How long writes were paused at each cutover attempt, in ms. */
  readonly pauses: readonly number[];
  /** The longest of `pauses`; undefined before cutover. */
  readonly longestPauseMs: number | undefined;
  /** When the reshard was planned and last saved (epoch ms). */
  readonly startedAt: number;
  readonly updatedAt: number;
  /** The process holding the reshard, while one runs it. */
  readonly owner: string | undefined;
}

/** A reshard; see `createReshard`. */
export interface Reshard {
  /** Counts the rows that would move, per source, target and table; changes nothing. */
  plan(): Promise<ReshardPlan>;
  /**
   * Runs from the durable state to `done` (or stops before step `until`): the first call plans
   * and starts, later calls (in this or another process) continue where the state says. Resolves
   * with the status. `E_VERIFY` when verification fails (nothing is cut over; run again after
   * fixing), `E_ABORTED` when `abort()` stopped it, `E_CONFLICT` when another process runs it or
   * another reshard of the map is in progress, `E_FENCED` when another process took it over.
   */
  run(options?: { until?: ReshardStep }): Promise<ReshardStatus>;
  /**
   * Undoes the reshard before its cutover: stops a run in progress (here or in another process),
   * deletes the copies from the targets, removes capture; the old map stays active. Resumable.
   * `E_CONFLICT` once the new map is active; `E_NOT_FOUND` when there is no reshard of the map.
   */
  abort(): Promise<ReshardStatus>;
  /** The durable state, or undefined when the map was never resharded. */
  status(): Promise<ReshardStatus | undefined>;
}

// ---------------------------------------------------------------------------------------------
// Durable shapes

interface SourceInfo {
  readonly shard: ShardId;
  /** The change source name. */
  readonly source: string;
  /** A short identifier for what capture installs. */
  readonly id: string;
}

interface Details {
  readonly from: ShardStrategy;
  readonly to: ShardStrategy;
  readonly fromVersion: number;
  readonly toVersion: number;
  readonly tables: ReshardTable[];
  readonly sources: SourceInfo[];
  readonly targets: ShardId[];
  readonly rowsEstimated: number;
  pauses: number[];
  lastVerify?: ReshardVerifyCounts | undefined;
}

interface ScanCursor {
  after: KeyValues | null;
  done: boolean;
}

interface Cursors {
  copy: Record<string, ScanCursor>;
  cleanup: Record<string, ScanCursor>;
  abort: Record<string, ScanCursor>;
  scanned: number;
  copied: number;
  applied: number;
  changes: number;
  cleaned: number;
  captureRemoved: boolean;
  cutoverAttempts: number;
}

type State = StoredReshard<Details, Cursors>;

const emptyCursors = (): Cursors => ({
  copy: {},
  cleanup: {},
  abort: {},
  scanned: 0,
  copied: 0,
  applied: 0,
  changes: 0,
  cleaned: 0,
  captureRemoved: false,
  cutoverAttempts: 0,
});

// ---------------------------------------------------------------------------------------------
// Validation

const MAP_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$/;
const DEFAULT_CHUNK = 1_000;
const APPLY_BATCH = 500;
const MAX_SUSPECTS = 100_000;
const PUBLISH_EVERY_MS = 2_000;
/** Rows of a source table read in full by `plan()`; larger tables are sampled. */
const PLAN_EXACT_ROWS = 200_000;

function checkShardStrategy(value: unknown, option: string): ShardStrategy {
  if (value === undefined) throw new ConfigError(option, 'is required');
  const strategy = validateStrategy(value, option);
  if (strategy.kind === 'time') {
    throw new ConfigError(option, 'a time strategy places rows in partitions, not shards');
  }
  return strategy;
}

function isDriver(value: unknown): value is SqlDriver {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as SqlDriver).query === 'function' &&
    typeof (value as SqlDriver).transaction === 'function'
  );
}

function checkTables(value: unknown, router: ReshardRouter | undefined): ReshardTable[] {
  let source = value;
  if (source === undefined && router !== undefined) {
    source = Object.fromEntries(
      Object.entries(router.tables).filter(([, p]) => typeof (p as { key?: unknown }).key === 'string'),
    );
  }
  if (typeof source !== 'object' || source === null || Array.isArray(source)) {
    throw new ConfigError('tables', 'must map each table to { key, primaryKey }');
  }
  const out: ReshardTable[] = [];
  for (const [table, raw] of Object.entries(source as Record<string, unknown>)) {
    const at = `tables.${table}`;
    try {
      assertIdentifier(table);
    } catch (err) {
      throw new ConfigError('tables', 'table names must be SQL identifiers', { cause: err });
    }
    if (typeof raw !== 'object' || raw === null) throw new ConfigError(at, 'must be { key, primaryKey }');
    const { key, primaryKey } = raw as { key?: unknown; primaryKey?: unknown };
    const column = (c: unknown, option: string): string => {
      try {
        assertIdentifier(c);
        return c;
      } catch (err) {
        throw new ConfigError(option, 'must be a column name', { cause: err });
      }
    };
    const k = column(key, `${at}.key`);
    const pkRaw = primaryKey === undefined ? [k] : typeof primaryKey === 'string' ? [primaryKey] : primaryKey;
    if (!Array.isArray(pkRaw) || pkRaw.length === 0) {
      throw new ConfigError(`${at}.primaryKey`, 'must be a column name or a non-empty array of them');
    }
    out.push({
      table,
      key: k,
      primaryKey: pkRaw.map((c: unknown, i) => column(c, `${at}.primaryKey[${i}]`)),
    });
  }
  if (out.length === 0) throw new ConfigError('tables', 'must name at least one table');
  return out;
}

/** A strategy's definition without its version, for comparing definitions. */
function canonical(strategy: ShardStrategy): string {
  const { version: _version, ...rest } = JSON.parse(JSON.stringify(strategy)) as Record<string, unknown>;
  return sortedJson(rest);
}

function sortedJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(sortedJson).join(',')}]`;
  const entries = Object.keys(value)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${sortedJson((value as Record<string, unknown>)[k])}`);
  return `{${entries.join(',')}}`;
}

/** A short identifier for names of what a reshard installs, unique per map name. */
function idOf(name: string): string {
  const base = name
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, '_')
    .slice(0, 24);
  return `${base}_${murmur3_32(name, 0x5eed).toString(16).padStart(8, '0').slice(0, 6)}`;
}

// ---------------------------------------------------------------------------------------------
// Which shards lose rows

type Bound = number | string | undefined;

function compareBound(a: number | string, b: number | string): number {
  return typeof a === 'string' ? compareCodePoints(a, b as string) : (a as number) - (b as number);
}

function rangeBounds(s: RangeStrategy): Array<{ shard: ShardId; lo: Bound; hi: Bound }> {
  const conv = (b: number | string | undefined): Bound =>
    b === undefined ? undefined : s.keyType === 'date' ? Date.parse(b as string) : b;
  return s.ranges.map((r) => ({ shard: r.shard, lo: conv(r.from), hi: conv(r.to) }));
}

/** True when every key the `from` ranges place on `shard` is placed on it by `to` too. */
function rangesKeep(from: RangeStrategy, to: RangeStrategy, shard: ShardId): boolean {
  const target = rangeBounds(to);
  for (const r of rangeBounds(from)) {
    if (r.shard !== shard) continue;
    for (const t of target) {
      const overlaps =
        (t.lo === undefined || r.hi === undefined || compareBound(t.lo, r.hi) < 0) &&
        (t.hi === undefined || r.lo === undefined || compareBound(t.hi, r.lo) > 0);
      if (overlaps && t.shard !== shard) return false;
    }
  }
  return true;
}

/** The `from` shards that may hold rows `to` places elsewhere, in `from` order. */
function losingShards(from: ShardStrategy, to: ShardStrategy): ShardId[] {
  if (from.kind === 'hash' && to.kind === 'hash' && from.seed === to.seed) {
    const m = to.shards.length;
    // Jump hash: with fewer buckets, a key whose bucket is still there keeps it.
    if (m <= from.shards.length && to.shards.every((s, i) => from.shards[i] === s)) {
      return from.shards.slice(m);
    }
  }
  if (from.kind === 'range' && to.kind === 'range' && from.keyType === to.keyType) {
    return from.shards.filter((s) => !rangesKeep(from, to, s));
  }
  return [...from.shards];
}

// ---------------------------------------------------------------------------------------------
// Placement

type Place = (key: unknown, table: ReshardTable) => ShardId | Promise<ShardId>;

function placerFor(strategy: ShardStrategy, directory: SqlDriver, clock: Clock): Place {
  if (strategy.kind === 'directory') {
    const dir = createDirectory(strategy, directory, { clock });
    return (key) => dir.lookup(key);
  }
  return (key, t) => placeSync(strategy, key, { table: t.table, column: t.key });
}

async function placeRow(place: Place, t: ReshardTable, row: Row): Promise<ShardId> {
  return place(row[t.key], t);
}

function tokenOf(key: KeyValues): string {
  return keyTuple(key).token;
}

const sortedColumns = new Map<string, string[]>();

/** The canonical text of a whole row (column names and normalized values), for comparing copies. */
function rowSignature(row: Row): string {
  const names = Object.keys(row);
  const signature = names.join('\u0000');
  let columns = sortedColumns.get(signature);
  if (columns === undefined) {
    columns = [...names].sort();
    if (sortedColumns.size < 1_000) sortedColumns.set(signature, columns);
  }
  return encodeTokens([...columns, ...columns.map((c) => normalizeValue(row[c]))]);
}

interface TruthRow {
  readonly row: Row;
  /** The shard holding it, where the old strategy places it. */
  readonly source: ShardId;
  /** Where the new strategy places it. */
  readonly target: ShardId;
}

// ---------------------------------------------------------------------------------------------
// The reshard

/** What a run needs from its reshard: validated options and settings. */
interface Context {
  readonly name: string;
  readonly id: string;
  readonly options: ReshardOptions;
  readonly drivers: ReadonlyMap<ShardId, SqlDriver>;
  readonly store: ReshardStateStore<Details, Cursors>;
  readonly captureFactory: ReshardCaptureFactory;
  readonly directory: SqlDriver;
  readonly clock: Clock;
  readonly settings: {
    readonly chunk: number;
    readonly leaseMs: number;
    readonly cutoverTimeoutMs: number;
    readonly cutoverAttempts: number;
    readonly settleMs: number;
    readonly verifyRounds: number;
  };
  readonly onError: (err: unknown) => void;
  /** True once `abort()` was called on this instance. */
  readonly abortRequestedHere: boolean;
}

class ReshardImpl implements Reshard {
  readonly #o: ReshardOptions;
  readonly #name: string;
  readonly #id: string;
  readonly #to: ShardStrategy;
  readonly #from: ShardStrategy | undefined;
  readonly #drivers: ReadonlyMap<ShardId, SqlDriver>;
  readonly #tables: readonly ReshardTable[];
  readonly #store: ReshardStateStore<Details, Cursors>;
  readonly #capture: ReshardCaptureFactory;
  readonly #directory: SqlDriver;
  readonly #clock: Clock;
  readonly #chunk: number;
  readonly #leaseMs: number;
  readonly #cutoverTimeoutMs: number;
  readonly #cutoverAttempts: number;
  readonly #settleMs: number;
  readonly #verifyRounds: number;
  readonly #onError: (err: unknown) => void;
  readonly #context: Context;
  #running: Promise<unknown> | undefined;
  #abortLocal = false;

  constructor(options: ReshardOptions) {
    if (typeof options !== 'object' || options === null)
      throw new ConfigError('options', 'must be an object');
    this.#o = options;
    if (typeof options.name !== 'string' || !MAP_NAME.test(options.name)) {
      throw new ConfigError(
        'name',
        'a shard map name is 1-128 letters, digits, underscores, dots, colons or dashes',
      );
    }
    this.#name = options.name;
    this.#id = idOf(options.name);
    const mapStore = options.mapStore as Partial<ShardMapStore> | undefined;
    if (typeof mapStore?.activate !== 'function' || typeof mapStore.active !== 'function') {
      throw new ConfigError('mapStore', 'must be a shard map store from createShardMapStore');
    }
    this.#to = checkShardStrategy(options.to, 'to');
    this.#from = options.from === undefined ? undefined : checkShardStrategy(options.from, 'from');
    if (typeof options.shards !== 'object' || options.shards === null) {
      throw new ConfigError('shards', 'must map every shard id to a SQL driver');
    }
    const drivers = new Map<ShardId, SqlDriver>();
    for (const [id, driver] of Object.entries(options.shards)) {
      if (!isDriver(driver)) throw new ConfigError(`shards.${id}`, 'must be a SQL driver');
      drivers.set(id, driver);
    }
    for (const strategy of [this.#to, this.#from]) {
      for (const shard of strategy?.shards ?? []) {
        if (!drivers.has(shard)) {
          throw new ConfigError('shards', `no driver for shard "${shard}"`, { details: { shard } });
        }
      }
    }
    this.#drivers = drivers;
    if (options.router !== undefined) {
      const r = options.router as Partial<ReshardRouter>;
      if (typeof r.pauseWrites !== 'function' || typeof r.resumeWrites !== 'function') {
        throw new ConfigError('router', 'must be a shard router');
      }
      if (options.onCutover === undefined) {
        const routed = [...(r.shards?.keys() ?? [])];
        const same =
          routed.length === this.#to.shards.length && this.#to.shards.every((s) => r.shards?.has(s) === true);
        if (!same) {
          throw new ConfigError(
            'router',
            'routes over other shards than the new strategy, so it cannot switch to it; pass onCutover',
          );
        }
      }
    }
    if (options.onCutover !== undefined && typeof options.onCutover !== 'function') {
      throw new ConfigError('onCutover', 'must be a function');
    }
    this.#tables = checkTables(options.tables, options.router);
    if (!isDriver(options.state)) throw new ConfigError('state', 'must be a SQL driver');
    if (options.directory !== undefined && !isDriver(options.directory)) {
      throw new ConfigError('directory', 'must be a SQL driver');
    }
    this.#directory = options.directory ?? options.state;
    if (
      this.#from?.kind === 'directory' &&
      this.#to.kind === 'directory' &&
      this.#from.table === this.#to.table
    ) {
      throw new ConfigError('to.table', 'must differ from the directory table of the current strategy');
    }
    if (typeof options.workDir !== 'string' || options.workDir.length === 0) {
      throw new ConfigError('workDir', 'must be a directory path');
    }
    this.#chunk = options.chunkSize ?? DEFAULT_CHUNK;
    if (!Number.isSafeInteger(this.#chunk) || this.#chunk < 1 || this.#chunk > 100_000) {
      throw new ConfigError('chunkSize', 'must be an integer from 1 to 100000');
    }
    this.#leaseMs = parseDuration(options.lease ?? '15s', 'lease', { allowZero: false });
    this.#cutoverTimeoutMs = parseDuration(options.cutoverTimeout ?? '5s', 'cutoverTimeout', {
      allowZero: false,
    });
    this.#settleMs = parseDuration(options.settle ?? 0, 'settle');
    this.#cutoverAttempts = options.cutoverAttempts ?? 3;
    if (!Number.isSafeInteger(this.#cutoverAttempts) || this.#cutoverAttempts < 1) {
      throw new ConfigError('cutoverAttempts', 'must be a positive integer');
    }
    this.#verifyRounds = options.verifyRounds ?? 5;
    if (!Number.isSafeInteger(this.#verifyRounds) || this.#verifyRounds < 1) {
      throw new ConfigError('verifyRounds', 'must be a positive integer');
    }
    for (const fn of ['onProgress', 'onError'] as const) {
      if (options[fn] !== undefined && typeof options[fn] !== 'function') {
        throw new ConfigError(fn, 'must be a function');
      }
    }
    this.#onError = options.onError ?? ((err) => reportBackgroundError(`reshard ${options.name}`, err));
    this.#clock = options.clock ?? systemClock;
    this.#capture = options.capture ?? defaultReshardCapture(drivers.values());
    if (typeof this.#capture !== 'function') throw new ConfigError('capture', 'must be a capture factory');
    const stateTable = options.stateTable ?? 'strata_reshard';
    try {
      assertIdentifier(stateTable);
    } catch (err) {
      throw new ConfigError('stateTable', 'must be a SQL identifier', { cause: err });
    }
    this.#store = new ReshardStateStore(options.state, stateTable, this.#clock);
    const self = this;
    this.#context = Object.freeze({
      name: this.#name,
      id: this.#id,
      options,
      drivers,
      store: this.#store,
      captureFactory: this.#capture,
      directory: this.#directory,
      clock: this.#clock,
      settings: Object.freeze({
        chunk: this.#chunk,
        leaseMs: this.#leaseMs,
        cutoverTimeoutMs: this.#cutoverTimeoutMs,
        cutoverAttempts: this.#cutoverAttempts,
        settleMs: this.#settleMs,
        verifyRounds: this.#verifyRounds,
      }),
      onError: this.#onError,
      get abortRequestedHere() {
        return self.#abortLocal;
      },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Plan

  async #currentFrom(): Promise<{ strategy: ShardStrategy; version: number | undefined }> {
    await this.#o.mapStore.migrate();
    const active = await this.#o.mapStore.active(this.#name);
    if (active === undefined) {
      if (this.#from === undefined) {
        throw new ConfigError('from', 'is required: the shard map has no saved version yet');
      }
      return { strategy: this.#from, version: undefined };
    }
    const strategy = checkShardStrategy(active.strategy, 'from');
    if (this.#from !== undefined && canonical(this.#from) !== canonical(strategy)) {
      throw new ConfigError('from', 'differs from the active version of the shard map');
    }
    for (const shard of strategy.shards) {
      if (!this.#drivers.has(shard)) {
        throw new ConfigError('shards', `no driver for shard "${shard}"`, { details: { shard } });
      }
    }
    return { strategy, version: active.version };
  }

  async #checkTables(from: ShardStrategy): Promise<void> {
    const shards = new Set([...from.shards, ...this.#to.shards]);
    for (const shard of shards) {
      for (const t of this.#tables) await checkShardTable(this.#drivers.get(shard)!, shard, t);
    }
  }

  async plan(): Promise<ReshardPlan> {
    const { strategy: from } = await this.#currentFrom();
    await this.#checkTables(from);
    const placeFrom = placerFor(from, this.#directory, this.#clock);
    const placeTo = placerFor(this.#to, this.#directory, this.#clock);
    const sources = losingShards(from, this.#to);
    const moves = new Map<string, ReshardMove>();
    let rows = 0;
    let moving = 0;
    let estimated = false;
    for (const shard of sources) {
      const driver = this.#drivers.get(shard)!;
      for (const t of this.#tables) {
        const total = await countRows(driver, t.table);
        rows += total;
        const counted = new Map<ShardId, number>();
        const tally = async (page: Row[]) => {
          for (const row of page) {
            if ((await placeRow(placeFrom, t, row)) !== shard) continue;
            const target = await placeRow(placeTo, t, row);
            if (target !== shard) counted.set(target, (counted.get(target) ?? 0) + 1);
          }
        };
        const columns = [...new Set([...t.primaryKey, t.key])];
        let scale = 1;
        if (total <= PLAN_EXACT_ROWS) {
          let after: KeyValues | undefined;
          for (;;) {
            const page = await scanPage(driver, t, after, 5_000, columns);
            await tally(page);
            if (page.length < 5_000) break;
            after = keyOf(t, page.at(-1)!);
          }
        } else {
          estimated = true;
          const fraction = PLAN_EXACT_ROWS / total;
          const sampleWhere =
            driver.dialect.name === 'postgres'
              ? sql`random() < ${fraction}`
              : sql`abs(random() % 1000000) < ${Math.ceil(fraction * 1_000_000)}`;
          const { rows: sample } = await driver.query(
            sql`select ${sql.join(columns.map((c) => sql.id(c)))} from ${sql.id(t.table)} where ${sampleWhere}`,
          );
          await tally(sample);
          scale = sample.length === 0 ? 0 : total / sample.length;
        }
        for (const [target, n] of counted) {
          const count = Math.round(n * scale);
          moving += count;
          moves.set(`${t.table}\u0000${shard}\u0000${target}`, {
            table: t.table,
            source: shard,
            target,
            rows: count,
          });
        }
      }
    }
    return {
      name: this.#name,
      from,
      to: this.#to,
      sources,
      targets: [...this.#to.shards],
      rows,
      moving,
      moves: [...moves.values()],
      estimated,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Status

  async status(): Promise<ReshardStatus | undefined> {
    await this.#store.migrate();
    const row = await this.#store.read(this.#name);
    return row === undefined ? undefined : toStatus(row);
  }

  // -------------------------------------------------------------------------------------------
  // Run

  run(options: { until?: ReshardStep } = {}): Promise<ReshardStatus> {
    const until = options.until;
    if (until !== undefined && !RESHARD_STEPS.includes(until)) {
      return Promise.reject(new ConfigError('until', 'must be one of the reshard steps'));
    }
    if (this.#running !== undefined) {
      return Promise.reject(new StrataError('E_CONFLICT', `reshard "${this.#name}" is already running here`));
    }
    this.#abortLocal = false;
    const running = keepingAlive(this.#run(until));
    this.#running = running;
    return running.finally(() => {
      if (this.#running === running) this.#running = undefined;
    });
  }

  async #run(until: ReshardStep | undefined): Promise<ReshardStatus> {
    await this.#store.migrate();
    const owner = ownerId();
    let state = await this.#store.read(this.#name);
    const sameTarget = state !== undefined && canonical(state.details.to) === canonical(this.#to);
    if (state !== undefined && state.step === 'done' && sameTarget) return toStatus(state);
    if (state === undefined || state.step === 'done' || state.step === 'aborted') {
      state = await this.#start(owner);
    } else {
      if (!sameTarget) {
        throw new StrataError(
          'E_CONFLICT',
          `another reshard of shard map "${this.#name}" is in progress; finish or abort it first`,
          { details: { name: this.#name, step: state.step } },
        );
      }
      if (state.step === 'aborting') {
        throw new StrataError(
          'E_ABORTED',
          `reshard "${this.#name}" is being aborted; call abort() to finish`,
        );
      }
      await this.#acquire(owner);
      state = (await this.#store.read(this.#name))!;
    }
    const runner = new Runner(this.#context, state, owner);
    try {
      return await runner.run(until);
    } finally {
      await runner.close();
    }
  }

  /** Plans a new reshard and creates its row (taking the lease). */
  async #start(owner: string): Promise<State> {
    const { strategy: from, version } = await this.#currentFrom();
    await this.#checkTables(from);
    const mapStore = this.#o.mapStore;
    const fromVersion = version ?? (await mapStore.save(this.#name, from));
    if (canonical(from) === canonical(this.#to)) {
      throw new ConfigError('to', 'is the strategy the shard map already uses');
    }
    const plan = await this.plan();
    const toVersion = await mapStore.save(this.#name, this.#to);
    // Capture names carry a token of this run: PostgreSQL replication slots are per server, so
    // reshards of same-named maps in other databases of one server must not share a slot.
    const run = randomBytes(3).toString('hex');
    const sources = plan.sources.map((shard) => {
      const index = from.shards.indexOf(shard);
      return { shard, source: `rs.${this.#id}.${run}.${index}`, id: `${this.#id}_${run}_${index}` };
    });
    const details: Details = {
      from,
      to: this.#to,
      fromVersion,
      toVersion,
      tables: [...this.#tables],
      sources,
      targets: [...this.#to.shards],
      rowsEstimated: plan.rows,
      pauses: [],
    };
    if (!(await this.#store.create(this.#name, owner, this.#leaseMs, 'planned', details, emptyCursors()))) {
      throw new StrataError(
        'E_CONFLICT',
        `another reshard of shard map "${this.#name}" started at the same time`,
        { details: { name: this.#name } },
      );
    }
    return (await this.#store.read(this.#name))!;
  }

  /** Takes the lease, waiting for a crashed owner's lease to expire; `E_CONFLICT` when a live owner keeps it. */
  async #acquire(owner: string): Promise<void> {
    const deadline = this.#clock.now() + this.#leaseMs * 2 + 1_000;
    for (;;) {
      if (await this.#store.acquire(this.#name, owner, this.#leaseMs)) return;
      if (this.#clock.now() > deadline) {
        throw new StrataError('E_CONFLICT', `reshard "${this.#name}" is running in another process`, {
          details: { name: this.#name },
        });
      }
      await sleep(Math.min(200, this.#leaseMs / 4), { clock: this.#clock });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Abort

  abort(): Promise<ReshardStatus> {
    return keepingAlive(this.#abort());
  }

  async #abort(): Promise<ReshardStatus> {
    await this.#store.migrate();
    let state = await this.#store.read(this.#name);
    if (state === undefined) {
      throw new StrataError('E_NOT_FOUND', `shard map "${this.#name}" has no reshard to abort`, {
        details: { name: this.#name },
      });
    }
    if (state.step === 'aborted') return toStatus(state);
    if (state.step === 'done' || state.step === 'cleanup') throw this.#tooLate();
    await this.#store.requestAbort(this.#name);
    this.#abortLocal = true;
    await this.#running?.catch(() => undefined);
    const owner = ownerId();
    await this.#acquire(owner);
    state = (await this.#store.read(this.#name))!;
    const active = await this.#o.mapStore.active(this.#name);
    if (state.step === 'done' || state.step === 'cleanup' || active?.version === state.details.toVersion) {
      await this.#store.release(this.#name, owner);
      throw this.#tooLate();
    }
    if (state.step === 'aborted') {
      await this.#store.release(this.#name, owner);
      return toStatus(state);
    }
    const runner = new Runner(this.#context, state, owner);
    try {
      return await runner.abort();
    } finally {
      await runner.close();
    }
  }

  #tooLate(): StrataError {
    return new StrataError(
      'E_CONFLICT',
      `reshard "${this.#name}" has cut over; reshard back to the old strategy instead of aborting`,
      { details: { name: this.#name } },
    );
  }
}

/**
 * Holds the process open until `work` settles: every timer of strata is unref'd, so a script
 * awaiting a reshard that waits for a lease or for the log would otherwise just exit.
 */
async function keepingAlive<T>(work: Promise<T>): Promise<T> {
  const timer = setInterval(() => undefined, 60_000);
  try {
    return await work;
  } finally {
    clearInterval(timer);
  }
}

function ownerId(): string {
  return `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
}

function toStatus(state: State): ReshardStatus {
  const d = state.details;
  const c = state.cursors;
  return Object.freeze({
    name: state.name,
    step: state.step,
    from: d.from,
    to: d.to,
    fromVersion: d.fromVersion,
    toVersion: d.toVersion,
    sources: d.sources.map((s) => s.shard),
    targets: d.targets,
    rowsEstimated: d.rowsEstimated,
    rowsScanned: c.scanned,
    rowsCopied: c.copied,
    changesApplied: c.changes,
    rowsCleaned: c.cleaned,
    lastVerify: d.lastVerify,
    pauses: d.pauses,
    longestPauseMs: d.pauses.length === 0 ? undefined : Math.max(...d.pauses),
    startedAt: state.startedAt,
    updatedAt: state.updatedAt,
    owner: state.owner ?? undefined,
  });
}

function stepIndex(step: ReshardStep): number {
  return RESHARD_STEPS.indexOf(step);
}

// ---------------------------------------------------------------------------------------------
// One process's run of a reshard: the lease, the log, capture, and the steps

class Runner {
  readonly #r: Context;
  readonly #owner: string;
  readonly #details: Details;
  readonly #cursors: Cursors;
  readonly #saveLock = new Mutex();
  readonly #placeFrom: Place;
  readonly #placeTo: Place;
  readonly #fromShards: ReadonlySet<ShardId>;
  readonly #fence: string;
  #step: ReshardStep;
  #renewTimer: TimerHandle | undefined;
  #renewing: Promise<void> | undefined;
  #fenced: unknown;
  #abortRequested = false;
  #log: ChangeLog | undefined;
  #captures: ReshardCapture[] = [];
  #relays: Relay[] = [];
  #applier: Applier | undefined;
  #verified = 0;
  #publishedAt = 0;
  #closed = false;

  constructor(reshard: Context, state: State, owner: string) {
    this.#r = reshard;
    this.#owner = owner;
    this.#details = state.details;
    this.#cursors = { ...emptyCursors(), ...state.cursors };
    this.#step = state.step;
    const clock = reshard.clock;
    this.#placeFrom = placerFor(this.#details.from, reshard.directory, clock);
    this.#placeTo = placerFor(this.#details.to, reshard.directory, clock);
    this.#fromShards = new Set(this.#details.from.shards);
    this.#fence = `_strata_rsf_${reshard.id}`;
    this.#scheduleRenew();
  }

  get #name(): string {
    return this.#r.name;
  }

  #driver(shard: ShardId): SqlDriver {
    return this.#r.drivers.get(shard)!;
  }

  get #tables(): readonly ReshardTable[] {
    return this.#details.tables;
  }

  // -------------------------------------------------------------------------------------------
  // Lease and checkpoints

  #scheduleRenew(): void {
    const every = Math.max(50, Math.floor(this.#r.settings.leaseMs / 3));
    this.#renewTimer = this.#r.clock.setTimeout(() => {
      this.#renewing = this.#r.store
        .renew(this.#name, this.#owner, this.#r.settings.leaseMs)
        .then(
          ({ abortRequested }) => {
            if (abortRequested) this.#abortRequested = true;
          },
          (err: unknown) => {
            if (isStrataError(err, 'E_FENCED')) this.#fenced = err;
            else this.#r.onError(err);
          },
        )
        .finally(() => {
          if (!this.#closed) this.#scheduleRenew();
        });
    }, every);
  }

  /** Throws when another process took over or an abort was requested. */
  #checkStop(): void {
    if (this.#fenced !== undefined) throw this.#fenced;
    if (this.#abortRequested || this.#r.abortRequestedHere) {
      throw new StrataError('E_ABORTED', `reshard "${this.#name}" was stopped by abort()`, {
        details: { name: this.#name },
      });
    }
  }

  /**
   * Saves the state durably (fenced by the lease), then reports progress. Also yields to the
   * event loop: on SQLite every statement is synchronous, and the application sharing this
   * process must get its turn between chunks.
   */
  async #checkpoint(event: ReshardProgress['event'] | undefined, extra: { pauseMs?: number } = {}) {
    await yieldToEventLoop();
    await this.#saveLock.run(async () => {
      const { abortRequested } = await this.#r.store.save(
        this.#name,
        this.#owner,
        this.#r.settings.leaseMs,
        this.#step,
        this.#details,
        this.#cursors,
      );
      if (abortRequested && this.#step !== 'aborting' && this.#step !== 'aborted')
        this.#abortRequested = true;
    });
    if (event !== undefined) await this.#progress(event, extra);
  }

  async #progress(event: ReshardProgress['event'], extra: { pauseMs?: number } = {}): Promise<void> {
    if (event === 'chunk' || event === 'batch') await this.#publish(false);
    const onProgress = this.#r.options.onProgress;
    if (onProgress === undefined) return;
    const c = this.#cursors;
    await onProgress({
      name: this.#name,
      step: this.#step,
      event,
      rowsEstimated: this.#details.rowsEstimated,
      rowsScanned: c.scanned,
      rowsCopied: c.copied,
      changesApplied: c.changes,
      rowsVerified: this.#verified,
      rowsCleaned: c.cleaned,
      ...extra,
    });
  }

  async #enter(step: ReshardStep): Promise<void> {
    this.#checkStop();
    this.#step = step;
    await this.#checkpoint('started');
    await this.#publish(true);
  }

  /**
   * Records the step and the copy's progress in the shard map's state (`resharding`), for
   * dashboards and other processes; at most every 2s unless `force`. Not during cutover and after.
   */
  async #publish(force: boolean): Promise<void> {
    const step = this.#step;
    if (
      step !== 'capture' &&
      step !== 'copy' &&
      step !== 'catchup' &&
      step !== 'verify' &&
      step !== 'cutover'
    ) {
      return;
    }
    const now = this.#r.clock.now();
    if (!force && (step === 'cutover' || now - this.#publishedAt < PUBLISH_EVERY_MS)) return;
    this.#publishedAt = now;
    const total = this.#details.rowsEstimated;
    const scanned = this.#cursors.scanned;
    await this.#r.options.mapStore.setState(this.#name, 'resharding', {
      reshard: this.#name,
      step,
      toVersion: this.#details.toVersion,
      copied: this.#cursors.copied,
      total,
      percent:
        step === 'copy' ? Math.min(100, Math.round((scanned / Math.max(1, total)) * 1_000) / 10) : null,
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#renewTimer !== undefined) this.#r.clock.clearTimeout(this.#renewTimer);
    await this.#renewing?.catch(() => undefined);
    await this.#stopBackground();
    await this.#r.store.release(this.#name, this.#owner).catch((err: unknown) => this.#r.onError(err));
  }

  // -------------------------------------------------------------------------------------------
  // Steps

  async run(until: ReshardStep | undefined): Promise<ReshardStatus> {
    const stop = until === undefined ? Number.POSITIVE_INFINITY : stepIndex(until);
    for (;;) {
      this.#checkStop();
      const step = this.#step;
      if (step === 'done' || stepIndex(step) >= stop) break;
      switch (step) {
        case 'planned':
          await this.#enter('capture');
          break;
        case 'capture':
          await this.#startCapture();
          await this.#enter('copy');
          break;
        case 'copy':
          await this.#startCapture();
          await this.#copy();
          await this.#enter('catchup');
          break;
        case 'catchup':
          await this.#startCapture();
          await this.#catchUp();
          await this.#enter('verify');
          break;
        case 'verify':
          await this.#startCapture();
          await this.#verify();
          await this.#enter('cutover');
          break;
        case 'cutover':
          await this.#cutover();
          break;
        case 'cleanup':
          await this.#cleanup();
          this.#step = 'done';
          await this.#checkpoint('finished');
          break;
        default:
          throw new StrataError('E_CORRUPT', `reshard "${this.#name}" has an unknown step`, {
            details: { name: this.#name },
          });
      }
    }
    await this.#stopBackground();
    return toStatus((await this.#r.store.read(this.#name))!);
  }

  // -------------------------------------------------------------------------------------------
  // Capture, the log and the applier

  #logFile(): string {
    return join(this.#r.options.workDir, `reshard-${this.#r.id}.db`);
  }

  async #openLog(): Promise<ChangeLog> {
    if (this.#log === undefined) {
      const { createSqliteChangeLog } = await import('../backends/sqlite/sqlite-change-log.js');
      mkdirSync(this.#r.options.workDir, { recursive: true });
      this.#log = createSqliteChangeLog({ filename: this.#logFile(), pollInterval: '50ms' });
    }
    return this.#log;
  }

  async #createFenceTables(): Promise<void> {
    for (const s of this.#details.sources) {
      await this.#driver(s.shard).query(
        sql`create table if not exists ${sql.id(this.#fence)} (token text primary key, at bigint not null)`,
      );
    }
  }

  /** Starts capture on every source and relays it into the log (idempotent within a run). */
  async #startCapture(): Promise<void> {
    if (this.#relays.length > 0 || this.#details.sources.length === 0) return;
    const log = await this.#openLog();
    await this.#createFenceTables();
    const tables = [...this.#tables.map((t) => t.table), this.#fence];
    for (const s of this.#details.sources) {
      const capture = await this.#r.captureFactory({
        shard: s.shard,
        driver: this.#driver(s.shard),
        source: s.source,
        tables,
        id: s.id,
      });
      this.#captures.push(capture);
      const relay = createRelay({ source: capture, log, onError: this.#r.onError });
      await relay.start();
      this.#relays.push(relay);
    }
  }

  async #stopCapture(): Promise<void> {
    const relays = this.#relays;
    this.#relays = [];
    for (const relay of relays) await relay.stop().catch((err: unknown) => this.#r.onError(err));
  }

  async #stopBackground(): Promise<void> {
    await this.#applier?.stop();
    this.#applier = undefined;
    await this.#stopCapture();
    this.#captures = [];
    await this.#log?.close().catch((err: unknown) => this.#r.onError(err));
    this.#log = undefined;
  }

  async #removeCapture(): Promise<void> {
    await this.#applier?.stop();
    this.#applier = undefined;
    await this.#stopCapture();
    if (this.#cursors.captureRemoved) return;
    const tables = [...this.#tables.map((t) => t.table), this.#fence];
    for (const s of this.#details.sources) {
      const capture = await this.#r.captureFactory({
        shard: s.shard,
        driver: this.#driver(s.shard),
        source: s.source,
        tables,
        id: s.id,
      });
      await capture.remove();
      await this.#driver(s.shard).query(sql`drop table if exists ${sql.id(this.#fence)}`);
    }
    this.#captures = [];
    await this.#log?.close();
    this.#log = undefined;
    for (const suffix of ['', '-wal', '-shm']) rmSync(`${this.#logFile()}${suffix}`, { force: true });
    this.#cursors.captureRemoved = true;
    await this.#checkpoint(undefined);
  }

  async #ensureApplier(): Promise<Applier> {
    if (this.#applier === undefined) {
      const log = await this.#openLog();
      this.#applier = new Applier(log, this.#fence, this.#cursors.applied, {
        apply: (entries) => this.#applyEntries(entries),
        saved: async (offset, count) => {
          this.#cursors.applied = offset;
          this.#cursors.changes += count;
          await this.#checkpoint(this.#step === 'catchup' ? 'batch' : undefined);
        },
        onError: this.#r.onError,
      });
      this.#applier.start();
    }
    return this.#applier;
  }

  /** Writes a fence row on every source; returns the tokens to wait for. */
  async #writeFences(): Promise<string[]> {
    return Promise.all(
      this.#details.sources.map(async (s) => {
        const token = `${s.source}:${randomBytes(8).toString('hex')}`;
        await this.#driver(s.shard).query(
          sql`insert into ${sql.id(this.#fence)} (token, at) values (${token}, ${this.#r.clock.now()})`,
        );
        return token;
      }),
    );
  }

  /** Waits until the applier has applied everything committed on every source before now. */
  async #fenceRound(timeoutMs = Number.POSITIVE_INFINITY): Promise<void> {
    if (this.#details.sources.length === 0) return;
    const applier = await this.#ensureApplier();
    const tokens = await this.#writeFences();
    await applier.waitFor(tokens, timeoutMs, () => this.#checkStop());
  }

  /** Reads the current rows of `keys` on every shard of the old strategy, where it places them. */
  async #readTruth(t: ReshardTable, keys: readonly KeyValues[]): Promise<Map<string, TruthRow>> {
    const truth = new Map<string, TruthRow>();
    for (const shard of this.#details.from.shards) {
      const rows = await selectByKeys(this.#driver(shard), t, keys);
      for (const row of rows) {
        if ((await placeRow(this.#placeFrom, t, row)) !== shard) continue;
        truth.set(tokenOf(keyOf(t, row)), {
          row,
          source: shard,
          target: await placeRow(this.#placeTo, t, row),
        });
      }
    }
    return truth;
  }

  /**
   * `#readTruth` for copies found on a target: each is looked up first on the shard the old
   * strategy places it (where it came from), and only the few not there on every shard.
   */
  async #truthOfCopies(t: ReshardTable, copies: readonly Row[]): Promise<Map<string, TruthRow>> {
    const bySource = new Map<ShardId, KeyValues[]>();
    for (const row of copies) {
      const source = await placeRow(this.#placeFrom, t, row);
      let keys = bySource.get(source);
      if (keys === undefined) {
        keys = [];
        bySource.set(source, keys);
      }
      keys.push(keyOf(t, row));
    }
    const truth = new Map<string, TruthRow>();
    for (const [source, keys] of bySource) {
      for (const row of await selectByKeys(this.#driver(source), t, keys)) {
        if ((await placeRow(this.#placeFrom, t, row)) !== source) continue;
        truth.set(tokenOf(keyOf(t, row)), { row, source, target: await placeRow(this.#placeTo, t, row) });
      }
    }
    const elsewhere = copies.map((row) => keyOf(t, row)).filter((key) => !truth.has(tokenOf(key)));
    if (elsewhere.length > 0)
      for (const [token, found] of await this.#readTruth(t, elsewhere)) truth.set(token, found);
    return truth;
  }

  /** Makes every target agree with the sources for `keys` (see the module comment). */
  async #syncKeys(t: ReshardTable, keys: readonly KeyValues[]): Promise<void> {
    const truth = await this.#readTruth(t, keys);
    for (const target of this.#details.targets) {
      const desired: Row[] = [];
      const unwanted: KeyValues[] = [];
      for (const key of keys) {
        const found = truth.get(tokenOf(key));
        if (found !== undefined && found.target === target && found.source !== target)
          desired.push(found.row);
        else unwanted.push(key);
      }
      const driver = this.#driver(target);
      if (!this.#fromShards.has(target)) {
        await driver.transaction(async (tx) => {
          await deleteByKeys(tx, t, unwanted);
          await upsertRows(tx, t, desired);
        });
        continue;
      }
      // A target that is also a shard of the old map: its own rows are never touched.
      const native = await this.#nativeTokens(target, t, keys);
      const remove = unwanted.filter((k) => native.get(tokenOf(k)) === false);
      const write = desired.filter((row) => native.get(tokenOf(keyOf(t, row))) !== true);
      if (remove.length === 0 && write.length === 0) continue;
      await driver.transaction(async (tx) => {
        await deleteByKeys(tx, t, remove);
        await upsertRows(tx, t, write);
      });
    }
  }

  /** For the rows of `keys` on `shard`: true when the old strategy places the row there (its own), false for a copy. */
  async #nativeTokens(
    shard: ShardId,
    t: ReshardTable,
    keys: readonly KeyValues[],
  ): Promise<Map<string, boolean>> {
    const columns = [...new Set([...t.primaryKey, t.key])];
    const rows = await selectByKeys(this.#driver(shard), t, keys, columns);
    const out = new Map<string, boolean>();
    for (const row of rows)
      out.set(tokenOf(keyOf(t, row)), (await placeRow(this.#placeFrom, t, row)) === shard);
    return out;
  }

  async #applyEntries(entries: readonly LogEntry[]): Promise<void> {
    const byTable = new Map<ReshardTable, Map<string, KeyValues>>();
    for (const entry of entries) {
      const t = this.#tables.find((x) => x.table === entry.table);
      if (t === undefined) continue;
      // Our own writes to a merge target come back through its capture; syncing them again
      // changes nothing (equal rows are not rewritten), so they need no special case.
      const image = entry.after ?? entry.before;
      const key = t.primaryKey.map((c) => (c in entry.key ? entry.key[c] : image?.[c]));
      let keys = byTable.get(t);
      if (keys === undefined) {
        keys = new Map();
        byTable.set(t, keys);
      }
      keys.set(tokenOf(key), key);
    }
    for (const [t, keys] of byTable) {
      const list = [...keys.values()];
      for (let i = 0; i < list.length; i += APPLY_BATCH)
        await this.#syncKeys(t, list.slice(i, i + APPLY_BATCH));
    }
  }

  // -------------------------------------------------------------------------------------------
  // Copy

  async #copy(): Promise<void> {
    const { chunk } = this.#r.settings;
    for (const s of this.#details.sources) {
      const driver = this.#driver(s.shard);
      for (const t of this.#tables) {
        const id = `${s.shard}\u0000${t.table}`;
        const cursor = this.#cursors.copy[id] ?? { after: null, done: false };
        this.#cursors.copy[id] = cursor;
        while (!cursor.done) {
          this.#checkStop();
          const rows = await scanPage(driver, t, cursor.after ?? undefined, chunk);
          const moving = new Map<ShardId, Row[]>();
          for (const row of rows) {
            if ((await placeRow(this.#placeFrom, t, row)) !== s.shard) continue;
            const target = await placeRow(this.#placeTo, t, row);
            if (target === s.shard) continue;
            let list = moving.get(target);
            if (list === undefined) {
              list = [];
              moving.set(target, list);
            }
            list.push(row);
          }
          for (const [target, list] of moving) {
            let write = list;
            if (this.#fromShards.has(target)) {
              const native = await this.#nativeTokens(
                target,
                t,
                list.map((row) => keyOf(t, row)),
              );
              write = list.filter((row) => native.get(tokenOf(keyOf(t, row))) !== true);
            }
            await this.#driver(target).transaction((tx) => upsertRows(tx, t, write));
            this.#cursors.copied += write.length;
          }
          this.#cursors.scanned += rows.length;
          if (rows.length > 0) cursor.after = keyOf(t, rows.at(-1)!);
          cursor.done = rows.length < chunk;
          await this.#checkpoint('chunk');
        }
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Catch-up

  async #catchUp(): Promise<void> {
    await this.#fenceRound();
  }

  // -------------------------------------------------------------------------------------------
  // Verify

  async #verify(): Promise<void> {
    await this.#fenceRound();
    const { chunk } = this.#r.settings;
    this.#verified = 0;
    const suspects = new Map<ReshardTable, Map<string, KeyValues>>();
    let count = 0;
    const suspect = (t: ReshardTable, key: KeyValues) => {
      let keys = suspects.get(t);
      if (keys === undefined) {
        keys = new Map();
        suspects.set(t, keys);
      }
      if (!keys.has(tokenOf(key))) {
        keys.set(tokenOf(key), key);
        count++;
      }
      if (count > MAX_SUSPECTS) {
        throw new StrataError(
          'E_VERIFY',
          `verification of reshard "${this.#name}" found too many differences`,
          {
            details: { name: this.#name, differences: count },
          },
        );
      }
    };
    // Every moved row of a source against its copy.
    for (const s of this.#details.sources) {
      for (const t of this.#tables) {
        let after: KeyValues | undefined;
        for (;;) {
          this.#checkStop();
          const rows = await scanPage(this.#driver(s.shard), t, after, chunk);
          const byTarget = new Map<ShardId, Row[]>();
          for (const row of rows) {
            if ((await placeRow(this.#placeFrom, t, row)) !== s.shard) continue;
            const target = await placeRow(this.#placeTo, t, row);
            if (target === s.shard) continue;
            let list = byTarget.get(target);
            if (list === undefined) {
              list = [];
              byTarget.set(target, list);
            }
            list.push(row);
          }
          for (const [target, list] of byTarget) {
            const copies = await selectByKeys(
              this.#driver(target),
              t,
              list.map((row) => keyOf(t, row)),
            );
            const byKey = new Map(copies.map((row) => [tokenOf(keyOf(t, row)), row]));
            for (const row of list) {
              const copy = byKey.get(tokenOf(keyOf(t, row)));
              if (copy === undefined || rowSignature(copy) !== rowSignature(row)) suspect(t, keyOf(t, row));
            }
          }
          this.#verified += rows.length;
          await yieldToEventLoop();
          await this.#progress('chunk');
          if (rows.length < chunk) break;
          after = keyOf(t, rows.at(-1)!);
        }
      }
    }
    // Every copy on a target against its source row.
    for (const target of this.#details.targets) {
      for (const t of this.#tables) {
        let after: KeyValues | undefined;
        for (;;) {
          this.#checkStop();
          const rows = await scanPage(this.#driver(target), t, after, chunk);
          const copies: Row[] = [];
          for (const row of rows) {
            if (!this.#fromShards.has(target) || (await placeRow(this.#placeFrom, t, row)) !== target) {
              copies.push(row);
            }
          }
          if (copies.length > 0) {
            const truth = await this.#truthOfCopies(t, copies);
            for (const row of copies) {
              const found = truth.get(tokenOf(keyOf(t, row)));
              if (
                found === undefined ||
                found.target !== target ||
                rowSignature(found.row) !== rowSignature(row)
              ) {
                suspect(t, keyOf(t, row));
              }
            }
          }
          this.#verified += rows.length;
          await yieldToEventLoop();
          await this.#progress('chunk');
          if (rows.length < chunk) break;
          after = keyOf(t, rows.at(-1)!);
        }
      }
    }
    // Differences from writes in flight disappear after another catch-up; others persist.
    let remaining: ReshardVerifyCounts = { missing: 0, extra: 0, different: 0 };
    for (let round = 0; round < this.#r.settings.verifyRounds && count > 0; round++) {
      await this.#fenceRound();
      remaining = { missing: 0, extra: 0, different: 0 };
      count = 0;
      for (const [t, keys] of suspects) {
        const list = [...keys.values()];
        keys.clear();
        for (let i = 0; i < list.length; i += APPLY_BATCH) {
          const part = list.slice(i, i + APPLY_BATCH);
          const found = await this.#compareKeys(t, part);
          for (const [key, kind] of found) {
            keys.set(tokenOf(key), key);
            count++;
            remaining = { ...remaining, [kind]: remaining[kind] + 1 };
          }
        }
      }
    }
    this.#details.lastVerify = count === 0 ? undefined : remaining;
    await this.#checkpoint(undefined);
    if (count > 0) {
      throw new StrataError(
        'E_VERIFY',
        `verification of reshard "${this.#name}" found rows that differ between sources and targets`,
        { details: { name: this.#name, ...remaining } },
      );
    }
  }

  /** The keys whose copies disagree with their sources now, with the kind of difference. */
  async #compareKeys(
    t: ReshardTable,
    keys: readonly KeyValues[],
  ): Promise<Array<[KeyValues, keyof ReshardVerifyCounts]>> {
    const truth = await this.#readTruth(t, keys);
    const out: Array<[KeyValues, keyof ReshardVerifyCounts]> = [];
    const seen = new Set<string>();
    const add = (key: KeyValues, kind: keyof ReshardVerifyCounts) => {
      if (seen.has(tokenOf(key))) return;
      seen.add(tokenOf(key));
      out.push([key, kind]);
    };
    for (const target of this.#details.targets) {
      const rows = await selectByKeys(this.#driver(target), t, keys);
      const onTarget = new Map<string, Row>();
      for (const row of rows) {
        if (this.#fromShards.has(target) && (await placeRow(this.#placeFrom, t, row)) === target) continue;
        onTarget.set(tokenOf(keyOf(t, row)), row);
      }
      for (const key of keys) {
        const found = truth.get(tokenOf(key));
        const copy = onTarget.get(tokenOf(key));
        const wanted = found !== undefined && found.target === target && found.source !== target;
        if (wanted && copy === undefined) add(key, 'missing');
        else if (!wanted && copy !== undefined) add(key, 'extra');
        else if (wanted && copy !== undefined && rowSignature(copy) !== rowSignature(found.row)) {
          add(key, 'different');
        }
      }
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // Cutover

  async #cutover(): Promise<void> {
    const mapStore = this.#r.options.mapStore;
    const toVersion = this.#details.toVersion;
    const activeNow = await mapStore.active(this.#name);
    if (activeNow?.version !== toVersion) {
      await this.#startCapture();
      // Close the gap while writes still flow, so the pause only covers the last changes.
      await this.#fenceRound();
      const { cutoverAttempts, cutoverTimeoutMs, settleMs } = this.#r.settings;
      for (let attempt = 1; ; attempt++) {
        this.#checkStop();
        this.#cursors.cutoverAttempts++;
        await this.#checkpoint(undefined);
        const outcome = await this.#switchOnce(cutoverTimeoutMs, settleMs);
        if (outcome === 'switched') break;
        if (attempt >= cutoverAttempts) {
          throw new TimeoutError(`cutover of reshard "${this.#name}"`, cutoverTimeoutMs, {
            details: { name: this.#name, attempts: attempt },
          });
        }
        await this.#fenceRound();
      }
    } else {
      // Activated by a run that died before saving it: the cutover is complete.
      await this.#applier?.stop();
      this.#applier = undefined;
    }
    this.#step = 'cleanup';
    await this.#checkpoint('started');
  }

  /** One attempt: pause, apply the last changes, activate, switch, resume. */
  async #switchOnce(timeoutMs: number, settleMs: number): Promise<'switched' | 'timeout'> {
    const mapStore = this.#r.options.mapStore;
    const router = this.#r.options.router;
    await mapStore.setState(this.#name, 'cutover', {
      reshard: this.#name,
      toVersion: this.#details.toVersion,
    });
    if (settleMs > 0) await sleep(settleMs, { clock: this.#r.clock });
    const started = performance.now();
    await router?.pauseWrites();
    let resume = true;
    let activated = false;
    try {
      await this.#progress('paused');
      try {
        await this.#fenceRound(timeoutMs);
      } catch (err) {
        if (isStrataError(err, 'E_TIMEOUT')) return 'timeout';
        throw err;
      }
      await this.#applier?.stop();
      this.#applier = undefined;
      this.#checkStop();
      await mapStore.activate(this.#name, this.#details.toVersion, { state: 'stable' });
      activated = true;
      const onCutover = this.#r.options.onCutover ?? ((to: ShardStrategy) => router?.setStrategy(to));
      try {
        await onCutover(this.#details.to);
      } catch (err) {
        // The new map is active: resuming under the old routing would write to the wrong shards.
        resume = false;
        throw err;
      }
      return 'switched';
    } finally {
      if (resume) router?.resumeWrites();
      const pauseMs = Math.round((performance.now() - started) * 100) / 100;
      this.#details.pauses.push(pauseMs);
      if (!activated) {
        await mapStore
          .setState(this.#name, 'resharding', {
            reshard: this.#name,
            step: 'cutover',
            toVersion: this.#details.toVersion,
          })
          .catch((err: unknown) => this.#r.onError(err));
      } else {
        await this.#progress('activated', { pauseMs });
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Cleanup and abort

  /** Deletes, chunk by chunk, the rows of `shards` for which `drop` says so; resumable by `cursors`. */
  async #sweep(
    shards: readonly ShardId[],
    cursors: Record<string, ScanCursor>,
    drop: (shard: ShardId, t: ReshardTable, row: Row) => Promise<boolean>,
  ): Promise<void> {
    const { chunk } = this.#r.settings;
    for (const shard of shards) {
      const driver = this.#driver(shard);
      // Children before parents: the tables are copied in the order given (parents first, so
      // foreign keys hold on the targets), and deleted in the reverse order for the same reason.
      for (const t of [...this.#tables].reverse()) {
        const id = `${shard}\u0000${t.table}`;
        const cursor = cursors[id] ?? { after: null, done: false };
        cursors[id] = cursor;
        const columns = [...new Set([...t.primaryKey, t.key])];
        while (!cursor.done) {
          const rows = await scanPage(driver, t, cursor.after ?? undefined, chunk, columns);
          const gone: KeyValues[] = [];
          for (const row of rows) if (await drop(shard, t, row)) gone.push(keyOf(t, row));
          if (gone.length > 0) {
            await driver.transaction((tx) => deleteByKeys(tx, t, gone));
            this.#cursors.cleaned += gone.length;
          }
          if (rows.length > 0) cursor.after = keyOf(t, rows.at(-1)!);
          cursor.done = rows.length < chunk;
          await this.#checkpoint('chunk');
        }
      }
    }
  }

  async #cleanup(): Promise<void> {
    await this.#removeCapture();
    await this.#sweep(
      this.#details.sources.map((s) => s.shard),
      this.#cursors.cleanup,
      async (shard, t, row) => (await placeRow(this.#placeTo, t, row)) !== shard,
    );
  }

  async abort(): Promise<ReshardStatus> {
    this.#step = 'aborting';
    await this.#checkpoint('started');
    await this.#removeCapture();
    await this.#sweep(
      this.#details.targets,
      this.#cursors.abort,
      async (shard, t, row) =>
        !this.#fromShards.has(shard) || (await placeRow(this.#placeFrom, t, row)) !== shard,
    );
    const mapStore = this.#r.options.mapStore;
    const active = await mapStore.active(this.#name);
    if (active !== undefined && active.state !== 'stable') await mapStore.setState(this.#name, 'stable');
    this.#step = 'aborted';
    await this.#checkpoint('finished');
    return toStatus((await this.#r.store.read(this.#name))!);
  }
}

// ---------------------------------------------------------------------------------------------
// The applier: reads the log from a saved offset and applies it, in the background

interface ApplierHooks {
  apply(entries: readonly LogEntry[]): Promise<void>;
  saved(offset: number, count: number): Promise<void>;
  onError(err: unknown): void;
}

const TRANSIENT: ReadonlySet<string> = new Set(['E_CONNECTION', 'E_TIMEOUT', 'E_SERIALIZATION']);

class Applier {
  readonly #log: ChangeLog;
  readonly #fence: string;
  readonly #hooks: ApplierHooks;
  #offset: number;
  #stopping = false;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  /** A wake-up that came while the loop was busy: the next idle returns at once. */
  #woken = false;
  #error: unknown;
  readonly #seen = new Set<string>();
  readonly #waiters = new Set<() => void>();

  constructor(log: ChangeLog, fence: string, offset: number, hooks: ApplierHooks) {
    this.#log = log;
    this.#fence = fence;
    this.#offset = offset;
    this.#hooks = hooks;
  }

  #signal(): void {
    if (this.#wake === undefined) this.#woken = true;
    else this.#wake();
  }

  start(): void {
    const unwatch = this.#log.watch(() => this.#signal());
    this.#loop = this.#run().finally(() => {
      unwatch();
      this.#notify();
    });
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#signal();
    await this.#loop;
  }

  #notify(): void {
    for (const waiter of this.#waiters) waiter();
  }

  /** Resolves once fence entries with all `tokens` were applied; rejects on the loop's failure or after `timeoutMs`. */
  waitFor(tokens: readonly string[], timeoutMs: number, check: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (err?: unknown) => {
        this.#waiters.delete(test);
        if (timer !== undefined) clearTimeout(timer);
        if (err === undefined) resolve();
        else reject(err);
      };
      const test = () => {
        try {
          check();
        } catch (err) {
          done(err);
          return;
        }
        if (tokens.every((t) => this.#seen.has(t))) {
          for (const t of tokens) this.#seen.delete(t);
          done();
        } else if (this.#error !== undefined) done(this.#error);
        else if (this.#loop === undefined || this.#stopping) {
          done(new StrataError('E_CLOSED', 'the reshard applier stopped'));
        }
      };
      this.#waiters.add(test);
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => done(new TimeoutError('catching up to the fence', timeoutMs)), timeoutMs);
        timer.unref();
      }
      // A periodic check also notices an abort or a lost lease while the log is idle.
      const poll = setInterval(() => {
        if (!this.#waiters.has(test)) clearInterval(poll);
        else test();
      }, 250);
      poll.unref();
      test();
    });
  }

  /** Waits up to `ms` for the log to grow; returns at once when woken or stopped meanwhile. */
  async #idle(ms: number): Promise<void> {
    if (this.#stopping || this.#woken) {
      this.#woken = false;
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      timer.unref();
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }

  async #run(): Promise<void> {
    let failures = 0;
    while (!this.#stopping) {
      let entries: LogEntry[];
      try {
        this.#woken = false;
        entries = await this.#log.read(this.#offset, APPLY_BATCH * 2);
        if (entries.length === 0) {
          await this.#idle(100);
          continue;
        }
        await this.#hooks.apply(entries);
        const fences: string[] = [];
        for (const e of entries) {
          const token = e.table === this.#fence ? e.after?.token : undefined;
          if (typeof token === 'string') fences.push(token);
        }
        this.#offset = entries.at(-1)!.offset;
        await this.#hooks.saved(this.#offset, entries.length);
        for (const token of fences) this.#seen.add(token);
        failures = 0;
        this.#notify();
      } catch (err) {
        if (this.#stopping) return;
        if (isStrataError(err) && TRANSIENT.has(err.code) && failures < 10) {
          failures++;
          this.#hooks.onError(err);
          await this.#idle(Math.min(5_000, 50 * 2 ** failures));
          continue;
        }
        this.#error = err;
        return;
      }
    }
  }
}

/**
 * The status of the reshard of shard map `name` recorded in `state` (in `stateTable`, default
 * `strata_reshard`), for dashboards and the CLI; undefined when there is none (or no table yet).
 */
export async function readReshardStatus(
  state: SqlDriver,
  name: string,
  options: { stateTable?: string } = {},
): Promise<ReshardStatus | undefined> {
  if (!isDriver(state)) throw new ConfigError('state', 'must be a SQL driver');
  const table = options.stateTable ?? 'strata_reshard';
  try {
    assertIdentifier(table);
  } catch (err) {
    throw new ConfigError('stateTable', 'must be a SQL identifier', { cause: err });
  }
  try {
    const row = await new ReshardStateStore<Details, Cursors>(state, table, systemClock).read(name);
    return row === undefined ? undefined : toStatus(row);
  } catch (err) {
    // No reshard ever ran against this store: the table does not exist.
    if (isStrataError(err, 'E_QUERY')) return undefined;
    throw err;
  }
}

/**
 * Creates a reshard of the shard map `name` from its active strategy to `to`; nothing runs until
 * `plan()` or `run()`. Validates everything it can at construction and throws `E_CONFIG` naming
 * the option: a shard of either strategy without a driver (`shards`), a bad table or column
 * name (`tables.posts.key`), a router that cannot switch to `to` without `onCutover` (`router`),
 * a time strategy (`to`), PostgreSQL shards without `capture`. Whether each table and column
 * exists on every shard, with that primary key, is checked when the reshard plans (`E_CONFIG`).
 */
export function createReshard(options: ReshardOptions): Reshard {
  return new ReshardImpl(options);
}
