import { spawn } from 'node:child_process';
import { chmodSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers.js';
import { isStrataError } from '../../core/errors.js';
import { sql } from '../../core/sql.js';
import { describeSqlDriverConformance } from '../../testing/sql-driver-conformance.js';
import { createSqliteDriver } from './sqlite-driver.js';

const dir = tempDir('strata-sqlite-');
afterAll(() => dir.remove());

describeSqlDriverConformance('sqlite file', () => createSqliteDriver(join(dir.path, 'conformance.db')));
describeSqlDriverConformance('sqlite :memory:', () => createSqliteDriver(':memory:'));

describe('sqlite driver', () => {
  it('opens files in WAL mode with a busy timeout and foreign keys on', async () => {
    const db = createSqliteDriver({ filename: join(dir.path, 'pragmas.db'), busyTimeout: '2s' });
    const mode = await db.query<{ journal_mode: string }>('pragma journal_mode');
    expect(mode.rows[0]?.journal_mode).toBe('wal');
    const timeout = await db.query<{ timeout: number }>('pragma busy_timeout');
    expect(timeout.rows[0]?.timeout).toBe(2000);
    const fk = await db.query<{ foreign_keys: number }>('pragma foreign_keys');
    expect(fk.rows[0]?.foreign_keys).toBe(1);
    expect(existsSync(join(dir.path, 'pragmas.db-wal'))).toBe(true);
    await db.close();
  });

  it('tells commit listeners of every committed write, with RETURNING too, and not of reads', async () => {
    const db = createSqliteDriver(join(dir.path, 'commits.db'));
    await db.exec('create table t (id integer primary key, v text)');
    let commits = 0;
    const off = db.onCommit(() => {
      commits++;
    });
    const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
    await db.query(sql`insert into t (v) values (${'a'})`);
    await settle();
    expect(commits).toBe(1);
    const returned = await db.query<{ id: number }>(sql`insert into t (v) values (${'b'}) returning id`);
    expect(returned.rows).toHaveLength(1);
    await settle();
    expect(commits).toBe(2);
    await db.query('select * from t');
    await settle();
    expect(commits).toBe(2);
    await db.transaction(async (tx) => {
      await tx.query(sql`update t set v = ${'c'} where id = ${1} returning id`);
    });
    await settle();
    expect(commits).toBe(3);
    off();
    await db.close();
  });

  it('names the directory when the file cannot be opened', () => {
    const missing = join(dir.path, 'no', 'such', 'dir', 'x.db');
    let err: unknown;
    try {
      createSqliteDriver(missing);
    } catch (e) {
      err = e;
    }
    expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
    expect((err as Error).message).toContain(join(dir.path, 'no', 'such', 'dir'));
  });

  it.skipIf(process.getuid?.() === 0)('names the directory when it is read-only', () => {
    const ro = tempDir('strata-ro-');
    chmodSync(ro.path, 0o500);
    const err = (() => {
      try {
        createSqliteDriver(join(ro.path, 'x.db'));
      } catch (e) {
        return e;
      }
    })();
    chmodSync(ro.path, 0o700);
    ro.remove();
    expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
  });

  it('rejects invalid options at construction time with E_CONFIG naming the option', () => {
    const cases: [Parameters<typeof createSqliteDriver>[0], string][] = [
      [{ filename: '' }, 'filename'],
      [{ filename: ':memory:', busyTimeout: '-5s' }, 'busyTimeout'],
      [{ filename: ':memory:', busyTimeout: '5 parsecs' }, 'busyTimeout'],
      [{ filename: ':memory:', statementCacheSize: -1 }, 'statementCacheSize'],
      [{ filename: ':memory:', synchronous: 'sometimes' as 'full' }, 'synchronous'],
    ];
    for (const [options, option] of cases) {
      let err: unknown;
      try {
        createSqliteDriver(options);
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: 'E_CONFIG', option });
    }
  });

  it('makes other callers wait while a transaction holds the connection', async () => {
    const db = createSqliteDriver(':memory:');
    await db.exec('create table t (id integer primary key, v text)');
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const tx = db.transaction(async (t) => {
      await t.query(sql`insert into t (id, v) values (${1}, ${'in tx'})`);
      await gate;
    });
    // Outside the transaction: must not see its uncommitted row, and must not run inside it.
    const outside = db.query<{ n: number }>('select count(*) as n from t');
    let outsideDone = false;
    void outside.then(() => {
      outsideDone = true;
    });
    await new Promise((r) => setImmediate(r));
    expect(outsideDone).toBe(false);
    release();
    await tx;
    expect((await outside).rows[0]?.n).toBe(1);
    await db.close();
  });

  it('fails fast, not forever, when the driver is called inside its own transaction', async () => {
    const db = createSqliteDriver(':memory:');
    const err = await db
      .transaction(async () => {
        await db.query('select 1');
      })
      .catch((e: unknown) => e);
    expect(isStrataError(err, 'E_TRANSACTION')).toBe(true);
    await db.close();
  });

  it('waits for another process holding the write lock, then proceeds', async () => {
    const file = join(dir.path, 'locks.db');
    const a = createSqliteDriver({ filename: file, busyTimeout: '10s' });
    await a.exec('create table t (id integer primary key)');
    // A real second process takes the write lock and releases it after 200 ms.
    const holder = spawn(
      process.execPath,
      [
        '-e',
        `const D = require('better-sqlite3'); const d = new D(${JSON.stringify(file)});
         d.exec('BEGIN IMMEDIATE'); process.stdout.write('locked');
         setTimeout(() => { d.exec('COMMIT'); d.close(); }, 200);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
    await a.query(sql`insert into t (id) values (${1})`);
    await new Promise((resolve) => holder.once('exit', resolve));
    expect((await a.query('select id from t')).rowCount).toBe(1);
    await a.close();
  });

  it('reports lock contention past the busy timeout as retryable E_SERIALIZATION', async () => {
    const file = join(dir.path, 'busy.db');
    const a = createSqliteDriver({ filename: file, busyTimeout: 50 });
    await a.exec('create table t (id integer primary key)');
    const other = new Database(file);
    other.exec('BEGIN IMMEDIATE');
    const err = await a.query(sql`insert into t (id) values (${1})`).catch((e: unknown) => e);
    other.exec('ROLLBACK');
    other.close();
    expect(isStrataError(err, 'E_SERIALIZATION')).toBe(true);
    await a.close();
  });

  it('binds booleans, dates and JSON objects portably', async () => {
    const db = createSqliteDriver(':memory:');
    await db.exec('create table t (b integer, d text, j text, u text)');
    const when = new Date('2026-05-01T12:00:00.000Z');
    await db.query(sql`insert into t (b, d, j, u) values (${true}, ${when}, ${{ a: [1, 2] }}, ${undefined})`);
    const { rows } = await db.query('select * from t');
    expect(rows).toEqual([{ b: 1, d: '2026-05-01T12:00:00.000Z', j: '{"a":[1,2]}', u: null }]);
    await db.close();
  });

  it('reports a wrong parameter count as E_QUERY', async () => {
    const db = createSqliteDriver(':memory:');
    const err = await db.query('select ?', [1, 2]).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_QUERY')).toBe(true);
    await db.close();
  });
});
