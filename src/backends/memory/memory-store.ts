import { LRUCache } from 'lru-cache';
import { type Clock, systemClock } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ClosedError, ConfigError, ValidationError } from '../../core/errors.js';
import {
  checkEntries,
  checkKey,
  checkKeys,
  checkValue,
  type KeyValueEntry,
  type KeyValueSetOptions,
  type KeyValueStore,
  resolveTtl,
} from '../../core/kv.js';

/** Options for `createMemoryStore`. */
export interface MemoryStoreOptions {
  /** A namespace label; a memory store's entries are private to it, so prefixes never collide (default ''). */
  prefix?: string;
  /**
   * Most entries held, at most 2^24 since lru-cache preallocates a slot per entry; the least
   * recently used is evicted beyond it (default 10 000).
   */
  maxItems?: number;
  /**
   * Most bytes held, counted as 2 bytes per UTF-16 code unit of key and value (default 64 MiB,
   * `Infinity` for no bound); the least recently used entries are evicted beyond it.
   */
  maxBytes?: number;
  /** Time to live of writes that give none (default: none). */
  defaultTtl?: Duration;
  /** Longest key accepted, in UTF-16 code units (default 1024). */
  maxKeyLength?: number;
  /** The source of time for TTLs (default the system clock); pass a `FakeClock` in tests. */
  clock?: Clock;
  /** A label for messages, metrics and the dashboard (default `memory`). */
  name?: string;
}

/** What a memory store holds right now, for metrics. */
export interface MemoryStoreStats {
  /** Entries held, including expired ones not reclaimed yet. */
  items: number;
  /** Bytes held, counted as 2 per UTF-16 code unit of keys and values. */
  bytes: number;
  /** Entries evicted to respect `maxItems` or `maxBytes` since the store was created. */
  evictions: number;
}

/** An in-process key-value store with LRU eviction, plus synchronous access for hot paths. */
export interface MemoryStore extends KeyValueStore {
  /** The namespace label given at creation. */
  readonly prefix: string;
  /** Longest key accepted, in UTF-16 code units. */
  readonly maxKeyLength: number;
  /** Like `get`, without a promise; throws `E_VALIDATION` or `E_CLOSED`. */
  getSync(key: string): string | undefined;
  /** Like `set`, without a promise; throws `E_VALIDATION`, `E_CONFIG` (ttl) or `E_CLOSED`. */
  setSync(key: string, value: string, options?: KeyValueSetOptions): void;
  /** Entries and bytes held and evictions so far. */
  stats(): MemoryStoreStats;
}

interface Entry {
  value: string;
  /** Clock time at which the entry expires; `Infinity` when it has no TTL. */
  expiresAt: number;
}

const DEFAULT_MAX_ITEMS = 10_000;
const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
const DEFAULT_MAX_KEY_LENGTH = 1024;
const MAX_ITEMS_LIMIT = 2 ** 24;

function positiveInteger(value: unknown, option: string, allowInfinite: boolean): number {
  if (allowInfinite && value === Number.POSITIVE_INFINITY) return value;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new ConfigError(option, `must be a positive integer${allowInfinite ? ' or Infinity' : ''}`);
  }
  return value;
}

/**
 * Creates an in-process key-value store on lru-cache, bounded by entry count and by bytes.
 * TTLs are measured on `clock` and checked on every read, so a `FakeClock` drives them in tests.
 * Throws `E_CONFIG` naming the option when an option is invalid.
 */
export function createMemoryStore(options: MemoryStoreOptions = {}): MemoryStore {
  const prefix = options.prefix ?? '';
  if (typeof prefix !== 'string') throw new ConfigError('prefix', 'must be a string');
  const maxItems = positiveInteger(options.maxItems ?? DEFAULT_MAX_ITEMS, 'maxItems', false);
  if (maxItems > MAX_ITEMS_LIMIT) throw new ConfigError('maxItems', `must be at most ${MAX_ITEMS_LIMIT}`);
  const maxBytes = positiveInteger(options.maxBytes ?? DEFAULT_MAX_BYTES, 'maxBytes', true);
  const maxKeyLength = positiveInteger(options.maxKeyLength ?? DEFAULT_MAX_KEY_LENGTH, 'maxKeyLength', false);
  const defaultTtlMs =
    options.defaultTtl === undefined
      ? Number.POSITIVE_INFINITY
      : parseDuration(options.defaultTtl, 'defaultTtl', { allowZero: false, allowInfinite: true });
  const clock = options.clock ?? systemClock;
  if (typeof clock?.now !== 'function') throw new ConfigError('clock', 'must have a now() method');
  const name = options.name ?? 'memory';
  if (typeof name !== 'string' || name.length === 0) {
    throw new ConfigError('name', 'must be a non-empty string');
  }
  return new MemoryStoreImpl({ prefix, maxItems, maxBytes, maxKeyLength, defaultTtlMs, clock, name });
}

interface ResolvedOptions {
  prefix: string;
  maxItems: number;
  maxBytes: number;
  maxKeyLength: number;
  defaultTtlMs: number;
  clock: Clock;
  name: string;
}

function entrySize(key: string, value: string): number {
  return (key.length + value.length) * 2;
}

class MemoryStoreImpl implements MemoryStore {
  readonly name: string;
  readonly prefix: string;
  readonly maxKeyLength: number;
  readonly #cache: LRUCache<string, Entry>;
  readonly #clock: Clock;
  readonly #defaultTtlMs: number;
  readonly #maxBytes: number;
  #evictions = 0;
  #closed = false;

  constructor(o: ResolvedOptions) {
    this.name = o.name;
    this.prefix = o.prefix;
    this.maxKeyLength = o.maxKeyLength;
    this.#clock = o.clock;
    this.#defaultTtlMs = o.defaultTtlMs;
    this.#maxBytes = o.maxBytes;
    // TTLs are kept here rather than in lru-cache: its `perf` option could read our clock, but it
    // treats a start time of 0 as "no TTL" and caches the time on real timers between reads.
    const dispose = (_value: Entry, _key: string, reason: LRUCache.DisposeReason) => {
      if (reason === 'evict') this.#evictions++;
    };
    this.#cache = new LRUCache<string, Entry>({
      max: o.maxItems,
      maxSize: Number.isFinite(o.maxBytes) ? o.maxBytes : undefined,
      // Without a byte bound, lru-cache still tracks sizes (for stats) when an entry bound is set.
      maxEntrySize: Number.isFinite(o.maxBytes) ? o.maxBytes : Number.MAX_SAFE_INTEGER,
      sizeCalculation: (entry, key) => entrySize(key, entry.value),
      dispose,
    });
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError(this.name);
  }

  #checkValue(key: string, value: unknown, path: ReadonlyArray<string | number>): asserts value is string {
    checkValue(value, path);
    if (entrySize(key, value) > this.#maxBytes) {
      throw new ValidationError([{ path, message: 'key and value exceed maxBytes' }], { subject: 'value' });
    }
  }

  #expiresAt(options: KeyValueSetOptions | undefined): number {
    const ms = resolveTtl(options, this.#defaultTtlMs);
    return Number.isFinite(ms) ? this.#clock.now() + ms : Number.POSITIVE_INFINITY;
  }

  /** The live entry of `key` without touching its recency; reclaims it when expired. */
  #peek(key: string): Entry | undefined {
    const entry = this.#cache.peek(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= this.#clock.now()) {
      this.#cache.delete(key);
      return undefined;
    }
    return entry;
  }

  getSync(key: string): string | undefined {
    if (this.#closed) throw new ClosedError(this.name);
    checkKey(key, this.maxKeyLength, ['key']);
    const entry = this.#cache.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt !== Number.POSITIVE_INFINITY && entry.expiresAt <= this.#clock.now()) {
      this.#cache.delete(key);
      return undefined;
    }
    return entry.value;
  }

  setSync(key: string, value: string, options?: KeyValueSetOptions): void {
    this.#assertOpen();
    checkKey(key, this.maxKeyLength, ['key']);
    this.#checkValue(key, value, ['value']);
    this.#cache.set(key, { value, expiresAt: this.#expiresAt(options) });
  }

  async get(key: string): Promise<string | undefined> {
    return this.getSync(key);
  }

  async getMany(keys: readonly string[]): Promise<(string | undefined)[]> {
    this.#assertOpen();
    checkKeys(keys, this.maxKeyLength);
    return keys.map((key) => this.getSync(key));
  }

  async set(key: string, value: string, options?: KeyValueSetOptions): Promise<void> {
    this.setSync(key, value, options);
  }

  async setMany(entries: readonly KeyValueEntry[]): Promise<void> {
    this.#assertOpen();
    checkEntries(entries);
    // Check every entry before writing any, so bad input never leaves a partial write.
    const ready: [string, Entry][] = entries.map((entry, i) => {
      const { key, value } = entry as KeyValueEntry;
      checkKey(key, this.maxKeyLength, ['entries', i, 'key']);
      this.#checkValue(key, value, ['entries', i, 'value']);
      return [key, { value, expiresAt: this.#expiresAt(entry as KeyValueEntry) }];
    });
    for (const [key, entry] of ready) this.#cache.set(key, entry);
  }

  async setIfAbsent(key: string, value: string, options?: KeyValueSetOptions): Promise<boolean> {
    this.#assertOpen();
    checkKey(key, this.maxKeyLength, ['key']);
    this.#checkValue(key, value, ['value']);
    const expiresAt = this.#expiresAt(options);
    if (this.#peek(key) !== undefined) return false;
    this.#cache.set(key, { value, expiresAt });
    return true;
  }

  async deleteIfEquals(key: string, value: string): Promise<boolean> {
    this.#assertOpen();
    checkKey(key, this.maxKeyLength, ['key']);
    checkValue(value, ['value']);
    if (this.#peek(key)?.value !== value) return false;
    this.#cache.delete(key);
    return true;
  }

  async delete(key: string): Promise<boolean> {
    this.#assertOpen();
    checkKey(key, this.maxKeyLength, ['key']);
    const live = this.#peek(key) !== undefined;
    if (live) this.#cache.delete(key);
    return live;
  }

  async deleteMany(keys: readonly string[]): Promise<number> {
    this.#assertOpen();
    checkKeys(keys, this.maxKeyLength);
    let count = 0;
    for (const key of keys) {
      if (this.#peek(key) === undefined) continue;
      this.#cache.delete(key);
      count++;
    }
    return count;
  }

  async has(key: string): Promise<boolean> {
    this.#assertOpen();
    checkKey(key, this.maxKeyLength, ['key']);
    return this.#peek(key) !== undefined;
  }

  async ttl(key: string): Promise<number | undefined> {
    this.#assertOpen();
    checkKey(key, this.maxKeyLength, ['key']);
    const entry = this.#peek(key);
    if (entry === undefined) return undefined;
    return Number.isFinite(entry.expiresAt) ? entry.expiresAt - this.#clock.now() : Number.POSITIVE_INFINITY;
  }

  async clear(): Promise<void> {
    this.#assertOpen();
    this.#cache.clear();
  }

  stats(): MemoryStoreStats {
    return { items: this.#cache.size, bytes: this.#cache.calculatedSize, evictions: this.#evictions };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#cache.clear();
  }
}
