import { describe, expect, it } from 'vitest';
import { createMemoryStore } from '../backends/memory/memory-store.js';
import { isStrataError } from '../core/errors.js';
import { FakeClock } from '../testing/fake-clock.js';
import { type CacheOptions, createCache } from './cache.js';

const fresh = (options: CacheOptions = {}) => {
  const clock = new FakeClock();
  return { clock, cache: createCache({ clock, ...options }) };
};

describe('cache-aside on the memory tier', () => {
  it('loads once, then serves hits without calling the loader', async () => {
    const { cache: pending } = fresh();
    const cache = await pending;
    let loads = 0;
    const load = async () => {
      loads++;
      return { id: 1, name: 'Ada' };
    };
    expect(await cache.getOrSet('user:1', load)).toEqual({ id: 1, name: 'Ada' });
    expect(await cache.getOrSet('user:1', load)).toEqual({ id: 1, name: 'Ada' });
    expect(loads).toBe(1);
    expect(cache.stats()).toMatchObject({ loads: 1, memory: { hits: 1 } });
  });

  it('runs one load for many concurrent misses of a key', async () => {
    const cache = await fresh().cache;
    let loads = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const calls = Array.from({ length: 100 }, () =>
      cache.getOrSet('hot', async () => {
        loads++;
        await gate;
        return 42;
      }),
    );
    release();
    expect(await Promise.all(calls)).toEqual(Array(100).fill(42));
    expect(loads).toBe(1);
    expect(cache.stats().coalesced).toBe(99);
  });

  it('expires values after their TTL, with the TTL the loader chose', async () => {
    const { clock, cache: pending } = fresh({ ttl: '1m' });
    const cache = await pending;
    let n = 0;
    const load = async (ctx: { setTtl(t: string): void }) => {
      n++;
      if (n === 1) ctx.setTtl('10s');
      return n;
    };
    expect(await cache.getOrSet('k', load)).toBe(1);
    await clock.advance(9_999);
    expect(await cache.getOrSet('k', load)).toBe(1);
    await clock.advance(2);
    expect(await cache.getOrSet('k', load)).toBe(2);
    await clock.advance(59_000);
    expect(await cache.getOrSet('k', load)).toBe(2);
  });

  it('spreads expiries with jitter, within the bound', async () => {
    const { clock, cache: pending } = fresh({ ttl: '100s', jitter: 0.2 });
    const cache = await pending;
    for (let i = 0; i < 200; i++) await cache.set(`k${i}`, i);
    await clock.advance(79_999);
    expect(
      (await cache.getMany(Array.from({ length: 200 }, (_, i) => `k${i}`))).every((v) => v !== undefined),
    ).toBe(true);
    await clock.advance(20_000);
    const mid = (await cache.getMany(Array.from({ length: 200 }, (_, i) => `k${i}`))).filter(
      (v) => v !== undefined,
    ).length;
    expect(mid).toBeGreaterThan(0);
    expect(mid).toBeLessThan(200);
    await clock.advance(20_002);
    expect(
      (await cache.getMany(Array.from({ length: 200 }, (_, i) => `k${i}`))).every((v) => v === undefined),
    ).toBe(true);
  });

  it('caches "not found" briefly', async () => {
    const { clock, cache: pending } = fresh({ negativeTtl: '5s' });
    const cache = await pending;
    let loads = 0;
    const load = async (ctx: { notFound(): undefined }) => {
      loads++;
      return ctx.notFound();
    };
    expect(await cache.getOrSet('missing', load)).toBeUndefined();
    expect(await cache.getOrSet('missing', load)).toBeUndefined();
    expect(loads).toBe(1);
    expect(cache.stats().negativeHits).toBe(1);
    await clock.advance(5_001);
    await cache.getOrSet('missing', load);
    expect(loads).toBe(2);
  });

  it('serves the stale value within grace when the loader fails, and throws without grace', async () => {
    const { clock, cache: pending } = fresh({ ttl: '10s', grace: '1h' });
    const cache = await pending;
    await cache.getOrSet('k', async () => 'v1');
    await clock.advance(11_000);
    const errors: unknown[] = [];
    expect(
      await cache.getOrSet('k', async () => {
        errors.push('called');
        throw new Error('database down');
      }),
    ).toBe('v1');
    expect(cache.stats()).toMatchObject({ staleServed: 1, loadErrors: 1 });
    const none = await fresh({ ttl: '10s' }).cache;
    await none.set('k', 'v1');
    const err = await none
      .getOrSet('other', async () => {
        throw new Error('database down');
      })
      .catch((e: Error) => e.message);
    expect(err).toBe('database down');
  });

  it('answers stale after the soft timeout and stores the late value', async () => {
    const { clock, cache: pending } = fresh({ ttl: '10s', grace: '1h', timeouts: { soft: '100ms' } });
    const cache = await pending;
    await cache.set('k', 'old');
    await clock.advance(11_000);
    let finish!: (v: string) => void;
    const answer = cache.getOrSet(
      'k',
      () =>
        new Promise<string>((r) => {
          finish = r;
        }),
    );
    await clock.advance(100);
    expect(await answer).toBe('old');
    finish('new');
    await clock.advance(1);
    expect(await cache.get('k')).toBe('new');
  });

  it('stops waiting at the hard timeout with E_TIMEOUT when nothing stale exists', async () => {
    const { clock, cache: pending } = fresh({ timeouts: { hard: '1s' } });
    const cache = await pending;
    const answer = cache.getOrSet('k', () => new Promise<string>(() => undefined)).catch((e: unknown) => e);
    await clock.advance(1_000);
    const err = await answer;
    expect(isStrataError(err, 'E_TIMEOUT')).toBe(true);
  });

  it('refuses values it cannot store, and bad options, with typed errors', async () => {
    const cache = await fresh({ maxValueBytes: 100 }).cache;
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const value of [undefined, cyclic, { f: () => 1 }, 'x'.repeat(200)]) {
      const err = await cache.set('k', value).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_VALIDATION')).toBe(true);
    }
    expect(await cache.get('k')).toBeUndefined();
    const fromLoader = await cache
      .getOrSet('k', async () => undefined as unknown as string)
      .catch((e: unknown) => e);
    expect(isStrataError(fromLoader, 'E_VALIDATION')).toBe(true);
    for (const key of ['', '__tag:x', 42 as unknown as string]) {
      expect(isStrataError(await cache.get(key).catch((e: unknown) => e), 'E_VALIDATION')).toBe(true);
    }
    const bad: [CacheOptions, string][] = [
      [{ ttl: '-1s' }, 'ttl'],
      [{ ttl: 0 }, 'ttl'],
      [{ jitter: 0.9 }, 'jitter'],
      [{ grace: 'soon' }, 'grace'],
      [{ memory: false }, 'memory'],
      [{ timeouts: { soft: '-5ms' } }, 'timeouts.soft'],
      [{ maxValueBytes: 0 }, 'maxValueBytes'],
      [{ breaker: { failures: 0 } }, 'breaker.failures'],
    ];
    for (const [options, option] of bad) {
      await expect(createCache(options)).rejects.toMatchObject({ code: 'E_CONFIG', option });
    }
  });

  it('deletes and expires by tag', async () => {
    const { clock, cache: pending } = fresh({ grace: '1h' });
    const cache = await pending;
    await cache.set('post:1', 'a', { tags: ['user:7'] });
    await cache.set('post:2', 'b', { tags: ['user:7', 'hot'] });
    await cache.set('post:3', 'c', { tags: ['user:8'] });
    await cache.deleteByTag(['user:7']);
    expect(await cache.getMany(['post:1', 'post:2', 'post:3'])).toEqual([undefined, undefined, 'c']);
    await clock.advance(1);
    await cache.set('post:1', 'a2', { tags: ['user:7'] });
    expect(await cache.get('post:1')).toBe('a2');
    await clock.advance(1);
    await cache.expireByTag(['user:8']);
    expect(await cache.get('post:3')).toBeUndefined();
    expect(await cache.get('post:3', { allowStale: true })).toBe('c');
    expect(
      await cache.getOrSet('post:3', async () => {
        throw new Error('down');
      }),
    ).toBe('c');
  });

  it('keeps namespaces apart and clears one without the others', async () => {
    const { clock, cache: pending } = fresh();
    const cache = await pending;
    const users = cache.namespace('users');
    const posts = cache.namespace('posts');
    await users.set('1', 'ada');
    await posts.set('1', 'hello');
    await cache.set('1', 'root');
    await clock.advance(1);
    await users.clear();
    expect(await users.get('1')).toBeUndefined();
    expect(await posts.get('1')).toBe('hello');
    expect(await cache.get('1')).toBe('root');
    await clock.advance(1);
    await users.set('1', 'back');
    expect(await users.get('1')).toBe('back');
    expect(() => cache.namespace('bad name!')).toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
  });

  it('expires a single key logically, keeping it as a fallback', async () => {
    const cache = await fresh({ grace: '1m' }).cache;
    await cache.set('k', 'v');
    await cache.expire('k');
    expect(await cache.get('k')).toBeUndefined();
    expect(await cache.get('k', { allowStale: true })).toBe('v');
  });

  it('does not store a value loaded before a concurrent invalidation of its key', async () => {
    const cache = await fresh().cache;
    let finish!: (v: string) => void;
    const load = cache.getOrSet(
      'k',
      () =>
        new Promise<string>((r) => {
          finish = r;
        }),
    );
    await Promise.resolve();
    await cache.delete('k');
    finish('read before the delete');
    expect(await load).toBe('read before the delete');
    expect(await cache.get('k')).toBeUndefined();
    expect(cache.stats().staleSetsPrevented).toBe(1);
  });

  it('offers read-through and write-through with documented failure semantics', async () => {
    const cache = await fresh().cache;
    const store = new Map<number, string>([[1, 'one']]);
    const reader = cache.readThrough({
      key: (id: number) => `n:${id}`,
      load: async (id) => store.get(id)!,
      ttl: '1m',
    });
    expect(await reader.get(1)).toBe('one');
    store.set(1, 'changed behind the cache');
    expect(await reader.get(1)).toBe('one');
    const writer = cache.writeThrough({
      key: (id: number) => `n:${id}`,
      write: async (id, value: string) => {
        if (value === 'bad') throw new Error('store refused');
        store.set(id, value);
      },
    });
    await writer.set(1, 'written');
    expect(store.get(1)).toBe('written');
    expect(await cache.get('n:1')).toBe('written');
    await expect(writer.set(1, 'bad')).rejects.toThrow('store refused');
    expect(await cache.get('n:1')).toBeUndefined();
  });
});

describe('two tiers', () => {
  it('backfills the memory tier from the shared tier, and shares values between caches', async () => {
    const shared = createMemoryStore({ prefix: 'l2:' });
    const a = await createCache({ remote: shared, lease: false });
    const b = await createCache({ remote: shared, lease: false });
    await a.set('k', { v: 1 });
    let loads = 0;
    expect(
      await b.getOrSet('k', async () => {
        loads++;
        return { v: 2 };
      }),
    ).toEqual({ v: 1 });
    expect(loads).toBe(0);
    expect(b.stats().remote).toMatchObject({ hits: 1 });
    expect(await b.getOrSet('k', async () => ({ v: 3 }))).toEqual({ v: 1 });
    expect(b.stats().memory.hits).toBe(1);
  });

  it('round-trips bytes, bigints and unicode through the shared tier', async () => {
    const shared = createMemoryStore({ prefix: 'l2:' });
    const a = await createCache({ remote: shared, lease: false });
    const b = await createCache({ remote: shared, lease: false, memory: false });
    await a.set('k', {
      data: new Uint8Array([0, 255]),
      big: 12345678901234567890n,
      text: '∑ 中文 \u{1F600}',
    });
    expect(await b.get('k')).toEqual({
      data: new Uint8Array([0, 255]),
      big: 12345678901234567890n,
      text: '∑ 中文 \u{1F600}',
    });
  });
});
