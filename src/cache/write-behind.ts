/**
 * Write-behind: a write is acknowledged once it is queued, and reaches the store later, in
 * batches, off the caller's path.
 *
 * - Last writer wins per key: a write replaces the key's queued value, so a hot key costs one
 *   store write per batch however often it changes (Hazelcast's map-store coalescing).
 * - Every write gets a version, higher than every earlier one of the engine and, as it is at
 *   least the write's time in microseconds, than those of earlier engines on the same clock. The
 *   store applies an item only if its version is newer than the one it holds, which makes
 *   redelivery harmless.
 * - Batches go out when `maxBatch` keys are queued or `flushEvery` after the oldest queued write,
 *   one at a time; a failed batch is retried with backoff for as long as it takes, while writes
 *   keep being accepted up to `maxPending` keys (then `set` waits, or rejects with
 *   `E_BACKPRESSURE`).
 * - With a durable queue, a write is acknowledged only once it is in the queue (writes arriving
 *   together share one append: group commit), and the queue forgets it only once the store has it
 *   (or a newer write of its key). A new engine on the queue writes everything left first: delivery
 *   is at least once, exactly what "only if newer" absorbs.
 * - Timers of the system clock do not keep the process alive: call `close()` before exiting, or
 *   writes held only in memory are lost.
 */
import { backoffDelay, type RetryOptions, type RetryPolicy, retryPolicy } from '../core/async.js';
import { type Clock, sleep, systemClock, type TimerHandle } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import {
  ClosedError,
  ConfigError,
  isStrataError,
  StrataError,
  TimeoutError,
  ValidationError,
} from '../core/errors.js';
import { checkKey, DEFAULT_MAX_KEY_LENGTH } from '../core/kv.js';
import type { WriteBehindQueue, WriteBehindRecord } from '../core/write-behind-queue.js';

/** One write handed to the store: `value` is `undefined` for a delete. */
export interface WriteBehindItem<V> {
  readonly key: string;
  readonly value: V | undefined;
  /** Newer writes of a key have higher versions; apply an item only if it is newer than the stored one. */
  readonly version: number;
}

/** Options for `createWriteBehind`. */
export interface WriteBehindOptions<V> {
  /**
   * Writes a batch (distinct keys) to the store; a rejection retries the whole batch after a
   * backoff. Items can arrive again after a crash or a failed attempt, and an older version can
   * arrive after a newer one was stored: apply each only if its version is above the stored one,
   * and keep a delete's version (a tombstone) so an older write cannot bring the key back.
   */
  writeBatch: (items: WriteBehindItem<V>[]) => Promise<void>;
  /**
   * Where acknowledged writes wait for the store (default: this process's memory only, lost with
   * it). A durable queue (SQLite file, Redis Stream) keeps them across a crash. The engine does
   * not close it; close it after the engine.
   */
  queue?: WriteBehindQueue;
  /** Longest a write waits for its batch, counted from the oldest queued write (default 1s). */
  flushEvery?: Duration;
  /** Most keys per batch; this many queued keys start a batch at once (default 500). */
  maxBatch?: number;
  /** Most keys queued or in flight before writes of new keys wait or are refused (default 10 000). */
  maxPending?: number;
  /** Backoff between attempts of a failed batch (default 50ms doubling to 5s, with jitter); it is retried until it succeeds. */
  retry?: Omit<RetryOptions, 'attempts'>;
  /** What a write of a new key does when `maxPending` is reached: wait for room (default) or reject with `E_BACKPRESSURE`. */
  onFull?: 'wait' | 'reject';
  /** Longest a write waits for room before failing with `E_TIMEOUT` (default: as long as it takes). */
  maxWait?: Duration;
  /** Longest `flush()` and `close()` wait for the store before failing with `E_TIMEOUT` (default 30s). */
  drainTimeout?: Duration;
  /** Turns a value into the queue's text (default `JSON.stringify`); used only with a `queue`. */
  serialize?: (value: V) => string;
  /** Turns the queue's text back into a value when recovering (default `JSON.parse`). */
  deserialize?: (text: string) => V;
  /** The source of time for batching and backoff (default the system clock). */
  clock?: Clock;
  /** Called with each failed batch attempt, acknowledgement or recovery; the engine keeps going. */
  onError?: (err: unknown) => void;
  /** A label for messages, metrics and the dashboard (default `write-behind`). */
  name?: string;
}

/** What a write-behind engine holds and has done, for metrics and the dashboard. */
export interface WriteBehindStats {
  /** Keys queued and not yet in a batch. */
  pending: number;
  /** Keys in the batch being written. */
  inFlight: number;
  /** Writes waiting for their durable append. */
  appending: number;
  /** Writes waiting for room (`onFull: 'wait'`). */
  waiting: number;
  /** Items written to the store. */
  flushed: number;
  /** Batches written to the store. */
  batches: number;
  /** Failed batch attempts. */
  failures: number;
  /** Batch attempts after a failure. */
  retries: number;
  /** Keys recovered from the queue at start. */
  recovered: number;
  /** Age of the oldest write not yet in the store, in milliseconds (0 when there is none). */
  oldestPendingAgeMs: number;
  /** The version of the newest write. */
  lastVersion: number;
  lastErrorCode: string | undefined;
}

/** A queued write that `get` found: `value` is `undefined` for a queued delete. */
export interface PendingWrite<V> {
  readonly pending: true;
  readonly value: V | undefined;
}

/** A write-behind engine. */
export interface WriteBehind<V> {
  /** The engine's label, from the `name` option. */
  readonly name: string;
  /**
   * Queues `value` under `key` and resolves with the write's version once it is queued (durably,
   * with a durable queue). Rejects with `E_VALIDATION` for a bad key or an unserializable value,
   * `E_BACKPRESSURE` or `E_TIMEOUT` when full (see `onFull`, `maxWait`), the queue's error when
   * its append fails (the write is then dropped), and `E_CLOSED` once `close()` was called.
   */
  set(key: string, value: V): Promise<number>;
  /** Queues a delete of `key`; resolves and rejects like `set`. */
  delete(key: string): Promise<number>;
  /** The queued write of `key` not yet confirmed by the store, or `undefined` when there is none. */
  get(key: string): PendingWrite<V> | undefined;
  /**
   * Resolves once every write acknowledged before the call is in the store; rejects with
   * `E_TIMEOUT` after `timeout` (default `drainTimeout`), the writes staying queued, and with the
   * queue's error while a durable queue cannot be loaded.
   */
  flush(options?: { timeout?: Duration }): Promise<void>;
  /**
   * Refuses new writes, drains the queue like `flush()` and stops; safe to call twice. Rejects
   * with `E_TIMEOUT` when the store did not take everything within `timeout` (default
   * `drainTimeout`): it stops anyway, and what a durable queue holds is written by the next engine.
   */
  close(options?: { timeout?: Duration }): Promise<void>;
  /** A snapshot of what the engine holds and has done. */
  stats(): WriteBehindStats;
}

interface Entry<V> {
  value: V | undefined;
  version: number;
  /** The version of the write that made the key pending; lower than any version still unwritten. */
  readonly firstVersion: number;
  readonly since: number;
}

interface Write<V> {
  readonly key: string;
  readonly value: V | undefined;
  readonly encoded: string | null;
}

interface Appending<V> extends Write<V> {
  readonly version: number;
  /** Whether this write took a slot of `maxPending` (its key was neither pending nor appending). */
  readonly reserved: boolean;
  readonly resolve: (version: number) => void;
  readonly reject: (err: unknown) => void;
}

interface RoomWaiter<V> {
  readonly write: Write<V>;
  readonly resolve: (version: number) => void;
  readonly reject: (err: unknown) => void;
  timer: TimerHandle | undefined;
}

interface FlushWaiter {
  readonly target: number;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
  timer: TimerHandle | undefined;
}

const QUEUE_METHODS = ['append', 'load', 'lastVersion', 'acknowledge', 'close'] as const;

/**
 * Creates a write-behind engine in front of `writeBatch`. Options are checked now (`E_CONFIG`
 * naming the option). With a durable `queue`, the writes it holds are recovered first: writes
 * wait until they are loaded, and go to the store before newer ones.
 */
export function createWriteBehind<V>(options: WriteBehindOptions<V>): WriteBehind<V> {
  return new WriteBehindEngine<V>(options);
}

function positiveInteger(value: number | undefined, option: string, fallback: number): number {
  const n = value ?? fallback;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) {
    throw new ConfigError(option, 'must be a positive integer');
  }
  return n;
}

function optionalFunction(value: unknown, option: string): void {
  if (value !== undefined && typeof value !== 'function') throw new ConfigError(option, 'must be a function');
}

class WriteBehindEngine<V> implements WriteBehind<V> {
  readonly name: string;
  readonly #writeBatch: (items: WriteBehindItem<V>[]) => Promise<void>;
  readonly #queue: WriteBehindQueue | undefined;
  readonly #clock: Clock;
  readonly #flushEveryMs: number;
  readonly #maxBatch: number;
  readonly #maxPending: number;
  /** Queued keys that start a batch at once. */
  readonly #sizeTrigger: number;
  readonly #policy: RetryPolicy;
  readonly #reject: boolean;
  readonly #maxWaitMs: number;
  readonly #drainTimeoutMs: number;
  readonly #serialize: (value: V) => string;
  readonly #deserialize: (text: string) => V;
  readonly #onError: ((err: unknown) => void) | undefined;

  /** Keys waiting for a batch, in the order they became pending (so by `firstVersion`). */
  readonly #pending = new Map<string, Entry<V>>();
  /** The batch being written. */
  readonly #inflight = new Map<string, Entry<V>>();
  #inflightFloor: number | undefined;
  /** Writes waiting for the next durable append, and the group being appended. */
  #buffer: Appending<V>[] = [];
  #committing: Appending<V>[] | undefined;
  /** An append loop is scheduled or running; it takes every buffered write, one group at a time. */
  #appendLoopActive = false;
  /** Writes per key in `#buffer` and `#committing`. */
  readonly #appendingKeys = new Map<string, number>();
  /** Slots of `maxPending` held by writes waiting for their append. */
  #reserved = 0;
  readonly #roomWaiters: RoomWaiter<V>[] = [];
  #flushWaiters: FlushWaiter[] = [];

  #lastVersion = 0;
  #acknowledged = 0;
  /** Versions up to this one are flushed without waiting for size or time (recovered writes). */
  #urgentUpTo = 0;
  #ready: boolean;
  #recovery: Promise<void> | undefined;
  #flushing = false;
  #timer: TimerHandle | undefined;
  #closing: Promise<void> | undefined;
  #stopped = false;
  readonly #stop = new AbortController();

  #flushed = 0;
  #batches = 0;
  #failures = 0;
  #retries = 0;
  #recovered = 0;
  #lastErrorCode: string | undefined;

  constructor(options: WriteBehindOptions<V>) {
    const o = (options ?? {}) as WriteBehindOptions<V>;
    if (typeof o.writeBatch !== 'function') {
      throw new ConfigError('writeBatch', 'a function that writes a batch to the store is required');
    }
    if (o.queue !== undefined) {
      const q = o.queue as unknown as Record<string, unknown> | null;
      if (typeof q !== 'object' || q === null || QUEUE_METHODS.some((m) => typeof q[m] !== 'function')) {
        throw new ConfigError('queue', 'expected a write-behind queue');
      }
    }
    this.name = o.name ?? 'write-behind';
    if (typeof this.name !== 'string' || this.name.length === 0) {
      throw new ConfigError('name', 'must be a non-empty string');
    }
    this.#flushEveryMs = parseDuration(o.flushEvery ?? '1s', 'flushEvery');
    this.#maxBatch = positiveInteger(o.maxBatch, 'maxBatch', 500);
    this.#maxPending = positiveInteger(o.maxPending, 'maxPending', 10_000);
    this.#sizeTrigger = Math.min(this.#maxBatch, this.#maxPending);
    this.#policy = retryPolicy({ initialDelay: 50, maxDelay: 5_000, ...o.retry, attempts: 1 }, 'retry');
    const onFull = o.onFull ?? 'wait';
    if (onFull !== 'wait' && onFull !== 'reject') throw new ConfigError('onFull', 'must be wait or reject');
    this.#reject = onFull === 'reject';
    this.#maxWaitMs = parseDuration(o.maxWait ?? 'infinite', 'maxWait', {
      allowZero: false,
      allowInfinite: true,
    });
    this.#drainTimeoutMs = parseDuration(o.drainTimeout ?? '30s', 'drainTimeout', {
      allowZero: false,
      allowInfinite: true,
    });
    optionalFunction(o.serialize, 'serialize');
    optionalFunction(o.deserialize, 'deserialize');
    if ((o.serialize === undefined) !== (o.deserialize === undefined)) {
      throw new ConfigError(
        o.serialize === undefined ? 'serialize' : 'deserialize',
        'give serialize and deserialize together',
      );
    }
    this.#serialize = o.serialize ?? ((value: V) => JSON.stringify(value));
    this.#deserialize = o.deserialize ?? ((text: string) => JSON.parse(text) as V);
    optionalFunction(o.onError, 'onError');
    this.#onError = o.onError;
    const clock = o.clock ?? systemClock;
    if (
      typeof clock !== 'object' ||
      clock === null ||
      typeof clock.now !== 'function' ||
      typeof clock.setTimeout !== 'function' ||
      typeof clock.clearTimeout !== 'function'
    ) {
      throw new ConfigError('clock', 'expected a clock with now, setTimeout and clearTimeout');
    }
    this.#clock = clock;
    this.#writeBatch = o.writeBatch;
    this.#queue = o.queue;
    this.#ready = o.queue === undefined;
    if (o.queue !== undefined) this.#recover(1);
  }

  // -------------------------------------------------------------------------------------------
  // Writes

  set(key: string, value: V): Promise<number> {
    if (value === undefined) {
      return Promise.reject(
        new ValidationError([{ path: ['value'], message: 'must not be undefined; use delete()' }], {
          subject: 'value',
        }),
      );
    }
    return this.#write(key, value);
  }

  delete(key: string): Promise<number> {
    return this.#write(key, undefined);
  }

  #write(key: string, value: V | undefined): Promise<number> {
    if (this.#closing !== undefined) return Promise.reject(new ClosedError(this.name));
    let encoded: string | null = null;
    try {
      checkKey(key, DEFAULT_MAX_KEY_LENGTH);
      if (this.#queue !== undefined && value !== undefined) encoded = this.#encode(value);
    } catch (err) {
      return Promise.reject(err);
    }
    if (!this.#ready) return this.#recovery!.then(() => this.#write(key, value));
    const write: Write<V> = { key, value, encoded };
    if (this.#needsRoom(key) && (this.#roomWaiters.length > 0 || this.#occupancy() >= this.#maxPending)) {
      return this.#waitForRoom(write);
    }
    return this.#enqueue(write);
  }

  #encode(value: V): string {
    let text: unknown;
    try {
      text = this.#serialize(value);
    } catch (err) {
      throw new ValidationError([{ path: ['value'], message: 'cannot be serialized' }], {
        subject: 'value',
        cause: err,
      });
    }
    if (typeof text !== 'string') {
      throw new ValidationError([{ path: ['value'], message: 'did not serialize to a string' }], {
        subject: 'value',
      });
    }
    return text;
  }

  #nextVersion(): number {
    // At least the time in microseconds: versions keep growing across restarts even when nothing
    // persisted the last one (no durable queue, or a new one).
    this.#lastVersion = Math.max(this.#lastVersion + 1, Math.floor(this.#clock.now()) * 1000);
    return this.#lastVersion;
  }

  /** A write of `key` needs a slot unless the key is already queued (it then replaces the value). */
  #needsRoom(key: string): boolean {
    return !this.#pending.has(key) && !this.#appendingKeys.has(key);
  }

  #occupancy(): number {
    return this.#pending.size + this.#inflight.size + this.#reserved;
  }

  #waitForRoom(write: Write<V>): Promise<number> {
    if (this.#reject) {
      this.#schedule();
      return Promise.reject(
        new StrataError('E_BACKPRESSURE', `${this.name}: the queue is full (maxPending); retry later`, {
          details: { maxPending: this.#maxPending },
        }),
      );
    }
    return new Promise<number>((resolve, reject) => {
      const waiter: RoomWaiter<V> = { write, resolve, reject, timer: undefined };
      if (Number.isFinite(this.#maxWaitMs)) {
        waiter.timer = this.#clock.setTimeout(() => {
          const i = this.#roomWaiters.indexOf(waiter);
          if (i < 0) return;
          this.#roomWaiters.splice(i, 1);
          reject(new TimeoutError(`${this.name} waiting for room`, this.#maxWaitMs));
          this.#admitWaiters();
        }, this.#maxWaitMs);
      }
      this.#roomWaiters.push(waiter);
      this.#schedule();
    });
  }

  /** Lets waiting writes in, in arrival order, while there is room. */
  #admitWaiters(): void {
    while (this.#roomWaiters.length > 0) {
      const waiter = this.#roomWaiters[0]!;
      if (this.#needsRoom(waiter.write.key) && this.#occupancy() >= this.#maxPending) return;
      this.#roomWaiters.shift();
      if (waiter.timer !== undefined) this.#clock.clearTimeout(waiter.timer);
      this.#enqueue(waiter.write).then(waiter.resolve, waiter.reject);
    }
  }

  #enqueue(write: Write<V>): Promise<number> {
    const version = this.#nextVersion();
    if (this.#queue === undefined) {
      this.#apply(write.key, write.value, version);
      return Promise.resolve(version);
    }
    const reserved = this.#needsRoom(write.key);
    if (reserved) this.#reserved++;
    this.#appendingKeys.set(write.key, (this.#appendingKeys.get(write.key) ?? 0) + 1);
    return new Promise<number>((resolve, reject) => {
      const { key, value, encoded } = write;
      this.#buffer.push({ key, value, encoded, version, reserved, resolve, reject });
      if (!this.#appendLoopActive) {
        this.#appendLoopActive = true;
        // Writes made in the same turn of the event loop share one append (group commit).
        queueMicrotask(() => void this.#appendLoop());
      }
    });
  }

  async #appendLoop(): Promise<void> {
    const queue = this.#queue!;
    try {
      // Groups are appended one at a time, so they reach the queue in version order.
      while (this.#buffer.length > 0) {
        const group = this.#buffer;
        this.#buffer = [];
        this.#committing = group;
        let error: unknown;
        try {
          await queue.append(
            group.map((w): WriteBehindRecord => ({ key: w.key, value: w.encoded, version: w.version })),
          );
        } catch (err) {
          error = err ?? new StrataError('E_QUERY', `${queue.name}: append failed`);
        }
        this.#committing = undefined;
        for (const w of group) {
          const count = this.#appendingKeys.get(w.key)! - 1;
          if (count === 0) this.#appendingKeys.delete(w.key);
          else this.#appendingKeys.set(w.key, count);
          if (w.reserved) this.#reserved--;
          if (error === undefined) this.#apply(w.key, w.value, w.version);
        }
        if (error === undefined) for (const w of group) w.resolve(w.version);
        else {
          this.#lastErrorCode = errorCode(error);
          for (const w of group) w.reject(error);
        }
        this.#admitWaiters();
        this.#settleFlushWaiters();
      }
    } finally {
      // In the same step as the last check of the buffer: a write arriving later starts a new loop.
      this.#appendLoopActive = false;
    }
  }

  /** Makes `value` the key's queued write. */
  #apply(key: string, value: V | undefined, version: number): void {
    const entry = this.#pending.get(key);
    if (entry !== undefined) {
      entry.value = value;
      entry.version = version;
    } else {
      this.#pending.set(key, { value, version, firstVersion: version, since: this.#clock.now() });
    }
    if (this.#flushing || this.#stopped) return;
    if (this.#pending.size >= this.#sizeTrigger || this.#eager()) this.#startFlushing();
    else if (this.#timer === undefined) this.#armTimer();
  }

  get(key: string): PendingWrite<V> | undefined {
    const entry = this.#pending.get(key) ?? this.#inflight.get(key);
    return entry === undefined ? undefined : { pending: true, value: entry.value };
  }

  // -------------------------------------------------------------------------------------------
  // Batches

  /** True when something waits for the queue to drain, so batches go out without waiting for size or time. */
  #eager(): boolean {
    return (
      this.#flushWaiters.length > 0 ||
      this.#roomWaiters.length > 0 ||
      this.#closing !== undefined ||
      (this.#urgentUpTo > 0 && this.#urgentUpTo > this.#watermark())
    );
  }

  #front(): Entry<V> | undefined {
    return this.#pending.values().next().value;
  }

  #dueNow(): boolean {
    const front = this.#front();
    if (front === undefined) return false;
    return (
      this.#pending.size >= this.#sizeTrigger ||
      this.#eager() ||
      front.since + this.#flushEveryMs <= this.#clock.now()
    );
  }

  /** Starts a batch when one is due, or makes sure a timer fires by the time the oldest write is due. */
  #schedule(): void {
    if (this.#flushing || this.#stopped) return;
    if (this.#pending.size === 0) {
      this.#clearTimer();
      return;
    }
    if (this.#dueNow()) this.#startFlushing();
    else if (this.#timer === undefined) this.#armTimer();
  }

  #armTimer(): void {
    const front = this.#front();
    if (front === undefined) return;
    const delay = Math.max(0, front.since + this.#flushEveryMs - this.#clock.now());
    // The oldest pending write only gets younger (batches take from the front), so a timer armed
    // for an earlier front fires early at worst, and then re-arms.
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.#schedule();
    }, delay);
  }

  #clearTimer(): void {
    if (this.#timer === undefined) return;
    this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #startFlushing(): void {
    this.#flushing = true;
    this.#clearTimer();
    void this.#flushLoop();
  }

  async #flushLoop(): Promise<void> {
    try {
      // Start after the current task, so a burst of writes goes out as one batch.
      await null;
      while (!this.#stopped && this.#dueNow()) {
        const items = this.#takeBatch();
        if (!(await this.#writeUntilAccepted(items))) return;
        this.#inflight.clear();
        this.#inflightFloor = undefined;
        this.#flushed += items.length;
        this.#batches++;
        await this.#acknowledge();
        this.#admitWaiters();
        this.#settleFlushWaiters();
      }
    } finally {
      this.#flushing = false;
    }
    this.#schedule();
  }

  #takeBatch(): WriteBehindItem<V>[] {
    const items: WriteBehindItem<V>[] = [];
    for (const [key, entry] of this.#pending) {
      items.push({ key, value: entry.value, version: entry.version });
      this.#inflight.set(key, entry);
      this.#inflightFloor ??= entry.firstVersion;
      if (items.length === this.#maxBatch) break;
    }
    for (const item of items) this.#pending.delete(item.key);
    return items;
  }

  /** Writes `items` until the store takes them; false when the engine stopped first. */
  async #writeUntilAccepted(items: WriteBehindItem<V>[]): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      if (this.#stopped) return false;
      if (attempt > 1) this.#retries++;
      try {
        await this.#writeBatch(items.slice());
        return true;
      } catch (err) {
        this.#failures++;
        this.#report(err);
      }
      try {
        await sleep(backoffDelay(this.#policy, Math.min(attempt, 30)), {
          clock: this.#clock,
          signal: this.#stop.signal,
        });
      } catch {
        return false;
      }
    }
  }

  /**
   * The highest version below every write not yet in the store: each key's newest unwritten write
   * has a version at or above its `firstVersion`, so a queue may forget everything up to here.
   */
  #watermark(): number {
    let floor = this.#inflightFloor ?? this.#front()?.firstVersion ?? Number.POSITIVE_INFINITY;
    const appending = this.#committing?.[0] ?? this.#buffer[0];
    if (appending !== undefined && appending.version < floor) floor = appending.version;
    return floor === Number.POSITIVE_INFINITY ? this.#lastVersion : floor - 1;
  }

  async #acknowledge(): Promise<void> {
    if (this.#queue === undefined) return;
    const upTo = this.#watermark();
    if (upTo <= this.#acknowledged) return;
    try {
      await this.#queue.acknowledge(upTo);
      this.#acknowledged = upTo;
    } catch (err) {
      // The records stay queued and are written again after a restart; the next batch retries.
      this.#report(err);
    }
  }

  #settleFlushWaiters(): void {
    const upTo = this.#watermark();
    if (this.#urgentUpTo > 0 && this.#urgentUpTo <= upTo) this.#urgentUpTo = 0;
    if (this.#flushWaiters.length === 0) return;
    const done = this.#flushWaiters.filter((w) => w.target <= upTo);
    if (done.length === 0) return;
    this.#flushWaiters = this.#flushWaiters.filter((w) => w.target > upTo);
    for (const waiter of done) {
      if (waiter.timer !== undefined) this.#clock.clearTimeout(waiter.timer);
      waiter.resolve();
    }
  }

  #report(err: unknown): void {
    this.#lastErrorCode = errorCode(err);
    try {
      this.#onError?.(err);
    } catch {
      // A failing error listener must not stop the engine.
    }
  }

  // -------------------------------------------------------------------------------------------
  // Recovery, flush, close

  #recover(attempt: number): void {
    const queue = this.#queue!;
    const run = (async () => {
      const last = await queue.lastVersion();
      const records = await queue.load();
      // The newest record of each key, ordered by version.
      const newest = new Map<string, WriteBehindRecord>();
      for (const record of records) {
        newest.delete(record.key);
        newest.set(record.key, record);
      }
      const entries: Array<[string, V | undefined, number]> = [];
      for (const [key, record] of newest) entries.push([key, this.#decode(record), record.version]);
      if (this.#stopped) return;
      const top = records.reduce((max, r) => Math.max(max, r.version), last);
      this.#lastVersion = Math.max(this.#lastVersion, top);
      this.#acknowledged = Math.max(0, (records[0]?.version ?? this.#lastVersion + 1) - 1);
      const since = this.#clock.now();
      for (const [key, value, version] of entries) {
        this.#pending.set(key, { value, version, firstVersion: version, since });
      }
      this.#recovered = entries.length;
      // Recovered writes go out first, without waiting for size or time.
      this.#urgentUpTo = this.#lastVersion;
      this.#ready = true;
      this.#schedule();
    })();
    this.#recovery = run;
    run.catch((err: unknown) => {
      this.#report(err);
      if (this.#stopped) return;
      sleep(backoffDelay(this.#policy, Math.min(attempt, 30)), {
        clock: this.#clock,
        signal: this.#stop.signal,
      }).then(
        () => this.#recover(attempt + 1),
        () => undefined,
      );
    });
  }

  #decode(record: WriteBehindRecord): V | undefined {
    if (record.value === null) return undefined;
    try {
      return this.#deserialize(record.value);
    } catch (err) {
      throw new StrataError('E_CORRUPT', `${this.name}: a queued value cannot be deserialized`, {
        cause: err,
        details: { queue: this.#queue?.name, version: record.version },
      });
    }
  }

  async flush(options: { timeout?: Duration } = {}): Promise<void> {
    const timeoutMs = this.#timeout(options);
    if (this.#stopped) {
      if (this.#unwritten() > 0) throw new ClosedError(this.name);
      return;
    }
    if (!this.#ready) await this.#recovery;
    await this.#drain(timeoutMs, `${this.name} flush`);
  }

  #timeout(options: { timeout?: Duration } | undefined): number {
    const timeout = options?.timeout;
    return timeout === undefined
      ? this.#drainTimeoutMs
      : parseDuration(timeout, 'timeout', { allowZero: false, allowInfinite: true });
  }

  #unwritten(): number {
    return this.#pending.size + this.#inflight.size + this.#buffer.length + (this.#committing?.length ?? 0);
  }

  /** Resolves once every version assigned so far is in the store (or was dropped with a failed append). */
  #drain(timeoutMs: number, operation: string): Promise<void> {
    const target = this.#lastVersion;
    if (this.#watermark() >= target) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiter: FlushWaiter = { target, resolve, reject, timer: undefined };
      if (Number.isFinite(timeoutMs)) {
        waiter.timer = this.#clock.setTimeout(() => {
          this.#flushWaiters = this.#flushWaiters.filter((w) => w !== waiter);
          reject(new TimeoutError(operation, timeoutMs, { details: { unwritten: this.#unwritten() } }));
        }, timeoutMs);
      }
      this.#flushWaiters.push(waiter);
      this.#schedule();
    });
  }

  close(options: { timeout?: Duration } = {}): Promise<void> {
    if (this.#closing === undefined) {
      let timeoutMs: number;
      try {
        timeoutMs = this.#timeout(options);
      } catch (err) {
        return Promise.reject(err);
      }
      this.#closing = this.#shutdown(timeoutMs);
    }
    return this.#closing;
  }

  async #shutdown(timeoutMs: number): Promise<void> {
    const closed = new ClosedError(this.name);
    for (const waiter of this.#roomWaiters.splice(0)) {
      if (waiter.timer !== undefined) this.#clock.clearTimeout(waiter.timer);
      waiter.reject(closed);
    }
    try {
      // Before recovery, nothing was accepted: what the queue holds stays there for the next engine.
      if (this.#ready) await this.#drain(timeoutMs, `${this.name} close`);
    } finally {
      this.#stopped = true;
      this.#stop.abort();
      this.#clearTimer();
      for (const waiter of this.#flushWaiters.splice(0)) {
        if (waiter.timer !== undefined) this.#clock.clearTimeout(waiter.timer);
        waiter.reject(closed);
      }
    }
  }

  stats(): WriteBehindStats {
    const oldest = this.#inflight.values().next().value ?? this.#front();
    return {
      pending: this.#pending.size,
      inFlight: this.#inflight.size,
      appending: this.#buffer.length + (this.#committing?.length ?? 0),
      waiting: this.#roomWaiters.length,
      flushed: this.#flushed,
      batches: this.#batches,
      failures: this.#failures,
      retries: this.#retries,
      recovered: this.#recovered,
      oldestPendingAgeMs: oldest === undefined ? 0 : Math.max(0, this.#clock.now() - oldest.since),
      lastVersion: this.#lastVersion,
      lastErrorCode: this.#lastErrorCode,
    };
  }
}

function errorCode(err: unknown): string {
  return isStrataError(err) ? err.code : 'E_UNKNOWN';
}
