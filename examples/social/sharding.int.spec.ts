/**
 * The social app's sharded storage: where rows land (checked in the shard databases directly),
 * global uniqueness through the index tables, the cross-shard feed, counts per shard, monthly
 * partitions of posts, and routing by the shard map that is active in the store.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from '../../src/core/sql.js';
import { decodeId, hashStrategy, placeSync } from '../../src/sharding/index.js';
import { tempDir } from '../../test/helpers.js';
import { socialTestEngines } from '../../test/social-engines.js';
import { createSocialApp, type SocialApp, type SocialAppOptions } from './app.js';

const engines = socialTestEngines('social_shards');

/** The map every new store starts with. */
const FIRST_MAP = hashStrategy({ shards: ['s0', 's1'] });

/** The month partition of posts created at `ms`. */
function monthPartition(ms: number): string {
  const d = new Date(ms);
  return `posts_p${d.getUTCFullYear()}_${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}

describe.each(engines)('sharded social storage on $name', (engine) => {
  let app: SocialApp;
  let options: SocialAppOptions;
  let cleanup: () => Promise<void>;
  let serial = 0;

  beforeAll(async () => {
    if (!engine.enabled) return;
    ({ options, cleanup } = await engine.open());
    app = await createSocialApp(options);
  });
  afterAll(async () => {
    if (!engine.enabled) return;
    await app?.close();
    await cleanup();
  });

  const call = async (
    method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE',
    url: string,
    payload?: unknown,
  ) => {
    const res = await app.server.inject({
      method,
      url,
      ...(payload === undefined ? {} : { payload: payload as object }),
    });
    return { status: res.statusCode, body: res.body.length > 0 ? res.json() : undefined };
  };
  const newUser = async (): Promise<{ id: number; email: string; handle: string }> => {
    const n = ++serial;
    const res = await call('POST', '/users', {
      handle: `sh_${n}`,
      email: `sh${n}@example.com`,
      name: `U ${n}`,
    });
    expect(res.status).toBe(201);
    return res.body;
  };
  /** Creates users until `perShard` of them live on each shard (of the first map). */
  const usersOnEveryShard = async (perShard: number): Promise<Record<string, number[]>> => {
    const by: Record<string, number[]> = { s0: [], s1: [] };
    for (let i = 0; i < 200 && Object.values(by).some((ids) => ids.length < perShard); i++) {
      const user = await newUser();
      by[placeSync(FIRST_MAP, user.id)]!.push(user.id);
    }
    expect(by.s0!.length).toBeGreaterThanOrEqual(perShard);
    expect(by.s1!.length).toBeGreaterThanOrEqual(perShard);
    return by;
  };
  const shard = (id: string) => app.stores.shards[id]!;
  /** The shards whose table `table` holds a row matching `where`. */
  const holders = async (table: string, column: string, value: unknown): Promise<string[]> => {
    const found: string[] = [];
    for (const id of ['s0', 's1']) {
      const { rows } = await shard(id).query<{ n: number }>(
        sql`select count(*) as n from ${sql.id(table)} where ${sql.id(column)} = ${value}`,
      );
      if (Number(rows[0]!.n) > 0) found.push(id);
    }
    return found;
  };

  it.skipIf(!engine.enabled)(
    "puts a user's row, posts, and the likes and comments of those posts on the user's shard",
    async () => {
      const by = await usersOnEveryShard(1);
      const author = by.s0![0]!;
      const fan = by.s1![0]!;
      expect(await holders('users', 'id', author)).toEqual(['s0']);
      expect(await holders('users', 'id', fan)).toEqual(['s1']);

      const post = (await call('POST', `/users/${author}/posts`, { body: 'on s0' })).body as { id: number };
      expect(await holders('posts', 'id', post.id)).toEqual(['s0']);
      const { rows: owners } = await app.db.query<{ user_id: number }>(
        sql`select user_id from post_owners where post_id = ${post.id}`,
      );
      expect(owners.map((r) => Number(r.user_id))).toEqual([author]);

      expect((await call('PUT', `/posts/${post.id}/likes/${fan}`)).body).toEqual({
        liked: true,
        likeCount: 1,
      });
      const comment = await call('POST', `/posts/${post.id}/comments`, { userId: fan, body: 'hi' });
      expect(comment.status).toBe(201);
      expect(await holders('likes', 'post_id', post.id)).toEqual(['s0']);
      expect(await holders('comments', 'id', comment.body.id)).toEqual(['s0']);
      const { rows } = await shard('s0').query<{ post_user_id: number; user_id: number }>(
        sql`select post_user_id, user_id from comments where id = ${comment.body.id}`,
      );
      expect(rows.map((r) => [Number(r.post_user_id), Number(r.user_id)])).toEqual([[author, fan]]);

      expect((await call('PUT', `/users/${fan}/following/${author}`)).body).toEqual({ followed: true });
      expect(await holders('follows', 'follower_id', fan)).toEqual(['s1']);
    },
  );

  it.skipIf(!engine.enabled)(
    'keeps emails and handles unique across shards (409 naming the field)',
    async () => {
      const by = await usersOnEveryShard(1);
      const [a] = by.s0!;
      const [b] = by.s1!;
      const owner = (await call('GET', `/users/${a}`)).body as { email: string; handle: string };
      // New users with a taken email: each attempt has a new id, so some land on the other shard.
      for (let i = 0; i < 8; i++) {
        const res = await call('POST', '/users', {
          handle: `dup_${serial}_${i}`,
          email: owner.email,
          name: 'D',
        });
        expect(res.status).toBe(409);
        expect(res.body).toMatchObject({ code: 'E_CONFLICT', details: { field: 'email' } });
      }
      const handle = await call('POST', '/users', {
        handle: owner.handle,
        email: `fresh${serial}@example.com`,
        name: 'H',
      });
      expect(handle.body).toMatchObject({ code: 'E_CONFLICT', details: { field: 'handle' } });
      const patch = await call('PATCH', `/users/${b}`, { email: owner.email });
      expect(patch).toMatchObject({ status: 409, body: { code: 'E_CONFLICT', details: { field: 'email' } } });
      expect(await holders('users', 'email', owner.email)).toEqual(['s0']);

      // Changing an email frees the old one for anybody, on any shard.
      const moved = await call('PATCH', `/users/${a}`, { email: `moved${serial}@example.com` });
      expect(moved.status).toBe(200);
      expect((await call('PATCH', `/users/${b}`, { email: owner.email })).status).toBe(200);
      expect(await holders('users', 'email', owner.email)).toEqual(['s1']);
    },
  );

  it.skipIf(!engine.enabled)(
    'gives the index rows back when the shard write fails, and reclaims stale orphans',
    async () => {
      const fail =
        engine.name === 'postgres'
          ? [
              `create function social_test_boom() returns trigger language plpgsql as $$
               begin if new.name = 'boom' then raise exception 'boom'; end if; return new; end $$`,
              `create trigger social_test_boom before insert on users for each row execute function social_test_boom()`,
            ]
          : [
              `create trigger social_test_boom before insert on users when new.name = 'boom' begin select raise(abort, 'boom'); end`,
            ];
      const undo =
        engine.name === 'postgres'
          ? ['drop trigger social_test_boom on users', 'drop function social_test_boom()']
          : ['drop trigger social_test_boom'];
      for (const id of ['s0', 's1']) for (const statement of fail) await shard(id).query(statement);
      try {
        await expect(
          app.repo.createUser({ handle: 'boom_h', email: 'boom@example.com', name: 'boom' }),
        ).rejects.toBeDefined();
      } finally {
        for (const id of ['s0', 's1']) for (const statement of undo) await shard(id).query(statement);
      }
      const { rows } = await app.db.query<{ n: number }>(
        sql`select (select count(*) from user_emails where email = 'boom@example.com')
                 + (select count(*) from user_handles where handle = 'boom_h') as n`,
      );
      expect(Number(rows[0]!.n)).toBe(0);
      const retry = await call('POST', '/users', {
        handle: 'boom_h',
        email: 'boom@example.com',
        name: 'fine',
      });
      expect(retry.status).toBe(201);

      // An index row whose user never got written: fresh, it still blocks; stale, it is reclaimed.
      const now = Date.now();
      await app.db.query(
        sql`insert into user_emails (email, user_id, created_at) values ('fresh-ghost@example.com', 12345, ${now}),
              ('stale-ghost@example.com', 12346, ${now - 120_000})`,
      );
      const blocked = await call('POST', '/users', {
        handle: 'ghost_a',
        email: 'fresh-ghost@example.com',
        name: 'G',
      });
      expect(blocked.status).toBe(409);
      const taken = await call('POST', '/users', {
        handle: 'ghost_b',
        email: 'stale-ghost@example.com',
        name: 'G',
      });
      expect(taken.status).toBe(201);
    },
  );

  it.skipIf(!engine.enabled)('merges the feed from several shards newest first, page by page', async () => {
    const by = await usersOnEveryShard(2);
    const writers = [by.s0![0]!, by.s1![0]!, by.s0![1]!, by.s1![1]!];
    const reader = (await newUser()).id;
    for (const w of writers) await call('PUT', `/users/${reader}/following/${w}`);
    const ids: number[] = [];
    for (let i = 0; i < 12; i++) {
      const post = await call('POST', `/users/${writers[i % writers.length]}/posts`, { body: `p${i}` });
      ids.push(post.body.id);
    }
    // Followed users' posts are other users' data, read from the shards' replicas: eventually all there.
    const all = async () => (await call('GET', `/users/${reader}/feed?limit=12`)).body.items.length === 12;
    for (let i = 0; i < 800 && !(await all()); i++) await new Promise((r) => setTimeout(r, 25));
    const seen: number[] = [];
    const sizes: number[] = [];
    let cursor: number | null = null;
    do {
      const res: { body: { items: Array<{ id: number; userId: number }>; nextCursor: number | null } } =
        await call('GET', `/users/${reader}/feed?limit=5${cursor === null ? '' : `&cursor=${cursor}`}`);
      sizes.push(res.body.items.length);
      seen.push(...res.body.items.map((p) => p.id));
      cursor = res.body.nextCursor;
    } while (cursor !== null && sizes.length < 10);
    expect(seen).toEqual([...ids].reverse());
    expect(sizes).toEqual([5, 5, 2]);
    const authors = new Set(
      (await call('GET', `/users/${reader}/feed?limit=12`)).body.items.map((p: { userId: number }) =>
        placeSync(FIRST_MAP, p.userId),
      ),
    );
    expect([...authors].sort()).toEqual(['s0', 's1']);
  });

  it.skipIf(!engine.enabled)('reports counts per shard that add up to the totals', async () => {
    const status = (await call('GET', '/api/status')).body as {
      counts: Record<string, number>;
      shards: {
        map: { name: string; version: number; strategy: { kind: string }; shards: string[] };
        rows: Record<string, Record<string, number>>;
        state: string;
      };
    };
    expect(status.shards.map).toMatchObject({ name: 'social', version: 1, strategy: { kind: 'hash' } });
    expect(status.shards.map.shards).toEqual(['s0', 's1']);
    expect(status.shards.state).toBe('stable');
    for (const table of ['users', 'posts', 'comments', 'likes', 'follows']) {
      const perShard = ['s0', 's1'].map((s) => status.shards.rows[s]![table]!);
      expect(perShard[0]! + perShard[1]!, table).toBe(status.counts[table]);
    }
    for (const id of ['s0', 's1']) {
      const { rows } = await shard(id).query<{ n: number }>(sql`select count(*) as n from users`);
      expect(Number(rows[0]!.n)).toBe(status.shards.rows[id]!.users);
      expect(status.shards.rows[id]!.users).toBeGreaterThan(0);
    }
    const figures = app.telemetry.tick().figures;
    expect(Object.keys(figures.shard_rows ?? {}).sort()).toEqual(['s0', 's1']);
    expect(figures.shard_balance?.skew).toBeGreaterThanOrEqual(1);
  });

  it.skipIf(!engine.enabled)('writes each post into the partition of its month', async () => {
    const user = (await newUser()).id;
    const post = (await call('POST', `/users/${user}/posts`, { body: 'partitioned' })).body as {
      id: number;
      createdAt: number;
    };
    expect(post.createdAt).toBe(decodeId(post.id).time.getTime());
    const expected = monthPartition(post.createdAt);
    const home = placeSync(FIRST_MAP, user);
    if (engine.name === 'postgres') {
      const { rows } = await shard(home).query<{ part: string }>(
        sql`select tableoid::regclass::text as part from posts where id = ${post.id}`,
      );
      expect(rows.map((r) => r.part)).toEqual([expected]);
    } else {
      const { rows } = await shard(home).query<{ n: number }>(
        sql`select count(*) as n from ${sql.id(expected)} where id = ${post.id}`,
      );
      expect(Number(rows[0]!.n)).toBe(1);
    }
    // Partitions are premade three months ahead on every shard.
    const ahead = new Date(post.createdAt);
    const inThreeMonths = monthPartition(Date.UTC(ahead.getUTCFullYear(), ahead.getUTCMonth() + 3, 1));
    for (const s of app.stores.shardList) {
      const names = (await s.posts.status({ estimate: true })).map((p) => p.name);
      expect(names).toContain(inThreeMonths);
    }
  });

  it.skipIf(!engine.enabled)('captures a partition created later, before rows reach it', async () => {
    const user = (await newUser()).id;
    const home = app.stores.router.shardOfSync(user);
    const later = Date.UTC(new Date().getUTCFullYear() + 2, 0, 15);
    const partition = monthPartition(later);
    expect(app.stores.postPartitions(home)).not.toContain(partition);
    const table = await app.stores.preparePostTable(home, later);
    expect(app.stores.postPartitions(home)).toContain(partition);
    const id = app.stores.ids.next();
    await shard(home).query(
      sql`insert into ${sql.id(table)} (id, user_id, body, created_at) values (${id}, ${user}, 'later', ${later})`,
    );
    const log = app.pipeline!.log;
    const deadline = Date.now() + 20_000;
    for (;;) {
      const entries = await log.read(0, 10_000, { tables: ['posts'] });
      const found = entries.find((e) => Number(e.after?.id) === id);
      if (found !== undefined) {
        expect(found).toMatchObject({ table: 'posts', op: 'insert', after: { body: 'later' } });
        break;
      }
      if (Date.now() > deadline) throw new Error('the new partition was not captured');
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  it.skipIf(!engine.enabled)(
    "holds writes while another process's reshard announces its cutover, and lets them go after",
    async () => {
      const user = (await newUser()).id;
      const active = (await app.stores.mapStore.active('social'))!;
      await app.stores.mapStore.setState('social', 'cutover', { toVersion: active.version + 1 });
      const deadline = Date.now() + 15_000;
      while (app.stores.map().state !== 'cutover') {
        if (Date.now() > deadline) throw new Error('the running app did not see the cutover');
        await new Promise((r) => setTimeout(r, 50));
      }
      let done = false;
      const write = call('POST', `/users/${user}/posts`, { body: 'held' }).then((r) => {
        done = true;
        return r;
      });
      await new Promise((r) => setTimeout(r, 300));
      expect(done).toBe(false);
      // The cutover ends (here without a new version): the held write goes through.
      await app.stores.mapStore.setState('social', 'stable');
      const response = await write;
      expect(response.status).toBe(201);
    },
  );

  it.skipIf(!engine.enabled)('routes by the map active in the store, live and after a restart', async () => {
    const next = hashStrategy({ shards: ['s0', 's1'], seed: 99 });
    const version = await app.stores.mapStore.save('social', next);
    await app.stores.mapStore.activate('social', version);
    // The running app polls the store and switches (the shards are the same).
    const deadline = Date.now() + 15_000;
    while (app.stores.router.strategy.version !== version) {
      if (Date.now() > deadline) throw new Error('the running app did not pick up the new map');
      await new Promise((r) => setTimeout(r, 50));
    }
    await app.close();
    await expect(createSocialApp({ ...options, shards: 3 })).rejects.toMatchObject({
      code: 'E_CONFIG',
      option: 'shards',
    });
    app = await createSocialApp(options);
    const status = (await call('GET', '/api/status')).body;
    expect(status.shards.map).toMatchObject({ version, strategy: { kind: 'hash', seed: 99 } });

    let moved = 0;
    for (let i = 0; i < 60 && moved < 2; i++) {
      const user = await newUser();
      const home = placeSync(next, user.id);
      expect(await holders('users', 'id', user.id)).toEqual([home]);
      if (placeSync(FIRST_MAP, user.id) !== home) moved++;
    }
    // Users the first map would have put elsewhere: the new map decided.
    expect(moved).toBe(2);
  });
});

describe('shard count option', () => {
  it('refuses a bad count before opening anything, and creates as many shard files as asked', async () => {
    const dir = tempDir('strata-social-shard-count-');
    try {
      for (const shards of [0, 65, 1.5]) {
        await expect(createSocialApp({ dataDir: dir.path, shards, changes: false })).rejects.toMatchObject({
          code: 'E_CONFIG',
          option: 'shards',
        });
      }
      expect(existsSync(join(dir.path, 'social.db'))).toBe(false);
      const app = await createSocialApp({ dataDir: dir.path, shards: 3, changes: false });
      try {
        expect(app.stores.shardList.map((s) => s.id)).toEqual(['s0', 's1', 's2']);
        expect(app.stores.shardList.map((s) => s.detail.split('/').pop())).toEqual([
          'shard-0.db',
          'shard-1.db',
          'shard-2.db',
        ]);
      } finally {
        await app.close();
      }
    } finally {
      dir.remove();
    }
  });
});
