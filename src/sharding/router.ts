/**
 * The shard router: maps keys and rows to shards and their stores, runs statements and
 * transactions on the shard of a key, scatters reads over several shards and merges them (order,
 * limit, aggregates, a partial-result policy), broadcasts to every shard, moves rows whose shard
 * key changes, and gates writes so a reshard can pause them for its cutover.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { withTimeout } from '../core/async.js';
import { type Clock, systemClock } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import {
  ConfigError,
  isStrataError,
  StrataError,
  type StrataErrorOptions,
  TimeoutError,
  ValidationError,
} from '../core/errors.js';
import { fromTypedJson, toTypedJson } from '../core/json.js';
import {
  assertIdentifier,
  configIdentifier,
  type SqlDriver,
  type SqlFragment,
  type SqlTransaction,
  sql,
} from '../core/sql.js';
import { canonicalKey } from './hashing.js';
import {
  assertShardKey,
  compareCodePoints,
  createDirectory,
  placeSync,
  ShardKeyError,
  type ShardKeySource,
  validateStrategy,
} from './strategies.js';
import type {
  OrderBy,
  ScatterAggregates,
  ScatterOptions,
  ScatterResult,
  ShardDirectory,
  ShardFailure,
  ShardHandle,
  ShardId,
  ShardRouter,
  ShardStrategy,
  TablePlacement,
} from './types.js';

/** Options for `createShardRouter`. */
export interface ShardRouterOptions {
  /** A driver per shard id; exactly the shards of `strategy`. The router never closes them. */
  shards: Readonly<Record<ShardId, SqlDriver>>;
  /** How keys are placed (hash, range or directory). */
  strategy: ShardStrategy;
  /** How each table is placed: by a key column, as a reference table, or in a named store. */
  tables?: Readonly<Record<string, TablePlacement>>;
  /** Named stores of vertically partitioned tables (`{ store: 'analytics' }`). */
  stores?: Readonly<Record<string, SqlDriver>>;
  /** The store of the directory table; required with a directory strategy. */
  directory?: SqlDriver;
  /** Default per-shard timeout of `scatter` (default 5s). */
  scatterTimeout?: Duration;
  /**
   * Default per-shard timeout of `broadcast` (default 60s: it also runs DDL). A shard that does
   * not answer in time fails the broadcast with `E_SHARD` naming it; its statement may still finish there.
   */
  broadcastTimeout?: Duration;
  /** The longest a write waits at the write gate, and a pause waits for writes in flight (default 10s). */
  maxWritePause?: Duration;
  /**
   * The table on each shard where `moveRow` records a move before it copies the row, so that
   * `recoverMoves()` can finish a move a crash interrupted (default `strata_row_moves`).
   */
  moveJournal?: string;
  /** The clock of timeouts (default the system clock). */
  clock?: Clock;
}

/**
 * Work on one or more shards failed (`E_SHARD`); `shards` lists them, `failures` says how each
 * failed. The message lists shard ids (configuration), never values.
 */
function rowsOf<R>(result: { rows: R[] }): R[] {
  return result.rows;
}

export class ShardError extends StrataError {
  override readonly name = 'ShardError';
  /** The shards that failed, in shard order. */
  readonly shards: readonly ShardId[];
  /** How each shard failed: its error code and (static) message. */
  readonly failures: readonly ShardFailure[];

  constructor(operation: string, failures: readonly ShardFailure[], options: StrataErrorOptions = {}) {
    const shards = failures.map((f) => f.shard);
    const list = shards.map((s) => `"${s}"`).join(', ');
    super('E_SHARD', `${operation} failed on shard${shards.length === 1 ? '' : 's'} ${list}`, {
      ...options,
      details: { operation, shards, failures, ...(options.details ?? {}) },
    });
    this.shards = shards;
    this.failures = failures;
  }
}

function failureOf(shard: ShardId, err: unknown): ShardFailure {
  if (isStrataError(err)) return { shard, code: err.code, message: err.message };
  return { shard, code: 'E_UNKNOWN', message: 'the shard failed with an unexpected error' };
}

// ---------------------------------------------------------------------------------------------
// Construction checks

type KeyPlacement = { readonly key: string; readonly primaryKey: readonly string[] };
type Placement =
  | ({ readonly kind: 'key' } & KeyPlacement)
  | { readonly kind: 'reference' }
  | { readonly kind: 'store'; readonly store: string };

function isDriver(value: unknown): value is SqlDriver {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as SqlDriver).query === 'function' &&
    typeof (value as SqlDriver).transaction === 'function'
  );
}

function checkDrivers(value: unknown, option: string): Map<string, SqlDriver> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError(option, 'must be an object of name to SQL driver');
  }
  const out = new Map<string, SqlDriver>();
  for (const [name, driver] of Object.entries(value)) {
    if (!isDriver(driver)) throw new ConfigError(`${option}.${name}`, 'must be a SQL driver');
    out.set(name, driver);
  }
  return out;
}

function checkShardsMatch(
  strategy: ShardStrategy,
  drivers: ReadonlyMap<string, SqlDriver>,
  option: string,
): void {
  const missing = strategy.shards.filter((s) => !drivers.has(s));
  if (missing.length > 0) {
    throw new ConfigError(option, `no driver for shard${missing.length === 1 ? '' : 's'} ${quoted(missing)}`);
  }
  const extra = [...drivers.keys()].filter((s) => !strategy.shards.includes(s));
  if (extra.length > 0) {
    throw new ConfigError(
      option,
      `shard${extra.length === 1 ? '' : 's'} ${quoted(extra)} ${extra.length === 1 ? 'is' : 'are'} not in the strategy`,
    );
  }
}

function quoted(names: readonly string[]): string {
  return names.map((n) => `"${n}"`).join(', ');
}

function checkColumn(value: unknown, option: string): string {
  try {
    assertIdentifier(value);
    return value;
  } catch (err) {
    throw new ConfigError(option, 'must be a column name (letters, digits, underscores)', { cause: err });
  }
}

function checkTables(value: unknown, stores: ReadonlyMap<string, SqlDriver>): Map<string, Placement> {
  const out = new Map<string, Placement>();
  if (value === undefined) return out;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError('tables', 'must be an object of table name to placement');
  }
  const entries = Object.entries(value as Record<string, unknown>);
  for (const [table] of entries) {
    try {
      assertIdentifier(table);
    } catch (err) {
      throw new ConfigError('tables', 'table names must be SQL identifiers (letters, digits, underscores)', {
        cause: err,
      });
    }
  }
  for (const [table, raw] of entries) {
    const at = `tables.${table}`;
    if (typeof raw !== 'object' || raw === null) throw new ConfigError(at, 'must be a placement object');
    const p = raw as Record<string, unknown>;
    const kinds = ['key', 'reference', 'store'].filter((k) => p[k] !== undefined);
    if (kinds.length !== 1) throw new ConfigError(at, 'must have exactly one of key, reference, store');
    if (p.key !== undefined) {
      const key = checkColumn(p.key, `${at}.key`);
      const pk = p.primaryKey === undefined ? [key] : p.primaryKey;
      const primaryKey = (typeof pk === 'string' ? [pk] : pk) as unknown;
      if (!Array.isArray(primaryKey) || primaryKey.length === 0) {
        throw new ConfigError(`${at}.primaryKey`, 'must be a column name or a non-empty array of them');
      }
      primaryKey.forEach((c, i) => {
        checkColumn(c, `${at}.primaryKey[${i}]`);
      });
      out.set(table, Object.freeze({ kind: 'key', key, primaryKey: Object.freeze([...primaryKey]) }));
    } else if (p.reference !== undefined) {
      if (p.reference !== true) throw new ConfigError(`${at}.reference`, 'must be true');
      out.set(table, Object.freeze({ kind: 'reference' }));
    } else {
      if (typeof p.store !== 'string' || !stores.has(p.store)) {
        throw new ConfigError(`${at}.store`, 'must name one of the stores');
      }
      out.set(table, Object.freeze({ kind: 'store', store: p.store }));
    }
  }
  for (const [table, raw] of entries) {
    const colocate = (raw as { colocateWith?: unknown }).colocateWith;
    if (colocate === undefined) continue;
    const at = `tables.${table}.colocateWith`;
    if (out.get(table)?.kind !== 'key') throw new ConfigError(at, 'only applies to a table placed by key');
    if (typeof colocate !== 'string' || out.get(colocate)?.kind !== 'key') {
      throw new ConfigError(at, 'must name another table placed by key');
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Merging

/** Order of value kinds when a column mixes them: numbers, strings, dates, bytes, other. */
function kindRank(v: unknown): number {
  const t = typeof v;
  if (t === 'number' || t === 'bigint' || t === 'boolean') return 0;
  if (t === 'string') return 1;
  if (v instanceof Date) return 2;
  if (v instanceof Uint8Array) return 3;
  return 4;
}

/** Compares two non-null values: numbers and bigints by value, strings by code point, dates by time. */
function compareValues(a: unknown, b: unknown): number {
  const ra = kindRank(a);
  const rb = kindRank(b);
  if (ra !== rb) return ra - rb;
  switch (ra) {
    case 0: {
      const x = typeof a === 'boolean' ? Number(a) : (a as number | bigint);
      const y = typeof b === 'boolean' ? Number(b) : (b as number | bigint);
      return x < y ? -1 : x > y ? 1 : 0;
    }
    case 1:
      return compareCodePoints(a as string, b as string);
    case 2:
      return (a as Date).getTime() - (b as Date).getTime();
    case 3:
      return Buffer.compare(a as Uint8Array, b as Uint8Array);
    default:
      return compareCodePoints(String(a), String(b));
  }
}

const DECIMAL = /^\s*([+-]?)(\d*)(?:\.(\d*))?\s*$/;

/**
 * The sign, integer digits (no leading zeros) and fraction digits (as written, so sums keep the
 * engine's scale) of decimal text; undefined when it is not one.
 */
function decimalParts(text: string): { neg: boolean; int: string; frac: string } | undefined {
  const m = DECIMAL.exec(text);
  if (m === null || (m[2] === '' && (m[3] ?? '') === '')) return undefined;
  const int = m[2]!.replace(/^0+/, '');
  const frac = m[3] ?? '';
  return { neg: m[1] === '-' && /[1-9]/.test(int + frac), int, frac };
}

/** Compares two values of a decimal column: decimal text exactly, numbers by value, anything else as `compareValues` does. */
function compareDecimals(a: unknown, b: unknown): number {
  const x =
    typeof a === 'string'
      ? decimalParts(a)
      : typeof a === 'number' || typeof a === 'bigint'
        ? decimalParts(String(a))
        : undefined;
  const y =
    typeof b === 'string'
      ? decimalParts(b)
      : typeof b === 'number' || typeof b === 'bigint'
        ? decimalParts(String(b))
        : undefined;
  if (x === undefined || y === undefined) {
    // Exponent forms (1e+21) and the engine's NaN / Infinity: by value, NaN last as PostgreSQL sorts it.
    const nx = Number(a);
    const ny = Number(b);
    if (Number.isNaN(nx) || Number.isNaN(ny))
      return Number.isNaN(nx) === Number.isNaN(ny) ? compareValues(a, b) : Number.isNaN(nx) ? 1 : -1;
    return nx < ny ? -1 : nx > ny ? 1 : 0;
  }
  if (x.neg !== y.neg) return x.neg ? -1 : 1;
  let c = x.int.length - y.int.length;
  if (c === 0) c = x.int < y.int ? -1 : x.int > y.int ? 1 : 0;
  if (c === 0) {
    const xf = x.frac.replace(/0+$/, '');
    const yf = y.frac.replace(/0+$/, '');
    const width = Math.max(xf.length, yf.length);
    const fx = xf.padEnd(width, '0');
    const fy = yf.padEnd(width, '0');
    c = fx < fy ? -1 : fx > fy ? 1 : 0;
  }
  return x.neg ? -c : c;
}

type Row = Record<string, unknown>;

function rowComparator(orderBy: readonly OrderBy[]): (a: Row, b: Row) => number {
  return (a, b) => {
    for (const { column, desc, decimal } of orderBy) {
      const x = a[column];
      const y = b[column];
      const xNull = x === null || x === undefined;
      const yNull = y === null || y === undefined;
      // Nulls last in both directions.
      if (xNull || yNull) {
        if (xNull && yNull) continue;
        return xNull ? 1 : -1;
      }
      const c = decimal === true ? compareDecimals(x, y) : compareValues(x, y);
      if (c !== 0) return desc === true ? -c : c;
    }
    return 0;
  };
}

function ensureSorted(rows: Row[], compare: (a: Row, b: Row) => number): Row[] {
  for (let i = 1; i < rows.length; i++) {
    if (compare(rows[i - 1]!, rows[i]!) > 0) return [...rows].sort(compare);
  }
  return rows;
}

/** Merges sorted lists (ties keep list order) and stops after `limit` rows. */
function mergeSorted(lists: Row[][], compare: (a: Row, b: Row) => number, limit: number): Row[] {
  const out: Row[] = [];
  const heads = lists.map(() => 0);
  while (out.length < limit) {
    let best = -1;
    for (let i = 0; i < lists.length; i++) {
      if (heads[i]! >= lists[i]!.length) continue;
      if (best < 0 || compare(lists[i]![heads[i]!]!, lists[best]![heads[best]!]!) < 0) best = i;
    }
    if (best < 0) break;
    out.push(lists[best]![heads[best]!++]!);
  }
  return out;
}

/** An exact sum of decimal text (a scaled bigint), returned as decimal text as the engine returns `numeric`. */
class DecimalSum {
  #units = 0n;
  #scale = 0;
  #seen = false;

  add(value: unknown, option: string, column: string): void {
    if (value === null || value === undefined) return;
    const parts = decimalParts(typeof value === 'string' ? value : String(value));
    if (parts === undefined) throw new ConfigError(option, `column "${column}" does not hold decimals`);
    this.#seen = true;
    if (parts.frac.length > this.#scale) {
      this.#units *= 10n ** BigInt(parts.frac.length - this.#scale);
      this.#scale = parts.frac.length;
    }
    const units = BigInt(`${parts.int || '0'}${parts.frac.padEnd(this.#scale, '0')}`);
    this.#units += parts.neg ? -units : units;
  }

  result(): string | null {
    if (!this.#seen) return null;
    const neg = this.#units < 0n;
    const digits = (neg ? -this.#units : this.#units).toString().padStart(this.#scale + 1, '0');
    const int = digits.slice(0, digits.length - this.#scale);
    const frac = digits.slice(digits.length - this.#scale);
    return `${neg ? '-' : ''}${int}${frac === '' ? '' : `.${frac}`}`;
  }
}

/** An exact sum of integers (bigint arithmetic) plus a float part for non-integers. */
class Sum {
  #ints = 0n;
  #floats = 0;
  #isFloat = false;
  #seen = false;

  add(value: unknown, option: string, column: string): void {
    if (value === null || value === undefined) return;
    this.#seen = true;
    if (typeof value === 'bigint') {
      this.#ints += value;
      return;
    }
    if (typeof value === 'string' && /^\s*-?\d+\s*$/.test(value)) {
      this.#ints += BigInt(value.trim());
      return;
    }
    const n = typeof value === 'boolean' ? Number(value) : typeof value === 'string' ? Number(value) : value;
    if (typeof n !== 'number' || Number.isNaN(n)) {
      throw new ConfigError(option, `column "${column}" does not hold numbers`);
    }
    if (Number.isSafeInteger(n)) this.#ints += BigInt(n);
    else {
      this.#floats += n;
      this.#isFloat = true;
    }
  }

  /** The total: null when every value was null, a number when it fits, else a bigint. */
  result(): number | bigint | null {
    if (!this.#seen) return null;
    if (this.#isFloat) return Number(this.#ints) + this.#floats;
    const n = Number(this.#ints);
    return Number.isSafeInteger(n) ? n : this.#ints;
  }
}

function groupToken(row: Row, columns: readonly string[]): string {
  let token = '';
  for (const c of columns) {
    const v = row[c];
    if (v === null || v === undefined) token += 'n;';
    else if (typeof v === 'number' || typeof v === 'bigint') token += `i${String(v)};`;
    else if (typeof v === 'string') token += `s${v.length}:${v};`;
    else if (v instanceof Date) token += `d${v.getTime()};`;
    else if (typeof v === 'boolean') token += `i${Number(v)};`;
    else token += `j${JSON.stringify(v)};`;
  }
  return token;
}

function aggregateRows(lists: Row[][], spec: ScatterAggregates): Row[] {
  const groupBy = spec.groupBy ?? [];
  const sums = [...(spec.count ?? []), ...(spec.sum ?? [])];
  for (const a of spec.avg ?? []) {
    if (!sums.includes(a.sum)) sums.push(a.sum);
    if (!sums.includes(a.count)) sums.push(a.count);
  }
  const counts = new Set([...(spec.count ?? []), ...(spec.avg ?? []).map((a) => a.count)]);
  const decimals = new Set(spec.decimal ?? []);
  const compareMinMax = (c: string, x: unknown, y: unknown) =>
    decimals.has(c) ? compareDecimals(x, y) : compareValues(x, y);
  interface Group {
    readonly keys: Row;
    readonly sums: Map<string, Sum | DecimalSum>;
    readonly min: Map<string, unknown>;
    readonly max: Map<string, unknown>;
  }
  const groups = new Map<string, Group>();
  const newGroup = (keys: Row): Group => ({
    keys,
    sums: new Map(sums.map((c) => [c, decimals.has(c) && !counts.has(c) ? new DecimalSum() : new Sum()])),
    min: new Map(),
    max: new Map(),
  });
  if (groupBy.length === 0) groups.set('', newGroup({}));
  for (const rows of lists) {
    for (const row of rows) {
      const token = groupToken(row, groupBy);
      let group = groups.get(token);
      if (group === undefined) {
        group = newGroup(Object.fromEntries(groupBy.map((c) => [c, row[c]])));
        groups.set(token, group);
      }
      for (const c of sums) {
        group.sums.get(c)!.add(row[c], counts.has(c) ? 'aggregate.count' : 'aggregate.sum', c);
      }
      for (const c of spec.min ?? []) {
        const v = row[c];
        if (v === null || v === undefined) continue;
        const cur = group.min.get(c);
        if (cur === undefined || compareMinMax(c, v, cur) < 0) group.min.set(c, v);
      }
      for (const c of spec.max ?? []) {
        const v = row[c];
        if (v === null || v === undefined) continue;
        const cur = group.max.get(c);
        if (cur === undefined || compareMinMax(c, v, cur) > 0) group.max.set(c, v);
      }
    }
  }
  const out: Row[] = [];
  for (const group of groups.values()) {
    const row: Row = { ...group.keys };
    for (const [c, sum] of group.sums) row[c] = sum.result() ?? (counts.has(c) ? 0 : null);
    for (const c of spec.min ?? []) row[c] = group.min.get(c) ?? null;
    for (const c of spec.max ?? []) row[c] = group.max.get(c) ?? null;
    for (const a of spec.avg ?? []) {
      const total = group.sums.get(a.sum)!.result();
      const n = Number(group.sums.get(a.count)!.result() ?? 0);
      row[a.column] = total === null || n === 0 ? null : Number(total) / n;
    }
    out.push(row);
  }
  return out;
}

function checkColumnList(value: unknown, option: string): readonly string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new ConfigError(option, 'must be an array of column names');
  value.forEach((c, i) => {
    if (typeof c !== 'string' || c.length === 0)
      throw new ConfigError(`${option}[${i}]`, 'must be a column name');
  });
  return value as string[];
}

function checkAggregates(spec: unknown): ScatterAggregates {
  if (typeof spec !== 'object' || spec === null) throw new ConfigError('aggregate', 'must be an object');
  const s = spec as Record<string, unknown>;
  for (const key of ['groupBy', 'count', 'sum', 'min', 'max', 'decimal']) {
    checkColumnList(s[key], `aggregate.${key}`);
  }
  if (s.avg !== undefined) {
    if (!Array.isArray(s.avg)) throw new ConfigError('aggregate.avg', 'must be an array');
    s.avg.forEach((a: unknown, i) => {
      const r = a as Record<string, unknown> | null;
      for (const k of ['column', 'sum', 'count']) {
        if (typeof r?.[k] !== 'string' || (r[k] as string).length === 0) {
          throw new ConfigError(`aggregate.avg[${i}].${k}`, 'must be a column name');
        }
      }
    });
  }
  return spec as ScatterAggregates;
}

// ---------------------------------------------------------------------------------------------
// The write gate

/**
 * Counts writes in flight and holds new ones while paused. A write nested inside another one
 * passes straight through (it is already counted), so a gated helper can call another.
 */
class WriteGate {
  readonly #inside = new AsyncLocalStorage<true>();
  readonly #clock: Clock;
  readonly #maxPauseMs: number;
  #inFlight = 0;
  #paused = false;
  #drained: Array<() => void> = [];
  #held: Array<() => void> = [];

  constructor(clock: Clock, maxPauseMs: number) {
    this.#clock = clock;
    this.#maxPauseMs = maxPauseMs;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#inside.getStore() === true) return fn();
    if (this.#paused) {
      const deadline = this.#clock.now() + this.#maxPauseMs;
      // Re-check after waking: a new pause may have started before this write got to run.
      while (this.#paused) await this.#hold(deadline);
    }
    this.#inFlight++;
    try {
      return await this.#inside.run(true, fn);
    } finally {
      this.#inFlight--;
      if (this.#inFlight === 0) {
        const waiters = this.#drained;
        this.#drained = [];
        for (const w of waiters) w();
      }
    }
  }

  #hold(deadline: number): Promise<void> {
    const wait = Math.max(0, deadline - this.#clock.now());
    return new Promise<void>((resolve, reject) => {
      const release = () => {
        this.#clock.clearTimeout(timer);
        resolve();
      };
      const timer = this.#clock.setTimeout(() => {
        this.#held = this.#held.filter((h) => h !== release);
        reject(new TimeoutError('a write waiting for paused writes to resume', this.#maxPauseMs));
      }, wait);
      this.#held.push(release);
    });
  }

  async pause(): Promise<void> {
    if (this.#inside.getStore() === true) {
      throw new StrataError('E_CONFLICT', 'writes cannot be paused from inside a write');
    }
    this.#paused = true;
    if (this.#inFlight === 0) return;
    const drained = new Promise<void>((resolve) => this.#drained.push(resolve));
    try {
      await withTimeout(drained, this.#maxPauseMs, 'pausing writes (waiting for writes in flight)', {
        clock: this.#clock,
      });
    } catch (err) {
      this.resume();
      throw err;
    }
  }

  resume(): void {
    this.#paused = false;
    const held = this.#held;
    this.#held = [];
    for (const release of held) release();
  }
}

// ---------------------------------------------------------------------------------------------
// The router

const DEFAULT_SCATTER_TIMEOUT = '5s';
const DEFAULT_BROADCAST_TIMEOUT = '60s';
const DEFAULT_MAX_WRITE_PAUSE = '10s';
/** Moves younger than this are left to the process making them. */
const DEFAULT_RECOVER_AFTER = '1m';

class Router implements ShardRouter {
  readonly shards: ReadonlyMap<ShardId, SqlDriver>;
  readonly tables: Readonly<Record<string, TablePlacement>>;
  readonly #placements: ReadonlyMap<string, Placement>;
  readonly #stores: ReadonlyMap<string, SqlDriver>;
  readonly #directoryDriver: SqlDriver | undefined;
  readonly #scatterTimeoutMs: number;
  readonly #broadcastTimeoutMs: number;
  readonly #clock: Clock;
  readonly #gate: WriteGate;
  readonly #moveJournal: string;
  readonly #journalReady = new Set<ShardId>();
  #strategy: ShardStrategy;
  #directory: ShardDirectory | undefined;

  constructor(options: ShardRouterOptions) {
    if (typeof options !== 'object' || options === null)
      throw new ConfigError('options', 'must be an object');
    const strategy = checkRouterStrategy(options.strategy, 'strategy');
    const drivers = checkDrivers(options.shards, 'shards');
    checkShardsMatch(strategy, drivers, 'shards');
    this.shards = new Map(strategy.shards.map((id) => [id, drivers.get(id)!]));
    this.#stores = options.stores === undefined ? new Map() : checkDrivers(options.stores, 'stores');
    this.#placements = checkTables(options.tables, this.#stores);
    this.tables = Object.freeze({ ...(options.tables ?? {}) });
    if (options.directory !== undefined && !isDriver(options.directory)) {
      throw new ConfigError('directory', 'must be a SQL driver');
    }
    this.#directoryDriver = options.directory;
    this.#scatterTimeoutMs = parseDuration(
      options.scatterTimeout ?? DEFAULT_SCATTER_TIMEOUT,
      'scatterTimeout',
      {
        allowZero: false,
      },
    );
    this.#broadcastTimeoutMs = parseDuration(
      options.broadcastTimeout ?? DEFAULT_BROADCAST_TIMEOUT,
      'broadcastTimeout',
      { allowZero: false },
    );
    const maxPauseMs = parseDuration(options.maxWritePause ?? DEFAULT_MAX_WRITE_PAUSE, 'maxWritePause', {
      allowZero: false,
    });
    this.#clock = options.clock ?? systemClock;
    this.#gate = new WriteGate(this.#clock, maxPauseMs);
    this.#moveJournal = configIdentifier(options.moveJournal ?? 'strata_row_moves', 'moveJournal');
    this.#strategy = strategy;
    this.#directory = this.#directoryFor(strategy, 'directory');
  }

  get strategy(): ShardStrategy {
    return this.#strategy;
  }

  get directory(): ShardDirectory | undefined {
    return this.#directory;
  }

  #directoryFor(strategy: ShardStrategy, option: string): ShardDirectory | undefined {
    if (strategy.kind !== 'directory') return undefined;
    if (this.#directoryDriver === undefined) {
      throw new ConfigError(option, 'a directory strategy needs the directory store (option "directory")');
    }
    return createDirectory(strategy, this.#directoryDriver, { clock: this.#clock });
  }

  #place(key: unknown, source?: ShardKeySource): ShardId | Promise<ShardId> {
    const strategy = this.#strategy;
    if (strategy.kind !== 'directory') return placeSync(strategy, key, source);
    try {
      assertShardKey(key, source);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#directory!.lookup(key);
  }

  async shardOf(key: unknown): Promise<ShardId> {
    return this.#place(key);
  }

  shardOfSync(key: unknown): ShardId {
    if (this.#strategy.kind === 'directory') {
      throw new ConfigError('strategy', 'a directory strategy places keys by lookup; use shardOf');
    }
    return placeSync(this.#strategy, key);
  }

  async forKey(key: unknown): Promise<ShardHandle> {
    const id = await this.#place(key);
    return { id, driver: this.shards.get(id)! };
  }

  #placement(table: string): Placement {
    const placement = typeof table === 'string' ? this.#placements.get(table) : undefined;
    if (placement === undefined) {
      let named = false;
      try {
        assertIdentifier(table);
        named = true;
      } catch {}
      throw new ConfigError(
        'table',
        named ? `table "${table}" is not in the router's tables` : "the table is not in the router's tables",
      );
    }
    return placement;
  }

  #keyPlacement(table: string, use: string): { readonly kind: 'key' } & KeyPlacement {
    const placement = this.#placement(table);
    if (placement.kind !== 'key') {
      throw new ConfigError(
        'table',
        placement.kind === 'reference'
          ? `table "${table}" is a reference table on every shard; ${use}`
          : `table "${table}" lives in store "${placement.store}"; use storeOf`,
      );
    }
    return placement;
  }

  async forRow(table: string, row: Record<string, unknown>): Promise<ShardHandle> {
    const placement = this.#placement(table);
    if (placement.kind === 'store')
      return { id: placement.store, driver: this.#stores.get(placement.store)! };
    if (placement.kind === 'reference') {
      throw new ConfigError('table', `table "${table}" is a reference table on every shard; use broadcast`);
    }
    if (typeof row !== 'object' || row === null) {
      throw new ShardKeyError('the row is not an object', { table, column: placement.key });
    }
    const id = await this.#place(row[placement.key], { table, column: placement.key });
    return { id, driver: this.shards.get(id)! };
  }

  /** The driver of `key`: synchronously for hash and range strategies (the hot path), else after the lookup. */
  #driverOf(key: unknown): SqlDriver | Promise<SqlDriver> {
    const strategy = this.#strategy;
    if (strategy.kind !== 'directory') return this.shards.get(placeSync(strategy, key))!;
    return (this.#place(key) as Promise<ShardId>).then((id) => this.shards.get(id)!);
  }

  query<R = Record<string, unknown>>(
    key: unknown,
    statement: SqlFragment | string,
    params?: readonly unknown[],
  ): Promise<R[]> {
    // No async layers on the hot path: a point query costs the placement plus one `then`.
    let driver: SqlDriver | Promise<SqlDriver>;
    try {
      driver = this.#driverOf(key);
    } catch (err) {
      return Promise.reject(err);
    }
    if (driver instanceof Promise) return driver.then((d) => d.query<R>(statement, params)).then(rowsOf);
    return driver.query<R>(statement, params).then(rowsOf);
  }

  async transaction<T>(key: unknown, fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    const driver = await this.#driverOf(key);
    return driver.transaction(fn);
  }

  async groupByShard<K>(keys: readonly K[]): Promise<Map<ShardId, K[]>> {
    if (!Array.isArray(keys)) throw new ConfigError('keys', 'must be an array');
    let ids: ShardId[];
    if (this.#strategy.kind !== 'directory') {
      const strategy = this.#strategy;
      ids = keys.map((k) => placeSync(strategy, k));
    } else {
      for (const k of keys) assertShardKey(k);
      const distinct = new Map<string, Promise<ShardId>>();
      for (const k of keys as unknown as Parameters<typeof canonicalKey>[0][]) {
        const token = canonicalKey(k);
        if (!distinct.has(token)) distinct.set(token, this.#directory!.lookup(k));
      }
      const resolved = new Map<string, ShardId>();
      for (const [token, p] of distinct) resolved.set(token, await p);
      ids = keys.map((k) => resolved.get(canonicalKey(k as never))!);
    }
    const groups = new Map<ShardId, K[]>();
    keys.forEach((k, i) => {
      const id = ids[i]!;
      let group = groups.get(id);
      if (group === undefined) {
        group = [];
        groups.set(id, group);
      }
      group.push(k);
    });
    const ordered = new Map<ShardId, K[]>();
    for (const id of this.shards.keys()) {
      const group = groups.get(id);
      if (group !== undefined) ordered.set(id, group);
    }
    return ordered;
  }

  async broadcast(statement: SqlFragment | string, options: { timeout?: Duration } = {}): Promise<void> {
    if (typeof options !== 'object' || options === null)
      throw new ConfigError('options', 'must be an object');
    const timeoutMs =
      options.timeout === undefined
        ? this.#broadcastTimeoutMs
        : parseDuration(options.timeout, 'timeout', { allowZero: false });
    const entries = [...this.shards];
    const results = await Promise.allSettled(
      entries.map(([id, driver]) =>
        withTimeout(driver.query(statement), timeoutMs, `broadcast on shard "${id}"`, { clock: this.#clock }),
      ),
    );
    const failures: ShardFailure[] = [];
    let cause: unknown;
    results.forEach((r, i) => {
      if (r.status === 'rejected') {
        cause ??= r.reason;
        failures.push(failureOf(entries[i]![0], r.reason));
      }
    });
    if (failures.length > 0) throw new ShardError('broadcast', failures, { cause });
  }

  async scatter<R = Record<string, unknown>>(
    statement: SqlFragment | string,
    options: ScatterOptions = {},
  ): Promise<ScatterResult<R>> {
    const plan = this.#scatterPlan(options);
    const settled = await Promise.allSettled(
      plan.shards.map((id) =>
        withTimeout(this.shards.get(id)!.query<Row>(statement), plan.timeoutMs, `scatter on shard "${id}"`, {
          clock: this.#clock,
        }),
      ),
    );
    const failures: ShardFailure[] = [];
    const answered: ShardId[] = [];
    const lists: Row[][] = [];
    let cause: unknown;
    settled.forEach((r, i) => {
      const id = plan.shards[i]!;
      if (r.status === 'fulfilled') {
        answered.push(id);
        lists.push(r.value.rows);
      } else {
        cause ??= r.reason;
        failures.push(failureOf(id, r.reason));
      }
    });
    if (failures.length > 0 && plan.partial === 'fail') throw new ShardError('scatter', failures, { cause });
    let rows: Row[];
    if (plan.aggregate !== undefined) {
      rows = aggregateRows(lists, plan.aggregate);
      if (plan.orderBy.length > 0) rows.sort(rowComparator(plan.orderBy));
      rows = rows.slice(0, plan.limit);
    } else if (plan.orderBy.length > 0) {
      const compare = rowComparator(plan.orderBy);
      rows = mergeSorted(
        lists.map((l) => ensureSorted(l, compare)),
        compare,
        plan.limit,
      );
    } else {
      rows = lists.flat().slice(0, plan.limit);
    }
    return { rows: rows as R[], failures, answered };
  }

  #scatterPlan(options: ScatterOptions): {
    shards: readonly ShardId[];
    orderBy: readonly OrderBy[];
    limit: number;
    aggregate: ScatterAggregates | undefined;
    timeoutMs: number;
    partial: 'fail' | 'partial';
  } {
    if (typeof options !== 'object' || options === null)
      throw new ConfigError('options', 'must be an object');
    let shards: readonly ShardId[] = [...this.shards.keys()];
    if (options.shards !== undefined) {
      if (!Array.isArray(options.shards) || options.shards.length === 0) {
        throw new ConfigError('shards', 'must be a non-empty array of shard ids');
      }
      const unknown = options.shards.filter((s) => !this.shards.has(s));
      if (unknown.length > 0) throw new ConfigError('shards', 'names a shard the router does not have');
      shards = [...new Set(options.shards)];
    }
    const orderBy = options.orderBy ?? [];
    if (!Array.isArray(orderBy)) throw new ConfigError('orderBy', 'must be an array of { column, desc }');
    orderBy.forEach((o: OrderBy, i) => {
      if (typeof o?.column !== 'string' || o.column.length === 0) {
        throw new ConfigError(`orderBy[${i}].column`, 'must be a column name');
      }
      if (o.decimal !== undefined && typeof o.decimal !== 'boolean') {
        throw new ConfigError(`orderBy[${i}].decimal`, 'must be a boolean');
      }
    });
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    if (limit !== Number.POSITIVE_INFINITY && (!Number.isSafeInteger(limit) || limit < 0)) {
      throw new ConfigError('limit', 'must be a non-negative integer');
    }
    const partial = options.partial ?? 'fail';
    if (partial !== 'fail' && partial !== 'partial')
      throw new ConfigError('partial', 'must be fail or partial');
    return {
      shards,
      orderBy,
      limit,
      aggregate: options.aggregate === undefined ? undefined : checkAggregates(options.aggregate),
      timeoutMs:
        options.timeout === undefined
          ? this.#scatterTimeoutMs
          : parseDuration(options.timeout, 'timeout', { allowZero: false }),
      partial,
    };
  }

  storeOf(table: string): SqlDriver {
    const placement = this.#placement(table);
    if (placement.kind !== 'store') {
      throw new ConfigError(
        'table',
        placement.kind === 'key'
          ? `table "${table}" is sharded by key; use forKey or forRow`
          : `table "${table}" is a reference table on every shard; use broadcast`,
      );
    }
    return this.#stores.get(placement.store)!;
  }

  async moveRow(table: string, oldKey: unknown, newRow: Record<string, unknown>): Promise<void> {
    const placement = this.#keyPlacement(table, 'moveRow needs a table placed by key');
    if (typeof newRow !== 'object' || newRow === null) {
      throw new ShardKeyError('the row is not an object', { table, column: placement.key });
    }
    const columns = Object.keys(newRow).filter((c) => newRow[c] !== undefined);
    for (const c of columns) assertIdentifier(c);
    for (const c of placement.primaryKey) {
      if (c !== placement.key && (newRow[c] === undefined || newRow[c] === null)) {
        throw new ValidationError([{ path: [c], message: 'a primary key column is missing' }], {
          subject: `row of table "${table}"`,
        });
      }
    }
    await this.#gate.run(async () => {
      const source: ShardKeySource = { table, column: placement.key };
      const from = await this.#place(oldKey, source);
      const to = (await this.forRow(table, newRow)).id;
      const id = sql.id(table);
      const where = (keyValue: unknown) =>
        sql.join(
          placement.primaryKey.map((c) => sql`${sql.id(c)} = ${c === placement.key ? keyValue : newRow[c]}`),
          ' and ',
        );
      const oldDriver = this.shards.get(from)!;
      if (from === to) {
        const set = sql.join(columns.map((c) => sql`${sql.id(c)} = ${newRow[c]}`));
        const updated = await oldDriver.query(sql`update ${id} set ${set} where ${where(oldKey)}`);
        if (updated.rowCount === 0) throw notFound(table, from);
        return;
      }
      const newDriver = this.shards.get(to)!;
      const pk = placement.primaryKey.map((c) => (c === placement.key ? oldKey : newRow[c]));
      const move: JournaledMove = {
        table,
        target: to,
        pk: toTypedJson(pk),
        row: toTypedJson(Object.fromEntries(columns.map((c) => [c, newRow[c]]))),
      };
      // 1. On the old shard, with the row checked: the intent, durable before anything moves.
      await this.#journal(oldDriver, from);
      await oldDriver.transaction(async (tx) => {
        const lock = oldDriver.dialect.name === 'postgres' ? sql` for update` : sql``;
        const found = await tx.query(sql`select 1 as found from ${id} where ${where(oldKey)}${lock}`);
        if (found.rows.length === 0) throw notFound(table, from);
        await this.#recordMove(tx, from, move);
      });
      // 2. The copy on the new shard. 3. The old row and the intent, together.
      try {
        await newDriver.query(
          sql`insert into ${id} (${sql.join(columns.map((c) => sql.id(c)))}) values (${sql.join(columns.map((c) => newRow[c]))})`,
        );
      } catch (err) {
        await this.#forgetMove(oldDriver, from, move, err);
        throw err;
      }
      const journal = sql.id(this.#moveJournal);
      const intent = sql`tbl = ${move.table} and pk = ${move.pk}`;
      try {
        await oldDriver.transaction(async (tx) => {
          // Claiming the intent first: if recoverMoves() (another process) finished this move
          // meanwhile, the intent is gone and there is nothing left to do here.
          const claimed = await tx.query(sql`delete from ${journal} where ${intent}`);
          if (claimed.rowCount === 0) return;
          const deleted = await tx.query(sql`delete from ${id} where ${where(oldKey)}`);
          if (deleted.rowCount === 0) throw notFound(table, from);
        });
        return;
      } catch (err) {
        if (!isStrataError(err, 'E_NOT_FOUND')) {
          // The commit may have happened (a connection lost during COMMIT): the intent says.
          let pending: boolean;
          try {
            pending =
              (await oldDriver.query(sql`select 1 as found from ${journal} where ${intent}`)).rows.length > 0;
          } catch (checkErr) {
            throw new StrataError(
              'E_SHARD',
              `moving a row of table "${table}" is in doubt: shard "${from}" did not answer; recoverMoves() completes it`,
              { cause: err, details: { table, from, to, checkError: failureOf(from, checkErr) } },
            );
          }
          if (!pending) return;
        }
        // Not committed: the old row stays where it was, the copy goes.
        try {
          await newDriver.query(sql`delete from ${id} where ${where(newRow[placement.key])}`);
        } catch (undoErr) {
          throw new StrataError(
            'E_SHARD',
            `moving a row of table "${table}" failed and its copy on shard "${to}" could not be removed; recoverMoves() completes the move`,
            { cause: err, details: { table, from, to, undoError: failureOf(to, undoErr) } },
          );
        }
        await this.#forgetMove(oldDriver, from, move, err);
        throw err;
      }
    });
  }

  /** Creates the move journal on a shard once per router. */
  async #journal(driver: SqlDriver, shard: ShardId): Promise<void> {
    if (this.#journalReady.has(shard)) return;
    await driver.exec(
      `create table if not exists ${driver.dialect.quoteIdentifier(this.#moveJournal)} (tbl text not null, pk text not null, target text not null, row_data text not null, created_at bigint not null, primary key (tbl, pk))`,
    );
    this.#journalReady.add(shard);
  }

  async #recordMove(tx: SqlTransaction, from: ShardId, move: JournaledMove): Promise<void> {
    try {
      await tx.query(
        sql`insert into ${sql.id(this.#moveJournal)} (tbl, pk, target, row_data, created_at) values (${move.table}, ${move.pk}, ${move.target}, ${move.row}, ${this.#clock.now()})`,
      );
    } catch (err) {
      if (!isStrataError(err, 'E_CONSTRAINT')) throw err;
      throw new StrataError(
        'E_CONFLICT',
        `a move of this row of table "${move.table}" is already in progress`,
        {
          cause: err,
          details: { table: move.table, shard: from },
        },
      );
    }
  }

  /** Removes an intent whose move failed before the old row was deleted; the old row stays. */
  async #forgetMove(driver: SqlDriver, shard: ShardId, move: JournaledMove, cause: unknown): Promise<void> {
    try {
      await driver.query(
        sql`delete from ${sql.id(this.#moveJournal)} where tbl = ${move.table} and pk = ${move.pk}`,
      );
    } catch (undoErr) {
      throw new StrataError(
        'E_SHARD',
        `moving a row of table "${move.table}" failed and its intent on shard "${shard}" could not be removed; recoverMoves() finishes it`,
        { cause, details: { table: move.table, shard, undoError: failureOf(shard, undoErr) } },
      );
    }
  }

  async recoverMoves(
    options: { olderThan?: Duration } = {},
  ): Promise<{ completed: number; dropped: number }> {
    const olderThanMs = parseDuration(options.olderThan ?? DEFAULT_RECOVER_AFTER, 'olderThan');
    const before = this.#clock.now() - olderThanMs;
    const journal = sql.id(this.#moveJournal);
    let completed = 0;
    let dropped = 0;
    for (const [shard, driver] of this.shards) {
      await this.#journal(driver, shard);
      const intents = await driver.query<{ tbl: string; pk: string; target: string; row_data: string }>(
        sql`select tbl, pk, target, row_data from ${journal} where created_at <= ${before} order by created_at`,
      );
      for (const entry of intents.rows) {
        const placement = this.#placements.get(entry.tbl);
        const targetDriver = this.shards.get(entry.target);
        if (placement?.kind !== 'key' || targetDriver === undefined) {
          throw new ConfigError(
            'tables',
            `a move journaled on shard "${shard}" names a table or shard this router does not place`,
            { details: { table: entry.tbl, shard, target: entry.target } },
          );
        }
        const pk = fromTypedJson(entry.pk) as unknown[];
        const row = fromTypedJson(entry.row_data) as Record<string, unknown>;
        const id = sql.id(entry.tbl);
        const intent = sql`tbl = ${entry.tbl} and pk = ${entry.pk}`;
        const oldWhere = sql.join(
          placement.primaryKey.map((c, i) => sql`${sql.id(c)} = ${pk[i]}`),
          ' and ',
        );
        const newWhere = sql.join(
          placement.primaryKey.map((c) => sql`${sql.id(c)} = ${row[c]}`),
          ' and ',
        );
        const present = await driver.query(sql`select 1 as found from ${id} where ${oldWhere}`);
        if (present.rows.length === 0) {
          // The application deleted the row after the move began: the copy goes too.
          await targetDriver.query(sql`delete from ${id} where ${newWhere}`);
          await driver.query(sql`delete from ${journal} where ${intent}`);
          dropped++;
          continue;
        }
        const columns = Object.keys(row);
        const conflict = sql.join(placement.primaryKey.map((c) => sql.id(c)));
        await targetDriver.query(
          sql`insert into ${id} (${sql.join(columns.map((c) => sql.id(c)))}) values (${sql.join(columns.map((c) => row[c]))}) on conflict (${conflict}) do nothing`,
        );
        const finished = await driver.transaction(async (tx) => {
          // Claimed like moveRow does: whoever deletes the intent finishes the move.
          const claimed = await tx.query(sql`delete from ${journal} where ${intent}`);
          if (claimed.rowCount === 0) return false;
          await tx.query(sql`delete from ${id} where ${oldWhere}`);
          return true;
        });
        if (finished) completed++;
      }
    }
    return { completed, dropped };
  }

  setStrategy(strategy: ShardStrategy): void {
    const next = checkRouterStrategy(strategy, 'strategy');
    checkShardsMatch(next, this.shards, 'strategy');
    const directory = this.#directoryFor(next, 'strategy');
    this.#strategy = next;
    this.#directory = directory;
  }

  pauseWrites(): Promise<void> {
    return this.#gate.pause();
  }

  resumeWrites(): void {
    this.#gate.resume();
  }

  withWrite<T>(fn: () => Promise<T>): Promise<T> {
    if (typeof fn !== 'function') return Promise.reject(new ConfigError('fn', 'must be a function'));
    return this.#gate.run(fn);
  }
}

/** A move recorded on the old shard before the row is copied: what `recoverMoves` needs to finish it. */
interface JournaledMove {
  readonly table: string;
  readonly target: ShardId;
  /** The old row's primary key values, as `toTypedJson` text. */
  readonly pk: string;
  /** The new row, as `toTypedJson` text. */
  readonly row: string;
}

function notFound(table: string, shard: ShardId): StrataError {
  return new StrataError('E_NOT_FOUND', `no row of table "${table}" to move on shard "${shard}"`, {
    details: { table, shard },
  });
}

function checkRouterStrategy(value: unknown, option: string): ShardStrategy {
  if (value === undefined) throw new ConfigError(option, 'is required');
  const strategy = validateStrategy(value, option);
  if (strategy.kind === 'time') {
    throw new ConfigError(
      option,
      'a time strategy places rows in partitions, not shards; use hash, range or directory',
    );
  }
  return strategy;
}

/**
 * Creates a router over `shards` placed by `strategy`. Validates everything at construction and
 * throws `E_CONFIG` naming the option: a strategy shard without a driver or a driver without a
 * strategy shard (`shards`), a table with a bad key column or an unknown store (`tables.posts.key`),
 * a directory strategy without `directory`. The router never closes the drivers it is given.
 */
export function createShardRouter(options: ShardRouterOptions): ShardRouter {
  return new Router(options);
}
