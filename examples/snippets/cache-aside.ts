import type { KeyValueStore, MessageBus } from 'strata';
import { createCache } from 'strata/cache';

export async function profileCache(
  load: (id: number) => Promise<{ id: number; name: string } | undefined>,
  shared?: { remote: KeyValueStore; bus: MessageBus },
) {
  const cache = await createCache({
    ...shared, // a Redis store and bus when several processes share the cache
    ttl: '5m', // fresh for five minutes (spread by 10% jitter)
    jitter: 0.1,
    grace: '1h', // then stale: still served if the database fails or is slow
    timeouts: { soft: '200ms' }, // with a stale value at hand, answer it after 200 ms and keep loading
  });
  return {
    get: (id: number) =>
      cache.getOrSet(`profile:${id}`, async (ctx) => {
        const profile = await load(id);
        if (profile === undefined) return ctx.notFound(); // cached briefly as "not found"
        return profile;
      }),
    changed: (id: number) => cache.delete(`profile:${id}`),
    stats: () => cache.stats(),
  };
}
