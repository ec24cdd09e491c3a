import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { env, runCliInProcess, services, tempDir } from '../../test/helpers.js';
import { createSqliteChangeLog } from '../backends/sqlite/sqlite-change-log.js';
import { createSqliteChangeCapture } from '../backends/sqlite/sqlite-change-source.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { createSqliteReplica } from '../backends/sqlite/sqlite-replica.js';
import { createRelay } from '../changes/relay.js';
import type { ReplicaSetStats } from '../replication/replica-set.js';
import { formatLag } from './replicas.js';

const cli = (args: string[]) => runCliInProcess(['replicas', ...args]);

const dirs: Array<{ remove: () => void }> = [];
afterAll(() => {
  for (const d of dirs) d.remove();
});

describe.skipIf(!services.pgReplicas)('strata replicas status on PostgreSQL', () => {
  it('lists the streaming replicas with their state, lag and replay position', async () => {
    const [one, two] = env.postgresReplicaUrls;
    // A generous bound: the replica set spec may delay these standbys by a second or two meanwhile.
    const result = await cli([
      'status',
      '--primary',
      env.postgresUrl,
      '--replica',
      `replica_1=${one}`,
      '--replica',
      two!,
      '--max-lag',
      '1m',
    ]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const lines = result.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^primary postgres:\S+: up, position [0-9A-F]+\/[0-9A-F]+$/);
    expect(lines[2]).toMatch(/^replica\s+state\s+lag\s+lag \(s\)\s+replay position\s+error$/);
    expect(lines[3]).toMatch(/^replica_1\s+healthy\s+\d+(\.\d)? k?B\s+\d+\.\d\ds\s+[0-9A-F]+\/[0-9A-F]+$/);
    expect(lines[4]).toMatch(/^127\.0\.0\.1:\d+\s+healthy\s/);
  });

  it('prints JSON and exits 1 when a replica does not answer', async () => {
    const result = await cli([
      'status',
      '--primary',
      env.postgresUrl,
      '--replica',
      env.postgresReplicaUrls[0]!,
      '--replica',
      'gone=postgres://postgres@127.0.0.1:1/postgres',
      '--timeout',
      '2s',
      '--max-lag',
      '1m',
      '--json',
    ]);
    expect(result.code).toBe(1);
    const stats = JSON.parse(result.stdout) as ReplicaSetStats;
    expect(stats.kind).toBe('postgres-wal');
    expect(stats.replicas.map((r) => [r.name, r.state])).toEqual([
      ['127.0.0.1:5441', 'healthy'],
      ['gone', 'down'],
    ]);
    expect(stats.replicas[1]!.lastErrorCode).toBe('E_CONNECTION');
  });
});

describe('strata replicas status on SQLite', () => {
  it('reads the positions of the embedded replicas', async () => {
    const dir = tempDir('strata-cli-replicas-');
    dirs.push(dir);
    const primary = createSqliteDriver(join(dir.path, 'app.db'));
    await primary.exec('create table notes (id integer primary key, body text)');
    const capture = createSqliteChangeCapture(primary, {
      source: 'app',
      tables: ['notes'],
      pollInterval: '20ms',
    });
    const log = createSqliteChangeLog({ filename: join(dir.path, 'log.db') });
    const relay = createRelay({ source: capture, log });
    await relay.start();
    const replica = createSqliteReplica({
      filename: join(dir.path, 'replica.db'),
      log,
      source: 'app',
      schema: 'create table notes (id integer primary key, body text)',
      pollInterval: '20ms',
    });
    try {
      await replica.start();
      for (let i = 0; i < 3; i++) await primary.query('insert into notes (body) values (?)', [`n${i}`]);
      const deadline = Date.now() + 10_000;
      while ((await log.head()) < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      await replica.caughtUp();
      const result = await cli([
        'status',
        '--primary',
        `sqlite:${join(dir.path, 'app.db')}`,
        '--replica',
        `sqlite:${join(dir.path, 'replica.db')}`,
      ]);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/^primary sqlite:app\.db: up, position 3\n/);
      expect(result.stdout).toMatch(/\nreplica\.db\s+healthy\s+0 changes\s+0\.00s\s+3\s*\n/);
    } finally {
      await replica.close();
      await relay.stop();
      await log.close();
      await primary.close();
    }
  });

  it('refuses bad flags with E_CONFIG (exit 2) naming the flag', async () => {
    const noReplica = await cli(['status', '--primary', 'postgres://127.0.0.1:1/x']);
    expect(noReplica.code).toBe(2);
    expect(noReplica.stderr).toContain('"replica"');
    const mixed = await cli(['status', '--primary', 'postgres://127.0.0.1:1/x', '--replica', 'sqlite:r.db']);
    expect(mixed.code).toBe(2);
    expect(mixed.stderr).toContain('same engine');
    const unknown = await cli(['status', '--primary', 'mysql://x', '--replica', 'mysql://y']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('"primary"');
    const lag = await cli([
      'status',
      '--primary',
      'postgres://a/x',
      '--replica',
      'postgres://b/y',
      '--max-lag',
      'soon',
    ]);
    expect(lag.stderr).toContain('"max-lag"');
  });

  it('formats lag for people', () => {
    expect(formatLag(undefined, 'bytes')).toBe('-');
    expect(formatLag(512, 'bytes')).toBe('512 B');
    expect(formatLag(12_345, 'bytes')).toBe('12.3 kB');
    expect(formatLag(4_500_000, 'bytes')).toBe('4.5 MB');
    expect(formatLag(1, 'changes')).toBe('1 change');
    expect(formatLag(7, 'changes')).toBe('7 changes');
  });
});
