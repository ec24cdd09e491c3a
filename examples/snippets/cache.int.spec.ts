import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createRedisBus } from '../../src/backends/redis/redis-bus.js';
import { createRedisStore } from '../../src/backends/redis/redis-store.js';
import { createSqliteDriver } from '../../src/backends/sqlite/sqlite-driver.js';
import { env, services, tempDir, uniqueName } from '../../test/helpers.js';
import { profileCache } from './cache-aside.js';
import { viewCounters } from './cache-write-behind.js';

const dir = tempDir('strata-snippets-cache-');
afterAll(() => dir.remove());

describe('cache snippets', () => {
  it('cache-aside loads once and caches "not found"', async () => {
    let loads = 0;
    const profiles = await profileCache(async (id) => {
      loads++;
      return id === 1 ? { id, name: 'Ada' } : undefined;
    });
    expect(await profiles.get(1)).toEqual({ id: 1, name: 'Ada' });
    expect(await profiles.get(1)).toEqual({ id: 1, name: 'Ada' });
    expect(await profiles.get(2)).toBeUndefined();
    expect(await profiles.get(2)).toBeUndefined();
    expect(loads).toBe(2);
    await profiles.changed(1);
    await profiles.get(1);
    expect(loads).toBe(3);
  });

  it.skipIf(!services.redis)('cache-aside shares values between two processes through Redis', async () => {
    const prefix = `${uniqueName('snippet_cache')}:`;
    const shared = () => ({
      remote: createRedisStore({ url: env.redisUrl, prefix }),
      bus: createRedisBus({ url: env.redisUrl, channelPrefix: prefix }),
    });
    const one = shared();
    const two = shared();
    let loads = 0;
    const load = async (id: number) => {
      loads++;
      return { id, name: 'Ada' };
    };
    const a = await profileCache(load, one);
    const b = await profileCache(load, two);
    await a.get(7);
    await b.get(7);
    expect(loads).toBe(1);
    await one.remote.clear();
    for (const s of [one, two]) {
      await s.bus.close();
      await s.remote.close();
    }
  });

  it('write-behind counts views in batches and drains on close', async () => {
    const db = createSqliteDriver(join(dir.path, 'views.db'));
    await db.exec('create table views (page text primary key, n integer not null, version integer not null)');
    const counters = viewCounters(db, join(dir.path, 'queue.db'));
    for (let i = 0; i < 100; i++) await counters.view(i % 2 === 0 ? '/home' : '/about');
    expect(counters.pending('/home')).toBe(50);
    await counters.close();
    const { rows } = await db.query('select page, n from views order by page');
    expect(rows).toEqual([
      { page: '/about', n: 50 },
      { page: '/home', n: 50 },
    ]);
    await db.close();
  });
});
