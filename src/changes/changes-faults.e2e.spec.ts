/**
 * Faults with real processes: the relay and a consumer are killed with SIGKILL in the middle of
 * their work and restarted; nothing committed is lost, order per key holds, and the consumer
 * resumes from its checkpoint.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { createSqliteChangeLog } from '../backends/sqlite/sqlite-change-log.js';
import { createSqliteChangeCapture } from '../backends/sqlite/sqlite-change-source.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { type Change, makePosition } from '../core/changes.js';
import { sql } from '../core/sql.js';

const root = new URL('../../', import.meta.url).pathname;
const children = new Set<ChildProcess>();

afterAll(() => {
  for (const child of children) child.kill('SIGKILL');
});

interface Worker {
  child: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

async function startWorker(fixture: string, args: string[]): Promise<Worker> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'test/fixtures', fixture), ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      lines.push(line);
      if (line === 'ready') resolve();
    });
    void exited.then((code) => reject(new Error(`${fixture} exited with ${code} before it was ready`)));
  });
  await ready;
  return { child, lines, exited };
}

async function kill9(worker: Worker): Promise<void> {
  worker.child.kill('SIGKILL');
  await worker.exited;
  children.delete(worker.child);
}

async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('change pipeline under kill -9 (SQLite capture, embedded log)', () => {
  it('loses no committed change when the relay is killed mid-stream, and keeps order per key', async () => {
    const dir = tempDir('strata-relay-kill-');
    const appFile = join(dir.path, 'app.db');
    const logFile = join(dir.path, 'log.db');
    const db = createSqliteDriver(appFile);
    await db.exec('create table items (id integer primary key, v integer not null)');
    const capture = createSqliteChangeCapture(db, { source: 'app', tables: ['items'] });
    await capture.install();

    let relay = await startWorker('relay-worker.ts', [`sqlite:${appFile}`, `sqlite:${logFile}`, 'items']);
    const expected = new Map<number, string[]>();
    const exists = new Set<number>();
    const WRITES = 3_000;
    let kills = 0;
    for (let i = 1; i <= WRITES; i++) {
      const id = i % 97;
      await db.transaction(async (tx) => {
        if (exists.has(id) && i % 11 === 0) {
          await tx.query(sql`delete from items where id = ${id}`);
          exists.delete(id);
          expected.set(id, [...(expected.get(id) ?? []), 'delete']);
        } else {
          await tx.query(
            sql`insert into items (id, v) values (${id}, ${i}) on conflict (id) do update set v = excluded.v`,
          );
          expected.set(id, [...(expected.get(id) ?? []), `${exists.has(id) ? 'update' : 'insert'} ${i}`]);
          exists.add(id);
        }
      });
      if (i % 700 === 0 && kills < 3) {
        await kill9(relay);
        kills++;
        relay = await startWorker('relay-worker.ts', [`sqlite:${appFile}`, `sqlite:${logFile}`, 'items']);
      }
    }
    expect(kills).toBe(3);

    const log = createSqliteChangeLog({ filename: logFile });
    await until(
      async () => (await capture.pending()) === 0 && (await log.head()) >= WRITES,
      'the relay to catch up',
    );
    const entries = await log.read(0, WRITES * 2);
    expect(entries).toHaveLength(WRITES);
    const seen = new Map<number, string[]>();
    for (const e of entries) {
      const id = e.key.id as number;
      seen.set(id, [...(seen.get(id) ?? []), e.op === 'delete' ? 'delete' : `${e.op} ${e.after?.v}`]);
    }
    expect(seen).toEqual(expected);

    await kill9(relay);
    await log.close();
    await db.close();
    dir.remove();
  });

  it('resumes a consumer killed mid-batch from its checkpoint, and the view ends up exact', async () => {
    const dir = tempDir('strata-consumer-kill-');
    const logFile = join(dir.path, 'log.db');
    const viewFile = join(dir.path, 'view.db');
    const log = createSqliteChangeLog({ filename: logFile });
    const N = 3_000;
    const final = new Map<number, number | undefined>();
    const changes: Change[] = [];
    for (let i = 1; i <= N; i++) {
      const id = i % 113;
      const del = i % 17 === 0 && final.get(id) !== undefined;
      changes.push({
        source: 'app',
        table: 'items',
        op: del ? 'delete' : 'update',
        key: { id },
        before: null,
        after: del ? null : { id, v: i },
        position: makePosition('app', BigInt(i)),
        txId: null,
        commitTime: Date.now(),
      });
      final.set(id, del ? undefined : i);
    }
    await log.append(changes);

    const view = createSqliteDriver(viewFile);
    const checkpoint = async () => {
      const { rows } = await view
        .query<{ last_offset: number }>(
          sql`select last_offset from strata_checkpoints where consumer = ${'view_items'}`,
        )
        .catch(() => ({ rows: [] as { last_offset: number }[] }));
      return Number(rows[0]?.last_offset ?? 0);
    };

    let worker = await startWorker('consumer-worker.ts', [`sqlite:${logFile}`, viewFile]);
    await until(async () => (await checkpoint()) > 600, 'the first run to make progress');
    await kill9(worker);
    const savedAtKill = await checkpoint();
    expect(savedAtKill).toBeLessThan(N);

    worker = await startWorker('consumer-worker.ts', [`sqlite:${logFile}`, viewFile]);
    await until(async () => (await checkpoint()) === N, 'the second run to finish');
    const first = Number(worker.lines.find((l) => l.startsWith('first '))?.slice(6));
    // Resumed where the first run's checkpoint was, not from the beginning.
    expect(first).toBe(savedAtKill + 1);

    const { rows } = await view.query<{ id: number; v: number }>('select id, v from view_items order by id');
    const expected = [...final.entries()]
      .filter(([, v]) => v !== undefined)
      .map(([id, v]) => ({ id, v: v! }))
      .sort((a, b) => a.id - b.id);
    expect(rows).toEqual(expected);

    await kill9(worker);
    await view.close();
    await log.close();
    dir.remove();
  });
});
