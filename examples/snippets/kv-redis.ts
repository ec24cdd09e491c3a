import { isStrataError, type KeyValueStore } from 'strata';
import { createRedisStore } from 'strata/redis';

/** Writes and reads a batch of profiles on Redis under one prefix, in one round trip each way. */
export async function redisProfiles(
  url: string,
  prefix: string,
): Promise<{
  values: (string | undefined)[];
  ttls: (number | undefined)[];
}> {
  const cache = createRedisStore({
    url,
    prefix,
    defaultTtl: '5m',
    connectTimeout: '1s',
    commandTimeout: '250ms',
  });
  try {
    await cache.setMany([
      { key: 'profile:1', value: '{"name":"Ada"}' }, // the default 5m
      { key: 'profile:2', value: '{"name":"Grace"}', ttl: '1h' },
      { key: 'flags', value: '{"beta":true}', ttl: 'infinite' },
    ]); // one pipelined round trip; stored as `${prefix}profile:1`, ...
    const values = await cache.getMany(['profile:1', 'profile:3']); // one MGET: ['{"name":"Ada"}', undefined]
    const ttls = [await cache.ttl('profile:2'), await cache.ttl('flags'), await cache.ttl('profile:3')];
    return { values, ttls }; // ttls: [at most 3600000, Infinity, undefined]
  } finally {
    await cache.close();
  }
}

/** Reads a cache entry, treating an unreachable or slow cache as a miss instead of an outage. */
export async function getOrMiss(cache: KeyValueStore, key: string): Promise<string | undefined> {
  try {
    return await cache.get(key);
  } catch (err) {
    if (isStrataError(err, 'E_CONNECTION') || isStrataError(err, 'E_TIMEOUT')) return undefined;
    throw err;
  }
}
