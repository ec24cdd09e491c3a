import { isStrataError } from 'strata';
import { createMemoryStore, type MemoryStoreStats } from 'strata/memory';

/** An in-process tier of at most two entries: least recently used out, TTLs from a default. */
export async function memoryTier(): Promise<{
  values: (string | undefined)[];
  ttls: (number | undefined)[];
  stats: MemoryStoreStats;
  zeroTtl: string;
}> {
  const cache = createMemoryStore({ maxItems: 2, maxBytes: 1024 * 1024, defaultTtl: '10m' });
  await cache.set('a', '1'); // expires after the default 10m
  await cache.set('b', '2', { ttl: Number.POSITIVE_INFINITY }); // never expires
  cache.getSync('a'); // reading 'a' makes 'b' the least recently used
  cache.setSync('c', '3'); // a third entry evicts 'b'
  const values = await cache.getMany(['a', 'b', 'c']); // ['1', undefined, '3']
  const ttls = [await cache.ttl('a'), await cache.ttl('b')]; // [about 600000, undefined]
  const stats = cache.stats(); // { items: 2, bytes: 8, evictions: 1 }
  let zeroTtl = '';
  try {
    await cache.set('d', '4', { ttl: 0 });
  } catch (err) {
    if (!isStrataError(err, 'E_CONFIG')) throw err;
    zeroTtl = err.code; // a zero TTL is refused, never read as "expire now" or "keep forever"
  }
  await cache.close();
  return { values, ttls, stats, zeroTtl };
}
