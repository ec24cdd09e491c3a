import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;

/** The environment of every CLI run: no engine URLs, so the app runs on SQLite in its data dir. */
function cliEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  delete env.DATABASE_URL;
  delete env.REDIS_URL;
  delete env.NATS_URL;
  delete env.STRATA_DEBUG;
  return env;
}

function spawnCli(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: root,
    env: cliEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion. */
function runCli(args: string[]): Promise<Result> {
  const child = spawnCli(args);
  return collect(child);
}

function collect(child: ChildProcess, already = { stdout: '', stderr: '' }): Promise<Result> {
  const out = already;
  child.stdout!.on('data', (chunk: Buffer) => {
    out.stdout += chunk.toString();
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    out.stderr += chunk.toString();
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, ...out }));
  });
}

/** A started `strata start`: resolves once it printed its URLs, rejects if it exits first. */
function startCli(
  args: string[],
): Promise<{ child: ChildProcess; output: { stdout: string; stderr: string }; exited: Promise<Result> }> {
  const child = spawnCli(args);
  running.add(child);
  const output = { stdout: '', stderr: '' };
  const exited = collect(child, output);
  void exited.finally(() => running.delete(child));
  return new Promise((resolve, reject) => {
    const onData = () => {
      if (output.stdout.includes('Press Ctrl-C to stop.')) {
        child.stdout!.off('data', onData);
        resolve({ child, output, exited });
      }
    };
    child.stdout!.on('data', onData);
    void exited.then((r) => reject(new Error(`strata start exited with ${r.code}: ${r.stderr}`)));
  });
}

const running = new Set<ChildProcess>();
const dirs: Array<{ remove: () => void }> = [];

function tmp(): string {
  const dir = tempDir('strata-cli-');
  dirs.push(dir);
  return dir.path;
}

function lines(text: string): string[] {
  return text.split('\n').filter((line) => line.trim().length > 0);
}

afterEach(() => {
  for (const child of running) child.kill('SIGKILL');
});
afterAll(() => {
  for (const dir of dirs) dir.remove();
});

describe('strata --help and --version', () => {
  it.each([
    [[], ['start', 'simulate', 'status', '--version']],
    [['start'], ['--host', '--port', '--data-dir', '--simulate', '--rate', '--shards', '--replicas']],
    [['simulate'], ['--url', '--rate', '--duration', '--users', '--seed', '--no-burst']],
    [['status'], ['--data-dir', '--url', '--json']],
    [
      ['changes', 'tail'],
      ['--log', '--from', '--limit', '--json'],
    ],
    [
      ['changes', 'consumers'],
      ['--database', '--log', '--dead-letters', '--json'],
    ],
    [
      ['shards', 'status'],
      ['--map', '--state', '--shard', '--json'],
    ],
    [['reshard'], ['--to', '--dry-run', '--abort', '--work-dir']],
    [['replicas', 'status'], ['--json']],
    [
      ['events', 'tail'],
      ['--store', '--from', '--type', '--stream', '--limit', '--json'],
    ],
    [
      ['projections', 'status'],
      ['--store', '--json'],
    ],
    [
      ['projections', 'rebuild'],
      ['--module', '--batch-size', '--restart'],
    ],
  ])('strata %j --help lists its options and exits 0', async (command, expected) => {
    const result = await runCli([...command, '--help']);
    expect(result.code).toBe(0);
    for (const option of expected) expect(result.stdout).toContain(option);
    expect(result.stderr).toBe('');
  });

  it('prints the package version', async () => {
    const result = await runCli(['--version']);
    expect(result.code).toBe(0);
    expect(result.stdout.trim()).toBe(version);
  });

  it('an unknown option is a usage error: one line, exit 2', async () => {
    const result = await runCli(['start', '--prot', '1']);
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^strata: .*--prot/);
  });
});

describe('strata changes', () => {
  it('tails the change log of a running app and lists its consumers with their lag', async () => {
    const dataDir = tmp();
    const { child, output, exited } = await startCli([
      'start',
      '--port',
      '0',
      '--data-dir',
      dataDir,
      '--shards',
      '3',
    ]);
    const url = /API\s+(http:\/\/127\.0\.0\.1:\d+)\n/.exec(output.stdout)![1]!;
    expect(output.stdout).toContain('change log sqlite');
    const post = (path: string, body: object) =>
      fetch(`${url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const user = (await (
      await post('/users', { handle: 'tailme', email: 'tail@example.com', name: 'T' })
    ).json()) as { id: number };
    await post(`/users/${user.id}/posts`, { body: 'hello log' });

    const tail = await runCli([
      'changes',
      'tail',
      'posts',
      '--data-dir',
      dataDir,
      '--from',
      'beginning',
      '--limit',
      '1',
      '--json',
    ]);
    expect(tail.code, tail.stderr).toBe(0);
    const change = JSON.parse(lines(tail.stdout)[0]!) as {
      table: string;
      op: string;
      after: { body: string };
    };
    expect(change).toMatchObject({ table: 'posts', op: 'insert', after: { body: 'hello log' } });

    const consumers = await runCli(['changes', 'consumers', '--data-dir', dataDir, '--json']);
    expect(consumers.code, consumers.stderr).toBe(0);
    const rows = JSON.parse(consumers.stdout) as Array<{
      consumer: string;
      checkpoint: number;
      head: number;
    }>;
    expect(rows.map((r) => r.consumer).sort()).toEqual(['cache-invalidation', 'feed-events', 'user-stats']);
    for (const r of rows) expect(r.head).toBeGreaterThanOrEqual(2);

    // Three shards as asked; the post is in the time partitions of exactly one of them.
    const status = (await (await fetch(`${url}/api/status`)).json()) as {
      shards: { map: { shards: string[] } };
    };
    expect(status.shards.map.shards).toEqual(['s0', 's1', 's2']);
    let postsSeen = 0;
    for (const shard of ['s0', 's1', 's2']) {
      const parts = await runCli([
        'partitions',
        'status',
        '--data-dir',
        dataDir,
        '--table',
        'posts',
        '--shard',
        shard,
        '--json',
      ]);
      expect(parts.code, parts.stderr).toBe(0);
      const listed = JSON.parse(parts.stdout) as { partitions: Array<{ rows: number }> };
      postsSeen += listed.partitions.reduce((n, p) => n + p.rows, 0);
    }
    expect(postsSeen).toBe(1);
    const badShard = await runCli([
      'partitions',
      'status',
      '--data-dir',
      dataDir,
      '--table',
      'posts',
      '--shard',
      '../x',
    ]);
    expect([badShard.code, lines(badShard.stderr).length]).toEqual([2, 1]);
    expect(badShard.stderr).toContain('shard');

    const table = await runCli(['changes', 'consumers', '--data-dir', dataDir]);
    expect(table.stdout).toMatch(/consumer\s+checkpoint\s+head\s+lag/);

    const badLog = await runCli(['changes', 'tail', '--log', 'mysql://x']);
    expect(badLog.code).toBe(2);
    expect(lines(badLog.stderr)).toHaveLength(1);

    child.kill('SIGTERM');
    expect((await exited).code).toBe(0);
  });
});

describe('strata verify', () => {
  it('lists differences between two stores, repairs them with --repair, and then finds them equal', async () => {
    const dir = tmp();
    const Database = (await import('better-sqlite3')).default;
    const a = join(dir, 'a.db');
    const b = join(dir, 'b.db');
    for (const file of [a, b]) {
      const db = new Database(file);
      db.exec('create table items (id integer primary key, name text not null, qty integer)');
      const insert = db.prepare('insert into items (id, name, qty) values (?, ?, ?)');
      for (let i = 1; i <= 5_000; i++) if (i % 7 !== 0 || file === a) insert.run(i, `item ${i}`, i % 13);
      if (file === b) {
        db.prepare('update items set qty = 999 where id in (10, 20, 30)').run();
        db.prepare('insert into items (id, name, qty) values (9001, ?, 1)').run('extra');
      }
      db.close();
    }
    const missing = Math.floor(5_000 / 7);
    const first = await runCli([
      'verify',
      '--from',
      `sqlite:${a}`,
      '--to',
      `sqlite:${b}`,
      '--table',
      'items',
      '--chunk-size',
      '500',
    ]);
    expect(first.code, first.stderr).toBe(1);
    expect(first.stdout).toContain('tables differ');
    expect(first.stdout).toMatch(new RegExp(`missing in --to\\s+${missing}\\n`));
    expect(first.stdout).toMatch(/extra in --to\s+1\n/);
    expect(first.stdout).toMatch(/different\s+3\n/);
    expect(first.stdout).toContain('{"id":10} columns qty');

    const dry = await runCli([
      'verify',
      '--from',
      `sqlite:${a}`,
      '--to',
      `sqlite:${b}`,
      '--table',
      'items',
      '--repair',
      '--dry-run',
    ]);
    expect(dry.code).toBe(1);
    expect(dry.stdout).toContain(
      `repair plan (dry run, nothing changed): insert ${missing}, update 3, delete 1`,
    );

    const fix = await runCli([
      'verify',
      '--from',
      `sqlite:${a}`,
      '--to',
      `sqlite:${b}`,
      '--table',
      'items',
      '--repair',
    ]);
    expect(fix.code, fix.stderr).toBe(0);
    expect(fix.stdout).toContain(`repaired --to: inserted ${missing}, updated 3, deleted 1`);

    const again = await runCli([
      'verify',
      '--from',
      `sqlite:${a}`,
      '--to',
      `sqlite:${b}`,
      '--table',
      'items',
    ]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('tables match');

    const bad = await runCli([
      'verify',
      '--from',
      `sqlite:${a}`,
      '--to',
      `sqlite:${b}`,
      '--table',
      'items; drop table x',
    ]);
    expect(bad.code).toBe(2);
    expect(lines(bad.stderr)).toHaveLength(1);
    const noFile = await runCli([
      'verify',
      '--from',
      `sqlite:${join(dir, 'nope.db')}`,
      '--to',
      `sqlite:${b}`,
      '--table',
      'items',
    ]);
    expect(noFile.code).toBe(2);
    expect(noFile.stderr).toContain('nope.db');
  });
});

describe('strata start, status, simulate', () => {
  it('serves on a free port, is seen by status and simulate, and stops cleanly on SIGTERM', async () => {
    const dataDir = tmp();
    const { child, output, exited } = await startCli(['start', '--port', '0', '--data-dir', dataDir]);

    const api = /API\s+(http:\/\/127\.0\.0\.1:(\d+))\n/.exec(output.stdout);
    expect(api, output.stdout).not.toBeNull();
    const url = api![1]!;
    expect(Number(api![2])).toBeGreaterThan(0);
    expect(output.stdout).toContain(`dashboard  ${url}/dashboard`);
    expect(output.stdout).toContain(`metrics    ${url}/metrics`);

    const health = await fetch(`${url}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ ok: true });

    const runFile = join(dataDir, 'strata.json');
    const info = JSON.parse(readFileSync(runFile, 'utf8')) as { pid: number; url: string; engines: object };
    expect(info).toMatchObject({ pid: child.pid, url, engines: { database: 'sqlite', cache: 'memory' } });

    const status = await runCli(['status', '--data-dir', dataDir]);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toContain('running');
    expect(status.stdout).toContain(url);
    expect(status.stdout).toMatch(new RegExp(`pid\\s+${child.pid}`));
    expect(status.stdout).toContain('database sqlite');

    const byUrl = await runCli(['status', '--url', url, '--json']);
    expect(byUrl.code, byUrl.stderr).toBe(0);
    expect(JSON.parse(byUrl.stdout)).toMatchObject({
      status: { app: 'social', engines: { database: 'sqlite' } },
    });

    const second = await runCli(['start', '--port', '0', '--data-dir', dataDir]);
    expect(second.code).toBe(1);
    expect(lines(second.stderr)).toHaveLength(1);
    expect(second.stderr).toContain(`pid ${child.pid}`);

    const simulation = await runCli([
      'simulate',
      '--url',
      url,
      '--duration',
      '1s',
      '--rate',
      '40',
      '--users',
      '10',
    ]);
    expect(simulation.code, simulation.stderr).toBe(0);
    expect(simulation.stdout).toContain('Simulation done');
    expect(simulation.stdout).toContain('GET /users/:id/feed');
    expect(simulation.stdout).toMatch(/failed 0/);

    child.kill('SIGTERM');
    const result = await exited;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('stopped');
    expect(existsSync(runFile)).toBe(false);

    const after = await runCli(['status', '--data-dir', dataDir]);
    expect(after.code).toBe(1);
    expect(lines(after.stderr)).toHaveLength(1);
  });

  it('start --simulate drives the app with traffic and keeps serving', async () => {
    const dataDir = tmp();
    const { child, output, exited } = await startCli([
      'start',
      '--port',
      '0',
      '--data-dir',
      dataDir,
      '--simulate',
      '1s',
      '--rate',
      '30',
    ]);
    // The summary is printed when the simulation ends; wait for it (bounded by the test timeout).
    await new Promise<void>((resolve) => {
      const check = () => {
        if (output.stdout.includes('The app keeps running')) {
          child.stdout!.off('data', check);
          resolve();
        }
      };
      child.stdout!.on('data', check);
      check();
    });
    expect(output.stdout).toContain('Simulation done');
    expect(output.stdout).toContain('seeding');
    child.kill('SIGINT');
    const result = await exited;
    expect(result.code, result.stderr).toBe(0);
    expect(existsSync(join(dataDir, 'strata.json'))).toBe(false);
  });
});

describe('strata failures: one line, non-zero exit', () => {
  it('a busy port names the port', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address() as { port: number };
    try {
      const result = await runCli(['start', '--port', String(port), '--data-dir', tmp()]);
      expect(result.code).not.toBe(0);
      expect(lines(result.stderr)).toHaveLength(1);
      expect(result.stderr).toMatch(/^strata: /);
      expect(result.stderr).toContain(`port ${port}`);
      expect(result.stdout).toBe('');
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });

  it('a data directory that cannot be written names the directory', async () => {
    const base = tmp();
    writeFileSync(join(base, 'file.txt'), 'not a directory');
    const dataDir = join(base, 'file.txt', 'data');
    const result = await runCli(['start', '--port', '0', '--data-dir', dataDir]);
    expect(result.code).not.toBe(0);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toContain(dataDir);
    expect(result.stderr).toContain('data-dir');
  });

  it('status with nothing running exits 1 with one line', async () => {
    const result = await runCli(['status', '--data-dir', tmp()]);
    expect(result.code).toBe(1);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^strata: nothing is running/);
    expect(result.stdout).toBe('');
  });

  it('simulate refuses a non-loopback URL with exit 2 naming the url option', async () => {
    const result = await runCli(['simulate', '--url', 'http://10.0.0.1:1', '--duration', '1s']);
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toContain('"url"');
    expect(result.stderr).toContain('loopback');
  });

  it('a bad option value is exit 2 naming the option, without a stack', async () => {
    const result = await runCli(['simulate', '--url', 'http://127.0.0.1:1', '--rate', 'fast']);
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toEqual([
      'strata: invalid option "rate": must be a number of requests per second above 0',
    ]);
  });
});
