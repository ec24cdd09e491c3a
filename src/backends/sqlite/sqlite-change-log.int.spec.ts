import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers.js';
import { makePosition } from '../../core/changes.js';
import { isStrataError } from '../../core/errors.js';
import { describeChangeLogConformance, sampleChange } from '../../testing/change-log-conformance.js';
import { createSqliteChangeLog } from './sqlite-change-log.js';
import { createSqliteDriver } from './sqlite-driver.js';

const dir = tempDir('strata-sqlite-log-');
afterAll(() => dir.remove());

const file = (name: string) => join(dir.path, `${name}.db`);

describeChangeLogConformance('sqlite', ({ name }) => createSqliteChangeLog({ filename: file(name), name }), {
  cleanup: ({ name }) => {
    for (const suffix of ['', '-wal', '-shm']) rmSync(`${file(name)}${suffix}`, { force: true });
  },
});

const modulePath = fileURLToPath(new URL('./sqlite-change-log.ts', import.meta.url));
const conformancePath = fileURLToPath(new URL('../../testing/change-log-conformance.ts', import.meta.url));

/** Runs `body` in a separate Node process with `createSqliteChangeLog` and `sampleChange` in scope. */
function inChildProcess(
  body: string,
): Promise<{ code: number | null; signal: string | null; stdout: string }> {
  const script = `
    const { createSqliteChangeLog } = await import(${JSON.stringify(modulePath)});
    const { sampleChange } = await import(${JSON.stringify(conformancePath)});
    ${body}
  `;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal, stdout }));
  });
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('sqlite change log', () => {
  it('wakes watchers when another process appends, by polling', async () => {
    const filename = file('other-process');
    const log = createSqliteChangeLog({ filename, pollInterval: '20ms' });
    expect(await log.head()).toBe(0);
    let woken = 0;
    const stop = log.watch(() => {
      woken++;
    });
    const child = await inChildProcess(`
      const log = createSqliteChangeLog({ filename: ${JSON.stringify(filename)} });
      await log.append([sampleChange('child', 1), sampleChange('child', 2)]);
      await log.close();
    `);
    expect(child.code).toBe(0);
    await until(() => woken > 0);
    stop();
    expect((await log.read(0, 10)).map((e) => e.position)).toEqual([
      makePosition('child', 1001n),
      makePosition('child', 1002n),
    ]);
    await log.close();
  });

  it('keeps what an append resolved when its process is killed right after', async () => {
    const filename = file('kill');
    const child = await inChildProcess(`
      const log = createSqliteChangeLog({ filename: ${JSON.stringify(filename)} });
      for (let i = 1; i <= 50; i++) await log.append([sampleChange('killed', i)]);
      process.kill(process.pid, 'SIGKILL');
    `);
    expect(child.signal).toBe('SIGKILL');
    const log = createSqliteChangeLog({ filename });
    expect(await log.head()).toBe(50);
    expect(await log.lastPosition('killed')).toBe(makePosition('killed', 1050n));
    expect(await log.append([sampleChange('killed', 50), sampleChange('killed', 51)])).toEqual({
      appended: 1,
      duplicates: 1,
      lastOffset: 51,
    });
    await log.close();
  });

  it('gives appenders in several processes distinct offsets and loses nothing', async () => {
    const filename = file('processes');
    const log = createSqliteChangeLog({ filename });
    await log.head();
    const appendAll = (source: string) => `
      const log = createSqliteChangeLog({ filename: ${JSON.stringify(filename)} });
      for (let i = 1; i <= 30; i++) await log.append([sampleChange(${JSON.stringify(source)}, i)]);
      await log.close();
    `;
    const [left, right] = await Promise.all([
      inChildProcess(appendAll('left')),
      inChildProcess(appendAll('right')),
      (async () => {
        for (let i = 1; i <= 30; i++) await log.append([sampleChange('here', i)]);
      })(),
    ]);
    expect([left.code, right.code]).toEqual([0, 0]);
    const entries = await log.read(0, 1_000);
    expect(entries.map((e) => e.offset)).toEqual(Array.from({ length: 90 }, (_, i) => i + 1));
    for (const source of ['left', 'right', 'here']) {
      expect(entries.filter((e) => e.source === source).map((e) => e.position)).toEqual(
        Array.from({ length: 30 }, (_, i) => makePosition(source, BigInt(1001 + i))),
      );
    }
    await log.close();
  });

  it('survives reopening: entries, offsets and last positions', async () => {
    const filename = file('reopen');
    const first = createSqliteChangeLog({ filename });
    await first.append([sampleChange('src', 1), sampleChange('src', 2)]);
    await first.close();
    const second = createSqliteChangeLog({ filename });
    expect(await second.head()).toBe(2);
    expect(await second.lastPosition('src')).toBe(makePosition('src', 1002n));
    expect(await second.append([sampleChange('src', 3)])).toEqual({
      appended: 1,
      duplicates: 0,
      lastOffset: 3,
    });
    await second.close();
  });

  it('truncates old entries without reusing offsets', async () => {
    const log = createSqliteChangeLog({ filename: file('truncate') });
    await log.append([1, 2, 3, 4, 5].map((n) => sampleChange('src', n)));
    expect(await log.truncate(3)).toBe(2);
    expect((await log.read(0, 10)).map((e) => e.offset)).toEqual([3, 4, 5]);
    expect(await log.truncate(100)).toBe(3);
    expect(await log.read(0, 10)).toEqual([]);
    expect(await log.head()).toBe(5);
    expect(await log.append([sampleChange('src', 6)])).toEqual({ appended: 1, duplicates: 0, lastOffset: 6 });
    expect((await log.read(0, 10)).map((e) => e.offset)).toEqual([6]);
    // The dedup state outlives the entries.
    expect(await log.append([sampleChange('src', 2)])).toMatchObject({ appended: 0, duplicates: 1 });
    await log.close();
  });

  it('reads several tables merged in offset order within the limit', async () => {
    const log = createSqliteChangeLog({ filename: file('tables') });
    const tables = ['a', 'b', 'c', 'a', 'a', 'c', 'b', 'c'];
    await log.append(tables.map((t, i) => sampleChange('src', i + 1, t)));
    const page = await log.read(1, 3, { tables: ['c', 'a'] });
    expect(page.map((e) => [e.offset, e.table])).toEqual([
      [3, 'c'],
      [4, 'a'],
      [5, 'a'],
    ]);
    expect(await log.read(0, 10, { tables: [] })).toEqual([]);
    expect((await log.read(0, 10, { tables: ['b', 'b'] })).map((e) => e.offset)).toEqual([2, 7]);
    await log.close();
  });

  it("lives in a caller's driver and leaves it open on close", async () => {
    const driver = createSqliteDriver(file('shared-driver'));
    await driver.exec('create table app (id integer primary key)');
    const log = createSqliteChangeLog({ driver, name: 'app-log' });
    expect(log.name).toBe('app-log');
    await log.append([sampleChange('src', 1)]);
    await log.close();
    expect(driver.closed).toBe(false);
    const rows = await driver.query<{ n: number }>('select count(*) as n from _strata_log');
    expect(rows.rows[0]?.n).toBe(1);
    await driver.close();
  });

  it('keeps two logs apart in one file through the table option', async () => {
    const filename = file('two-tables');
    const one = createSqliteChangeLog({ filename, table: 'log_one' });
    const two = createSqliteChangeLog({ filename, table: 'log_two' });
    await one.append([sampleChange('src', 1), sampleChange('src', 2)]);
    expect(await two.head()).toBe(0);
    expect(await two.append([sampleChange('src', 1)])).toEqual({ appended: 1, duplicates: 0, lastOffset: 1 });
    await one.close();
    await two.close();
  });

  it('rejects a change whose position belongs to another source, writing nothing', async () => {
    const log = createSqliteChangeLog({ filename: file('foreign') });
    const foreign = sampleChange('src', 2, 'users', 2, { position: makePosition('other', 1n) });
    const err = await log.append([sampleChange('src', 1), foreign]).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_POSITION')).toBe(true);
    const invalid = await log
      .append([sampleChange('src', 1, 'users', 1, { op: 'upsert' as 'insert' })])
      .catch((e: unknown) => e);
    expect(isStrataError(invalid, 'E_VALIDATION')).toBe(true);
    expect(await log.head()).toBe(0);
    await log.close();
  });

  it('rejects bad read arguments with E_VALIDATION', async () => {
    const log = createSqliteChangeLog({ filename: file('args') });
    for (const [after, limit] of [
      [-1, 10],
      [0, 0],
      [0.5, 10],
      [0, Number.NaN],
    ] as const) {
      const err = await log.read(after, limit).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_VALIDATION')).toBe(true);
    }
    await log.close();
  });

  it('rejects invalid options at construction with E_CONFIG naming the option', () => {
    const driver = createSqliteDriver(':memory:');
    const cases: [Parameters<typeof createSqliteChangeLog>[0], string][] = [
      [{}, 'filename'],
      [{ filename: '' }, 'filename'],
      [{ filename: file('x'), driver }, 'filename'],
      [{ filename: file('x'), table: 'log; drop table x' }, 'table'],
      [{ filename: file('x'), pollInterval: '0ms' }, 'pollInterval'],
      [{ filename: file('x'), pollInterval: 'soon' }, 'pollInterval'],
      [{ filename: file('x'), synchronous: 'off' as 'full' }, 'synchronous'],
      [{ driver, synchronous: 'full' }, 'synchronous'],
      [{ driver: {} as never }, 'driver'],
      [{ filename: file('x'), name: '' }, 'name'],
    ];
    for (const [options, option] of cases) {
      let err: unknown;
      try {
        createSqliteChangeLog(options);
      } catch (e) {
        err = e;
      }
      expect(err, option).toMatchObject({ code: 'E_CONFIG', option });
    }
    void driver.close();
  });
});
