/** The in-process write-behind queue: no durability, for tests and caches that can lose writes on a crash. */
import { ClosedError } from '../core/errors.js';
import {
  checkAcknowledgedVersion,
  checkWriteBehindRecords,
  versionConflict,
  type WriteBehindQueue,
  type WriteBehindRecord,
} from '../core/write-behind-queue.js';

/** Options for `createMemoryWriteBehindQueue`. */
export interface MemoryWriteBehindQueueOptions {
  /** A label for messages and metrics (default `memory-write-behind`). */
  name?: string;
}

/**
 * Creates a write-behind queue held in this process's memory: it survives the engine that used
 * it (a second engine given the same queue recovers its writes) but not the process. An engine
 * given no queue at all keeps its writes in memory without one, which is cheaper.
 */
export function createMemoryWriteBehindQueue(options: MemoryWriteBehindQueueOptions = {}): WriteBehindQueue {
  const name = options.name ?? 'memory-write-behind';
  let records: WriteBehindRecord[] = [];
  let last = 0;
  let closed = false;
  const assertOpen = () => {
    if (closed) throw new ClosedError(name);
  };
  return {
    name,
    async append(batch) {
      assertOpen();
      checkWriteBehindRecords(batch);
      if (batch.length === 0) return;
      if (batch[0]!.version <= last) throw versionConflict(name, last);
      for (const { key, value, version } of batch) records.push({ key, value, version });
      last = batch[batch.length - 1]!.version;
    },
    async load() {
      assertOpen();
      return records.map((record) => ({ ...record }));
    },
    async lastVersion() {
      assertOpen();
      return last;
    },
    async acknowledge(upToVersion) {
      assertOpen();
      checkAcknowledgedVersion(upToVersion);
      let kept = 0;
      while (kept < records.length && records[kept]!.version <= upToVersion) kept++;
      if (kept > 0) records = records.slice(kept);
    },
    async close() {
      closed = true;
    },
  };
}
