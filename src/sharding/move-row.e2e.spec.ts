/**
 * `moveRow` across PostgreSQL shards under kill -9: a process moving a row is killed after the
 * copy reached the new shard and before the old row was deleted (the test holds a SHARE lock on
 * the old shard's table so that the delete waits). The journal on the old shard says what was in
 * flight; `recoverMoves()` in a new router finishes the move, and a second run finds nothing.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { services } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../backends/postgres/postgres-test-database.js';
import { isStrataError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { createShardRouter } from './router.js';
import { hashStrategy, placeSync } from './strategies.js';

const root = new URL('../../', import.meta.url).pathname;
const STRATEGY = hashStrategy({ shards: ['s0', 's1'] });
const databases: PostgresTestDatabase[] = [];
const drivers: Record<string, SqlDriver> = {};
const children = new Set<ChildProcess>();

beforeAll(async () => {
  if (!services.postgres) return;
  for (const id of ['s0', 's1']) {
    const db = await createPostgresTestDatabase({ prefix: `strata_move_${id}` });
    databases.push(db);
    drivers[id] = createPostgresDriver({ url: db.url, onBackgroundError: () => undefined });
    await drivers[id]!.exec(
      'create table posts (user_id integer not null, id integer not null, body text not null, created_at timestamptz not null, primary key (user_id, id))',
    );
  }
});

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  for (const d of Object.values(drivers)) await d.close();
  for (const db of databases) await db.drop();
});

const router = () =>
  createShardRouter({
    shards: drivers,
    strategy: STRATEGY,
    tables: { posts: { key: 'user_id', primaryKey: ['user_id', 'id'] } },
  });

/** Two users on different shards. */
function usersApart(): [number, number] {
  const a = 1;
  let b = 2;
  while (placeSync(STRATEGY, b) === placeSync(STRATEGY, a)) b++;
  return [a, b];
}

async function postsOn(shard: string, id: number) {
  const result = await drivers[shard]!.query<{ user_id: number; body: string; created_at: Date }>(
    sql`select user_id, body, created_at from posts where id = ${id}`,
  );
  return result.rows;
}

describe.skipIf(!services.postgres)('moveRow under kill -9 on PostgreSQL shards', () => {
  it('finishes a move killed between the copy and the delete with recoverMoves', async () => {
    const [from, to] = usersApart();
    const created = new Date('2026-03-04T05:06:07.089Z');
    const oldShard = placeSync(STRATEGY, from);
    const newShard = placeSync(STRATEGY, to);
    await drivers[oldShard]!.query(
      sql`insert into posts (user_id, id, body, created_at) values (${from}, ${7}, ${'hello'}, ${created})`,
    );

    // Hold the old shard's table so that the worker's delete waits, after its copy landed.
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let locked = () => {};
    const isLocked = new Promise<void>((resolve) => {
      locked = resolve;
    });
    const blocker = drivers[oldShard]!.transaction(async (tx) => {
      await tx.query('lock table posts in share mode');
      locked();
      await held;
    });
    await isLocked;
    const urls = databases.map((db) => db.url);
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        join(root, 'test/fixtures/move-row-worker.ts'),
        urls[0]!,
        urls[1]!,
        '7',
        String(to),
      ],
      { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.add(child);
    const lines: string[] = [];
    createInterface({ input: child.stdout! }).on('line', (line) => lines.push(line));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      // The copy is on the new shard: the worker now waits on the delete.
      for (let i = 0; i < 600 && (await postsOn(newShard, 7)).length === 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(await postsOn(newShard, 7)).toHaveLength(1);
      child.kill('SIGKILL');
      await exited;
    } finally {
      release();
      await blocker;
    }
    expect(lines).toEqual(['moving']);
    // The crash left the row on both shards and the intent on the old one.
    expect(await postsOn(oldShard, 7)).toHaveLength(1);
    const journal = await drivers[oldShard]!.query('select tbl from strata_row_moves');
    expect(journal.rows).toEqual([{ tbl: 'posts' }]);

    // A recovery leaves moves younger than a minute to the process making them ...
    expect(await router().recoverMoves()).toEqual({ completed: 0, dropped: 0 });
    expect(await postsOn(oldShard, 7)).toHaveLength(1);
    // ... and finishes this one, whose process is gone, when told to take every entry.
    const recovered = await router().recoverMoves({ olderThan: 0 });
    expect(recovered).toEqual({ completed: 1, dropped: 0 });
    expect(await postsOn(oldShard, 7)).toEqual([]);
    expect(await postsOn(newShard, 7)).toEqual([{ user_id: to, body: 'moved', created_at: created }]);
    expect((await drivers[oldShard]!.query('select tbl from strata_row_moves')).rows).toEqual([]);
    expect(await router().recoverMoves({ olderThan: 0 })).toEqual({ completed: 0, dropped: 0 });
  });

  it('never loses the row when a recovery and the move itself race to finish it', async () => {
    const [from, to] = usersApart();
    const oldShard = placeSync(STRATEGY, from);
    const newShard = placeSync(STRATEGY, to);
    await drivers[oldShard]!.query(
      sql`insert into posts (user_id, id, body, created_at) values (${from}, ${10}, ${'race'}, ${new Date()})`,
    );
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let locked = () => {};
    const isLocked = new Promise<void>((resolve) => {
      locked = resolve;
    });
    // Both the move's last step and the recovery's delete of the old row wait on this lock.
    const blocker = drivers[oldShard]!.transaction(async (tx) => {
      await tx.query('lock table posts in share mode');
      locked();
      await held;
    });
    await isLocked;
    const moving = router().moveRow('posts', from, {
      user_id: to,
      id: 10,
      body: 'race',
      created_at: new Date(),
    });
    for (let i = 0; i < 600 && (await postsOn(newShard, 10)).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const recovering = router().recoverMoves({ olderThan: 0 });
    await new Promise((r) => setTimeout(r, 200));
    release();
    await blocker;
    await moving;
    const recovered = await recovering;
    expect(recovered.dropped).toBe(0);
    expect(await postsOn(oldShard, 10)).toEqual([]);
    expect((await postsOn(newShard, 10)).map((p) => p.user_id)).toEqual([to]);
    expect((await drivers[oldShard]!.query('select tbl from strata_row_moves')).rows).toEqual([]);
  });

  it('lets one of two concurrent moves of a row through and refuses the other with E_CONFLICT', async () => {
    const [from, to] = usersApart();
    const oldShard = placeSync(STRATEGY, from);
    await drivers[oldShard]!.query(
      sql`insert into posts (user_id, id, body, created_at) values (${from}, ${8}, ${'hi'}, ${new Date()})`,
    );
    const r = router();
    const row = { user_id: to, id: 8, body: 'moved', created_at: new Date() };
    const results = await Promise.allSettled([r.moveRow('posts', from, row), r.moveRow('posts', from, row)]);
    const failed = results.filter((x) => x.status === 'rejected');
    expect(results.filter((x) => x.status === 'fulfilled')).toHaveLength(1);
    expect(failed).toHaveLength(1);
    const reason = (failed[0] as PromiseRejectedResult).reason;
    // The loser either saw the intent (E_CONFLICT) or, when it came after the move, no old row.
    expect(isStrataError(reason, 'E_CONFLICT') || isStrataError(reason, 'E_NOT_FOUND')).toBe(true);
    const all = await r.scatter<{ user_id: number }>(sql`select user_id from posts where id = ${8}`);
    expect(all.rows).toEqual([{ user_id: to }]);
  });

  it('drops an intent whose old row the application deleted meanwhile, with its copy', async () => {
    const [from, to] = usersApart();
    const oldShard = placeSync(STRATEGY, from);
    const newShard = placeSync(STRATEGY, to);
    const r = router();
    expect(await r.recoverMoves({ olderThan: 0 })).toEqual({ completed: 0, dropped: 0 });
    // What a crash after the copy leaves, when the application then deleted the old row.
    await drivers[newShard]!.query(
      sql`insert into posts (user_id, id, body, created_at) values (${to}, ${9}, ${'x'}, ${new Date(0)})`,
    );
    await drivers[oldShard]!.query(
      sql`insert into strata_row_moves (tbl, pk, target, row_data, created_at) values (${'posts'}, ${JSON.stringify([from, 9])}, ${newShard}, ${JSON.stringify({ user_id: to, id: 9, body: 'x', created_at: { $date: 0 } })}, ${Date.now()})`,
    );
    expect(await r.recoverMoves({ olderThan: 0 })).toEqual({ completed: 0, dropped: 1 });
    expect((await r.scatter(sql`select id from posts where id = ${9}`)).rows).toEqual([]);
    expect((await drivers[oldShard]!.query('select tbl from strata_row_moves')).rows).toEqual([]);
  });
});
