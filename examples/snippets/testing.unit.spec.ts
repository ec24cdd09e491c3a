import { createMemoryStore } from 'strata/memory';
import { describe, expect, it } from 'vitest';
import { countingStore, describeCountingStoreConformance } from './testing-conformance.js';
import { sessionExpiry } from './testing-fake-clock.js';

describeCountingStoreConformance();

describe('testing snippets', () => {
  it('testing-fake-clock: expires a session exactly at its TTL on the fake clock', async () => {
    expect(await sessionExpiry()).toEqual({ atStart: 1_800_000, justBefore: 'alice', after: undefined });
  });

  it('testing-conformance: the counting store counts hits and misses', async () => {
    const store = countingStore(createMemoryStore());
    await store.set('a', '1');
    await store.get('a');
    await store.getMany(['a', 'b']);
    expect({ hits: store.hits, misses: store.misses }).toEqual({ hits: 2, misses: 1 });
    await store.close();
  });
});
