/**
 * The change-log roles: the change type, positions, where changes come from (`ChangeSource`),
 * where they are kept (`ChangeLog`) and where consumers remember their progress
 * (`CheckpointStore`). Every derived view in strata is a consumer of one change log.
 */
import { ConfigError, StrataError } from './errors.js';

// ---------------------------------------------------------------------------------------------
// Positions

declare const POSITION: unique symbol;

/**
 * A position in one source's stream of committed changes, as a short string token
 * (`social@00000000000001a4.00000000`): the source's name, a 64-bit major part (a PostgreSQL
 * commit LSN, an outbox sequence) and a 32-bit minor part (the change's index within its
 * transaction). Tokens of one source compare in commit order; they travel in cookies, headers
 * and queued jobs, and a later read can demand "at least this position".
 */
export type Position = string & { readonly [POSITION]: true };

/** The parts of a position. */
export interface PositionParts {
  source: string;
  major: bigint;
  minor: number;
}

const SOURCE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
const TOKEN = /^([A-Za-z0-9_][A-Za-z0-9_.-]{0,63})@([0-9a-f]{16})\.([0-9a-f]{8})$/;
const MAX_MAJOR = (1n << 64n) - 1n;

/** Throws `E_CONFIG` naming `option` unless `name` is a valid source name (letters, digits, `_.-`, up to 64). */
export function assertSourceName(name: unknown, option = 'source'): asserts name is string {
  if (typeof name !== 'string' || !SOURCE_NAME.test(name)) {
    throw new ConfigError(option, 'a source name is 1-64 letters, digits, underscores, dots or dashes');
  }
}

function positionError(problem: string): StrataError {
  return new StrataError('E_POSITION', `invalid position: ${problem}`);
}

/** Builds the position token of (`source`, `major`, `minor`); `E_POSITION` when out of range. */
export function makePosition(source: string, major: bigint | number, minor = 0): Position {
  assertSourceName(source);
  const big = typeof major === 'bigint' ? major : BigInt(major);
  if (big < 0n || big > MAX_MAJOR) throw positionError('major part out of range');
  if (!Number.isInteger(minor) || minor < 0 || minor > 0xffff_ffff)
    throw positionError('minor part out of range');
  return `${source}@${big.toString(16).padStart(16, '0')}.${minor.toString(16).padStart(8, '0')}` as Position;
}

/** Splits a token into its parts; `E_POSITION` for anything that is not a well-formed token. */
export function parsePosition(token: unknown): PositionParts {
  if (typeof token !== 'string') throw positionError('a position is a string token');
  const m = TOKEN.exec(token);
  if (m === null) throw positionError('not a position token');
  return { source: m[1]!, major: BigInt(`0x${m[2]}`), minor: Number.parseInt(m[3]!, 16) };
}

/** True when `value` is a well-formed position token. */
export function isPosition(value: unknown): value is Position {
  return typeof value === 'string' && TOKEN.test(value);
}

/**
 * Orders two positions of the same source: negative, zero or positive. Positions of different
 * sources have no order: `E_POSITION`.
 */
export function comparePositions(a: Position | string, b: Position | string): number {
  const pa = parsePosition(a);
  const pb = parsePosition(b);
  if (pa.source !== pb.source) throw positionError('positions of different sources cannot be compared');
  // Same source and fixed-width hex: the token order is the position order.
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The source a position belongs to. */
export function positionSource(position: Position | string): string {
  return parsePosition(position).source;
}

// ---------------------------------------------------------------------------------------------
// Changes

/** What happened to a row; `message` is an explicit outbox message, not a row change. */
export type ChangeOperation = 'insert' | 'update' | 'delete' | 'message';

/** One committed change of one row (or one outbox message), as captured from its source. */
export interface Change<R extends Record<string, unknown> = Record<string, unknown>> {
  /** The source's name (a database the capture runs on). */
  source: string;
  /** The table (or, for a message, its topic). */
  table: string;
  op: ChangeOperation;
  /** The primary key: column to value (for a message, `{ key }`). */
  key: Record<string, unknown>;
  /** The row before the change, where the engine gives it (updates and deletes), else null. */
  before: R | null;
  /** The row after the change (inserts, updates, messages), else null. */
  after: R | null;
  /** Where the change sits in its source, in commit order. */
  position: Position;
  /** The source transaction, where the engine names it. */
  txId: string | null;
  /** When the transaction committed, epoch ms. */
  commitTime: number;
  /** True for rows read by an initial snapshot rather than streamed. */
  snapshot?: boolean;
  /**
   * Columns whose value did not change and that the engine did not send (PostgreSQL's unchanged
   * TOASTed values without REPLICA IDENTITY FULL); they are absent from `after`.
   */
  unchanged?: string[];
  /** Headers of an outbox message. */
  headers?: Record<string, string>;
}

/** A change as stored in a log: with the log's own offset, increasing from 1. */
export interface LogEntry<R extends Record<string, unknown> = Record<string, unknown>> extends Change<R> {
  offset: number;
}

/** Canonical JSON (object keys sorted) for grouping and hashing keys. */
export function stableJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    return typeof value === 'bigint' ? JSON.stringify(value.toString()) : (JSON.stringify(value) ?? 'null');
  }
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  if (value instanceof Date) return JSON.stringify(value.toISOString());
  const entries = Object.keys(value)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`);
  return `{${entries.join(',')}}`;
}

/** The identity of a change's row, for per-key ordering: table and canonical key. */
export function changeKey(change: Pick<Change, 'table' | 'key'>): string {
  return `${change.table}|${stableJson(change.key)}`;
}

// ---------------------------------------------------------------------------------------------
// Roles

/**
 * Where changes come from: a database's committed changes in commit order. A source delivers
 * a batch, waits for the callback to settle, and only then delivers the next (backpressure).
 * What it delivered stays available until `acknowledge` (at least once, never skipped).
 */
export interface ChangeSource {
  /** The source's name, the `source` of its changes and positions. */
  readonly name: string;
  /**
   * Delivers changes after the last acknowledged position to `onChanges`, in commit order,
   * until `stop()`. Rejects only if the source cannot start (`E_CONFIG`, `E_CONNECTION`).
   */
  start(onChanges: (changes: Change[]) => Promise<void>): Promise<void>;
  /** Everything up to and including `position` is durably elsewhere; the source may discard it. */
  acknowledge(position: Position): Promise<void>;
  /** Stops delivering; resolves once the current callback settled. Safe to call twice. */
  stop(): Promise<void>;
}

/** What `ChangeLog.append` did. */
export interface AppendResult {
  /** Entries written. */
  appended: number;
  /** Changes skipped because their position was already in the log. */
  duplicates: number;
  /** The offset of the last entry in the log after the append (0 when empty). */
  lastOffset: number;
}

/** Options for `ChangeLog.read`. */
export interface ReadOptions {
  /** Only entries of these tables (default all). */
  tables?: readonly string[];
}

/**
 * A durable, ordered log of changes. Offsets increase from 1 without reuse. Appending is
 * idempotent per source: a change whose position is not after the last appended position of its
 * source (or whose position the log has seen within its dedup window) is skipped, so a relay may
 * re-append after a crash.
 */
export interface ChangeLog {
  /** A label for messages, metrics and the dashboard. */
  readonly name: string;
  /** Appends in order; durable when it resolves. `E_CONNECTION` / `E_TIMEOUT` when the log is unreachable. */
  append(changes: readonly Change[]): Promise<AppendResult>;
  /** Up to `limit` entries with offset greater than `after`, in offset order. */
  read(after: number, limit: number, options?: ReadOptions): Promise<LogEntry[]>;
  /** The offset of the newest entry, 0 when empty. */
  head(): Promise<number>;
  /** The last position appended for `source`, if the log can tell. */
  lastPosition(source: string): Promise<Position | undefined>;
  /**
   * Calls `listener` (at most once per burst) when entries may have been appended, so readers
   * need not poll fast; returns a function that stops it. A log may call it once right away
   * (entries may have arrived before the watch was in place). Readers must still poll now and then.
   */
  watch(listener: () => void): () => void;
  /** Releases connections; safe to call twice. */
  close(): Promise<void>;
}

/** A consumer's durable progress. */
export interface Checkpoint {
  /** The offset of the last entry fully processed (0: nothing yet). */
  offset: number;
  updatedAt: number;
}

/** A consumer's exclusive right to process, with a fencing epoch that grows on each takeover. */
export interface Lease {
  consumer: string;
  owner: string;
  epoch: number;
  expiresAt: number;
}

/** A change that failed its handler too often, kept aside with what went wrong. */
export interface DeadLetter {
  consumer: string;
  offset: number;
  table: string;
  key: Record<string, unknown>;
  position: Position;
  attempts: number;
  /** The error's code (or class name) and its safe message. */
  errorCode: string;
  errorMessage: string;
  failedAt: number;
  /** The entry itself, for replay. */
  entry: LogEntry;
}

/**
 * Where consumers keep checkpoints, leases and dead letters. Saving a checkpoint with a fencing
 * epoch fails with `E_FENCED` once another owner holds a newer lease, so a stalled process that
 * wakes up cannot move a checkpoint it no longer owns.
 */
export interface CheckpointStore {
  load(consumer: string): Promise<Checkpoint | undefined>;
  /** Moves the checkpoint to `offset` (never backwards); `E_FENCED` with a stale `epoch`. */
  save(consumer: string, offset: number, epoch?: number): Promise<void>;
  /** Takes or renews the lease for `owner`; undefined when another live owner holds it. */
  acquire(consumer: string, owner: string, ttlMs: number): Promise<Lease | undefined>;
  /** Gives the lease up (only if `owner` holds it). */
  release(consumer: string, owner: string): Promise<void>;
  /** Stores a dead letter (idempotent per consumer and offset). */
  deadLetter(letter: DeadLetter): Promise<void>;
  /** Dead letters of `consumer`, oldest first. */
  deadLetters(consumer: string, limit?: number): Promise<DeadLetter[]>;
  /** Removes a dead letter (after a replay or a decision to drop it). */
  removeDeadLetter(consumer: string, offset: number): Promise<boolean>;
  /** Every consumer with a checkpoint or lease, for `strata changes consumers`. */
  consumers(): Promise<
    Array<{ consumer: string; checkpoint?: Checkpoint; lease?: Lease; deadLetters: number }>
  >;
}

// ---------------------------------------------------------------------------------------------
// The wire form every log stores

/**
 * Encodes a change (or entry) as JSON text that every log stores the same way: bytes become
 * `{"$bytes": base64}`, bigints `{"$bigint": "digits"}`, dates ISO strings.
 */
export function serializeChange(change: Change | LogEntry): string {
  return JSON.stringify(change, (_key, value: unknown) => {
    if (typeof value === 'bigint') return { $bigint: value.toString() };
    if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('base64') };
    if (value !== null && typeof value === 'object' && (value as { type?: unknown }).type === 'Buffer') {
      // Buffer#toJSON ran before the replacer: { type: 'Buffer', data: [...] }.
      const data = (value as { data?: unknown }).data;
      if (Array.isArray(data)) return { $bytes: Buffer.from(data as number[]).toString('base64') };
    }
    return value;
  });
}

/** Decodes `serializeChange` output; malformed text is `E_CORRUPT`. */
export function deserializeChange<T extends Change | LogEntry = LogEntry>(text: string): T {
  try {
    return JSON.parse(text, (_key, value: unknown) => {
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
        const keys = Object.keys(value);
        if (keys.length === 1) {
          const v = value as { $bigint?: unknown; $bytes?: unknown };
          if (typeof v.$bigint === 'string') return BigInt(v.$bigint);
          if (typeof v.$bytes === 'string') return new Uint8Array(Buffer.from(v.$bytes, 'base64'));
        }
      }
      return value;
    }) as T;
  } catch (err) {
    throw new StrataError('E_CORRUPT', 'a stored change could not be decoded', { cause: err });
  }
}
