/** The in-process memory tier on lru-cache: the embedded default key-value store. */

export type { LruMap, LruMapOptions } from './memory-lru.js';
export { createLruMap } from './memory-lru.js';
export type { MemoryStore, MemoryStoreOptions, MemoryStoreStats } from './memory-store.js';
export { createMemoryStore } from './memory-store.js';
