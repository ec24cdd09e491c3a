/**
 * The embedded default end to end: a SQLite primary with outbox capture, a relay into the SQLite
 * change log, SQLite replica files applying it, and a replica set over them with the same
 * consistency levels as on PostgreSQL.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers.js';
import { createRelay, type Relay } from '../../changes/relay.js';
import type { ChangeLog } from '../../core/changes.js';
import { isStrataError } from '../../core/errors.js';
import { createReplicaSet, type ReplicaSet } from '../../replication/replica-set.js';
import { createSqliteChangeLog } from './sqlite-change-log.js';
import { createSqliteChangeCapture, type SqliteChangeCapture } from './sqlite-change-source.js';
import { createSqliteDriver, type SqliteDriver } from './sqlite-driver.js';
import { changeLogPosition, createSqliteReplica, type SqliteReplica } from './sqlite-replica.js';

const SCHEMA = `create table notes (id integer primary key, author text not null, body text not null, data blob);
  create table tags (note integer not null, label text not null, primary key (note, label)) without rowid;`;

async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function pool(n: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) await task(next++);
    }),
  );
}

interface Embedded {
  dir: string;
  primary: SqliteDriver;
  capture: SqliteChangeCapture;
  log: ChangeLog;
  relay: Relay;
  replicas: SqliteReplica[];
  set: ReplicaSet;
  errors: unknown[];
}

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function embedded(options: { replicas?: number; wait?: string } = {}): Promise<Embedded> {
  const dir = tempDir('strata-sqlite-replica-');
  cleanups.push(() => dir.remove());
  const primary = createSqliteDriver(join(dir.path, 'primary.db'));
  cleanups.push(() => primary.close());
  await primary.exec(SCHEMA);
  const capture = createSqliteChangeCapture(primary, {
    source: 'app',
    tables: ['notes', 'tags'],
    pollInterval: '20ms',
  });
  const log = createSqliteChangeLog({ filename: join(dir.path, 'log.db'), pollInterval: '20ms' });
  cleanups.push(() => log.close());
  const relay = createRelay({ source: capture, log });
  await relay.start();
  cleanups.push(() => relay.stop());
  const errors: unknown[] = [];
  const replicas = Array.from({ length: options.replicas ?? 2 }, (_, i) =>
    createSqliteReplica({
      filename: join(dir.path, `replica${i + 1}.db`),
      log,
      source: 'app',
      schema: SCHEMA,
      pollInterval: '20ms',
      retryBackoff: { initialDelay: '10ms', maxDelay: '50ms' },
      onError: (err) => errors.push(err),
    }),
  );
  for (const replica of replicas) {
    cleanups.push(() => replica.close());
    await replica.start();
  }
  const set = createReplicaSet({
    primary,
    replicas: replicas.map((r, i) => ({ name: `replica${i + 1}`, driver: r.driver })),
    position: changeLogPosition(),
    health: { interval: '50ms', maxLag: '2s' },
    session: { wait: options.wait ?? '500ms', pollEvery: '5ms' },
  });
  cleanups.push(() => set.close());
  return { dir: dir.path, primary, capture, log, relay, replicas, set, errors };
}

describe('SQLite replicas fed from the change log', () => {
  it('applies inserts, updates, key changes and deletes in commit order and reports its position', async () => {
    const { primary, replicas, log, set } = await embedded({ replicas: 1 });
    await primary.query(`insert into notes (id, author, body, data) values (1, 'ada', 'one', x'00ff')`);
    await primary.query(`insert into notes (id, author, body) values (2, 'bob', 'two')`);
    await primary.query(`insert into tags (note, label) values (1, 'a'), (1, 'b')`);
    await primary.query(`update notes set body = 'one, edited' where id = 1`);
    await primary.query(`update notes set id = 3 where id = 2`);
    await primary.query(`delete from tags where label = 'a'`);
    const last = await set.query(`insert into notes (id, author, body) values (4, 'cy', 'four')`);
    await until(async () => (await log.head()) >= 8, 'the log to hold every change');
    await replicas[0]!.caughtUp();
    const copy = async (db: SqliteDriver) => ({
      notes: (await db.query('select id, author, body, hex(data) as data from notes order by id')).rows,
      tags: (await db.query('select note, label from tags order by note, label')).rows,
    });
    expect(await copy(replicas[0]!.driver)).toEqual(await copy(primary));
    const status = await replicas[0]!.status();
    expect(status.offset).toBe(await log.head());
    expect(status.position).toBe(set.parseToken(last.token));
    expect(status.status).toBe('running');
    const stats = await set.refresh();
    expect(stats).toMatchObject({ kind: 'change-log', unit: 'changes' });
    expect(stats.replicas[0]).toMatchObject({
      state: 'healthy',
      lag: 0,
      lagSeconds: 0,
      position: String(status.position),
    });
  });

  it('reports an upper bound of its staleness: the age of the last change it applied', async () => {
    const { primary, replicas, log } = await embedded({ replicas: 1 });
    const before = Date.now();
    await primary.query(`insert into notes (id, author, body) values (10, 'ada', 'stale soon')`);
    await until(async () => (await log.head()) >= 1, 'the log to hold the change');
    await replicas[0]!.caughtUp();
    const seen = await changeLogPosition().replica(replicas[0]!.driver);
    const after = Date.now();
    expect(seen.position).toBeGreaterThan(0n);
    // Between 0 and the time since just before the write: the change's commit time lies in there.
    expect(seen.behindMs).toBeGreaterThanOrEqual(0);
    expect(seen.behindMs!).toBeLessThanOrEqual(after - before + 1);
  });

  it('1,000 write-then-read pairs with session tokens never miss their own write, served by the replicas', async () => {
    const { set } = await embedded();
    await set.refresh();
    let misses = 0;
    let onReplicas = 0;
    await pool(1_000, 50, async (i) => {
      const { token } = await set.query('insert into notes (author, body) values (?, ?)', [
        'pair',
        `body ${i}`,
      ]);
      const seen = await set.read(
        async (db, info) => ({
          info,
          rows: (
            await db.query<{ n: number }>('select count(*) as n from notes where body = ?', [`body ${i}`])
          ).rows,
        }),
        { consistency: { session: token } },
      );
      if (seen.rows[0]?.n !== 1) misses++;
      if (seen.info.replica) onReplicas++;
    });
    expect(misses).toBe(0);
    expect(onReplicas).toBeGreaterThan(900);
    const stats = set.stats();
    // Whichever replica catches up first serves a waiting read; both take part.
    expect(stats.replicas.every((r) => r.reads > 0)).toBe(true);
    expect(stats.session.servedByReplicas).toBe(onReplicas);
  });

  it('a stopped replica falls behind and leaves session reads to the other; with both stopped, the primary; restarted, it catches up', async () => {
    const { set, replicas } = await embedded({ wait: '100ms' });
    await set.refresh();
    await replicas[0]!.stop();
    const sessionRead = async (i: number) => {
      const { token } = await set.query('insert into notes (author, body) values (?, ?)', ['stop', `s${i}`]);
      return set.read(
        async (db, info) => ({
          info,
          n: (await db.query<{ n: number }>('select count(*) as n from notes where body = ?', [`s${i}`]))
            .rows[0]!.n,
        }),
        { consistency: { session: token } },
      );
    };
    for (let i = 0; i < 20; i++)
      expect(await sessionRead(i)).toMatchObject({ info: { node: 'replica2' }, n: 1 });
    await replicas[1]!.stop();
    for (let i = 20; i < 25; i++)
      expect(await sessionRead(i)).toMatchObject({ info: { node: 'primary' }, n: 1 });
    expect(set.stats().session.fallbacks).toBe(5);
    // Eventual reads still go to the (stale) replicas: that is what eventual means.
    const stale = await set.read(async (db, info) => ({
      info,
      n: (await db.query<{ n: number }>(`select count(*) as n from notes where author = 'stop'`)).rows[0]!.n,
    }));
    expect(stale.info.replica).toBe(true);
    expect(stale.n).toBeLessThan(25);
    const lagging = await set.refresh();
    expect(lagging.replicas.every((r) => (r.lag ?? 0) > 0)).toBe(true);
    await replicas[0]!.start();
    await replicas[1]!.start();
    await replicas[0]!.caughtUp();
    await replicas[1]!.caughtUp();
    const caughtUp = await set.refresh();
    expect(caughtUp.replicas.map((r) => r.lag)).toEqual([0, 0]);
    expect((await sessionRead(99)).info.replica).toBe(true);
  });

  it('resumes after a restart exactly where it stopped, without applying anything twice', async () => {
    const { dir, primary, replicas, log, errors } = await embedded({ replicas: 1 });
    for (let i = 0; i < 50; i++)
      await primary.query('insert into notes (author, body) values (?, ?)', ['r', `${i}`]);
    await until(async () => (await log.head()) >= 50, 'the log');
    await replicas[0]!.caughtUp();
    const before = await replicas[0]!.status();
    await replicas[0]!.close();
    await primary.query(`update notes set body = 'changed' where id <= 10`);
    await until(async () => (await log.head()) >= 60, 'the log');
    const reopened = createSqliteReplica({
      filename: join(dir, 'replica1.db'),
      log,
      source: 'app',
      pollInterval: '20ms',
      onError: (err) => errors.push(err),
    });
    cleanups.push(() => reopened.close());
    expect((await reopened.status()).offset).toBe(before.offset);
    await reopened.start();
    await reopened.caughtUp();
    expect((await reopened.status()).applied).toBe(10);
    const rows = await reopened.driver.query('select id, body from notes order by id');
    expect(rows.rows).toEqual((await primary.query('select id, body from notes order by id')).rows);
    expect(errors).toEqual([]);
  });

  it('stops at a change it cannot apply instead of skipping it, and a replica set routes around it', async () => {
    const { primary, log, replicas } = await embedded({ replicas: 1 });
    const errors: unknown[] = [];
    const partial = createSqliteReplica({
      filename: join(await tempReplicaDir(), 'partial.db'),
      log,
      source: 'app',
      schema: 'create table notes (id integer primary key, author text, body text, data blob)',
      pollInterval: '20ms',
      retryBackoff: { initialDelay: '5ms', maxDelay: '20ms' },
      onError: (err) => errors.push(err),
    });
    cleanups.push(() => partial.close());
    await partial.start();
    await primary.query(`insert into notes (author, body) values ('x', 'before')`);
    await primary.query(`insert into tags (note, label) values (1, 'no table on the replica')`);
    const set = createReplicaSet({
      primary,
      replicas: [
        { name: 'partial', driver: partial.driver },
        { name: 'full', driver: replicas[0]!.driver },
      ],
      position: changeLogPosition(),
      session: { wait: '2s' },
    });
    cleanups.push(() => set.close());
    const { token } = await set.query(`insert into notes (author, body) values ('x', 'after')`);
    const seen = await set.read(
      async (db, info) => ({ info, rows: (await db.query(`select 1 from notes where body = 'after'`)).rows }),
      {
        consistency: { session: token },
      },
    );
    expect(seen).toMatchObject({ info: { node: 'full' }, rows: [{ 1: 1 }] });
    await until(() => errors.length >= 3, 'retries of the failing change');
    expect(isStrataError(errors[0], 'E_QUERY')).toBe(true);
    expect((errors[0] as { table?: string }).table).toBe('tags');
    const status = await partial.status();
    expect(status.lastErrorCode).toBe('E_QUERY');
    expect((await partial.driver.query('select body from notes')).rows).toEqual([{ body: 'before' }]);
    await replicas[0]!.caughtUp();
    expect(status.position).toBeLessThan((await replicas[0]!.status()).position);
  });

  it('refuses invalid options with E_CONFIG naming the option', async () => {
    const dir = await tempReplicaDir();
    const log = createSqliteChangeLog({ filename: join(dir, 'log.db') });
    cleanups.push(() => log.close());
    const option = (fn: () => unknown) => {
      try {
        const made = fn() as SqliteReplica;
        cleanups.push(() => made.close());
      } catch (err) {
        expect(isStrataError(err, 'E_CONFIG')).toBe(true);
        return (err as { option: string }).option;
      }
      throw new Error('expected E_CONFIG');
    };
    const base = { filename: join(dir, 'r.db'), log, source: 'app' };
    expect(option(() => createSqliteReplica({ ...base, filename: ':memory:' }))).toBe('filename');
    expect(option(() => createSqliteReplica({ ...base, log: {} as ChangeLog }))).toBe('log');
    expect(option(() => createSqliteReplica({ ...base, source: 'bad source' }))).toBe('source');
    expect(option(() => createSqliteReplica({ ...base, tables: ['no-dash'] }))).toBe('tables');
    expect(option(() => createSqliteReplica({ ...base, batchSize: 0 }))).toBe('batchSize');
    expect(option(() => createSqliteReplica({ ...base, schema: 'create tabel oops' }))).toBe('schema');
    const first = createSqliteReplica(base);
    await first.close();
    expect(option(() => createSqliteReplica({ ...base, source: 'other' }))).toBe('source');
    expect(option(() => changeLogPosition({ outboxTable: 'bad name' }))).toBe('outboxTable');
  });

  it('applies only the listed tables but still moves its position past the others', async () => {
    const { primary, log, set } = await embedded({ replicas: 1 });
    const dir = await tempReplicaDir();
    const notesOnly = createSqliteReplica({
      filename: join(dir, 'notes-only.db'),
      log,
      source: 'app',
      tables: ['notes'],
      schema: 'create table notes (id integer primary key, author text, body text, data blob)',
      pollInterval: '20ms',
    });
    cleanups.push(() => notesOnly.close());
    await notesOnly.start();
    await primary.query(`insert into notes (author, body) values ('t', 'n')`);
    const { token } = await set.query(`insert into tags (note, label) values (1, 't')`);
    await until(async () => (await notesOnly.status()).position >= set.parseToken(token), 'the position');
    expect((await notesOnly.driver.query('select body from notes')).rows).toEqual([{ body: 'n' }]);
    expect((await notesOnly.status()).applied).toBe(1);
  });
});

async function tempReplicaDir(): Promise<string> {
  const dir = tempDir('strata-sqlite-replica-extra-');
  cleanups.push(() => dir.remove());
  return dir.path;
}
