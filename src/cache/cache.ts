/**
 * `createCache`: cache-aside (`getOrSet`), read-through and write-through on an in-process tier
 * (L1) and an optional shared tier (L2, any key-value store: Redis in production), kept
 * coherent across processes by a bus and by the change log.
 *
 * - One load per key at a time in a process (single flight), and across processes by a lease
 *   in L2 (only the holder loads; the others wait briefly, or take the stale value).
 * - Grace: a logically expired value stays usable as a fallback when the loader fails or is slow
 *   (soft timeout: answer stale, keep loading in the background; hard timeout: stop waiting).
 * - Tags and namespaces are invalidated by timestamp, not by scanning keys.
 * - A failing L2 never hangs a caller: every call is bounded, a circuit breaker skips it while it
 *   fails, reads fall back to the loader, and failed writes are counted and reported.
 * - Stale sets are prevented: a load that started before an invalidation of its key does not
 *   write its (possibly old) result into the cache.
 */
import { randomBytes } from 'node:crypto';
import { createLruMap, type LruMap } from '../backends/memory/memory-lru.js';
import { withTimeout } from '../core/async.js';
import type { BusSubscription, MessageBus } from '../core/bus.js';
import { type Clock, sleep, systemClock } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ClosedError, ConfigError, isStrataError, TimeoutError, ValidationError } from '../core/errors.js';
import type { KeyValueStore } from '../core/kv.js';
import { type CacheEntry, decodeEntry, encodeEntry } from './entry.js';

// ---------------------------------------------------------------------------------------------
// Options and public types

/** Options of a cache; every duration is a number of ms or a string such as `'5m'`. */
export interface CacheOptions {
  /** The in-process tier (default 10,000 entries, no byte bound); `false` for a shared tier only. */
  memory?: false | { maxItems?: number; maxBytes?: number };
  /** The shared tier (a `createRedisStore`, or any `KeyValueStore`). */
  remote?: KeyValueStore;
  /** Keeps in-process copies coherent across processes (`createRedisBus`, `createNatsBus`). */
  bus?: MessageBus;
  /**
   * Namespace of every key and of the bus channel (default none). With a prefix, `clear()`
   * clears only this cache's keys, even in a shared tier used by others.
   */
  prefix?: string;
  /** Time to live of a fresh value (default `5m`). */
  ttl?: Duration;
  /** Spread expiries by up to this share of the TTL, up or down (0..0.5, default 0). */
  jitter?: number;
  /** How long an expired value stays usable as a fallback (default 0: no grace). */
  grace?: Duration;
  /** Time to live of a "not found" answer (default `30s`). */
  negativeTtl?: Duration;
  /** Loader timeouts: `soft` answers stale (if any) and keeps loading; `hard` stops waiting. */
  timeouts?: { soft?: Duration; hard?: Duration };
  /**
   * Cross-process loading lease in the shared tier (default on with a shared tier): `ttl` is how
   * long a dead holder blocks others (default `10s`), `wait` how long others wait (default `5s`).
   */
  lease?: false | { ttl?: Duration; wait?: Duration };
  /** Bound of each call to the shared tier (default `250ms`). */
  remoteTimeout?: Duration;
  /** Skip the shared tier after `failures` failed calls in a row, for `resetAfter` (default 5, `10s`). */
  breaker?: false | { failures?: number; resetAfter?: Duration };
  /** Largest serialized value (default 1 MiB). */
  maxValueBytes?: number;
  clock?: Clock;
  /** Where background errors go: failed shared-tier writes, failed background loads, bus failures. */
  onError?: (err: unknown) => void;
}

/** Options of one read or write. */
export interface EntryOptions {
  ttl?: Duration;
  grace?: Duration;
  tags?: readonly string[];
}

/** What a loader can say besides returning the value. */
export interface LoaderContext {
  /** The key being loaded (without the namespace). */
  key: string;
  /** The stale value, when there is one. */
  stale: unknown;
  /** Use this TTL for this value (chosen from the value). */
  setTtl(ttl: Duration): void;
  /** Tag this value. */
  setTags(tags: readonly string[]): void;
  /** Do not cache this result. */
  skip(): void;
  /** The thing does not exist: cache that briefly (`negativeTtl`) and answer `undefined`. */
  notFound(): undefined;
}

/** Options of `getOrSet`. */
export interface GetOrSetOptions extends EntryOptions {
  timeouts?: { soft?: Duration; hard?: Duration };
  negativeTtl?: Duration;
}

/** Figures of one tier. */
export interface TierStats {
  hits: number;
  misses: number;
  staleHits: number;
  sets: number;
  deletes: number;
  errors: number;
}

/** What the cache has done, for metrics and the dashboard. */
export interface CacheStats {
  memory: TierStats & { items: number; bytes: number; evictions: number };
  remote:
    | (TierStats & { timeouts: number; breaker: 'closed' | 'open' | 'half-open'; skipped: number })
    | undefined;
  loads: number;
  loadErrors: number;
  staleServed: number;
  negativeHits: number;
  leaseWaits: number;
  coalesced: number;
  staleSetsPrevented: number;
  busMessages: number;
  l1Flushes: number;
}

/** A cache (or a namespace of one). */
export interface Cache {
  /** The fresh value of `key`, or undefined; `allowStale` also returns a value in grace. */
  get<T = unknown>(key: string, options?: { allowStale?: boolean }): Promise<T | undefined>;
  /** Values of `keys` in order (one round trip to the shared tier for L1 misses). */
  getMany<T = unknown>(keys: readonly string[]): Promise<(T | undefined)[]>;
  /** The cached value, or the loader's (stored on the way). See the module comment. */
  getOrSet<T>(
    key: string,
    loader: (ctx: LoaderContext) => Promise<T> | T,
    options?: GetOrSetOptions,
  ): Promise<T>;
  set(key: string, value: unknown, options?: EntryOptions): Promise<void>;
  /** Stores several values (one round trip to the shared tier). */
  setMany(entries: ReadonlyArray<{ key: string; value: unknown } & EntryOptions>): Promise<void>;
  has(key: string): Promise<boolean>;
  delete(key: string): Promise<void>;
  deleteMany(keys: readonly string[]): Promise<void>;
  /** Marks `key` logically expired: stale, still a fallback until its grace ends. */
  expire(key: string): Promise<void>;
  /** Removes every value carrying one of `tags`. */
  deleteByTag(tags: readonly string[]): Promise<void>;
  /** Marks every value carrying one of `tags` logically expired. */
  expireByTag(tags: readonly string[]): Promise<void>;
  /** Removes every value of this cache or namespace. */
  clear(): Promise<void>;
  /** A view whose keys live under `name`; `clear()` on it clears only them. */
  namespace(name: string): Cache;
  /** Read-through: a named reader that loads missing values through `load`. */
  readThrough<I, V>(spec: {
    key: (id: I) => string;
    load: (id: I) => Promise<V>;
    ttl?: Duration;
  }): ReadThrough<I, V>;
  /** Write-through: a named writer that writes the store first, then the cache. */
  writeThrough<I, V>(spec: {
    key: (id: I) => string;
    write: (id: I, value: V) => Promise<void>;
    ttl?: Duration;
  }): WriteThrough<I, V>;
  /** Drops in-process copies (for example after a gap in invalidations). */
  flushLocal(): void;
  stats(): CacheStats;
  /** Stops the bus subscription; the tiers are the caller's to close. */
  close(): Promise<void>;
}

/** Read-through reader. */
export interface ReadThrough<I, V> {
  get(id: I): Promise<V>;
}

/** Write-through writer. */
export interface WriteThrough<I, V> {
  /**
   * Writes the store, then the cache. If the store write fails the cache entry is removed (a
   * value that may or may not be in the store is never served) and the error is rethrown.
   */
  set(id: I, value: V): Promise<void>;
  /** Deletes from the cache after `remove` (the store delete) succeeded. */
  delete(id: I, remove: (id: I) => Promise<void>): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// The engine shared by a cache and its namespaces

interface Settings {
  ttlMs: number;
  jitter: number;
  graceMs: number;
  negativeTtlMs: number;
  softMs: number;
  hardMs: number;
  leaseTtlMs: number | undefined;
  leaseWaitMs: number;
  remoteTimeoutMs: number;
  breakerFailures: number;
  breakerResetMs: number;
  maxValueBytes: number;
}

const TAG_KEY = '__tag:';
const LEASE_KEY = '__lease:';
const NS_TAG = '__ns:';
/** Tag times learned from the shared tier are re-read after this long when no bus keeps them fresh. */
const TAG_REFRESH_MS = 1_000;

function newTier(): TierStats {
  return { hits: 0, misses: 0, staleHits: 0, sets: 0, deletes: 0, errors: 0 };
}

interface TagTimes {
  /** Entries created at or before this are deleted. */
  d: number;
  /** Entries created at or before this are logically expired. */
  x: number;
  /** When this was read from the shared tier. */
  at: number;
}

/** A loader's result with how to store it. */
interface Loaded {
  value: unknown;
  negative: boolean;
  skip: boolean;
  ttlMs: number;
  tags: string[] | undefined;
}

class Engine {
  readonly clock: Clock;
  readonly s: Settings;
  readonly l1: LruMap<CacheEntry> | undefined;
  readonly l2: KeyValueStore | undefined;
  readonly bus: MessageBus | undefined;
  readonly onError: (err: unknown) => void;
  readonly channel: string;
  readonly memory = { ...newTier(), evictions: 0 };
  readonly remote: (TierStats & { timeouts: number; skipped: number }) | undefined;
  readonly counters = {
    loads: 0,
    loadErrors: 0,
    staleServed: 0,
    negativeHits: 0,
    leaseWaits: 0,
    coalesced: 0,
    staleSetsPrevented: 0,
    busMessages: 0,
    l1Flushes: 0,
  };
  readonly inflight = new Map<string, Promise<unknown>>();
  readonly tagTimes = new Map<string, TagTimes>();
  /** Keys invalidated recently, with when: a load started before must not store its result. */
  readonly invalidated = new Map<string, number>();
  readonly senderId = randomBytes(6).toString('hex');
  #seq = 0;
  #lastSeq = new Map<string, number>();
  #subscription: BusSubscription | undefined;
  #busDown = false;
  #breakerFailures = 0;
  #breakerOpenUntil = 0;
  #closed = false;
  /** Calls to the shared tier in flight with their deadlines, checked by one sweeping timer. */
  readonly #deadlines = new Set<{ at: number; expire: () => void }>();
  #sweeping = false;

  constructor(options: CacheOptions) {
    const d = (value: Duration | undefined, option: string, fallback: number, allowZero = true) =>
      value === undefined ? fallback : parseDuration(value, option, { allowZero });
    const jitter = options.jitter ?? 0;
    if (typeof jitter !== 'number' || !(jitter >= 0 && jitter <= 0.5))
      throw new ConfigError('jitter', 'must be from 0 to 0.5');
    const maxValueBytes = options.maxValueBytes ?? 1024 * 1024;
    if (!Number.isInteger(maxValueBytes) || maxValueBytes < 1)
      throw new ConfigError('maxValueBytes', 'must be a positive integer');
    const breaker = options.breaker === false ? undefined : (options.breaker ?? {});
    const breakerFailures = breaker?.failures ?? 5;
    if (!Number.isInteger(breakerFailures) || breakerFailures < 1) {
      throw new ConfigError('breaker.failures', 'must be a positive integer');
    }
    if (options.memory === false && options.remote === undefined) {
      throw new ConfigError('memory', 'a cache needs a tier: keep the memory tier or give a remote one');
    }
    const lease = options.lease === false || options.remote === undefined ? undefined : (options.lease ?? {});
    this.s = {
      ttlMs: d(options.ttl, 'ttl', 5 * 60_000, false),
      jitter,
      graceMs: d(options.grace, 'grace', 0),
      negativeTtlMs: d(options.negativeTtl, 'negativeTtl', 30_000, false),
      softMs: d(options.timeouts?.soft, 'timeouts.soft', Number.POSITIVE_INFINITY, false),
      hardMs: d(options.timeouts?.hard, 'timeouts.hard', Number.POSITIVE_INFINITY, false),
      leaseTtlMs: lease === undefined ? undefined : d(lease.ttl, 'lease.ttl', 10_000, false),
      leaseWaitMs: lease === undefined ? 0 : d(lease.wait, 'lease.wait', 5_000),
      remoteTimeoutMs: d(options.remoteTimeout, 'remoteTimeout', 250, false),
      breakerFailures: breaker === undefined ? Number.POSITIVE_INFINITY : breakerFailures,
      breakerResetMs: d(breaker?.resetAfter, 'breaker.resetAfter', 10_000, false),
      maxValueBytes,
    };
    const prefix = options.prefix ?? '';
    if (typeof prefix !== 'string') throw new ConfigError('prefix', 'must be a string');
    this.channel = `cache:${prefix}`;
    this.clock = options.clock ?? systemClock;
    this.onError = options.onError ?? (() => undefined);
    this.l2 = options.remote;
    this.bus = options.bus;
    this.remote = this.l2 === undefined ? undefined : { ...newTier(), timeouts: 0, skipped: 0 };
    if (options.memory !== false) {
      const maxBytes = options.memory?.maxBytes;
      this.l1 = createLruMap<CacheEntry>({
        maxItems: options.memory?.maxItems ?? 10_000,
        ...(maxBytes === undefined ? {} : { maxBytes, sizeOf: (entry) => sizeOfEntry(entry) }),
        onEvict: () => {
          this.memory.evictions++;
        },
      });
    }
  }

  async start(): Promise<void> {
    if (this.bus === undefined || this.l1 === undefined) return;
    this.#subscription = await this.bus.subscribe(this.channel, (message) => this.#onBusMessage(message), {
      onDisconnect: () => {
        // Messages may be lost from now on: in-process copies cannot be trusted until we are back.
        this.#busDown = true;
        this.flushLocal();
      },
      onReconnect: () => {
        this.flushLocal();
        this.#busDown = false;
      },
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#subscription?.unsubscribe().catch((err) => this.onError(err));
  }

  assertOpen(): void {
    if (this.#closed) throw new ClosedError('cache');
  }

  /** In-process copies may be used: there is an L1 and, with a bus, it is connected. */
  get l1Usable(): boolean {
    return this.l1 !== undefined && !this.#busDown;
  }

  flushLocal(): void {
    this.l1?.clear();
    this.tagTimes.clear();
    this.counters.l1Flushes++;
  }

  // ---------------------------------------------------------------------------------------
  // Entries

  ttlWithJitter(ttlMs: number): number {
    if (this.s.jitter === 0) return ttlMs;
    return Math.max(1, Math.round(ttlMs * (1 + (Math.random() * 2 - 1) * this.s.jitter)));
  }

  makeEntry(
    value: unknown,
    ttlMs: number,
    graceMs: number,
    tags: readonly string[] | undefined,
    negative: boolean,
  ): CacheEntry {
    const now = this.clock.now();
    const e = now + this.ttlWithJitter(ttlMs);
    const entry: CacheEntry = { v: value, c: now, e, g: e + graceMs };
    if (tags !== undefined && tags.length > 0) entry.t = [...tags];
    if (negative) entry.n = 1;
    return entry;
  }

  /** The entry's state now: fresh, stale (in grace) or gone, after tag invalidations. */
  state(entry: CacheEntry, now: number): 'fresh' | 'stale' | 'gone' {
    if (entry.g <= now) return 'gone';
    let expired = entry.e <= now;
    if (entry.t !== undefined) {
      for (const tag of entry.t) {
        const times = this.tagTimes.get(tag);
        if (times === undefined) continue;
        if (entry.c <= times.d) return 'gone';
        if (entry.c <= times.x) expired = true;
      }
    }
    return expired ? 'stale' : 'fresh';
  }

  // ---------------------------------------------------------------------------------------
  // The shared tier, bounded and behind a breaker

  breakerState(): 'closed' | 'open' | 'half-open' {
    if (this.#breakerFailures < this.s.breakerFailures) return 'closed';
    return this.clock.now() < this.#breakerOpenUntil ? 'open' : 'half-open';
  }

  /** Runs `op` on the shared tier; `ok: false` when the tier is absent, open, or failed (counted). */
  async remoteCall<T>(
    what: string,
    op: (l2: KeyValueStore) => Promise<T>,
  ): Promise<{ ok: true; value: T } | { ok: false }> {
    const l2 = this.l2;
    if (l2 === undefined) return { ok: false };
    if (this.breakerState() === 'open') {
      this.remote!.skipped++;
      return { ok: false };
    }
    try {
      const value = await this.#bounded(op(l2), what);
      this.#breakerFailures = 0;
      return { ok: true, value };
    } catch (err) {
      this.remote!.errors++;
      if (isStrataError(err, 'E_TIMEOUT')) this.remote!.timeouts++;
      this.#breakerFailures++;
      if (this.#breakerFailures >= this.s.breakerFailures)
        this.#breakerOpenUntil = this.clock.now() + this.s.breakerResetMs;
      this.onError(err);
      return { ok: false };
    }
  }

  /**
   * Bounds `promise` by `remoteTimeout`. One timer sweeps all calls in flight every few
   * milliseconds instead of arming and clearing a timer per call (a measurable share of a hit).
   */
  #bounded<T>(promise: Promise<T>, what: string): Promise<T> {
    const ms = this.s.remoteTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const deadline = {
        at: this.clock.now() + ms,
        expire: () => reject(new TimeoutError(`cache remote ${what}`, ms)),
      };
      this.#deadlines.add(deadline);
      this.#sweep();
      promise.then(
        (value) => {
          this.#deadlines.delete(deadline);
          resolve(value);
        },
        (err: unknown) => {
          this.#deadlines.delete(deadline);
          reject(err);
        },
      );
    });
  }

  #sweep(): void {
    if (this.#sweeping) return;
    this.#sweeping = true;
    const step = Math.max(1, Math.min(10, Math.floor(this.s.remoteTimeoutMs / 10)));
    const tick = () => {
      const now = this.clock.now();
      for (const d of this.#deadlines) {
        if (d.at <= now) {
          this.#deadlines.delete(d);
          d.expire();
        }
      }
      if (this.#deadlines.size > 0) this.clock.setTimeout(tick, step);
      else this.#sweeping = false;
    };
    this.clock.setTimeout(tick, step);
  }

  /** Reads entries from the shared tier (and the tag times they need). */
  async remoteGetMany(keys: string[]): Promise<(CacheEntry | undefined)[] | undefined> {
    if (keys.length === 1) {
      const one = await this.remoteGetOne(keys[0]!);
      return one === null ? undefined : [one];
    }
    const got = await this.remoteCall('getMany', (l2) => l2.getMany(keys));
    if (!got.ok) return undefined;
    const entries = got.value.map((text) => (text === undefined ? undefined : decodeEntry(text)));
    if (entries.some((entry) => entry?.t !== undefined)) await this.refreshTags(entries);
    return entries;
  }

  /** One entry from the shared tier; `null` when the tier could not answer. */
  remoteGetOne(key: string): Promise<CacheEntry | undefined | null> {
    const l2 = this.l2;
    if (l2 === undefined) return Promise.resolve(null);
    if (this.breakerState() === 'open') {
      this.remote!.skipped++;
      return Promise.resolve(null);
    }
    // Promise steps rather than async frames: this is the whole of a shared-tier hit.
    let asked: Promise<string | undefined>;
    try {
      asked = this.#bounded(l2.get(key), 'get');
    } catch (err) {
      this.#remoteFailed(err);
      return Promise.resolve(null);
    }
    return asked.then(
      (text) => {
        this.#breakerFailures = 0;
        const entry = text === undefined ? undefined : decodeEntry(text);
        if (entry?.t !== undefined) return this.refreshTags([entry]).then(() => entry);
        return entry;
      },
      (err: unknown) => {
        this.#remoteFailed(err);
        return null;
      },
    );
  }

  #remoteFailed(err: unknown): void {
    this.remote!.errors++;
    if (isStrataError(err, 'E_TIMEOUT')) this.remote!.timeouts++;
    this.#breakerFailures++;
    if (this.#breakerFailures >= this.s.breakerFailures)
      this.#breakerOpenUntil = this.clock.now() + this.s.breakerResetMs;
    this.onError(err);
  }

  /** Makes sure tag times of these entries are known (from L1's table, else the shared tier). */
  async refreshTags(entries: ReadonlyArray<CacheEntry | undefined>): Promise<void> {
    if (this.l2 === undefined) return;
    const now = this.clock.now();
    const wanted = new Set<string>();
    for (const entry of entries) {
      for (const tag of entry?.t ?? []) {
        const known = this.tagTimes.get(tag);
        const fresh =
          known !== undefined && (this.bus !== undefined ? !this.#busDown : now - known.at < TAG_REFRESH_MS);
        if (!fresh) wanted.add(tag);
      }
    }
    if (wanted.size === 0) return;
    const tags = [...wanted];
    const got = await this.remoteCall('tags', (l2) => l2.getMany(tags.map((t) => TAG_KEY + t)));
    if (!got.ok) return;
    got.value.forEach((text, i) => {
      const parsed = text === undefined ? undefined : (JSON.parse(text) as { d?: number; x?: number });
      this.tagTimes.set(tags[i]!, { d: parsed?.d ?? 0, x: parsed?.x ?? 0, at: now });
    });
  }

  // ---------------------------------------------------------------------------------------
  // Bus

  async broadcast(message: {
    k?: string[];
    t?: string[];
    tk?: 'd' | 'x';
    tt?: number;
    c?: 1;
  }): Promise<void> {
    if (this.bus === undefined) return;
    const body = JSON.stringify({ s: this.senderId, n: ++this.#seq, ...message });
    await this.bus.publish(this.channel, body).catch((err) => {
      // Others may now hold stale copies until their TTL; say so.
      this.onError(err);
    });
  }

  #onBusMessage(text: string): void {
    let m: { s?: string; n?: number; k?: string[]; t?: string[]; tk?: 'd' | 'x'; tt?: number; c?: 1 };
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof m.s !== 'string' || typeof m.n !== 'number' || m.s === this.senderId) return;
    this.counters.busMessages++;
    const last = this.#lastSeq.get(m.s);
    this.#lastSeq.set(m.s, m.n);
    if (last !== undefined && m.n !== last + 1) {
      // A message from this sender went missing: we cannot know which copies are stale.
      this.flushLocal();
      return;
    }
    const now = this.clock.now();
    if (m.c === 1) this.flushLocal();
    for (const key of m.k ?? []) {
      this.l1?.delete(key);
      this.markInvalidated(key, now);
    }
    if (m.t !== undefined) {
      for (const tag of m.t) {
        if ((m.tk === 'd' || m.tk === 'x') && typeof m.tt === 'number') {
          const known = this.tagTimes.get(tag) ?? { d: 0, x: 0, at: now };
          known[m.tk] = Math.max(known[m.tk], m.tt);
          known.at = now;
          this.tagTimes.set(tag, known);
        } else this.tagTimes.delete(tag);
      }
    }
  }

  markInvalidated(key: string, at: number): void {
    this.invalidated.delete(key);
    this.invalidated.set(key, at);
    // Bounded: the oldest marks go first; a load running longer than the newest 10k invalidations is rare.
    if (this.invalidated.size > 10_000)
      this.invalidated.delete(this.invalidated.keys().next().value as string);
  }
}

/** Numbers, booleans and strings well under the size limit encode trivially. */
function isSmallPrimitive(value: unknown, maxBytes: number): boolean {
  const t = typeof value;
  if (t === 'number') return Number.isFinite(value as number);
  if (t === 'boolean') return true;
  return t === 'string' && (value as string).length * 6 + 64 < maxBytes;
}

function sizeOfEntry(entry: CacheEntry): number {
  // A serialized entry is already known on most paths; this estimate avoids serializing again.
  const v = entry.v;
  if (typeof v === 'string') return 64 + v.length * 2;
  try {
    return 64 + (JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))?.length ?? 0) * 2;
  } catch {
    return 1024;
  }
}

// ---------------------------------------------------------------------------------------------
// The cache view (a namespace of the engine)

const NS_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

function checkKey(key: unknown): asserts key is string {
  if (typeof key !== 'string' || key.length === 0 || key.length > 1024) {
    throw new ValidationError([{ path: ['key'], message: 'must be a string of 1 to 1024 characters' }], {
      subject: 'cache key',
    });
  }
  if (key.startsWith('__')) {
    throw new ValidationError([{ path: ['key'], message: 'keys starting with "__" are reserved' }], {
      subject: 'cache key',
    });
  }
}

function checkTags(tags: unknown): readonly string[] | undefined {
  if (tags === undefined) return undefined;
  if (!Array.isArray(tags) || tags.some((t) => typeof t !== 'string' || t.length === 0 || t.length > 256)) {
    throw new ValidationError([{ path: ['tags'], message: 'must be an array of non-empty strings' }], {
      subject: 'cache tags',
    });
  }
  return tags as string[];
}

class CacheView implements Cache {
  readonly #e: Engine;
  readonly #ns: string;
  readonly #nsTag: string | undefined;

  constructor(engine: Engine, ns: string) {
    this.#e = engine;
    this.#ns = ns;
    this.#nsTag = ns === '' ? undefined : NS_TAG + ns;
  }

  #full(key: string): string {
    checkKey(key);
    return this.#ns === '' ? key : `${this.#ns}:${key}`;
  }

  #tags(tags: readonly string[] | undefined): readonly string[] | undefined {
    if (this.#nsTag === undefined) return tags;
    return tags === undefined ? [this.#nsTag] : [...tags, this.#nsTag];
  }

  // -------------------------------------------------------------------------------------
  // Reads

  /** The entry of `k` from L1, or from L2 (backfilling L1), with the tier that answered. */
  async #lookup(k: string): Promise<{ entry: CacheEntry; tier: TierStats } | undefined> {
    const e = this.#e;
    const now = e.clock.now();
    let staleLocal: CacheEntry | undefined;
    if (e.l1Usable) {
      const local = e.l1!.get(k);
      if (local !== undefined) {
        const state = e.state(local, now);
        if (state === 'fresh' || (state === 'stale' && e.l2 === undefined))
          return { entry: local, tier: e.memory };
        if (state === 'stale') staleLocal = local;
        else e.l1!.delete(k);
      }
      e.memory.misses++;
    }
    if (e.l2 === undefined) return undefined;
    // Another process may have refreshed what is stale here.
    const remote = (await e.remoteGetOne(k)) ?? undefined;
    const remoteState = remote === undefined ? 'gone' : e.state(remote, e.clock.now());
    if (
      remote === undefined ||
      remoteState === 'gone' ||
      (remoteState === 'stale' && staleLocal !== undefined)
    ) {
      e.remote!.misses++;
      return staleLocal === undefined ? undefined : { entry: staleLocal, tier: e.memory };
    }
    if (e.l1Usable) e.l1!.set(k, remote);
    return { entry: remote, tier: e.remote! };
  }

  /** Counts a found entry on the tier that answered. */
  #count(found: { entry: CacheEntry; tier: TierStats }, state: 'fresh' | 'stale' | 'gone'): void {
    if (state === 'fresh') found.tier.hits++;
    else if (state === 'stale') found.tier.staleHits++;
    if (found.entry.n === 1 && state === 'fresh') this.#e.counters.negativeHits++;
  }

  async get<T>(key: string, options: { allowStale?: boolean } = {}): Promise<T | undefined> {
    this.#e.assertOpen();
    const k = this.#full(key);
    const found = await this.#lookup(k);
    if (found === undefined) return undefined;
    const state = this.#e.state(found.entry, this.#e.clock.now());
    this.#count(found, state);
    if (state === 'fresh' || (state === 'stale' && options.allowStale)) {
      return found.entry.n === 1 ? undefined : (found.entry.v as T);
    }
    return undefined;
  }

  async getMany<T>(keys: readonly string[]): Promise<(T | undefined)[]> {
    const e = this.#e;
    e.assertOpen();
    if (!Array.isArray(keys))
      throw new ValidationError([{ path: ['keys'], message: 'must be an array' }], { subject: 'keys' });
    const full = keys.map((k) => this.#full(k));
    const now = e.clock.now();
    const out: (T | undefined)[] = new Array(keys.length);
    const missing: number[] = [];
    full.forEach((k, i) => {
      const local = e.l1Usable ? e.l1!.get(k) : undefined;
      if (local !== undefined && e.state(local, now) === 'fresh') {
        e.memory.hits++;
        out[i] = local.n === 1 ? undefined : (local.v as T);
      } else {
        if (e.l1Usable) e.memory.misses++;
        missing.push(i);
      }
    });
    if (missing.length > 0 && e.l2 !== undefined) {
      const entries = await e.remoteGetMany(missing.map((i) => full[i]!));
      const later = e.clock.now();
      missing.forEach((i, j) => {
        const entry = entries?.[j];
        if (entry !== undefined && e.state(entry, later) === 'fresh') {
          e.remote!.hits++;
          if (e.l1Usable) e.l1!.set(full[i]!, entry);
          out[i] = entry.n === 1 ? undefined : (entry.v as T);
        } else e.remote!.misses++;
      });
    }
    return out;
  }

  async has(key: string): Promise<boolean> {
    return (await this.get(key)) !== undefined;
  }

  // -------------------------------------------------------------------------------------
  // getOrSet: the hot path first, then the loading path

  getOrSet<T>(
    key: string,
    loader: (ctx: LoaderContext) => Promise<T> | T,
    options?: GetOrSetOptions,
  ): Promise<T> {
    const e = this.#e;
    try {
      e.assertOpen();
      const k = this.#full(key);
      if (e.l1Usable) {
        const local = e.l1!.get(k);
        if (local !== undefined && e.state(local, e.clock.now()) === 'fresh') {
          e.memory.hits++;
          if (local.n === 1) {
            e.counters.negativeHits++;
            return Promise.resolve(undefined as T);
          }
          return Promise.resolve(local.v as T);
        }
      }
      if (!e.l1Usable && e.l2 !== undefined) {
        // Shared tier only: a hit is one remote read and a decode, without the async frames of
        // the loading path (which takes over with what was read).
        return e.remoteGetOne(k).then((remote) => {
          const found = this.#foundRemote(remote ?? undefined);
          if (found !== undefined && e.state(found.entry, e.clock.now()) === 'fresh') {
            this.#count(found, 'fresh');
            return (found.entry.n === 1 ? undefined : found.entry.v) as T;
          }
          return this.#getOrSetSlow(key, k, loader, options, { found });
        });
      }
      return this.#getOrSetSlow(key, k, loader, options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** What `#lookup` makes of a shared-tier answer when there is no usable L1. */
  #foundRemote(remote: CacheEntry | undefined): { entry: CacheEntry; tier: TierStats } | undefined {
    const e = this.#e;
    if (remote === undefined || e.state(remote, e.clock.now()) === 'gone') {
      e.remote!.misses++;
      return undefined;
    }
    return { entry: remote, tier: e.remote! };
  }

  async #getOrSetSlow<T>(
    key: string,
    k: string,
    loader: (ctx: LoaderContext) => Promise<T> | T,
    options: GetOrSetOptions = {},
    looked?: { found: { entry: CacheEntry; tier: TierStats } | undefined },
  ): Promise<T> {
    const e = this.#e;
    const found = looked === undefined ? await this.#lookup(k) : looked.found;
    const entry = found?.entry;
    const state = entry === undefined ? 'gone' : e.state(entry, e.clock.now());
    if (found !== undefined) this.#count(found, state);
    if (entry !== undefined && state === 'fresh') return (entry.n === 1 ? undefined : entry.v) as T;
    const stale = state === 'stale' ? entry : undefined;
    // Single flight: one load per key in this process.
    const running = e.inflight.get(k);
    if (running !== undefined) {
      e.counters.coalesced++;
      return running as Promise<T>;
    }
    const load = this.#load(key, k, loader, options, stale).finally(() => e.inflight.delete(k));
    e.inflight.set(k, load);
    return load as Promise<T>;
  }

  async #load<T>(
    key: string,
    k: string,
    loader: (ctx: LoaderContext) => Promise<T> | T,
    options: GetOrSetOptions,
    stale: CacheEntry | undefined,
  ): Promise<T> {
    const e = this.#e;
    const staleValue = stale === undefined ? undefined : stale.n === 1 ? undefined : stale.v;
    // Across processes: only the lease holder loads.
    let token: string | undefined;
    if (e.s.leaseTtlMs !== undefined) {
      const outcome = await this.#acquireLease(k, stale);
      if (outcome.kind === 'value') return outcome.value as T;
      if (outcome.kind === 'stale') {
        e.counters.staleServed++;
        return staleValue as T;
      }
      token = outcome.token;
    }
    const startedAt = e.clock.now();
    const loaded: Loaded = {
      value: undefined,
      negative: false,
      skip: false,
      ttlMs: options.ttl === undefined ? e.s.ttlMs : parseDuration(options.ttl, 'ttl', { allowZero: false }),
      tags: checkTags(options.tags) as string[] | undefined,
    };
    const ctx: LoaderContext = {
      key,
      stale: staleValue,
      setTtl: (ttl) => {
        loaded.ttlMs = parseDuration(ttl, 'ttl', { allowZero: false });
      },
      setTags: (tags) => {
        loaded.tags = [...(checkTags(tags) ?? [])];
      },
      skip: () => {
        loaded.skip = true;
      },
      notFound: () => {
        loaded.negative = true;
        return undefined;
      },
    };
    e.counters.loads++;
    const work = (async () => {
      try {
        loaded.value = await loader(ctx);
      } finally {
        // Stored even when nobody waits any more (soft or hard timeout): the next reader gains.
      }
      await this.#store(k, loaded, options, startedAt);
      return loaded.negative ? undefined : loaded.value;
    })();
    const softMs =
      options.timeouts?.soft === undefined
        ? e.s.softMs
        : parseDuration(options.timeouts.soft, 'timeouts.soft');
    const hardMs =
      options.timeouts?.hard === undefined
        ? e.s.hardMs
        : parseDuration(options.timeouts.hard, 'timeouts.hard');
    try {
      if (stale !== undefined && Number.isFinite(softMs)) {
        const winner = await Promise.race([
          work.then((value) => ({ done: true as const, value })),
          sleep(softMs, { clock: e.clock }).then(() => ({ done: false as const, value: undefined })),
        ]);
        if (winner.done) return winner.value as T;
        e.counters.staleServed++;
        work.catch((err) => {
          e.counters.loadErrors++;
          e.onError(err);
        });
        return staleValue as T;
      }
      return (await withTimeout(work, hardMs, `loading cache key`, { clock: e.clock })) as T;
    } catch (err) {
      if (!(err instanceof TimeoutError)) e.counters.loadErrors++;
      else
        work.catch((late) => {
          e.counters.loadErrors++;
          e.onError(late);
        });
      if (stale !== undefined) {
        // Grace: the loader failed or is too slow, the stale value is better than an error.
        e.counters.staleServed++;
        e.onError(err);
        return staleValue as T;
      }
      throw err;
    } finally {
      if (token !== undefined) {
        // Give the lease back only once the value is stored, or nobody will load.
        void work
          .catch(() => undefined)
          .finally(() => {
            void this.#releaseLease(k, token!);
          });
      }
    }
  }

  /** Acquires the cross-process lease, or waits for the holder's value, or settles for stale. */
  async #acquireLease(
    k: string,
    stale: CacheEntry | undefined,
  ): Promise<{ kind: 'token'; token: string } | { kind: 'value'; value: unknown } | { kind: 'stale' }> {
    const e = this.#e;
    const token = `${e.senderId}:${Math.random().toString(36).slice(2)}`;
    const deadline = e.clock.now() + e.s.leaseWaitMs;
    let waited = false;
    for (;;) {
      const got = await e.remoteCall('lease', (l2) =>
        l2.setIfAbsent(LEASE_KEY + k, token, { ttl: e.s.leaseTtlMs! }),
      );
      // The shared tier is down or open: load here rather than fail.
      if (!got.ok) return { kind: 'token', token: '' };
      if (got.value) {
        // Checked again under the lease: a holder may have stored the value and released its
        // lease between our miss and our taking the lease; loading again would be a second load.
        const [entry] = (await e.remoteGetMany([k])) ?? [undefined];
        if (entry !== undefined && e.state(entry, e.clock.now()) === 'fresh') {
          await e.remoteCall('lease', (l2) => l2.deleteIfEquals(LEASE_KEY + k, token));
          if (e.l1Usable) e.l1!.set(k, entry);
          e.remote!.hits++;
          return { kind: 'value', value: entry.n === 1 ? undefined : entry.v };
        }
        return { kind: 'token', token };
      }
      if (!waited) {
        e.counters.leaseWaits++;
        waited = true;
      }
      // Someone else is loading: a stale value is good enough for now.
      if (stale !== undefined) return { kind: 'stale' };
      await sleep(20 + Math.floor(Math.random() * 20), { clock: e.clock });
      const [entry] = (await e.remoteGetMany([k])) ?? [undefined];
      if (entry !== undefined && e.state(entry, e.clock.now()) === 'fresh') {
        if (e.l1Usable) e.l1!.set(k, entry);
        e.remote!.hits++;
        return { kind: 'value', value: entry.n === 1 ? undefined : entry.v };
      }
      if (e.clock.now() >= deadline) {
        // The holder is slow or gone and its lease not yet expired: stop waiting, load here.
        return { kind: 'token', token: '' };
      }
    }
  }

  async #releaseLease(k: string, token: string): Promise<void> {
    if (token === '') return;
    const e = this.#e;
    const released = await e.remoteCall('lease', (l2) => l2.deleteIfEquals(LEASE_KEY + k, token));
    if (released.ok && !released.value) {
      // Our lease was broken (an invalidation deleted it, or it expired): what we stored may be
      // older than the change that broke it. Remove it rather than serve it.
      e.counters.staleSetsPrevented++;
      e.l1?.delete(k);
      await e.remoteCall('delete', (l2) => l2.delete(k));
    }
  }

  async #store(k: string, loaded: Loaded, options: GetOrSetOptions, startedAt: number): Promise<void> {
    const e = this.#e;
    if (loaded.skip) return;
    if (loaded.value === undefined && !loaded.negative) {
      throw new ValidationError(
        [{ path: ['value'], message: 'a loader returned undefined; call ctx.notFound() or ctx.skip()' }],
        {
          subject: 'cache value',
        },
      );
    }
    const invalidatedAt = e.invalidated.get(k);
    if (invalidatedAt !== undefined && invalidatedAt >= startedAt) {
      // The key changed while we loaded: our result may predate the change.
      e.counters.staleSetsPrevented++;
      return;
    }
    const ttlMs = loaded.negative
      ? options.negativeTtl === undefined
        ? e.s.negativeTtlMs
        : parseDuration(options.negativeTtl, 'negativeTtl', { allowZero: false })
      : loaded.ttlMs;
    const graceMs = options.grace === undefined ? e.s.graceMs : parseDuration(options.grace, 'grace');
    const entry = e.makeEntry(
      loaded.negative ? undefined : loaded.value,
      ttlMs,
      graceMs,
      this.#tags(loaded.tags),
      loaded.negative,
    );
    await this.#write(k, entry, { broadcast: false });
  }

  /** Stores `entry` in L1 and L2; L2 failures are counted and reported, not thrown. */
  async #write(k: string, entry: CacheEntry, how: { broadcast: boolean }): Promise<void> {
    const e = this.#e;
    // Without a shared tier nothing is serialized, except to validate; a small primitive needs no check.
    const text =
      e.l2 === undefined && isSmallPrimitive(entry.v, e.s.maxValueBytes)
        ? undefined
        : encodeEntry(entry, e.s.maxValueBytes);
    if (e.l1 !== undefined) {
      e.l1.set(k, entry);
      e.memory.sets++;
    }
    if (e.l2 !== undefined && text !== undefined) {
      const ttl = Math.max(1, entry.g - e.clock.now());
      const ok = await e.remoteCall('set', (l2) => l2.set(k, text, { ttl }));
      if (ok.ok) e.remote!.sets++;
    }
    // Other processes drop their copies of a value we replaced (a loaded value replaced nothing).
    if (how.broadcast) await e.broadcast({ k: [k] });
  }

  // -------------------------------------------------------------------------------------
  // Writes

  #entryFor(value: unknown, options: EntryOptions = {}): CacheEntry {
    const e = this.#e;
    if (value === undefined) {
      throw new ValidationError(
        [{ path: ['value'], message: 'undefined cannot be cached; delete the key instead' }],
        {
          subject: 'cache value',
        },
      );
    }
    const ttlMs =
      options.ttl === undefined ? e.s.ttlMs : parseDuration(options.ttl, 'ttl', { allowZero: false });
    const graceMs = options.grace === undefined ? e.s.graceMs : parseDuration(options.grace, 'grace');
    return e.makeEntry(value, ttlMs, graceMs, this.#tags(checkTags(options.tags)), false);
  }

  async set(key: string, value: unknown, options?: EntryOptions): Promise<void> {
    const e = this.#e;
    e.assertOpen();
    const k = this.#full(key);
    const entry = this.#entryFor(value, options);
    // Only a load already running for this key could store an older value over this one.
    if (e.inflight.has(k)) e.markInvalidated(k, e.clock.now());
    if (e.l2 === undefined && e.bus === undefined) {
      this.#writeLocal(k, entry);
      return;
    }
    await this.#write(k, entry, { broadcast: true });
  }

  /** The whole write on a cache with only the in-process tier: nothing to await. */
  #writeLocal(k: string, entry: CacheEntry): void {
    const e = this.#e;
    if (!isSmallPrimitive(entry.v, e.s.maxValueBytes)) encodeEntry(entry, e.s.maxValueBytes);
    e.l1!.set(k, entry);
    e.memory.sets++;
  }

  async setMany(entries: ReadonlyArray<{ key: string; value: unknown } & EntryOptions>): Promise<void> {
    const e = this.#e;
    e.assertOpen();
    if (!Array.isArray(entries)) {
      throw new ValidationError([{ path: ['entries'], message: 'must be an array' }], { subject: 'entries' });
    }
    // Validate and encode everything first: bad input never leaves a partial write.
    const prepared = entries.map((item) => {
      const k = this.#full(item.key);
      const entry = this.#entryFor(item.value, item);
      return { k, entry, text: encodeEntry(entry, e.s.maxValueBytes) };
    });
    const now = e.clock.now();
    for (const p of prepared) {
      e.markInvalidated(p.k, now);
      if (e.l1 !== undefined) {
        e.l1.set(p.k, p.entry);
        e.memory.sets++;
      }
    }
    if (e.l2 !== undefined && prepared.length > 0) {
      const ok = await e.remoteCall('setMany', (l2) =>
        l2.setMany(prepared.map((p) => ({ key: p.k, value: p.text, ttl: Math.max(1, p.entry.g - now) }))),
      );
      if (ok.ok) e.remote!.sets += prepared.length;
    }
    await e.broadcast({ k: prepared.map((p) => p.k) });
  }

  async delete(key: string): Promise<void> {
    await this.deleteMany([key]);
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    const e = this.#e;
    e.assertOpen();
    const full = keys.map((k) => this.#full(k));
    await this.#deleteFull(full);
  }

  async #deleteFull(full: string[]): Promise<void> {
    const e = this.#e;
    if (full.length === 0) return;
    const now = e.clock.now();
    for (const k of full) {
      e.markInvalidated(k, now);
      if (e.l1?.delete(k)) e.memory.deletes++;
    }
    if (e.l2 !== undefined) {
      // The lease goes too: a load in flight elsewhere must not store what it read before this.
      const ok = await e.remoteCall('delete', (l2) =>
        l2.deleteMany([...full, ...full.map((k) => LEASE_KEY + k)]),
      );
      if (ok.ok) e.remote!.deletes += full.length;
    }
    await e.broadcast({ k: full });
  }

  async expire(key: string): Promise<void> {
    const e = this.#e;
    e.assertOpen();
    const k = this.#full(key);
    const found = await this.#lookup(k);
    if (found === undefined) return;
    const now = e.clock.now();
    const expired: CacheEntry = { ...found.entry, e: Math.min(found.entry.e, now) };
    await this.#write(k, expired, { broadcast: true });
  }

  async #tagTimes(tags: readonly string[], kind: 'd' | 'x'): Promise<void> {
    const e = this.#e;
    e.assertOpen();
    const list = checkTags(tags) ?? [];
    if (list.length === 0) return;
    const now = e.clock.now();
    for (const tag of list) {
      const known = e.tagTimes.get(tag) ?? { d: 0, x: 0, at: now };
      known[kind] = now;
      known.at = now;
      e.tagTimes.set(tag, known);
    }
    if (e.l2 !== undefined) {
      const current = await e.remoteCall('tags', (l2) => l2.getMany(list.map((t) => TAG_KEY + t)));
      const texts = list.map((tag, i) => {
        const prev =
          current.ok && current.value[i] !== undefined
            ? (JSON.parse(current.value[i]!) as { d?: number; x?: number })
            : {};
        return {
          key: TAG_KEY + tag,
          value: JSON.stringify({
            d: kind === 'd' ? now : (prev.d ?? 0),
            x: kind === 'x' ? now : (prev.x ?? 0),
          }),
        };
      });
      // Tag times must outlive every entry they could invalidate.
      await e.remoteCall('tags', (l2) => l2.setMany(texts.map((t) => ({ ...t, ttl: 'infinite' }))));
    }
    await e.broadcast({ t: [...list], tk: kind, tt: now });
  }

  deleteByTag(tags: readonly string[]): Promise<void> {
    return this.#tagTimes(tags, 'd');
  }

  expireByTag(tags: readonly string[]): Promise<void> {
    return this.#tagTimes(tags, 'x');
  }

  async clear(): Promise<void> {
    const e = this.#e;
    e.assertOpen();
    if (this.#nsTag !== undefined) {
      await this.#tagTimes([this.#nsTag], 'd');
      return;
    }
    e.l1?.clear();
    e.tagTimes.clear();
    if (e.l2 !== undefined) await e.remoteCall('clear', (l2) => l2.clear());
    await e.broadcast({ c: 1 });
  }

  namespace(name: string): Cache {
    if (typeof name !== 'string' || !NS_NAME.test(name)) {
      throw new ConfigError('namespace', 'a namespace is 1-64 letters, digits, underscores, dots or dashes');
    }
    return new CacheView(this.#e, this.#ns === '' ? name : `${this.#ns}:${name}`);
  }

  // -------------------------------------------------------------------------------------
  // Named strategies

  readThrough<I, V>(spec: {
    key: (id: I) => string;
    load: (id: I) => Promise<V>;
    ttl?: Duration;
  }): ReadThrough<I, V> {
    if (typeof spec?.key !== 'function' || typeof spec.load !== 'function') {
      throw new ConfigError('readThrough', 'needs key and load functions');
    }
    const ttl =
      spec.ttl === undefined ? undefined : parseDuration(spec.ttl, 'readThrough.ttl', { allowZero: false });
    return {
      get: (id) => this.getOrSet(spec.key(id), () => spec.load(id), ttl === undefined ? undefined : { ttl }),
    };
  }

  writeThrough<I, V>(spec: {
    key: (id: I) => string;
    write: (id: I, value: V) => Promise<void>;
    ttl?: Duration;
  }): WriteThrough<I, V> {
    if (typeof spec?.key !== 'function' || typeof spec.write !== 'function') {
      throw new ConfigError('writeThrough', 'needs key and write functions');
    }
    const ttl =
      spec.ttl === undefined ? undefined : parseDuration(spec.ttl, 'writeThrough.ttl', { allowZero: false });
    return {
      set: async (id, value) => {
        const key = spec.key(id);
        try {
          await spec.write(id, value);
        } catch (err) {
          // The store may or may not hold the value now: never serve either version from cache.
          await this.delete(key).catch(() => undefined);
          throw err;
        }
        await this.set(key, value, ttl === undefined ? undefined : { ttl });
      },
      delete: async (id, remove) => {
        await remove(id);
        await this.delete(spec.key(id));
      },
    };
  }

  flushLocal(): void {
    this.#e.flushLocal();
  }

  stats(): CacheStats {
    const e = this.#e;
    return {
      memory: { ...e.memory, items: e.l1?.size ?? 0, bytes: e.l1?.bytes ?? 0 },
      remote: e.remote === undefined ? undefined : { ...e.remote, breaker: e.breakerState() },
      ...e.counters,
    };
  }

  close(): Promise<void> {
    return this.#e.close();
  }

  /** For change-driven invalidation: deletes full keys (already namespaced). */
  invalidateKeys(full: string[]): Promise<void> {
    return this.#deleteFull(full);
  }

  /** For change-driven invalidation: drops in-process copies of full keys only. */
  dropLocal(full: string): void {
    const e = this.#e;
    e.markInvalidated(full, e.clock.now());
    if (e.l1?.delete(full)) e.memory.deletes++;
  }
}

/**
 * Creates a cache. Options are validated now (`E_CONFIG` naming the option); with a bus the
 * subscription starts before this resolves.
 */
export async function createCache(options: CacheOptions = {}): Promise<Cache> {
  if (
    options.prefix !== undefined &&
    options.prefix !== '' &&
    (typeof options.prefix !== 'string' || !NS_NAME.test(options.prefix))
  ) {
    throw new ConfigError('prefix', 'a prefix is 1-64 letters, digits, underscores, dots or dashes');
  }
  const engine = new Engine(options);
  await engine.start();
  return new CacheView(engine, options.prefix ?? '');
}

/** Internal: the full-key invalidation used by change-driven invalidation. */
export function invalidateFullKeys(cache: Cache, keys: string[]): Promise<void> {
  return (cache as CacheView).invalidateKeys(keys);
}

/** Internal: drops in-process copies of full keys (change-driven, per process). */
export function dropLocalKeys(cache: Cache, keys: Iterable<string>): void {
  for (const k of keys) (cache as CacheView).dropLocal(k);
}
