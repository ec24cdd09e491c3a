/**
 * The cost of strata's thin adapters: the same point query and key-value read through strata's
 * driver and through the client library directly, in one run.
 */
import Database from 'better-sqlite3';
import { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import pg from 'pg';
import { sql } from 'strata';
import { createMemoryStore } from 'strata/memory';
import { createPostgresDriver, createPostgresTestDatabase } from 'strata/postgres';
import { createRedisStore } from 'strata/redis';
import { createSqliteDriver } from 'strata/sqlite';
import { type BenchCase, type Benchmark, measureCases } from './harness.js';

const ROWS = 10_000;

const bench: Benchmark = {
  name: 'drivers',
  title: 'drivers: strata adapters beside the raw client libraries',
  async run(options) {
    const cases: BenchCase[] = [];
    const cleanups: Array<() => unknown> = [];

    // SQLite: one in-memory database per side, same schema and data.
    const raw = new Database(':memory:');
    const strataDb = createSqliteDriver(':memory:');
    for (const exec of [(s: string) => raw.exec(s), (s: string) => strataDb.exec(s)]) {
      await exec('create table users (id integer primary key, name text not null, email text not null)');
      await exec(
        `with recursive n(v) as (select 1 union all select v + 1 from n where v < ${ROWS})
         insert into users (id, name, email) select v, 'user ' || v, 'u' || v || '@example.com' from n`,
      );
    }
    const rawStmt = raw.prepare('select id, name, email from users where id = ?');
    let i = 0;
    const nextId = () => {
      i = (i % ROWS) + 1;
      return i;
    };
    cases.push(
      {
        group: 'sqlite point query',
        name: 'raw better-sqlite3 prepared',
        baseline: true,
        run: () => rawStmt.get(nextId()),
      },
      {
        group: 'sqlite point query',
        name: 'strata sqlite driver (sql tag)',
        run: () => strataDb.query(sql`select id, name, email from users where id = ${nextId()}`),
      },
      {
        group: 'sqlite point query',
        name: 'strata sqlite driver (text)',
        run: () => strataDb.query('select id, name, email from users where id = ?', [nextId()]),
      },
    );
    cleanups.push(
      () => raw.close(),
      () => strataDb.close(),
    );

    // PostgreSQL: one fresh database, a raw pg.Pool and a strata driver of the same size.
    const database = await createPostgresTestDatabase({ prefix: 'bench_drivers' });
    const rawPool = new pg.Pool({ connectionString: database.url, max: 8 });
    rawPool.on('error', () => undefined);
    const strataPg = createPostgresDriver({ url: database.url, maxConnections: 8 });
    await strataPg.exec(`create table users (id integer primary key, name text not null, email text not null);
      insert into users select g, 'user ' || g, 'u' || g || '@example.com' from generate_series(1, ${ROWS}) g;`);
    let j = 0;
    const nextPgId = () => {
      j = (j % ROWS) + 1;
      return j;
    };
    cases.push(
      {
        group: 'postgres point query, 8 concurrent',
        name: 'raw pg.Pool query',
        baseline: true,
        concurrency: 8,
        run: () => rawPool.query('select id, name, email from users where id = $1', [nextPgId()]),
      },
      {
        group: 'postgres point query, 8 concurrent',
        name: 'strata postgres driver (sql tag)',
        concurrency: 8,
        run: () => strataPg.query(sql`select id, name, email from users where id = ${nextPgId()}`),
      },
    );
    cleanups.push(
      () => rawPool.end(),
      () => strataPg.close(),
      () => database.drop(),
    );

    // Key-value reads of a hot set of 1,000 keys: raw lru-cache and raw ioredis are the floors.
    const KEYS = 1_000;
    const keys = Array.from({ length: KEYS }, (_, n) => `user:${n}`);
    const value = JSON.stringify({ id: 1, name: 'Ada Lovelace', bio: 'x'.repeat(200) });
    const lru = new LRUCache<string, string>({ max: 10_000 });
    const memory = createMemoryStore({ maxItems: 10_000 });
    for (const key of keys) {
      lru.set(key, value);
      await memory.set(key, value);
    }
    const prefix = `bench:drivers:${process.pid}:`;
    const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
    const rawRedis = new Redis(redisUrl);
    const strataRedis = createRedisStore({ url: redisUrl, prefix });
    await strataRedis.setMany(keys.map((key) => ({ key, value })));
    let k = 0;
    const nextKey = () => {
      k = (k + 1) % KEYS;
      return keys[k]!;
    };
    cases.push(
      { group: 'memory get (hit)', name: 'raw lru-cache get', baseline: true, run: () => lru.get(nextKey()) },
      {
        group: 'memory get (hit)',
        name: 'strata memory store getSync',
        run: () => memory.getSync(nextKey()),
      },
      {
        group: 'memory get (hit)',
        name: 'strata memory store get (async)',
        run: () => memory.get(nextKey()),
      },
      {
        group: 'redis get (hit)',
        name: 'raw ioredis get',
        baseline: true,
        run: () => rawRedis.get(prefix + nextKey()),
      },
      { group: 'redis get (hit)', name: 'strata redis store get', run: () => strataRedis.get(nextKey()) },
      {
        group: 'redis getMany(100)',
        name: 'raw ioredis mget',
        baseline: true,
        run: () => rawRedis.mget(keys.slice(0, 100).map((key) => prefix + key)),
      },
      {
        group: 'redis getMany(100)',
        name: 'strata redis store getMany',
        run: () => strataRedis.getMany(keys.slice(0, 100)),
      },
    );
    cleanups.push(
      () => memory.close(),
      async () => {
        await strataRedis.clear();
        await strataRedis.close();
        rawRedis.disconnect();
      },
    );

    try {
      const rows = await measureCases(cases, options);
      return { name: 'drivers', title: bench.title, rows, notes: [] };
    } finally {
      for (const c of cleanups) await c();
    }
  },
};

export default bench;
