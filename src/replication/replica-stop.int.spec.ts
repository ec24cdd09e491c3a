/**
 * A real stop of a PostgreSQL streaming replica in the middle of a read load. The standbys that
 * scripts/services.sh keeps on 5441 and 5442 are shared by spec files running in parallel, so this
 * file makes a private standby of the main cluster (`scripts/services.sh pg-replica NAME PORT`:
 * pg_basebackup and a physical slot) on a free port, stops it with `pg_ctlcluster ... stop -m
 * immediate`, starts it again, and always drops it afterwards.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, services, uniqueName } from '../../test/helpers.js';
import { createPostgresDriver, type PostgresDriver } from '../backends/postgres/postgres-driver.js';
import { postgresWalPosition } from '../backends/postgres/postgres-replication.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../backends/postgres/postgres-test-database.js';
import { createReplicaSet, type ReplicaSet } from './replica-set.js';

const run = promisify(execFile);
const servicesScript = fileURLToPath(new URL('../../scripts/services.sh', import.meta.url));
const PREFIX = 'stopspec';

/**
 * The PostgreSQL major version of the local cluster that serves the test primary (from
 * `pg_lsclusters`, the way scripts/services.sh manages it), or why a private standby cannot be made.
 */
function localCluster(): { version: string } | { missing: string } {
  if (process.getuid?.() !== 0) return { missing: 'root (creating a cluster needs it)' };
  const port = Number(new URL(env.postgresUrl).port || 5432);
  let listing: string;
  try {
    listing = execFileSync('pg_lsclusters', ['-h'], { encoding: 'utf8' });
  } catch {
    return { missing: 'pg_lsclusters (postgresql-common)' };
  }
  const version =
    process.env.STRATA_PG_VERSION ??
    listing
      .split('\n')
      .map((line) => line.trim().split(/\s+/))
      .find((cols) => Number(cols[2]) === port)?.[0];
  if (version === undefined) return { missing: `a local cluster serving port ${port} (pg_lsclusters)` };
  const tools = ['/usr/bin/pg_ctlcluster', `/usr/lib/postgresql/${version}/bin/pg_basebackup`];
  const absent = tools.filter((tool) => !existsSync(tool));
  if (absent.length > 0) return { missing: absent.join(', ') };
  return { version };
}

const cluster = services.postgres && services.pgReplicas ? localCluster() : undefined;
if (cluster !== undefined && 'missing' in cluster) {
  console.warn(
    `\n!!! strata: SKIPPING the real replica stop test: missing ${cluster.missing}; run scripts/services.sh as root\n`,
  );
}
const version = cluster !== undefined && 'version' in cluster ? cluster.version : undefined;

/** A TCP port nobody listens on right now. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address !== null
          ? resolve(address.port)
          : reject(new Error('no port')),
      );
    });
  });
}

/** Polls `condition` every 20 ms; fails after `timeoutMs` instead of waiting forever. */
async function until(
  condition: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await condition()) return;
    } catch {
      // Not there yet (a standby still starting up, a row not replayed yet).
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function onPort(url: string, database: string, port?: number): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  if (port !== undefined) {
    u.hostname = '127.0.0.1';
    u.port = String(port);
  }
  return u.toString();
}

/** Runs scripts/services.sh with the cluster's version; rejects with its output when it fails. */
async function servicesSh(...args: string[]): Promise<string> {
  const { stdout } = await run('bash', [servicesScript, ...args], {
    env: { ...process.env, STRATA_PG_VERSION: version },
    timeout: 120_000,
  });
  return stdout;
}

function pgCtlCluster(name: string, ...action: string[]): Promise<unknown> {
  return run('pg_ctlcluster', ['--skip-systemctl-redirect', version!, name, ...action], { timeout: 60_000 });
}

/** Drops private standbys a killed run of this file left behind (their worker process is gone). */
async function dropLeftovers(): Promise<void> {
  const listing = execFileSync('pg_lsclusters', ['-h'], { encoding: 'utf8' });
  for (const line of listing.split('\n')) {
    const [v, name] = line.trim().split(/\s+/);
    const match = new RegExp(`^${PREFIX}_(\\d+)_[a-z0-9]+$`).exec(name ?? '');
    if (v !== version || match === null) continue;
    let alive = true;
    try {
      process.kill(Number(match[1]), 0);
    } catch (err) {
      alive = (err as NodeJS.ErrnoException).code !== 'ESRCH';
    }
    if (!alive) await servicesSh('pg-replica-drop', name!);
  }
}

describe.skipIf(version === undefined)('a streaming replica stopped for real under a read load', () => {
  const name = uniqueName(PREFIX);
  let port: number;
  let created = false;
  let db: PostgresTestDatabase | undefined;
  let primary: PostgresDriver;
  let privateReplica: PostgresDriver;
  let shared: PostgresDriver;
  const drivers: PostgresDriver[] = [];
  let set: ReplicaSet | undefined;
  let seedId: number;

  function driver(url: string, maxConnections = 20): PostgresDriver {
    const d = createPostgresDriver({
      url,
      maxConnections,
      connectTimeout: '1s',
      onBackgroundError: () => undefined,
    });
    drivers.push(d);
    return d;
  }

  beforeAll(async () => {
    await dropLeftovers();
    // The database, its table and a row exist before the base backup, so the standby has them.
    db = await createPostgresTestDatabase({ prefix: 'strata_replica_stop' });
    primary = driver(db.url, 30);
    await primary.exec(
      'create table notes (id bigserial primary key, author text not null, body text not null)',
    );
    seedId = (
      await primary.query<{ id: number }>(
        `insert into notes (author, body) values ('seed', 'read me') returning id`,
      )
    ).rows[0]!.id;
    port = await freePort();
    created = true;
    await servicesSh('pg-replica', name, String(port));
    privateReplica = driver(onPort(env.postgresUrl, db.name, port));
    shared = driver(onPort(env.postgresReplicaUrls[1]!, db.name));
    for (const replica of [privateReplica, shared]) {
      await until(
        async () => (await replica.query('select 1 from notes where id = $1', [seedId])).rowCount === 1,
        'the seed row on both standbys',
      );
    }
  }, 180_000);

  afterAll(async () => {
    try {
      await set?.close();
      for (const d of drivers) await d.close();
      await db?.drop();
    } finally {
      if (created) await servicesSh('pg-replica-drop', name);
    }
  }, 180_000);

  it('loses no read and no session write while the replica is down, and takes it back after it restarts', async () => {
    const s = createReplicaSet({
      primary,
      replicas: [
        { name: 'private', driver: privateReplica },
        { name: 'replica_2', driver: shared },
      ],
      position: postgresWalPosition(),
      health: { interval: '100ms', failures: 2 },
      session: { wait: '1s' },
    });
    set = s;
    const stats = await s.refresh();
    expect(stats.replicas.map((r) => r.state)).toEqual(['healthy', 'healthy']);

    let reads = 0;
    let failed = 0;
    let wrong = 0;
    const failures: unknown[] = [];
    let running = true;
    const load = Promise.all(
      Array.from({ length: 16 }, async () => {
        while (running) {
          try {
            const r = await s.read<{ body: string }>('select body from notes where id = $1', {
              params: [seedId],
              consistency: 'eventual',
            });
            if (r.rows[0]?.body !== 'read me') wrong++;
          } catch (err) {
            failed++;
            failures.push(err);
          }
          reads++;
        }
      }),
    );

    /** Writes a note and reads it back with its token; true when the read saw it. */
    const writeThenRead = async (i: number): Promise<{ seen: boolean; token: string; node: string }> => {
      const { rows, token } = await s.query<{ id: number }>(
        'insert into notes (author, body) values ($1, $2) returning id',
        ['outage', `during ${i}`],
      );
      const read = await s.read(
        async (exec, info) => ({
          node: info.node,
          rows: (await exec.query<{ body: string }>('select body from notes where id = $1', [rows[0]!.id]))
            .rows,
        }),
        { consistency: { session: token } },
      );
      return { seen: read.rows[0]?.body === `during ${i}`, token, node: read.node };
    };

    let lastToken = '';
    const outageReads: Array<{ seen: boolean; node: string }> = [];
    try {
      await until(() => s.stats().replicas[0]!.reads > 200, 'the private replica serving reads');
      await pgCtlCluster(name, 'stop', '-m', 'immediate');
      await until(() => s.stats().replicas[0]!.state === 'down', 'the private replica marked down');
      expect(s.stats().replicas[0]!.lastErrorCode).toBe('E_CONNECTION');

      const readsWhileDown = reads;
      for (let i = 0; i < 50; i++) {
        const r = await writeThenRead(i);
        outageReads.push(r);
        lastToken = r.token;
      }
      await until(() => reads > readsWhileDown + 500, 'reads while the private replica is down');
      const servedBeforeRestart = s.stats().replicas[0]!.reads;

      await pgCtlCluster(name, 'start');
      await until(
        () => s.stats().replicas[0]!.state === 'healthy',
        'the private replica back in the rotation',
      );
      await until(
        () => s.stats().replicas[0]!.reads > servedBeforeRestart + 100,
        'the private replica serving reads again',
      );
    } finally {
      running = false;
      await load;
    }

    expect(failures).toEqual([]);
    expect(failed).toBe(0);
    expect(wrong).toBe(0);
    expect(outageReads.filter((r) => !r.seen)).toEqual([]);
    expect(outageReads.some((r) => r.node === 'private')).toBe(false);

    // The restarted standby replayed what the primary wrote while it was down.
    const target = s.parseToken(lastToken);
    await until(async () => {
      const applied = await privateReplica.query<{ lsn: string }>(
        'select pg_last_wal_replay_lsn()::text as lsn',
      );
      return postgresWalPosition().parse(applied.rows[0]!.lsn) >= target;
    }, 'the private replica to replay the writes made while it was down');
    const during = await privateReplica.query<{ n: number }>(
      `select count(*)::int as n from notes where author = 'outage'`,
    );
    expect(during.rows[0]!.n).toBe(50);

    const after = s.stats();
    expect(after.replicas[0]!.errors + after.replicas[0]!.failedProbes).toBeGreaterThan(0);
    console.info(
      `replication: ${reads} reads across a real replica stop, ${failed} failed, ` +
        `${after.reads.retries} retried elsewhere, 50 session write-then-reads during the outage`,
    );
  });
});
