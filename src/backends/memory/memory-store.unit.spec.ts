import { describe, expect, it } from 'vitest';
import { isStrataError } from '../../core/errors.js';
import { FakeClock } from '../../testing/fake-clock.js';
import { describeKeyValueStoreConformance } from '../../testing/kv-store-conformance.js';
import { createMemoryStore, type MemoryStoreOptions } from './memory-store.js';

const conformanceClock = new FakeClock();
describeKeyValueStoreConformance(
  'memory',
  ({ prefix, defaultTtl }) => createMemoryStore({ prefix, defaultTtl, clock: conformanceClock }),
  { advance: (ms) => conformanceClock.advance(ms) },
);

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

describe('memory store', () => {
  it('expires an entry exactly when its ttl has passed on the injected clock', async () => {
    const clock = new FakeClock(0);
    const store = createMemoryStore({ clock });
    store.setSync('k', 'v', { ttl: '1s' });
    expect(await store.ttl('k')).toBe(1_000);
    await clock.advance(999);
    expect(store.getSync('k')).toBe('v');
    expect(await store.ttl('k')).toBe(1);
    await clock.advance(1);
    expect(store.getSync('k')).toBeUndefined();
    expect(store.stats().items).toBe(0);
  });

  it('evicts the least recently used entry beyond maxItems', async () => {
    const store = createMemoryStore({ maxItems: 3 });
    store.setSync('a', '1');
    store.setSync('b', '2');
    store.setSync('c', '3');
    expect(store.getSync('a')).toBe('1');
    store.setSync('d', '4');
    expect(await store.getMany(['a', 'b', 'c', 'd'])).toEqual(['1', undefined, '3', '4']);
    expect(store.stats()).toMatchObject({ items: 3, evictions: 1 });
    // has() and ttl() do not count as uses: 'a' stays least recently used after reading c and d.
    await store.has('a');
    await store.ttl('a');
    store.setSync('e', '5');
    expect(await store.getMany(['a', 'c', 'd', 'e'])).toEqual([undefined, '3', '4', '5']);
  });

  it('evicts least recently used entries beyond maxBytes, counting 2 bytes per code unit', async () => {
    const store = createMemoryStore({ maxBytes: 100 });
    store.setSync('k1', 'x'.repeat(18)); // (2 + 18) * 2 = 40 bytes
    store.setSync('k2', 'y'.repeat(18));
    expect(store.stats()).toMatchObject({ items: 2, bytes: 80 });
    expect(store.getSync('k1')).toBe('x'.repeat(18));
    store.setSync('k3', 'z'.repeat(18));
    expect(await store.getMany(['k1', 'k2', 'k3'])).toEqual(['x'.repeat(18), undefined, 'z'.repeat(18)]);
    expect(store.stats()).toEqual({ items: 2, bytes: 80, evictions: 1 });
    store.setSync('big', 'w'.repeat(47)); // (3 + 47) * 2 = 100 bytes: fits alone
    expect(store.stats()).toMatchObject({ items: 1, bytes: 100 });
  });

  it('rejects a value larger than maxBytes with E_VALIDATION and keeps the previous value', async () => {
    const store = createMemoryStore({ maxBytes: 100 });
    store.setSync('k', 'small');
    const err = thrown(() => store.setSync('k', 'x'.repeat(50)));
    expect(isStrataError(err, 'E_VALIDATION')).toBe(true);
    expect((err as Error).message).not.toContain('xxxx');
    const batch = await store.setMany([{ key: 'other', value: 'x'.repeat(49) }]).catch((e: unknown) => e);
    expect(isStrataError(batch, 'E_VALIDATION')).toBe(true);
    expect(store.getSync('k')).toBe('small');
    expect(store.stats().items).toBe(1);
  });

  it('tracks bytes without a byte bound', () => {
    const store = createMemoryStore({ maxBytes: Number.POSITIVE_INFINITY });
    store.setSync('key', 'value');
    expect(store.stats()).toEqual({ items: 1, bytes: 16, evictions: 0 });
  });

  it('serves synchronous reads and writes with the same checks as the async ones', async () => {
    const clock = new FakeClock();
    const store = createMemoryStore({ clock, defaultTtl: '10s' });
    store.setSync('k', 'v');
    expect(await store.get('k')).toBe('v');
    expect(await store.ttl('k')).toBe(10_000);
    await store.set('k2', 'v2', { ttl: Number.POSITIVE_INFINITY });
    expect(store.getSync('k2')).toBe('v2');
    expect(
      isStrataError(
        thrown(() => store.getSync('')),
        'E_VALIDATION',
      ),
    ).toBe(true);
    expect(thrown(() => store.setSync('k', 'v', { ttl: '-1s' }))).toMatchObject({
      code: 'E_CONFIG',
      option: 'ttl',
    });
    expect(thrown(() => store.setSync('k', 'v', 5_000 as never))).toMatchObject({ code: 'E_CONFIG' });
    await store.close();
    expect(
      isStrataError(
        thrown(() => store.getSync('k')),
        'E_CLOSED',
      ),
    ).toBe(true);
    expect(
      isStrataError(
        thrown(() => store.setSync('k', 'v')),
        'E_CLOSED',
      ),
    ).toBe(true);
  });

  it('rejects keys longer than maxKeyLength', async () => {
    const store = createMemoryStore({ maxKeyLength: 8 });
    await store.set('12345678', 'v');
    const err = await store.set('123456789', 'v').catch((e: unknown) => e);
    expect(isStrataError(err, 'E_VALIDATION')).toBe(true);
    expect(store.maxKeyLength).toBe(8);
  });

  it('rejects invalid options at construction time with E_CONFIG naming the option', () => {
    const cases: [MemoryStoreOptions, string][] = [
      [{ maxItems: 0 }, 'maxItems'],
      [{ maxItems: -1 }, 'maxItems'],
      [{ maxItems: 1.5 }, 'maxItems'],
      [{ maxItems: Number.POSITIVE_INFINITY }, 'maxItems'],
      [{ maxItems: 2 ** 30 }, 'maxItems'],
      [{ maxBytes: -1 }, 'maxBytes'],
      [{ maxBytes: 0 }, 'maxBytes'],
      [{ maxBytes: '1MB' as unknown as number }, 'maxBytes'],
      [{ maxKeyLength: 0 }, 'maxKeyLength'],
      [{ defaultTtl: '-1s' }, 'defaultTtl'],
      [{ defaultTtl: 'abc' }, 'defaultTtl'],
      [{ defaultTtl: 0 }, 'defaultTtl'],
      [{ prefix: 7 as unknown as string }, 'prefix'],
      [{ name: '' }, 'name'],
      [{ clock: {} as never }, 'clock'],
    ];
    for (const [options, option] of cases) {
      expect(
        thrown(() => createMemoryStore(options)),
        option,
      ).toMatchObject({ code: 'E_CONFIG', option });
    }
  });

  it('names itself and exposes its prefix', () => {
    expect(createMemoryStore().name).toBe('memory');
    const store = createMemoryStore({ name: 'sessions', prefix: 'sess:' });
    expect(store.name).toBe('sessions');
    expect(store.prefix).toBe('sess:');
  });
});
