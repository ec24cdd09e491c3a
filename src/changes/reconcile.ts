/**
 * Reconciliation of a table kept in two stores (dual writes, migrations, copies): `reconcile`
 * compares them chunk by chunk with order-independent hashes, narrows mismatching chunks down
 * to rows by bisection, and lists every mismatching key; `repair` makes one side equal to the
 * other, re-reading the authoritative rows at apply time.
 *
 * Memory stays bounded whatever the table size: rows are read in key order, in pages bounded by
 * rows and bytes; at most a chunk's (key, digest) pairs are held at once.
 *
 * How values compare across engines (the canonical tokens of `normalizeValue`):
 * - null and undefined are null; an empty string is not null;
 * - numbers, bigints, booleans (as 1 and 0) and PostgreSQL `numeric` strings are one kind,
 *   compared by exact decimal value: `5`, `5n`, `'5.00'` (numeric) and `true` vs `1` are equal;
 * - text is compared exactly (no trimming, no Unicode normalization); a number never equals text;
 * - bytes (Buffer, Uint8Array, SQLite BLOB, PostgreSQL bytea) are compared byte for byte;
 * - dates are compared as their ISO-8601 UTC text, so a `timestamptz` equals SQLite text
 *   written by strata's SQLite driver;
 * - JSON columns (PostgreSQL json/jsonb, SQLite columns declared JSON) are compared as canonical
 *   JSON (keys sorted), whether the engine returns text or parsed values.
 *
 * Hashing: in Node, a row's digest is the 128-bit MurmurHash3 of its canonical encoding (key and
 * value tokens, length-prefixed); when both sides are PostgreSQL it is computed in the database
 * (`hashtextextended` of `row(...)::text` with two seeds), so only fingerprints cross the
 * network. A chunk's fingerprint is its row count and the sums of its digests modulo 2^64, so
 * the second half of a bisected range costs nothing. Fingerprints only prune: every reported
 * mismatch is confirmed row by row in Node, so a fingerprint that differs for equal rows (say
 * `numeric` 1.0 and 1.00 in PostgreSQL text) costs time, never a wrong report.
 *
 * Keys are ordered by the engines; both sides must order keys the same way. Text keys on
 * PostgreSQL are compared with `COLLATE "C"` (byte order, as SQLite's BINARY) unless both sides
 * already share an order; index such keys with `COLLATE "C"` for speed on large tables.
 *
 * The tables are read live, without a snapshot across the two stores: rows written during a run
 * can show up as transient mismatches. `repair` re-reads every row it touches, so applying a
 * plan is safe; run `reconcile` again to confirm.
 */
import { performance } from 'node:perf_hooks';
import { stableJson } from '../core/changes.js';
import { ConfigError, isStrataError, StrataError } from '../core/errors.js';
import {
  assertIdentifier,
  configIdentifier,
  quoteIdentifierStandard,
  type Row,
  type SqlDriver,
  type SqlExecutor,
  type SqlFragment,
  sql,
} from '../core/sql.js';

// ---------------------------------------------------------------------------------------------
// Public types

/** One of the two stores being compared. */
export type ReconcileSide = 'source' | 'target';

/** A table in one store. */
export interface ReconcileTable {
  /** The driver of the store (SQLite or PostgreSQL). */
  driver: SqlDriver;
  /** The table's name (a plain identifier). */
  table: string;
  /** Its schema (PostgreSQL schema, SQLite attached database); default: the search path / `main`. */
  schema?: string;
}

/** A value a `where` filter column must equal (`null` means IS NULL). */
export type ReconcileFilterValue = string | number | bigint | boolean | null;

/** Progress of a running `reconcile`, reported after each chunk. */
export interface ReconcileProgress {
  /** Chunks finished. */
  chunksDone: number;
  /** Chunks expected, from the source's row count at the start. */
  chunksTotal: number | undefined;
  /** The larger of the two sides' row counts in the finished chunks. */
  rowsCompared: number;
  /** Mismatching keys listed so far. */
  mismatches: number;
}

/** Options for `reconcile`. */
export interface ReconcileOptions {
  /** The reference store; chunk boundaries follow its keys. */
  source: ReconcileTable;
  /** The store compared against it. */
  target: ReconcileTable;
  /**
   * The key columns, unique on both sides (default: the source table's primary key). Rows whose
   * key holds a NULL are not compared.
   */
  key?: readonly string[];
  /** The columns to compare besides the key (default: every source column); the target must have them. */
  columns?: readonly string[];
  /** Source rows per chunk (default 10,000). */
  chunkSize?: number;
  /** Compare only rows whose columns equal these values (values are bound, never spliced). */
  where?: Readonly<Record<string, ReconcileFilterValue>>;
  /** Stops the comparison between two queries with `E_ABORTED`. */
  signal?: AbortSignal;
  /** Called after each chunk; an error it throws stops the comparison. */
  onProgress?: (progress: ReconcileProgress) => void;
  /** Stop after listing this many mismatching keys (default 100,000); the report is then `truncated`. */
  maxMismatches?: number;
  /**
   * Hash chunks inside PostgreSQL when both sides are PostgreSQL servers (12+) with the same
   * column types and output settings (default true); otherwise rows are hashed in Node.
   */
  pushdown?: boolean;
  /** Also build the repair plan that would make the other side equal to this one. */
  plan?: ReconcileSide;
}

/** A row's key: key column to value, as read from the side that holds the row. */
export type ReconcileKey = Record<string, unknown>;

/** A key present on both sides whose values differ in `columns`. */
export interface ReconcileDifference {
  key: ReconcileKey;
  /** The differing columns, in table order. */
  columns: string[];
}

/** Every mismatching key, each list in key order. */
export interface ReconcileMismatches {
  /** Keys on the source, not on the target. */
  missing: ReconcileKey[];
  /** Keys on the target, not on the source. */
  extra: ReconcileKey[];
  /** Keys on both sides with different values. */
  different: ReconcileDifference[];
}

/** What `reconcile` found. */
export interface ReconcileReport {
  readonly kind: 'reconcile-report';
  /** The source table's name. */
  table: string;
  /** The source store: its driver's name, the resolved schema and the table. */
  source: { driver: string; schema: string | undefined; table: string };
  /** The target store, likewise. */
  target: { driver: string; schema: string | undefined; table: string };
  /** The key columns used. */
  key: string[];
  /** The other columns compared. */
  columns: string[];
  /** How chunks were hashed: inside PostgreSQL, or in Node. */
  hashing: 'database' | 'node';
  /** Chunks compared. */
  chunks: number;
  /** Chunks whose hashes differed. */
  chunksMismatched: number;
  /** Rows seen on each side (in the compared chunks). */
  rowsSource: number;
  rowsTarget: number;
  mismatches: ReconcileMismatches;
  /** True when no mismatch was found and the comparison ran to the end. */
  clean: boolean;
  /** True when the comparison stopped at `maxMismatches`; later keys were not compared. */
  truncated: boolean;
  durationMs: number;
  /** The repair plan, when `plan` was given. */
  plan?: RepairPlan;
}

/** What a repair would do: make the `repairs` side equal to the `from` side for these keys. */
export interface RepairPlan {
  readonly kind: 'repair-plan';
  /** The authoritative side. */
  from: ReconcileSide;
  /** The side that changes. */
  repairs: ReconcileSide;
  /** The table that changes. */
  table: string;
  /** Keys to insert into the repaired side. */
  insert: ReconcileKey[];
  /** Keys to update, with the columns that differed. */
  update: ReconcileDifference[];
  /** Keys to delete from the repaired side. */
  delete: ReconcileKey[];
  /** False when the report was truncated: run `reconcile` again after this repair. */
  complete: boolean;
}

/** Options for `repair`. */
export interface RepairOptions {
  /** The authoritative side (default: the side of the plan, or of the report's plan). */
  from?: ReconcileSide;
  /** Only return the plan, change nothing (default true: pass `dryRun: false` to apply). */
  dryRun?: boolean;
  /** Keys per transaction on the repaired side (default 500). */
  batchSize?: number;
  /** Stops between two batches with `E_ABORTED`; finished batches stay committed. */
  signal?: AbortSignal;
}

/** What `repair` did. */
export interface RepairResult {
  dryRun: boolean;
  plan: RepairPlan;
  /** Rows inserted into, updated in and deleted from the repaired side. */
  inserted: number;
  updated: number;
  deleted: number;
  /** Planned keys that already matched at apply time. */
  unchanged: number;
  /** Transactions committed. */
  batches: number;
}

// ---------------------------------------------------------------------------------------------
// Canonical values and hashes

/** How a column's values are read: as is, PostgreSQL `numeric` text as numbers, or JSON. */
export type ValueKind = 'plain' | 'decimal' | 'json';

const DECIMAL = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/;
/** Beyond this many places from the decimal point, numbers are spelled `<digits>e<point>`. */
const MAX_PLAIN_PLACES = 1_000;

/**
 * The exact decimal value of `text` in one spelling: plain notation without exponent, leading
 * or trailing zeros (`'012.50'` → `'12.5'`, `'1e3'` → `'1000'`, `'-0.0'` → `'0'`, `'5e-7'` →
 * `'0.0000005'`); NaN and the infinities keep their names; undefined when `text` is not a
 * decimal number. JavaScript's `String(n)` of a number between 1e-6 and 1e21 is already in
 * this spelling.
 */
export function canonicalDecimal(text: string): string | undefined {
  if (text === 'NaN' || text === 'Infinity' || text === '-Infinity') return text;
  const m = DECIMAL.exec(text.trim());
  if (m === null) return undefined;
  const int = m[2] ?? '';
  const frac = m[3] ?? '';
  if (int === '' && frac === '') return undefined;
  const raw = int + frac;
  const lead = raw.length - raw.replace(/^0+/, '').length;
  const digits = raw.slice(lead).replace(/0+$/, '');
  if (digits === '') return '0';
  // Digits before the decimal point once leading zeros are gone.
  const point = int.length + Number(m[4] ?? '0') - lead;
  const sign = m[1] === '-' ? '-' : '';
  if (point > MAX_PLAIN_PLACES || point < -MAX_PLAIN_PLACES) return `${sign}${digits}e${point}`;
  if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`;
  if (point >= digits.length) return `${sign}${digits}${'0'.repeat(point - digits.length)}`;
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

function canonicalNumber(n: number): string {
  if (Number.isInteger(n)) return Number.isSafeInteger(n) ? String(n) : BigInt(n).toString();
  const s = String(n);
  return s.includes('e') || !Number.isFinite(n) ? (canonicalDecimal(s) ?? s) : s;
}

function bytesToBase64(value: Uint8Array): string {
  return (
    Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength)
  ).toString('base64');
}

/**
 * The canonical token of one value, equal for the same logical value on SQLite and PostgreSQL
 * (see the module comment): `null`, or a tagged string: `n:` and a canonical decimal for numbers,
 * bigints, booleans (1, 0) and `decimal` text; `s:` text and dates (ISO-8601 UTC); `b:` base64
 * bytes; `j:` canonical JSON (sorted keys) for `json` columns, arrays and objects.
 */
export function normalizeValue(value: unknown, kind: ValueKind = 'plain'): string | null {
  if (value === null || value === undefined) return null;
  if (kind === 'json' && !(value instanceof Uint8Array) && !(value instanceof Date)) {
    if (typeof value !== 'string') return `j:${stableJson(value)}`;
    try {
      return `j:${stableJson(JSON.parse(value))}`;
    } catch {
      return `s:${value}`;
    }
  }
  switch (typeof value) {
    case 'string': {
      if (kind === 'decimal') {
        const canonical = canonicalDecimal(value);
        if (canonical !== undefined) return `n:${canonical}`;
      }
      return `s:${value}`;
    }
    case 'number':
      return `n:${canonicalNumber(value)}`;
    case 'bigint':
      return `n:${value.toString()}`;
    case 'boolean':
      return value ? 'n:1' : 'n:0';
    default:
      break;
  }
  if (value instanceof Date)
    return `s:${Number.isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString()}`;
  if (value instanceof Uint8Array) return `b:${bytesToBase64(value)}`;
  return `j:${stableJson(value)}`;
}

/** A self-delimiting encoding of a token list (`<length>:<token>`, `-` for null), for hashing and maps. */
export function encodeTokens(tokens: readonly (string | null)[]): string {
  let out = '';
  for (const t of tokens) out += t === null ? '-' : `${t.length}:${t}`;
  return out;
}

/** A key: its values as read, and its canonical token (equal across engines for equal keys). */
export interface KeyTuple {
  readonly values: readonly unknown[];
  readonly token: string;
}

/** Builds the key tuple of `values`, normalized with `kinds` (default plain). */
export function keyTuple(values: readonly unknown[], kinds?: readonly ValueKind[]): KeyTuple {
  return { values, token: encodeTokens(values.map((v, i) => normalizeValue(v, kinds?.[i] ?? 'plain'))) };
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}
const C1 = 0x239b961b;
const C2 = 0xab0e9789;
const C3 = 0x38b34ae5;
const C4 = 0xa1e38b93;

/**
 * MurmurHash3 (x86, 128-bit) of a string's UTF-16 code units, two per 32-bit word, as four
 * unsigned 32-bit words written into `out`. A fast non-cryptographic hash: in Node, `md5` per
 * row cost ten times as much as reading the row.
 */
export function murmur128(text: string, out: number[] = [0, 0, 0, 0]): number[] {
  let h1 = 0x9747b28c;
  let h2 = h1;
  let h3 = h1;
  let h4 = h1;
  const n = text.length;
  const blocks = n - (n % 8);
  let i = 0;
  for (; i < blocks; i += 8) {
    let k1 = text.charCodeAt(i) | (text.charCodeAt(i + 1) << 16);
    let k2 = text.charCodeAt(i + 2) | (text.charCodeAt(i + 3) << 16);
    let k3 = text.charCodeAt(i + 4) | (text.charCodeAt(i + 5) << 16);
    let k4 = text.charCodeAt(i + 6) | (text.charCodeAt(i + 7) << 16);
    k1 = Math.imul(rotl(Math.imul(k1, C1), 15), C2);
    h1 ^= k1;
    h1 = (Math.imul(rotl(h1, 19) + h2, 5) + 0x561ccd1b) | 0;
    k2 = Math.imul(rotl(Math.imul(k2, C2), 16), C3);
    h2 ^= k2;
    h2 = (Math.imul(rotl(h2, 17) + h3, 5) + 0x0bcaa747) | 0;
    k3 = Math.imul(rotl(Math.imul(k3, C3), 17), C4);
    h3 ^= k3;
    h3 = (Math.imul(rotl(h3, 15) + h4, 5) + 0x96cd1c35) | 0;
    k4 = Math.imul(rotl(Math.imul(k4, C4), 18), C1);
    h4 ^= k4;
    h4 = (Math.imul(rotl(h4, 13) + h1, 5) + 0x32ac3b17) | 0;
  }
  const rest = n - i;
  if (rest > 6) h4 ^= Math.imul(rotl(Math.imul(text.charCodeAt(i + 6), C4), 18), C1);
  if (rest > 4) {
    const k = text.charCodeAt(i + 4) | (rest > 5 ? text.charCodeAt(i + 5) << 16 : 0);
    h3 ^= Math.imul(rotl(Math.imul(k, C3), 17), C4);
  }
  if (rest > 2) {
    const k = text.charCodeAt(i + 2) | (rest > 3 ? text.charCodeAt(i + 3) << 16 : 0);
    h2 ^= Math.imul(rotl(Math.imul(k, C2), 16), C3);
  }
  if (rest > 0) {
    const k = text.charCodeAt(i) | (rest > 1 ? text.charCodeAt(i + 1) << 16 : 0);
    h1 ^= Math.imul(rotl(Math.imul(k, C1), 15), C2);
  }
  h1 ^= n;
  h2 ^= n;
  h3 ^= n;
  h4 ^= n;
  h1 = (h1 + h2 + h3 + h4) | 0;
  h2 = (h2 + h1) | 0;
  h3 = (h3 + h1) | 0;
  h4 = (h4 + h1) | 0;
  h1 = fmix32(h1);
  h2 = fmix32(h2);
  h3 = fmix32(h3);
  h4 = fmix32(h4);
  h1 = (h1 + h2 + h3 + h4) | 0;
  h2 = (h2 + h1) | 0;
  h3 = (h3 + h1) | 0;
  h4 = (h4 + h1) | 0;
  out[0] = h1 >>> 0;
  out[1] = h2 >>> 0;
  out[2] = h3 >>> 0;
  out[3] = h4 >>> 0;
  return out;
}

/** The 128-bit digest of a row (its key token and its value tokens) as four 32-bit words. */
export function rowDigest(
  key: KeyTuple,
  tokens: readonly (string | null)[],
  out: number[] = [0, 0, 0, 0],
): number[] {
  return murmur128(key.token + encodeTokens(tokens), out);
}

/** A key and its row digest, kept for a chunk small enough to diff in memory. */
export interface RetainedRow {
  readonly key: KeyTuple;
  readonly digest: string;
}

/**
 * A range's fingerprint: its row count and two 64-bit lanes, each the sum modulo 2^64 of one
 * half of every row's 128-bit digest. Sums do not depend on row order, and a range minus its
 * first half is its second half, so bisection hashes one half only. `rows` is set when the range
 * was hashed in Node and held at most the retain limit.
 */
export interface ChunkSummary {
  count: number;
  lanes: readonly [bigint, bigint];
  rows?: RetainedRow[];
}

const TWO_32 = 2 ** 32;

/** Accumulates rows into a `ChunkSummary`, keeping (key, digest) pairs up to `retainLimit` rows. */
export class SummaryBuilder {
  readonly #digest = [0, 0, 0, 0];
  readonly #retainLimit: number;
  // Each 64-bit lane as a high and a low 32-bit word, so the hot loop stays in plain numbers.
  #hi0 = 0;
  #lo0 = 0;
  #hi1 = 0;
  #lo1 = 0;
  #count = 0;
  #rows: RetainedRow[] | undefined;

  constructor(retainLimit: number) {
    this.#retainLimit = retainLimit;
    this.#rows = retainLimit > 0 ? [] : undefined;
  }

  /** Adds one row. */
  add(key: KeyTuple, tokens: readonly (string | null)[]): void {
    this.addEncoded(key, key.token + encodeTokens(tokens));
  }

  /** Adds one row given as `key.token + encodeTokens(valueTokens)`. */
  addEncoded(key: KeyTuple, encoded: string): void {
    const d = murmur128(encoded, this.#digest);
    const [a, b, c, e] = d as [number, number, number, number];
    let lo = this.#lo0 + b;
    let carry = lo >= TWO_32 ? 1 : 0;
    this.#lo0 = lo - carry * TWO_32;
    this.#hi0 = (this.#hi0 + a + carry) % TWO_32;
    lo = this.#lo1 + e;
    carry = lo >= TWO_32 ? 1 : 0;
    this.#lo1 = lo - carry * TWO_32;
    this.#hi1 = (this.#hi1 + c + carry) % TWO_32;
    this.#count++;
    if (this.#rows !== undefined) {
      if (this.#rows.length < this.#retainLimit) {
        const digest = String.fromCharCode(
          a >>> 16,
          a & 0xffff,
          b >>> 16,
          b & 0xffff,
          c >>> 16,
          c & 0xffff,
          e >>> 16,
          e & 0xffff,
        );
        this.#rows.push({ key, digest });
      } else this.#rows = undefined;
    }
  }

  /** The summary of the rows added so far. */
  result(): ChunkSummary {
    const lanes: [bigint, bigint] = [
      (BigInt(this.#hi0) << 32n) | BigInt(this.#lo0),
      (BigInt(this.#hi1) << 32n) | BigInt(this.#lo1),
    ];
    return this.#rows === undefined
      ? { count: this.#count, lanes }
      : { count: this.#count, lanes, rows: this.#rows };
  }
}

/** True when two summaries have the same count and lanes. */
export function sameSummary(a: ChunkSummary, b: ChunkSummary): boolean {
  return a.count === b.count && a.lanes[0] === b.lanes[0] && a.lanes[1] === b.lanes[1];
}

/** The summary of a range's rows not in its sub-range: `whole - part`, without retained rows. */
export function subtractSummary(whole: ChunkSummary, part: ChunkSummary): ChunkSummary {
  return {
    count: whole.count - part.count,
    lanes: [
      BigInt.asUintN(64, whole.lanes[0] - part.lanes[0]),
      BigInt.asUintN(64, whole.lanes[1] - part.lanes[1]),
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// The comparison, over an abstract store

/** A key range: from `lo` (inclusive) to `hi` (exclusive); a missing bound is open. */
export interface KeyRange {
  readonly lo?: KeyTuple | undefined;
  readonly hi?: KeyTuple | undefined;
}

/** A row read by key: its values and canonical tokens, for the compared (non-key) columns. */
export interface FetchedRow {
  readonly key: KeyTuple;
  readonly values: readonly unknown[];
  readonly tokens: readonly (string | null)[];
}

/**
 * One side as the comparison sees it; `SqlStore` implements it on a SQL table, and tests on
 * arrays. Every method answers in the store's own key order.
 */
export interface ReconcileStore {
  /** True when `summarize` can hash inside the engine (`retainLimit` 0, `inEngine` true). */
  readonly canPushdown: boolean;
  /** Rows in scope. */
  count(): Promise<number>;
  /** The key `offset` rows after the first key in `range` (0: the first), or undefined. */
  keyAt(range: KeyRange, offset: number): Promise<KeyTuple | undefined>;
  /** The range's summary, hashed in the engine when `inEngine`, else in Node keeping up to `retainLimit` rows. */
  summarize(range: KeyRange, retainLimit: number, inEngine: boolean): Promise<ChunkSummary>;
  /** Up to `limit` keys of `range` after `after`. */
  keys(range: KeyRange, after: KeyTuple | undefined, limit: number): Promise<KeyTuple[]>;
  /** The rows with these keys that exist, by key token. */
  fetch(keys: readonly KeyTuple[]): Promise<Map<string, FetchedRow>>;
}

/** Tunables of `compareStores`. */
export interface CompareSettings {
  /** Source rows per chunk. */
  chunkSize: number;
  /** Ranges with at most this many rows on each side are read and diffed row by row. */
  leafSize: number;
  /** Node hashing keeps (key, digest) pairs of ranges up to this many rows, to diff them without re-reading. */
  retainLimit: number;
  /** Mismatches listed before stopping. */
  maxMismatches: number;
  /** Names of the compared columns, in the order of `FetchedRow.tokens`. */
  columns: readonly string[];
  /** Keys read per query when listing a one-sided range. */
  keyPage?: number;
  signal?: AbortSignal | undefined;
  onProgress?: ((progress: ReconcileProgress) => void) | undefined;
}

/** What `compareStores` found, with keys as tuples. */
export interface CompareResult {
  chunks: number;
  chunksMismatched: number;
  rowsSource: number;
  rowsTarget: number;
  hashing: 'database' | 'node';
  missing: KeyTuple[];
  extra: KeyTuple[];
  different: Array<{ key: KeyTuple; columns: string[] }>;
  truncated: boolean;
}

/** Throws `E_ABORTED` when `signal` has fired. */
function checkAbort(signal: AbortSignal | undefined, operation: string): void {
  if (signal?.aborted) {
    throw new StrataError('E_ABORTED', `${operation} was aborted`, { cause: signal.reason });
  }
}

const STOP = Symbol('stop');

/**
 * Compares two stores: walks the source's keys in chunks of `chunkSize` (the first chunk open
 * below, the last open above, so keys only on the target are covered), summarizes each chunk on
 * both sides, and narrows each mismatching chunk by bisection to ranges small enough to diff row
 * by row. Stops after `maxMismatches` keys with `truncated`. Errors of either store propagate.
 */
export async function compareStores(
  source: ReconcileStore,
  target: ReconcileStore,
  settings: CompareSettings,
): Promise<CompareResult> {
  const inEngine = source.canPushdown && target.canPushdown;
  const retain = inEngine ? 0 : settings.retainLimit;
  const keyPage = settings.keyPage ?? 1_000;
  const out: CompareResult = {
    chunks: 0,
    chunksMismatched: 0,
    rowsSource: 0,
    rowsTarget: 0,
    hashing: inEngine ? 'database' : 'node',
    missing: [],
    extra: [],
    different: [],
    truncated: false,
  };
  let listed = 0;
  const list = <T>(into: T[], item: T): void => {
    if (listed >= settings.maxMismatches) {
      out.truncated = true;
      throw STOP;
    }
    into.push(item);
    listed++;
  };
  const check = () => checkAbort(settings.signal, 'reconcile');

  const listAll = async (
    store: ReconcileStore,
    range: KeyRange,
    summary: ChunkSummary,
    into: KeyTuple[],
  ): Promise<void> => {
    if (summary.rows !== undefined) {
      for (const row of summary.rows) list(into, row.key);
      return;
    }
    let after: KeyTuple | undefined;
    for (;;) {
      check();
      const keys = await store.keys(range, after, keyPage);
      for (const key of keys) list(into, key);
      if (keys.length < keyPage) return;
      after = keys[keys.length - 1];
    }
  };

  const diffRows = async (sourceRows: RetainedRow[], targetRows: RetainedRow[]): Promise<void> => {
    const targetByKey = new Map<string, RetainedRow>();
    for (const row of targetRows) targetByKey.set(row.key.token, row);
    const suspects: KeyTuple[] = [];
    for (const row of sourceRows) {
      const other = targetByKey.get(row.key.token);
      if (other === undefined) list(out.missing, row.key);
      else {
        targetByKey.delete(row.key.token);
        if (other.digest !== row.digest) suspects.push(row.key);
      }
    }
    for (const row of targetByKey.values()) list(out.extra, row.key);
    for (let i = 0; i < suspects.length; i += 100) {
      check();
      const batch = suspects.slice(i, i + 100);
      const [left, right] = await Promise.all([source.fetch(batch), target.fetch(batch)]);
      for (const key of batch) {
        const a = left.get(key.token);
        const b = right.get(key.token);
        if (a === undefined && b === undefined) continue;
        if (b === undefined) list(out.missing, key);
        else if (a === undefined) list(out.extra, b.key);
        else {
          const columns = settings.columns.filter((_, c) => a.tokens[c] !== b.tokens[c]);
          if (columns.length > 0) list(out.different, { key: a.key, columns });
        }
      }
    }
  };

  const narrow = async (range: KeyRange, s: ChunkSummary, t: ChunkSummary): Promise<void> => {
    if (sameSummary(s, t)) return;
    check();
    if (s.count === 0) return listAll(target, range, t, out.extra);
    if (t.count === 0) return listAll(source, range, s, out.missing);
    if (s.rows !== undefined && t.rows !== undefined) return diffRows(s.rows, t.rows);
    const larger = s.count >= t.count ? source : target;
    const n = Math.max(s.count, t.count);
    const middle = n > settings.leafSize ? await larger.keyAt(range, Math.floor(n / 2)) : undefined;
    if (middle === undefined) {
      // A leaf (or rows vanished under a concurrent writer): read both sides row by row.
      const [sl, tl] = await Promise.all([
        source.summarize(range, Number.POSITIVE_INFINITY, false),
        target.summarize(range, Number.POSITIVE_INFINITY, false),
      ]);
      return diffRows(sl.rows ?? [], tl.rows ?? []);
    }
    const left: KeyRange = { lo: range.lo, hi: middle };
    const right: KeyRange = { lo: middle, hi: range.hi };
    const [sl, tl] = await Promise.all([
      source.summarize(left, retain, inEngine),
      target.summarize(left, retain, inEngine),
    ]);
    await narrow(left, sl, tl);
    await narrow(right, subtractSummary(s, sl), subtractSummary(t, tl));
  };

  try {
    check();
    // The count costs a scan of the source's keys; only progress reports need it.
    const chunksTotal =
      settings.onProgress === undefined
        ? undefined
        : Math.max(1, Math.ceil((await source.count()) / settings.chunkSize));
    let lo: KeyTuple | undefined;
    for (;;) {
      check();
      const hi = await source.keyAt({ lo }, settings.chunkSize);
      const range: KeyRange = { lo, hi };
      const [s, t] = await Promise.all([
        source.summarize(range, retain, inEngine),
        target.summarize(range, retain, inEngine),
      ]);
      out.rowsSource += s.count;
      out.rowsTarget += t.count;
      if (!sameSummary(s, t)) {
        out.chunksMismatched++;
        await narrow(range, s, t);
      }
      out.chunks++;
      settings.onProgress?.({
        chunksDone: out.chunks,
        chunksTotal,
        rowsCompared: Math.max(out.rowsSource, out.rowsTarget),
        mismatches: listed,
      });
      if (hi === undefined) break;
      lo = hi;
    }
  } catch (err) {
    if (err !== STOP) throw err;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Catalogs

type Engine = 'sqlite' | 'postgres';

interface ColumnInfo {
  readonly name: string;
  /** The declared type (SQLite) or `format_type` (PostgreSQL). */
  readonly type: string;
  readonly kind: ValueKind;
  /** SQLite: the column may hold integers beyond 2^53, read exactly through a text copy. */
  readonly wideIntegers: boolean;
  /** How the engine orders the column: `native`, `binary`, or `pg:<collation>`. */
  readonly order: string;
  /** PostgreSQL json or jsonb (values must be bound as JSON text). */
  readonly pgJson: boolean;
}

interface TableInfo {
  readonly engine: Engine;
  readonly driver: SqlDriver;
  readonly side: ReconcileSide;
  readonly schema: string | undefined;
  readonly table: string;
  readonly columns: ReadonlyMap<string, ColumnInfo>;
  readonly primaryKey: readonly string[];
  /** PostgreSQL: version and the settings that shape `row(...)::text`. */
  readonly textSettings?: string;
  readonly version?: number;
}

function engineOf(driver: SqlDriver, side: ReconcileSide): Engine {
  const name = driver.dialect.name;
  if (name === 'sqlite' || name === 'postgres') return name;
  throw new ConfigError(`${side}.driver`, 'reconcile supports SQLite and PostgreSQL drivers');
}

function sqliteAffinity(type: string): 'integer' | 'text' | 'blob' | 'real' | 'numeric' {
  const t = type.toUpperCase();
  if (t.includes('INT')) return 'integer';
  if (t.includes('CHAR') || t.includes('CLOB') || t.includes('TEXT')) return 'text';
  if (t.includes('BLOB') || t === '') return 'blob';
  if (t.includes('REAL') || t.includes('FLOA') || t.includes('DOUB')) return 'real';
  return 'numeric';
}

const BINARY_COLLATIONS = /^(C|POSIX|C\.UTF-?8|ucs_basic)$/i;

async function readSqliteTable(t: ReconcileTable, side: ReconcileSide): Promise<TableInfo> {
  const { rows } = await t.driver
    .query<{ name: string; type: string; pk: number }>(
      sql`select name, type, pk from pragma_table_info(${t.table}, ${t.schema ?? 'main'}) order by cid`,
    )
    .catch((err: unknown) => {
      // SQLite answers an unknown schema with "unknown database".
      if (t.schema !== undefined && isStrataError(err, 'E_QUERY')) {
        throw new ConfigError(`${side}.schema`, `schema "${t.schema}" does not exist on ${t.driver.name}`, {
          cause: err,
        });
      }
      throw err;
    });
  if (rows.length === 0) {
    throw new ConfigError(`${side}.table`, `table "${t.table}" does not exist on ${t.driver.name}`, {
      details: { table: t.table, schema: t.schema },
    });
  }
  const columns = new Map<string, ColumnInfo>();
  for (const r of rows) {
    const affinity = sqliteAffinity(r.type ?? '');
    columns.set(r.name, {
      name: r.name,
      type: r.type ?? '',
      kind: /JSON/i.test(r.type ?? '') ? 'json' : 'plain',
      wideIntegers: affinity === 'integer' || affinity === 'numeric' || affinity === 'blob',
      order: affinity === 'text' ? 'binary' : 'native',
      pgJson: false,
    });
  }
  const primaryKey = rows
    .filter((r) => r.pk > 0)
    .sort((a, b) => a.pk - b.pk)
    .map((r) => r.name);
  return { engine: 'sqlite', driver: t.driver, side, schema: t.schema, table: t.table, columns, primaryKey };
}

async function readPostgresTable(t: ReconcileTable, side: ReconcileSide): Promise<TableInfo> {
  const qualified =
    t.schema === undefined
      ? quoteIdentifierStandard(t.table)
      : `${quoteIdentifierStandard(t.schema)}.${quoteIdentifierStandard(t.table)}`;
  const found = await t.driver.query<{ oid: number; schema: string }>(
    sql`select c.oid::int8 as oid, n.nspname as schema from pg_class c
        join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass(${qualified})`,
  );
  const rel = found.rows[0];
  if (rel === undefined) {
    throw new ConfigError(`${side}.table`, `table "${t.table}" does not exist on ${t.driver.name}`, {
      details: { table: t.table, schema: t.schema },
    });
  }
  const [cols, pk, settings] = await Promise.all([
    t.driver.query<{
      name: string;
      type: string;
      typname: string;
      category: string;
      collation: string | null;
    }>(
      sql`select a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
                 coalesce(bt.typname, ty.typname) as typname, ty.typcategory as category,
                 co.collname as collation
          from pg_attribute a
          join pg_type ty on ty.oid = a.atttypid
          left join pg_type bt on bt.oid = ty.typbasetype and ty.typtype = 'd'
          left join pg_collation co on co.oid = a.attcollation
          where a.attrelid = ${rel.oid} and a.attnum > 0 and not a.attisdropped
          order by a.attnum`,
    ),
    t.driver.query<{ name: string }>(
      sql`select a.attname as name
          from pg_index i
          cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
          where i.indrelid = ${rel.oid} and i.indisprimary
          order by k.ord`,
    ),
    t.driver.query<{
      version: number;
      text_settings: string;
      collate: string;
      provider: string | null;
      icu: string | null;
    }>(
      sql`select current_setting('server_version_num')::int as version,
                 concat_ws('|', current_setting('TimeZone'), current_setting('DateStyle'),
                   current_setting('IntervalStyle'), current_setting('extra_float_digits'),
                   current_setting('bytea_output')) as text_settings,
                 d.datcollate as collate, to_jsonb(d) ->> 'datlocprovider' as provider,
                 coalesce(to_jsonb(d) ->> 'daticulocale', to_jsonb(d) ->> 'datlocale') as icu
          from pg_database d where d.datname = current_database()`,
    ),
  ]);
  const db = settings.rows[0];
  const defaultCollation = db?.provider === 'i' ? `icu:${db.icu ?? ''}` : (db?.collate ?? 'C');
  const columns = new Map<string, ColumnInfo>();
  for (const c of cols.rows) {
    const collation = c.collation === null || c.collation === 'default' ? defaultCollation : c.collation;
    const json = c.typname === 'json' || c.typname === 'jsonb';
    columns.set(c.name, {
      name: c.name,
      type: c.type,
      kind: json ? 'json' : c.typname === 'numeric' ? 'decimal' : 'plain',
      wideIntegers: false,
      order: c.category !== 'S' ? 'native' : BINARY_COLLATIONS.test(collation) ? 'binary' : `pg:${collation}`,
      pgJson: json,
    });
  }
  return {
    engine: 'postgres',
    driver: t.driver,
    side,
    schema: rel.schema,
    table: t.table,
    columns,
    primaryKey: pk.rows.map((r) => r.name),
    ...(db === undefined ? {} : { textSettings: db.text_settings, version: Number(db.version) }),
  };
}

function readTable(t: ReconcileTable, side: ReconcileSide, engine: Engine): Promise<TableInfo> {
  return engine === 'sqlite' ? readSqliteTable(t, side) : readPostgresTable(t, side);
}

// ---------------------------------------------------------------------------------------------
// The SQL store

/** Bytes a page of rows may take, roughly; pages shrink for wide rows and grow for narrow ones. */
const PAGE_BYTES = 8 * 1024 * 1024;
const FIRST_PAGE_ROWS = 256;
const MAX_SAFE = '9007199254740991';

interface ReadColumn {
  readonly info: ColumnInfo;
  readonly alias: string;
  /** The alias of the exact text copy of wide integers (SQLite), if read. */
  readonly exact: string | undefined;
  readonly kind: ValueKind;
}

/** Reads one table for the comparison and writes it for a repair. */
class SqlStore implements ReconcileStore {
  readonly canPushdown: boolean;
  readonly #table: SqlFragment;
  readonly #keys: readonly ReadColumn[];
  readonly #values: readonly ReadColumn[];
  readonly #keyKinds: readonly ValueKind[];
  readonly #keyExpr: SqlFragment;
  readonly #orderBy: SqlFragment;
  readonly #filter: readonly SqlFragment[];
  readonly #filterParams: number;
  #rowBytes = 0;

  constructor(
    readonly info: TableInfo,
    keys: readonly ColumnInfo[],
    values: readonly ColumnInfo[],
    kinds: { keys: readonly ValueKind[]; values: readonly ValueKind[] },
    collateC: readonly boolean[],
    filter: ReadonlyArray<readonly [string, ReconcileFilterValue]>,
    pushdown: boolean,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.canPushdown = pushdown;
    this.#table = info.schema === undefined ? sql.id(info.table) : sql.id(info.schema, info.table);
    const read = (info: ColumnInfo, alias: string, kind: ValueKind): ReadColumn => ({
      info,
      alias,
      exact: info.wideIntegers ? `${alias}_b` : undefined,
      kind,
    });
    this.#keys = keys.map((c, i) => read(c, `k${i}`, kinds.keys[i]!));
    this.#values = values.map((c, i) => read(c, `v${i}`, kinds.values[i]!));
    this.#keyKinds = kinds.keys;
    const ordered = keys.map((c, i) => (collateC[i] ? sql`${sql.id(c.name)} collate "C"` : sql.id(c.name)));
    this.#keyExpr = ordered.length === 1 ? ordered[0]! : sql`(${sql.join(ordered)})`;
    this.#orderBy = sql.join(ordered);
    this.#filter = filter.map(([column, value]) =>
      value === null ? sql`${sql.id(column)} is null` : sql`${sql.id(column)} = ${value}`,
    );
    this.#filterParams = filter.filter(([, v]) => v !== null).length;
  }

  get driver(): SqlDriver {
    return this.info.driver;
  }

  get keyKinds(): readonly ValueKind[] {
    return this.#keyKinds;
  }

  #tuple(key: KeyTuple): SqlFragment {
    return key.values.length === 1 ? sql.value(key.values[0]) : sql`(${sql.join(key.values)})`;
  }

  #where(range: KeyRange, after?: KeyTuple): SqlFragment {
    const conditions: SqlFragment[] = [...this.#filter];
    if (range.lo !== undefined) conditions.push(sql`${this.#keyExpr} >= ${this.#tuple(range.lo)}`);
    if (range.hi !== undefined) conditions.push(sql`${this.#keyExpr} < ${this.#tuple(range.hi)}`);
    if (after !== undefined) conditions.push(sql`${this.#keyExpr} > ${this.#tuple(after)}`);
    return conditions.length === 0 ? sql.empty : sql` where ${sql.join(conditions, ' and ')}`;
  }

  #select(columns: readonly ReadColumn[]): SqlFragment {
    const items: SqlFragment[] = [];
    for (const { info, alias, exact } of columns) {
      const id = sql.id(info.name);
      items.push(sql`${id} as ${sql.id(alias)}`);
      if (exact !== undefined) {
        // better-sqlite3 reads integers as doubles; a text copy keeps those beyond 2^53 exact.
        items.push(
          sql`case when ${id} not between -${sql.raw(MAX_SAFE)} and ${sql.raw(MAX_SAFE)} and typeof(${id}) = 'integer' then cast(${id} as text) end as ${sql.id(exact)}`,
        );
      }
    }
    return sql.join(items);
  }

  #read(row: Row, column: ReadColumn): unknown {
    if (column.exact !== undefined) {
      const text = row[column.exact];
      if (typeof text === 'string') return BigInt(text);
    }
    return row[column.alias];
  }

  #key(row: Row): KeyTuple {
    const columns = this.#keys;
    const values: unknown[] = new Array(columns.length);
    let token = '';
    for (let i = 0; i < columns.length; i++) {
      const column = columns[i]!;
      const value = this.#read(row, column);
      values[i] = value;
      const t = normalizeValue(value, column.kind);
      token += t === null ? '-' : `${t.length}:${t}`;
    }
    return { values, token };
  }

  #row(row: Row): FetchedRow {
    const key = this.#key(row);
    const values = this.#values.map((c) => this.#read(row, c));
    const tokens = values.map((v, i) => normalizeValue(v, this.#values[i]!.kind));
    return { key, values, tokens };
  }

  #pageLimit(max: number): number {
    if (this.#rowBytes === 0) return Math.min(max, FIRST_PAGE_ROWS);
    return Math.max(1, Math.min(max, Math.floor(PAGE_BYTES / this.#rowBytes)));
  }

  async count(): Promise<number> {
    const { rows } = await this.driver.query<{ n: number | bigint }>(
      sql`select count(*) as n from ${this.#table}${this.#where({})}`,
    );
    return Number(rows[0]?.n ?? 0);
  }

  async keyAt(range: KeyRange, offset: number): Promise<KeyTuple | undefined> {
    const { rows } = await this.driver.query(
      sql`select ${this.#select(this.#keys)} from ${this.#table}${this.#where(range)}
          order by ${this.#orderBy} limit 1 offset ${offset}`,
    );
    return rows[0] === undefined ? undefined : this.#key(rows[0]);
  }

  async keys(range: KeyRange, after: KeyTuple | undefined, limit: number): Promise<KeyTuple[]> {
    const { rows } = await this.driver.query(
      sql`select ${this.#select(this.#keys)} from ${this.#table}${this.#where(range, after)}
          order by ${this.#orderBy} limit ${limit}`,
    );
    return rows.map((r) => this.#key(r));
  }

  async summarize(range: KeyRange, retainLimit: number, inEngine: boolean): Promise<ChunkSummary> {
    if (inEngine && this.canPushdown) return this.#summarizeInEngine(range);
    const builder = new SummaryBuilder(retainLimit);
    const all = [...this.#keys, ...this.#values];
    let after: KeyTuple | undefined;
    for (;;) {
      checkAbort(this.signal, 'reconcile');
      const limit = this.#pageLimit(100_000);
      const { rows } = await this.driver.query(
        sql`select ${this.#select(all)} from ${this.#table}${this.#where(range, after)}
            order by ${this.#orderBy} limit ${limit}`,
      );
      let bytes = 0;
      let last: KeyTuple | undefined;
      const columns = this.#values;
      for (const raw of rows) {
        const key = this.#key(raw);
        let encoded = key.token;
        for (let i = 0; i < columns.length; i++) {
          const column = columns[i]!;
          const t = normalizeValue(this.#read(raw, column), column.kind);
          encoded += t === null ? '-' : `${t.length}:${t}`;
        }
        builder.addEncoded(key, encoded);
        bytes += encoded.length + 64;
        last = key;
      }
      if (rows.length > 0) this.#rowBytes = Math.ceil(bytes / rows.length);
      if (rows.length < limit || last === undefined) return builder.result();
      after = last;
    }
  }

  async #summarizeInEngine(range: KeyRange): Promise<ChunkSummary> {
    // hashtextextended (PostgreSQL 11+) gives two seeded 64-bit hashes of the row's text; sum()
    // of int8 is exact (numeric), reduced modulo 2^64 here.
    const columns = sql.join([...this.#keys, ...this.#values].map((c) => sql.id(c.info.name)));
    const { rows } = await this.driver.query<{ n: number | bigint; h0: string; h1: string }>(
      sql`select count(*) as n, coalesce(sum(hashtextextended(r, 0)), 0)::text as h0,
                 coalesce(sum(hashtextextended(r, 1)), 0)::text as h1
          from (select row(${columns})::text as r from ${this.#table}${this.#where(range)}) s`,
    );
    const r = rows[0]!;
    return {
      count: Number(r.n),
      lanes: [BigInt.asUintN(64, BigInt(r.h0)), BigInt.asUintN(64, BigInt(r.h1))],
    };
  }

  #keyMatch(keys: readonly KeyTuple[]): SqlFragment {
    if (this.#keys.length === 1) {
      return sql`${sql.id(this.#keys[0]!.info.name)} in (${sql.join(keys.map((k) => k.values[0]))})`;
    }
    return sql`(${sql.join(
      keys.map((k) => sql`(${sql.join(this.#keyEquals(k), ' and ')})`),
      ' or ',
    )})`;
  }

  #keyEquals(key: KeyTuple): SqlFragment[] {
    return this.#keys.map((c, i) => sql`${sql.id(c.info.name)} = ${key.values[i]}`);
  }

  /** Rows by key through `executor`, with the `where` filter when `filtered`. */
  async fetchWith(
    executor: SqlExecutor,
    keys: readonly KeyTuple[],
    filtered: boolean,
  ): Promise<Map<string, FetchedRow>> {
    const out = new Map<string, FetchedRow>();
    const room = executor.dialect.capabilities.maxParameters - (filtered ? this.#filterParams : 0);
    const batch = Math.max(1, Math.min(100, Math.floor(room / this.#keys.length)));
    const all = [...this.#keys, ...this.#values];
    for (let i = 0; i < keys.length; i += batch) {
      const part = keys.slice(i, i + batch);
      const conditions = [this.#keyMatch(part), ...(filtered ? this.#filter : [])];
      const { rows } = await executor.query(
        sql`select ${this.#select(all)} from ${this.#table} where ${sql.join(conditions, ' and ')}`,
      );
      for (const raw of rows) {
        const row = this.#row(raw);
        out.set(row.key.token, row);
      }
    }
    return out;
  }

  fetch(keys: readonly KeyTuple[]): Promise<Map<string, FetchedRow>> {
    return this.fetchWith(this.driver, keys, true);
  }

  #bind(value: unknown, column: ColumnInfo, from: ColumnInfo): unknown {
    // pg binds a JS array as a PostgreSQL array and a string as is: JSON columns need JSON text.
    if (
      column.pgJson &&
      value !== null &&
      value !== undefined &&
      (from.pgJson || typeof value !== 'string')
    ) {
      return stableJson(value);
    }
    return value;
  }

  async insert(tx: SqlExecutor, row: FetchedRow, from: SqlStore): Promise<void> {
    const columns = [...this.#keys, ...this.#values];
    const sources = [...from.#keys, ...from.#values];
    const values = [...row.key.values, ...row.values].map((v, i) =>
      this.#bind(v, columns[i]!.info, sources[i]!.info),
    );
    await tx.query(
      sql`insert into ${this.#table} (${sql.join(columns.map((c) => sql.id(c.info.name)))}) values (${sql.join(values)})`,
    );
  }

  async update(tx: SqlExecutor, row: FetchedRow, changed: readonly number[], from: SqlStore): Promise<void> {
    const sets = changed.map((i) => {
      const column = this.#values[i]!.info;
      return sql`${sql.id(column.name)} = ${this.#bind(row.values[i], column, from.#values[i]!.info)}`;
    });
    await tx.query(
      sql`update ${this.#table} set ${sql.join(sets)} where ${sql.join(this.#keyEquals(row.key), ' and ')}`,
    );
  }

  async delete(tx: SqlExecutor, key: KeyTuple): Promise<void> {
    await tx.query(sql`delete from ${this.#table} where ${sql.join(this.#keyEquals(key), ' and ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// reconcile

const DEFAULT_CHUNK_SIZE = 10_000;
const DEFAULT_MAX_MISMATCHES = 100_000;
const LEAF_ROWS = 256;
const MAX_RETAIN = 100_000;

interface Checked {
  source: ReconcileTable;
  target: ReconcileTable;
  engines: Record<ReconcileSide, Engine>;
  key: string[] | undefined;
  columns: string[] | undefined;
  chunkSize: number;
  maxMismatches: number;
  where: Array<readonly [string, ReconcileFilterValue]>;
  signal: AbortSignal | undefined;
  onProgress: ((p: ReconcileProgress) => void) | undefined;
  pushdown: boolean;
  plan: ReconcileSide | undefined;
}

function checkTable(value: unknown, side: ReconcileSide): ReconcileTable {
  if (typeof value !== 'object' || value === null) {
    throw new ConfigError(side, 'expected { driver, table, schema? }');
  }
  const t = value as Partial<ReconcileTable>;
  const driver = t.driver as Partial<SqlDriver> | undefined;
  if (typeof driver?.query !== 'function' || typeof driver.dialect?.name !== 'string') {
    throw new ConfigError(`${side}.driver`, 'expected a strata SqlDriver');
  }
  const table = configIdentifier(t.table, `${side}.table`);
  const schema = t.schema === undefined ? undefined : configIdentifier(t.schema, `${side}.schema`);
  return { driver: t.driver as SqlDriver, table, ...(schema === undefined ? {} : { schema }) };
}

function identifierList(value: unknown, option: string): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError(option, 'must be a non-empty array of column names');
  }
  const names = value.map((name) => configIdentifier(name, option));
  if (new Set(names).size !== names.length) throw new ConfigError(option, 'lists a column twice');
  return names;
}

function positiveInteger(value: unknown, option: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new ConfigError(option, `must be an integer of at least ${min}`);
  }
  return value;
}

function checkSignal(value: unknown): AbortSignal | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || typeof (value as AbortSignal).aborted !== 'boolean') {
    throw new ConfigError('signal', 'must be an AbortSignal');
  }
  return value as AbortSignal;
}

function checkOptions(options: ReconcileOptions): Checked {
  if (typeof options !== 'object' || options === null) {
    throw new ConfigError('options', 'expected { source, target, ... }');
  }
  const source = checkTable(options.source, 'source');
  const target = checkTable(options.target, 'target');
  const engines = { source: engineOf(source.driver, 'source'), target: engineOf(target.driver, 'target') };
  if (
    source.driver === target.driver &&
    source.table === target.table &&
    (source.schema ?? '') === (target.schema ?? '')
  ) {
    throw new ConfigError('target', 'is the same table as the source');
  }
  const where: Array<readonly [string, ReconcileFilterValue]> = [];
  if (options.where !== undefined) {
    if (typeof options.where !== 'object' || options.where === null || Array.isArray(options.where)) {
      throw new ConfigError('where', 'must be an object of column → value');
    }
    for (const [column, value] of Object.entries(options.where)) {
      configIdentifier(column, 'where');
      if (value !== null && !['string', 'number', 'bigint', 'boolean'].includes(typeof value)) {
        throw new ConfigError(
          'where',
          `the value of column "${column}" must be a string, number, bigint, boolean or null`,
        );
      }
      where.push([column, value]);
    }
  }
  if (options.onProgress !== undefined && typeof options.onProgress !== 'function') {
    throw new ConfigError('onProgress', 'must be a function');
  }
  if (options.pushdown !== undefined && typeof options.pushdown !== 'boolean') {
    throw new ConfigError('pushdown', 'must be a boolean');
  }
  if (options.plan !== undefined && options.plan !== 'source' && options.plan !== 'target') {
    throw new ConfigError('plan', 'must be "source" or "target"');
  }
  return {
    source,
    target,
    engines,
    key: identifierList(options.key, 'key'),
    columns: identifierList(options.columns, 'columns'),
    chunkSize: positiveInteger(options.chunkSize, 'chunkSize', DEFAULT_CHUNK_SIZE),
    maxMismatches: positiveInteger(options.maxMismatches, 'maxMismatches', DEFAULT_MAX_MISMATCHES, 0),
    where,
    signal: checkSignal(options.signal),
    onProgress: options.onProgress,
    pushdown: options.pushdown ?? true,
    plan: options.plan,
  };
}

function isPlainIdentifier(name: string): boolean {
  try {
    assertIdentifier(name);
    return true;
  } catch {
    return false;
  }
}

function columnOf(info: TableInfo, name: string, option: string): ColumnInfo {
  const column = info.columns.get(name);
  if (column === undefined) {
    throw new ConfigError(option, `column "${name}" is missing on the ${info.side} table "${info.table}"`, {
      details: { column: name, table: info.table, side: info.side },
    });
  }
  return column;
}

function sharedKind(a: ColumnInfo, b: ColumnInfo): ValueKind {
  if (a.kind === 'json' || b.kind === 'json') return 'json';
  if (a.kind === 'decimal' || b.kind === 'decimal') return 'decimal';
  return 'plain';
}

/** What `repair` needs from the reconcile that made a report. */
interface RepairContext {
  readonly source: SqlStore;
  readonly target: SqlStore;
  readonly key: readonly string[];
}

const CONTEXT: unique symbol = Symbol('strata.reconcile');

function attach<T extends object>(value: T, context: RepairContext): T {
  Object.defineProperty(value, CONTEXT, { value: context, enumerable: false });
  return value;
}

function contextOf(value: object): RepairContext | undefined {
  return (value as { [CONTEXT]?: RepairContext })[CONTEXT];
}

/**
 * Compares a table in two stores (same or different engines) and lists every mismatching key:
 * `missing` (source only), `extra` (target only) and `different` (with the differing columns).
 * Reads both tables in key order in bounded pages; never loads a table into memory. Invalid
 * options, unknown tables and columns missing on either side are `E_CONFIG` naming the option,
 * before any row is read; `signal` stops it with `E_ABORTED`; engine failures propagate.
 */
export async function reconcile(options: ReconcileOptions): Promise<ReconcileReport> {
  const started = performance.now();
  const o = checkOptions(options);
  checkAbort(o.signal, 'reconcile');
  const [src, tgt] = await Promise.all([
    readTable(o.source, 'source', o.engines.source),
    readTable(o.target, 'target', o.engines.target),
  ]);
  const key = o.key ?? [...src.primaryKey];
  if (key.length === 0) {
    throw new ConfigError('key', `the source table "${src.table}" has no primary key; pass key`);
  }
  if (o.key === undefined && !key.every(isPlainIdentifier)) {
    throw new ConfigError(
      'key',
      `the primary key of "${src.table}" has a column that is not a plain identifier`,
    );
  }
  for (const name of key) {
    columnOf(src, name, 'key');
    columnOf(tgt, name, 'key');
  }
  const columns = (o.columns ?? [...src.columns.keys()]).filter((name) => !key.includes(name));
  if (o.columns === undefined && !columns.every(isPlainIdentifier)) {
    throw new ConfigError(
      'columns',
      `"${src.table}" has a column that is not a plain identifier; list the columns`,
    );
  }
  for (const name of columns) {
    columnOf(src, name, 'columns');
    columnOf(tgt, name, 'columns');
  }
  for (const [name] of o.where) {
    columnOf(src, name, 'where');
    columnOf(tgt, name, 'where');
  }
  const srcKeys = key.map((n) => src.columns.get(n)!);
  const tgtKeys = key.map((n) => tgt.columns.get(n)!);
  const srcValues = columns.map((n) => src.columns.get(n)!);
  const tgtValues = columns.map((n) => tgt.columns.get(n)!);
  const kinds = {
    keys: srcKeys.map((c, i) => sharedKind(c, tgtKeys[i]!)),
    values: srcValues.map((c, i) => sharedKind(c, tgtValues[i]!)),
  };
  // Both sides must order keys alike: where they do not already, PostgreSQL text sorts bytewise.
  const collate = (mine: ColumnInfo, theirs: ColumnInfo) =>
    mine.order !== theirs.order && mine.order.startsWith('pg:');
  const pushdown =
    o.pushdown &&
    src.engine === 'postgres' &&
    tgt.engine === 'postgres' &&
    (src.version ?? 0) >= 120000 &&
    (tgt.version ?? 0) >= 120000 &&
    src.textSettings === tgt.textSettings &&
    srcKeys.every((c, i) => c.type === tgtKeys[i]!.type) &&
    srcValues.every((c, i) => c.type === tgtValues[i]!.type);
  const source = new SqlStore(
    src,
    srcKeys,
    srcValues,
    kinds,
    srcKeys.map((c, i) => collate(c, tgtKeys[i]!)),
    o.where,
    pushdown,
    o.signal,
  );
  const target = new SqlStore(
    tgt,
    tgtKeys,
    tgtValues,
    kinds,
    tgtKeys.map((c, i) => collate(c, srcKeys[i]!)),
    o.where,
    pushdown,
    o.signal,
  );
  const result = await compareStores(source, target, {
    chunkSize: o.chunkSize,
    leafSize: LEAF_ROWS,
    retainLimit: Math.min(MAX_RETAIN, Math.max(LEAF_ROWS, o.chunkSize * 2)),
    maxMismatches: o.maxMismatches,
    columns,
    signal: o.signal,
    onProgress: o.onProgress,
  });
  const named = (k: KeyTuple): ReconcileKey => Object.fromEntries(key.map((n, i) => [n, k.values[i]]));
  const mismatches: ReconcileMismatches = {
    missing: result.missing.map(named),
    extra: result.extra.map(named),
    different: result.different.map((d) => ({ key: named(d.key), columns: d.columns })),
  };
  const count = mismatches.missing.length + mismatches.extra.length + mismatches.different.length;
  const context: RepairContext = { source, target, key };
  const report: ReconcileReport = attach(
    {
      kind: 'reconcile-report',
      table: src.table,
      source: { driver: o.source.driver.name, schema: src.schema, table: src.table },
      target: { driver: o.target.driver.name, schema: tgt.schema, table: tgt.table },
      key,
      columns,
      hashing: result.hashing,
      chunks: result.chunks,
      chunksMismatched: result.chunksMismatched,
      rowsSource: result.rowsSource,
      rowsTarget: result.rowsTarget,
      mismatches,
      clean: count === 0 && !result.truncated,
      truncated: result.truncated,
      durationMs: performance.now() - started,
    },
    context,
  );
  if (o.plan !== undefined) report.plan = planRepair(report, o.plan);
  return report;
}

// ---------------------------------------------------------------------------------------------
// repair

/**
 * The plan that makes the other side equal to `from` for the keys of `report`: from the
 * source, insert `missing` into the target, update `different`, delete `extra`; from the target,
 * the reverse. `E_CONFIG` when `from` is not `source` or `target` or the report was not made by
 * `reconcile` in this process.
 */
export function planRepair(report: ReconcileReport, from: ReconcileSide): RepairPlan {
  if (from !== 'source' && from !== 'target') throw new ConfigError('from', 'must be "source" or "target"');
  const context = typeof report === 'object' && report !== null ? contextOf(report) : undefined;
  if (report?.kind !== 'reconcile-report' || context === undefined) {
    throw new ConfigError('report', 'must be a report returned by reconcile() in this process');
  }
  const { missing, extra, different } = report.mismatches;
  const plan: RepairPlan = {
    kind: 'repair-plan',
    from,
    repairs: from === 'source' ? 'target' : 'source',
    table: from === 'source' ? report.target.table : report.source.table,
    insert: from === 'source' ? missing : extra,
    update: different,
    delete: from === 'source' ? extra : missing,
    complete: !report.truncated,
  };
  return attach(plan, context);
}

/**
 * Applies a plan (or the plan of a report, from `options.from`): for every planned key, reads
 * the authoritative row as it is now, then, in transactions of `batchSize` keys on the repaired
 * side, inserts, updates (only differing columns) or deletes so the two rows match; keys that
 * already match are left alone, so running it twice changes nothing the second time. With
 * `dryRun` (the default) it changes nothing and returns the plan. Values are always bound.
 * `E_CONFIG` for a bad input or option; a failing batch rolls back and its error propagates
 * (earlier batches stay committed).
 */
export async function repair(
  input: ReconcileReport | RepairPlan,
  options: RepairOptions = {},
): Promise<RepairResult> {
  if (typeof options !== 'object' || options === null) throw new ConfigError('options', 'expected an object');
  if (options.from !== undefined && options.from !== 'source' && options.from !== 'target') {
    throw new ConfigError('from', 'must be "source" or "target"');
  }
  if (options.dryRun !== undefined && typeof options.dryRun !== 'boolean') {
    throw new ConfigError('dryRun', 'must be a boolean');
  }
  const batchSize = positiveInteger(options.batchSize, 'batchSize', 500);
  const signal = checkSignal(options.signal);
  let plan: RepairPlan;
  if (input?.kind === 'repair-plan') {
    if (options.from !== undefined && options.from !== input.from) {
      throw new ConfigError('from', 'differs from the side of the plan');
    }
    plan = input;
  } else if (input?.kind === 'reconcile-report') {
    const from = options.from ?? input.plan?.from;
    if (from === undefined) throw new ConfigError('from', 'is required: "source" or "target"');
    plan = input.plan?.from === from ? input.plan : planRepair(input, from);
  } else {
    throw new ConfigError('report', 'must be a report or plan returned by reconcile() in this process');
  }
  const context = contextOf(plan);
  if (context === undefined) {
    throw new ConfigError('report', 'must be a report or plan returned by reconcile() in this process');
  }
  const result: RepairResult = {
    dryRun: options.dryRun ?? true,
    plan,
    inserted: 0,
    updated: 0,
    deleted: 0,
    unchanged: 0,
    batches: 0,
  };
  if (result.dryRun) return result;

  const authority = plan.from === 'source' ? context.source : context.target;
  const repaired = plan.from === 'source' ? context.target : context.source;
  const toTuple = (k: ReconcileKey) =>
    keyTuple(
      context.key.map((n) => k[n]),
      repaired.keyKinds,
    );
  // Deletes first, then updates, then inserts: a unique value moving between keys frees up first.
  const actions: KeyTuple[] = [
    ...plan.delete.map(toTuple),
    ...plan.update.map((d) => toTuple(d.key)),
    ...plan.insert.map(toTuple),
  ];
  for (let i = 0; i < actions.length; i += batchSize) {
    checkAbort(signal, 'repair');
    const keys = actions.slice(i, i + batchSize);
    // Read before the transaction: both sides may be one SQLite driver, which a transaction holds.
    const wanted = await authority.fetchWith(authority.driver, keys, false);
    const counts = await repaired.driver.transaction(async (tx) => {
      const current = await repaired.fetchWith(tx, keys, false);
      const c = { inserted: 0, updated: 0, deleted: 0, unchanged: 0 };
      const inserts: FetchedRow[] = [];
      const updates: Array<[FetchedRow, number[]]> = [];
      const deletes: KeyTuple[] = [];
      for (const key of keys) {
        const want = wanted.get(key.token);
        const have = current.get(key.token);
        if (want === undefined && have === undefined) c.unchanged++;
        else if (want === undefined) deletes.push(have!.key);
        else if (have === undefined) inserts.push(want);
        else {
          const changed = want.tokens.flatMap((t, col) => (t === have.tokens[col] ? [] : [col]));
          if (changed.length === 0) c.unchanged++;
          else updates.push([want, changed]);
        }
      }
      for (const key of deletes) await repaired.delete(tx, key);
      for (const [row, changed] of updates) await repaired.update(tx, row, changed, authority);
      for (const row of inserts) await repaired.insert(tx, row, authority);
      c.deleted = deletes.length;
      c.updated = updates.length;
      c.inserted = inserts.length;
      return c;
    });
    result.inserted += counts.inserted;
    result.updated += counts.updated;
    result.deleted += counts.deleted;
    result.unchanged += counts.unchanged;
    result.batches++;
  }
  return result;
}
