import { afterAll, describe, expect, it } from 'vitest';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../../src/backends/postgres/postgres-test-database.js';
import { changeLogPosition } from '../../src/backends/sqlite/sqlite-replica.js';
import { createReplicaSet, type ReplicaSet } from '../../src/replication/replica-set.js';
import { env, services, tempDir } from '../../test/helpers.js';
import { recentNotes } from './replication-bounded.js';
import { ordersDatabase } from './replication-postgres.js';
import { embeddedNotes } from './replication-session.js';

const secret = 'replication-snippets-secret';
const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function embedded() {
  const dir = tempDir('strata-snippets-replication-');
  cleanups.push(() => dir.remove());
  const notes = await embeddedNotes(dir.path, secret);
  cleanups.push(() => notes.close());
  return notes;
}

/** Polls `condition` every 20 ms; fails after `ms` instead of waiting forever. */
async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if (await condition()) return;
    } catch {
      // Not there yet (a table the standby has not replayed).
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits until every replica has applied the write whose token `setCookie` carries. */
async function replicasAt(set: ReplicaSet, setCookie: string): Promise<void> {
  const target = set.parseToken(setCookie.split(';')[0]!.slice('rt='.length));
  await until(async () => {
    const stats = await set.refresh();
    return stats.replicas.every((r) => r.position !== undefined && BigInt(r.position) >= target);
  }, 'every replica to apply the write');
}

describe('replication snippets on embedded SQLite replicas', () => {
  it('replication-session: the cookie makes every read see its own write; without it, reads may be stale', async () => {
    const notes = await embedded();
    await notes.set.refresh();
    for (let i = 0; i < 50; i++) {
      const { id, setCookie } = await notes.post('ada', `note ${i}`);
      const cookie = setCookie.split(';')[0]!;
      const seen = await notes.list('ada', `theme=dark; ${cookie}`);
      expect(seen.notes.at(-1)).toEqual({ id, body: `note ${i}` });
    }
    const stats = notes.set.stats();
    expect(stats.session.reads).toBe(50);
    expect(stats.session.servedByReplicas + stats.session.fallbacks).toBe(50);
    expect(stats.session.servedByReplicas).toBeGreaterThan(25);

    // Replicas that stop applying: eventual reads miss the new note, session reads fall back and see it.
    for (const file of notes.files) await file.stop();
    const { id, setCookie } = await notes.post('ada', 'while stopped');
    const eventual = await notes.list('ada');
    expect(eventual.servedBy).not.toBe('primary');
    expect(eventual.notes.some((n) => n.id === id)).toBe(false);
    const session = await notes.list('ada', setCookie.split(';')[0]);
    expect(session.servedBy).toBe('primary');
    expect(session.notes.at(-1)).toEqual({ id, body: 'while stopped' });
    expect(notes.set.stats().fallbacks.session).toBeGreaterThanOrEqual(1);
  });

  it('replication-session: forged tokens and tokens of another cluster are refused with E_TOKEN', async () => {
    const notes = await embedded();
    const { setCookie } = await notes.post('bob', 'hello');
    const token = setCookie.split(';')[0]!.slice('rt='.length);
    const [cluster, hex, mac] = token.split('.') as [string, string, string];
    const forged = `${cluster}.${(BigInt(`0x${hex}`) + 1000n).toString(16)}.${mac}`;
    await expect(notes.list('bob', `rt=${forged}`)).rejects.toMatchObject({
      code: 'E_TOKEN',
      problem: 'forged',
    });
    await expect(notes.list('bob', 'rt=not-a-token')).rejects.toMatchObject({
      code: 'E_TOKEN',
      problem: 'malformed',
    });
    // Another replica set of the same cluster and secret (another process) accepts the token...
    const sameCluster = createReplicaSet({
      primary: notes.set.primary,
      replicas: [],
      position: changeLogPosition(),
      clusterId: 'notes',
      tokenSecret: secret,
    });
    cleanups.push(() => sameCluster.close());
    expect(sameCluster.parseToken(token)).toBe(notes.set.parseToken(token));
    // ...one of another cluster id refuses it, even with the same secret.
    const otherCluster = createReplicaSet({
      primary: notes.set.primary,
      replicas: [],
      position: changeLogPosition(),
      clusterId: 'billing',
      tokenSecret: secret,
    });
    cleanups.push(() => otherCluster.close());
    await expect(otherCluster.read('select 1', { consistency: { session: token } })).rejects.toMatchObject({
      code: 'E_TOKEN',
      problem: 'other-cluster',
    });
  });

  it('replication-bounded: replicas within the bound serve, the primary when none is', async () => {
    const notes = await embedded();
    const { id, setCookie } = await notes.post('cy', 'first');
    await replicasAt(notes.set, setCookie);
    const fresh = await recentNotes(notes.set, 'cy', '300ms');
    expect(fresh.servedBy).not.toBe('primary');
    expect(fresh.notes).toEqual([{ id, body: 'first' }]);

    for (const file of notes.files) await file.stop();
    const second = await notes.post('cy', 'second');
    await until(async () => {
      const stats = await notes.set.refresh();
      return stats.replicas.every((r) => (r.lagSeconds ?? 0) > 0.3);
    }, 'both replicas more than 300 ms behind');
    const bounded = await recentNotes(notes.set, 'cy', '300ms');
    expect(bounded.servedBy).toBe('primary');
    expect(bounded.notes[0]).toEqual({ id: second.id, body: 'second' });
    expect(notes.set.stats().fallbacks.maxLag).toBe(1);

    for (const file of notes.files) await file.start();
    await replicasAt(notes.set, second.setCookie);
    const caughtUp = await recentNotes(notes.set, 'cy', '300ms');
    expect(caughtUp.servedBy).not.toBe('primary');
    expect(caughtUp.notes[0]).toEqual({ id: second.id, body: 'second' });
  });
});

function withDatabase(serverUrl: string, database: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

describe.skipIf(!services.pgReplicas)('replication snippets on PostgreSQL streaming replicas', () => {
  it('replication-postgres: a queued job carrying the token reads the order from a replica that has it', async () => {
    const db: PostgresTestDatabase = await createPostgresTestDatabase({ prefix: 'strata_snippets_repl' });
    cleanups.push(() => db.drop());
    const orders = ordersDatabase(
      db.url,
      env.postgresReplicaUrls.map((url) => withDatabase(url, db.name)),
      secret,
    );
    cleanups.push(() => orders.close());
    await orders.set.primary.exec(
      'create table orders (id bigserial primary key, customer text not null, total int not null)',
    );
    await until(async () => {
      const stats = await orders.set.refresh();
      return stats.replicas.every((r) => r.state === 'healthy');
    }, 'both standbys healthy');
    expect(orders.changes.map((c) => [c.replica, c.to])).toEqual(
      expect.arrayContaining([
        ['replica_1', 'healthy'],
        ['replica_2', 'healthy'],
      ]),
    );

    const queue: Array<{ orderId: number; token: string }> = [];
    for (let i = 0; i < 20; i++) {
      const placed = await orders.placeOrder(`customer${i}`, 100 + i, queue);
      expect(placed.headers['x-consistency-token']).toBe(queue.at(-1)!.token);
    }
    for (const [i, job] of queue.entries()) {
      const { rows } = await orders.handleJob(job);
      expect(rows).toEqual([{ total: 100 + i }]);
    }
    const stats = orders.set.stats();
    expect(stats.clusterId).toBe('orders');
    expect(stats.primary.writes).toBe(20);
    expect(stats.session.reads).toBe(20);
    expect(stats.session.servedByReplicas + stats.session.fallbacks).toBe(20);
  });
});
