import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../test/helpers.js';
import { createRedisBus } from '../backends/redis/redis-bus.js';
import { createRedisStore, type RedisStore } from '../backends/redis/redis-store.js';
import { createSqliteChangeLog } from '../backends/sqlite/sqlite-change-log.js';
import { createSqliteChangeCapture } from '../backends/sqlite/sqlite-change-source.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { createRelay } from '../changes/relay.js';
import { createSqlCheckpointStore } from '../changes/sql-checkpoint-store.js';
import type { LogEntry } from '../core/changes.js';
import { sql } from '../core/sql.js';
import { createMemoryChangeLog } from '../testing/memory-change-log.js';
import { createCache } from './cache.js';
import { createCacheInvalidator, watchChangesForLocalCopies } from './invalidation.js';

const closers: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

const privateServers = new Set<ChildProcess>();
afterAll(() => {
  for (const s of privateServers) s.kill('SIGKILL');
});

async function startRedis(port: number): Promise<ChildProcess> {
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: 'ignore',
    },
  );
  privateServers.add(child);
  const probe = createRedisStore({ url: `redis://127.0.0.1:${port}`, prefix: 'probe:', connectTimeout: 200 });
  await until(
    async () =>
      probe.connect().then(
        () => true,
        () => false,
      ),
    'the private redis-server',
  );
  await probe.close();
  return child;
}

describe.skipIf(!services.redis)('cache on Redis', () => {
  const stores: RedisStore[] = [];
  const store = (prefix: string) => {
    const s = createRedisStore({ url: env.redisUrl, prefix });
    stores.push(s);
    closers.push(async () => {
      await s.clear();
      await s.close();
    });
    return s;
  };

  it('keeps in-process copies of two processes coherent over the bus', async () => {
    const prefix = `${uniqueName('cache_bus')}:`;
    const busA = createRedisBus({ url: env.redisUrl, channelPrefix: prefix });
    const busB = createRedisBus({ url: env.redisUrl, channelPrefix: prefix });
    closers.push(
      () => busA.close(),
      () => busB.close(),
    );
    const a = await createCache({ remote: store(prefix), bus: busA });
    const b = await createCache({ remote: store(prefix), bus: busB });
    closers.push(
      () => a.close(),
      () => b.close(),
    );
    await a.set('profile:1', { name: 'v1' });
    expect(await b.get('profile:1')).toEqual({ name: 'v1' });
    expect(await b.get('profile:1')).toEqual({ name: 'v1' });
    expect(b.stats().memory.hits).toBe(1);
    await a.set('profile:1', { name: 'v2' });
    await until(
      async () => (await b.get<{ name: string }>('profile:1'))?.name === 'v2',
      'the bus to drop b’s copy',
    );
    await a.delete('profile:1');
    await until(async () => (await b.get('profile:1')) === undefined, 'the delete to reach b');
    await a.set('t1', 1, { tags: ['team:9'] });
    expect(await b.get('t1')).toBe(1);
    await a.deleteByTag(['team:9']);
    await until(async () => (await b.get('t1')) === undefined, 'the tag to reach b');
  });

  it('flushes in-process copies when a bus message went missing', async () => {
    const prefix = `${uniqueName('cache_gap')}:`;
    const bus = createRedisBus({ url: env.redisUrl, channelPrefix: prefix });
    const other = createRedisBus({ url: env.redisUrl, channelPrefix: prefix });
    closers.push(
      () => bus.close(),
      () => other.close(),
    );
    const cache = await createCache({ remote: store(prefix), bus });
    closers.push(() => cache.close());
    await cache.set('a', 1);
    await cache.set('b', 2);
    expect(cache.stats().memory.items).toBe(2);
    // Another process's messages 1 and 3 arrive; 2 was lost.
    await other.publish('cache:', JSON.stringify({ s: 'peer', n: 1, k: ['x'] }));
    await other.publish('cache:', JSON.stringify({ s: 'peer', n: 3, k: ['y'] }));
    await until(() => cache.stats().l1Flushes > 0, 'the gap to flush L1');
    expect(cache.stats().memory.items).toBe(0);
    expect(await cache.get('a')).toBe(1);
  });

  it('never hangs and never fails a caller with a loader while Redis dies and comes back', async () => {
    const port = await freePort();
    let redis = await startRedis(port);
    const remote = createRedisStore({
      url: `redis://127.0.0.1:${port}`,
      prefix: 'chaos:',
      connectTimeout: 200,
      commandTimeout: 200,
    });
    closers.push(() => remote.close());
    const errors: unknown[] = [];
    const cache = await createCache({
      remote,
      remoteTimeout: '150ms',
      breaker: { failures: 3, resetAfter: '300ms' },
      onError: (err) => errors.push(err),
    });
    closers.push(() => cache.close());
    let loads = 0;
    const load = async () => {
      loads++;
      return { v: loads };
    };
    const run = async (rounds: number) => {
      for (let i = 0; i < rounds; i++) {
        const key = `k${i % 20}`;
        const started = Date.now();
        const settled = await Promise.race([
          Promise.all([cache.getOrSet(key, load), cache.set(`w${i % 5}`, i)]).then(() => 'ok'),
          new Promise((r) => setTimeout(() => r('hung'), 5_000)),
        ]);
        expect(settled, `round ${i} after ${Date.now() - started} ms`).toBe('ok');
      }
    };
    await run(50);
    expect(cache.stats().remote?.errors).toBe(0);
    redis.kill('SIGKILL');
    await new Promise((r) => redis.once('exit', r));
    await run(100);
    expect(cache.stats().remote?.errors).toBeGreaterThan(0);
    expect(cache.stats().remote?.skipped).toBeGreaterThan(0);
    expect(errors.length).toBeGreaterThan(0);
    redis = await startRedis(port);
    const setsBefore = cache.stats().remote!.sets;
    await until(async () => {
      await cache.set('after', Date.now());
      return cache.stats().remote!.sets > setsBefore;
    }, 'the cache to use Redis again');
    expect(cache.stats().remote?.breaker).toBe('closed');
  });

  it('does not load again when the holder stored the value and released its lease between our miss and our lease', async () => {
    const prefix = `${uniqueName('cache_lease_race')}:`;
    const options = { lease: { ttl: '5s', wait: '5s' }, ttl: '1m' } as const;
    const a = await createCache({ remote: store(prefix), ...options });
    // B's lease requests wait at a gate, so the test decides when B asks for the lease.
    const inner = store(prefix);
    let openGate = () => {};
    const gate = new Promise<void>((resolve) => {
      openGate = resolve;
    });
    let asked = () => {};
    const askedForLease = new Promise<void>((resolve) => {
      asked = resolve;
    });
    const gated = new Proxy(inner, {
      get(target, property, receiver) {
        if (property === 'setIfAbsent') {
          return async (...args: Parameters<RedisStore['setIfAbsent']>) => {
            asked();
            await gate;
            return target.setIfAbsent(...args);
          };
        }
        const value = Reflect.get(target, property, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const b = await createCache({ remote: gated, memory: false, ...options });
    let loads = 0;
    let finishA = () => {};
    const aLoading = a.getOrSet('k', async () => {
      loads++;
      await new Promise<void>((resolve) => {
        finishA = resolve;
      });
      return 'from a';
    });
    await until(() => loads === 1, 'a to hold the lease and load');
    // B misses (nothing stored yet) and asks for the lease ...
    const bLoading = b.getOrSet('k', async () => {
      loads++;
      return 'from b';
    });
    await askedForLease;
    // ... while A stores its value and releases its lease; only then does B's request arrive.
    finishA();
    expect(await aLoading).toBe('from a');
    openGate();
    expect(await bLoading).toBe('from a');
    expect(loads).toBe(1);
  });

  it('serves one load to concurrent callers of two caches sharing Redis, and stale while the holder loads', async () => {
    const prefix = `${uniqueName('cache_lease')}:`;
    const a = await createCache({
      remote: store(prefix),
      lease: { ttl: '5s', wait: '5s' },
      grace: '1m',
      ttl: '1s',
    });
    const b = await createCache({
      remote: store(prefix),
      lease: { ttl: '5s', wait: '5s' },
      grace: '1m',
      ttl: '1s',
    });
    let loads = 0;
    const slow = async () => {
      loads++;
      await new Promise((r) => setTimeout(r, 200));
      return `v${loads}`;
    };
    const first = await Promise.all(
      [...Array(20)].flatMap(() => [a.getOrSet('k', slow), b.getOrSet('k', slow)]),
    );
    expect(new Set(first)).toEqual(new Set(['v1']));
    expect(loads).toBe(1);
    await new Promise((r) => setTimeout(r, 1_100));
    // Expired for both: one refreshes, the other answers stale meanwhile.
    const [fromA, fromB] = await Promise.all([a.getOrSet('k', slow), b.getOrSet('k', slow)]);
    expect([fromA, fromB].sort()).toEqual(['v1', 'v2']);
    expect(loads).toBe(2);
    expect(a.stats().staleServed + b.stats().staleServed).toBe(1);
  });
});

describe('change-driven invalidation', () => {
  it('never serves a committed update stale once its invalidation has arrived', async () => {
    const dir = tempDir('strata-cache-changes-');
    closers.push(() => dir.remove());
    const db = createSqliteDriver(join(dir.path, 'app.db'));
    closers.push(() => db.close());
    await db.exec('create table profiles (id integer primary key, name text not null)');
    await db.query(sql`insert into profiles (id, name) values (${1}, ${'v0'})`);
    const capture = createSqliteChangeCapture(db, {
      source: 'app',
      tables: ['profiles'],
      pollInterval: '20ms',
    });
    await capture.install();
    const log = createSqliteChangeLog({ filename: join(dir.path, 'log.db') });
    const relay = createRelay({ source: capture, log });
    await relay.start();
    closers.push(
      () => log.close(),
      () => relay.stop(),
    );
    const checkpoints = createSqlCheckpointStore(db);
    await checkpoints.migrate();
    const cache = await createCache({ ttl: '1h' });
    const invalidator = createCacheInvalidator({
      cache,
      log,
      checkpoints,
      keys: { profiles: (row) => [`profile:${row.id}`] },
      pollInterval: '20ms',
    });
    await invalidator.start();
    closers.push(() => invalidator.stop());
    const load = async () =>
      (await db.query<{ name: string }>(sql`select name from profiles where id = ${1}`)).rows[0]!.name;
    expect(await cache.getOrSet('profile:1', load)).toBe('v0');
    for (let i = 1; i <= 30; i++) {
      await db.query(sql`update profiles set name = ${`v${i}`} where id = ${1}`);
      await until(async () => (await log.head()) >= i, 'the change in the log');
      await invalidator.drained();
      // The invalidation has arrived: the old value must be gone, with an hour of TTL left.
      expect(await cache.getOrSet('profile:1', load)).toBe(`v${i}`);
    }
  });

  it('flushes local copies on a gap in offsets and when the log cannot be read', async () => {
    const inner = createMemoryChangeLog();
    const holes = new Set<number>();
    let down = false;
    const log = {
      ...inner,
      name: 'gappy',
      read: async (after: number, limit: number) => {
        if (down) throw new Error('log unreachable');
        return (await inner.read(after, limit)).filter((e: LogEntry) => !holes.has(e.offset));
      },
    };
    const cache = await createCache();
    const watch = watchChangesForLocalCopies({
      cache,
      log,
      keys: { users: (row) => [`user:${row.id}`] },
      pollInterval: '10ms',
    });
    await watch.start();
    closers.push(
      () => watch.stop(),
      () => inner.clear(),
    );
    const change = (n: number, id: number) => ({
      source: 'app',
      table: 'users',
      op: 'update' as const,
      key: { id },
      before: null,
      after: { id },
      position: `app@${n.toString(16).padStart(16, '0')}.00000000` as never,
      txId: null,
      commitTime: Date.now(),
    });
    await cache.set('user:1', 'a');
    await cache.set('user:2', 'b');
    await inner.append([change(1, 1)]);
    await until(() => watch.stats().invalidated === 1, 'the first invalidation');
    expect(await cache.get('user:1')).toBeUndefined();
    expect(await cache.get('user:2')).toBe('b');
    const flushes = watch.stats().flushes;
    holes.add(2);
    await inner.append([change(2, 3), change(3, 4)]);
    await until(() => watch.stats().gaps === 1, 'the gap');
    expect(watch.stats().flushes).toBe(flushes + 1);
    expect(await cache.get('user:2')).toBeUndefined();
    await cache.set('user:2', 'b again');
    down = true;
    await until(() => !watch.stats().connected, 'the failed read');
    expect(await cache.get('user:2')).toBeUndefined();
    down = false;
    await until(() => watch.stats().connected, 'the log to come back');
  });
});
