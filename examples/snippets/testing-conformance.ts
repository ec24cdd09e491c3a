import type { KeyValueStore } from 'strata';
import { createMemoryStore } from 'strata/memory';
import { describeKeyValueStoreConformance, FakeClock } from 'strata/testing';

/** A key-value store that counts hits and misses, on top of any other store. */
export interface CountingStore extends KeyValueStore {
  hits: number;
  misses: number;
}

/** Wraps `inner`, delegating every call and counting the reads that found or missed a value. */
export function countingStore(inner: KeyValueStore): CountingStore {
  const count = (value: string | undefined) => {
    if (value === undefined) store.misses++;
    else store.hits++;
  };
  const store: CountingStore = {
    name: `counting ${inner.name}`,
    maxKeyLength: inner.maxKeyLength,
    hits: 0,
    misses: 0,
    async get(key) {
      const value = await inner.get(key);
      count(value);
      return value;
    },
    async getMany(keys) {
      const values = await inner.getMany(keys);
      values.forEach(count);
      return values;
    },
    set: (key, value, options) => inner.set(key, value, options),
    setMany: (entries) => inner.setMany(entries),
    delete: (key) => inner.delete(key),
    deleteMany: (keys) => inner.deleteMany(keys),
    has: (key) => inner.has(key),
    ttl: (key) => inner.ttl(key),
    clear: () => inner.clear(),
    setIfAbsent: (key, value, options) => inner.setIfAbsent(key, value, options),
    deleteIfEquals: (key, value) => inner.deleteIfEquals(key, value),
    close: () => inner.close(),
  };
  return store;
}

/** Registers the key-value conformance suite for the counting store; call it at the top of a spec file. */
export function describeCountingStoreConformance(): void {
  const clock = new FakeClock();
  describeKeyValueStoreConformance(
    'counting store over memory',
    ({ prefix, defaultTtl }) => countingStore(createMemoryStore({ prefix, defaultTtl, clock })),
    { advance: (ms) => clock.advance(ms) },
  );
}
