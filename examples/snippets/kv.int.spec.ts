import { createServer } from 'node:net';
import { createRedisStore } from 'strata/redis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, uniqueName } from '../../test/helpers.js';
import { memoryTier } from './kv-memory.js';
import { getOrMiss, redisProfiles } from './kv-redis.js';

describe('key-value snippets', () => {
  it('kv-memory: evicts the least recently used entry, applies the default TTL, refuses a zero TTL', async () => {
    const { values, ttls, stats, zeroTtl } = await memoryTier();
    expect(values).toEqual(['1', undefined, '3']);
    expect(ttls[0]).toBeGreaterThan(590_000);
    expect(ttls[0]).toBeLessThanOrEqual(600_000);
    expect(ttls[1]).toBeUndefined();
    expect(stats).toEqual({ items: 2, bytes: 8, evictions: 1 });
    expect(zeroTtl).toBe('E_CONFIG');
  });

  it('kv-redis: an unreachable Redis reads as a miss, within connectTimeout', async () => {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as { port: number };
    await new Promise((resolve) => probe.close(resolve));
    const down = createRedisStore({
      url: `redis://127.0.0.1:${port}`,
      prefix: 'down:',
      connectTimeout: '1s',
    });
    expect(await getOrMiss(down, 'profile:1')).toBeUndefined();
    await down.close();
  });

  describe.skipIf(!services.redis)('on Redis', () => {
    const prefix = `${uniqueName('strata_snippets_kv')}:`;
    afterAll(async () => {
      const all = createRedisStore({ url: env.redisUrl, prefix });
      await all.clear();
      await all.close();
    });

    it('kv-redis: batches, per-entry TTLs and reads under the prefix', async () => {
      const { values, ttls } = await redisProfiles(env.redisUrl, prefix);
      expect(values).toEqual(['{"name":"Ada"}', undefined]);
      expect(ttls[0]).toBeGreaterThan(3_500_000);
      expect(ttls[0]).toBeLessThanOrEqual(3_600_000);
      expect(ttls.slice(1)).toEqual([Number.POSITIVE_INFINITY, undefined]);
      const store = createRedisStore({ url: env.redisUrl, prefix });
      expect(await getOrMiss(store, 'profile:2')).toBe('{"name":"Grace"}');
      const defaulted = await store.ttl('profile:1');
      expect(defaulted).toBeGreaterThan(0);
      expect(defaulted).toBeLessThanOrEqual(300_000);
      await store.close();
    });
  });
});
