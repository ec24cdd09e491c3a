import { LRUCache } from 'lru-cache';
import { ConfigError } from '../../core/errors.js';

/** Options for `createLruMap`. */
export interface LruMapOptions<V> {
  /** Most entries held (default 10,000); the least recently used is evicted beyond it. */
  maxItems?: number;
  /** Most bytes held, as `sizeOf` counts them (default: no byte bound). */
  maxBytes?: number;
  /** The size of an entry in bytes; required with `maxBytes`. */
  sizeOf?: (value: V, key: string) => number;
  /** Called when an entry is evicted to make room (not on delete or overwrite). */
  onEvict?: (key: string, value: V) => void;
}

/** A bounded least-recently-used map of live objects, for in-process cache tiers. */
export interface LruMap<V> {
  get(key: string): V | undefined;
  /** Like `get` without refreshing recency. */
  peek(key: string): V | undefined;
  set(key: string, value: V): void;
  delete(key: string): boolean;
  clear(): void;
  readonly size: number;
  /** Bytes held as `sizeOf` counts them (0 without a byte bound). */
  readonly bytes: number;
  keys(): IterableIterator<string>;
}

/** Creates a bounded LRU map on lru-cache; `E_CONFIG` naming the option for bad bounds. */
export function createLruMap<V extends object>(options: LruMapOptions<V> = {}): LruMap<V> {
  const maxItems = options.maxItems ?? 10_000;
  if (!Number.isInteger(maxItems) || maxItems < 1 || maxItems > 2 ** 24) {
    throw new ConfigError('maxItems', 'must be an integer from 1 to 2^24');
  }
  const maxBytes = options.maxBytes;
  if (maxBytes !== undefined && (!Number.isFinite(maxBytes) || maxBytes < 1)) {
    throw new ConfigError('maxBytes', 'must be a positive number');
  }
  if (maxBytes !== undefined && options.sizeOf === undefined) {
    throw new ConfigError('sizeOf', 'is required with maxBytes');
  }
  const onEvict = options.onEvict;
  const cache = new LRUCache<string, V>({
    max: maxItems,
    ...(maxBytes === undefined
      ? {}
      : {
          maxSize: maxBytes,
          sizeCalculation: (value: V, key: string) => Math.max(1, options.sizeOf!(value, key)),
        }),
    ...(onEvict === undefined
      ? {}
      : {
          dispose: (value: V, key: string, reason: LRUCache.DisposeReason) => {
            if (reason === 'evict') onEvict(key, value);
          },
        }),
  });
  return {
    get: (key) => cache.get(key),
    peek: (key) => cache.peek(key),
    set: (key, value) => {
      cache.set(key, value);
    },
    delete: (key) => cache.delete(key),
    clear: () => cache.clear(),
    get size() {
      return cache.size;
    },
    get bytes() {
      return cache.calculatedSize ?? 0;
    },
    keys: () => cache.keys(),
  };
}
