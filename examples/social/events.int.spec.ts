/**
 * The reference app on the event store: the account lifecycle decided on its stream (with the
 * inline `accounts` projection), the feed as a read model of the `feed` projection, their status
 * and metrics, and (on SQLite) a projection process killed with SIGKILL mid-batch that resumes
 * from its checkpoint and ends with the read model a rebuild from zero produces.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { type SqlDriver, StrataError, sql } from 'strata';
import { createSqlCheckpointStore } from 'strata/changes';
import { projectionConsumerName, rebuildProjection } from 'strata/cqrs';
import type { EventStore, RecordedEvent } from 'strata/events';
import { createSqliteDriver } from 'strata/sqlite';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { socialTestEngines } from '../../test/social-engines.js';
import { accountStream } from './accounts.js';
import { createSocialApp, type SocialApp, type SocialAppOptions } from './app.js';
import { openSocialEventStore, socialProjections } from './event-sourcing.js';
import { appendFeedEvents, feedProjection, feedStream } from './feed.js';

async function until(condition: () => Promise<boolean>, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The feed read model's rows, sorted, with numbers as numbers (PostgreSQL returns bigint as text). */
async function feedModel(driver: SqlDriver): Promise<Record<string, number[][]>> {
  const t = feedProjection.tables;
  const read = async (table: string, columns: string[]) => {
    const { rows } = await driver.query<Record<string, unknown>>(
      sql`select ${sql.join(columns.map((c) => sql.id(c)))} from ${sql.id(table)}`,
    );
    return rows
      .map((r) => columns.map((c) => Number(r[c])))
      .sort((a, b) => a.join(',').localeCompare(b.join(',')));
  };
  return {
    items: await read(t.items, ['reader_id', 'post_id', 'author_id', 'created_at']),
    followers: await read(t.followers, ['followee_id', 'follower_id']),
    posts: await read(t.posts, ['post_id', 'author_id', 'created_at']),
  };
}

const engines = socialTestEngines('social_events');

describe.each(engines)('social app on the event store ($name)', (engine) => {
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
  const user = async (n: string): Promise<number> => {
    const res = await call('POST', '/users', {
      handle: `u_${n}`,
      email: `${n}@example.com`,
      name: `User ${n}`,
    });
    expect(res.status).toBe(201);
    return res.body.id as number;
  };
  const feedIds = async (reader: number, query = '') =>
    (await call('GET', `/users/${reader}/feed${query}`)).body.items.map(
      (p: { id: number }) => p.id,
    ) as number[];

  it.skipIf(!engine.enabled)('records a registration and an email change on the account stream', async () => {
    const id = await user('reg');
    const stream = await app.events.store.readStream(accountStream(id));
    expect(stream.map((e) => e.type)).toEqual(['registered']);
    expect(stream[0]).toMatchObject({
      id: `account-${id}-registered`,
      data: { userId: id, handle: 'u_reg', email: 'reg@example.com' },
    });
    // A name change is the profile's business, not the account's: nothing appended.
    expect((await call('PATCH', `/users/${id}`, { name: 'Renamed' })).status).toBe(200);
    expect((await call('PATCH', `/users/${id}`, { email: 'reg2@example.com' })).status).toBe(200);
    const history = await call('GET', `/users/${id}/history`);
    expect(history.status).toBe(200);
    expect(history.body).toMatchObject({ userId: id, status: 'active', version: 2 });
    expect(history.body.events.map((e: { type: string }) => e.type)).toEqual(['registered', 'email_changed']);
    expect(history.body.events[1].data).toEqual({
      userId: id,
      from: 'reg@example.com',
      to: 'reg2@example.com',
    });
    // The inline projection committed with the events.
    const { rows } = await app.db.query<{ email: string; status: string }>(
      sql`select email, status from accounts where user_id = ${id}`,
    );
    expect(rows).toEqual([{ email: 'reg2@example.com', status: 'active' }]);
    // Syncing again changes nothing: registration has an id derived from the user id.
    await app.events.accounts.sync({ id, handle: 'u_reg', email: 'reg2@example.com' });
    expect((await app.events.store.streamInfo(accountStream(id)))?.version).toBe(2);
    expect((await call('GET', '/users/424242/history')).status).toBe(404);
  });

  it.skipIf(!engine.enabled)(
    'adopts a user the account stream does not know yet on its next command',
    async () => {
      // As if the user predated the event store: created without the account hooks.
      const hooks = app.repo.accounts;
      app.repo.accounts = undefined;
      let id: number;
      try {
        id = await user('legacy');
      } finally {
        app.repo.accounts = hooks;
      }
      expect(await app.events.store.streamInfo(accountStream(id))).toBeUndefined();
      expect((await call('GET', `/users/${id}/history`)).body.events).toEqual([]);
      expect((await call('POST', `/users/${id}/suspend`)).status).toBe(200);
      const history = (await call('GET', `/users/${id}/history`)).body;
      expect(history.status).toBe('suspended');
      expect(history.events.map((e: { type: string }) => e.type)).toEqual(['registered', 'suspended']);
    },
  );

  it.skipIf(!engine.enabled)(
    'removes the new user again when the registration cannot be appended',
    async () => {
      const hooks = app.repo.accounts!;
      app.repo.accounts = {
        sync: async () => {
          throw new StrataError('E_CONNECTION', 'the event store is unreachable');
        },
        assertActive: (userId) => hooks.assertActive(userId),
      };
      const payload = { handle: 'u_unlucky', email: 'unlucky@example.com', name: 'Unlucky' };
      let failed: { status: number; body: { code: string } };
      try {
        failed = await call('POST', '/users', payload);
      } finally {
        app.repo.accounts = hooks;
      }
      expect(failed).toMatchObject({ status: 503, body: { code: 'E_CONNECTION' } });
      const { rows } = await app.stores.router.scatter<{ id: unknown }>(
        sql`select id from users where handle = ${payload.handle}`,
      );
      expect(rows).toEqual([]);
      // The row and the handle and email claims are gone: the same request succeeds now.
      const retried = await call('POST', '/users', payload);
      expect(retried.status).toBe(201);
      expect((await call('GET', `/users/${retried.body.id}/history`)).body.events).toHaveLength(1);
    },
  );

  it.skipIf(!engine.enabled)(
    'suspends and reinstates: a suspended user cannot post or comment, and the decider refuses repeats',
    async () => {
      const id = await user('susp');
      const other = await user('susp_other');
      const post = (await call('POST', `/users/${other}/posts`, { body: 'hello' })).body;
      const suspended = await call('POST', `/users/${id}/suspend`, { reason: 'spam' });
      expect(suspended).toMatchObject({ status: 200, body: { userId: id, status: 'suspended', version: 2 } });
      const refused = await call('POST', `/users/${id}/posts`, { body: 'not allowed' });
      expect(refused).toMatchObject({
        status: 403,
        body: { code: 'E_ACCOUNT_SUSPENDED', details: { userId: id } },
      });
      const comment = await call('POST', `/posts/${post.id}/comments`, { userId: id, body: 'no' });
      expect(comment).toMatchObject({ status: 403, body: { code: 'E_ACCOUNT_SUSPENDED' } });
      const twice = await call('POST', `/users/${id}/suspend`);
      expect(twice).toMatchObject({
        status: 409,
        body: { code: 'E_ACCOUNT_STATE', details: { userId: id, status: 'suspended', command: 'suspend' } },
      });
      expect((await call('GET', `/users/${id}/history`)).body.events.at(-1)).toMatchObject({
        type: 'suspended',
        data: { userId: id, reason: 'spam' },
      });
      expect((await call('POST', `/users/${id}/reinstate`)).body).toEqual({
        userId: id,
        status: 'active',
        version: 3,
      });
      expect((await call('POST', `/users/${id}/posts`, { body: 'back again' })).status).toBe(201);
      expect((await call('POST', `/posts/${post.id}/comments`, { userId: id, body: 'yes' })).status).toBe(
        201,
      );
      expect(await call('POST', `/users/${id}/reinstate`)).toMatchObject({
        status: 409,
        body: { code: 'E_ACCOUNT_STATE', details: { status: 'active', command: 'reinstate' } },
      });
      expect((await call('POST', '/users/424242/suspend')).status).toBe(404);
      expect((await call('POST', `/users/${id}/suspend`, { reason: 'x'.repeat(201) })).status).toBe(400);
      expect((await call('POST', `/users/${id}/suspend`, { why: 'unknown field' })).status).toBe(400);
    },
  );

  it.skipIf(!engine.enabled)('validates events against their registered schemas', async () => {
    await expect(
      app.events.store.append(feedStream(1), [{ type: 'post_published', data: { postId: 'one' } }]),
    ).rejects.toMatchObject({ code: 'E_VALIDATION' });
    expect(socialProjections().map((p) => p.name)).toEqual(['accounts', 'feed']);
  });

  it.skipIf(!engine.enabled)(
    'builds the feed with the projection: posts of followed users appear, an unfollow removes them',
    async () => {
      const reader = await user('f_reader');
      const a = await user('f_a');
      const b = await user('f_b');
      // Posted before the follow: the follow backfills it.
      const early = (await call('POST', `/users/${a}/posts`, { body: 'before the follow' })).body.id;
      await call('PUT', `/users/${reader}/following/${a}`);
      await call('PUT', `/users/${reader}/following/${b}`);
      const p1 = (await call('POST', `/users/${b}/posts`, { body: 'b1' })).body.id;
      const p2 = (await call('POST', `/users/${a}/posts`, { body: 'a1' })).body.id;
      await until(async () => (await feedIds(reader, '?limit=10')).length === 3, 'the feed projection');
      expect(await feedIds(reader, '?limit=10')).toEqual([p2, p1, early]);
      // Pages by cursor.
      const first = (await call('GET', `/users/${reader}/feed?limit=2`)).body;
      expect(first.items.map((p: { id: number }) => p.id)).toEqual([p2, p1]);
      expect(first.nextCursor).toBe(p1);
      const second = (await call('GET', `/users/${reader}/feed?limit=2&cursor=${p1}`)).body;
      expect(second).toMatchObject({ items: [{ id: early, body: 'before the follow' }], nextCursor: null });
      // The stream of the author has the bridged event, its id derived from the change's position.
      const events = await app.events.store.readStream(feedStream(b));
      expect(events.map((e) => e.type)).toEqual(['post_published']);
      expect(events[0]!.id).toMatch(/^change:/);
      // The first page at the default size is cached now (for an hour in this test)...
      expect(await feedIds(reader)).toEqual([p2, p1, early]);
      await call('DELETE', `/users/${reader}/following/${a}`);
      await until(async () => (await feedIds(reader, '?limit=10')).length === 1, 'the unfollow');
      expect(await feedIds(reader, '?limit=10')).toEqual([p1]);
      // ... and dropped once the projection has applied the unfollow.
      await until(async () => (await feedIds(reader)).length === 1, 'the cached first page to be dropped');
      expect(app.events.invalidation.stats().processed).toBeGreaterThan(0);
    },
  );

  it.skipIf(!engine.enabled)('appends a redelivered change only once', async () => {
    const writer = await user('redeliver');
    await call('POST', `/users/${writer}/posts`, { body: 'once' });
    await until(
      async () => (await app.events.store.readStream(feedStream(writer))).length === 1,
      'the bridge',
    );
    const entries = await app.pipeline!.log.read(0, 10_000, { tables: ['posts', 'follows'] });
    const head = await app.events.store.head();
    // The whole log again, as a consumer restarted from an old checkpoint would see it.
    expect(await appendFeedEvents(app.events.store, entries)).toBeGreaterThan(0);
    expect(await app.events.store.head()).toBe(head);
    expect(await app.events.store.readStream(feedStream(writer))).toHaveLength(1);
  });

  it.skipIf(!engine.enabled)(
    'reports the event store and projections in /api/status and /metrics',
    async () => {
      await user('status');
      let status: { events: { head: number; projections: Array<Record<string, unknown>> } } | undefined;
      await until(async () => {
        status = (await call('GET', '/api/status')).body;
        return status!.events.projections.every((p) => p.lag === 0);
      }, 'the projections to catch up');
      const events = status!.events;
      expect(events).toMatchObject({ store: 'strata_events', engine: engine.name });
      expect(events.head).toBeGreaterThan(0);
      expect(events.projections).toEqual([
        expect.objectContaining({ name: 'accounts', mode: 'inline', state: 'inline', lag: 0 }),
        expect.objectContaining({ name: 'feed', mode: 'async', state: 'running', position: events.head }),
      ]);
      expect((events.projections[0]!.position as number) > 0).toBe(true);
      await until(async () => {
        const metrics = (await app.server.inject({ method: 'GET', url: '/metrics' })).body;
        return (
          /^strata_event_store_head [1-9]\d*$/m.test(metrics) &&
          /^strata_projection_lag\{projection="feed"\} 0$/m.test(metrics)
        );
      }, 'the event store gauges');
      const metrics = (await app.server.inject({ method: 'GET', url: '/metrics' })).body;
      expect(metrics).toContain('strata_projection_lag{projection="accounts"} 0');
      expect(metrics).toContain('strata_figure{figure="projection_lag_events",series="feed"}');
      expect(app.telemetry.topology().nodes.map((n) => n.id)).toEqual(
        expect.arrayContaining(['events', 'projection-accounts', 'projection-feed', 'consumer-feed-events']),
      );
    },
  );

  it.skipIf(!engine.enabled)('rebuilds the feed from zero into the same read model', async () => {
    const reader = await user('rb_reader');
    const writers = [await user('rb_w1'), await user('rb_w2')];
    for (const w of writers) await call('PUT', `/users/${reader}/following/${w}`);
    for (let i = 0; i < 6; i++) await call('POST', `/users/${writers[i % 2]}/posts`, { body: `rb ${i}` });
    await call('DELETE', `/users/${reader}/following/${writers[0]}`);
    await until(async () => (await feedIds(reader, '?limit=50')).length === 3, 'the projection');
    await app.events.feed.drained(await app.events.store.head());
    const before = await feedModel(app.db);
    const result = await rebuildProjection({
      projection: feedProjection,
      store: app.events.store,
      driver: app.db,
      checkpoints: createSqlCheckpointStore(app.db),
    });
    expect(result.applied).toBeGreaterThan(0);
    expect(await feedModel(app.db)).toEqual(before);
    expect(await feedIds(reader, '?limit=50')).toHaveLength(3);
  });
});

// ---------------------------------------------------------------------------------------------
// kill -9 of the projection process, SQLite

const root = join(import.meta.dirname, '..', '..');
const children = new Set<ChildProcess>();

interface Worker {
  child: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

async function startWorker(file: string): Promise<Worker> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(root, 'test/fixtures/social-feed-projection.ts'), file],
    { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.add(child);
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      lines.push(line);
      if (line === 'ready') resolve();
    });
    void exited.then((code) =>
      reject(new Error(`the projection worker exited with ${code} before it was ready`)),
    );
  });
  return { child, lines, exited };
}

/** The feed's read model computed from the events by hand (every author has fewer posts than the backfill limit). */
function expectedModel(events: readonly RecordedEvent[]): Record<string, number[][]> {
  const followers = new Set<string>();
  const posts = new Map<number, { authorId: number; createdAt: number }>();
  const items = new Map<string, number[]>();
  for (const e of events) {
    const d = e.data as Record<string, number>;
    if (e.type === 'post_published') {
      posts.set(d.postId!, { authorId: d.authorId!, createdAt: d.createdAt! });
      for (const f of followers) {
        const [followee, follower] = f.split(':').map(Number);
        if (followee === d.authorId)
          items.set(`${follower}:${d.postId}`, [follower!, d.postId!, d.authorId!, d.createdAt!]);
      }
    } else if (e.type === 'followed') {
      followers.add(`${d.followeeId}:${d.followerId}`);
      for (const [postId, p] of posts) {
        if (p.authorId === d.followeeId)
          items.set(`${d.followerId}:${postId}`, [d.followerId!, postId, p.authorId, p.createdAt]);
      }
    } else if (e.type === 'unfollowed') {
      followers.delete(`${d.followeeId}:${d.followerId}`);
      for (const [key, item] of items)
        if (item[0] === d.followerId && item[2] === d.followeeId) items.delete(key);
    }
  }
  const sorted = (rows: number[][]) => rows.sort((a, b) => a.join(',').localeCompare(b.join(',')));
  return {
    items: sorted([...items.values()]),
    followers: sorted([...followers].map((f) => f.split(':').map(Number))),
    posts: sorted([...posts].map(([postId, p]) => [postId, p.authorId, p.createdAt])),
  };
}

describe('the feed projection killed with SIGKILL mid-batch (sqlite)', () => {
  const dir = tempDir('strata-social-feed-kill-');
  const file = join(dir.path, 'social.db');
  let meta: SqlDriver;
  let store: EventStore;

  afterEach(() => {
    for (const child of children) child.kill('SIGKILL');
    children.clear();
  });
  afterAll(async () => {
    await store?.close();
    await meta?.close();
    dir.remove();
  });

  it('resumes from its checkpoint and ends equal to a rebuild from zero', { timeout: 120_000 }, async () => {
    meta = createSqliteDriver({ filename: file, name: 'social' });
    store = await openSocialEventStore(meta);
    // 30 users following and unfollowing each other while posting: about 900 events.
    let postId = 1_000;
    let n = 0;
    const follows = new Set<string>();
    for (let round = 0; round < 30; round++) {
      for (let u = 1; u <= 30; u++) {
        const other = ((u * 7 + round * 11) % 30) + 1;
        if (other !== u && n % 3 !== 0) {
          const key = `${u}:${other}`;
          const type = follows.has(key) ? 'unfollowed' : 'followed';
          if (type === 'followed') follows.add(key);
          else follows.delete(key);
          await store.append(feedStream(u), [{ type, data: { followerId: u, followeeId: other } }]);
        } else {
          postId++;
          await store.append(feedStream(u), [
            { type: 'post_published', data: { postId, authorId: u, createdAt: 1_700_000_000_000 + postId } },
          ]);
        }
        n++;
      }
    }
    const head = await store.head();
    const checkpoints = createSqlCheckpointStore(meta);
    const checkpoint = async () =>
      (await checkpoints.load(projectionConsumerName(feedProjection)))?.offset ?? 0;

    let worker = await startWorker(file);
    for (let kill = 1; kill <= 3; kill++) {
      // Each worker counts from its own start: a kill after about 150 more events each time.
      const target = 150;
      await until(
        async () => worker.lines.some((l) => l.startsWith('applied ') && Number(l.slice(8)) >= target),
        `the worker to apply ${target} events`,
        60_000,
      );
      worker.child.kill('SIGKILL');
      await worker.exited;
      children.delete(worker.child);
      // Killed before the end: the rest is applied after the restart.
      expect(await checkpoint()).toBeLessThan(head);
      worker = await startWorker(file);
    }
    await until(async () => (await checkpoint()) >= head, 'the restarted worker to catch up', 90_000);
    worker.child.kill('SIGTERM');
    await worker.exited;
    children.delete(worker.child);

    const resumed = await feedModel(meta);
    expect(resumed).toEqual(expectedModel(await store.readAll(0, 10_000)));
    expect(resumed.items?.length).toBeGreaterThan(50);
    // A rebuild from zero into a fresh database gives the same rows.
    const fresh = createSqliteDriver({ filename: join(dir.path, 'rebuilt.db') });
    try {
      await rebuildProjection({ projection: feedProjection, store, driver: fresh, batchSize: 100 });
      expect(await feedModel(fresh)).toEqual(resumed);
    } finally {
      await fresh.close();
    }
  });
});
