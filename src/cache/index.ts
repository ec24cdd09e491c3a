/**
 * Caching: cache-aside (`getOrSet`), read-through, write-through, write-behind and TTL, on an
 * in-process tier and a shared tier (Redis), kept coherent by a bus and by the change log.
 */

export type {
  Cache,
  CacheOptions,
  CacheStats,
  EntryOptions,
  GetOrSetOptions,
  LoaderContext,
  ReadThrough,
  TierStats,
  WriteThrough,
} from './cache.js';
export { createCache } from './cache.js';
export type {
  CacheInvalidatorOptions,
  KeyMapping,
  LocalWatch,
  LocalWatchOptions,
  LocalWatchStats,
} from './invalidation.js';
export { createCacheInvalidator, watchChangesForLocalCopies } from './invalidation.js';
export type {
  PendingWrite,
  WriteBehind,
  WriteBehindItem,
  WriteBehindOptions,
  WriteBehindStats,
} from './write-behind.js';
export { createWriteBehind } from './write-behind.js';
export type { MemoryWriteBehindQueueOptions } from './write-behind-queue.js';
export { createMemoryWriteBehindQueue } from './write-behind-queue.js';
