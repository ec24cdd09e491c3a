import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, services, tempDir } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { type ConfigError, isStrataError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { FakeClock } from '../testing/fake-clock.js';
import { createShardRouter, type ShardError, type ShardRouterOptions } from './router.js';
import {
  createDirectory,
  directoryStrategy,
  hashStrategy,
  rangeStrategy,
  type ShardKeyError,
  timeStrategy,
} from './strategies.js';
import type { ShardRouter, TablePlacement } from './types.js';

const dir = tempDir('strata-router-');
const opened: SqlDriver[] = [];
afterAll(async () => {
  for (const d of opened) await d.close();
  dir.remove();
});

function sqlite(name: string): SqlDriver {
  const driver = createSqliteDriver(join(dir.path, `${name}.db`));
  opened.push(driver);
  return driver;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

/** A promise and its resolver. */
function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** True when `promise` has settled after pending callbacks and I/O callbacks ran. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  await new Promise((r) => setImmediate(r));
  return done;
}

/** A real driver whose statements never answer: a hung shard. */
function hanging(driver: SqlDriver): SqlDriver {
  return {
    get name() {
      return driver.name;
    },
    get closed() {
      return driver.closed;
    },
    dialect: driver.dialect,
    query: () => new Promise(() => undefined),
    exec: () => new Promise(() => undefined),
    transaction: () => new Promise(() => undefined),
    ping: () => driver.ping(),
    close: () => driver.close(),
  };
}

const tables: Record<string, TablePlacement> = {
  users: { key: 'id' },
  posts: { key: 'user_id', colocateWith: 'users', primaryKey: 'id' },
  countries: { reference: true },
  audit: { store: 'analytics' },
};

const COUNTRIES = ['de', 'fr', 'jp', 'us', 'br'];

interface User {
  id: number;
  name: string;
  age: number | null;
  country: string;
}
interface Post {
  id: number;
  user_id: number;
  likes: number | null;
  created_at: Date;
}

function dataset(): { users: User[]; posts: Post[] } {
  const users: User[] = [];
  for (let id = 1; id <= 120; id++) {
    users.push({
      id,
      name: `user ${id}`,
      age: id % 17 === 0 ? null : 18 + ((id * 7) % 50),
      country: COUNTRIES[id % 5]!,
    });
  }
  const posts: Post[] = [];
  for (let id = 1; id <= 600; id++) {
    posts.push({
      id,
      user_id: 1 + ((id * 31) % 120),
      likes: id % 23 === 0 ? null : (id * 37) % 101,
      created_at: new Date(Date.UTC(2024, 0, 1) + ((id * 7919) % 400) * 3_600_000),
    });
  }
  return { users, posts };
}

async function createSchema(driver: SqlDriver): Promise<void> {
  const ts = driver.dialect.name === 'postgres' ? 'timestamptz' : 'text';
  await driver.query(
    'create table users (id integer primary key, name text not null, age integer, country text not null)',
  );
  await driver.query(
    `create table posts (id integer primary key, user_id integer not null, likes integer, created_at ${ts} not null)`,
  );
}

async function insertUser(executor: SqlDriver, u: User): Promise<void> {
  await executor.query(
    sql`insert into users (id, name, age, country) values (${u.id}, ${u.name}, ${u.age}, ${u.country})`,
  );
}

async function insertPost(executor: SqlDriver, p: Post): Promise<void> {
  await executor.query(
    sql`insert into posts (id, user_id, likes, created_at) values (${p.id}, ${p.user_id}, ${p.likes}, ${p.created_at})`,
  );
}

/** Loads the dataset through the router (each row on its shard) and into one reference database. */
async function load(router: ShardRouter, single: SqlDriver): Promise<void> {
  for (const driver of [...router.shards.values(), single]) await createSchema(driver);
  const { users, posts } = dataset();
  for (const u of users) {
    await insertUser((await router.forRow('users', u as never)).driver, u);
    await insertUser(single, u);
  }
  for (const p of posts) {
    await insertPost((await router.forRow('posts', p as never)).driver, p);
    await insertPost(single, p);
  }
}

/** Dates come back as Date (PostgreSQL) or ISO text (SQLite); compare them as epoch ms. */
function normalize(rows: Record<string, unknown>[]): Record<string, unknown>[] {
  return rows.map((row) =>
    Object.fromEntries(
      Object.entries(row).map(([k, v]) => [
        k,
        v instanceof Date
          ? v.getTime()
          : typeof v === 'string' && /^\d{4}-\d\d-\d\dT/.test(v)
            ? Date.parse(v)
            : v,
      ]),
    ),
  );
}

/**
 * The core scatter-gather checks, run against any set of shard drivers plus one database holding
 * all the rows: merged results must equal the single-database answer.
 */
function describeScatterGather(
  name: string,
  setup: () => Promise<{ shards: Record<string, SqlDriver>; single: SqlDriver }>,
) {
  describe(`scatter-gather (${name})`, () => {
    let router: ShardRouter;
    let single: SqlDriver;

    beforeAll(async () => {
      const made = await setup();
      single = made.single;
      router = createShardRouter({
        shards: made.shards,
        strategy: hashStrategy({ shards: Object.keys(made.shards) }),
        tables: { users: tables.users!, posts: tables.posts! },
      });
      await load(router, single);
    });

    it('spreads rows over every shard', async () => {
      const counts = await router.scatter<{ n: number }>('select count(*) as n from posts');
      expect(counts.rows).toHaveLength(router.shards.size);
      expect(counts.rows.every((r) => Number(r.n) > 0)).toBe(true);
      expect(counts.rows.reduce((a, r) => a + Number(r.n), 0)).toBe(600);
    });

    it('merges order by and limit into the single-database answer (nulls last, dates, ties)', async () => {
      for (const [statement, orderBy, limit] of [
        [
          'select id, user_id, likes from posts order by likes desc nulls last, id limit 40',
          [{ column: 'likes', desc: true }, { column: 'id' }],
          40,
        ],
        [
          'select id, likes from posts order by likes nulls last, id desc limit 600',
          [{ column: 'likes' }, { column: 'id', desc: true }],
          600,
        ],
        [
          'select id, created_at from posts order by created_at, id limit 25',
          [{ column: 'created_at' }, { column: 'id' }],
          25,
        ],
      ] as const) {
        const expected = (await single.query(statement)).rows;
        const merged = await router.scatter(statement, { orderBy, limit });
        expect(merged.failures).toEqual([]);
        expect(merged.answered).toEqual([...router.shards.keys()]);
        expect(normalize(merged.rows)).toEqual(normalize(expected));
      }
    });

    it('merges count, sum, min, max and avg into the single-database answer', async () => {
      const perShard = await router.scatter(
        `select count(*) as n, sum(likes) as total, min(likes) as lo, max(likes) as hi,
                sum(likes) as s, count(likes) as c, min(created_at) as first, max(age) as oldest
           from posts join users on users.id = posts.user_id`,
        {
          aggregate: {
            count: ['n', 'c'],
            sum: ['total', 's'],
            min: ['lo', 'first'],
            max: ['hi', 'oldest'],
            avg: [{ column: 'avg_likes', sum: 's', count: 'c' }],
          },
        },
      );
      expect(perShard.rows).toHaveLength(1);
      const expected = (
        await single.query<Record<string, unknown>>(
          `select count(*) as n, sum(likes) as total, min(likes) as lo, max(likes) as hi,
                  avg(likes) as avg_likes, min(created_at) as first, max(age) as oldest
             from posts join users on users.id = posts.user_id`,
        )
      ).rows[0]!;
      const row = normalize(perShard.rows)[0]!;
      const want = normalize([expected])[0]!;
      expect(row.n).toBe(Number(want.n));
      expect(row.total).toBe(Number(want.total));
      expect(row.lo).toBe(want.lo);
      expect(row.hi).toBe(want.hi);
      expect(row.first).toBe(want.first);
      expect(row.oldest).toBe(want.oldest);
      expect(row.avg_likes as number).toBeCloseTo(Number(want.avg_likes), 10);
    });

    it('merges grouped aggregates, then orders them', async () => {
      const merged = await router.scatter(
        'select country, count(*) as n, sum(age) as total_age, min(id) as first_id from users group by country',
        {
          aggregate: { groupBy: ['country'], count: ['n'], sum: ['total_age'], min: ['first_id'] },
          orderBy: [{ column: 'country' }],
        },
      );
      const expected = await single.query(
        'select country, count(*) as n, sum(age) as total_age, min(id) as first_id from users group by country order by country',
      );
      expect(merged.rows).toEqual(
        expected.rows.map((r) => ({ ...r, n: Number(r.n), total_age: Number(r.total_age) })),
      );
    });

    it('returns an aggregate row for an empty result, as one database would', async () => {
      const merged = await router.scatter(
        'select count(*) as n, sum(likes) as total, max(likes) as hi from posts where id < 0',
        {
          aggregate: { count: ['n'], sum: ['total'], max: ['hi'] },
        },
      );
      expect(merged.rows).toEqual([{ n: 0, total: null, hi: null }]);
    });
  });
}

describeScatterGather('4 SQLite files', async () => ({
  shards: { s0: sqlite('sg0'), s1: sqlite('sg1'), s2: sqlite('sg2'), s3: sqlite('sg3') },
  single: sqlite('sg_all'),
}));

describe.skipIf(!services.postgres)('on PostgreSQL', () => {
  const databases: PostgresTestDatabase[] = [];
  const drivers: SqlDriver[] = [];
  afterAll(async () => {
    for (const d of drivers) await d.close();
    for (const db of databases) await db.drop();
  });
  const pg = async () => {
    const db = await createPostgresTestDatabase({ prefix: 'strata_router' });
    databases.push(db);
    // Dropping a database on purpose ends its idle connections: no warning for those.
    const driver = createPostgresDriver({
      url: db.url,
      connectTimeout: '2s',
      onBackgroundError: () => undefined,
    });
    drivers.push(driver);
    return { db, driver };
  };

  describeScatterGather('3 PostgreSQL databases', async () => ({
    shards: { p0: (await pg()).driver, p1: (await pg()).driver, p2: (await pg()).driver },
    single: (await pg()).driver,
  }));

  it('keeps serving the other shards when one database is dropped, and scatter follows the policy', async () => {
    const shards = { p0: (await pg()).driver, p1: (await pg()).driver, p2: (await pg()).driver };
    const doomed = databases[databases.length - 1]!;
    const router = createShardRouter({
      shards,
      strategy: hashStrategy({ shards: ['p0', 'p1', 'p2'] }),
      tables: { t: { key: 'id' } },
    });
    await router.broadcast('create table t (id integer primary key)');
    for (let id = 1; id <= 30; id++) await router.query(id, sql`insert into t (id) values (${id})`);
    await doomed.drop();
    const alive = [...Array(30).keys()].map((i) => i + 1).filter((id) => router.shardOfSync(id) !== 'p2');
    for (const id of alive)
      expect(await router.query(id, sql`select id from t where id = ${id}`)).toEqual([{ id }]);
    const err = await rejection(router.scatter('select id from t'));
    expect(isStrataError(err, 'E_SHARD')).toBe(true);
    expect((err as ShardError).shards).toEqual(['p2']);
    const partial = await router.scatter<{ id: number }>('select id from t', {
      partial: 'partial',
      orderBy: [{ column: 'id' }],
    });
    expect(partial.rows.map((r) => r.id)).toEqual(alive);
    expect(partial.answered).toEqual(['p0', 'p1']);
    expect(partial.failures.map((f) => f.shard)).toEqual(['p2']);
  });
});

describe.skipIf(!services.postgres)('PostgreSQL numeric columns (decimals as text)', () => {
  const databases: PostgresTestDatabase[] = [];
  const drivers: SqlDriver[] = [];
  afterAll(async () => {
    for (const d of drivers) await d.close();
    for (const db of databases) await db.drop();
  });

  it('merges order by, min, max and sum of numeric columns into the single-database answer', async () => {
    const open = async () => {
      const db = await createPostgresTestDatabase({ prefix: 'strata_router_dec' });
      databases.push(db);
      const driver = createPostgresDriver(db.url);
      drivers.push(driver);
      await driver.query('create table items (id integer primary key, price numeric(12, 4))');
      return driver;
    };
    const shards = { p0: await open(), p1: await open() };
    const single = await open();
    const router = createShardRouter({
      shards,
      strategy: hashStrategy({ shards: ['p0', 'p1'] }),
      tables: { items: { key: 'id' } },
    });
    const prices = ['9.5', '10.25', '-3.125', '100', '0.0001', '99999999.9999', '-0.5', '10.2500', null];
    for (const [i, price] of prices.entries()) {
      await router.query(i + 1, sql`insert into items (id, price) values (${i + 1}, ${price})`);
      await single.query(sql`insert into items (id, price) values (${i + 1}, ${price})`);
    }
    const statement = 'select id, price from items order by price desc nulls last, id limit 6';
    const merged = await router.scatter(statement, {
      orderBy: [{ column: 'price', desc: true, decimal: true }, { column: 'id' }],
      limit: 6,
    });
    expect(merged.rows).toEqual((await single.query(statement)).rows);

    const agg = 'select min(price) as lo, max(price) as hi, sum(price) as total from items';
    const aggregated = await router.scatter(agg, {
      aggregate: { min: ['lo'], max: ['hi'], sum: ['total'], decimal: ['lo', 'hi', 'total'] },
    });
    expect(aggregated.rows).toEqual((await single.query(agg)).rows);
    expect(aggregated.rows[0]!.total).toBe('100000126.3750');
  });
});

describe.skipIf(!services.pgServers)('scatter-gather over separate PostgreSQL servers', () => {
  const databases: PostgresTestDatabase[] = [];
  const drivers: SqlDriver[] = [];
  afterAll(async () => {
    for (const d of drivers) await d.close();
    for (const db of databases) await db.drop();
  });
  const on = async (url: string) => {
    const db = await createPostgresTestDatabase({ prefix: 'strata_router', url });
    databases.push(db);
    const driver = createPostgresDriver({ url: db.url, connectTimeout: '2s' });
    drivers.push(driver);
    return driver;
  };
  describeScatterGather(`${1 + env.postgresServerUrls.length} servers`, async () => {
    const urls = [env.postgresUrl, ...env.postgresServerUrls];
    const shards: Record<string, SqlDriver> = {};
    for (const [i, url] of urls.entries()) shards[`server${i}`] = await on(url);
    return { shards, single: await on(env.postgresUrl) };
  });
});

describe('shard router on 4 SQLite files', () => {
  let router: ShardRouter;
  let analytics: SqlDriver;
  let single: SqlDriver;
  const shardIds = ['s0', 's1', 's2', 's3'];
  const base = (): ShardRouterOptions => ({
    shards: Object.fromEntries(shardIds.map((id) => [id, router.shards.get(id)!])),
    strategy: hashStrategy({ shards: shardIds }),
    tables,
    stores: { analytics },
  });

  beforeAll(async () => {
    analytics = sqlite('analytics');
    single = sqlite('all');
    router = createShardRouter({
      shards: Object.fromEntries(shardIds.map((id) => [id, sqlite(id)])),
      strategy: hashStrategy({ shards: shardIds }),
      tables,
      stores: { analytics },
    });
    await load(router, single);
  });

  describe('placement', () => {
    it('co-locates users and their posts on the user id shard', async () => {
      for (const [id, driver] of router.shards) {
        const users = await driver.query<{ id: number }>('select id from users');
        expect(users.rows.length).toBeGreaterThan(10);
        for (const u of users.rows) expect(router.shardOfSync(u.id)).toBe(id);
        const orphans = await driver.query<{ n: number }>(
          'select count(*) as n from posts where user_id not in (select id from users)',
        );
        expect(orphans.rows[0]!.n).toBe(0);
      }
      const joined = await router.scatter<{ n: number }>(
        'select count(*) as n from posts join users on users.id = posts.user_id',
        { aggregate: { count: ['n'] } },
      );
      expect(joined.rows[0]!.n).toBe(600);
    });

    it('routes forKey, query and transaction to the shard of the key', async () => {
      const handle = await router.forKey(42);
      expect(handle.id).toBe(router.shardOfSync(42));
      expect(await router.shardOf(42)).toBe(handle.id);
      expect(handle.driver).toBe(router.shards.get(handle.id));
      expect(await router.query(42, 'select name from users where id = ?', [42])).toEqual([
        { name: 'user 42' },
      ]);
      const count = await router.transaction(42, async (tx) => {
        await tx.query(sql`update users set name = ${'renamed'} where id = ${42}`);
        return (await tx.query<{ name: string }>(sql`select name from users where id = ${42}`)).rows[0]!.name;
      });
      expect(count).toBe('renamed');
      expect(await router.query(42n, sql`select name from users where id = ${42}`)).toEqual([
        { name: 'renamed' },
      ]);
      await router.query(42, sql`update users set name = ${'user 42'} where id = ${42}`);
    });

    it('copies a reference table to every shard with broadcast', async () => {
      await router.broadcast('create table countries (code text primary key, name text not null)');
      await router.broadcast(
        sql`insert into countries (code, name) values (${'de'}, ${'Germany'}), (${'jp'}, ${'Japan'})`,
      );
      for (const driver of router.shards.values()) {
        expect((await driver.query('select code from countries order by code')).rows).toEqual([
          { code: 'de' },
          { code: 'jp' },
        ]);
        const local = await driver.query<{ n: number }>(
          "select count(*) as n from users join countries on countries.code = users.country where users.country = 'de'",
        );
        expect(local.rows[0]!.n).toBeGreaterThan(0);
      }
      const err = await rejection(router.forRow('countries', { code: 'fr' }));
      expect(isStrataError(err, 'E_CONFIG')).toBe(true);
      expect((err as Error).message).toContain('countries');
    });

    it('sends a vertically partitioned table to its own store', async () => {
      expect(router.storeOf('audit')).toBe(analytics);
      const handle = await router.forRow('audit', { id: 1 });
      expect(handle).toEqual({ id: 'analytics', driver: analytics });
      await router.storeOf('audit').query('create table audit (id integer primary key, what text)');
      await router.storeOf('audit').query(sql`insert into audit (id, what) values (${1}, ${'login'})`);
      for (const driver of router.shards.values()) {
        const found = await driver.query("select name from sqlite_master where name = 'audit'");
        expect(found.rows).toEqual([]);
      }
      for (const table of ['users', 'countries']) {
        const err = thrown(() => router.storeOf(table));
        expect((err as ConfigError).option).toBe('table');
      }
    });

    it('groups keys by shard, in shard order, keeping key order within a group', async () => {
      const keys = [...Array(50).keys()].map((i) => 50 - i);
      const groups = await router.groupByShard(keys);
      expect([...groups.keys()]).toEqual(shardIds.filter((id) => groups.has(id)));
      expect([...groups.values()].flat().sort((a, b) => a - b)).toEqual([...keys].sort((a, b) => a - b));
      for (const [id, group] of groups) {
        for (const k of group) expect(router.shardOfSync(k)).toBe(id);
        expect(group).toEqual(keys.filter((k) => router.shardOfSync(k) === id));
      }
      const err = await rejection(router.groupByShard([1, null, 3]));
      expect(isStrataError(err, 'E_SHARD_KEY')).toBe(true);
    });

    it('concatenates unordered scatter results in shard order and applies the limit', async () => {
      const perShard: unknown[] = [];
      for (const driver of router.shards.values())
        perShard.push(...(await driver.query('select id from users')).rows);
      const all = await router.scatter('select id from users');
      expect(all.rows).toEqual(perShard);
      const some = await router.scatter('select id from users', { limit: 7, shards: ['s3', 's1'] });
      const s3 = (await router.shards.get('s3')!.query('select id from users')).rows;
      const s1 = (await router.shards.get('s1')!.query('select id from users')).rows;
      expect(some.rows).toEqual([...s3, ...s1].slice(0, 7));
      expect(some.answered).toEqual(['s3', 's1']);
    });

    it('sorts a shard answer that came back unordered before merging', async () => {
      const merged = await router.scatter<{ id: number }>('select id from users', {
        orderBy: [{ column: 'id', desc: true }],
        limit: 5,
      });
      expect(merged.rows.map((r) => r.id)).toEqual([120, 119, 118, 117, 116]);
    });
  });

  describe('moveRow', () => {
    it('moves a post to another user on another shard: inserted there, deleted here', async () => {
      const post = dataset().posts.find((p) => p.id === 10)!;
      const target = [...Array(120).keys()]
        .map((i) => i + 1)
        .find((u) => router.shardOfSync(u) !== router.shardOfSync(post.user_id))!;
      await router.moveRow('posts', post.user_id, { ...post, user_id: target });
      const oldShard = router.shards.get(router.shardOfSync(post.user_id))!;
      const newShard = router.shards.get(router.shardOfSync(target))!;
      expect((await oldShard.query('select id from posts where id = 10')).rows).toEqual([]);
      expect((await newShard.query('select user_id from posts where id = 10')).rows).toEqual([
        { user_id: target },
      ]);
      const total = await router.scatter<{ n: number }>('select count(*) as n from posts', {
        aggregate: { count: ['n'] },
      });
      expect(total.rows[0]!.n).toBe(600);
      await router.moveRow('posts', target, { ...post });
      expect((await oldShard.query('select user_id from posts where id = 10')).rows).toEqual([
        { user_id: post.user_id },
      ]);
    });

    it('updates in place when the new key lands on the same shard', async () => {
      const post = dataset().posts.find((p) => p.id === 11)!;
      const same = [...Array(120).keys()]
        .map((i) => i + 1)
        .find((u) => u !== post.user_id && router.shardOfSync(u) === router.shardOfSync(post.user_id))!;
      await router.moveRow('posts', post.user_id, { ...post, user_id: same, likes: 999 });
      const shard = router.shards.get(router.shardOfSync(same))!;
      expect((await shard.query('select user_id, likes from posts where id = 11')).rows).toEqual([
        { user_id: same, likes: 999 },
      ]);
      await router.moveRow('posts', same, { ...post });
    });

    it('removes the inserted copy and rethrows when the delete on the old shard fails', async () => {
      const post = dataset().posts.find((p) => p.id === 12)!;
      const oldShard = router.shards.get(router.shardOfSync(post.user_id))!;
      const target = [...Array(120).keys()]
        .map((i) => i + 1)
        .find((u) => router.shardOfSync(u) !== router.shardOfSync(post.user_id))!;
      const newShard = router.shards.get(router.shardOfSync(target))!;
      await oldShard.query(
        "create trigger no_delete before delete on posts begin select raise(abort, 'frozen'); end",
      );
      try {
        const err = await rejection(router.moveRow('posts', post.user_id, { ...post, user_id: target }));
        expect(isStrataError(err)).toBe(true);
        expect((await newShard.query('select id from posts where id = 12')).rows).toEqual([]);
        expect((await oldShard.query('select user_id from posts where id = 12')).rows).toEqual([
          { user_id: post.user_id },
        ]);
      } finally {
        await oldShard.query('drop trigger no_delete');
      }
    });

    it('fails with E_NOT_FOUND and leaves no copy when the old row does not exist', async () => {
      const ghost = { id: 99_999, user_id: 1, likes: 0, created_at: new Date() };
      const target = [...Array(120).keys()]
        .map((i) => i + 1)
        .find((u) => router.shardOfSync(u) !== router.shardOfSync(1))!;
      const err = await rejection(router.moveRow('posts', 1, { ...ghost, user_id: target }));
      expect(isStrataError(err, 'E_NOT_FOUND')).toBe(true);
      const left = await router.scatter('select id from posts where id = 99999');
      expect(left.rows).toEqual([]);
    });

    it('rejects a table not placed by key, a bad old key and a row without its key', async () => {
      expect(
        isStrataError(await rejection(router.moveRow('countries', 'de', { code: 'de' })), 'E_CONFIG'),
      ).toBe(true);
      expect(
        isStrataError(await rejection(router.moveRow('posts', null, { id: 1, user_id: 2 })), 'E_SHARD_KEY'),
      ).toBe(true);
      const err = await rejection(router.moveRow('posts', 1, { id: 1 }));
      expect(isStrataError(err, 'E_SHARD_KEY')).toBe(true);
      expect((err as Error).message).toContain('"user_id"');
    });
  });

  describe('one shard down', () => {
    it('keeps single-shard calls to the others working; scatter and broadcast name the shard', async () => {
      const down = createSqliteDriver(join(dir.path, 's2.db'));
      await down.close();
      const degraded = createShardRouter({ ...base(), shards: { ...base().shards, s2: down } });
      for (let id = 1; id <= 40; id++) {
        const shard = degraded.shardOfSync(id);
        const attempt = degraded.query(id, sql`select id from users where id = ${id}`);
        if (shard === 's2') expect(isStrataError(await rejection(attempt), 'E_CLOSED')).toBe(true);
        else expect(await attempt).toEqual([{ id }]);
      }
      const err = await rejection(degraded.scatter('select id from users'));
      expect(isStrataError(err, 'E_SHARD')).toBe(true);
      expect((err as ShardError).shards).toEqual(['s2']);
      expect((err as Error).message).toBe('scatter failed on shard "s2"');
      expect((err as ShardError).failures[0]).toMatchObject({ shard: 's2', code: 'E_CLOSED' });

      const partial = await degraded.scatter<{ id: number }>('select id from users', {
        partial: 'partial',
        orderBy: [{ column: 'id' }],
      });
      const expected = (await single.query<{ id: number }>('select id from users order by id')).rows.filter(
        (r) => degraded.shardOfSync(r.id) !== 's2',
      );
      expect(partial.rows).toEqual(expected);
      expect(partial.answered).toEqual(['s0', 's1', 's3']);
      expect(partial.failures).toEqual([{ shard: 's2', code: 'E_CLOSED', message: expect.any(String) }]);

      const broadcastErr = await rejection(degraded.broadcast('select 1'));
      expect(isStrataError(broadcastErr, 'E_SHARD')).toBe(true);
      expect((broadcastErr as ShardError).shards).toEqual(['s2']);
    });

    it('cuts a hanging shard at the per-shard timeout', async () => {
      const stuck = createShardRouter({
        ...base(),
        shards: { ...base().shards, s1: hanging(router.shards.get('s1')!) },
        scatterTimeout: '100ms',
      });
      const err = await rejection(stuck.scatter('select id from users'));
      expect(isStrataError(err, 'E_SHARD')).toBe(true);
      expect((err as ShardError).failures).toEqual([
        { shard: 's1', code: 'E_TIMEOUT', message: 'scatter on shard "s1" timed out after 100 ms' },
      ]);
      const partial = await stuck.scatter('select count(*) as n from users', {
        partial: 'partial',
        timeout: '50ms',
        aggregate: { count: ['n'] },
      });
      expect(partial.answered).toEqual(['s0', 's2', 's3']);
      expect(partial.failures.map((f) => [f.shard, f.code])).toEqual([['s1', 'E_TIMEOUT']]);
      const expected = (await single.query<{ id: number }>('select id from users')).rows.filter(
        (r) => router.shardOfSync(r.id) !== 's1',
      ).length;
      expect(partial.rows).toEqual([{ n: expected }]);

      const broadcastErr = await rejection(stuck.broadcast('select 1', { timeout: '100ms' }));
      expect(isStrataError(broadcastErr, 'E_SHARD')).toBe(true);
      expect((broadcastErr as ShardError).failures).toEqual([
        { shard: 's1', code: 'E_TIMEOUT', message: 'broadcast on shard "s1" timed out after 100 ms' },
      ]);
      const boundedByDefault = createShardRouter({
        ...base(),
        shards: { ...base().shards, s1: hanging(router.shards.get('s1')!) },
        broadcastTimeout: '50ms',
      });
      const defaultErr = await rejection(boundedByDefault.broadcast('select 1'));
      expect((defaultErr as ShardError).failures.map((f) => [f.shard, f.code])).toEqual([
        ['s1', 'E_TIMEOUT'],
      ]);
    });
  });

  describe('write gate', () => {
    it('waits for writes in flight, holds new ones while paused, and releases them on resume', async () => {
      const gate = createShardRouter(base());
      const inFlight = deferred();
      const order: string[] = [];
      const first = gate.withWrite(async () => {
        await inFlight.promise;
        order.push('first done');
        return 1;
      });
      const pause = gate.pauseWrites();
      expect(await settled(pause)).toBe(false);
      const held = gate.withWrite(async () => {
        order.push('held ran');
        return gate.query(1, sql`select id from users where id = ${1}`);
      });
      expect(await settled(held)).toBe(false);
      inFlight.resolve();
      await pause;
      expect(await first).toBe(1);
      expect(await settled(held)).toBe(false);
      expect(order).toEqual(['first done']);
      gate.resumeWrites();
      expect(await held).toEqual([{ id: 1 }]);
      expect(order).toEqual(['first done', 'held ran']);
    });

    it('lets a write nested in a write pass while a pause waits for the outer one', async () => {
      const gate = createShardRouter(base());
      const release = deferred();
      const outer = gate.withWrite(async () => {
        await release.promise;
        return gate.withWrite(async () => 'inner');
      });
      const pause = gate.pauseWrites();
      release.resolve();
      expect(await outer).toBe('inner');
      await pause;
      gate.resumeWrites();
    });

    it('fails a held write with E_TIMEOUT after maxWritePause', async () => {
      const clock = new FakeClock();
      const gate = createShardRouter({ ...base(), maxWritePause: '10s', clock });
      await gate.pauseWrites();
      let ran = false;
      const held = gate.withWrite(async () => {
        ran = true;
      });
      const outcome = rejection(held);
      await clock.advance(9_999);
      expect(await settled(held)).toBe(false);
      await clock.advance(1);
      const err = await outcome;
      expect(isStrataError(err, 'E_TIMEOUT')).toBe(true);
      expect(ran).toBe(false);
      gate.resumeWrites();
      expect(await gate.withWrite(async () => 'after')).toBe('after');
    });

    it('gives up a pause after maxWritePause when a write never finishes, and resumes writes', async () => {
      const clock = new FakeClock();
      const gate = createShardRouter({ ...base(), maxWritePause: '2s', clock });
      const never = deferred();
      const stuck = gate.withWrite(() => never.promise);
      const pause = rejection(gate.pauseWrites());
      await clock.advance(2_000);
      expect(isStrataError(await pause, 'E_TIMEOUT')).toBe(true);
      expect(await gate.withWrite(async () => 'not paused')).toBe('not paused');
      never.resolve();
      await stuck;
    });

    it('runs moveRow through the gate', async () => {
      const gate = createShardRouter(base());
      await gate.pauseWrites();
      const post = dataset().posts.find((p) => p.id === 13)!;
      const move = gate.moveRow('posts', post.user_id, { ...post, likes: 5 });
      expect(await settled(move)).toBe(false);
      gate.resumeWrites();
      await move;
      expect(await gate.query(post.user_id, 'select likes from posts where id = 13')).toEqual([{ likes: 5 }]);
    });
  });

  describe('strategies', () => {
    it('routes by a new strategy after setStrategy, and refuses one with other shards', async () => {
      const r = createShardRouter(base());
      const ranges = rangeStrategy({
        keyType: 'number',
        ranges: [
          { shard: 's0', to: 30 },
          { shard: 's1', from: 30, to: 60 },
          { shard: 's2', from: 60, to: 90 },
          { shard: 's3', from: 90 },
        ],
      });
      r.setStrategy(ranges);
      expect(r.strategy).toBe(ranges);
      expect(await r.shardOf(45)).toBe('s1');
      expect(r.shardOfSync(95)).toBe('s3');
      const err = thrown(() => r.setStrategy(hashStrategy({ shards: ['s0', 's1', 's2', 's3', 's4'] })));
      expect((err as ConfigError).option).toBe('strategy');
      expect((err as Error).message).toContain('"s4"');
      expect(
        (thrown(() => r.setStrategy(timeStrategy({ period: 'day' }) as never)) as ConfigError).option,
      ).toBe('strategy');
      expect(r.strategy).toBe(ranges);
      expect(isStrataError(await rejection(r.shardOf('12')), 'E_SHARD_KEY')).toBe(true);
    });

    it('places tenants by a directory, cached for its TTL, with a hash fallback', async () => {
      const clock = new FakeClock();
      const store = sqlite('directory');
      const strategy = directoryStrategy({
        shards: shardIds,
        fallback: hashStrategy({ shards: ['s0', 's1'] }),
        cacheTtl: '30s',
      });
      const r = createShardRouter({ ...base(), strategy, directory: store, clock });
      expect(r.directory).toBeDefined();
      await r.directory!.migrate();
      await r.directory!.migrate();
      await r.directory!.assign('acme', 's3');
      expect(await r.shardOf('acme')).toBe('s3');
      expect((await r.forKey('acme')).id).toBe('s3');
      expect(['s0', 's1']).toContain(await r.shardOf('globex'));
      const groups = await r.groupByShard(['acme', 'globex', 'acme']);
      expect(groups.get('s3')).toEqual(['acme', 'acme']);

      // Another process moves the tenant; this one sees it once its cached entry expires.
      const other = createDirectory(strategy, store);
      await other.assign('acme', 's2');
      expect(await r.shardOf('acme')).toBe('s3');
      await clock.advance(30_001);
      expect(await r.shardOf('acme')).toBe('s2');

      expect(await r.directory!.unassign('acme')).toBe(true);
      expect(await r.directory!.unassign('acme')).toBe(false);
      expect(['s0', 's1']).toContain(await r.shardOf('acme'));

      const err = await rejection(r.directory!.assign('acme', 's9'));
      expect((err as ConfigError).option).toBe('shard');
      expect(isStrataError(await rejection(r.shardOf(null)), 'E_SHARD_KEY')).toBe(true);
      expect((thrown(() => r.shardOfSync('acme')) as ConfigError).option).toBe('strategy');
    });

    it('sends unknown tenants to the first shard without a fallback', async () => {
      const store = sqlite('directory2');
      const r = createShardRouter({
        ...base(),
        strategy: directoryStrategy({ shards: shardIds, table: 'tenants' }),
        directory: store,
      });
      await r.directory!.migrate();
      expect(await r.shardOf('nobody')).toBe('s0');
      await r.directory!.assign(7, 's1');
      expect(await r.shardOf(7n)).toBe('s1');
      expect(await r.shardOf('7')).toBe('s1');
    });
  });

  describe('bad input', () => {
    it('rejects missing, null and wrong-typed keys with E_SHARD_KEY, never echoing the value', async () => {
      for (const key of [undefined, null, Number.NaN, 1.5, { id: 'secret-42' }, new Date('nope'), true]) {
        const err = await rejection(router.query(key, 'select 1'));
        expect(isStrataError(err, 'E_SHARD_KEY')).toBe(true);
        expect((err as Error).message).not.toContain('secret-42');
        expect((err as Error).message).not.toContain('1.5');
      }
      expect(
        isStrataError(
          thrown(() => router.shardOfSync(undefined)),
          'E_SHARD_KEY',
        ),
      ).toBe(true);
    });

    it('names the table and column of a row without its key', async () => {
      for (const row of [
        { id: 1, likes: 3 },
        { id: 1, user_id: null },
        { id: 1, user_id: { x: 1 } },
      ]) {
        const err = await rejection(router.forRow('posts', row));
        expect(isStrataError(err, 'E_SHARD_KEY')).toBe(true);
        expect((err as Error).message).toContain('table "posts" column "user_id"');
        expect((err as ShardKeyError).details).toMatchObject({ table: 'posts', column: 'user_id' });
      }
    });

    it('rejects an unknown table with E_CONFIG naming it', async () => {
      const err = await rejection(router.forRow('comments', { id: 1 }));
      expect((err as ConfigError).option).toBe('table');
      expect((err as Error).message).toContain('"comments"');
      const odd = await rejection(router.forRow('drop table; --', { id: 1 }));
      expect((odd as ConfigError).option).toBe('table');
      expect((odd as Error).message).not.toContain('drop');
      expect((thrown(() => router.storeOf('comments')) as ConfigError).option).toBe('table');
    });

    it('rejects a shards/strategy mismatch and bad tables at construction, naming the option', () => {
      const shards = base().shards;
      const cases: [() => unknown, string, string?][] = [
        [
          () => createShardRouter({ ...base(), shards: { s0: shards.s0!, s1: shards.s1!, s2: shards.s2! } }),
          'shards',
          '"s3"',
        ],
        [() => createShardRouter({ ...base(), shards: { ...shards, s9: shards.s0! } }), 'shards', '"s9"'],
        [() => createShardRouter({ ...base(), shards: { ...shards, s1: {} as never } }), 'shards.s1'],
        [() => createShardRouter({ ...base(), strategy: undefined as never }), 'strategy'],
        [
          () =>
            createShardRouter({ ...base(), strategy: { kind: 'hash', shards: shardIds, seed: -1 } as never }),
          'strategy.seed',
        ],
        [
          () => createShardRouter({ ...base(), strategy: timeStrategy({ period: 'day' }) as never }),
          'strategy',
        ],
        [() => createShardRouter({ ...base(), tables: { posts: { key: 'user id' } } }), 'tables.posts.key'],
        [
          () => createShardRouter({ ...base(), tables: { audit: { store: 'nowhere' } } }),
          'tables.audit.store',
        ],
        [() => createShardRouter({ ...base(), tables: { 'bad table': { key: 'id' } } }), 'tables'],
        [
          () => createShardRouter({ ...base(), tables: { t: { key: 'id', reference: true } as never } }),
          'tables.t',
        ],
        [
          () => createShardRouter({ ...base(), tables: { t: { reference: 'yes' } as never } }),
          'tables.t.reference',
        ],
        [
          () => createShardRouter({ ...base(), tables: { t: { key: 'id', primaryKey: [] } } }),
          'tables.t.primaryKey',
        ],
        [
          () => createShardRouter({ ...base(), tables: { t: { key: 'id', colocateWith: 'users' } } }),
          'tables.t.colocateWith',
        ],
        [
          () => createShardRouter({ ...base(), strategy: directoryStrategy({ shards: shardIds }) }),
          'directory',
        ],
        [() => createShardRouter({ ...base(), scatterTimeout: 'soon' }), 'scatterTimeout'],
        [() => createShardRouter({ ...base(), maxWritePause: 0 }), 'maxWritePause'],
      ];
      for (const [make, option, named] of cases) {
        const err = thrown(make);
        expect(isStrataError(err, 'E_CONFIG')).toBe(true);
        expect((err as ConfigError).option).toBe(option);
        if (named !== undefined) expect((err as Error).message).toContain(named);
      }
    });

    it('rejects bad scatter options naming them', async () => {
      const cases: [Parameters<ShardRouter['scatter']>[1], string][] = [
        [{ shards: ['s7'] }, 'shards'],
        [{ shards: [] }, 'shards'],
        [{ limit: -1 }, 'limit'],
        [{ limit: 1.5 }, 'limit'],
        [{ timeout: 'later' }, 'timeout'],
        [{ partial: 'some' as never }, 'partial'],
        [{ orderBy: [{ column: '' }] }, 'orderBy[0].column'],
        [{ aggregate: { sum: 'x' as never } }, 'aggregate.sum'],
        [{ aggregate: { avg: [{ column: 'a', sum: 's' } as never] } }, 'aggregate.avg[0].count'],
      ];
      for (const [options, option] of cases) {
        expect(((await rejection(router.scatter('select 1', options))) as ConfigError).option).toBe(option);
      }
      const notNumbers = await rejection(
        router.scatter('select name from users', { aggregate: { sum: ['name'] } }),
      );
      expect((notNumbers as ConfigError).option).toBe('aggregate.sum');
    });
  });
});
