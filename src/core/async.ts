import { type Clock, sleep, systemClock } from './clock.js';
import { type Duration, parseDuration } from './duration.js';
import { ConfigError, TimeoutError } from './errors.js';

/**
 * Resolves or rejects like `promise`, or rejects with `E_TIMEOUT` naming `operation` when it has
 * not settled within `ms`. The underlying work is not cancelled; pass `onTimeout` to clean up.
 */
export function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  operation: string,
  options: { clock?: Clock; onTimeout?: () => void } = {},
): Promise<T> {
  if (!Number.isFinite(ms)) return promise;
  const clock = options.clock ?? systemClock;
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const handle = clock.setTimeout(() => {
      if (settled) return;
      settled = true;
      options.onTimeout?.();
      reject(new TimeoutError(operation, ms));
    }, ms);
    promise.then(
      (value) => {
        if (settled) return;
        settled = true;
        clock.clearTimeout(handle);
        resolve(value);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        clock.clearTimeout(handle);
        reject(err);
      },
    );
  });
}

/** How a failed operation is retried: attempts and exponential backoff with full jitter. */
export interface RetryOptions {
  /** Total attempts including the first (default 3). */
  attempts?: number;
  /** Delay before the first retry (default 10ms). */
  initialDelay?: Duration;
  /** Upper bound for any delay (default 1s). */
  maxDelay?: Duration;
  /** Multiplier between successive delays (default 2). */
  factor?: number;
  /** Randomise each delay between 0 and the computed value (default true). */
  jitter?: boolean;
}

/** A validated, resolved retry policy. */
export interface RetryPolicy {
  readonly attempts: number;
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  readonly factor: number;
  readonly jitter: boolean;
}

/** Validates retry options once (throws `E_CONFIG` naming the option) and fills the defaults. */
export function retryPolicy(options: RetryOptions = {}, prefix = 'retry'): RetryPolicy {
  const attempts = options.attempts ?? 3;
  if (!Number.isInteger(attempts) || attempts < 1) {
    throw new ConfigError(`${prefix}.attempts`, 'must be an integer of at least 1');
  }
  const factor = options.factor ?? 2;
  if (!Number.isFinite(factor) || factor < 1) throw new ConfigError(`${prefix}.factor`, 'must be at least 1');
  return Object.freeze({
    attempts,
    initialDelayMs: parseDuration(options.initialDelay ?? 10, `${prefix}.initialDelay`),
    maxDelayMs: parseDuration(options.maxDelay ?? 1_000, `${prefix}.maxDelay`),
    factor,
    jitter: options.jitter ?? true,
  });
}

/** The delay before retry number `retry` (1-based) under `policy`. */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const base = Math.min(policy.maxDelayMs, policy.initialDelayMs * policy.factor ** (retry - 1));
  return policy.jitter ? Math.floor(random() * base) : base;
}

/**
 * Runs `fn` until it succeeds, `shouldRetry` returns false, or the attempts run out; the last
 * error is rethrown unchanged.
 */
export async function retry<T>(
  fn: (attempt: number) => Promise<T>,
  policy: RetryPolicy,
  shouldRetry: (err: unknown, attempt: number) => boolean,
  options: { clock?: Clock; signal?: AbortSignal } = {},
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (attempt >= policy.attempts || !shouldRetry(err, attempt)) throw err;
      await sleep(backoffDelay(policy, attempt), options);
    }
  }
}

/**
 * A FIFO async mutex: callbacks run one at a time, in call order. Used where one resource (a
 * SQLite connection) must not interleave work across awaits. Waits can be bounded.
 */
export class Mutex {
  #held = false;
  readonly #waiters: Array<() => void> = [];

  /** True while the mutex is held or somebody waits for it. */
  get locked(): boolean {
    return this.#held || this.#waiters.length > 0;
  }

  /**
   * Resolves with a release function once the mutex is ours; rejects with `E_TIMEOUT` naming
   * `operation` when that takes longer than `timeoutMs` (default: wait as long as it takes).
   */
  acquire(timeoutMs = Number.POSITIVE_INFINITY, operation = 'waiting for a lock'): Promise<() => void> {
    if (!this.#held) {
      this.#held = true;
      return Promise.resolve(this.#releaser());
    }
    return new Promise<() => void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const grant = () => {
        if (timer !== undefined) clearTimeout(timer);
        resolve(this.#releaser());
      };
      this.#waiters.push(grant);
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          const i = this.#waiters.indexOf(grant);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(new TimeoutError(operation, timeoutMs));
        }, timeoutMs);
        timer.unref();
      }
    });
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiters.shift();
      if (next === undefined) this.#held = false;
      else next();
    };
  }

  /** Runs `fn` once every earlier callback has settled; returns its result. */
  async run<T>(fn: () => Promise<T> | T, timeoutMs?: number, operation?: string): Promise<T> {
    const release = await this.acquire(timeoutMs, operation);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
