/**
 * Read replicas in the reference app: a replica set per shard (embedded SQLite replicas fed from
 * the change log by default, PostgreSQL standbys with replica URLs), read-your-writes for a
 * user's own data through the `strata_token` cookie, eventual reads of other users' data.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, services, tempDir } from '../../test/helpers.js';
import { socialTestEngines } from '../../test/social-engines.js';
import { createSocialApp, type SocialApp, type SocialAppOptions } from './app.js';
import type { ReplicasStatus } from './replicas.js';

async function until(condition: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

type Method = 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';

/** A client with its own cookie jar, as a browser keeps one. */
function client(app: SocialApp) {
  let cookie: string | undefined;
  return {
    get cookie() {
      return cookie;
    },
    set cookie(value: string | undefined) {
      cookie = value;
    },
    async call(method: Method, url: string, payload?: object) {
      const res = await app.server.inject({
        method,
        url,
        ...(payload === undefined ? {} : { payload }),
        ...(cookie === undefined ? {} : { headers: { cookie } }),
      });
      const set = res.headers['set-cookie'];
      const setCookies = Array.isArray(set) ? set : set === undefined ? [] : [set];
      const last = setCookies.at(-1);
      if (last !== undefined) {
        const pair = last.split(';')[0]!;
        cookie = /Max-Age=0/.test(last) ? undefined : pair;
      }
      return {
        status: res.statusCode,
        body: res.body.length > 0 ? res.json() : undefined,
        setCookies,
      };
    },
  };
}

const engines = socialTestEngines('social_replicas', {
  options: { replicaUrls: env.postgresReplicaUrls },
  enabled: services.postgres && services.pgReplicas,
}).map((engine) => ({
  ...engine,
  label: engine.name === 'sqlite' ? 'embedded SQLite replicas' : 'PostgreSQL standbys',
}));

describe.each(engines)('social app read replicas: $label', (engine) => {
  let app: SocialApp;
  let cleanup: () => Promise<void>;
  let options: SocialAppOptions;

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

  const status = async () =>
    (await app.server.inject({ method: 'GET', url: '/api/status' })).json().replicas as ReplicasStatus;

  const newUser = async (c: ReturnType<typeof client>, n: string) => {
    const res = await c.call('POST', '/users', {
      handle: `r_${n}`,
      email: `${n}@example.com`,
      name: `R ${n}`,
    });
    expect(res.status).toBe(201);
    return res.body.id as number;
  };

  it.skipIf(!engine.enabled)(
    'runs a replica per shard and sets the token cookie on every write',
    async () => {
      const s = await status();
      expect(s.mode).toBe(engine.name === 'sqlite' ? 'embedded' : 'postgres');
      expect(s.replicas.map((r) => r.id).sort()).toEqual(
        engine.name === 'sqlite' ? ['s0/r1', 's1/r1'] : ['s0/r1', 's0/r2', 's1/r1', 's1/r2'],
      );
      const alice = client(app);
      const id = await newUser(alice, 'cookie');
      expect(alice.cookie).toMatch(
        new RegExp(`^strata_token=${id}\\.social-s[01]\\.[0-9a-f]+\\.[A-Za-z0-9_-]{22}$`),
      );
      const post = await alice.call('POST', `/users/${id}/posts`, { body: 'hello' });
      expect(post.setCookies[0]).toMatch(/^strata_token=.*; Path=\/; Max-Age=\d+; HttpOnly; SameSite=Lax$/);
      expect((await alice.call('PATCH', `/users/${id}`, { name: 'Alice' })).setCookies).toHaveLength(1);
      // Reads do not set it.
      expect((await alice.call('GET', `/users/${id}`)).setCookies).toEqual([]);
    },
  );

  it.skipIf(!engine.enabled)(
    "always shows a user their own writes while other users' reads are served by replicas",
    async () => {
      const me = client(app);
      const others = client(app);
      const myId = await newUser(me, 'ryw_me');
      const friends = [await newUser(others, 'ryw_f1'), await newUser(others, 'ryw_f2')];
      for (const f of friends) await others.call('POST', `/users/${f}/posts`, { body: `from ${f}` });
      for (let i = 0; i < 40; i++) {
        const body = `mine ${i}`;
        const created = await me.call('POST', `/users/${myId}/posts`, { body });
        expect(created.status).toBe(201);
        const posts = await me.call('GET', `/users/${myId}/posts?limit=5`);
        expect(posts.status).toBe(200);
        expect(posts.body.items[0], `iteration ${i}`).toMatchObject({ id: created.body.id, body });
        const name = `Me ${i}`;
        await me.call('PATCH', `/users/${myId}`, { name });
        expect((await me.call('GET', `/users/${myId}`)).body.name, `iteration ${i}`).toBe(name);
        const target = friends[i % 2]!;
        const follow = i % 4 < 2 ? 'PUT' : 'DELETE';
        await me.call(follow, `/users/${myId}/following/${target}`);
        // My feed is a projection of follows and posts: read live, past the cache, it drops whom
        // I unfollowed as soon as the projection has applied the unfollow.
        const feedAuthors = async () => {
          const feed = await me.call('GET', `/users/${myId}/feed`);
          expect(feed.status).toBe(200);
          return new Set(feed.body.items.map((p: { userId: number }) => p.userId));
        };
        if (follow === 'DELETE') {
          await until(async () => !(await feedAuthors()).has(target), `the unfollow, iteration ${i}`);
        }
        // Other users' profiles and posts: eventual reads, from the replicas.
        for (const f of friends) {
          expect((await me.call('GET', `/users/${f}/posts`)).status).toBe(200);
          expect((await others.call('GET', `/users/${f}`)).status).toBe(200);
        }
      }
      const s = await status();
      const served = s.replicas.reduce((n, r) => n + r.reads, 0);
      expect(served).toBeGreaterThan(0);
      expect(s.replicas.some((r) => r.share > 0)).toBe(true);
      const session = s.shards.reduce((n, sh) => n + sh.session.reads, 0);
      expect(session).toBeGreaterThanOrEqual(40 * 3);
      // Replicas that caught up in time served read-your-writes reads too, not only the primary.
      expect(s.shards.reduce((n, sh) => n + sh.session.servedByReplicas, 0)).toBeGreaterThan(0);
      for (const r of s.replicas) {
        expect(r).toMatchObject({ unit: engine.name === 'sqlite' ? 'changes' : 'bytes' });
        expect(r.lag).toBeGreaterThanOrEqual(0);
        expect(r.lagSeconds).toBeGreaterThanOrEqual(0);
        expect(r.share).toBeGreaterThanOrEqual(0);
      }
    },
  );

  it.skipIf(!engine.enabled)(
    'answers 200, never 500, for malformed, forged and foreign token cookies',
    async () => {
      const owner = client(app);
      const id = await newUser(owner, 'badcookie');
      await owner.call('POST', `/users/${id}/posts`, { body: 'visible' });
      const valid = owner.cookie!;
      const token = valid.slice(valid.indexOf('.') + 1);
      const [cluster, hex] = token.split('.');
      const otherCluster = cluster === 'social-s0' ? 'social-s1' : 'social-s0';
      const before = (await status()).badTokens;
      const cookies = [
        'strata_token=garbage',
        'strata_token=',
        `strata_token=${id}.${cluster}.${hex}.AAAAAAAAAAAAAAAAAAAAAA`,
        `strata_token=${id}.${otherCluster}.${hex}.${token.split('.')[2]}`,
        `strata_token=${id}.${'x'.repeat(400)}`,
        `strata_token="${id}.%00"; other=1`,
        `strata_token=${id}.${cluster}.ffffffffffffffff.${token.split('.')[2]}`,
      ];
      let refused = 0;
      for (const cookie of cookies) {
        for (const url of [`/users/${id}`, `/users/${id}/posts`, `/users/${id}/feed`]) {
          const res = await app.server.inject({ method: 'GET', url, headers: { cookie } });
          expect(res.statusCode, `${cookie} ${url}`).toBe(200);
          const set = res.headers['set-cookie'];
          if (set !== undefined) {
            expect(String(set)).toMatch(/^strata_token=; .*Max-Age=0/);
            refused++;
            // A refused cookie's read goes to the primary: the owner's post is there.
            if (url.endsWith('/posts')) expect(res.json().items[0]?.body, cookie).toBe('visible');
          }
        }
      }
      // Every cookie but the empty one is refused on every route, and counted.
      expect(refused).toBe((cookies.length - 1) * 3);
      expect((await status()).badTokens - before).toBe(refused);
      // A valid cookie of another user, for an unknown user, is a 404 like any other.
      const unknown = await app.server.inject({
        method: 'GET',
        url: '/users/424242',
        headers: { cookie: valid },
      });
      expect(unknown.statusCode).toBe(404);
      const metrics = (await app.server.inject({ method: 'GET', url: '/metrics' })).body;
      expect(metrics).toMatch(/strata_replica_bad_tokens \d+/);
    },
  );

  it.skipIf(!engine.enabled)(
    'reports lag, read shares and session fallbacks in /api/status and /metrics',
    async () => {
      await until(
        async () => (await status()).replicas.every((r) => r.lagSeconds !== null),
        'a lag measurement',
      );
      const s = await status();
      for (const r of s.replicas) {
        expect(Object.keys(r)).toEqual(
          expect.arrayContaining(['lag', 'lagSeconds', 'share', 'reads', 'state', 'healthy', 'unit']),
        );
      }
      for (const sh of s.shards) expect(sh.session).toHaveProperty('fallbacks');
      const metrics = (await app.server.inject({ method: 'GET', url: '/metrics' })).body;
      expect(metrics).toMatch(/strata_replica_lag_seconds\{shard="s0",replica="r1"\} [\d.e-]+/);
      expect(metrics).toMatch(/strata_replica_lag\{shard="s0",replica="r1",unit="(changes|bytes)"\} \d+/);
      expect(metrics).toMatch(/strata_replica_read_share\{shard="s1",replica="r1"\} [\d.e-]+/);
      expect(metrics).toMatch(/strata_replica_session_fallbacks\{shard="s0"\} \d+/);
      expect(metrics).toMatch(/strata_replica_reads\{shard="s0",node="primary"\} \d+/);
      const lagFigure = engine.name === 'sqlite' ? 'replica_lag_changes' : 'replica_lag_bytes';
      expect(metrics).toContain(`strata_figure{figure="${lagFigure}",series="s0/r1"}`);
      expect(metrics).toContain('strata_figure{figure="replica_lag_seconds",series="s1/r1"}');
      expect(metrics).toContain('strata_figure{figure="replica_session_fallbacks",series="bad tokens"}');
      const tick = app.telemetry.tick();
      expect(Object.keys(tick.figures.replica_read_share ?? {}).sort()).toEqual(
        s.replicas.map((r) => r.id).sort(),
      );
    },
  );

  it.skipIf(!(engine.name === 'sqlite'))(
    'falls back to the primary for a session read while the replica is stopped, and counts it',
    async () => {
      const me = client(app);
      const id = await newUser(me, 'stopped');
      const shard = await app.stores.router.shardOf(id);
      const replica = app.pipeline!.replicas!.byShard.get(shard)![0]!;
      const fallbacks = async () => (await status()).shards.find((s) => s.shard === shard)!.session.fallbacks;
      const before = await fallbacks();
      await replica.stop();
      try {
        for (let i = 0; i < 3; i++) {
          const created = await me.call('POST', `/users/${id}/posts`, { body: `while stopped ${i}` });
          const posts = await me.call('GET', `/users/${id}/posts`);
          expect(posts.body.items[0]?.id).toBe(created.body.id);
        }
        expect(await fallbacks()).toBeGreaterThanOrEqual(before + 3);
        // Someone else's eventual read of the replica misses the newest posts, but never says
        // the user is missing: only the primary may say so.
        const stranger = await app.server.inject({ method: 'GET', url: `/users/${id}/posts` });
        expect(stranger.statusCode).toBe(200);
      } finally {
        await replica.start();
      }
      await replica.caughtUp();
      const created = await me.call('POST', `/users/${id}/posts`, { body: 'after restart' });
      await until(
        async () =>
          (await app.server.inject({ method: 'GET', url: `/users/${id}/posts` })).json().items[0]?.id ===
          created.body.id,
        'the replica to catch up',
      );
    },
  );

  it.skipIf(!(engine.name === 'sqlite'))(
    'keeps the replica files across a restart and refuses the previous process tokens',
    async () => {
      const me = client(app);
      const id = await newUser(me, 'restart');
      await me.call('POST', `/users/${id}/posts`, { body: 'before restart' });
      const oldCookie = me.cookie!;
      await app.close();
      app = await createSocialApp(options);
      const res = await app.server.inject({
        method: 'GET',
        url: `/users/${id}/posts`,
        headers: { cookie: oldCookie },
      });
      expect(res.statusCode).toBe(200);
      expect(res.json().items[0]?.body).toBe('before restart');
      expect((await status()).badTokens).toBe(1);
      // The reopened replicas hold the rows written before the restart.
      await until(
        async () =>
          (await app.server.inject({ method: 'GET', url: `/users/${id}/posts` })).json().items[0]?.body ===
          'before restart',
        'the replica',
      );
      const s = await status();
      expect(s.replicas.reduce((n, r) => n + r.reads, 0)).toBeGreaterThan(0);
    },
  );
});

describe('social app without read replicas', () => {
  it('reads from the primaries, sets no cookie and shows no replica', async () => {
    const dir = tempDir('strata-social-noreplicas-');
    const app = await createSocialApp({ dataDir: dir.path, replicas: 0 });
    try {
      const created = await app.server.inject({
        method: 'POST',
        url: '/users',
        payload: { handle: 'plain', email: 'plain@example.com', name: 'P' },
      });
      expect(created.statusCode).toBe(201);
      expect(created.headers['set-cookie']).toBeUndefined();
      const res = await app.server.inject({
        method: 'GET',
        url: `/users/${created.json().id}`,
        headers: { cookie: 'strata_token=garbage' },
      });
      expect(res.statusCode).toBe(200);
      const status = (await app.server.inject({ method: 'GET', url: '/api/status' })).json();
      expect(status.replicas).toMatchObject({ mode: 'off', replicas: [], shards: [], badTokens: 0 });
      expect(status.topology.nodes.some((n: { kind: string }) => n.kind === 'replica')).toBe(false);
    } finally {
      await app.close();
      dir.remove();
    }
  });

  it('refuses a replica count out of range', async () => {
    const dir = tempDir('strata-social-badreplicas-');
    try {
      for (const replicas of [-1, 1.5, 99]) {
        await expect(createSocialApp({ dataDir: dir.path, replicas })).rejects.toMatchObject({
          code: 'E_CONFIG',
          details: { option: 'replicas' },
        });
      }
      await expect(
        createSocialApp({ dataDir: dir.path, replicaUrls: ['mysql://nope'] }),
      ).rejects.toMatchObject({ code: 'E_CONFIG', details: { option: 'replicaUrls' } });
    } finally {
      dir.remove();
    }
  });
});
