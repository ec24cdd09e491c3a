import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { socialTestEngines } from '../../test/social-engines.js';
import { createSocialApp, type SocialApp, type SocialAppOptions } from './app.js';

async function until(condition: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const engines = socialTestEngines('social_api');

describe.each(engines)('social API on $name', (engine) => {
  let app: SocialApp;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    if (!engine.enabled) return;
    let options: SocialAppOptions;
    ({ options, cleanup } = await engine.open());
    app = await createSocialApp(options);
  });
  afterAll(async () => {
    if (!engine.enabled) return;
    await app.close();
    await cleanup();
  });

  // Like a browser, the client keeps the session cookie a write sets and sends it back, so reads
  // of the last writer's own data are read-your-writes; other users' data is read eventually.
  let cookie: string | undefined;
  const call = async (
    method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE',
    url: string,
    payload?: unknown,
  ) => {
    const res = await app.server.inject({
      method,
      url,
      ...(payload === undefined ? {} : { payload: payload as object }),
      ...(cookie === undefined ? {} : { headers: { cookie } }),
    });
    const set = res.headers['set-cookie'];
    const last = (Array.isArray(set) ? set : set === undefined ? [] : [set]).at(-1);
    if (last !== undefined) cookie = last.split(';')[0];
    return {
      status: res.statusCode,
      body: res.body.length > 0 ? res.json() : undefined,
      headers: res.headers,
    };
  };
  const user = async (n: string) =>
    (await call('POST', '/users', { handle: `u_${n}`, email: `${n}@example.com`, name: `User ${n}` }))
      .body as {
      id: number;
    };

  it.skipIf(!engine.enabled)('creates, reads and updates a user', async () => {
    const created = await call('POST', '/users', {
      handle: 'alice',
      email: 'alice@example.com',
      name: 'Alice',
      bio: 'hi',
    });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      handle: 'alice',
      email: 'alice@example.com',
      name: 'Alice',
      bio: 'hi',
    });
    const id = created.body.id as number;
    expect((await call('GET', `/users/${id}`)).body).toMatchObject({ id, handle: 'alice' });
    const updated = await call('PATCH', `/users/${id}`, { bio: 'updated' });
    expect(updated.status).toBe(200);
    expect(updated.body).toMatchObject({ id, bio: 'updated', name: 'Alice' });
  });

  it.skipIf(!engine.enabled)('answers 409 naming the field for a duplicate email or handle', async () => {
    await call('POST', '/users', { handle: 'bob', email: 'bob@example.com', name: 'Bob' });
    const email = await call('POST', '/users', { handle: 'bob2', email: 'bob@example.com', name: 'Bob' });
    expect(email.status).toBe(409);
    expect(email.body).toMatchObject({ code: 'E_CONFLICT', details: { field: 'email' } });
    expect(JSON.stringify(email.body)).not.toContain('bob@example.com');
    const handle = await call('POST', '/users', { handle: 'bob', email: 'other@example.com', name: 'Bob' });
    expect(handle.body).toMatchObject({ code: 'E_CONFLICT', details: { field: 'handle' } });
    const carol = await user('carol');
    const patch = await call('PATCH', `/users/${carol.id}`, { email: 'bob@example.com' });
    expect(patch.status).toBe(409);
  });

  it.skipIf(!engine.enabled)('answers 400 with every field path for invalid input', async () => {
    const res = await call('POST', '/users', { handle: 'x', email: 'nope', name: '   ', extra: 1 });
    expect(res.status).toBe(400);
    expect(res.body.code).toBe('E_VALIDATION');
    const paths = (res.body.details.issues as { path: string[] }[]).map((i) => i.path.join('.'));
    expect(paths).toEqual(expect.arrayContaining(['handle', 'email', 'name']));
    const badId = await call('GET', '/users/abc');
    expect(badId).toMatchObject({ status: 400, body: { code: 'E_VALIDATION' } });
    const hugeId = await call('GET', '/users/99999999999999999999');
    expect(hugeId.status).toBe(400);
    const bigPage = await call('GET', '/users/1/posts?limit=101');
    expect(bigPage.status).toBe(400);
    expect(bigPage.body.details.issues[0].path).toEqual(['limit']);
    expect((await call('PATCH', '/users/1', {})).status).toBe(400);
  });

  it.skipIf(!engine.enabled)('answers 404 for unknown users, posts and routes', async () => {
    expect((await call('GET', '/users/424242')).body).toMatchObject({
      code: 'E_NOT_FOUND',
      details: { entity: 'user' },
    });
    expect((await call('GET', '/posts/424242')).status).toBe(404);
    expect((await call('POST', '/users/424242/posts', { body: 'x' })).status).toBe(404);
    expect((await call('GET', '/users/424242/feed')).status).toBe(404);
    expect((await call('GET', '/nope/nothing')).body).toMatchObject({ code: 'E_ROUTE_NOT_FOUND' });
    expect((await call('DELETE', '/users/1')).status).toBe(404);
  });

  it.skipIf(!engine.enabled)(
    'gives malformed JSON, oversize bodies and wrong media types their own 4xx',
    async () => {
      const malformed = await app.server.inject({
        method: 'POST',
        url: '/users',
        payload: '{"handle": "x",',
        headers: { 'content-type': 'application/json' },
      });
      expect(malformed.statusCode).toBe(400);
      expect(malformed.json()).toMatchObject({ code: 'E_MALFORMED_JSON' });
      const big = await app.server.inject({
        method: 'POST',
        url: '/users',
        payload: JSON.stringify({ handle: 'big', email: 'big@example.com', name: 'x'.repeat(100_000) }),
        headers: { 'content-type': 'application/json' },
      });
      expect(big.statusCode).toBe(413);
      expect(big.json()).toMatchObject({ code: 'E_PAYLOAD_TOO_LARGE' });
      const form = await app.server.inject({
        method: 'POST',
        url: '/users',
        payload: 'handle=x',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
      });
      expect(form.statusCode).toBe(415);
      expect(form.json()).toMatchObject({ code: 'E_UNSUPPORTED_MEDIA_TYPE' });
    },
  );

  it.skipIf(!engine.enabled)('pages through a user’s posts newest first with bounded pages', async () => {
    const author = await user('pager');
    const ids: number[] = [];
    for (let i = 0; i < 25; i++)
      ids.push((await call('POST', `/users/${author.id}/posts`, { body: `post ${i}` })).body.id);
    const seen: number[] = [];
    let cursor: number | null = null;
    do {
      const res: { body: { items: { id: number }[]; nextCursor: number | null } } = await call(
        'GET',
        `/users/${author.id}/posts?limit=10${cursor === null ? '' : `&cursor=${cursor}`}`,
      );
      seen.push(...res.body.items.map((p) => p.id));
      cursor = res.body.nextCursor;
    } while (cursor !== null);
    expect(seen).toEqual([...ids].reverse());
    const first = await call('GET', `/users/${author.id}/posts`);
    expect(first.body.items).toHaveLength(20);
  });

  it.skipIf(!engine.enabled)('counts likes and comments idempotently', async () => {
    const author = await user('liked');
    const fan = await user('fan');
    const post = (await call('POST', `/users/${author.id}/posts`, { body: 'like me' })).body;
    expect((await call('PUT', `/posts/${post.id}/likes/${fan.id}`)).body).toEqual({
      liked: true,
      likeCount: 1,
    });
    expect((await call('PUT', `/posts/${post.id}/likes/${fan.id}`)).body).toEqual({
      liked: false,
      likeCount: 1,
    });
    expect((await call('PUT', `/posts/${post.id}/likes/${author.id}`)).body).toEqual({
      liked: true,
      likeCount: 2,
    });
    expect((await call('DELETE', `/posts/${post.id}/likes/${fan.id}`)).body).toEqual({
      unliked: true,
      likeCount: 1,
    });
    expect((await call('DELETE', `/posts/${post.id}/likes/${fan.id}`)).body).toEqual({
      unliked: false,
      likeCount: 1,
    });
    expect((await call('PUT', `/posts/${post.id}/likes/424242`)).status).toBe(404);
    const comment = await call('POST', `/posts/${post.id}/comments`, { userId: fan.id, body: 'nice' });
    expect(comment.status).toBe(201);
    expect((await call('POST', `/posts/${post.id}/comments`, { userId: 424242, body: 'x' })).status).toBe(
      404,
    );
    const comments = await call('GET', `/posts/${post.id}/comments`);
    expect(comments.body.items).toEqual([expect.objectContaining({ userId: fan.id, body: 'nice' })]);
    expect((await call('GET', `/posts/${post.id}`)).body).toMatchObject({ likeCount: 1, commentCount: 1 });
  });

  it.skipIf(!engine.enabled)('builds the feed from followed users, newest first', async () => {
    const reader = await user('reader');
    const a = await user('writer_a');
    const b = await user('writer_b');
    const c = await user('writer_c');
    expect((await call('PUT', `/users/${reader.id}/following/${a.id}`)).body).toEqual({ followed: true });
    expect((await call('PUT', `/users/${reader.id}/following/${a.id}`)).body).toEqual({ followed: false });
    await call('PUT', `/users/${reader.id}/following/${b.id}`);
    const p1 = (await call('POST', `/users/${a.id}/posts`, { body: 'a1' })).body.id;
    const p2 = (await call('POST', `/users/${b.id}/posts`, { body: 'b1' })).body.id;
    await call('POST', `/users/${c.id}/posts`, { body: 'c1 (not followed)' });
    const p3 = (await call('POST', `/users/${a.id}/posts`, { body: 'a2' })).body.id;
    // The feed is a projection of the posts and follows: eventually there. A page read before
    // they arrive is not cached for long: the feed-invalidation consumer drops it once the
    // projection has applied them.
    const ids = async () =>
      (await call('GET', `/users/${reader.id}/feed?limit=10`)).body.items.map((p: { id: number }) => p.id);
    await until(async () => (await ids()).length === 3, 'the followed posts on the replicas');
    expect(await ids()).toEqual([p3, p2, p1]);
    const feed = await call('GET', `/users/${reader.id}/feed`);
    await until(
      async () => (await call('GET', `/users/${reader.id}/feed`)).body.items.length === 3,
      'the cached first page',
    );
    expect(feed.status).toBe(200);
    const self = await call('PUT', `/users/${reader.id}/following/${reader.id}`);
    expect(self).toMatchObject({ status: 400, body: { code: 'E_VALIDATION' } });
    expect((await call('DELETE', `/users/${reader.id}/following/${b.id}`)).body).toEqual({
      unfollowed: true,
    });
    // The feed is a projection: once it has applied the unfollow, b's post is gone from it (the
    // first page is a cache entry; a later page is always read from the projection).
    const later = async () =>
      (await call('GET', `/users/${reader.id}/feed?limit=1&cursor=${p3}`)).body.items.map(
        (p: { id: number }) => p.id,
      );
    await until(async () => (await later())[0] !== p2, 'the feed projection to apply the unfollow');
    expect(await later()).toEqual([p1]);
  });

  it.skipIf(!engine.enabled)(
    'caches the first feed page and drops it as soon as a followed user posts',
    async () => {
      const reader = await user('cached_reader');
      const writer = await user('cached_writer');
      await call('PUT', `/users/${reader.id}/following/${writer.id}`);
      await call('POST', `/users/${writer.id}/posts`, { body: 'first' });
      await until(
        async () => (await call('GET', `/users/${reader.id}/feed`)).body.items.length === 1,
        'the first post',
      );
      const before = app.telemetry.tick().figures.cache_hit_ratio?.memory ?? 0;
      for (let i = 0; i < 5; i++) await call('GET', `/users/${reader.id}/feed`);
      expect(app.telemetry.tick().figures.cache_hit_ratio?.memory ?? 0).toBeGreaterThan(before);
      // The cache TTL is an hour in this test: only the change log can make the new post appear.
      await call('POST', `/users/${writer.id}/posts`, { body: 'second' });
      await until(
        async () => (await call('GET', `/users/${reader.id}/feed`)).body.items[0]?.body === 'second',
        'the feed projection and the feed-invalidation consumer',
      );
    },
  );

  it.skipIf(!engine.enabled)('derives user stats from the change log', async () => {
    const author = await user('stats_author');
    const fan = await user('stats_fan');
    const post = (await call('POST', `/users/${author.id}/posts`, { body: 'count me' })).body;
    await call('PUT', `/posts/${post.id}/likes/${fan.id}`);
    await call('PUT', `/users/${fan.id}/following/${author.id}`);
    await call('POST', `/posts/${post.id}/comments`, { userId: fan.id, body: 'hi' });
    await until(async () => {
      const s = (await call('GET', `/users/${author.id}/stats`)).body;
      return s.posts === 1 && s.likesReceived === 1 && s.followers === 1;
    }, 'the user-stats consumer');
    await call('DELETE', `/posts/${post.id}/likes/${fan.id}`);
    await until(
      async () => (await call('GET', `/users/${author.id}/stats`)).body.likesReceived === 0,
      'the unlike',
    );
    await until(async () => (await call('GET', `/users/${fan.id}/stats`)).body.comments === 1, 'the comment');
    expect((await call('GET', '/users/424242/stats')).status).toBe(404);
  });

  it.skipIf(engine.name !== 'sqlite')(
    'serves the feed from the database when the key-value tier fails',
    async () => {
      const dir = tempDir('strata-social-kvfail-');
      const broken = await createSocialApp({ dataDir: dir.path });
      try {
        const inject = (method: 'GET' | 'POST' | 'PUT', url: string, payload?: object) =>
          broken.server.inject({ method, url, ...(payload ? { payload } : {}) });
        const r = (
          await inject('POST', '/users', { handle: 'kvr', email: 'kvr@example.com', name: 'R' })
        ).json();
        const w = (
          await inject('POST', '/users', { handle: 'kvw', email: 'kvw@example.com', name: 'W' })
        ).json();
        await inject('PUT', `/users/${r.id}/following/${w.id}`);
        await inject('POST', `/users/${w.id}/posts`, { body: 'still here' });
        await broken.caching.cache.close();
        // The post is another user's data, read from a replica: eventually there, from the database.
        await until(
          async () => (await inject('GET', `/users/${r.id}/feed`)).json().items?.length === 1,
          'the post on the replica',
        );
        const feed = await inject('GET', `/users/${r.id}/feed`);
        expect(feed.statusCode).toBe(200);
        expect(feed.json().items.map((p: { body: string }) => p.body)).toEqual(['still here']);
      } finally {
        await broken.close().catch(() => undefined);
        dir.remove();
      }
    },
  );

  it.skipIf(!engine.enabled)('exports request figures at /metrics and a status at /api/status', async () => {
    await call('GET', '/users/1');
    const metrics = await app.server.inject({ method: 'GET', url: '/metrics' });
    expect(metrics.statusCode).toBe(200);
    expect(metrics.body).toMatch(
      /strata_http_requests_total\{route="\/users\/:id",method="GET",status="\d+"\} \d+/,
    );
    expect(metrics.body).toContain('strata_figure{figure="cache_hit_ratio",series="memory"}');
    expect(metrics.body).toContain('strata_figure{figure="write_behind_pending",series="pending"}');
    const status = await call('GET', '/api/status');
    expect(status.body).toMatchObject({ app: 'social', engines: { database: engine.name, cache: 'memory' } });
    expect(status.body.counts.users).toBeGreaterThan(0);
    expect(status.body.topology.nodes.map((n: { id: string }) => n.id)).toEqual([
      'api',
      'router',
      'db',
      'shard-s0',
      'shard-s1',
      'kv',
      'write-behind',
      'events',
      'projection-accounts',
      'projection-feed',
      'capture-s0',
      'capture-s1',
      'log',
      'consumer-user-stats',
      'consumer-feed-events',
      'consumer-cache-invalidation',
      // The embedded default: one SQLite replica per shard (PostgreSQL needs replica URLs).
      ...(engine.name === 'sqlite' ? ['replica-s0-r1', 'replica-s1-r1'] : []),
    ]);
    expect(status.body.changes.consumers.map((c: { name: string }) => c.name)).toEqual([
      'user-stats',
      'feed-events',
      'cache-invalidation',
    ]);
    expect(metrics.body).toContain('strata_figure{figure="consumer_lag_changes",series="user-stats"}');
  });
});
