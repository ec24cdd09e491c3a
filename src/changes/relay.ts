/**
 * The relay moves committed changes from a source (SQLite outbox, PostgreSQL slot) into a log,
 * and acknowledges them at the source only after the log accepted them durably. When the log is
 * down it backs off and keeps the batch; the source keeps everything unacknowledged, so a crash
 * at any point loses nothing (the log skips what it already holds when the batch comes again).
 */
import { backoffDelay, type RetryOptions, retryPolicy } from '../core/async.js';
import type { Change, ChangeLog, ChangeSource, Position } from '../core/changes.js';
import { type Clock, sleep, systemClock } from '../core/clock.js';
import { ClosedError, ConfigError, isStrataError } from '../core/errors.js';

/** Options for `createRelay`. */
export interface RelayOptions {
  source: ChangeSource;
  log: ChangeLog;
  /**
   * Backoff between failed appends (default 50ms doubling to 5s, with jitter). `attempts` is
   * ignored: the relay retries until the log accepts or the relay stops.
   */
  backoff?: Omit<RetryOptions, 'attempts'>;
  /** Called with each failed append (for logs and metrics); the relay keeps retrying. */
  onError?: (err: unknown) => void;
  /**
   * Batches taken from the source before the oldest is in the log (default 4). Appends and
   * acknowledgements still happen one batch at a time, in order; this only lets the source read
   * ahead while the log writes.
   */
  pipeline?: number;
  clock?: Clock;
}

/** What a relay has done, for the dashboard and `strata changes`. */
export interface RelayStats {
  source: string;
  log: string;
  status: 'idle' | 'running' | 'backing-off' | 'stopped';
  /** Changes appended (excluding duplicates the log skipped). */
  relayed: number;
  duplicates: number;
  /** Failed append attempts so far. */
  failures: number;
  lastPosition: Position | undefined;
  lastOffset: number;
  lastRelayedAt: number | undefined;
  lastErrorCode: string | undefined;
}

/** A running relay. */
export interface Relay {
  /** Starts moving changes; resolves once the source started. */
  start(): Promise<void>;
  /** Stops after the current batch (a batch being retried is left unacknowledged). */
  stop(): Promise<void>;
  stats(): RelayStats;
}

/** Creates a relay from `source` to `log`. */
export function createRelay(options: RelayOptions): Relay {
  const { source, log } = options;
  const clock = options.clock ?? systemClock;
  const policy = retryPolicy(
    { initialDelay: 50, maxDelay: 5_000, ...options.backoff, attempts: 1 },
    'backoff',
  );
  const pipeline = options.pipeline ?? 4;
  if (!Number.isInteger(pipeline) || pipeline < 1)
    throw new ConfigError('pipeline', 'must be a positive integer');
  const stats: RelayStats = {
    source: source.name,
    log: log.name,
    status: 'idle',
    relayed: 0,
    duplicates: 0,
    failures: 0,
    lastPosition: undefined,
    lastOffset: 0,
    lastRelayedAt: undefined,
    lastErrorCode: undefined,
  };
  let stopping: AbortController | undefined;

  async function appendUntilAccepted(changes: Change[], signal: AbortSignal): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) throw new ClosedError(`relay ${source.name} -> ${log.name}`);
      try {
        const result = await log.append(changes);
        stats.relayed += result.appended;
        stats.duplicates += result.duplicates;
        stats.lastOffset = result.lastOffset;
        stats.status = 'running';
        return;
      } catch (err) {
        stats.failures++;
        stats.lastErrorCode = isStrataError(err) ? err.code : 'E_UNKNOWN';
        stats.status = 'backing-off';
        options.onError?.(err);
        await sleep(backoffDelay(policy, Math.min(attempt, 30)), { clock, signal }).catch(() => undefined);
      }
    }
  }

  return {
    async start() {
      if (stopping !== undefined && !stopping.signal.aborted) return;
      stopping = new AbortController();
      const signal = stopping.signal;
      stats.status = 'running';
      // Batches move through a queue: the source may run ahead by `pipeline` batches while one
      // worker appends and acknowledges them strictly in order.
      let tail: Promise<void> = Promise.resolve();
      let inFlight = 0;
      let room: (() => void) | undefined;
      let failed: unknown;
      await source.start(async (changes) => {
        if (changes.length === 0) return;
        if (failed !== undefined) throw failed;
        while (inFlight >= pipeline) {
          await new Promise<void>((resolve) => {
            room = resolve;
          });
          if (failed !== undefined) throw failed;
        }
        inFlight++;
        tail = tail.then(async () => {
          try {
            if (failed !== undefined) return;
            await appendUntilAccepted(changes, signal);
            // Only now is the batch safe elsewhere: let the source discard it.
            const last = changes[changes.length - 1]!.position;
            await source.acknowledge(last);
            stats.lastPosition = last;
            stats.lastRelayedAt = clock.now();
          } catch (err) {
            // Stopped, or the source refused the acknowledgement: later batches must not be
            // acknowledged past this one; the source delivers them again after a restart.
            failed ??= err;
          } finally {
            inFlight--;
            const wake = room;
            room = undefined;
            wake?.();
          }
        });
      });
    },

    async stop() {
      stopping?.abort();
      await source.stop();
      stats.status = 'stopped';
    },

    stats() {
      return { ...stats };
    },
  };
}
