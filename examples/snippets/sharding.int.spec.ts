import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPostgresDriver } from '../../src/backends/postgres/postgres-driver.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../../src/backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../../src/backends/sqlite/sqlite-driver.js';
import { run } from '../../src/cli/program.js';
import { isStrataError } from '../../src/core/errors.js';
import { type SqlDriver, sql } from '../../src/core/sql.js';
import { createShardRouter } from '../../src/sharding/router.js';
import { hashStrategy, rangeStrategy } from '../../src/sharding/strategies.js';
import type { ShardRouter } from '../../src/sharding/types.js';
import { FakeClock } from '../../src/testing/fake-clock.js';
import { env, services, tempDir } from '../../test/helpers.js';
import { eventIds } from './ids-bigint.js';
import { postIds } from './ids-leased.js';
import { postsByMonth } from './partitions-postgres.js';
import { eventsByMonth } from './partitions-sqlite.js';
import { tenantRouter } from './sharding-directory.js';
import { httpStatusOf } from './sharding-errors.js';
import { hashPlacement } from './sharding-hash.js';
import { publishShardMap, routerFromShardMap } from './sharding-map-store.js';
import { atStartup, transferPost } from './sharding-move-row.js';
import { namesOf, profile, signUp } from './sharding-point-queries.js';
import { rangePlacement } from './sharding-range.js';
import { openShards } from './sharding-router.js';
import { latestPosts, likeStats, postCountBestEffort, postsPerCountry } from './sharding-scatter.js';
import { gatedWrites } from './sharding-write-gate.js';

const dir = tempDir('strata-snippets-sharding-');
const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  dir.remove();
});

function sqlite(name: string): SqlDriver {
  const driver = createSqliteDriver(join(dir.path, `${name}.db`));
  cleanups.push(() => driver.close());
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

/** True when `promise` has settled once pending callbacks and I/O callbacks ran. */
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

const USERS = 40;
const createdAt = (id: number) =>
  new Date(Date.UTC(2026, 0, 1) + ((id * 7) % USERS) * 3_600_000).toISOString();
const country = (id: number) => (id % 3 === 0 ? 'jp' : 'de');
const likes = (id: number) => id % 7;

describe('sharding snippets on SQLite shards', () => {
  let router: ShardRouter;

  beforeAll(async () => {
    const opened = await openShards(dir.path);
    router = opened.router;
    cleanups.push(opened.close);
    for (let id = 1; id <= USERS; id++) {
      await signUp(
        router,
        { id, name: `user ${id}`, country: country(id) },
        { id: 1000 + id, body: `hello from ${id}`, created_at: createdAt(id) },
      );
      await router.query(id, sql`update posts set likes = ${likes(id)} where id = ${1000 + id}`);
    }
  });

  it('openShards broadcasts the schema and reference rows, and keeps page_views in its own store', async () => {
    for (const driver of router.shards.values()) {
      expect((await driver.query('select code from countries order by code')).rows).toEqual([
        { code: 'de' },
        { code: 'jp' },
      ]);
      expect((await driver.query("select 1 from sqlite_master where name = 'page_views'")).rows).toEqual([]);
    }
    const analytics = router.storeOf('page_views');
    expect(
      (await analytics.query("select 1 as found from sqlite_master where name = 'page_views'")).rows,
    ).toEqual([{ found: 1 }]);
  });

  it('signUp puts a user and the post on the user shard only, in one transaction', async () => {
    for (let id = 1; id <= USERS; id++) {
      const home = router.shardOfSync(id);
      for (const [shard, driver] of router.shards) {
        const users = await driver.query(sql`select id from users where id = ${id}`);
        const posts = await driver.query(sql`select id from posts where user_id = ${id}`);
        expect(users.rows.length).toBe(shard === home ? 1 : 0);
        expect(posts.rows.length).toBe(shard === home ? 1 : 0);
      }
    }
    // A new user whose post id is already taken on its shard: neither row commits.
    const taken = 1000 + 1;
    const newcomer = [...Array(200).keys()]
      .map((i) => 500 + i)
      .find((id) => router.shardOfSync(id) === router.shardOfSync(1))!;
    const err = await rejection(
      signUp(
        router,
        { id: newcomer, name: 'late', country: 'de' },
        { id: taken, body: 'dup', created_at: createdAt(1) },
      ),
    );
    expect(isStrataError(err, 'E_CONSTRAINT')).toBe(true);
    expect(await router.query(newcomer, sql`select id from users where id = ${newcomer}`)).toEqual([]);
  });

  it('profile joins locally on the user shard; namesOf sends one query per shard', async () => {
    expect(await profile(router, 3)).toEqual([{ name: 'user 3', country: 'Japan', posts: 1 }]);
    expect(await profile(router, 4)).toEqual([{ name: 'user 4', country: 'Germany', posts: 1 }]);
    const ids = [...Array(USERS).keys()].map((i) => i + 1);
    const names = await namesOf(router, ids);
    expect(names.size).toBe(USERS);
    for (const id of ids) expect(names.get(id)).toBe(`user ${id}`);
    expect((await router.groupByShard(ids)).size).toBe(router.shards.size);
  });

  it('latestPosts merges the per-shard top lists into the global newest posts', async () => {
    const expected = [...Array(USERS).keys()]
      .map((i) => ({ id: 1000 + i + 1, user_id: i + 1, created_at: createdAt(i + 1) }))
      .sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : b.id - a.id))
      .slice(0, 5);
    expect(await latestPosts(router, 5)).toEqual(expected);
  });

  it('likeStats merges counts, sums, max and an exact average across shards', async () => {
    const all = [...Array(USERS).keys()].map((i) => likes(i + 1));
    const total = all.reduce((a, b) => a + b, 0);
    const stats = await likeStats(router);
    expect(stats).toEqual({ posts: USERS, likes: total, top: Math.max(...all), avg_likes: total / USERS });
  });

  it('postsPerCountry merges grouped counts', async () => {
    const jp = [...Array(USERS).keys()].filter((i) => country(i + 1) === 'jp').length;
    expect(await postsPerCountry(router)).toEqual([
      { country: 'de', posts: USERS - jp },
      { country: 'jp', posts: jp },
    ]);
  });

  it('postCountBestEffort answers without a dead shard and names it; httpStatusOf maps the errors', async () => {
    expect(await postCountBestEffort(router)).toEqual({ posts: USERS, missing: [] });
    const dead = createSqliteDriver(join(dir.path, 's2.db'));
    await dead.close();
    const degraded = createShardRouter({
      shards: { ...Object.fromEntries(router.shards), s2: dead },
      strategy: router.strategy,
      tables: router.tables,
      stores: { analytics: router.storeOf('page_views') },
    });
    const onS2 = [...Array(USERS).keys()].filter((i) => router.shardOfSync(i + 1) === 's2').length;
    expect(onS2).toBeGreaterThan(0);
    expect(await postCountBestEffort(degraded)).toEqual({ posts: USERS - onS2, missing: ['s2'] });

    const failed = httpStatusOf(await rejection(latestPosts(degraded, 5)));
    expect(failed.status).toBe(503);
    expect(failed.body).toMatchObject({
      code: 'E_SHARD',
      shards: ['s2'],
      failures: [{ shard: 's2', code: 'E_CLOSED' }],
    });
    const badKey = httpStatusOf(await rejection(profile(router, null as never)));
    expect(badKey.status).toBe(400);
    expect(badKey.body).toMatchObject({ code: 'E_SHARD_KEY', details: { problem: 'the key is null' } });
    expect(httpStatusOf(await rejection(router.forRow('comments', { id: 1 }))).status).toBe(500);
    expect(() => httpStatusOf(new Error('other'))).toThrow('other');
  });

  it('transferPost moves a post to the new owner shard', async () => {
    const from = 5;
    const to = [...Array(USERS).keys()]
      .map((i) => i + 1)
      .find((u) => router.shardOfSync(u) !== router.shardOfSync(from))!;
    const [post] = await router.query<{
      id: number;
      user_id: number;
      body: string;
      likes: number;
      created_at: string;
    }>(from, sql`select id, user_id, body, likes, created_at from posts where id = ${1005}`);
    await transferPost(router, post!, to);
    expect(await router.query(from, sql`select id from posts where id = ${1005}`)).toEqual([]);
    expect(await router.query(to, sql`select user_id, likes from posts where id = ${1005}`)).toEqual([
      { user_id: to, likes: post!.likes },
    ]);
    await transferPost(router, { ...post!, user_id: to }, from);
    expect(await router.query(from, sql`select user_id from posts where id = ${1005}`)).toEqual([
      { user_id: from },
    ]);
    // Finished moves leave nothing for a recovery.
    expect(await atStartup(router)).toEqual({ completed: 0, dropped: 0 });
  });

  it('gatedWrites holds a like while paused and applies it on resume', async () => {
    const gate = gatedWrites(router);
    let release!: () => void;
    const inside = new Promise<void>((r) => {
      release = r;
    });
    let paused!: () => void;
    const pausedNow = new Promise<void>((r) => {
      paused = r;
    });
    const maintenance = gate.whilePaused(async () => {
      paused();
      await inside;
      return 'done';
    });
    await pausedNow;
    const like = gate.like(7, 1007);
    expect(await settled(like)).toBe(false);
    expect(await router.query(7, sql`select likes from posts where id = ${1007}`)).toEqual([
      { likes: likes(7) },
    ]);
    release();
    expect(await maintenance).toBe('done');
    await like;
    expect(await router.query(7, sql`select likes from posts where id = ${1007}`)).toEqual([
      { likes: likes(7) + 1 },
    ]);
  });

  it('publishShardMap and routerFromShardMap: a process follows a version activated by another', async () => {
    const writer = sqlite('config');
    const reader = sqlite('config');
    const shards = Object.fromEntries(router.shards);
    const first = await publishShardMap(writer, hashStrategy({ shards: ['s0', 's1', 's2', 's3'] }));
    expect(first).toMatchObject({ version: 1, state: 'stable' });
    const follower = await routerFromShardMap(reader, shards, { users: { key: 'id' } });
    cleanups.push(follower.stop);
    expect(follower.version()).toBe(1);
    const ranges = rangeStrategy({
      keyType: 'number',
      ranges: [
        { shard: 's0', to: 100 },
        { shard: 's1', from: 100, to: 200 },
        { shard: 's2', from: 200, to: 300 },
        { shard: 's3', from: 300 },
      ],
    });
    expect((await publishShardMap(writer, ranges)).version).toBe(2);
    const deadline = Date.now() + 10_000;
    while (follower.version() !== 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(follower.version()).toBe(2);
    expect([150, 250, 350].map((k) => follower.router.shardOfSync(k))).toEqual(['s1', 's2', 's3']);
    follower.stop();
  });
});

describe('strategy snippets', () => {
  it('hashPlacement: one key for 42, "42" and 42n; growing to five shards moves a fifth, all to s4', () => {
    const { oneKey, moved, movedBetweenOldShards } = hashPlacement();
    expect(oneKey).toBe(1);
    expect(movedBetweenOldShards).toBe(0);
    expect(moved).toBeGreaterThan(19_000);
    expect(moved).toBeLessThan(21_000);
  });

  it('rangePlacement: bounds are [from, to), ends are open, a hole is refused naming the bound', () => {
    expect(rangePlacement()).toEqual({
      ids: ['old', 'mid', 'new'],
      times: ['archive', 'y2025'],
      problem: 'ranges[1].from',
    });
  });

  it('tenantRouter places an assigned tenant on its shard and others by the fallback', async () => {
    const shards = { s0: sqlite('t0'), s1: sqlite('t1'), s2: sqlite('t2') };
    const router = await tenantRouter(sqlite('tenants'), shards);
    expect(await router.shardOf('acme')).toBe('s2');
    expect((await router.forRow('invoices', { tenant: 'acme', total: 10 })).id).toBe('s2');
    for (const tenant of ['globex', 'initech', 'umbrella', 'hooli']) {
      expect(['s0', 's1']).toContain(await router.shardOf(tenant));
    }
  });
});

describe('time partitioning snippet on SQLite', () => {
  it('eventsByMonth premakes, writes to period tables, reads through the view and drops expired months', async () => {
    const file = join(dir.path, 'events.db');
    const db = createSqliteDriver(file);
    cleanups.push(() => db.close());
    const clock = new FakeClock(Date.UTC(2026, 2, 15));
    const events = await eventsByMonth(db, clock);
    expect((await events.status()).map((p) => p.name)).toEqual([
      'events_p2026_03',
      'events_p2026_04',
      'events_p2026_05',
    ]);
    expect(await events.record(1, new Date('2026-03-20T10:00:00Z'), 'signup')).toEqual({
      table: 'events_p2026_03',
    });
    await events.record(2, new Date('2026-04-02T10:00:00Z'), 'login');
    expect(await events.record(3, new Date('2027-01-09T10:00:00Z'), 'login')).toEqual({
      table: 'events_p2027_01',
    });
    expect(await events.countByKind()).toEqual([
      { kind: 'login', n: 2 },
      { kind: 'signup', n: 1 },
    ]);

    const out = sink();
    const code = await run(
      [
        'node',
        'strata',
        'partitions',
        'status',
        '--database',
        `sqlite:${file}`,
        '--table',
        'events',
        '--json',
      ],
      { stdout: out, stderr: sink(), env: {} },
    );
    expect(code).toBe(0);
    const listed = JSON.parse(out.text()) as {
      period: string;
      partitions: Array<{ name: string; rows: number }>;
    };
    expect(listed.period).toBe('month');
    expect(listed.partitions.map((p) => [p.name, p.rows])).toEqual([
      ['events_p2026_03', 1],
      ['events_p2026_04', 1],
      ['events_p2026_05', 0],
      ['events_p2027_01', 1],
    ]);

    await clock.advance(Date.UTC(2027, 3, 15) - clock.now());
    const report = await events.nightly();
    expect(report.dropped).toEqual(['events_p2026_03']);
    expect(report.created).toEqual(['events_p2027_04', 'events_p2027_05', 'events_p2027_06']);
    expect(await events.countByKind()).toEqual([{ kind: 'login', n: 2 }]);
  });
});

/** A writable stream that keeps what is written to it. */
function sink(): NodeJS.WritableStream & { text: () => string } {
  const chunks: string[] = [];
  return {
    write: (chunk: string) => {
      chunks.push(chunk);
      return true;
    },
    text: () => chunks.join(''),
  } as unknown as NodeJS.WritableStream & { text: () => string };
}

describe('global id snippets', () => {
  it('postIds leases distinct worker ids from one table and issues ascending ids', async () => {
    const db = sqlite('ids');
    const a = await postIds(db);
    const b = await postIds(db);
    expect([a.parts.workerId, b.parts.workerId]).toEqual([0, 1]);
    expect(typeof a.first).toBe('number');
    expect(a.more[0]!).toBeGreaterThan(a.first);
    for (let i = 1; i < a.more.length; i++) expect(a.more[i]!).toBeGreaterThan(a.more[i - 1]!);
    expect(new Set([...a.more, ...b.more]).size).toBe(2_000);
    expect(Math.abs(a.parts.time.getTime() - Date.now())).toBeLessThan(60_000);
    await a.close();
    await b.close();
    const c = await postIds(db);
    expect(c.parts.workerId).toBe(0);
    await c.close();
  });

  it('eventIds issues bigint ids past one millisecond, decoded with layout and epoch', async () => {
    const { batch, parts } = await eventIds(5);
    expect(batch).toHaveLength(10_000);
    expect(typeof batch[0]).toBe('bigint');
    for (let i = 1; i < batch.length; i++) expect(batch[i]! > batch[i - 1]!).toBe(true);
    expect(parts.workerId).toBe(5);
    expect(parts.sequence).toBeLessThan(4096);
  });
});

describe.skipIf(!services.postgres)('time partitioning snippet on PostgreSQL', () => {
  let database: PostgresTestDatabase;
  let db: SqlDriver;
  beforeAll(async () => {
    database = await createPostgresTestDatabase({ prefix: 'strata_snippet_parts', url: env.postgresUrl });
    db = createPostgresDriver(database.url);
  });
  afterAll(async () => {
    await db?.close();
    await database?.drop();
  });

  it('postsByMonth premakes, moves default rows out, and archives expired partitions', async () => {
    const clock = new FakeClock(Date.UTC(2026, 2, 15));
    const posts = await postsByMonth(db, clock);
    expect(posts.created).toEqual(['posts_p2026_03', 'posts_p2026_04', 'posts_p2026_05', 'posts_p2026_06']);
    const where = async (id: number) =>
      (
        await db.query<{ part: string }>(
          sql`select tableoid::regclass::text as part from posts where id = ${id}`,
        )
      ).rows[0]!.part;
    await posts.write(1, 7, new Date('2026-03-20T10:00:00Z'), 'now');
    await posts.write(2, 7, new Date('2027-01-10T10:00:00Z'), 'far ahead');
    expect(await where(1)).toBe('posts_p2026_03');
    expect(await where(2)).toBe('posts_default');

    const moved = await posts.nightly();
    expect(moved.created).toEqual(['posts_p2027_01']);
    expect(moved.movedFromDefault).toBe(1);
    expect(await where(2)).toBe('posts_p2027_01');

    await clock.advance(Date.UTC(2028, 3, 15) - clock.now());
    const expired = await posts.nightly();
    expect(expired.detached).toEqual(['posts_p2026_03']);
    expect(expired.handedOff).toEqual(['posts_p2026_03_detached']);
    expect(expired.dropped).toEqual(['posts_p2026_03']);
    expect((await db.query('select id, body from posts_archive')).rows).toEqual([{ id: 1, body: 'now' }]);
    expect((await db.query('select id from posts order by id')).rows).toEqual([{ id: 2 }]);
    expect((await posts.status()).some((p) => p.name === 'posts_p2026_03' || p.kind === 'detached')).toBe(
      false,
    );
  });
});
