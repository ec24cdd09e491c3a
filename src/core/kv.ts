/**
 * The key-value role: a store of string values with optional time-to-live, as used by caches,
 * leases, write-behind queues and position tokens. Implemented in process (memory) and on Redis.
 */
import { type Duration, parseDuration } from './duration.js';
import { ConfigError, ValidationError } from './errors.js';

/** Options for one write. */
export interface KeyValueSetOptions {
  /**
   * Time to live; the entry is gone once it has passed. Omitted: the store's default, or none.
   * `Infinity` or `'infinite'` means no expiry even when the store has a default; zero is refused.
   */
  ttl?: Duration | undefined;
}

/** One entry of a batch write. */
export interface KeyValueEntry extends KeyValueSetOptions {
  key: string;
  value: string;
}

/**
 * A key-value store. Keys are non-empty strings of at most `maxKeyLength` characters; values
 * are strings. Both must be well-formed unicode (no lone surrogates), so they survive UTF-8.
 * Every store scopes its keys under its own prefix, so `clear()` never touches keys outside it
 * (on Redis a prefix that begins another, `app` and `app2`, does overlap: end prefixes with a
 * separator such as `app:`). An unreachable server is `E_CONNECTION` / `E_TIMEOUT`, an error
 * reply from it `E_QUERY`; invalid arguments `E_VALIDATION` or `E_CONFIG`; use after `close()`
 * `E_CLOSED`.
 */
export interface KeyValueStore {
  /** A label for messages, metrics and the dashboard (`memory`, `redis`). */
  readonly name: string;
  /** The longest key accepted, in UTF-16 code units (default 1024). */
  readonly maxKeyLength: number;
  /** The value of `key`, or `undefined` when it is missing or expired. */
  get(key: string): Promise<string | undefined>;
  /** The values of `keys`, in order, `undefined` where missing; one round trip on remote stores. */
  getMany(keys: readonly string[]): Promise<(string | undefined)[]>;
  /** Stores `value` under `key`, replacing any previous value and TTL. */
  set(key: string, value: string, options?: KeyValueSetOptions): Promise<void>;
  /** Stores several entries; one round trip on remote stores. Not atomic across keys. */
  setMany(entries: readonly KeyValueEntry[]): Promise<void>;
  /** Removes `key`; true when it existed. */
  delete(key: string): Promise<boolean>;
  /** Removes `keys`; returns how many existed. */
  deleteMany(keys: readonly string[]): Promise<number>;
  /** True when `key` exists and has not expired. */
  has(key: string): Promise<boolean>;
  /**
   * Remaining time to live of `key` in milliseconds; `Infinity` when it has no TTL, `undefined`
   * when it is missing.
   */
  ttl(key: string): Promise<number | undefined>;
  /** Removes every key under this store's prefix, and nothing else. */
  clear(): Promise<void>;
  /**
   * Stores `value` only if `key` is absent (atomically, across processes for remote stores);
   * true when this call stored it. Used for leases: one loader per key across processes.
   */
  setIfAbsent(key: string, value: string, options?: KeyValueSetOptions): Promise<boolean>;
  /** Removes `key` only if its value is still `value` (atomically); true when removed. */
  deleteIfEquals(key: string, value: string): Promise<boolean>;
  /** Releases the connection; safe to call twice. A user's own client is left open. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Argument checks shared by every key-value backend

/** The default longest key, in UTF-16 code units. */
export const DEFAULT_MAX_KEY_LENGTH = 1024;

function isWellFormed(text: string): boolean {
  return (text as unknown as { isWellFormed(): boolean }).isWellFormed();
}

/**
 * Checks one key: a non-empty, well-formed string of at most `maxKeyLength` code units (a lone
 * surrogate would not survive a UTF-8 store). Throws `E_VALIDATION` with `path`.
 */
export function checkKey(
  key: unknown,
  maxKeyLength: number,
  path: ReadonlyArray<string | number> = ['key'],
): asserts key is string {
  let problem: string | undefined;
  if (typeof key !== 'string') problem = 'must be a string';
  else if (key.length === 0) problem = 'must not be empty';
  else if (key.length > maxKeyLength) problem = `must be at most ${maxKeyLength} characters`;
  else if (!isWellFormed(key)) problem = 'must be well-formed unicode (no lone surrogates)';
  if (problem !== undefined) throw new ValidationError([{ path, message: problem }], { subject: 'key' });
}

/** Checks an array of keys; `E_VALIDATION` names the first bad one by index. */
export function checkKeys(keys: unknown, maxKeyLength: number): asserts keys is readonly string[] {
  if (!Array.isArray(keys)) {
    throw new ValidationError([{ path: ['keys'], message: 'must be an array' }], { subject: 'keys' });
  }
  for (let i = 0; i < keys.length; i++) checkKey(keys[i], maxKeyLength, ['keys', i]);
}

/** Checks one value: a well-formed string. Throws `E_VALIDATION` with `path`. */
export function checkValue(
  value: unknown,
  path: ReadonlyArray<string | number> = ['value'],
): asserts value is string {
  let problem: string | undefined;
  if (typeof value !== 'string') problem = 'must be a string';
  else if (!isWellFormed(value)) problem = 'must be well-formed unicode (no lone surrogates)';
  if (problem !== undefined) throw new ValidationError([{ path, message: problem }], { subject: 'value' });
}

/** Checks the entries of a batch write is an array of objects; `E_VALIDATION` names the first bad one. */
export function checkEntries(entries: unknown): asserts entries is readonly KeyValueEntry[] {
  if (!Array.isArray(entries)) {
    throw new ValidationError([{ path: ['entries'], message: 'must be an array' }], { subject: 'entries' });
  }
  entries.forEach((entry: unknown, i) => {
    if (typeof entry !== 'object' || entry === null) {
      throw new ValidationError(
        [{ path: ['entries', i], message: 'must be an object { key, value, ttl? }' }],
        {
          subject: 'entries',
        },
      );
    }
  });
}

/**
 * The time to live a write asks for, in ms: the store's default when `ttl` is absent, `Infinity`
 * for `Infinity` / `'infinite'` (no expiry). Zero, negative or malformed is `E_CONFIG` naming `ttl`.
 */
export function resolveTtl(options: KeyValueSetOptions | undefined, defaultTtlMs: number): number {
  if (options !== undefined && (typeof options !== 'object' || options === null)) {
    throw new ConfigError('options', 'must be an object such as { ttl: "5m" }');
  }
  const ttl = options?.ttl;
  if (ttl === undefined) return defaultTtlMs;
  const ms = parseDuration(ttl, 'ttl', { allowZero: false, allowInfinite: true });
  if (Number.isFinite(ms) && ms > Number.MAX_SAFE_INTEGER) throw new ConfigError('ttl', 'is too large');
  return ms;
}
