/**
 * kill -9 with real processes: a worker acknowledges writes into a durable write-behind queue
 * while its store is slow, is killed with SIGKILL mid-stream, and a new worker on the same queue
 * puts every acknowledged write (the newest per key) into the store.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';

const root = new URL('../../', import.meta.url).pathname;
const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';
const children = new Set<ChildProcess>();
const dir = tempDir('strata-write-behind-kill-');

afterAll(() => {
  for (const child of children) child.kill('SIGKILL');
  dir.remove();
});

const WRITES = 2_000;
const KEYS = 150;

interface Worker {
  child: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

/** Starts the worker; resolves once it printed `ready` (write mode) or right away (drain mode). */
async function startWorker(args: string[], waitForReady: boolean): Promise<Worker> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(root, 'test/fixtures/write-behind-worker.ts'), ...args],
    { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.add(child);
  const lines: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      lines.push(line);
      if (line === 'ready') resolve();
    });
    void exited.then((code) => reject(new Error(`worker exited with ${code} before it was ready`)));
  });
  if (waitForReady) await ready;
  else ready.catch(() => undefined);
  return { child, lines, exited };
}

async function until(condition: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The newest acknowledged write of each key: its index (which names its value) and version. */
function acknowledged(lines: readonly string[]): Map<string, { index: number; version: number }> {
  const newest = new Map<string, { index: number; version: number }>();
  for (const line of lines) {
    const match = /^ack (\d+) (\d+)$/.exec(line);
    if (match === null) continue;
    const index = Number(match[1]);
    const version = Number(match[2]);
    const key = `k${index % KEYS}`;
    if ((newest.get(key)?.version ?? 0) < version) newest.set(key, { index, version });
  }
  return newest;
}

async function storeRows(file: string): Promise<Map<string, { value: string | null; version: number }>> {
  const db = createSqliteDriver(file);
  try {
    const { rows } = await db.query<{ key: string; value: string | null; version: number }>(
      'select key, value, version from store',
    );
    return new Map(rows.map((row) => [row.key, { value: row.value, version: Number(row.version) }]));
  } finally {
    await db.close();
  }
}

async function killAndRecover(queueSpec: string, storeFile: string): Promise<void> {
  const writer = await startWorker([queueSpec, storeFile, 'write', String(WRITES), String(KEYS)], true);
  await until(() => writer.lines.length >= WRITES * 0.4, 'the worker to acknowledge writes');
  writer.child.kill('SIGKILL');
  await writer.exited;
  children.delete(writer.child);
  expect(writer.lines).not.toContain('done');

  const acked = acknowledged(writer.lines);
  const before = await storeRows(storeFile);
  const missing = [...acked].filter(([key, ack]) => (before.get(key)?.version ?? 0) < ack.version);
  // The kill left acknowledged writes that only the queue holds: the test is about those.
  expect(missing.length).toBeGreaterThan(0);

  const drainer = await startWorker([queueSpec, storeFile, 'drain'], false);
  expect(await drainer.exited).toBe(0);
  children.delete(drainer.child);
  const recovered = Number(drainer.lines.find((l) => l.startsWith('drained '))?.slice('drained '.length));
  expect(recovered).toBeGreaterThanOrEqual(missing.length);

  const after = await storeRows(storeFile);
  for (const [key, ack] of acked) {
    const row = after.get(key);
    expect(row, key).toBeDefined();
    // The stored write is the newest acknowledged one, or a later write that was queued durably
    // just before the kill, whose acknowledgement never got printed.
    expect(row!.version, key).toBeGreaterThanOrEqual(ack.version);
    if (row!.version === ack.version) {
      expect(row!.value, key).toBe(ack.index % 13 === 12 ? null : String(ack.index));
    }
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

/** A private redis-server that fsyncs its append-only file before acknowledging each write. */
async function startDurableRedis(port: number, dataDir: string): Promise<ChildProcess> {
  const child = spawn(
    REDIS_SERVER,
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'yes',
      '--appendfsync',
      'always',
      '--dir',
      dataDir,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(child);
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server did not start: ${output}`)), 10_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}: ${output}`));
    });
  });
  return child;
}

describe('durable write-behind under kill -9', () => {
  it('SQLite queue: every acknowledged write reaches the store after the worker is killed and restarted', async () => {
    await killAndRecover(`sqlite:${join(dir.path, 'queue.db')}`, join(dir.path, 'store-sqlite.db'));
  });

  it.skipIf(!existsSync(REDIS_SERVER))(
    'Redis Stream queue (appendfsync always): every acknowledged write reaches the store after the worker is killed and restarted',
    async () => {
      const port = await freePort();
      const redis = await startDurableRedis(port, dir.path);
      try {
        await killAndRecover(
          `redis:redis://127.0.0.1:${port}#write-behind`,
          join(dir.path, 'store-redis.db'),
        );
      } finally {
        redis.kill('SIGTERM');
        await once(redis, 'exit');
        children.delete(redis);
      }
    },
  );
});
