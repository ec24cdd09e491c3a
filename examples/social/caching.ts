/**
 * The social app's caching: profiles, post pages and the first feed page are cache-aside
 * (`getOrSet`), invalidated by the change log; like counters are written behind (coalesced per
 * post, batched, durable across a crash). In process by default; with `REDIS_URL`, a Redis tier
 * and a Redis bus keep several app processes coherent.
 */
import { join } from 'node:path';
import type { WriteBehindQueue } from 'strata';
import {
  type Cache,
  type CacheOptions,
  createCache,
  createWriteBehind,
  type WriteBehind,
} from 'strata/cache';
import { createSqliteWriteBehindQueue } from 'strata/sqlite';
import type { Telemetry } from './telemetry.js';

export interface CachingOptions {
  /** Writes a batch of like counters: sets each post's `like_count` to its likes, on its shard. */
  recountLikes: (postIds: number[]) => Promise<void>;
  telemetry: Telemetry;
  /** Where the durable write-behind queue lives without Redis. */
  dataDir: string;
  redisUrl?: string | undefined;
  /** Fresh lifetime of cached pages (default `5m`; the change log invalidates sooner). */
  ttl?: string;
}

export interface Caching {
  cache: Cache;
  /** Pending like counts per post id, written to `posts.like_count` (on the post's shard) in batches. */
  likeCounts: WriteBehind<number>;
  /** `memory` or `memory + redis`. */
  label: string;
  close(): Promise<void>;
}

/** The key of a user's profile. */
export const userKey = (id: number) => `user:${id}`;
/** The key of a post page. */
export const postKey = (id: number) => `post:${id}`;
/** The key of a user's first feed page (the default page size). */
export const feedKey = (id: number) => `feed:${id}`;

/** Opens the cache and the like-counter write-behind, and shows them on the dashboard. */
export async function openCaching(o: CachingOptions): Promise<Caching> {
  const closers: Array<() => Promise<void>> = [];
  let remote: CacheOptions['remote'];
  let bus: CacheOptions['bus'];
  let queue: WriteBehindQueue;
  if (o.redisUrl) {
    const redis = await import('strata/redis');
    const store = redis.createRedisStore({
      url: o.redisUrl,
      prefix: 'social:cache:',
      commandTimeout: '500ms',
    });
    await store.connect();
    const redisBus = redis.createRedisBus({ url: o.redisUrl, channelPrefix: 'social:' });
    remote = store;
    bus = redisBus;
    queue = redis.createRedisWriteBehindQueue({ url: o.redisUrl, key: 'social:like-counts' });
    closers.push(
      () => redisBus.close(),
      () => store.close(),
    );
  } else {
    queue = createSqliteWriteBehindQueue({ filename: join(o.dataDir, 'write-behind.db') });
  }
  closers.push(() => queue.close());
  const cache = await createCache({
    ...(remote ? { remote } : {}),
    ...(bus ? { bus } : {}),
    prefix: 'social',
    ttl: o.ttl ?? '5m',
    jitter: 0.1,
    grace: '10m',
    timeouts: { soft: '250ms' },
    memory: { maxItems: 50_000 },
  });
  // Like counts are recounted from the likes table at write time: exact, idempotent, and the
  // coalesced value per post is only what readers see until then.
  const likeCounts = createWriteBehind<number>({
    name: 'like-counts',
    queue,
    flushEvery: '500ms',
    maxBatch: 500,
    writeBatch: (items) => o.recountLikes(items.map((item) => Number(item.key))),
  });

  const detail = o.redisUrl ? 'memory L1 + Redis L2, Redis bus' : 'in process, 50,000 entries';
  o.telemetry.addToTopology(
    { id: 'kv', kind: 'cache', label: 'cache', engine: o.redisUrl ? 'memory + redis' : 'memory', detail },
    [{ from: 'api', to: 'kv', label: 'profiles, posts, feeds' }],
  );
  o.telemetry.addToTopology(
    {
      id: 'write-behind',
      kind: 'cache',
      label: 'like counters',
      engine: o.redisUrl ? 'redis stream' : 'sqlite queue',
      detail: 'write-behind: coalesced, batched, durable',
    },
    [
      { from: 'api', to: 'write-behind', label: 'likes' },
      { from: 'write-behind', to: 'router', label: 'batches' },
    ],
  );
  o.telemetry.addFigure({
    id: 'cache_hit_ratio',
    panel: 'Cache hit ratio',
    unit: 'ratio',
    help: 'Share of cache reads answered by each tier since start.',
    read: () => {
      const s = cache.stats();
      const memoryTotal = s.memory.hits + s.memory.misses;
      const out: Record<string, number> = { memory: memoryTotal === 0 ? 0 : s.memory.hits / memoryTotal };
      if (s.remote !== undefined) {
        const total = s.remote.hits + s.remote.misses;
        out.redis = total === 0 ? 0 : s.remote.hits / total;
      }
      return out;
    },
  });
  let last = { loads: 0, stale: 0 };
  o.telemetry.addFigure({
    id: 'cache_loads',
    panel: 'Cache loads and stale answers',
    unit: 'ops/s',
    help: 'Loads from the database per second, and answers served stale (grace) per second.',
    read: () => {
      const s = cache.stats();
      const out = { loads: s.loads - last.loads, stale: s.staleServed - last.stale };
      last = { loads: s.loads, stale: s.staleServed };
      return out;
    },
  });
  o.telemetry.addFigure({
    id: 'write_behind_pending',
    panel: 'Write-behind queue',
    unit: 'count',
    help: 'Like counters waiting to be written to the database.',
    read: () => ({ pending: likeCounts.stats().pending }),
  });

  return {
    cache,
    likeCounts,
    label: o.redisUrl ? 'memory + redis' : 'memory',
    async close() {
      await likeCounts.close();
      await cache.close();
      for (const close of closers.reverse()) await close();
    },
  };
}
