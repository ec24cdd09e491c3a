/**
 * Sharding strategies: plain, deeply frozen, versioned definitions validated when created (hash,
 * range, directory, time), the placement of a key by a hash or range strategy, the period of a
 * timestamp, and the directory store (key -> shard in a SQL table, cached in process).
 *
 * A definition holds only JSON values, so it can be stored and loaded again (`validateStrategy`)
 * and every process routes the same way.
 */

import { createLruMap } from '../backends/memory/memory-lru.js';
import { type Clock, systemClock } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ConfigError, StrataError, type StrataErrorOptions } from '../core/errors.js';
import { configIdentifier, type SqlDriver, sql } from '../core/sql.js';
import { canonicalKey, hashKey, jumpHash } from './hashing.js';
import type {
  DirectoryStrategy,
  HashStrategy,
  KeyRange,
  RangeStrategy,
  ShardDirectory,
  ShardId,
  ShardKey,
  ShardStrategy,
  TimeStrategy,
} from './types.js';

// ---------------------------------------------------------------------------------------------
// Shard key errors and key checks

/** Where a shard key came from, for messages: the table and its key column. */
export interface ShardKeySource {
  /** The table whose row carried the key. */
  readonly table?: string | undefined;
  /** The table's shard key column. */
  readonly column?: string | undefined;
}

/**
 * A shard key is missing, null or of the wrong type (`E_SHARD_KEY`). The message names the
 * problem and, when known, the table and column; never the value.
 */
export class ShardKeyError extends StrataError {
  override readonly name = 'ShardKeyError';
  /** What is wrong with the key, as a static sentence (`the key is null`). */
  readonly problem: string;
  /** The table of the row, when known. */
  readonly table: string | undefined;
  /** The shard key column, when known. */
  readonly column: string | undefined;

  constructor(problem: string, source: ShardKeySource = {}, options: StrataErrorOptions = {}) {
    const where =
      source.table === undefined
        ? ''
        : ` for table "${source.table}"${source.column === undefined ? '' : ` column "${source.column}"`}`;
    super('E_SHARD_KEY', `invalid shard key${where}: ${problem}`, {
      ...options,
      details: {
        problem,
        ...(source.table === undefined ? {} : { table: source.table }),
        ...(source.column === undefined ? {} : { column: source.column }),
        ...(options.details ?? {}),
      },
    });
    this.problem = problem;
    this.table = source.table;
    this.column = source.column;
  }
}

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (value instanceof Date) return 'date';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

function keyError(problem: string, value: unknown, source: ShardKeySource | undefined): ShardKeyError {
  return new ShardKeyError(problem, source, { details: { type: typeName(value) } });
}

function rejectMissing(value: unknown, source: ShardKeySource | undefined): void {
  if (value === undefined) throw keyError('the key is missing', value, source);
  if (value === null) throw keyError('the key is null', value, source);
}

/**
 * Checks a key for hashing or a directory: a string, a safe integer, a bigint or a valid Date.
 * Throws `E_SHARD_KEY` naming the problem (and `source`) otherwise; the value is never echoed.
 */
export function assertShardKey(value: unknown, source?: ShardKeySource): asserts value is ShardKey {
  rejectMissing(value, source);
  switch (typeof value) {
    case 'string':
    case 'bigint':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw keyError('the key is not a finite number', value, source);
      if (!Number.isSafeInteger(value)) {
        throw keyError('a number key must be a safe integer; pass a bigint or a string', value, source);
      }
      return;
    case 'object':
      if (value instanceof Date) {
        if (Number.isNaN(value.getTime())) throw keyError('the key is an invalid date', value, source);
        return;
      }
  }
  throw keyError('the key must be a string, number, bigint or Date', value, source);
}

// ISO-8601 dates and date-times: `2024-05-01`, `2024-05-01T10:00:00Z`, `2024-05-01 10:00:00.123+02:00`.
const ISO_DATE =
  /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/;

/** Epoch ms of an ISO-8601 text (UTC unless it names an offset), or NaN when it is not one. */
function parseIsoDate(text: string): number {
  const m = ISO_DATE.exec(text);
  if (m === null) return Number.NaN;
  const year = Number(m[1]);
  const month = Number(m[2]);
  const day = Number(m[3]);
  if (month < 1 || month > 12 || day < 1 || day > new Date(Date.UTC(year, month, 0)).getUTCDate()) {
    return Number.NaN;
  }
  if (m[4] !== undefined && (Number(m[4]) > 23 || Number(m[5]) > 59 || Number(m[6] ?? 0) > 59)) {
    return Number.NaN;
  }
  let normalized = text.replace(' ', 'T');
  if (m[4] !== undefined && m[7] === undefined) normalized += 'Z';
  return Date.parse(normalized);
}

/** Epoch ms of a Date, epoch-ms number or ISO text; NaN when it is none of them or invalid. */
function toEpochMs(value: unknown): number {
  if (value instanceof Date) return value.getTime();
  if (typeof value === 'number') return Number.isFinite(value) ? value : Number.NaN;
  if (typeof value === 'string') return parseIsoDate(value);
  return Number.NaN;
}

/** Compares strings by Unicode code point (UTF-8 byte order: SQLite BINARY, PostgreSQL `COLLATE "C"`). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // Surrogates (D800-DFFF) encode code points above FFFF: they sort after E000-FFFF.
    if (x >= 0xd800) x += x >= 0xe000 ? -0x800 : 0x2000;
    if (y >= 0xd800) y += y >= 0xe000 ? -0x800 : 0x2000;
    return x - y;
  }
  return a.length - b.length;
}

// ---------------------------------------------------------------------------------------------
// Validation helpers

const SHARD_ID = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,62}$/;
/** Definitions built (or checked) here, so `validateStrategy` does not check them twice. */
const validated = new WeakSet<object>();

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function checkVersion(value: unknown, option: string): number {
  if (value === undefined) return 1;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new ConfigError(option, 'must be a positive integer');
  }
  return value;
}

function checkShardId(value: unknown, option: string): ShardId {
  if (typeof value !== 'string') throw new ConfigError(option, 'a shard id must be a string');
  if (value.length === 0) throw new ConfigError(option, 'a shard id must not be empty');
  if (!SHARD_ID.test(value)) {
    throw new ConfigError(
      option,
      'a shard id has at most 63 letters, digits, underscores, dots, colons or dashes, not starting with a dot, colon or dash',
    );
  }
  return value;
}

function checkShardList(value: unknown, option: string): readonly ShardId[] {
  if (!Array.isArray(value)) throw new ConfigError(option, 'must be an array of shard ids');
  if (value.length === 0) throw new ConfigError(option, 'must name at least one shard');
  const seen = new Set<string>();
  value.forEach((id, i) => {
    const shard = checkShardId(id, `${option}[${i}]`);
    if (seen.has(shard)) throw new ConfigError(`${option}[${i}]`, `duplicate shard id "${shard}"`);
    seen.add(shard);
  });
  return Object.freeze([...(value as ShardId[])]);
}

function seal<T extends object>(definition: T): T {
  Object.freeze(definition);
  validated.add(definition);
  return definition;
}

// ---------------------------------------------------------------------------------------------
// Hash

/** Options for `hashStrategy`. */
export interface HashStrategyOptions {
  /** Shards in bucket order; add a shard by appending it, so only keys moving to it change shard. */
  shards: readonly ShardId[];
  /** Hash seed, an unsigned 32-bit integer (default 0). */
  seed?: number;
  /** Version of the definition, a positive integer (default 1). */
  version?: number;
}

function buildHash(options: unknown, prefix: string): HashStrategy {
  if (!isRecord(options)) throw new ConfigError(prefix || 'options', 'must be an object');
  const seed = options.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new ConfigError(`${prefix}seed`, 'must be an integer from 0 to 2^32 - 1');
  }
  return seal({
    kind: 'hash',
    version: checkVersion(options.version, `${prefix}version`),
    shards: checkShardList(options.shards, `${prefix}shards`),
    seed,
  });
}

/**
 * A hash strategy: a key's shard is the jump consistent hash of its MurmurHash3 over `shards`,
 * so growing from N to N + 1 shards moves about 1/(N + 1) of the keys, all to the new shard.
 * Returns a frozen definition; throws `E_CONFIG` naming the option (`shards[2]`, `seed`) when invalid.
 */
export function hashStrategy(options: HashStrategyOptions): HashStrategy {
  return buildHash(options, '');
}

// ---------------------------------------------------------------------------------------------
// Range

/** A bound of a range as given: a number, a string, or for dates a Date, ISO text or epoch ms. */
export type RangeBound = number | string | Date;

/** One range as given to `rangeStrategy`: keys from `from` (inclusive) to `to` (exclusive). */
export interface RangeInput {
  /** The shard that holds the range. */
  readonly shard: ShardId;
  /** Lower bound, inclusive; omitted on the first range. */
  readonly from?: RangeBound;
  /** Upper bound, exclusive; omitted on the last range. */
  readonly to?: RangeBound;
}

/** Options for `rangeStrategy`. */
export interface RangeStrategyOptions {
  /** What keys and bounds are: numbers (and bigints), strings (code point order), or dates. */
  keyType: 'number' | 'string' | 'date';
  /** Contiguous ranges in ascending order; the first has no `from`, the last no `to`. */
  ranges: readonly RangeInput[];
  /** Version of the definition, a positive integer (default 1). */
  version?: number;
}

type KeyType = RangeStrategy['keyType'];

/** A bound in comparable form: numbers for number and date ranges, strings for string ranges. */
function boundValue(value: unknown, keyType: KeyType, option: string): number | string {
  if (keyType === 'number') {
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw new ConfigError(option, 'must be a finite number in a number range');
    }
    return value;
  }
  if (keyType === 'string') {
    if (typeof value !== 'string') throw new ConfigError(option, 'must be a string in a string range');
    return value;
  }
  const ms = toEpochMs(value);
  if (Number.isNaN(ms) || Number.isNaN(new Date(ms).getTime())) {
    throw new ConfigError(
      option,
      'must be a valid Date, ISO-8601 text or epoch milliseconds in a date range',
    );
  }
  return ms;
}

function compareBounds(a: number | string, b: number | string): number {
  return typeof a === 'string' ? compareCodePoints(a, b as string) : a - (b as number);
}

function buildRange(options: unknown, prefix: string): RangeStrategy {
  if (!isRecord(options)) throw new ConfigError(prefix || 'options', 'must be an object');
  const keyType = options.keyType;
  if (keyType !== 'number' && keyType !== 'string' && keyType !== 'date') {
    throw new ConfigError(`${prefix}keyType`, 'must be one of number, string, date');
  }
  const version = checkVersion(options.version, `${prefix}version`);
  const input = options.ranges;
  if (!Array.isArray(input)) throw new ConfigError(`${prefix}ranges`, 'must be an array of ranges');
  if (input.length === 0) throw new ConfigError(`${prefix}ranges`, 'must hold at least one range');
  const ranges: KeyRange[] = [];
  const shards: ShardId[] = [];
  let previousTo: number | string | undefined;
  input.forEach((raw, i) => {
    const at = `${prefix}ranges[${i}]`;
    if (!isRecord(raw)) throw new ConfigError(at, 'must be an object with shard, from and to');
    const shard = checkShardId(raw.shard, `${at}.shard`);
    const first = i === 0;
    const last = i === input.length - 1;
    let from: number | string | undefined;
    let to: number | string | undefined;
    if (first) {
      if (raw.from !== undefined) {
        throw new ConfigError(`${at}.from`, 'the first range must be open at the start (no from)');
      }
    } else {
      if (raw.from === undefined) {
        throw new ConfigError(`${at}.from`, 'is required on every range but the first');
      }
      from = boundValue(raw.from, keyType, `${at}.from`);
      const order = compareBounds(from, previousTo!);
      if (order > 0) throw new ConfigError(`${at}.from`, 'leaves a hole after the previous range');
      if (order < 0) {
        const prevFrom = i > 1 ? boundValue(input[i - 1].from, keyType, `${at}.from`) : undefined;
        throw new ConfigError(
          `${at}.from`,
          prevFrom !== undefined && compareBounds(from, prevFrom) < 0
            ? 'ranges are not in ascending order'
            : 'overlaps the previous range',
        );
      }
    }
    if (last) {
      if (raw.to !== undefined) {
        throw new ConfigError(`${at}.to`, 'the last range must be open at the end (no to)');
      }
    } else {
      if (raw.to === undefined) throw new ConfigError(`${at}.to`, 'is required on every range but the last');
      to = boundValue(raw.to, keyType, `${at}.to`);
      if (from !== undefined && compareBounds(to, from) <= 0) {
        throw new ConfigError(`${at}.to`, 'must be greater than from');
      }
    }
    previousTo = to;
    const stored = (b: number | string | undefined) =>
      b === undefined || keyType !== 'date' ? b : new Date(b as number).toISOString();
    const range: KeyRange = Object.freeze({
      shard,
      ...(from === undefined ? {} : { from: stored(from)! }),
      ...(to === undefined ? {} : { to: stored(to)! }),
    });
    ranges.push(range);
    if (!shards.includes(shard)) shards.push(shard);
  });
  return seal({
    kind: 'range',
    version,
    keyType,
    ranges: Object.freeze(ranges),
    shards: Object.freeze(shards),
  });
}

/**
 * A range strategy: contiguous ranges of numbers, strings (code point order) or dates, open at
 * both ends, each on a shard (a shard may hold several ranges). Date bounds are stored as ISO
 * text. Returns a frozen definition; throws `E_CONFIG` naming the exact option
 * (`ranges[2].from`) for a hole, an overlap, unsorted ranges, a bound of the wrong type or a
 * missing open end.
 */
export function rangeStrategy(options: RangeStrategyOptions): RangeStrategy {
  return buildRange(options, '');
}

/** Upper bounds in comparable form, one per range but the last. */
const compiledRanges = new WeakMap<RangeStrategy, readonly (number | string)[]>();

function upperBounds(strategy: RangeStrategy): readonly (number | string)[] {
  let uppers = compiledRanges.get(strategy);
  if (uppers === undefined) {
    uppers = strategy.ranges
      .slice(0, -1)
      .map((r) => (strategy.keyType === 'date' ? Date.parse(r.to as string) : r.to!));
    compiledRanges.set(strategy, uppers);
  }
  return uppers;
}

function rangeKey(
  strategy: RangeStrategy,
  key: unknown,
  source: ShardKeySource | undefined,
): number | string | bigint {
  rejectMissing(key, source);
  if (strategy.keyType === 'number') {
    if (typeof key === 'bigint') return key;
    if (typeof key !== 'number') throw keyError('a number range needs a number or bigint key', key, source);
    if (!Number.isFinite(key)) throw keyError('the key is not a finite number', key, source);
    return key;
  }
  if (strategy.keyType === 'string') {
    if (typeof key !== 'string') throw keyError('a string range needs a string key', key, source);
    return key;
  }
  if (!(key instanceof Date) && typeof key !== 'number' && typeof key !== 'string') {
    throw keyError('a date range needs a Date, epoch milliseconds or ISO-8601 text', key, source);
  }
  const ms = toEpochMs(key);
  if (Number.isNaN(ms)) throw keyError('the key is an invalid date', key, source);
  return ms;
}

function placeInRange(strategy: RangeStrategy, key: unknown, source: ShardKeySource | undefined): ShardId {
  const k = rangeKey(strategy, key, source);
  const uppers = upperBounds(strategy);
  let lo = 0;
  let hi = uppers.length;
  // The first range whose upper bound is above the key; the last range when none is.
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const below =
      typeof k === 'string' ? compareCodePoints(k, uppers[mid] as string) < 0 : k < (uppers[mid] as number);
    if (below) hi = mid;
    else lo = mid + 1;
  }
  return strategy.ranges[lo]!.shard;
}

// ---------------------------------------------------------------------------------------------
// Placement

/**
 * The shard of `key` under a hash or range strategy, without I/O. Throws `E_SHARD_KEY` for an
 * undefined, null, NaN, invalid-date or wrong-typed key (naming `source` when given), and
 * `E_CONFIG` for a directory strategy (its placement needs a lookup: `createDirectory`).
 */
export function placeSync(
  strategy: HashStrategy | RangeStrategy | ShardStrategy,
  key: unknown,
  source?: ShardKeySource,
): ShardId {
  if (strategy.kind === 'hash') {
    assertShardKey(key, source);
    return strategy.shards[jumpHash(hashKey(key, strategy.seed), strategy.shards.length)]!;
  }
  if (strategy.kind === 'range') return placeInRange(strategy, key, source);
  throw new ConfigError('strategy', 'a directory strategy places keys by lookup; use createDirectory');
}

// ---------------------------------------------------------------------------------------------
// Time

/** Options for `timeStrategy`. */
export interface TimeStrategyOptions {
  /** The length of a period: one UTC day, month or year. */
  period: 'day' | 'month' | 'year';
  /** Version of the definition, a positive integer (default 1). */
  version?: number;
}

function buildTime(options: unknown, prefix: string): TimeStrategy {
  if (!isRecord(options)) throw new ConfigError(prefix || 'options', 'must be an object');
  const period = options.period;
  if (period !== 'day' && period !== 'month' && period !== 'year') {
    throw new ConfigError(`${prefix}period`, 'must be one of day, month, year');
  }
  if (options.zone !== undefined && options.zone !== 'UTC') {
    throw new ConfigError(`${prefix}zone`, 'only UTC is supported');
  }
  return seal({
    kind: 'time',
    version: checkVersion(options.version, `${prefix}version`),
    period,
    zone: 'UTC',
  });
}

/**
 * A time strategy: timestamps fall into UTC days, months or years (time partitions). Returns a
 * frozen definition; throws `E_CONFIG` naming `period` or `version` when invalid.
 */
export function timeStrategy(options: TimeStrategyOptions): TimeStrategy {
  return buildTime(options, '');
}

/** A period of a time strategy: its name (`2024_05`, `2024_05_01`, `2024`) and its bounds. */
export interface Period {
  /** `YYYY` for years, `YYYY_MM` for months, `YYYY_MM_DD` for days: a safe suffix for table names. */
  readonly name: string;
  /** Start of the period, inclusive. */
  readonly from: Date;
  /** End of the period, exclusive (the start of the next one). */
  readonly to: Date;
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/**
 * The period of `strategy` holding `date` (a Date, epoch ms or ISO-8601 text). Throws
 * `E_SHARD_KEY` for a missing or invalid date, or a year outside 1 to 9999.
 */
export function periodOf(strategy: TimeStrategy, date: unknown): Period {
  if (strategy.kind !== 'time') throw new ConfigError('strategy', 'periodOf needs a time strategy');
  rejectMissing(date, undefined);
  if (!(date instanceof Date) && typeof date !== 'number' && typeof date !== 'string') {
    throw keyError('a time period needs a Date, epoch milliseconds or ISO-8601 text', date, undefined);
  }
  const ms = toEpochMs(date);
  if (Number.isNaN(ms) || Number.isNaN(new Date(ms).getTime())) {
    throw keyError('the key is an invalid date', date, undefined);
  }
  const d = new Date(ms);
  const y = d.getUTCFullYear();
  if (y < 1 || y > 9999) throw keyError('the year must be from 1 to 9999', date, undefined);
  const m = d.getUTCMonth();
  const day = d.getUTCDate();
  const utc = (year: number, month: number, dd: number) => {
    const t = new Date(0);
    t.setUTCFullYear(year, month, dd);
    return t;
  };
  if (strategy.period === 'year') return { name: pad(y, 4), from: utc(y, 0, 1), to: utc(y + 1, 0, 1) };
  if (strategy.period === 'month') {
    return { name: `${pad(y, 4)}_${pad(m + 1)}`, from: utc(y, m, 1), to: utc(y, m + 1, 1) };
  }
  return { name: `${pad(y, 4)}_${pad(m + 1)}_${pad(day)}`, from: utc(y, m, day), to: utc(y, m, day + 1) };
}

// ---------------------------------------------------------------------------------------------
// Directory

/** Options for `directoryStrategy`. */
export interface DirectoryStrategyOptions {
  /** Every shard a key may be assigned to. */
  shards: readonly ShardId[];
  /** The directory table (default `strata_shard_directory`). */
  table?: string;
  /** Where keys without an entry go (default: the first of `shards`); its shards must be among `shards`. */
  fallback?: HashStrategy | RangeStrategy;
  /** How long a looked-up placement is cached in process (default 1m; 0 disables the cache). */
  cacheTtl?: Duration;
  /** Version of the definition, a positive integer (default 1). */
  version?: number;
}

function buildDirectory(options: unknown, prefix: string, ttlFromDefinition: boolean): DirectoryStrategy {
  if (!isRecord(options)) throw new ConfigError(prefix || 'options', 'must be an object');
  const version = checkVersion(options.version, `${prefix}version`);
  const shards = checkShardList(options.shards, `${prefix}shards`);
  const table = configIdentifier(options.table ?? 'strata_shard_directory', `${prefix}table`);
  let fallback: HashStrategy | RangeStrategy | undefined;
  if (options.fallback !== undefined) {
    const raw = options.fallback;
    const at = `${prefix}fallback`;
    if (!isRecord(raw) || (raw.kind !== 'hash' && raw.kind !== 'range')) {
      throw new ConfigError(at, 'must be a hash or range strategy');
    }
    fallback = validated.has(raw)
      ? (raw as unknown as HashStrategy | RangeStrategy)
      : raw.kind === 'hash'
        ? buildHash(raw, `${at}.`)
        : buildRange(raw, `${at}.`);
    for (const shard of fallback.shards) {
      if (!shards.includes(shard)) {
        throw new ConfigError(at, `places keys on shard "${shard}", which is not in shards`);
      }
    }
  }
  const cacheTtlMs = ttlFromDefinition
    ? parseDuration((options.cacheTtlMs ?? 60_000) as Duration, `${prefix}cacheTtlMs`)
    : parseDuration((options.cacheTtl ?? '1m') as Duration, `${prefix}cacheTtl`);
  return seal({ kind: 'directory', version, table, fallback, shards, cacheTtlMs });
}

/**
 * A directory strategy: keys (tenants) are placed by an entry in a SQL table, kept with
 * `createDirectory`; keys without an entry go to `fallback`, else the first shard. Returns a
 * frozen definition; throws `E_CONFIG` naming the option when invalid.
 */
export function directoryStrategy(options: DirectoryStrategyOptions): DirectoryStrategy {
  return buildDirectory(options, '', false);
}

/**
 * Checks a stored or hand-written definition and returns it frozen (a definition made by this
 * module is returned as is). Throws `E_CONFIG` naming the option under `option` (default
 * `strategy`), for example `strategy.ranges[1].from`.
 */
export function validateStrategy(value: unknown, option = 'strategy'): ShardStrategy | TimeStrategy {
  if (isRecord(value) && validated.has(value)) return value as unknown as ShardStrategy | TimeStrategy;
  if (!isRecord(value)) throw new ConfigError(option, 'must be a strategy definition');
  const prefix = `${option}.`;
  switch (value.kind) {
    case 'hash':
      return buildHash(value, prefix);
    case 'range':
      return buildRange(value, prefix);
    case 'directory':
      return buildDirectory(value, prefix, true);
    case 'time':
      return buildTime(value, prefix);
    default:
      throw new ConfigError(`${prefix}kind`, 'must be one of hash, range, directory, time');
  }
}

/** Options for `createDirectory`. */
export interface DirectoryOptions {
  /** The clock of the lookup cache (default the system clock). */
  clock?: Clock;
  /** Most cached placements (default 10,000). */
  cacheSize?: number;
}

/**
 * The directory of `strategy` in the store `driver` (SQLite or PostgreSQL): `migrate` creates
 * its table, `assign` and `unassign` change entries, `lookup` places a key (cached in process for
 * `cacheTtlMs`, so other processes see a change within that time). Throws `E_CONFIG` when
 * `strategy` is not a directory strategy or an option is invalid.
 */
export function createDirectory(
  strategy: DirectoryStrategy,
  driver: SqlDriver,
  options: DirectoryOptions = {},
): ShardDirectory {
  const definition = validateStrategy(strategy);
  if (definition.kind !== 'directory') throw new ConfigError('strategy', 'must be a directory strategy');
  if (typeof driver?.query !== 'function') throw new ConfigError('driver', 'must be a SQL driver');
  const clock = options.clock ?? systemClock;
  const ttl = definition.cacheTtlMs;
  const cache = createLruMap<{ shard: ShardId; expiresAt: number }>({
    maxItems: options.cacheSize ?? 10_000,
  });
  const table = sql.id(definition.table);
  const known = new Set(definition.shards);

  const remember = (token: string, shard: ShardId) => {
    if (ttl > 0) cache.set(token, { shard, expiresAt: clock.now() + ttl });
  };

  return Object.freeze({
    strategy: definition,
    async migrate() {
      await driver.query(
        sql`create table if not exists ${table} (shard_key text primary key, shard text not null)`,
      );
    },
    async assign(key: ShardKey, shard: ShardId) {
      assertShardKey(key);
      if (typeof shard !== 'string' || !known.has(shard)) {
        throw new ConfigError('shard', 'is not one of the strategy shards');
      }
      const token = canonicalKey(key);
      if (driver.dialect.capabilities.upsert) {
        await driver.query(
          sql`insert into ${table} (shard_key, shard) values (${token}, ${shard})
              on conflict (shard_key) do update set shard = excluded.shard`,
        );
      } else {
        await driver.transaction(async (tx) => {
          const updated = await tx.query(
            sql`update ${table} set shard = ${shard} where shard_key = ${token}`,
          );
          if (updated.rowCount === 0) {
            await tx.query(sql`insert into ${table} (shard_key, shard) values (${token}, ${shard})`);
          }
        });
      }
      remember(token, shard);
    },
    async unassign(key: ShardKey) {
      assertShardKey(key);
      const token = canonicalKey(key);
      cache.delete(token);
      const result = await driver.query(sql`delete from ${table} where shard_key = ${token}`);
      return result.rowCount > 0;
    },
    async lookup(key: unknown) {
      assertShardKey(key);
      const token = canonicalKey(key);
      const hit = cache.get(token);
      if (hit !== undefined && hit.expiresAt > clock.now()) return hit.shard;
      const result = await driver.query<{ shard: string }>(
        sql`select shard from ${table} where shard_key = ${token}`,
      );
      let shard = result.rows[0]?.shard;
      if (shard === undefined) {
        shard =
          definition.fallback === undefined ? definition.shards[0]! : placeSync(definition.fallback, key);
      } else if (!known.has(shard)) {
        throw new StrataError('E_SHARD', `the directory table "${definition.table}" names an unknown shard`, {
          details: { table: definition.table },
        });
      }
      remember(token, shard);
      return shard;
    },
    clearCache() {
      cache.clear();
    },
  });
}
