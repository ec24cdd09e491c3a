/**
 * Cache invalidation from the change log ("invalidation from the commit log", as in Scaling
 * Memcache at Facebook): a mapping from a changed row to the cache keys it affects lets committed
 * changes remove those keys.
 *
 * - `createCacheInvalidator`: a durable consumer (checkpoint, lease, retries) that deletes the
 *   keys from every tier and tells other processes over the bus. One per deployment keeps the
 *   shared tier right even across restarts.
 * - `watchChangesForLocalCopies`: a per-process reader that drops in-process copies. It checks
 *   offsets for gaps and treats a lost connection to the log as a gap: it flushes the whole
 *   in-process tier rather than risk serving a stale value.
 */
import { type Consumer, createConsumer } from '../changes/consumer.js';
import type { ChangeLog, CheckpointStore, LogEntry } from '../core/changes.js';
import { type Clock, sleep, systemClock } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ConfigError } from '../core/errors.js';
import { type Cache, dropLocalKeys, invalidateFullKeys } from './cache.js';

/** For each captured table: the cache keys a changed row affects (called with the row before and after). */
export type KeyMapping = Readonly<
  Record<string, (row: Record<string, unknown>, entry: LogEntry) => readonly string[]>
>;

function keysOf(mapping: KeyMapping, entry: LogEntry): string[] {
  const map = mapping[entry.table];
  if (map === undefined) return [];
  const keys = new Set<string>();
  for (const row of [entry.before, entry.after]) {
    if (row === null) continue;
    // Key columns are in `key` even when `before` holds only them (or nothing).
    for (const k of map({ ...entry.key, ...row }, entry)) keys.add(k);
  }
  return [...keys];
}

function checkMapping(mapping: unknown): asserts mapping is KeyMapping {
  if (
    typeof mapping !== 'object' ||
    mapping === null ||
    Object.values(mapping).some((f) => typeof f !== 'function')
  ) {
    throw new ConfigError('keys', 'map each table name to a function (row) => cache keys');
  }
}

/** Options for `createCacheInvalidator`. */
export interface CacheInvalidatorOptions {
  cache: Cache;
  log: ChangeLog;
  checkpoints: CheckpointStore;
  /** The consumer's durable name (default `cache-invalidation`). */
  name?: string;
  keys: KeyMapping;
  pollInterval?: Duration;
  onError?: (err: unknown) => void;
}

/**
 * A durable consumer that deletes affected keys from every tier. While it cannot read the log, it
 * flushes this process's in-process copies (they could miss invalidations meanwhile).
 */
export function createCacheInvalidator(options: CacheInvalidatorOptions): Consumer {
  checkMapping(options.keys);
  const { cache } = options;
  return createConsumer({
    name: options.name ?? 'cache-invalidation',
    log: options.log,
    checkpoints: options.checkpoints,
    tables: Object.keys(options.keys),
    batchSize: 500,
    pollInterval: options.pollInterval ?? '200ms',
    handleBatch: async (entries) => {
      const keys = new Set<string>();
      for (const entry of entries) for (const k of keysOf(options.keys, entry)) keys.add(k);
      if (keys.size > 0) await invalidateFullKeys(cache, [...keys]);
    },
    onError: (err) => {
      cache.flushLocal();
      options.onError?.(err);
    },
  });
}

/** Options for `watchChangesForLocalCopies`. */
export interface LocalWatchOptions {
  cache: Cache;
  log: ChangeLog;
  keys: KeyMapping;
  /** How often to read when the log's watch is silent (default 200ms). */
  pollInterval?: Duration;
  clock?: Clock;
  onError?: (err: unknown) => void;
}

/** What the watcher has seen. */
export interface LocalWatchStats {
  offset: number;
  invalidated: number;
  gaps: number;
  flushes: number;
  connected: boolean;
}

/** A running watcher. */
export interface LocalWatch {
  start(): Promise<void>;
  stop(): Promise<void>;
  stats(): LocalWatchStats;
}

/**
 * Drops this process's in-process copies of keys whose rows changed. Starts at the log's head
 * (in-process copies made before are dropped too, by a flush at start). Reads every entry in
 * offset order: an offset that skips ahead, or a failed read, flushes the in-process tier.
 */
export function watchChangesForLocalCopies(options: LocalWatchOptions): LocalWatch {
  checkMapping(options.keys);
  const clock = options.clock ?? systemClock;
  const pollMs = parseDuration(options.pollInterval ?? '200ms', 'pollInterval', { allowZero: false });
  const stats: LocalWatchStats = { offset: 0, invalidated: 0, gaps: 0, flushes: 0, connected: false };
  let running = false;
  let loop: Promise<void> | undefined;
  let wake: (() => void) | undefined;
  let unwatch: (() => void) | undefined;
  const flush = () => {
    options.cache.flushLocal();
    stats.flushes++;
  };

  async function run(): Promise<void> {
    while (running) {
      try {
        const entries = await options.log.read(stats.offset, 500);
        if (!stats.connected) {
          // Back after a failure: anything could have changed while we could not read.
          if (stats.offset > 0) flush();
          stats.connected = true;
        }
        const keys = new Set<string>();
        for (const entry of entries) {
          if (entry.offset !== stats.offset + 1) {
            stats.gaps++;
            flush();
          }
          stats.offset = entry.offset;
          for (const k of keysOf(options.keys, entry)) keys.add(k);
        }
        if (keys.size > 0) {
          // Local copies only: the shared tier is the durable invalidator's job.
          dropLocalKeys(options.cache, keys);
          stats.invalidated += keys.size;
        }
        if (entries.length === 500) continue;
      } catch (err) {
        if (stats.connected) flush();
        stats.connected = false;
        options.onError?.(err);
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
        void sleep(pollMs, { clock }).then(resolve);
      });
    }
  }

  return {
    async start() {
      if (running) return;
      stats.offset = await options.log.head();
      stats.connected = true;
      flush();
      running = true;
      unwatch = options.log.watch(() => wake?.());
      loop = run();
    },
    async stop() {
      running = false;
      unwatch?.();
      wake?.();
      await loop;
    },
    stats: () => ({ ...stats }),
  };
}
