import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { tempDir, uniqueName } from '../../../test/helpers.js';
import {
  type Change,
  deserializeChange,
  makePosition,
  type Position,
  serializeChange,
} from '../../core/changes.js';
import { isStrataError } from '../../core/errors.js';
import { sql } from '../../core/sql.js';
import { FakeClock } from '../../testing/fake-clock.js';
import {
  createSqliteChangeCapture,
  type SqliteChangeCapture,
  type SqliteChangeCaptureOptions,
} from './sqlite-change-source.js';
import { createSqliteDriver, type SqliteDriver } from './sqlite-driver.js';

const dir = tempDir('strata-sqlite-cdc-');
afterAll(() => dir.remove());

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const SCHEMA = `
  create table users (id integer primary key, name text, email text);
  create table tags (owner integer not null, label text not null, data blob, primary key (owner, label)) without rowid;
  create table logs (line text);
  create table measures (id integer primary key, ratio real, anything);
  create view user_names as select name from users;
`;

async function setup(
  options: Partial<SqliteChangeCaptureOptions> = {},
): Promise<{ driver: SqliteDriver; capture: SqliteChangeCapture; filename: string }> {
  const filename = join(dir.path, `${uniqueName('cdc')}.db`);
  const driver = createSqliteDriver(filename);
  await driver.exec(SCHEMA);
  const capture = createSqliteChangeCapture(driver, {
    source: 'app',
    tables: ['users'],
    retryBackoff: { initialDelay: '5ms', maxDelay: '20ms' },
    ...options,
  });
  cleanups.push(async () => {
    await capture.stop();
    await driver.close();
  });
  return { driver, capture, filename };
}

/** Starts `capture` with a callback that records every batch. */
async function record(
  capture: SqliteChangeCapture,
): Promise<{ batches: Change[][]; changes: () => Change[] }> {
  const batches: Change[][] = [];
  await capture.start(async (changes) => {
    batches.push(changes);
  });
  return { batches, changes: () => batches.flat() };
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function schemaObjects(driver: SqliteDriver): Promise<string[]> {
  const rows = await driver.query<{ name: string }>(
    "select name from sqlite_schema where type in ('table', 'trigger') and name like '%strata%' order by name",
  );
  return rows.rows.map((r) => r.name);
}

function errorOf(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

describe('sqlite change capture', () => {
  it('captures inserts, updates and deletes with key, before and after, in commit order', async () => {
    // The poll timer never fires on a fake clock: only commits through the driver wake the capture.
    const clock = new FakeClock();
    const { driver, capture } = await setup({ clock });
    const seen = await record(capture);
    const idle = () => until(() => clock.pendingTimers === 1);
    const startedAt = Date.now();
    await idle();
    await driver.query(
      sql`insert into users (id, name, email) values (${1}, ${'Ada'}, ${'ada@example.org'})`,
    );
    await until(() => seen.changes().length === 1);
    await idle();
    await driver.query(sql`update users set name = ${'Ada L.'} where id = ${1}`);
    await until(() => seen.changes().length === 2);
    await idle();
    await driver.query(sql`delete from users where id = ${1}`);
    await until(() => seen.changes().length === 3);
    const endedAt = Date.now();
    const changes = seen.changes();
    expect(changes.map(({ op, key, before, after }) => ({ op, key, before, after }))).toEqual([
      { op: 'insert', key: { id: 1 }, before: null, after: { id: 1, name: 'Ada', email: 'ada@example.org' } },
      {
        op: 'update',
        key: { id: 1 },
        before: { id: 1, name: 'Ada', email: 'ada@example.org' },
        after: { id: 1, name: 'Ada L.', email: 'ada@example.org' },
      },
      {
        op: 'delete',
        key: { id: 1 },
        before: { id: 1, name: 'Ada L.', email: 'ada@example.org' },
        after: null,
      },
    ]);
    for (const change of changes) {
      expect(change).toMatchObject({ source: 'app', table: 'users', txId: null });
      expect(change.commitTime).toBeGreaterThanOrEqual(startedAt - 1);
      expect(change.commitTime).toBeLessThanOrEqual(endedAt + 1);
    }
    expect(changes.map((c) => c.position)).toEqual([1, 2, 3].map((n) => makePosition('app', n)));
  });

  it('captures every row of a multi-row transaction, in order, and nothing of a rolled-back one', async () => {
    const { driver, capture } = await setup();
    const seen = await record(capture);
    const err = await driver
      .transaction(async (tx) => {
        await tx.query(sql`insert into users (id, name) values (${9}, ${'ghost'})`);
        throw new Error('abort');
      })
      .catch((e: unknown) => e);
    expect((err as Error).message).toBe('abort');
    expect(await capture.pending()).toBe(0);
    await driver.transaction(async (tx) => {
      for (const id of [1, 2, 3])
        await tx.query(sql`insert into users (id, name) values (${id}, ${`u${id}`})`);
      await tx.query(sql`update users set name = ${'two'} where id = ${2}`);
    });
    await until(() => seen.changes().length === 4);
    expect(seen.changes().map((c) => [c.op, c.key.id])).toEqual([
      ['insert', 1],
      ['insert', 2],
      ['insert', 3],
      ['update', 2],
    ]);
    expect(seen.changes().some((c) => c.key.id === 9)).toBe(false);
  });

  it('turns a primary key change into a delete of the old key and an insert of the new', async () => {
    const { driver, capture } = await setup();
    await capture.install();
    await driver.query(sql`insert into users (id, name) values (${1}, ${'Ada'})`);
    await driver.query(sql`update users set id = ${2} where id = ${1}`);
    const seen = await record(capture);
    await until(() => seen.changes().length === 3);
    expect(seen.changes().map(({ op, key, before, after }) => ({ op, key, before, after }))).toEqual([
      { op: 'insert', key: { id: 1 }, before: null, after: { id: 1, name: 'Ada', email: null } },
      { op: 'delete', key: { id: 1 }, before: { id: 1, name: 'Ada', email: null }, after: null },
      { op: 'insert', key: { id: 2 }, before: null, after: { id: 2, name: 'Ada', email: null } },
    ]);
  });

  it('round-trips blobs, unicode, big integers, reals and nulls, also through the log codec', async () => {
    const { driver, capture } = await setup({ tables: ['tags', 'users', 'measures'] });
    const seen = await record(capture);
    const bytes = new Uint8Array([0, 1, 127, 128, 254, 255]);
    await driver.query(
      sql`insert into tags (owner, label, data) values (${7}, ${'∑ 中文 \u{1F600} "q" \'s\''}, ${bytes})`,
    );
    await driver.query(
      sql`insert into users (id, name, email) values (${9007199254740993n}, ${'x'}, ${null})`,
    );
    await driver.exec(
      "insert into measures (id, ratio, anything) values (-9223372036854775808, 0.30000000000000004, x'')",
    );
    await until(() => seen.changes().length === 3);
    const [tag, big, small] = seen.changes();
    expect(tag?.key).toEqual({ owner: 7, label: '∑ 中文 \u{1F600} "q" \'s\'' });
    expect(tag?.after).toEqual({ owner: 7, label: '∑ 中文 \u{1F600} "q" \'s\'', data: bytes });
    expect(tag?.after?.data).toBeInstanceOf(Uint8Array);
    expect(big?.after).toEqual({ id: 9007199254740993n, name: 'x', email: null });
    expect(small?.after).toEqual({
      id: -9223372036854775808n,
      ratio: 0.30000000000000004,
      anything: new Uint8Array(),
    });
    for (const change of [tag!, big!, small!]) {
      expect(deserializeChange<Change>(serializeChange(change)).after).toEqual(change.after);
    }
  });

  it('captures tables wider than one json_object call', async () => {
    const { driver, capture } = await setup({ tables: ['wide'] });
    const columns = Array.from({ length: 130 }, (_, i) => `c${i}`);
    await driver.exec(
      `create table wide (id integer primary key, ${columns.map((c) => `${c} integer`).join(', ')})`,
    );
    const seen = await record(capture);
    await driver.exec(
      `insert into wide (id, ${columns.join(', ')}) values (1, ${columns.map((_, i) => i).join(', ')})`,
    );
    await until(() => seen.changes().length === 1);
    const expected: Record<string, unknown> = { id: 1 };
    columns.forEach((c, i) => {
      expected[c] = i;
    });
    expect(seen.changes()[0]?.after).toEqual(expected);
  });

  it('picks up a new column without a restart', async () => {
    const { driver, capture } = await setup();
    const seen = await record(capture);
    await driver.query(sql`insert into users (id, name) values (${1}, ${'before'})`);
    await until(() => seen.changes().length === 1);
    await driver.exec('alter table users add column nickname text');
    // The capture notices the schema change on its next round and rewrites its triggers.
    await until(async () => {
      const rows = await driver.query<{ sql: string }>(
        "select sql from sqlite_schema where type = 'trigger' and name = '_strata_outbox__users__insert'",
      );
      return rows.rows[0]?.sql.includes('nickname') ?? false;
    });
    await driver.query(sql`insert into users (id, name, nickname) values (${2}, ${'after'}, ${'nick'})`);
    await until(() => seen.changes().length === 2);
    expect(seen.changes()[1]?.after).toEqual({ id: 2, name: 'after', email: null, nickname: 'nick' });
  });

  it('drops a captured column through migrate, and rolls back a migration that breaks capture', async () => {
    const { driver, capture } = await setup();
    const seen = await record(capture);
    const refused = await driver.exec('alter table users drop column email').catch((e: unknown) => e);
    expect(isStrataError(refused, 'E_QUERY')).toBe(true);
    const result = await capture.migrate(async (tx) => {
      await tx.exec('alter table users drop column email');
      return 'migrated';
    });
    expect(result).toBe('migrated');
    await driver.query(sql`insert into users (id, name) values (${1}, ${'Ada'})`);
    await until(() => seen.changes().length === 1);
    expect(seen.changes()[0]?.after).toEqual({ id: 1, name: 'Ada' });
    const broken = await capture.migrate((tx) => tx.exec('drop table users')).catch((e: unknown) => e);
    expect(broken).toMatchObject({ code: 'E_CONFIG', details: { table: 'users' } });
    expect((await schemaObjects(driver)).filter((n) => n.startsWith('_strata_outbox__users'))).toHaveLength(
      4,
    );
    await driver.query(sql`insert into users (id, name) values (${2}, ${'Bob'})`);
    await until(() => seen.changes().length === 2);
  });

  it('rejects a missing table and a table without a primary key with E_CONFIG naming it, writing nothing', async () => {
    for (const [table, expected] of [
      ['missing', /missing" does not exist/],
      ['logs', /logs" has no primary key/],
      ['user_names', /user_names" is not a plain table/],
    ] as const) {
      const { driver, capture } = await setup({ tables: ['users', table] });
      const err = await capture.install().catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_CONFIG', option: 'tables', details: { table } });
      expect((err as Error).message).toMatch(expected);
      const startErr = await capture.start(async () => {}).catch((e: unknown) => e);
      expect(startErr).toMatchObject({ code: 'E_CONFIG', details: { table } });
      expect(await schemaObjects(driver)).toEqual([]);
    }
  });

  it('validates identifiers and options at construction with E_CONFIG naming the option', async () => {
    const { driver } = await setup();
    const cases: [Partial<SqliteChangeCaptureOptions>, string][] = [
      [{ tables: ['users; drop table x'] }, 'tables'],
      [{ tables: ['users', ''] }, 'tables'],
      [{ tables: ['sqlite_master'] }, 'tables'],
      [{ tables: ['_strata_outbox'] }, 'tables'],
      [{ tables: 'users' as unknown as string[] }, 'tables'],
      [{ outboxTable: 'outbox"; drop table users; --' }, 'outboxTable'],
      [{ source: 'bad source' }, 'source'],
      [{ batchSize: 0 }, 'batchSize'],
      [{ pollInterval: '0ms' }, 'pollInterval'],
      [{ retryBackoff: { maxDelay: 'later' } }, 'retryBackoff.maxDelay'],
    ];
    for (const [options, option] of cases) {
      const err = errorOf(() =>
        createSqliteChangeCapture(driver, { source: 'app', tables: ['users'], ...options }),
      );
      expect(err, option).toMatchObject({ code: 'E_CONFIG', option });
    }
    expect(await schemaObjects(driver)).toEqual([]);
    const tables = await driver.query<{ n: number }>(
      "select count(*) as n from sqlite_schema where name = 'users'",
    );
    expect(tables.rows[0]?.n).toBe(1);
  });

  it('publishes outbox messages atomically with the caller’s transaction', async () => {
    const { driver, capture } = await setup();
    await capture.install();
    const err = await driver
      .transaction(async (tx) => {
        await tx.query(sql`insert into users (id, name) values (${1}, ${'rolled back'})`);
        await capture.publish(tx, { topic: 'user-events', key: 'u1', payload: { kind: 'Created' } });
        throw new Error('abort');
      })
      .catch((e: unknown) => e);
    expect((err as Error).message).toBe('abort');
    expect(await capture.pending()).toBe(0);
    let published: Position | undefined;
    await driver.transaction(async (tx) => {
      await tx.query(sql`insert into users (id, name) values (${2}, ${'kept'})`);
      published = await capture.publish(tx, {
        topic: 'user-events',
        key: 'u2',
        payload: { kind: 'Created', avatar: new Uint8Array([1, 2]), big: 2n ** 70n, nested: { ok: true } },
        headers: { 'content-type': 'application/json' },
      });
    });
    const direct = await capture.publish(driver, { topic: 'audit', key: '', payload: {} });
    const seen = await record(capture);
    await until(() => seen.changes().length === 3);
    const [insert, message, audit] = seen.changes();
    expect(insert).toMatchObject({ op: 'insert', table: 'users', key: { id: 2 } });
    expect(message).toMatchObject({
      op: 'message',
      table: 'user-events',
      key: { key: 'u2' },
      before: null,
      after: { kind: 'Created', avatar: new Uint8Array([1, 2]), big: 2n ** 70n, nested: { ok: true } },
      headers: { 'content-type': 'application/json' },
      position: published,
    });
    expect(audit).toMatchObject({
      op: 'message',
      table: 'audit',
      key: { key: '' },
      after: {},
      position: direct,
    });
    expect(audit?.headers).toBeUndefined();
  });

  it('rejects malformed messages, and messages before install', async () => {
    const { driver, capture } = await setup();
    const early = await capture
      .publish(driver, { topic: 't', key: 'k', payload: {} })
      .catch((e: unknown) => e);
    expect(early).toMatchObject({ code: 'E_NOT_FOUND', details: { table: '_strata_outbox' } });
    await capture.install();
    const bad = await capture
      .publish(driver, {
        topic: '',
        key: 3 as unknown as string,
        payload: [] as unknown as Record<string, unknown>,
        headers: { a: 1 as unknown as string },
      })
      .catch((e: unknown) => e);
    expect(isStrataError(bad, 'E_VALIDATION')).toBe(true);
    expect((bad as { issues: Array<{ path: unknown[] }> }).issues.map((i) => i.path)).toEqual([
      ['topic'],
      ['key'],
      ['payload'],
      ['headers', 'a'],
    ]);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const cycle = await capture
      .publish(driver, { topic: 't', key: 'k', payload: cyclic })
      .catch((e: unknown) => e);
    expect(isStrataError(cycle, 'E_VALIDATION')).toBe(true);
    expect(await capture.pending()).toBe(0);
  });

  it('delivers in batches of batchSize and acknowledges only what it is told', async () => {
    const { driver, capture } = await setup({ batchSize: 3 });
    await capture.install();
    for (let id = 1; id <= 7; id++) await driver.query(sql`insert into users (id) values (${id})`);
    const seen = await record(capture);
    await until(() => seen.changes().length === 7);
    expect(seen.batches.map((b) => b.length)).toEqual([3, 3, 1]);
    expect(await capture.pending()).toBe(7);
    await capture.acknowledge(makePosition('app', 5));
    expect(await capture.pending()).toBe(2);
    const left = await driver.query<{ seq: number }>('select seq from _strata_outbox order by seq');
    expect(left.rows.map((r) => r.seq)).toEqual([6, 7]);
    const foreign = await capture.acknowledge(makePosition('other', 7)).catch((e: unknown) => e);
    expect(isStrataError(foreign, 'E_POSITION')).toBe(true);
    expect(await capture.pending()).toBe(2);
    // A restart delivers again what was not acknowledged, and nothing that was.
    await capture.stop();
    const again = await record(capture);
    await until(() => again.changes().length === 2);
    expect(again.changes().map((c) => c.position)).toEqual([makePosition('app', 6), makePosition('app', 7)]);
  });

  it('delivers the same batch again after its callback failed', async () => {
    const errors: unknown[] = [];
    const { driver, capture } = await setup({ onError: (err) => errors.push(err) });
    await capture.install();
    for (let id = 1; id <= 3; id++) await driver.query(sql`insert into users (id) values (${id})`);
    const calls: Position[][] = [];
    await capture.start(async (changes) => {
      calls.push(changes.map((c) => c.position));
      if (calls.length <= 2) throw new Error('relay down');
    });
    await until(() => calls.length === 3);
    expect(calls[1]).toEqual(calls[0]);
    expect(calls[2]).toEqual(calls[0]);
    expect(calls[0]).toEqual([1, 2, 3].map((n) => makePosition('app', n)));
    expect(errors.map((e) => (e as Error).message)).toEqual(['relay down', 'relay down']);
    await driver.query(sql`insert into users (id) values (${4})`);
    await until(() => calls.length === 4);
    expect(calls[3]).toEqual([makePosition('app', 4)]);
  });

  it('stops only after the running callback settled, and delivers nothing after', async () => {
    const { driver, capture } = await setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let entered!: () => void;
    const inside = new Promise<void>((r) => {
      entered = r;
    });
    let calls = 0;
    let finished = false;
    await capture.start(async () => {
      calls++;
      entered();
      await gate;
      finished = true;
    });
    await driver.query(sql`insert into users (id) values (${1})`);
    await inside;
    let stopped = false;
    const stopping = capture.stop().then(() => {
      stopped = true;
    });
    const twice = capture.stop();
    await new Promise((r) => setImmediate(r));
    expect(stopped).toBe(false);
    release();
    await stopping;
    await twice;
    expect(finished).toBe(true);
    await driver.query(sql`insert into users (id) values (${2})`);
    await new Promise((r) => setImmediate(r));
    expect(calls).toBe(1);
    expect(await capture.pending()).toBe(2);
  });

  it('refuses a second start while running', async () => {
    const { capture } = await setup();
    await capture.start(async () => {});
    const err = await capture.start(async () => {}).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_CONFLICT')).toBe(true);
  });

  it('captures writes of another process, through the poll interval', async () => {
    const { capture, filename } = await setup({ pollInterval: '20ms' });
    const seen = await record(capture);
    const root = fileURLToPath(new URL('../../../', import.meta.url));
    const script = `
      import Database from 'better-sqlite3';
      const db = new Database(${JSON.stringify(filename)}, { timeout: 5000 });
      db.prepare('insert into users (id, name) values (?, ?)').run(41, 'from afar');
      db.prepare('update users set email = ? where id = ?').run('far@example.org', 41);
      db.close();
    `;
    const code = await new Promise<number | null>((resolve, reject) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        cwd: root,
        stdio: 'inherit',
      });
      child.on('error', reject);
      child.on('exit', resolve);
    });
    expect(code).toBe(0);
    await until(() => seen.changes().length === 2);
    expect(seen.changes().map(({ op, after }) => ({ op, after }))).toEqual([
      { op: 'insert', after: { id: 41, name: 'from afar', email: null } },
      { op: 'update', after: { id: 41, name: 'from afar', email: 'far@example.org' } },
    ]);
  });

  it('installs idempotently, drops triggers of tables no longer captured, and uninstalls', async () => {
    const { driver, capture } = await setup({ tables: ['users', 'tags'] });
    await capture.install();
    const version = async () =>
      (await driver.query<{ schema_version: number }>('pragma schema_version')).rows[0];
    const installed = await version();
    await capture.install();
    expect(await version()).toEqual(installed);
    expect(await schemaObjects(driver)).toEqual([
      '_strata_outbox',
      '_strata_outbox__tags__delete',
      '_strata_outbox__tags__insert',
      '_strata_outbox__tags__update',
      '_strata_outbox__tags__update_key',
      '_strata_outbox__users__delete',
      '_strata_outbox__users__insert',
      '_strata_outbox__users__update',
      '_strata_outbox__users__update_key',
    ]);
    const fewer = createSqliteChangeCapture(driver, { source: 'app', tables: ['users'] });
    await fewer.install();
    expect((await schemaObjects(driver)).filter((n) => n.includes('tags'))).toEqual([]);
    await fewer.uninstall();
    expect(await schemaObjects(driver)).toEqual(['_strata_outbox']);
    await driver.query(sql`insert into users (id) values (${1})`);
    expect(await fewer.pending()).toBe(0);
  });
});
