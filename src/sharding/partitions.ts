/**
 * Time partitioning: a table split into one partition per UTC day, month or year, created ahead
 * of time, with old partitions detached, dropped or handed to an archive.
 *
 * On an engine with declarative partitioning (PostgreSQL) the table is a native `PARTITION BY
 * RANGE` parent with a DEFAULT partition; rows whose partition does not exist yet land in the
 * default and `maintain()` moves them out (the approach of pg_partman's `partition_data_proc`).
 * Elsewhere (SQLite) each period is its own table, a view of the table's name reads them all,
 * and writes are routed by `insert` / `tableFor`.
 *
 * Names: partitions are `<table>_p<YYYY>` (years), `<table>_p<YYYY>_<MM>` (months) or
 * `<table>_p<YYYY>_<MM>_<DD>` (days); PostgreSQL's default partition is `<table>_default`; an
 * expired partition that is detached rather than dropped is renamed `<partition>_detached`.
 */
import type { Clock } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ConfigError, isStrataError, StrataError, TimeoutError, ValidationError } from '../core/errors.js';
import {
  configIdentifier,
  quoteIdentifierStandard,
  type Row,
  type SqlDriver,
  type SqlExecutor,
  type SqlFragment,
  sql,
} from '../core/sql.js';
import { type Period, periodOf, ShardKeyError, timeStrategy, validateStrategy } from './strategies.js';
import type { TimeStrategy } from './types.js';

// ---------------------------------------------------------------------------------------------
// Public types

/** The length of one partition. */
export type TimePeriod = TimeStrategy['period'];

/** An expired partition, as handed to a retention callback. */
export interface ExpiredPartition {
  /** The schema (PostgreSQL) or attached database (SQLite) that holds the table. */
  readonly schema: string;
  /** The table holding the partition's rows now: detached, renamed `<partition>_detached`. */
  readonly table: string;
  /** The partition's name while it was part of the table (`posts_p2025_01`). */
  readonly partition: string;
  /** Start of the partition's period, inclusive. */
  readonly from: Date;
  /** End of the partition's period, exclusive. */
  readonly to: Date;
}

/**
 * What retention does with an expired partition: `'drop'` drops it, `'detach'` detaches it and
 * keeps it as the table `<partition>_detached`, and a function receives the detached table (to
 * archive it) and the table is dropped once the function resolves.
 */
export type ExpireAction = 'drop' | 'detach' | ((partition: ExpiredPartition) => Promise<void>);

/** Which partitions expire and what happens to them. */
export interface PartitionRetention {
  /**
   * Periods kept before the current one: a partition expires once its whole period ended at or
   * before the start of the period `keep` periods before the current one (`keep: 12` with months
   * keeps the current month and the 12 before it). A row that arrives late for an expired
   * period is moved into a recreated partition, which expires again in the same run.
   */
  keep: number;
  /** What happens to an expired partition (default `'detach'`, which never deletes data). */
  onExpire?: ExpireAction;
}

/** Options for `createTimePartitioning`. */
export interface TimePartitioningOptions {
  /** The partitioned table (at most 42 characters, so partition names fit in 63). */
  table: string;
  /**
   * The timestamp column rows are placed by: `timestamptz` or `bigint` epoch milliseconds on
   * PostgreSQL, `INTEGER` epoch milliseconds or ISO-8601 `TEXT` on SQLite.
   */
  column: string;
  /** One partition per UTC `'day'`, `'month'` or `'year'`, or a time strategy from `timeStrategy`. */
  period: TimePeriod | TimeStrategy;
  /** Partitions created ahead of the current one (default 3). */
  premake?: number;
  /** Expiry of old partitions (default: none expire). */
  retention?: PartitionRetention;
  /** The schema (PostgreSQL, default `public`) or attached database (SQLite, default `main`). */
  schema?: string;
  /** The source of "now" for premaking and retention (default the system clock). */
  clock?: Pick<Clock, 'now'>;
  /**
   * How long a step of `maintain` waits for its table lock before failing with `E_TIMEOUT`
   * (default 2s), so that maintenance never queues the application behind a long transaction.
   */
  lockTimeout?: Duration;
}

/** An index of every partition (on PostgreSQL, created on the parent and inherited). */
export interface PartitionIndexSpec {
  /** Columns of the index, in order. */
  columns: readonly string[];
  /** A unique index (on PostgreSQL it must include the partition column). */
  unique?: boolean;
}

/** What `migrate` creates the table from. */
export interface TimePartitionDefinition {
  /**
   * Column definitions and table constraints, the text between the parentheses of `CREATE
   * TABLE` (for example `id bigint not null, created_at timestamptz not null, body text`).
   * Trusted SQL: never build it from user input.
   */
  columns: string;
  /** Indexes of every partition (default none). */
  indexes?: readonly PartitionIndexSpec[];
}

/** Options for `maintain`. */
export interface MaintainOptions {
  /** Report what would be done without changing anything (default false). */
  dryRun?: boolean;
}

/** What one `maintain` run did (or, with `dryRun`, would do). */
export interface MaintainReport {
  /** True when nothing was changed. */
  readonly dryRun: boolean;
  /** Partitions created, in period order. */
  readonly created: string[];
  /** Rows moved out of the default partition into their partitions (PostgreSQL). */
  readonly movedFromDefault: number;
  /** Rows left in the default partition: a null, infinite or out-of-range timestamp (PostgreSQL). */
  readonly leftInDefault: number;
  /** Expired partitions detached (kept as `<partition>_detached`, or handed off). */
  readonly detached: string[];
  /** Expired partitions dropped (directly, or after a retention callback). */
  readonly dropped: string[];
  /** Detached tables given to the retention callback, then dropped. */
  readonly handedOff: string[];
}

/** One partition (or the default partition, or a detached table) as `status` reports it. */
export interface PartitionStatus {
  /** Table name of the partition. */
  readonly name: string;
  /** `partition`, the PostgreSQL `default` partition, or a `detached` expired partition. */
  readonly kind: 'partition' | 'default' | 'detached';
  /** Start of its period (undefined for the default partition or a foreign bound). */
  readonly from: Date | undefined;
  /** End of its period, exclusive. */
  readonly to: Date | undefined;
  /** Rows in it: exact, or the planner's estimate with `estimate` (undefined when unknown). */
  readonly rows: number | undefined;
  /** Bytes on disk with indexes (undefined when the engine cannot tell). */
  readonly bytes: number | undefined;
  /** True when retention would expire it on the next `maintain`. */
  readonly expired: boolean;
}

/** Options for `status`. */
export interface StatusOptions {
  /** Use the planner's row estimates instead of counting (PostgreSQL; default false). */
  estimate?: boolean;
}

/** What kind of values the timestamp column holds. */
export type TimeColumnType = 'timestamptz' | 'epoch_ms' | 'iso_text';

/** The result of `insert`: where the row went. */
export interface InsertResult {
  /** The table that holds the row (on PostgreSQL possibly the default partition). */
  readonly table: string;
}

/** A time-partitioned table. See `createTimePartitioning`. */
export interface TimePartitioning {
  /** The time strategy the table is partitioned by. */
  readonly strategy: TimeStrategy;
  /** The partitioned table (on SQLite, the view over the period tables). */
  readonly table: string;
  /** The timestamp column. */
  readonly column: string;
  /** `'native'` declarative partitions (PostgreSQL) or per-period `'tables'` and a view (SQLite). */
  readonly mode: 'native' | 'tables';
  /**
   * Creates the table if it does not exist (PostgreSQL: the parent and its default partition;
   * SQLite: a template table, the view and a record of the settings), then runs `maintain()`
   * and returns its report. Throws `E_CONFIG` naming `column` or `period` when an existing table
   * disagrees with the options, and `E_CONFLICT` when a plain table of that name exists.
   */
  migrate(definition: TimePartitionDefinition | string): Promise<MaintainReport>;
  /**
   * Creates the partitions of the current period and `premake` periods ahead, moves rows out of
   * PostgreSQL's default partition into their partitions (creating those), applies retention,
   * and (SQLite) rebuilds the view. Idempotent; safe to run from several processes at once.
   *
   * PostgreSQL locking: each partition creation, move and detach is its own short transaction
   * that takes an ACCESS EXCLUSIVE lock on the parent table (what `CREATE TABLE ... PARTITION
   * OF`, `DETACH PARTITION` and `DROP TABLE` need anyway), so reads and writes of the table wait
   * until it commits; a move holds it while the moved rows are deleted from the default and
   * inserted again. Waits for the lock are bounded by `lockTimeout` (`E_TIMEOUT`). `DETACH ...
   * CONCURRENTLY` is not usable: PostgreSQL refuses it while a default partition exists.
   *
   * A retention callback that throws fails `maintain`; its table stays detached and is handed
   * to the callback again on the next run.
   */
  maintain(options?: MaintainOptions): Promise<MaintainReport>;
  /** Partitions in period order, then the default partition, then detached tables. `E_NOT_FOUND` before `migrate`. */
  status(options?: StatusOptions): Promise<PartitionStatus[]>;
  /** The name of the partition holding `date` (a Date, epoch ms or ISO-8601 text); `E_SHARD_KEY` when invalid. */
  partitionOf(date: Date | number | string): string;
  /** The period holding `date`: its suffix and bounds; `E_SHARD_KEY` when invalid. */
  periodOf(date: Date | number | string): Period;
  /**
   * The partition of `date`, created when missing (on PostgreSQL with the locking of
   * `maintain`; on SQLite with the view rebuilt). Resolves to its table name.
   */
  tableFor(date: Date | number | string): Promise<string>;
  /**
   * Inserts one row (column name to value; the timestamp as a Date, epoch ms or ISO-8601 text,
   * stored in the column's format) into its partition, creating it on SQLite when missing.
   * `E_SHARD_KEY` for a missing or invalid timestamp.
   */
  insert(row: Row): Promise<InsertResult>;
  /** Inserts rows in one transaction, each into its partition; resolves to the tables written, in row order. */
  insertMany(rows: readonly Row[]): Promise<InsertResult[]>;
}

/** A time-partitioned table found in a store, as `inspectTimePartitioning` describes it. */
export interface TimePartitioningInfo {
  /** The timestamp column. */
  readonly column: string;
  /** What the column holds. */
  readonly columnType: TimeColumnType;
  /** The period, when recorded (SQLite) or visible in partition names (PostgreSQL). */
  readonly period: TimePeriod | undefined;
  /** Native partitions or per-period tables. */
  readonly mode: 'native' | 'tables';
}

// ---------------------------------------------------------------------------------------------
// Entry points

/** Longest table name: `_p2026_01_01_detached` (21 characters) must still fit in 63. */
const MAX_TABLE_LENGTH = 42;
const DEFAULT_PREMAKE = 3;
const MAX_PREMAKE = 1_000;
const MAX_KEEP = 100_000;
/** The SQLite table recording each partitioned table's column and period. */
const SQLITE_META = 'strata_time_partitions';

interface Settings {
  readonly table: string;
  readonly column: string;
  readonly schema: string;
  readonly strategy: TimeStrategy;
  readonly premake: number;
  readonly keep: number | undefined;
  readonly onExpire: ExpireAction;
  readonly clock: Pick<Clock, 'now'>;
  readonly lockTimeoutMs: number;
}

/**
 * A time-partitioned `table` in the store `driver`: native declarative partitions where the
 * dialect has them (PostgreSQL), per-period tables behind a view otherwise (SQLite). Validates
 * the options at once and throws `E_CONFIG` naming the bad one (`table`, `column`, `period`,
 * `premake`, `retention.keep`, `retention.onExpire`, `schema`, `clock`, `lockTimeout`); no
 * statement runs until a method is called.
 */
export function createTimePartitioning(
  driver: SqlDriver,
  options: TimePartitioningOptions,
): TimePartitioning {
  if (typeof driver !== 'object' || driver === null || typeof driver.transaction !== 'function') {
    throw new ConfigError('driver', 'expected a strata SqlDriver');
  }
  const settings = parseOptions(options, driver.dialect.capabilities.declarativePartitioning);
  return driver.dialect.capabilities.declarativePartitioning
    ? new NativePartitioning(driver, settings)
    : new TablePartitioning(driver, settings);
}

/**
 * Looks up how `table` is time-partitioned in `driver`'s store: on PostgreSQL from the partition
 * key and the partitions' names, on SQLite from the settings `migrate` recorded. Resolves to
 * undefined when the table is not time-partitioned (or does not exist).
 */
export async function inspectTimePartitioning(
  driver: SqlDriver,
  options: { table: string; schema?: string },
): Promise<TimePartitioningInfo | undefined> {
  const table = configIdentifier(options.table, 'table');
  const native = driver.dialect.capabilities.declarativePartitioning;
  const schema = configIdentifier(options.schema ?? (native ? 'public' : 'main'), 'schema');
  if (native) {
    const parent = await pgParent(driver, schema, table);
    if (parent.kind !== 'partitioned' || parent.columnType === undefined) return undefined;
    const children = await pgChildren(driver, schema, table);
    const period = children.map((c) => parseSuffix(c.name, table)?.period).find((p) => p !== undefined);
    return Object.freeze({ column: parent.column, columnType: parent.columnType, period, mode: 'native' });
  }
  const meta = await sqliteMeta(driver, schema, table);
  if (meta === undefined) return undefined;
  const columnType = await sqliteColumnType(driver, schema, table, meta.column).catch(() => undefined);
  if (columnType === undefined) return undefined;
  return Object.freeze({ column: meta.column, columnType, period: meta.period, mode: 'tables' });
}

function parseOptions(options: TimePartitioningOptions, native: boolean): Settings {
  if (typeof options !== 'object' || options === null) throw new ConfigError('options', 'must be an object');
  const table = configIdentifier(options.table, 'table');
  if (table.length > MAX_TABLE_LENGTH) {
    throw new ConfigError('table', `must be at most ${MAX_TABLE_LENGTH} characters, so partition names fit`);
  }
  const column = configIdentifier(options.column, 'column');
  const schema = configIdentifier(options.schema ?? (native ? 'public' : 'main'), 'schema');
  let strategy: TimeStrategy;
  if (typeof options.period === 'string' || options.period === undefined) {
    strategy = timeStrategy({ period: options.period as TimePeriod });
  } else {
    const parsed = validateStrategy(options.period, 'period');
    if (parsed.kind !== 'time') throw new ConfigError('period', 'must be a time strategy');
    strategy = parsed;
  }
  const premake = options.premake ?? DEFAULT_PREMAKE;
  if (!Number.isInteger(premake) || premake < 0 || premake > MAX_PREMAKE) {
    throw new ConfigError('premake', `must be an integer from 0 to ${MAX_PREMAKE}`);
  }
  let keep: number | undefined;
  let onExpire: ExpireAction = 'detach';
  if (options.retention !== undefined) {
    const retention = options.retention as unknown;
    if (typeof retention !== 'object' || retention === null) {
      throw new ConfigError('retention', 'must be an object with keep and onExpire');
    }
    const r = retention as PartitionRetention;
    if (!Number.isInteger(r.keep) || r.keep < 0 || r.keep > MAX_KEEP) {
      throw new ConfigError('retention.keep', `must be an integer from 0 to ${MAX_KEEP}`);
    }
    keep = r.keep;
    if (r.onExpire !== undefined) {
      if (r.onExpire !== 'drop' && r.onExpire !== 'detach' && typeof r.onExpire !== 'function') {
        throw new ConfigError('retention.onExpire', 'must be "drop", "detach" or a function');
      }
      onExpire = r.onExpire;
    }
  }
  const clock = options.clock ?? { now: () => Date.now() };
  if (typeof clock !== 'object' || clock === null || typeof clock.now !== 'function') {
    throw new ConfigError('clock', 'must have a now() method');
  }
  const lockTimeoutMs = parseDuration(options.lockTimeout ?? '2s', 'lockTimeout', { allowZero: false });
  return Object.freeze({ table, column, schema, strategy, premake, keep, onExpire, clock, lockTimeoutMs });
}

// ---------------------------------------------------------------------------------------------
// Periods and names

type PeriodDate = Date | number | string;

const SUFFIX = /^p(\d{4})(?:_(\d{2})(?:_(\d{2}))?)?$/;

/** The period and start of a partition named `<table>_p...`, or undefined for other names. */
function parseSuffix(name: string, table: string): { period: TimePeriod; from: number } | undefined {
  if (!name.startsWith(`${table}_`)) return undefined;
  const m = SUFFIX.exec(name.slice(table.length + 1));
  if (m === null) return undefined;
  const y = Number(m[1]);
  const month = m[2] === undefined ? 1 : Number(m[2]);
  const day = m[3] === undefined ? 1 : Number(m[3]);
  const from = utc(y, month - 1, day);
  const d = new Date(from);
  if (y < 1 || d.getUTCFullYear() !== y || d.getUTCMonth() !== month - 1 || d.getUTCDate() !== day) {
    return undefined;
  }
  return { period: m[3] !== undefined ? 'day' : m[2] !== undefined ? 'month' : 'year', from };
}

function utc(year: number, month: number, day: number): number {
  const t = new Date(0);
  t.setUTCFullYear(year, month, day);
  return t.getTime();
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/** An ISO date-time literal PostgreSQL accepts for any year from 1 to 10000. */
function pgTimestampLiteral(ms: number): string {
  const d = new Date(ms);
  return `'${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} 00:00:00+00'`;
}

const DETACHED = '_detached';
const MS_PER_DAY = 86_400_000;
const MIN_MS = utc(1, 0, 1);
const MAX_MS = utc(10_000, 0, 1);

/** The shared logic: options, period arithmetic, retention planning and row conversion. */
abstract class PartitioningBase implements TimePartitioning {
  readonly strategy: TimeStrategy;
  readonly table: string;
  readonly column: string;
  abstract readonly mode: 'native' | 'tables';

  constructor(
    protected readonly driver: SqlDriver,
    protected readonly settings: Settings,
  ) {
    this.strategy = settings.strategy;
    this.table = settings.table;
    this.column = settings.column;
  }

  abstract migrate(definition: TimePartitionDefinition | string): Promise<MaintainReport>;
  abstract maintain(options?: MaintainOptions): Promise<MaintainReport>;
  abstract status(options?: StatusOptions): Promise<PartitionStatus[]>;
  abstract tableFor(date: PeriodDate): Promise<string>;
  abstract insertMany(rows: readonly Row[]): Promise<InsertResult[]>;

  async insert(row: Row): Promise<InsertResult> {
    const [result] = await this.insertMany([row]);
    return result!;
  }

  periodOf(date: PeriodDate): Period {
    try {
      return periodOf(this.strategy, date);
    } catch (err) {
      if (err instanceof ShardKeyError) {
        throw new ShardKeyError(err.problem, { table: this.table, column: this.column }, { cause: err });
      }
      throw err;
    }
  }

  partitionOf(date: PeriodDate): string {
    return `${this.table}_p${this.periodOf(date).name}`;
  }

  protected nameAt(start: number): string {
    return this.partitionOf(start);
  }

  /** Start of the period `n` periods after the one starting at `start` (n may be negative). */
  protected shift(start: number, n: number): number {
    const d = new Date(start);
    const y = d.getUTCFullYear();
    const m = d.getUTCMonth();
    const day = d.getUTCDate();
    const period = this.strategy.period;
    if (period === 'year') return utc(y + n, 0, 1);
    if (period === 'month') return utc(y, m + n, 1);
    return utc(y, m, day + n);
  }

  protected get qualified(): SqlFragment {
    return sql.id(this.settings.schema, this.table);
  }

  protected id(name: string): SqlFragment {
    return sql.id(this.settings.schema, name);
  }

  /** Period starts from the current one through `premake` ahead. */
  protected premakeStarts(): number[] {
    const current = this.periodOf(this.now()).from.getTime();
    const starts: number[] = [];
    for (let i = 0; i <= this.settings.premake; i++) {
      const start = this.shift(current, i);
      if (start >= MAX_MS) break;
      starts.push(start);
    }
    return starts;
  }

  /** Partitions whose period ends at or before this instant are expired (undefined: none expire). */
  protected cutoff(): number | undefined {
    if (this.settings.keep === undefined) return undefined;
    const current = this.periodOf(this.now()).from.getTime();
    return this.shift(current, -this.settings.keep);
  }

  protected now(): number {
    const now = this.settings.clock.now();
    if (!Number.isFinite(now)) throw new ConfigError('clock', 'now() must return epoch milliseconds');
    return now;
  }

  /** Our partitions among `names`: their period start, in period order; throws `E_CONFIG` for another period. */
  protected ownPartitions(names: readonly string[]): Array<{ name: string; from: number; to: number }> {
    const own: Array<{ name: string; from: number; to: number }> = [];
    for (const name of names) {
      const parsed = parseSuffix(name, this.table);
      if (parsed === undefined) continue;
      if (parsed.period !== this.strategy.period) {
        throw new ConfigError(
          'period',
          `existing partitions of table "${this.table}" are per ${parsed.period}, not per ${this.strategy.period}`,
        );
      }
      own.push({ name, from: parsed.from, to: this.shift(parsed.from, 1) });
    }
    return own.sort((a, b) => a.from - b.from);
  }

  /** Detached tables of this table (`<partition>_detached`) with their periods. */
  protected ownDetached(names: readonly string[]): ExpiredPartition[] {
    const out: ExpiredPartition[] = [];
    for (const name of names) {
      if (!name.endsWith(DETACHED)) continue;
      const partition = name.slice(0, -DETACHED.length);
      const parsed = parseSuffix(partition, this.table);
      if (parsed === undefined || parsed.period !== this.strategy.period) continue;
      out.push(
        Object.freeze({
          schema: this.settings.schema,
          table: name,
          partition,
          from: new Date(parsed.from),
          to: new Date(this.shift(parsed.from, 1)),
        }),
      );
    }
    return out.sort((a, b) => a.from.getTime() - b.from.getTime());
  }

  /** Epoch ms of a row's timestamp; `E_SHARD_KEY` naming table and column when missing or invalid. */
  protected rowTime(row: Row): number {
    if (typeof row !== 'object' || row === null || Array.isArray(row)) {
      throw new ValidationError([{ path: [], message: 'a row must be an object of column values' }], {
        subject: `row of table "${this.table}"`,
      });
    }
    const value = row[this.column] as PeriodDate;
    this.periodOf(value);
    return Math.floor(timeOf(value));
  }

  /** A lock wait that ran past `lockTimeout` (SQLSTATE 55P03) as `E_TIMEOUT` naming the table; other errors as they are. */
  protected lockTimeoutError(err: unknown): unknown {
    if (isStrataError(err, 'E_QUERY') && (err as { sqlState?: unknown }).sqlState === '55P03') {
      return new TimeoutError(`waiting for a lock on table "${this.table}"`, this.settings.lockTimeoutMs, {
        cause: err,
        details: { table: this.table },
      });
    }
    return err;
  }

  /** Gives each pending detached table to the retention callback, then drops it; the callback's error stops the run. */
  protected async handOff(
    pending: readonly ExpiredPartition[],
    drop: (table: string) => Promise<void>,
    report: MutableReport,
  ): Promise<void> {
    const onExpire = this.settings.onExpire;
    if (typeof onExpire !== 'function') return;
    for (const item of pending) {
      await onExpire(item);
      await drop(item.table);
      report.handedOff.push(item.table);
      if (!report.dropped.includes(item.partition)) report.dropped.push(item.partition);
    }
  }
}

/** Epoch ms of a Date, epoch-ms number or ISO-8601 text that `periodOf` accepted (UTC unless it names an offset). */
function timeOf(value: PeriodDate): number {
  if (value instanceof Date) return value.getTime();
  if (typeof value === 'number') return value;
  let text = value.replace(' ', 'T');
  if (/T\d{2}:\d{2}/.test(text)) {
    const zone = /(Z|[+-]\d{2}:?\d{2})$/.exec(text);
    if (zone === null) text += 'Z';
    else if (zone[1] !== 'Z' && !zone[1]!.includes(':')) text = `${text.slice(0, -2)}:${text.slice(-2)}`;
  }
  return Date.parse(text);
}

interface MutableReport {
  dryRun: boolean;
  created: string[];
  movedFromDefault: number;
  leftInDefault: number;
  detached: string[];
  dropped: string[];
  handedOff: string[];
}

function emptyReport(dryRun: boolean): MutableReport {
  return {
    dryRun,
    created: [],
    movedFromDefault: 0,
    leftInDefault: 0,
    detached: [],
    dropped: [],
    handedOff: [],
  };
}

function freezeReport(report: MutableReport): MaintainReport {
  return Object.freeze({
    ...report,
    created: Object.freeze([...report.created]) as string[],
    detached: Object.freeze([...report.detached]) as string[],
    dropped: Object.freeze([...report.dropped]) as string[],
    handedOff: Object.freeze([...report.handedOff]) as string[],
  });
}

function parseDefinition(definition: TimePartitionDefinition | string): {
  columns: string;
  indexes: PartitionIndexSpec[];
} {
  const def = typeof definition === 'string' ? { columns: definition } : definition;
  if (typeof def !== 'object' || def === null) {
    throw new ConfigError('definition', 'must be column definitions or { columns, indexes }');
  }
  if (typeof def.columns !== 'string' || def.columns.trim().length === 0) {
    throw new ConfigError('columns', 'must be the column definitions of the table');
  }
  const indexes: PartitionIndexSpec[] = [];
  if (def.indexes !== undefined) {
    if (!Array.isArray(def.indexes)) throw new ConfigError('indexes', 'must be an array');
    def.indexes.forEach((index: PartitionIndexSpec, i: number) => {
      const option = `indexes[${i}]`;
      if (typeof index !== 'object' || index === null || !Array.isArray(index.columns)) {
        throw new ConfigError(option, 'must be { columns, unique? }');
      }
      if (index.columns.length === 0) throw new ConfigError(`${option}.columns`, 'must name a column');
      const columns = index.columns.map((c) => configIdentifier(c, `${option}.columns`));
      indexes.push({ columns, unique: index.unique === true });
    });
  }
  return { columns: def.columns, indexes };
}

function indexName(owner: string, index: PartitionIndexSpec): string {
  const name = `${owner}_${index.columns.join('_')}_${index.unique ? 'key' : 'idx'}`;
  if (name.length <= 63) return name;
  return `${owner.slice(0, 48)}_${fnv(name)}_${index.unique ? 'key' : 'idx'}`;
}

/** An 8-digit hex FNV-1a hash, to shorten generated index names. */
function fnv(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, '0');
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: native declarative partitions

interface PgParent {
  kind: 'none' | 'table' | 'partitioned';
  column: string;
  columnType: 'timestamptz' | 'epoch_ms' | undefined;
}

async function pgParent(db: SqlExecutor, schema: string, table: string): Promise<PgParent> {
  const { rows } = await db.query<{
    kind: string;
    natts: number | null;
    col: string | null;
    type: string | null;
  }>(
    sql`select c.relkind::text as kind, pt.partnatts::int as natts, a.attname::text as col,
          format_type(a.atttypid, a.atttypmod) as type
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        left join pg_partitioned_table pt on pt.partrelid = c.oid and pt.partstrat = 'r'
        left join pg_attribute a on a.attrelid = c.oid and a.attnum = pt.partattrs[0]
        where n.nspname = ${schema} and c.relname = ${table}`,
  );
  const row = rows[0];
  if (row === undefined) return { kind: 'none', column: '', columnType: undefined };
  if (row.kind !== 'p') return { kind: 'table', column: '', columnType: undefined };
  const columnType =
    row.natts === 1 && row.type === 'timestamp with time zone'
      ? 'timestamptz'
      : row.natts === 1 && row.type === 'bigint'
        ? 'epoch_ms'
        : undefined;
  return { kind: 'partitioned', column: row.col ?? '', columnType };
}

interface PgChild {
  name: string;
  oid: number;
  isDefault: boolean;
}

async function pgChildren(db: SqlExecutor, schema: string, table: string): Promise<PgChild[]> {
  const parent = `${quoteIdentifierStandard(schema)}.${quoteIdentifierStandard(table)}`;
  const { rows } = await db.query<{ name: string; oid: number; bound: string }>(
    sql`select c.relname::text as name, c.oid::int8 as oid, pg_get_expr(c.relpartbound, c.oid) as bound
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = to_regclass(${parent}) and not i.inhdetachpending
        order by c.relname`,
  );
  return rows.map((r) => ({ name: r.name, oid: Number(r.oid), isDefault: r.bound === 'DEFAULT' }));
}

/** Names of plain tables in `schema` whose name starts with `prefix`. */
async function pgTablesLike(db: SqlExecutor, schema: string, prefix: string): Promise<Map<string, number>> {
  const { rows } = await db.query<{ name: string; oid: number }>(
    sql`select c.relname::text as name, c.oid::int8 as oid
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = ${schema} and c.relkind = 'r' and not c.relispartition
          and left(c.relname, ${prefix.length}) = ${prefix}`,
  );
  return new Map(rows.map((r) => [r.name, Number(r.oid)]));
}

class NativePartitioning extends PartitioningBase {
  readonly mode = 'native' as const;

  /** The parent, checked against the options: its column type. `E_NOT_FOUND` before `migrate`. */
  async #parent(db: SqlExecutor = this.driver): Promise<'timestamptz' | 'epoch_ms'> {
    const parent = await pgParent(db, this.settings.schema, this.table);
    if (parent.kind === 'none') {
      throw new StrataError(
        'E_NOT_FOUND',
        `table "${this.table}" does not exist in schema "${this.settings.schema}"; run migrate() first`,
        { details: { table: this.table, schema: this.settings.schema } },
      );
    }
    if (parent.kind === 'table') {
      throw new StrataError(
        'E_CONFLICT',
        `table "${this.table}" exists and is not partitioned by range; convert it to a partitioned table first`,
        { details: { table: this.table, schema: this.settings.schema } },
      );
    }
    if (parent.column !== this.column) {
      throw new ConfigError('column', `is not the partition key of table "${this.table}"`);
    }
    if (parent.columnType === undefined) {
      throw new ConfigError('column', 'must be timestamptz or bigint (epoch milliseconds) on PostgreSQL');
    }
    return parent.columnType;
  }

  async migrate(definition: TimePartitionDefinition | string): Promise<MaintainReport> {
    const def = parseDefinition(definition);
    const { schema } = this.settings;
    const indexNames = def.indexes.map((index) => indexName(this.table, index));
    await this.driver.transaction(async (tx) => {
      await this.#serialize(tx);
      const existing = await pgParent(tx, schema, this.table);
      if (existing.kind === 'none') {
        await tx.query(
          sql`create table ${this.qualified} (${sql.raw(def.columns)}) partition by range (${sql.id(this.column)})`,
        );
      }
      await this.#parent(tx);
      const children = await pgChildren(tx, schema, this.table);
      if (!children.some((c) => c.isDefault)) {
        await tx.query(
          sql`create table ${this.id(`${this.table}_default`)} partition of ${this.qualified} default`,
        );
      }
      for (const [i, index] of def.indexes.entries()) {
        await tx.query(
          sql`create ${sql.raw(index.unique ? 'unique ' : '')}index if not exists ${sql.id(indexNames[i]!)}
              on ${this.qualified} (${sql.join(index.columns.map((c) => sql.id(c)))})`,
        );
      }
    });
    return this.maintain();
  }

  /** Serializes maintenance of this table across sessions and bounds lock waits (transaction-scoped). */
  async #serialize(tx: SqlExecutor): Promise<void> {
    await tx.query(sql`select set_config('lock_timeout', ${`${this.settings.lockTimeoutMs}ms`}, true)`);
    await tx.query(
      sql`select pg_advisory_xact_lock(hashtext('strata.partitions'), hashtext(${`${this.settings.schema}.${this.table}`}))`,
    );
  }

  /** The serialization above plus the parent's ACCESS EXCLUSIVE lock, taken first so locks are always ordered. */
  async #lockParent(tx: SqlExecutor): Promise<void> {
    await this.#serialize(tx);
    await tx.query(sql`lock table only ${this.qualified} in access exclusive mode`);
  }

  #bound(ms: number, type: 'timestamptz' | 'epoch_ms'): string {
    return type === 'epoch_ms' ? String(ms) : pgTimestampLiteral(ms);
  }

  #param(ms: number, type: 'timestamptz' | 'epoch_ms'): number | Date {
    return type === 'epoch_ms' ? ms : new Date(ms);
  }

  /** SQL of "the column's time in days since the epoch", for grouping default rows by period. */
  #dayExpr(type: 'timestamptz' | 'epoch_ms'): SqlFragment {
    const col = sql.id(this.column);
    return type === 'epoch_ms'
      ? sql`floor(${col} / 86400000.0)::int8`
      : sql`floor(extract(epoch from ${col}) / 86400)::int8`;
  }

  /** Rows of the default partition grouped by period start, and the rows no period can take. */
  async #defaultRows(
    db: SqlExecutor,
    defaultName: string,
    type: 'timestamptz' | 'epoch_ms',
  ): Promise<{ periods: Map<number, number>; unroutable: number }> {
    const col = sql.id(this.column);
    const lo = this.#param(MIN_MS, type);
    const hi = this.#param(MAX_MS, type);
    const { rows } = await db.query<{ day: number | null; n: number }>(
      sql`select case when ${col} >= ${lo} and ${col} < ${hi} then ${this.#dayExpr(type)} end as day,
            count(*)::int8 as n
          from only ${this.id(defaultName)} group by 1`,
    );
    const periods = new Map<number, number>();
    let unroutable = 0;
    for (const row of rows) {
      if (row.day === null) {
        unroutable += Number(row.n);
        continue;
      }
      const start = this.periodOf(Number(row.day) * MS_PER_DAY).from.getTime();
      periods.set(start, (periods.get(start) ?? 0) + Number(row.n));
    }
    return { periods, unroutable };
  }

  /** Columns that can be written (not generated), in order. */
  async #writableColumns(tx: SqlExecutor): Promise<SqlFragment> {
    const parent = `${quoteIdentifierStandard(this.settings.schema)}.${quoteIdentifierStandard(this.table)}`;
    const { rows } = await tx.query<{ name: string }>(
      sql`select attname::text as name from pg_attribute
          where attrelid = to_regclass(${parent}) and attnum > 0 and not attisdropped and attgenerated = ''
          order by attnum`,
    );
    return sql.join(rows.map((r) => sql.id(r.name)));
  }

  /**
   * Creates the partition starting at `start` unless it exists, first moving the default
   * partition's rows of that period aside (PostgreSQL refuses a partition whose rows sit in the
   * default) and inserting them again through the parent once it exists: one transaction.
   */
  async #ensure(
    start: number,
    type: 'timestamptz' | 'epoch_ms',
  ): Promise<{ created: boolean; moved: number }> {
    const name = this.nameAt(start);
    const end = this.shift(start, 1);
    try {
      return await this.driver.transaction(async (tx) => {
        await this.#lockParent(tx);
        const children = await pgChildren(tx, this.settings.schema, this.table);
        if (children.some((c) => c.name === name)) return { created: false, moved: 0 };
        const standalone = await pgTablesLike(tx, this.settings.schema, name);
        if (standalone.has(name)) {
          throw new StrataError(
            'E_CONFLICT',
            `a table named "${name}" exists and is not a partition of "${this.table}"; rename or drop it`,
            { details: { table: this.table, partition: name } },
          );
        }
        const defaultChild = children.find((c) => c.isDefault);
        const col = sql.id(this.column);
        const lo = this.#param(start, type);
        const hi = this.#param(end, type);
        let moved = 0;
        let columns: SqlFragment | undefined;
        if (defaultChild !== undefined) {
          const def = this.id(defaultChild.name);
          const { rows } = await tx.query<{ found: boolean }>(
            sql`select exists (select 1 from only ${def} where ${col} >= ${lo} and ${col} < ${hi}) as found`,
          );
          if (rows[0]?.found === true) {
            columns = await this.#writableColumns(tx);
            await tx.query(sql`create temp table strata_partition_move (like ${def}) on commit drop`);
            const result = await tx.query(
              sql`with moved as (
                    delete from only ${def} where ${col} >= ${lo} and ${col} < ${hi} returning ${columns})
                  insert into strata_partition_move (${columns}) select ${columns} from moved`,
            );
            moved = result.rowCount;
          }
        }
        await tx.query(
          sql`create table ${this.id(name)} partition of ${this.qualified}
              for values from (${sql.raw(this.#bound(start, type))}) to (${sql.raw(this.#bound(end, type))})`,
        );
        if (moved > 0 && columns !== undefined) {
          await tx.query(
            sql`insert into ${this.qualified} (${columns}) overriding system value
                select ${columns} from strata_partition_move`,
          );
        }
        return { created: true, moved };
      });
    } catch (err) {
      throw this.lockTimeoutError(err);
    }
  }

  async maintain(options: MaintainOptions = {}): Promise<MaintainReport> {
    const dryRun = options.dryRun === true;
    const report = emptyReport(dryRun);
    const { schema } = this.settings;
    const type = await this.#parent();
    const children = await pgChildren(this.driver, schema, this.table);
    const own = this.ownPartitions(children.map((c) => c.name));
    const existing = new Set(own.map((p) => p.from));
    const defaultChild = children.find((c) => c.isDefault);
    const fromDefault =
      defaultChild === undefined
        ? { periods: new Map<number, number>(), unroutable: 0 }
        : await this.#defaultRows(this.driver, defaultChild.name, type);
    report.leftInDefault = fromDefault.unroutable;

    const wanted = new Set<number>([...fromDefault.periods.keys(), ...this.premakeStarts()]);
    for (const start of [...wanted].sort((a, b) => a - b)) {
      if (dryRun) {
        if (!existing.has(start)) report.created.push(this.nameAt(start));
        report.movedFromDefault += fromDefault.periods.get(start) ?? 0;
        continue;
      }
      const { created, moved } = await this.#ensure(start, type);
      if (created) report.created.push(this.nameAt(start));
      report.movedFromDefault += moved;
    }

    const cutoff = this.cutoff();
    if (cutoff !== undefined) {
      const partitions = dryRun
        ? [...own, ...report.created.map((name) => ({ name, from: parseSuffix(name, this.table)!.from }))]
        : this.ownPartitions((await pgChildren(this.driver, schema, this.table)).map((c) => c.name));
      for (const p of partitions.sort((a, b) => a.from - b.from)) {
        const to = this.shift(p.from, 1);
        if (to > cutoff) continue;
        if (!dryRun) await this.#expire(p.name);
        if (this.settings.onExpire === 'drop') report.dropped.push(p.name);
        else report.detached.push(p.name);
      }
    }

    if (typeof this.settings.onExpire === 'function') {
      const tables = await pgTablesLike(this.driver, schema, `${this.table}_p`);
      const pending = this.ownDetached([...tables.keys()]);
      if (dryRun) {
        for (const item of pending) report.handedOff.push(item.table);
        for (const name of report.detached) {
          report.handedOff.push(`${name}${DETACHED}`);
          report.dropped.push(name);
        }
      } else {
        await this.handOff(pending, (t) => this.#dropDetached(t), report);
      }
    }
    return freezeReport(report);
  }

  /** Drops, or detaches and renames, one expired partition, in one transaction. */
  async #expire(name: string): Promise<void> {
    try {
      await this.driver.transaction(async (tx) => {
        await this.#lockParent(tx);
        const children = await pgChildren(tx, this.settings.schema, this.table);
        if (!children.some((c) => c.name === name)) return;
        if (this.settings.onExpire === 'drop') {
          await tx.query(sql`drop table ${this.id(name)}`);
          return;
        }
        const target = `${name}${DETACHED}`;
        if ((await pgTablesLike(tx, this.settings.schema, target)).has(target)) {
          throw new StrataError(
            'E_CONFLICT',
            `cannot detach "${name}": a table named "${target}" already exists; archive or drop it first`,
            { details: { table: this.table, partition: name } },
          );
        }
        await tx.query(sql`alter table ${this.qualified} detach partition ${this.id(name)}`);
        await tx.query(sql`alter table ${this.id(name)} rename to ${sql.id(target)}`);
      });
    } catch (err) {
      throw this.lockTimeoutError(err);
    }
  }

  async #dropDetached(table: string): Promise<void> {
    await this.driver.transaction(async (tx) => {
      await this.#serialize(tx);
      await tx.query(sql`drop table if exists ${this.id(table)}`);
    });
  }

  async status(options: StatusOptions = {}): Promise<PartitionStatus[]> {
    await this.#parent();
    const { schema } = this.settings;
    const children = await pgChildren(this.driver, schema, this.table);
    const own = new Map(this.ownPartitions(children.map((c) => c.name)).map((p) => [p.name, p]));
    const detachedOids = await pgTablesLike(this.driver, schema, `${this.table}_p`);
    const detached = this.ownDetached([...detachedOids.keys()]);
    const cutoff = this.cutoff();
    const out: PartitionStatus[] = [];
    const measure = async (name: string, oid: number) => {
      const size = await this.driver.query<{ bytes: number; est: number }>(
        sql`select pg_total_relation_size(${oid}::oid)::int8 as bytes, reltuples::int8 as est
            from pg_class where oid = ${oid}::oid`,
      );
      let rows: number | undefined;
      if (options.estimate === true) {
        const est = Number(size.rows[0]?.est ?? -1);
        rows = est < 0 ? undefined : est;
      } else {
        const counted = await this.driver.query<{ n: number }>(
          sql`select count(*)::int8 as n from only ${this.id(name)}`,
        );
        rows = Number(counted.rows[0]?.n ?? 0);
      }
      const bytes = size.rows[0] === undefined ? undefined : Number(size.rows[0].bytes);
      return { rows, bytes };
    };
    const partitions = children
      .filter((c) => !c.isDefault)
      .map((c) => ({ child: c, range: own.get(c.name) }))
      .sort(
        (a, b) => (a.range?.from ?? Number.MAX_SAFE_INTEGER) - (b.range?.from ?? Number.MAX_SAFE_INTEGER),
      );
    for (const { child, range } of partitions) {
      const { rows, bytes } = await measure(child.name, child.oid);
      out.push(
        Object.freeze({
          name: child.name,
          kind: 'partition' as const,
          from: range === undefined ? undefined : new Date(range.from),
          to: range === undefined ? undefined : new Date(range.to),
          rows,
          bytes,
          expired: range !== undefined && cutoff !== undefined && range.to <= cutoff,
        }),
      );
    }
    for (const child of children.filter((c) => c.isDefault)) {
      const { rows, bytes } = await measure(child.name, child.oid);
      out.push(
        Object.freeze({
          name: child.name,
          kind: 'default' as const,
          from: undefined,
          to: undefined,
          rows,
          bytes,
          expired: false,
        }),
      );
    }
    for (const item of detached) {
      const { rows, bytes } = await measure(item.table, detachedOids.get(item.table)!);
      out.push(
        Object.freeze({
          name: item.table,
          kind: 'detached' as const,
          from: item.from,
          to: item.to,
          rows,
          bytes,
          expired: true,
        }),
      );
    }
    return out;
  }

  async tableFor(date: PeriodDate): Promise<string> {
    const start = this.periodOf(date).from.getTime();
    const type = await this.#parent();
    await this.#ensure(start, type);
    return this.nameAt(start);
  }

  async insertMany(rows: readonly Row[]): Promise<InsertResult[]> {
    if (!Array.isArray(rows)) throw new ConfigError('rows', 'must be an array of rows');
    const type = await this.#parent();
    const prepared = rows.map((row) => {
      const ms = this.rowTime(row);
      return { ...row, [this.column]: this.#param(ms, type) };
    });
    return this.driver.transaction(async (tx) => {
      const out: InsertResult[] = [];
      for (const row of prepared) {
        const columns = Object.keys(row);
        const { rows: written } = await tx.query<{ part: string }>(
          sql`insert into ${this.qualified} as target (${sql.join(columns.map((c) => sql.id(c)))})
              values (${sql.join(columns.map((c) => row[c]))})
              returning (select c.relname::text from pg_class c where c.oid = target.tableoid) as part`,
        );
        out.push(Object.freeze({ table: written[0]!.part }));
      }
      return out;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// SQLite: a table per period, a view over them

async function sqliteMeta(
  db: SqlExecutor,
  schema: string,
  table: string,
): Promise<{ column: string; period: TimePeriod } | undefined> {
  const { rows: exists } = await db.query(
    sql`select 1 from ${sql.id(schema, 'sqlite_master')} where type = 'table' and name = ${SQLITE_META}`,
  );
  if (exists.length === 0) return undefined;
  const { rows } = await db.query<{ column_name: string; period: string }>(
    sql`select column_name, period from ${sql.id(schema, SQLITE_META)} where table_name = ${table}`,
  );
  const row = rows[0];
  if (row === undefined) return undefined;
  const period =
    row.period === 'day' || row.period === 'month' || row.period === 'year' ? row.period : undefined;
  if (period === undefined) return undefined;
  return { column: row.column_name, period };
}

/** `epoch_ms` for an INTEGER column, `iso_text` for a TEXT one; `E_CONFIG` (column) otherwise. */
async function sqliteColumnType(
  db: SqlExecutor,
  schema: string,
  table: string,
  column: string,
): Promise<'epoch_ms' | 'iso_text'> {
  const { rows } = await db.query<{ name: string; type: string }>(
    sql`select name, type from pragma_table_info(${`${table}_template`}, ${schema})`,
  );
  const col = rows.find((r) => r.name === column);
  if (col === undefined) throw new ConfigError('column', `is not a column of table "${table}"`);
  const declared = col.type.toUpperCase();
  if (declared.includes('INT')) return 'epoch_ms';
  if (declared.includes('TEXT') || declared.includes('CHAR') || declared.includes('CLOB')) return 'iso_text';
  throw new ConfigError('column', 'must be INTEGER (epoch milliseconds) or TEXT (ISO 8601) on SQLite');
}

/** Compound SELECTs are limited to 500 terms by default; the view nests groups of this size. */
const VIEW_GROUP = 250;

class TablePartitioning extends PartitioningBase {
  readonly mode = 'tables' as const;
  #checked: Promise<'epoch_ms' | 'iso_text'> | undefined;

  get #template(): string {
    return `${this.table}_template`;
  }

  /** Checks the recorded settings once; resolves to the column's type. `E_NOT_FOUND` before `migrate`. */
  #ready(db: SqlExecutor = this.driver): Promise<'epoch_ms' | 'iso_text'> {
    this.#checked ??= this.#check(db).catch((err: unknown) => {
      this.#checked = undefined;
      throw err;
    });
    return this.#checked;
  }

  async #check(db: SqlExecutor): Promise<'epoch_ms' | 'iso_text'> {
    const meta = await sqliteMeta(db, this.settings.schema, this.table);
    if (meta === undefined) {
      throw new StrataError(
        'E_NOT_FOUND',
        `table "${this.table}" is not time-partitioned in "${this.settings.schema}"; run migrate() first`,
        { details: { table: this.table, schema: this.settings.schema } },
      );
    }
    if (meta.column !== this.column) {
      throw new ConfigError('column', `differs from the column table "${this.table}" is partitioned by`);
    }
    if (meta.period !== this.strategy.period) {
      throw new ConfigError('period', `table "${this.table}" is partitioned per ${meta.period}`);
    }
    return sqliteColumnType(db, this.settings.schema, this.table, this.column);
  }

  async #names(db: SqlExecutor): Promise<string[]> {
    const { rows } = await db.query<{ name: string }>(
      sql`select name from ${this.id('sqlite_master')} where type = 'table' and substr(name, 1, ${this.table.length + 2}) = ${`${this.table}_p`}`,
    );
    return rows.map((r) => r.name);
  }

  async migrate(definition: TimePartitionDefinition | string): Promise<MaintainReport> {
    const def = parseDefinition(definition);
    const { schema } = this.settings;
    this.#checked = undefined;
    await this.driver.transaction(async (tx) => {
      const { rows: objects } = await tx.query<{ type: string }>(
        sql`select type from ${this.id('sqlite_master')} where name = ${this.table}`,
      );
      const meta = await sqliteMeta(tx, schema, this.table);
      if (objects.some((o) => o.type !== 'view') || (objects.length > 0 && meta === undefined)) {
        throw new StrataError(
          'E_CONFLICT',
          `"${this.table}" already exists in "${schema}" and is not a time-partitioned table`,
          { details: { table: this.table, schema } },
        );
      }
      await tx.query(
        sql`create table if not exists ${this.id(SQLITE_META)} (
              table_name text primary key, column_name text not null, period text not null)`,
      );
      await tx.query(sql`create table if not exists ${this.id(this.#template)} (${sql.raw(def.columns)})`);
      for (const index of def.indexes) {
        await tx.query(
          sql`create ${sql.raw(index.unique ? 'unique ' : '')}index if not exists ${this.id(indexName(this.#template, index))}
              on ${sql.id(this.#template)} (${sql.join(index.columns.map((c) => sql.id(c)))})`,
        );
      }
      if (meta === undefined) {
        await tx.query(
          sql`insert into ${this.id(SQLITE_META)} (table_name, column_name, period)
              values (${this.table}, ${this.column}, ${this.strategy.period})`,
        );
      }
      await this.#check(tx);
      await this.#rebuildView(tx, await this.#names(tx));
    });
    return this.maintain();
  }

  /** Creates the period table `name` like the template, with the template's column indexes. */
  async #createTable(tx: SqlExecutor, name: string): Promise<void> {
    const { rows } = await tx.query<{ sql: string }>(
      sql`select sql from ${this.id('sqlite_master')} where type = 'table' and name = ${this.#template}`,
    );
    const ddl = rows[0]?.sql;
    if (ddl === undefined) {
      throw new StrataError(
        'E_NOT_FOUND',
        `the template table of "${this.table}" is missing; run migrate()`,
        {
          details: { table: this.table },
        },
      );
    }
    // The template's own DDL after its name: the column list and constraints, verbatim.
    await tx.query(sql`create table if not exists ${this.id(name)} ${sql.raw(ddl.slice(ddl.indexOf('(')))}`);
    const { rows: indexes } = await tx.query<{ name: string; unique: number }>(
      sql`select name, "unique" from pragma_index_list(${this.#template}, ${this.settings.schema})
          where origin = 'c' and partial = 0`,
    );
    for (const index of indexes) {
      const { rows: cols } = await tx.query<{ name: string | null }>(
        sql`select name from pragma_index_info(${index.name}, ${this.settings.schema}) order by seqno`,
      );
      if (cols.length === 0 || cols.some((c) => c.name === null)) continue;
      const spec = { columns: cols.map((c) => c.name!), unique: Number(index.unique) === 1 };
      await tx.query(
        sql`create ${sql.raw(spec.unique ? 'unique ' : '')}index if not exists ${this.id(indexName(name, spec))}
            on ${sql.id(name)} (${sql.join(spec.columns.map((c) => sql.id(c)))})`,
      );
    }
  }

  /** Replaces the view by a UNION ALL of the template and the period tables, in period order. */
  async #rebuildView(tx: SqlExecutor, names: readonly string[]): Promise<void> {
    const tables = [this.#template, ...this.ownPartitions(names).map((p) => p.name)];
    const groups: SqlFragment[] = [];
    for (let i = 0; i < tables.length; i += VIEW_GROUP) {
      const terms = tables.slice(i, i + VIEW_GROUP).map((t) => sql`select * from ${sql.id(t)}`);
      groups.push(sql`select * from (${sql.join(terms, ' union all ')})`);
    }
    await tx.query(sql`drop view if exists ${this.qualified}`);
    await tx.query(sql`create view ${this.qualified} as ${sql.join(groups, ' union all ')}`);
  }

  async maintain(options: MaintainOptions = {}): Promise<MaintainReport> {
    const dryRun = options.dryRun === true;
    const report = emptyReport(dryRun);
    const onExpire = this.settings.onExpire;
    await this.#ready();
    const cutoff = this.cutoff();
    const plan = async (tx: SqlExecutor) => {
      const names = await this.#names(tx);
      const own = this.ownPartitions(names);
      const existing = new Set(own.map((p) => p.from));
      const created = this.premakeStarts().filter((s) => !existing.has(s));
      const all = [...own.map((p) => p.from), ...created].sort((a, b) => a - b);
      const expired = cutoff === undefined ? [] : all.filter((s) => this.shift(s, 1) <= cutoff);
      return { names, created, expired };
    };
    if (dryRun) {
      const { names, created, expired } = await plan(this.driver);
      report.created.push(...created.map((s) => this.nameAt(s)));
      for (const s of expired) (onExpire === 'drop' ? report.dropped : report.detached).push(this.nameAt(s));
      if (typeof onExpire === 'function') {
        for (const item of this.ownDetached(names)) report.handedOff.push(item.table);
        for (const name of report.detached) {
          report.handedOff.push(`${name}${DETACHED}`);
          report.dropped.push(name);
        }
      }
      return freezeReport(report);
    }
    await this.driver.transaction(async (tx) => {
      const { names, created, expired } = await plan(tx);
      // The view goes first: a renamed table would otherwise be rewritten into it.
      await tx.query(sql`drop view if exists ${this.qualified}`);
      for (const start of created) {
        const name = this.nameAt(start);
        await this.#createTable(tx, name);
        report.created.push(name);
      }
      const taken = new Set(names);
      for (const start of expired) {
        const name = this.nameAt(start);
        if (onExpire === 'drop') {
          await tx.query(sql`drop table ${this.id(name)}`);
          report.dropped.push(name);
          continue;
        }
        const target = `${name}${DETACHED}`;
        if (taken.has(target)) {
          throw new StrataError(
            'E_CONFLICT',
            `cannot detach "${name}": a table named "${target}" already exists; archive or drop it first`,
            { details: { table: this.table, partition: name } },
          );
        }
        await tx.query(sql`alter table ${this.id(name)} rename to ${sql.id(target)}`);
        report.detached.push(name);
      }
      await this.#rebuildView(tx, await this.#names(tx));
    });
    if (typeof onExpire === 'function') {
      const pending = this.ownDetached(await this.#names(this.driver));
      await this.handOff(
        pending,
        (table) =>
          this.driver.transaction(async (tx) => {
            await tx.query(sql`drop table if exists ${this.id(table)}`);
          }),
        report,
      );
    }
    return freezeReport(report);
  }

  async status(): Promise<PartitionStatus[]> {
    await this.#ready();
    const names = await this.#names(this.driver);
    const cutoff = this.cutoff();
    const measure = async (name: string) => {
      const counted = await this.driver.query<{ n: number }>(sql`select count(*) as n from ${this.id(name)}`);
      let bytes: number | undefined;
      try {
        const { rows } = await this.driver.query<{ bytes: number | null }>(
          sql`select sum(pgsize) as bytes from dbstat(${this.settings.schema})
              where name = ${name} or name in (
                select name from ${this.id('sqlite_master')} where type = 'index' and tbl_name = ${name})`,
        );
        bytes = rows[0]?.bytes === null || rows[0]?.bytes === undefined ? undefined : Number(rows[0].bytes);
      } catch {
        // dbstat is a compile-time option of SQLite; without it the size is unknown.
        bytes = undefined;
      }
      return { rows: Number(counted.rows[0]?.n ?? 0), bytes };
    };
    const out: PartitionStatus[] = [];
    for (const p of this.ownPartitions(names)) {
      const { rows, bytes } = await measure(p.name);
      out.push(
        Object.freeze({
          name: p.name,
          kind: 'partition' as const,
          from: new Date(p.from),
          to: new Date(p.to),
          rows,
          bytes,
          expired: cutoff !== undefined && p.to <= cutoff,
        }),
      );
    }
    for (const item of this.ownDetached(names)) {
      const { rows, bytes } = await measure(item.table);
      out.push(
        Object.freeze({
          name: item.table,
          kind: 'detached' as const,
          from: item.from,
          to: item.to,
          rows,
          bytes,
          expired: true,
        }),
      );
    }
    return out;
  }

  /** The period table of `start`, created (with the view rebuilt) inside `tx` when missing. */
  async #ensure(tx: SqlExecutor, start: number): Promise<string> {
    const name = this.nameAt(start);
    const { rows } = await tx.query(
      sql`select 1 from ${this.id('sqlite_master')} where type = 'table' and name = ${name}`,
    );
    if (rows.length === 0) {
      await tx.query(sql`drop view if exists ${this.qualified}`);
      await this.#createTable(tx, name);
      await this.#rebuildView(tx, await this.#names(tx));
    }
    return name;
  }

  async tableFor(date: PeriodDate): Promise<string> {
    const start = this.periodOf(date).from.getTime();
    await this.#ready();
    return this.driver.transaction((tx) => this.#ensure(tx, start));
  }

  async insertMany(rows: readonly Row[]): Promise<InsertResult[]> {
    if (!Array.isArray(rows)) throw new ConfigError('rows', 'must be an array of rows');
    const type = await this.#ready();
    const prepared = rows.map((row) => {
      const ms = this.rowTime(row);
      const value = type === 'epoch_ms' ? ms : new Date(ms).toISOString();
      return { row: { ...row, [this.column]: value }, start: this.periodOf(ms).from.getTime() };
    });
    return this.driver.transaction(async (tx) => {
      const out: InsertResult[] = [];
      const known = new Map<number, string>();
      for (const { row, start } of prepared) {
        let table = known.get(start);
        if (table === undefined) {
          table = await this.#ensure(tx, start);
          known.set(start, table);
        }
        const columns = Object.keys(row);
        await tx.query(
          sql`insert into ${this.id(table)} (${sql.join(columns.map((c) => sql.id(c)))})
              values (${sql.join(columns.map((c) => row[c]))})`,
        );
        out.push(Object.freeze({ table }));
      }
      return out;
    });
  }
}
