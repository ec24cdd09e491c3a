import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPostgresDriver } from '../src/backends/postgres/postgres-driver.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../src/backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../src/backends/sqlite/sqlite-driver.js';
import { sql } from '../src/core/sql.js';
import { createTimePartitioning } from '../src/sharding/partitions.js';
import { services, tempDir } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `strata <args>` to completion, with no engine URLs in its environment. */
function runCli(args: string[]): Promise<Result> {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  delete env.DATABASE_URL;
  delete env.STRATA_DEBUG;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: root,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (chunk: Buffer) => {
    out.stdout += chunk.toString();
  });
  child.stderr.on('data', (chunk: Buffer) => {
    out.stderr += chunk.toString();
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, ...out }));
  });
}

function lines(text: string): string[] {
  return text.split('\n').filter((line) => line.trim().length > 0);
}

/** The month partition suffix `offset` months from now (UTC), as the CLI will compute it. */
function month(offset: number): string {
  const now = new Date();
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1));
  return `p${d.getUTCFullYear()}_${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}

/** The start of the month `offset` months from now, in epoch ms. */
function monthStart(offset: number): number {
  const now = new Date();
  return Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1);
}

describe('strata partitions --help', () => {
  it.each([
    [['partitions'], ['status', 'maintain']],
    [
      ['partitions', 'status'],
      ['--database', '--table', '--period', '--estimate', '--json'],
    ],
    [
      ['partitions', 'maintain'],
      [
        '--database',
        '--table',
        '--period',
        '--premake',
        '--keep',
        '--on-expire',
        '--dry-run',
        '--lock-timeout',
      ],
    ],
  ])('strata %j --help lists its options and exits 0', async (command, expected) => {
    const result = await runCli([...command, '--help']);
    expect(result.code).toBe(0);
    for (const option of expected) expect(result.stdout).toContain(option);
    expect(result.stderr).toBe('');
  });
});

describe('strata partitions on a SQLite file', () => {
  const dir = tempDir('strata-cli-partitions-');
  const file = join(dir.path, 'store.db');
  const spec = `sqlite:${file}`;

  beforeAll(async () => {
    const db = createSqliteDriver(file);
    try {
      const posts = createTimePartitioning(db, {
        table: 'posts',
        column: 'created_at',
        period: 'month',
        premake: 1,
      });
      await posts.migrate('id integer primary key, created_at integer not null, body text');
      await posts.insertMany([
        { id: 1, created_at: Date.now(), body: 'now' },
        { id: 2, created_at: Date.now(), body: 'now too' },
        { id: 3, created_at: monthStart(-3) + 1_000, body: 'old' },
      ]);
    } finally {
      await db.close();
    }
  });
  afterAll(() => dir.remove());

  it('status lists each period table with its range and rows', async () => {
    const result = await runCli(['partitions', 'status', '--database', spec, '--table', 'posts']);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('one per month, by created_at (epoch_ms)');
    expect(result.stdout).toMatch(/partition\s+from\s+to\s+rows\s+size/);
    expect(result.stdout).toMatch(new RegExp(`posts_${month(0)}\\s+\\S+\\s+\\S+\\s+2\\s`));
    expect(result.stdout).toMatch(new RegExp(`posts_${month(-3)}\\s+\\S+\\s+\\S+\\s+1\\s`));
    expect(result.stdout).toContain(`posts_${month(1)}`);
  });

  it('maintain --dry-run reports what it would do and changes nothing', async () => {
    const result = await runCli([
      'partitions',
      'maintain',
      '--database',
      spec,
      '--table',
      'posts',
      '--period',
      'month',
      '--premake',
      '3',
      '--keep',
      '1',
      '--on-expire',
      'drop',
      '--dry-run',
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('dry run: nothing was changed');
    expect(result.stdout).toMatch(new RegExp(`would create\\s+posts_${month(2)}, posts_${month(3)}`));
    expect(result.stdout).toMatch(new RegExp(`would drop\\s+posts_${month(-3)}`));
    const status = await runCli(['partitions', 'status', '--database', spec, '--table', 'posts', '--json']);
    const parsed = JSON.parse(status.stdout) as { partitions: Array<{ name: string }> };
    expect(parsed.partitions.map((p) => p.name)).toEqual([
      `posts_${month(-3)}`,
      `posts_${month(0)}`,
      `posts_${month(1)}`,
    ]);
  });

  it('maintain creates ahead and drops what retention expires', async () => {
    const result = await runCli([
      'partitions',
      'maintain',
      '--database',
      spec,
      '--table',
      'posts',
      '--premake',
      '3',
      '--keep',
      '1',
      '--on-expire',
      'drop',
      '--json',
    ]);
    expect(result.code, result.stderr).toBe(0);
    const parsed = JSON.parse(result.stdout) as {
      report: { created: string[]; dropped: string[] };
      partitions: Array<{ name: string; rows: number }>;
    };
    expect(parsed.report.created).toEqual([`posts_${month(2)}`, `posts_${month(3)}`]);
    expect(parsed.report.dropped).toEqual([`posts_${month(-3)}`]);
    expect(parsed.partitions.map((p) => p.name)).toEqual([0, 1, 2, 3].map((k) => `posts_${month(k)}`));
    expect(parsed.partitions[0]!.rows).toBe(2);
  });

  it.each([
    [['--table', 'nope'], /^strata: invalid option "table"/],
    [['--table', 'posts', '--period', 'week'], /^strata: invalid option "period"/],
    [['--table', 'posts', '--premake', '-1'], /^strata: invalid option "premake"/],
    [['--table', 'posts', '--keep', 'many'], /^strata: invalid option "keep"/],
    [['--table', 'posts', '--on-expire', 'archive', '--keep', '1'], /^strata: invalid option "on-expire"/],
    [['--table', 'posts', '--period', 'day'], /^strata: invalid option "period"/],
    [['--table', 'bad-name'], /^strata: invalid option "table"/],
    [[], /--table/],
  ])('maintain %j is a usage error: one line, exit 2', async (args, message) => {
    const result = await runCli(['partitions', 'maintain', '--database', spec, ...args]);
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(message);
  });

  it('a store that is not SQLite or PostgreSQL is a usage error', async () => {
    const result = await runCli(['partitions', 'status', '--database', 'mysql://x', '--table', 'posts']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^strata: invalid option "database"/);
  });
});

describe.skipIf(!services.postgres)('strata partitions on PostgreSQL', () => {
  let testDb: PostgresTestDatabase;

  beforeAll(async () => {
    testDb = await createPostgresTestDatabase({ prefix: 'strata_cli_partitions' });
    const db = createPostgresDriver(testDb.url);
    try {
      const events = createTimePartitioning(db, {
        table: 'events',
        column: 'at',
        period: 'month',
        premake: 1,
      });
      await events.migrate('id bigint generated always as identity, at timestamptz not null, kind text');
      await events.insert({ at: new Date(), kind: 'now' });
      await events.insert({ at: new Date(Date.UTC(2031, 6, 4)), kind: 'far future' });
    } finally {
      await db.close();
    }
  });
  afterAll(async () => {
    await testDb?.drop();
  });

  it('status shows the row waiting in the default partition, maintain moves it out', async () => {
    const before = await runCli(['partitions', 'status', '--database', testDb.url, '--table', 'events']);
    expect(before.code, before.stderr).toBe(0);
    expect(before.stdout).toContain('native partitions, one per month, by at (timestamptz)');
    expect(before.stdout).toMatch(/events_default\s+\(default\)\s+1\s+.*rows outside any partition/);
    expect(before.stdout).toMatch(new RegExp(`events_${month(0)}\\s+\\S+\\s+\\S+\\s+1\\s`));

    const maintain = await runCli(['partitions', 'maintain', '--database', testDb.url, '--table', 'events']);
    expect(maintain.code, maintain.stderr).toBe(0);
    expect(maintain.stdout).toMatch(/created\s+.*events_p2031_07/);
    expect(maintain.stdout).toMatch(/moved from default\s+1 row\n/);
    expect(maintain.stdout).toMatch(/events_default\s+\(default\)\s+0\s/);

    const db = createPostgresDriver(testDb.url);
    try {
      const { rows } = await db.query<{ part: string }>(
        sql`select tableoid::regclass::text as part from events where kind = 'far future'`,
      );
      expect(rows[0]!.part).toBe('events_p2031_07');
    } finally {
      await db.close();
    }

    const again = await runCli([
      'partitions',
      'maintain',
      '--database',
      testDb.url,
      '--table',
      'events',
      '--json',
    ]);
    expect(again.code, again.stderr).toBe(0);
    const parsed = JSON.parse(again.stdout) as { report: { created: string[]; movedFromDefault: number } };
    expect(parsed.report).toMatchObject({ created: [], movedFromDefault: 0 });
  });

  it('a table that is not partitioned is a usage error', async () => {
    const result = await runCli(['partitions', 'status', '--database', testDb.url, '--table', 'pg_missing']);
    expect(result.code).toBe(2);
    expect(lines(result.stderr)).toHaveLength(1);
    expect(result.stderr).toMatch(/^strata: invalid option "table"/);
  });
});
