/**
 * Ids across real processes: four processes lease worker ids from one SQLite file and issue
 * 50,000 ids each at the same time; no id is issued twice and each process's ids rise.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { decodeId } from './ids.js';

const root = new URL('../../', import.meta.url).pathname;
const children = new Set<ChildProcess>();
const dirs: Array<() => void> = [];

afterAll(() => {
  for (const child of children) child.kill('SIGKILL');
  for (const remove of dirs) remove();
});

interface Worker {
  child: ChildProcess;
  workerId: Promise<number>;
  done: Promise<void>;
}

function startWorker(args: string[]): Worker {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(root, 'test/fixtures/id-worker.ts'), ...args],
    {
      cwd: root,
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  children.add(child);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let ready: (id: number) => void = () => undefined;
  let finished: () => void = () => undefined;
  const workerId = new Promise<number>((resolve, reject) => {
    ready = resolve;
    void exited.then((code) => reject(new Error(`id-worker exited with ${code} before it was ready`)));
  });
  const done = new Promise<void>((resolve, reject) => {
    finished = resolve;
    void exited.then((code) => (code === 0 ? undefined : reject(new Error(`id-worker exited with ${code}`))));
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (line.startsWith('ready ')) ready(Number(line.slice(6)));
    if (line === 'done') finished();
  });
  return { child, workerId, done };
}

describe('ids from four processes sharing one SQLite lease table', () => {
  it('issues 200,000 distinct ids, rising within each process, with distinct workers', async () => {
    const dir = tempDir('strata-ids-e2e-');
    dirs.push(dir.remove);
    const file = join(dir.path, 'ids.db');
    const PROCESSES = 4;
    const COUNT = 50_000;
    const outs = Array.from({ length: PROCESSES }, (_, i) => join(dir.path, `ids-${i}.txt`));
    const workers = outs.map((out) => startWorker([file, String(COUNT), out]));
    const workerIds = await Promise.all(workers.map((w) => w.workerId));
    expect([...workerIds].sort((a, b) => a - b)).toEqual([0, 1, 2, 3]);

    for (const w of workers) w.child.stdin!.write('go\n');
    await Promise.all(workers.map((w) => w.done));

    const all = new Set<number>();
    for (const [i, out] of outs.entries()) {
      const ids = readFileSync(out, 'utf8').split('\n').map(Number);
      expect(ids).toHaveLength(COUNT);
      let rising = true;
      for (let j = 1; j < ids.length; j++) if (!(ids[j]! > ids[j - 1]!)) rising = false;
      expect(rising).toBe(true);
      for (const id of ids) {
        expect(Number.isSafeInteger(id)).toBe(true);
        all.add(id);
      }
      // Every id carries the worker id its process leased.
      expect(decodeId(ids[0]!).workerId).toBe(workerIds[i]);
      expect(decodeId(ids.at(-1)!).workerId).toBe(workerIds[i]);
    }
    expect(all.size).toBe(PROCESSES * COUNT);
  });
});
