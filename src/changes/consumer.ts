/**
 * The consumer runtime every derived view uses: a named consumer reads a change log from its
 * durable checkpoint and hands changes to a handler, at least once, in commit order per key.
 *
 * - Keys (a table's row) are processed in parallel, each key strictly in log order.
 * - A failing change is retried with backoff, then dead-lettered; while it retries only its own
 *   key waits, other keys keep flowing (bounded by `maxBuffered`).
 * - The checkpoint is the highest offset below which everything is done (a contiguous
 *   watermark), so a crash re-delivers only what was not finished; handlers stay idempotent
 *   with `applyIfNewer`.
 * - With a lease (default), several processes may run the same consumer: one works, the others
 *   stand by and take over when its lease expires; checkpoint writes are fenced by the lease's
 *   epoch, so a stalled former owner cannot move the checkpoint.
 */
import { hostname } from 'node:os';
import { backoffDelay, type RetryOptions, retryPolicy } from '../core/async.js';
import { type ChangeLog, type CheckpointStore, changeKey, type LogEntry } from '../core/changes.js';
import { type Clock, systemClock, type TimerHandle } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ConfigError, isStrataError } from '../core/errors.js';
import { assertConsumerName } from './sql-checkpoint-store.js';

/** Passed to handlers. */
export interface ConsumerContext {
  consumer: string;
  /** 1 on the first delivery of this change to this process, 2+ on retries. */
  attempt: number;
  /** The lease epoch this process holds (0 without a lease), for fencing the handler's own writes. */
  epoch: number;
}

/** Options for `createConsumer`; give `handle` or `handleBatch`. */
export interface ConsumerOptions {
  /** The consumer's durable name (letters, digits, `_.:-`). */
  name: string;
  log: ChangeLog;
  checkpoints: CheckpointStore;
  /** Handles one change; changes of one key never run concurrently and arrive in log order. */
  handle?: (entry: LogEntry, context: ConsumerContext) => Promise<void> | void;
  /**
   * Handles a batch (entries of several keys, each key's in log order), for handlers that write
   * in bulk. If a batch fails, its keys are retried one change at a time to find the culprit.
   */
  handleBatch?: (entries: LogEntry[], context: ConsumerContext) => Promise<void> | void;
  /** Only changes of these tables (default all). */
  tables?: readonly string[];
  /** Entries per read and per batch (default 100). */
  batchSize?: number;
  /** Keys (or batches) in flight at once (default 4). */
  concurrency?: number;
  /** Entries held in memory at most; reading pauses beyond it (default batchSize × 20). */
  maxBuffered?: number;
  /** Attempts before a change is dead-lettered (default 5) and the backoff between them (100ms doubling to 30s). */
  retry?: RetryOptions;
  /** How often to look for new entries when the log's watch is silent (default 1s). */
  pollInterval?: Duration;
  /** Lease for exclusive processing across processes (default ttl 15s); `false` to run without one. */
  lease?: { ttl?: Duration } | false;
  /** This process's owner id for the lease (default host:pid:random). */
  owner?: string;
  /** Where a consumer without a checkpoint starts: the log's beginning (default) or its end. */
  startFrom?: 'beginning' | 'end';
  clock?: Clock;
  /** Called with handler and log errors (the runtime keeps going). */
  onError?: (err: unknown, entry?: LogEntry) => void;
}

/** What a consumer is doing, for the dashboard and `strata changes consumers`. */
export interface ConsumerStats {
  name: string;
  status: 'stopped' | 'starting' | 'standby' | 'running' | 'paused';
  /** Offset of the last entry fully processed and saved. */
  checkpoint: number;
  /** Offset of the newest entry in the log, as last seen. */
  head: number;
  /** Entries behind the head. */
  lagChanges: number;
  /** Age of the oldest unprocessed change, in seconds (0 when caught up). */
  lagSeconds: number;
  processed: number;
  retries: number;
  deadLetters: number;
  buffered: number;
  inFlight: number;
  owner: string;
  epoch: number;
  lastErrorCode: string | undefined;
}

/** A consumer. */
export interface Consumer {
  /** Starts (or, without the lease, waits in standby); resolves once the loop is running. */
  start(): Promise<void>;
  /** Stops taking new work; running handlers finish and their progress is saved. */
  pause(): void;
  resume(): void;
  /** Stops, saves the checkpoint and releases the lease. Safe to call twice. */
  stop(): Promise<void>;
  stats(): ConsumerStats;
  /** Resolves once every entry up to `offset` (default: the current head) is processed. */
  drained(offset?: number): Promise<void>;
}

interface KeyState {
  key: string;
  queue: LogEntry[];
  busy: boolean;
  /** After a failed batch, handle this key one change at a time until its queue drains. */
  single: boolean;
  attempts: number;
  blockedUntil: number;
}

/** Creates a consumer; call `start()`. Options are validated now (`E_CONFIG` naming the option). */
export function createConsumer(options: ConsumerOptions): Consumer {
  return new ConsumerRuntime(options);
}

class ConsumerRuntime implements Consumer {
  readonly #o: ConsumerOptions;
  readonly #clock: Clock;
  readonly #batchSize: number;
  readonly #concurrency: number;
  readonly #maxBuffered: number;
  readonly #pollMs: number;
  readonly #leaseMs: number | undefined;
  readonly #owner: string;
  readonly #policy: ReturnType<typeof retryPolicy>;
  readonly #tables: readonly string[] | undefined;

  #status: ConsumerStats['status'] = 'stopped';
  #epoch = 0;
  #checkpoint = 0;
  #watermark = 0;
  #fetched = 0;
  #head = 0;
  #order: number[] = [];
  #orderStart = 0;
  #done = new Set<number>();
  #keys = new Map<string, KeyState>();
  /** Keys with work and nobody on them, oldest first. */
  #ready = new Set<KeyState>();
  /** Keys waiting out a retry backoff. */
  #blocked = new Set<KeyState>();
  #entriesByOffset = new Map<number, LogEntry>();
  #buffered = 0;
  #inFlight = 0;
  #processed = 0;
  #retries = 0;
  #deadLetters = 0;
  #lastErrorCode: string | undefined;
  #paused = false;
  #running = false;
  #loop: Promise<void> | undefined;
  #wakeResolve: (() => void) | undefined;
  #wakePending = false;
  /** The last read came back short: nothing more to read until the log signals or a poll is due. */
  #caughtUpAt: number | undefined;
  /** The log's watch fired since the last read. */
  #logSignal = false;
  #saving: Promise<void> | undefined;
  #unwatch: (() => void) | undefined;
  #drainWaiters: Array<{ offset: number; resolve: () => void }> = [];
  #tasks = new Set<Promise<void>>();
  #leaseRenewedAt = 0;

  constructor(o: ConsumerOptions) {
    assertConsumerName(o.name, 'name');
    if ((o.handle === undefined) === (o.handleBatch === undefined)) {
      throw new ConfigError('handle', 'give exactly one of handle or handleBatch');
    }
    const positiveInt = (v: number | undefined, option: string, fallback: number) => {
      const n = v ?? fallback;
      if (!Number.isInteger(n) || n < 1) throw new ConfigError(option, 'must be a positive integer');
      return n;
    };
    this.#o = o;
    this.#clock = o.clock ?? systemClock;
    this.#batchSize = positiveInt(o.batchSize, 'batchSize', 100);
    this.#concurrency = positiveInt(o.concurrency, 'concurrency', 4);
    this.#maxBuffered = positiveInt(o.maxBuffered, 'maxBuffered', this.#batchSize * 20);
    this.#pollMs = parseDuration(o.pollInterval ?? '1s', 'pollInterval', { allowZero: false });
    this.#leaseMs =
      o.lease === false ? undefined : parseDuration(o.lease?.ttl ?? '15s', 'lease.ttl', { allowZero: false });
    this.#owner = o.owner ?? `${hostname()}:${process.pid}:${Math.random().toString(36).slice(2, 8)}`;
    this.#policy = retryPolicy({ attempts: 5, initialDelay: 100, maxDelay: 30_000, ...o.retry }, 'retry');
    this.#tables = o.tables;
  }

  // ---------------------------------------------------------------------------------------
  // Lifecycle

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#status = 'starting';
    this.#unwatch = this.#o.log.watch(() => {
      this.#logSignal = true;
      this.#wake();
    });
    this.#loop = this.#run().catch((err) => {
      this.#report(err);
      this.#status = 'stopped';
      this.#running = false;
    });
  }

  pause(): void {
    this.#paused = true;
    if (this.#status === 'running') this.#status = 'paused';
  }

  resume(): void {
    this.#paused = false;
    if (this.#status === 'paused') this.#status = 'running';
    this.#wake();
  }

  async stop(): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    this.#unwatch?.();
    this.#wake();
    await this.#loop;
    await Promise.allSettled([...this.#tasks]);
    await this.#saveCheckpoint().catch((err) => this.#report(err));
    if (this.#leaseMs !== undefined && this.#epoch > 0) {
      await this.#o.checkpoints.release(this.#o.name, this.#owner).catch((err) => this.#report(err));
    }
    this.#status = 'stopped';
  }

  stats(): ConsumerStats {
    const front =
      this.#order.length > this.#orderStart
        ? this.#entriesByOffset.get(this.#order[this.#orderStart]!)
        : undefined;
    return {
      name: this.#o.name,
      status: this.#status,
      checkpoint: this.#checkpoint,
      head: this.#head,
      lagChanges: Math.max(0, this.#head - this.#watermark),
      lagSeconds: front === undefined ? 0 : Math.max(0, (this.#clock.now() - front.commitTime) / 1000),
      processed: this.#processed,
      retries: this.#retries,
      deadLetters: this.#deadLetters,
      buffered: this.#buffered,
      inFlight: this.#inFlight,
      owner: this.#owner,
      epoch: this.#epoch,
      lastErrorCode: this.#lastErrorCode,
    };
  }

  drained(offset?: number): Promise<void> {
    return (async () => {
      const target = offset ?? (await this.#o.log.head());
      if (this.#checkpoint >= target) return;
      await new Promise<void>((resolve) => this.#drainWaiters.push({ offset: target, resolve }));
    })();
  }

  // ---------------------------------------------------------------------------------------
  // The loop

  async #run(): Promise<void> {
    while (this.#running) {
      if (!(await this.#holdLease())) {
        this.#status = 'standby';
        await this.#sleep(Math.max(50, Math.floor((this.#leaseMs ?? 1000) / 3)));
        continue;
      }
      if (this.#status === 'standby' || this.#status === 'starting') {
        await this.#resetFromCheckpoint();
        this.#status = this.#paused ? 'paused' : 'running';
      }
      if (!this.#paused) {
        await this.#fill();
        this.#dispatch();
      }
      await this.#sleep(this.#nextWakeDelay());
    }
  }

  /** Takes or renews the lease when due; false while another process holds it. */
  async #holdLease(): Promise<boolean> {
    if (this.#leaseMs === undefined) {
      if (this.#epoch === 0) this.#epoch = -1; // no lease: mark as started once
      return true;
    }
    const now = this.#clock.now();
    if (this.#epoch > 0 && now - this.#leaseRenewedAt < this.#leaseMs / 3) return true;
    try {
      const lease = await this.#o.checkpoints.acquire(this.#o.name, this.#owner, this.#leaseMs);
      if (lease === undefined) {
        if (this.#epoch > 0) await this.#loseLease();
        return false;
      }
      if (this.#epoch > 0 && lease.epoch !== this.#epoch) {
        // Someone else held it in between: our buffered state is stale.
        await this.#loseLease();
        this.#epoch = lease.epoch;
        this.#leaseRenewedAt = now;
        this.#status = 'standby';
        return true;
      }
      this.#epoch = lease.epoch;
      this.#leaseRenewedAt = now;
      return true;
    } catch (err) {
      this.#report(err);
      return this.#epoch > 0 && now - this.#leaseRenewedAt < this.#leaseMs;
    }
  }

  async #loseLease(): Promise<void> {
    this.#epoch = 0;
    this.#status = 'standby';
    await Promise.allSettled([...this.#tasks]);
    this.#clearBuffers();
  }

  #clearBuffers(): void {
    this.#keys.clear();
    this.#ready.clear();
    this.#blocked.clear();
    this.#entriesByOffset.clear();
    this.#order = [];
    this.#orderStart = 0;
    this.#done.clear();
    this.#buffered = 0;
  }

  async #resetFromCheckpoint(): Promise<void> {
    this.#clearBuffers();
    this.#caughtUpAt = undefined;
    const saved = await this.#o.checkpoints.load(this.#o.name);
    let start = saved?.offset ?? 0;
    if (saved === undefined && this.#o.startFrom === 'end') start = await this.#o.log.head();
    this.#checkpoint = start;
    this.#watermark = start;
    this.#fetched = start;
  }

  /** Reads entries into per-key queues while there is room. */
  async #fill(): Promise<void> {
    // Caught up and nothing signalled: a handler finishing is no reason to ask the log again.
    if (
      this.#caughtUpAt !== undefined &&
      !this.#logSignal &&
      this.#clock.now() - this.#caughtUpAt < this.#pollMs
    )
      return;
    this.#logSignal = false;
    // Read only when a whole batch fits (or nothing is buffered), not one entry per freed slot.
    const room = () => this.#maxBuffered - this.#buffered;
    while (
      this.#running &&
      !this.#paused &&
      this.#epoch !== 0 &&
      (room() >= Math.min(this.#batchSize, this.#maxBuffered) || this.#buffered === 0)
    ) {
      const limit = Math.min(this.#batchSize, room());
      let head: number;
      let entries: LogEntry[];
      try {
        if (this.#tables === undefined) {
          // Unfiltered: a short read has seen everything there was; the last offset is the head.
          entries = await this.#o.log.read(this.#fetched, limit);
          head = entries.at(-1)?.offset ?? this.#fetched;
        } else {
          // Filtered: the head must be read first, so that "nothing matches up to the head"
          // cannot skip an entry appended between the two calls.
          head = await this.#o.log.head();
          entries = await this.#o.log.read(this.#fetched, limit, { tables: this.#tables });
        }
      } catch (err) {
        this.#report(err);
        return;
      }
      this.#head = Math.max(this.#head, head);
      for (const entry of entries) this.#enqueue(entry);
      this.#caughtUpAt = entries.length < limit ? this.#clock.now() : undefined;
      if (entries.length < limit) {
        // Nothing else matches up to `head`: skip past entries of other tables.
        if (head > this.#fetched) this.#fetched = head;
        if (this.#order.length === this.#orderStart && head > this.#watermark) {
          this.#watermark = head;
          this.#scheduleSave();
        }
        return;
      }
    }
  }

  #enqueue(entry: LogEntry): void {
    if (entry.offset <= this.#fetched) return;
    this.#fetched = entry.offset;
    const key = changeKey(entry);
    let state = this.#keys.get(key);
    if (state === undefined) {
      state = { key, queue: [], busy: false, single: false, attempts: 0, blockedUntil: 0 };
      this.#keys.set(key, state);
    }
    state.queue.push(entry);
    if (state.queue.length === 1 && !state.busy && !this.#blocked.has(state)) this.#ready.add(state);
    this.#order.push(entry.offset);
    this.#entriesByOffset.set(entry.offset, entry);
    this.#buffered++;
  }

  /** Starts handler tasks for ready keys, up to the concurrency. */
  #dispatch(): void {
    if (!this.#running || this.#paused || this.#epoch === 0) return;
    if (this.#blocked.size > 0) {
      const now = this.#clock.now();
      for (const k of this.#blocked) {
        if (k.blockedUntil <= now) {
          this.#blocked.delete(k);
          this.#ready.add(k);
        }
      }
    }
    const batchMode = this.#o.handleBatch !== undefined;
    while (this.#inFlight < this.#concurrency && this.#ready.size > 0) {
      const first = this.#ready.values().next().value as KeyState;
      this.#ready.delete(first);
      if (first.busy || first.queue.length === 0) continue;
      if (!batchMode || first.single) {
        this.#launch([first], () => this.#runSingle(first));
        continue;
      }
      const batchKeys = [first];
      let count = first.queue.length;
      for (const k of this.#ready) {
        if (count >= this.#batchSize) break;
        if (k.single || k.busy || k.queue.length === 0) continue;
        this.#ready.delete(k);
        batchKeys.push(k);
        count += k.queue.length;
      }
      this.#launch(batchKeys, () => this.#runBatch(batchKeys));
    }
  }

  #launch(keys: KeyState[], work: () => Promise<void>): void {
    for (const k of keys) k.busy = true;
    this.#inFlight++;
    const task = work()
      .catch((err) => this.#report(err))
      .finally(() => {
        for (const k of keys) {
          k.busy = false;
          if (k.queue.length === 0) {
            if (this.#keys.get(k.key) === k) this.#keys.delete(k.key);
          } else if (k.blockedUntil > this.#clock.now()) this.#blocked.add(k);
          else this.#ready.add(k);
        }
        this.#inFlight--;
        this.#tasks.delete(task);
        this.#wake();
      });
    this.#tasks.add(task);
  }

  #context(attempt: number): ConsumerContext {
    return { consumer: this.#o.name, attempt, epoch: Math.max(0, this.#epoch) };
  }

  async #runBatch(keys: KeyState[]): Promise<void> {
    const entries = keys
      .flatMap((k) => k.queue.slice(0, this.#batchSize))
      .sort((a, b) => a.offset - b.offset)
      .slice(0, this.#batchSize);
    try {
      await this.#o.handleBatch!(entries, this.#context(1));
    } catch (err) {
      this.#report(err, entries[0]);
      this.#retries++;
      // Find the culprit: these keys go one change at a time until their queues drain.
      for (const k of keys) k.single = true;
      return;
    }
    const taken = new Set(entries.map((e) => e.offset));
    for (const k of keys) {
      while (k.queue.length > 0 && taken.has(k.queue[0]!.offset)) this.#complete(k, k.queue.shift()!);
    }
  }

  async #runSingle(k: KeyState): Promise<void> {
    while (k.queue.length > 0 && this.#running && this.#epoch !== 0 && !this.#paused) {
      const entry = k.queue[0]!;
      try {
        if (this.#o.handle !== undefined) await this.#o.handle(entry, this.#context(k.attempts + 1));
        else await this.#o.handleBatch!([entry], this.#context(k.attempts + 1));
      } catch (err) {
        this.#report(err, entry);
        k.attempts++;
        if (k.attempts < this.#policy.attempts) {
          this.#retries++;
          k.blockedUntil = this.#clock.now() + backoffDelay(this.#policy, k.attempts);
          return;
        }
        await this.#deadLetter(entry, k.attempts, err);
      }
      k.queue.shift();
      this.#complete(k, entry);
    }
    if (k.queue.length === 0) k.single = false;
  }

  async #deadLetter(entry: LogEntry, attempts: number, err: unknown): Promise<void> {
    const code = isStrataError(err) ? err.code : err instanceof Error ? err.name : 'Error';
    // Only strata messages are known to be free of values; others are named by code alone.
    const message = isStrataError(err) ? err.message : 'handler failed';
    await this.#o.checkpoints.deadLetter({
      consumer: this.#o.name,
      offset: entry.offset,
      table: entry.table,
      key: entry.key,
      position: entry.position,
      attempts,
      errorCode: code,
      errorMessage: message,
      failedAt: this.#clock.now(),
      entry,
    });
    this.#deadLetters++;
  }

  #complete(k: KeyState, entry: LogEntry): void {
    k.attempts = 0;
    k.blockedUntil = 0;
    this.#processed++;
    this.#buffered--;
    this.#entriesByOffset.delete(entry.offset);
    this.#done.add(entry.offset);
    let advanced = false;
    while (this.#orderStart < this.#order.length && this.#done.has(this.#order[this.#orderStart]!)) {
      const offset = this.#order[this.#orderStart++]!;
      this.#done.delete(offset);
      this.#watermark = offset;
      advanced = true;
    }
    if (this.#orderStart > 4096 && this.#orderStart * 2 > this.#order.length) {
      this.#order = this.#order.slice(this.#orderStart);
      this.#orderStart = 0;
    }
    if (advanced) this.#scheduleSave();
  }

  // ---------------------------------------------------------------------------------------
  // Checkpoints

  #scheduleSave(): void {
    if (this.#saving !== undefined) return;
    this.#saving = (async () => {
      try {
        while (this.#watermark > this.#checkpoint && this.#epoch !== 0) await this.#saveCheckpoint();
      } catch (err) {
        this.#report(err);
        if (isStrataError(err, 'E_FENCED')) await this.#loseLease();
      } finally {
        this.#saving = undefined;
      }
    })();
  }

  async #saveCheckpoint(): Promise<void> {
    const target = this.#watermark;
    if (target <= this.#checkpoint) return;
    await this.#o.checkpoints.save(this.#o.name, target, this.#epoch > 0 ? this.#epoch : undefined);
    this.#checkpoint = target;
    this.#drainWaiters = this.#drainWaiters.filter((w) => {
      if (w.offset > this.#checkpoint) return true;
      w.resolve();
      return false;
    });
  }

  // ---------------------------------------------------------------------------------------
  // Waiting

  #nextWakeDelay(): number {
    let delay = this.#pollMs;
    const now = this.#clock.now();
    for (const k of this.#blocked) {
      if (k.blockedUntil > now) delay = Math.min(delay, k.blockedUntil - now);
    }
    if (this.#leaseMs !== undefined && this.#epoch > 0) {
      delay = Math.min(delay, Math.max(1, this.#leaseRenewedAt + this.#leaseMs / 3 - now));
    }
    return Math.max(1, delay);
  }

  #wake(): void {
    const resolve = this.#wakeResolve;
    this.#wakeResolve = undefined;
    if (resolve === undefined) this.#wakePending = true;
    else resolve();
  }

  #sleep(ms: number): Promise<void> {
    if (this.#wakePending) {
      this.#wakePending = false;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      let timer: TimerHandle | undefined;
      const done = () => {
        if (timer !== undefined) this.#clock.clearTimeout(timer);
        this.#wakeResolve = undefined;
        resolve();
      };
      this.#wakeResolve = done;
      timer = this.#clock.setTimeout(done, ms);
    });
  }

  #report(err: unknown, entry?: LogEntry): void {
    this.#lastErrorCode = isStrataError(err) ? err.code : err instanceof Error ? err.name : 'Error';
    this.#o.onError?.(err, entry);
  }
}
