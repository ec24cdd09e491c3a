/**
 * Caching, beside the peers a user would pick instead, in one run: strata's `createCache` next to
 * bentocache and cache-manager, with raw lru-cache and raw ioredis as the floors. Every library
 * serves the same keys (a hot set of 1,000) holding the same value (a ~200-byte JSON object):
 * - getOrSet hits on the memory tier, on memory + Redis (L1 + L2), and on Redis alone;
 * - a miss with an immediate load (a new key every time), memory-only and Redis-backed;
 * - getMany of 100 keys against a loop of 100 single gets, with MGET as the floor;
 * - a hot counter written through to SQLite against write-behind (in memory and on a durable
 *   SQLite queue), counting increments per second.
 * The notes check the targets of the issue and say which are met, with the figures.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createKeyv } from '@keyv/redis';
import { BentoCache, bentostore } from 'bentocache';
import { memoryDriver } from 'bentocache/drivers/memory';
import { redisBusDriver, redisDriver } from 'bentocache/drivers/redis';
import { createCache as createCacheManager } from 'cache-manager';
import { Redis, type RedisOptions } from 'ioredis';
import { Keyv } from 'keyv';
import { LRUCache } from 'lru-cache';
import {
  type Cache,
  type CacheOptions,
  createCache,
  createWriteBehind,
  type WriteBehind,
} from 'strata/cache';
import { createPostgresDriver, createPostgresTestDatabase } from 'strata/postgres';
import { createRedisBus, createRedisStore } from 'strata/redis';
import { createSqliteDriver, createSqliteWriteBehindQueue, type SqliteDriver } from 'strata/sqlite';
import {
  type BenchCase,
  type Benchmark,
  type BenchRow,
  type MeasureOptions,
  measureCases,
} from './harness.js';

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const HOT_KEYS = 1_000;
const MANY = 100;
const COUNTERS = 100;
const TTL_MS = 5 * 60_000;
/** Enough in-process entries for the hot set and for every miss of a sample. */
const MAX_ITEMS = 10_000;

/** The cached value: a user profile of about 200 bytes as JSON. */
const VALUE = Object.freeze({
  id: 4217,
  name: 'Ada Lovelace',
  email: 'ada@example.com',
  createdAt: '2024-03-01T12:00:00.000Z',
  followers: 1815,
  bio: 'Mathematician; wrote the first algorithm meant for a machine. Notes on the Analytical Engine.',
});
const VALUE_TEXT = JSON.stringify(VALUE);
const KEYS = Array.from({ length: HOT_KEYS }, (_, n) => `user:${n}`);

/** Where this run's Redis keys and channels live; removed at the end. */
const RUN = `bench:cache:${process.pid}:${Date.now().toString(36)}:`;

/** ioredis connection options for `REDIS_URL` (bentocache's bus wants options, not a URL). */
function ioredisOptions(url: string): RedisOptions {
  const u = new URL(url);
  return {
    host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1',
    port: u.port === '' ? 6379 : Number(u.port),
    ...(u.username === '' ? {} : { username: decodeURIComponent(u.username) }),
    ...(u.password === '' ? {} : { password: decodeURIComponent(u.password) }),
    ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/** Cycles through `items`, starting after the first; each caller keeps its own position. */
function cycle<T>(items: readonly T[]): () => T {
  let i = 0;
  return () => {
    i = (i + 1) % items.length;
    return items[i]!;
  };
}

/** Cycles through the hot keys; each case keeps its own position. */
function hotKeys(): () => string {
  return cycle(KEYS);
}

/** A fresh key on every call, so each call misses. */
function freshKeys(tag: string): () => string {
  let i = 0;
  return () => `miss:${tag}:${i++}`;
}

/** A loader that counts its calls: hit cases must show none after the prefill. */
function countingLoader(): { load: () => Promise<typeof VALUE>; calls: () => number } {
  let calls = 0;
  return {
    load: async () => {
      calls++;
      return VALUE;
    },
    calls: () => calls,
  };
}

/** The layers of a bentocache store: memory (L1), Redis (L2) and the Redis bus. */
interface BentoLayers {
  memory?: { serialize: boolean };
  redis?: Redis;
  bus?: boolean;
}

/** A bentocache instance with one store of the given layers, keys under this run's prefix. */
function createBento(name: string, layers: BentoLayers): BentoCache<{ c: ReturnType<typeof bentostore> }> {
  let store = bentostore();
  if (layers.memory !== undefined) {
    store = store.useL1Layer(memoryDriver({ maxItems: MAX_ITEMS, serialize: layers.memory.serialize }));
  }
  if (layers.redis !== undefined) store = store.useL2Layer(redisDriver({ connection: layers.redis }));
  if (layers.bus === true) {
    store = store.useBus(redisBusDriver({ connection: ioredisOptions(REDIS_URL) }));
  }
  return new BentoCache({ default: 'c', prefix: `${RUN}bento:${name}`, ttl: TTL_MS, stores: { c: store } });
}

/** A cache-manager memory store as cache-manager builds its own default (no serialization). */
function keyvMemory(): Keyv {
  const keyv = new Keyv();
  keyv.serialize = undefined;
  keyv.deserialize = undefined;
  return keyv;
}

function ratioText(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}x` : '-';
}

function check(met: boolean, text: string): string {
  return `${met ? 'MET' : 'NOT MET'}: ${text}`;
}

function row(rows: BenchRow[], group: string, name: string): BenchRow {
  const found = rows.find((r) => r.group === group && r.name === name);
  if (found === undefined) throw new Error(`no row ${group} / ${name}`);
  return found;
}

const bench: Benchmark = {
  name: 'cache',
  title: 'cache: strata beside bentocache and cache-manager (floors: lru-cache, ioredis)',
  async run(options: MeasureOptions) {
    const rows: BenchRow[] = [];
    const notes: string[] = [];
    /** What the running group opened; closed in reverse order when the group ends. */
    const opened: Array<() => unknown> = [];
    const own = <T>(resource: T, close: (r: T) => unknown): T => {
      opened.push(() => close(resource));
      return resource;
    };
    const closeGroup = async () => {
      for (let c = opened.pop(); c !== undefined; c = opened.pop()) {
        await Promise.resolve()
          .then(c)
          .catch(() => undefined);
      }
    };
    const measure = async (cases: BenchCase[]) => {
      const measured = await measureCases(cases, options);
      rows.push(...measured);
      return measured;
    };
    const strataStore = (name: string) =>
      own(createRedisStore({ url: REDIS_URL, prefix: `${RUN}strata:${name}:` }), (s) => s.close());
    const strataBus = () =>
      own(createRedisBus({ url: REDIS_URL, channelPrefix: `${RUN}bus:` }), (b) => b.close());
    const strata = async (opts: CacheOptions) =>
      own(await createCache({ ttl: TTL_MS, memory: { maxItems: MAX_ITEMS }, ...opts }), (c) => c.close());
    const ioredis = () => own(new Redis(REDIS_URL), (c) => c.disconnect());
    const bento = (name: string, layers: BentoLayers) =>
      own(createBento(name, layers), (b) => b.disconnect());
    const cacheManager = (stores?: Keyv[]) =>
      own(createCacheManager({ ttl: TTL_MS, ...(stores === undefined ? {} : { stores }) }), (m) =>
        m.disconnect(),
      );
    const tmp = mkdtempSync(join(tmpdir(), 'strata-bench-cache-'));

    try {
      // -------------------------------------------------------------------------------------
      // 1. getOrSet hit on the memory tier.
      {
        const group = 'memory getOrSet hit';
        const lru = new LRUCache<string, object>({ max: MAX_ITEMS, ttl: TTL_MS });
        for (const key of KEYS) lru.set(key, VALUE);
        const bentoSer = bento('mem-ser', { memory: { serialize: true } });
        const bentoObj = bento('mem-obj', { memory: { serialize: false } });
        const manager = cacheManager();
        const cache = await strata({});
        const loaders = {
          bentoSer: countingLoader(),
          bentoObj: countingLoader(),
          manager: countingLoader(),
          strata: countingLoader(),
        };
        for (const key of KEYS) {
          await bentoSer.getOrSet({ key, factory: loaders.bentoSer.load });
          await bentoObj.getOrSet({ key, factory: loaders.bentoObj.load });
          await manager.wrap(key, loaders.manager.load);
          await cache.getOrSet(key, loaders.strata.load);
        }
        const next = { lru: hotKeys(), a: hotKeys(), b: hotKeys(), m: hotKeys(), s: hotKeys() };
        const measured = await measure([
          { group, name: 'raw lru-cache get (floor)', run: () => lru.get(next.lru()) },
          {
            group,
            name: 'bentocache getOrSet (default: serialize)',
            baseline: true,
            run: () => bentoSer.getOrSet({ key: next.a(), factory: loaders.bentoSer.load }),
          },
          {
            group,
            name: 'bentocache getOrSet (serialize: false)',
            run: () => bentoObj.getOrSet({ key: next.b(), factory: loaders.bentoObj.load }),
          },
          {
            group,
            name: 'cache-manager wrap (keyv memory)',
            run: () => manager.wrap(next.m(), loaders.manager.load),
          },
          {
            group,
            name: 'strata getOrSet (memory)',
            run: () => cache.getOrSet(next.s(), loaders.strata.load),
          },
        ]);
        const loads = Object.values(loaders).reduce((n, l) => n + l.calls() - HOT_KEYS, 0);
        if (loads !== 0) notes.push(`WARNING: ${loads} loads during the memory-hit group (expected none)`);
        const s = row(measured, group, 'strata getOrSet (memory)');
        const bSer = row(measured, group, 'bentocache getOrSet (default: serialize)');
        const bObj = row(measured, group, 'bentocache getOrSet (serialize: false)');
        const floor = row(measured, group, 'raw lru-cache get (floor)');
        notes.push(
          check(
            s.opsPerSec >= 1.5 * bSer.opsPerSec,
            `memory getOrSet hit, strata / bentocache (default, serialize: true) = ${ratioText(s.opsPerSec / bSer.opsPerSec)} (target >= 1.5x)`,
          ),
          check(
            s.opsPerSec >= 1.5 * bObj.opsPerSec,
            `memory getOrSet hit, strata / bentocache (serialize: false, like strata: live objects) = ${ratioText(s.opsPerSec / bObj.opsPerSec)} (target >= 1.5x)`,
          ),
          `memory getOrSet hit, strata / raw lru-cache get = ${ratioText(s.opsPerSec / floor.opsPerSec)} (the floor is a synchronous call, no promise)`,
        );
        await closeGroup();
      }

      // -------------------------------------------------------------------------------------
      // 2. getOrSet hit with memory (L1) in front of Redis (L2): every library answers from L1.
      {
        const group = 'L1+L2 getOrSet hit';
        const b = bento('l1l2', { memory: { serialize: true }, redis: ioredis(), bus: true });
        const bObj = bento('l1l2-obj', { memory: { serialize: false }, redis: ioredis(), bus: true });
        const manager = cacheManager([keyvMemory(), createKeyv(REDIS_URL, { namespace: `${RUN}cm:l1l2` })]);
        const cache = await strata({ remote: strataStore('l1l2'), bus: strataBus() });
        const loaders = {
          b: countingLoader(),
          bObj: countingLoader(),
          m: countingLoader(),
          s: countingLoader(),
        };
        for (const key of KEYS) {
          await b.getOrSet({ key, factory: loaders.b.load });
          await bObj.getOrSet({ key, factory: loaders.bObj.load });
          await manager.wrap(key, loaders.m.load);
          await cache.getOrSet(key, loaders.s.load);
        }
        const next = { b: hotKeys(), o: hotKeys(), m: hotKeys(), s: hotKeys() };
        const measured = await measure([
          {
            group,
            name: 'bentocache getOrSet (memory + redis + bus)',
            baseline: true,
            run: () => b.getOrSet({ key: next.b(), factory: loaders.b.load }),
          },
          {
            group,
            name: 'bentocache getOrSet (same, serialize: false)',
            run: () => bObj.getOrSet({ key: next.o(), factory: loaders.bObj.load }),
          },
          {
            group,
            name: 'cache-manager wrap (keyv memory + @keyv/redis)',
            run: () => manager.wrap(next.m(), loaders.m.load),
          },
          {
            group,
            name: 'strata getOrSet (memory + redis + bus)',
            run: () => cache.getOrSet(next.s(), loaders.s.load),
          },
        ]);
        const loads = Object.values(loaders).reduce((n, l) => n + l.calls() - HOT_KEYS, 0);
        if (loads !== 0) notes.push(`WARNING: ${loads} loads during the L1+L2 hit group (expected none)`);
        const s = row(measured, group, 'strata getOrSet (memory + redis + bus)');
        notes.push(
          `L1+L2 getOrSet hit, strata / bentocache = ${ratioText(s.opsPerSec / row(measured, group, 'bentocache getOrSet (memory + redis + bus)').opsPerSec)}, strata / bentocache (serialize: false) = ${ratioText(s.opsPerSec / row(measured, group, 'bentocache getOrSet (same, serialize: false)').opsPerSec)}`,
        );
        await closeGroup();
      }

      // -------------------------------------------------------------------------------------
      // 3. getOrSet hit on Redis alone: one round trip and a parse for everyone.
      {
        const group = 'Redis-only getOrSet hit';
        const raw = ioredis();
        const rawPrefix = `${RUN}raw:`;
        await raw.mset(...KEYS.flatMap((key) => [rawPrefix + key, VALUE_TEXT]));
        const b = bento('redis', { redis: ioredis() });
        const manager = cacheManager([createKeyv(REDIS_URL, { namespace: `${RUN}cm:redis` })]);
        const cache = await strata({ memory: false, remote: strataStore('redis') });
        const loaders = { b: countingLoader(), m: countingLoader(), s: countingLoader() };
        for (const key of KEYS) {
          await b.getOrSet({ key, factory: loaders.b.load });
          await manager.wrap(key, loaders.m.load);
          await cache.getOrSet(key, loaders.s.load);
        }
        const next = { r: hotKeys(), b: hotKeys(), m: hotKeys(), s: hotKeys() };
        const measured = await measure([
          {
            group,
            name: 'raw ioredis GET + JSON.parse (floor)',
            baseline: true,
            run: async () => JSON.parse((await raw.get(rawPrefix + next.r()))!),
          },
          {
            group,
            name: 'bentocache getOrSet (redis only)',
            run: () => b.getOrSet({ key: next.b(), factory: loaders.b.load }),
          },
          {
            group,
            name: 'cache-manager wrap (@keyv/redis)',
            run: () => manager.wrap(next.m(), loaders.m.load),
          },
          {
            group,
            name: 'strata getOrSet (memory: false, redis)',
            run: () => cache.getOrSet(next.s(), loaders.s.load),
          },
        ]);
        const loads = Object.values(loaders).reduce((n, l) => n + l.calls() - HOT_KEYS, 0);
        if (loads !== 0)
          notes.push(`WARNING: ${loads} loads during the Redis-only hit group (expected none)`);
        const floor = row(measured, group, 'raw ioredis GET + JSON.parse (floor)');
        for (const r of measured) {
          r.extra = {
            'p50 / floor': ratioText(r.p50Us / floor.p50Us),
            'p99 / floor': ratioText(r.p99Us / floor.p99Us),
          };
        }
        const s = row(measured, group, 'strata getOrSet (memory: false, redis)');
        const p50 = (name: string) => ratioText(row(measured, group, name).p50Us / floor.p50Us);
        notes.push(
          check(
            s.p50Us <= 1.1 * floor.p50Us,
            `Redis-only hit latency, strata / raw ioredis: p50 ${ratioText(s.p50Us / floor.p50Us)} (${s.p50Us.toFixed(1)}µs vs ${floor.p50Us.toFixed(1)}µs), p99 ${ratioText(s.p99Us / floor.p99Us)} (target: within 1.1x; p50 of bentocache ${p50('bentocache getOrSet (redis only)')}, of cache-manager ${p50('cache-manager wrap (@keyv/redis)')})`,
          ),
        );
        await closeGroup();
      }

      // -------------------------------------------------------------------------------------
      // 4. A miss with an immediate load: lookup, load, store, on a new key every time.
      {
        const group = 'miss + load, memory';
        const lru = new LRUCache<string, object>({ max: MAX_ITEMS, ttl: TTL_MS });
        const b = bento('miss-mem', { memory: { serialize: true } });
        const bObj = bento('miss-mem-obj', { memory: { serialize: false } });
        const manager = cacheManager();
        const cache = await strata({});
        const load = async () => VALUE;
        const next = {
          l: freshKeys('l'),
          b: freshKeys('b'),
          o: freshKeys('o'),
          m: freshKeys('m'),
          s: freshKeys('s'),
        };
        await measure([
          {
            group,
            name: 'raw lru-cache get + set (floor)',
            run: () => {
              const key = next.l();
              if (lru.get(key) === undefined) lru.set(key, VALUE);
            },
          },
          {
            group,
            name: 'bentocache getOrSet (default: serialize)',
            baseline: true,
            run: () => b.getOrSet({ key: next.b(), factory: load }),
          },
          {
            group,
            name: 'bentocache getOrSet (serialize: false)',
            run: () => bObj.getOrSet({ key: next.o(), factory: load }),
          },
          { group, name: 'cache-manager wrap (keyv memory)', run: () => manager.wrap(next.m(), load) },
          { group, name: 'strata getOrSet (memory)', run: () => cache.getOrSet(next.s(), load) },
        ]);
        await closeGroup();
      }
      {
        const group = 'miss + load, memory + Redis';
        const raw = ioredis();
        const rawPrefix = `${RUN}rawmiss:`;
        const b = bento('miss-l1l2', { memory: { serialize: true }, redis: ioredis(), bus: true });
        const manager = cacheManager([keyvMemory(), createKeyv(REDIS_URL, { namespace: `${RUN}cm:miss` })]);
        const cache = await strata({ remote: strataStore('miss'), bus: strataBus() });
        const noLease = await strata({ remote: strataStore('miss-nolease'), bus: strataBus(), lease: false });
        const load = async () => VALUE;
        const next = {
          r: freshKeys('r'),
          b: freshKeys('b'),
          m: freshKeys('m'),
          s: freshKeys('s'),
          n: freshKeys('n'),
        };
        await measure([
          {
            group,
            name: 'raw ioredis GET, then SET PX (floor)',
            run: async () => {
              const key = rawPrefix + next.r();
              if ((await raw.get(key)) === null) await raw.set(key, JSON.stringify(VALUE), 'PX', TTL_MS);
            },
          },
          {
            group,
            name: 'bentocache getOrSet (memory + redis + bus)',
            baseline: true,
            run: () => b.getOrSet({ key: next.b(), factory: load }),
          },
          {
            group,
            name: 'cache-manager wrap (keyv memory + @keyv/redis)',
            run: () => manager.wrap(next.m(), load),
          },
          {
            group,
            name: 'strata getOrSet (memory + redis + bus, lease)',
            run: () => cache.getOrSet(next.s(), load),
          },
          {
            group,
            name: 'strata getOrSet (same, lease: false)',
            run: () => noLease.getOrSet(next.n(), load),
          },
        ]);
        await closeGroup();
      }

      // -------------------------------------------------------------------------------------
      // 5. getMany of 100 keys from Redis against a loop of single gets.
      {
        const group = 'getMany(100), Redis';
        const raw = ioredis();
        const rawPrefix = `${RUN}rawmany:`;
        await raw.mset(...KEYS.flatMap((key) => [rawPrefix + key, VALUE_TEXT]));
        const manager = cacheManager([createKeyv(REDIS_URL, { namespace: `${RUN}cm:many` })]);
        const cache = await strata({ memory: false, remote: strataStore('many') });
        const tiered = await strata({ remote: strataStore('many-l1'), bus: strataBus() });
        const entries = KEYS.map((key) => ({ key, value: VALUE }));
        await cache.setMany(entries);
        await tiered.setMany(entries);
        await manager.mset(entries.map((e) => ({ ...e, ttl: TTL_MS })));
        const window = cycle(
          Array.from({ length: HOT_KEYS / MANY }, (_, i) => KEYS.slice(i * MANY, (i + 1) * MANY)),
        );
        const found = new Map<string, number>();
        const count = (name: string, values: unknown[]) => {
          const n = values.filter((v) => v !== undefined && v !== null).length;
          found.set(name, Math.min(found.get(name) ?? MANY, n));
        };
        const measured = await measure([
          {
            group,
            name: 'raw ioredis MGET + JSON.parse (floor)',
            run: async () => {
              const texts = await raw.mget(window().map((key) => rawPrefix + key));
              count(
                'raw ioredis MGET + JSON.parse (floor)',
                texts.map((t) => (t === null ? undefined : JSON.parse(t))),
              );
            },
          },
          {
            group,
            name: 'cache-manager mget (@keyv/redis)',
            run: async () => count('cache-manager mget (@keyv/redis)', await manager.mget(window())),
          },
          {
            group,
            name: 'strata loop of 100 awaited get (memory: false)',
            baseline: true,
            run: async () => {
              const values: unknown[] = [];
              for (const key of window()) values.push(await cache.get(key));
              count('strata loop of 100 awaited get (memory: false)', values);
            },
          },
          {
            group,
            name: 'strata getMany (memory: false)',
            run: async () => count('strata getMany (memory: false)', await cache.getMany(window())),
          },
          {
            group,
            name: 'strata getMany (memory + redis, L1 hits)',
            run: async () =>
              count('strata getMany (memory + redis, L1 hits)', await tiered.getMany(window())),
          },
        ]);
        for (const r of measured) r.extra = { found: `${found.get(r.name) ?? 0}/${MANY}` };
        const many = row(measured, group, 'strata getMany (memory: false)');
        const loop = row(measured, group, 'strata loop of 100 awaited get (memory: false)');
        const mget = row(measured, group, 'raw ioredis MGET + JSON.parse (floor)');
        notes.push(
          check(
            many.opsPerSec >= 5 * loop.opsPerSec,
            `getMany(100) / loop of 100 single gets = ${ratioText(many.opsPerSec / loop.opsPerSec)} (target >= 5x); getMany / raw MGET + parse = ${ratioText(many.opsPerSec / mget.opsPerSec)}`,
          ),
        );
        await closeGroup();
      }

      // -------------------------------------------------------------------------------------
      // 6. A hot counter: each increment reads the current count, writes the new one to the
      //    store (SQLite) and to the cache, through write-through or through write-behind.
      {
        const openCounters = (file: string, synchronous: 'normal' | 'full'): SqliteDriver => {
          return own(createSqliteDriver({ filename: join(tmp, file), synchronous }), (db) => db.close());
        };
        const setup = async (db: SqliteDriver) => {
          await db.exec('create table counters (id text primary key, n integer not null)');
          for (let i = 0; i < COUNTERS; i++) await db.query('insert into counters values (?, 0)', [`c${i}`]);
        };
        // The count only grows, so it is its own version: an older write never replaces a newer one.
        const UPDATE = 'update counters set n = ? where id = ? and n < ?';
        const writeBatch =
          (db: SqliteDriver) => async (items: Array<{ key: string; value: number | undefined }>) => {
            await db.transaction(async (tx) => {
              for (const item of items) await tx.query(UPDATE, [item.value, item.key, item.value]);
            });
          };
        type Variant = {
          name: string;
          counts: Map<string, number>;
          db: SqliteDriver;
          wb?: WriteBehind<number>;
          cache: Cache;
          increment: () => Promise<void>;
        };
        const variants: Variant[] = [];
        const variant = async (
          name: string,
          file: string,
          mode: 'through' | 'through-fsync' | 'behind' | 'durable' | 'queue-only',
        ) => {
          const db = openCounters(file, mode === 'through-fsync' ? 'full' : 'normal');
          await setup(db);
          const cache = await strata({});
          const ids = Array.from({ length: COUNTERS }, (_, i) => `c${i}`);
          const counts = new Map(ids.map((id) => [id, 0]));
          const nextCounter = cycle(ids);
          let increment: () => Promise<void>;
          let wb: WriteBehind<number> | undefined;
          if (mode === 'through' || mode === 'through-fsync') {
            const through = cache.writeThrough<string, number>({
              key: (id) => `counter:${id}`,
              write: async (id, n) => {
                await db.query(UPDATE, [n, id, n]);
              },
            });
            increment = () => {
              const id = nextCounter();
              const n = counts.get(id)! + 1;
              counts.set(id, n);
              return through.set(id, n);
            };
          } else {
            const engine = createWriteBehind<number>({
              name,
              writeBatch: writeBatch(db),
              flushEvery: '100ms',
              ...(mode === 'durable'
                ? {
                    queue: own(createSqliteWriteBehindQueue({ filename: join(tmp, `${file}.queue`) }), (q) =>
                      q.close(),
                    ),
                  }
                : {}),
            });
            wb = own(engine, (e) => e.close());
            increment = async () => {
              const id = nextCounter();
              const n = counts.get(id)! + 1;
              counts.set(id, n);
              await engine.set(id, n);
              if (mode !== 'queue-only') await cache.set(`counter:${id}`, n);
            };
          }
          const v: Variant = { name, counts, db, cache, increment, ...(wb === undefined ? {} : { wb }) };
          variants.push(v);
          return v;
        };
        const seqThrough = await variant('write-through', 'wt.db', 'through');
        const seqBehind = await variant('write-behind', 'wb.db', 'behind');
        const parThrough = await variant('write-through, 100 in flight', 'wt100.db', 'through');
        const parBehind = await variant('write-behind, 100 in flight', 'wb100.db', 'behind');
        const parDurable = await variant(
          'write-behind, durable SQLite queue, 100 in flight',
          'wbd100.db',
          'durable',
        );
        const seqDurable = await variant('write-behind, durable SQLite queue', 'wbd.db', 'durable');
        const seqQueueOnly = await variant('write-behind, no cache set', 'wbq.db', 'queue-only');
        const seqFsync = await variant('write-through, synchronous full', 'wtf.db', 'through-fsync');

        const g1 = 'hot counter, sequential';
        const g2 = 'hot counter, 100 in flight';
        await measure([
          {
            group: g1,
            name: 'write-through (SQLite update, then cache set)',
            baseline: true,
            run: seqThrough.increment,
          },
          {
            group: g1,
            name: 'write-through, SQLite synchronous = full (fsync per commit)',
            run: seqFsync.increment,
          },
          { group: g1, name: 'write-behind (memory queue, flushEvery 100ms)', run: seqBehind.increment },
          { group: g1, name: 'write-behind (durable SQLite queue)', run: seqDurable.increment },
          {
            group: g1,
            name: 'write-behind alone, no cache set (readers use wb.get)',
            run: seqQueueOnly.increment,
          },
        ]);
        await measure([
          {
            group: g2,
            name: 'write-through (SQLite update, then cache set)',
            baseline: true,
            concurrency: 100,
            run: parThrough.increment,
          },
          {
            group: g2,
            name: 'write-behind (memory queue, flushEvery 100ms)',
            concurrency: 100,
            run: parBehind.increment,
          },
          {
            group: g2,
            name: 'write-behind (durable SQLite queue)',
            concurrency: 100,
            run: parDurable.increment,
          },
        ]);
        // Every increment must have reached the store, and the cache must hold the last count.
        const verdicts = new Map<Variant, string>();
        for (const v of variants) {
          await v.wb?.close();
          const stored = await v.db.query<{ id: string; n: number }>('select id, n from counters');
          let same = stored.rows.length === COUNTERS;
          let increments = 0;
          for (const r of stored.rows) {
            if (v.counts.get(r.id) !== r.n) same = false;
            if (v !== seqQueueOnly && r.n > 0 && (await v.cache.get(`counter:${r.id}`)) !== r.n) same = false;
            increments += r.n;
          }
          verdicts.set(v, `${same ? 'yes' : 'NO'} (${increments.toLocaleString('en-US')})`);
        }
        const byName: Record<string, Variant> = {
          [`${g1}|write-through (SQLite update, then cache set)`]: seqThrough,
          [`${g1}|write-behind (memory queue, flushEvery 100ms)`]: seqBehind,
          [`${g1}|write-behind (durable SQLite queue)`]: seqDurable,
          [`${g1}|write-behind alone, no cache set (readers use wb.get)`]: seqQueueOnly,
          [`${g1}|write-through, SQLite synchronous = full (fsync per commit)`]: seqFsync,
          [`${g2}|write-through (SQLite update, then cache set)`]: parThrough,
          [`${g2}|write-behind (memory queue, flushEvery 100ms)`]: parBehind,
          [`${g2}|write-behind (durable SQLite queue)`]: parDurable,
        };
        for (const r of rows) {
          const v = byName[`${r.group}|${r.name}`];
          if (v !== undefined) r.extra = { 'store = counts (increments)': verdicts.get(v)! };
        }
        const through = row(rows, g1, 'write-through (SQLite update, then cache set)');
        const behind = row(rows, g1, 'write-behind (memory queue, flushEvery 100ms)');
        const durable = row(rows, g1, 'write-behind (durable SQLite queue)');
        const alone = row(rows, g1, 'write-behind alone, no cache set (readers use wb.get)');
        const fsync = row(rows, g1, 'write-through, SQLite synchronous = full (fsync per commit)');
        const through100 = row(rows, g2, 'write-through (SQLite update, then cache set)');
        const behind100 = row(rows, g2, 'write-behind (memory queue, flushEvery 100ms)');
        const durable100 = row(rows, g2, 'write-behind (durable SQLite queue)');
        notes.push(
          check(
            behind.opsPerSec >= 20 * through.opsPerSec,
            `hot counter, write-behind / write-through = ${ratioText(behind.opsPerSec / through.opsPerSec)} sequential, ${ratioText(behind100.opsPerSec / through100.opsPerSec)} with 100 in flight (target >= 20x; both sides also set the cache)`,
          ),
          `hot counter, write-behind without the cache set / write-through = ${ratioText(alone.opsPerSec / through.opsPerSec)}: the engine itself is cheap, strata's cache.set is most of a write-behind increment`,
          `durable write-behind (SQLite queue) / write-through = ${ratioText(durable.opsPerSec / through.opsPerSec)} sequential, ${ratioText(durable100.opsPerSec / through100.opsPerSec)} with 100 in flight: each acknowledged increment is appended to the queue first; alone, an append costs about what the store write costs, and with writers in flight appends share one transaction (group commit)`,
          `the write-through baseline is a local SQLite file in WAL mode with synchronous = normal (no fsync per commit), the cheapest store write there is; against a store that syncs each commit (synchronous = full, as PostgreSQL commits by default) write-behind / write-through = ${ratioText(behind.opsPerSec / fsync.opsPerSec)}`,
        );
        await closeGroup();
      }

      // -------------------------------------------------------------------------------------
      // 7. The same hot counter against PostgreSQL: a networked store that syncs every commit,
      //    the kind of store write-behind is for.
      {
        const database = await createPostgresTestDatabase({ prefix: 'bench_cache_counter' });
        try {
          const pgDb = createPostgresDriver({ url: database.url, maxConnections: 4 });
          await pgDb.exec(`create table counters (id text primary key, n integer not null);
            insert into counters select 'c' || g, 0 from generate_series(0, ${COUNTERS - 1}) g;`);
          const ids = Array.from({ length: COUNTERS }, (_, i) => `c${i}`);
          const PG_UPDATE = 'update counters set n = $1 where id = $2 and n < $1';
          const make = async (mode: 'through' | 'behind' | 'durable') => {
            const cache = await strata({});
            const counts = new Map(ids.map((id) => [id, 0]));
            const next = cycle(ids);
            if (mode === 'through') {
              const through = cache.writeThrough<string, number>({
                key: (id) => `counter:${id}`,
                write: async (id, n) => {
                  await pgDb.query(PG_UPDATE, [n, id]);
                },
              });
              return {
                counts,
                increment: () => {
                  const id = next();
                  const n = counts.get(id)! + 1;
                  counts.set(id, n);
                  return through.set(id, n);
                },
              };
            }
            const engine = own(
              createWriteBehind<number>({
                name: `pg-${mode}`,
                flushEvery: '100ms',
                writeBatch: (items) =>
                  pgDb.transaction(async (tx) => {
                    for (const item of items) await tx.query(PG_UPDATE, [item.value, item.key]);
                  }),
                ...(mode === 'durable'
                  ? {
                      queue: own(
                        createSqliteWriteBehindQueue({ filename: join(tmp, 'pg-counter.queue') }),
                        (q) => q.close(),
                      ),
                    }
                  : {}),
              }),
              (e) => e.close(),
            );
            return {
              counts,
              engine,
              increment: async () => {
                const id = next();
                const n = counts.get(id)! + 1;
                counts.set(id, n);
                await engine.set(id, n);
                await cache.set(`counter:${id}`, n);
              },
            };
          };
          const pgThrough = await make('through');
          const pgBehind = await make('behind');
          const pgDurable = await make('durable');
          const g3 = 'hot counter on PostgreSQL, sequential';
          await measure([
            {
              group: g3,
              name: 'write-through (PostgreSQL update, then cache set)',
              baseline: true,
              run: pgThrough.increment,
            },
            { group: g3, name: 'write-behind (memory queue, flushEvery 100ms)', run: pgBehind.increment },
            { group: g3, name: 'write-behind (durable SQLite queue)', run: pgDurable.increment },
          ]);
          await pgBehind.engine?.close();
          await pgDurable.engine?.close();
          const stored = await pgDb.query<{ n: number }>('select sum(n)::int as n from counters');
          const through = row(rows, g3, 'write-through (PostgreSQL update, then cache set)');
          const behind = row(rows, g3, 'write-behind (memory queue, flushEvery 100ms)');
          const durable = row(rows, g3, 'write-behind (durable SQLite queue)');
          notes.push(
            check(
              behind.opsPerSec >= 20 * through.opsPerSec,
              `hot counter on PostgreSQL, write-behind / write-through = ${ratioText(behind.opsPerSec / through.opsPerSec)} (memory queue), ${ratioText(durable.opsPerSec / through.opsPerSec)} (durable SQLite queue) (target >= 20x)`,
            ),
            `PostgreSQL counters after the run: ${Number(stored.rows[0]?.n ?? 0).toLocaleString('en-US')} increments stored (max per counter wins; every write-behind engine drained on close)`,
          );
          await pgDb.close();
        } finally {
          await database.drop();
        }
        await closeGroup();
      }

      notes.push(
        `hot set ${HOT_KEYS} keys, value ${VALUE_TEXT.length} bytes of JSON; Redis at ${new URL(REDIS_URL).host}; strata's L1+L2 and miss rows use createRedisStore + createRedisBus`,
      );
      return { name: 'cache', title: bench.title, rows, notes };
    } finally {
      await closeGroup();
      const cleaner = new Redis(REDIS_URL);
      try {
        let cursor = '0';
        do {
          const [nextCursor, keys] = await cleaner.scan(cursor, 'MATCH', `${RUN}*`, 'COUNT', 1000);
          cursor = nextCursor;
          if (keys.length > 0) await cleaner.unlink(...keys);
        } while (cursor !== '0');
      } finally {
        cleaner.disconnect();
      }
      rmSync(tmp, { recursive: true, force: true });
    }
  },
};

export default bench;
