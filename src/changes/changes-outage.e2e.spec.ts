/**
 * The production path under faults: PostgreSQL logical replication -> relay -> NATS JetStream
 * (a private server, stopped while changes flow) -> consumer; and the relay itself killed with
 * SIGKILL mid-stream. Nothing committed is lost, the slot's confirmed position does not move past
 * what the log holds, and order per key holds.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { services } from '../../test/helpers.js';
import { createNatsChangeLog } from '../backends/nats/nats-change-log.js';
import { createPostgresChangeCapture } from '../backends/postgres/postgres-change-source.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import type { LogEntry } from '../core/changes.js';
import { createRelay } from './relay.js';

const root = new URL('../../', import.meta.url).pathname;
const processes = new Set<ChildProcess>();
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterAll(async () => {
  for (const p of processes) p.kill('SIGKILL');
  for (const c of cleanups.reverse()) await c();
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function startNats(port: number, dir: string): Promise<ChildProcess> {
  const child = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], {
    stdio: 'ignore',
  });
  processes.add(child);
  await until(() => canConnect(port), 'nats-server');
  return child;
}

/** Reads the whole log in offset order. */
async function readAll(log: {
  read(after: number, limit: number): Promise<LogEntry[]>;
}): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for (;;) {
    const batch = await log.read(out.at(-1)?.offset ?? 0, 1000);
    if (batch.length === 0) return out;
    out.push(...batch);
  }
}

describe.skipIf(!services.postgres)('PostgreSQL -> relay -> NATS JetStream under faults', () => {
  it('backs off while NATS is down, keeps the slot where the log is, and loses nothing', async () => {
    const database = await createPostgresTestDatabase({ prefix: 'outage' });
    cleanups.push(() => database.drop());
    const admin = new pg.Client({ connectionString: database.url });
    admin.on('error', () => undefined);
    await admin.connect();
    cleanups.push(() => admin.end());
    await admin.query('create table items (id integer primary key, v integer not null)');

    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'strata-nats-outage-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    let nats = await startNats(port, dir);
    const log = await createNatsChangeLog({
      url: `nats://127.0.0.1:${port}`,
      name: 'outage',
      requestTimeout: '500ms',
      reconnectWait: '100ms',
    });
    cleanups.push(() => log.close());
    const capture = createPostgresChangeCapture({ url: database.url, source: 'outage', tables: ['items'] });
    cleanups.push(() => capture.drop().catch(() => undefined));
    const relay = createRelay({ source: capture, log, backoff: { initialDelay: 20, maxDelay: 200 } });
    await relay.start();
    cleanups.push(() => relay.stop());
    const confirmed = async () =>
      (
        await admin.query<{ lsn: string }>(
          `select confirmed_flush_lsn::text as lsn from pg_replication_slots where slot_name = $1`,
          [capture.slot],
        )
      ).rows[0]?.lsn;

    const write = async (from: number, to: number) => {
      for (let i = from; i <= to; i++) {
        await admin.query(
          'insert into items (id, v) values ($1, $2) on conflict (id) do update set v = excluded.v',
          [i % 50, i],
        );
      }
    };
    await write(1, 200);
    await until(async () => (await log.head()) >= 200, 'the first changes in NATS');

    // NATS goes away while changes keep coming.
    nats.kill('SIGKILL');
    await new Promise((r) => nats.once('exit', r));
    const slotAtOutage = await confirmed();
    await write(201, 600);
    await until(() => relay.stats().failures >= 3, 'the relay to back off');
    expect(relay.stats().status).toBe('backing-off');
    // Nothing new reached the log, so the slot must not have confirmed past it.
    expect(await confirmed()).toBe(slotAtOutage);

    nats = await startNats(port, dir);
    await until(
      async () => (await log.head().catch(() => 0)) >= 600,
      'everything once NATS is back',
      120_000,
    );
    const entries = await readAll(log);
    // Every committed change, once, in commit order per key.
    expect(entries.map((e) => e.after?.v as number)).toEqual(Array.from({ length: 600 }, (_, i) => i + 1));
    await until(async () => (await confirmed()) !== slotAtOutage, 'the slot to move again');
  });

  it('loses nothing when the relay process is killed with SIGKILL mid-stream', async () => {
    const database = await createPostgresTestDatabase({ prefix: 'relaykill' });
    cleanups.push(() => database.drop());
    const admin = new pg.Client({ connectionString: database.url });
    admin.on('error', () => undefined);
    await admin.connect();
    cleanups.push(() => admin.end());
    await admin.query('create table items (id integer primary key, v integer not null)');
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'strata-nats-relaykill-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    await startNats(port, dir);
    const logSpec = `nats://127.0.0.1:${port}#relaykill`;
    const startRelay = async () => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', join(root, 'test/fixtures/relay-worker.ts'), database.url, logSpec, 'items'],
        {
          cwd: root,
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      processes.add(child);
      await new Promise<void>((resolve, reject) => {
        createInterface({ input: child.stdout! }).on('line', (l) => l === 'ready' && resolve());
        child.once('exit', (code) => reject(new Error(`relay exited with ${code}`)));
      });
      return child;
    };
    let relay = await startRelay();
    const WRITES = 1_500;
    for (let i = 1; i <= WRITES; i++) {
      await admin.query(
        'insert into items (id, v) values ($1, $2) on conflict (id) do update set v = excluded.v',
        [i % 37, i],
      );
      if (i % 400 === 0) {
        relay.kill('SIGKILL');
        await new Promise((r) => relay.once('exit', r));
        processes.delete(relay);
        relay = await startRelay();
      }
    }
    const log = await createNatsChangeLog({ url: `nats://127.0.0.1:${port}`, name: 'relaykill' });
    cleanups.push(() => log.close());
    await until(async () => (await log.head()) >= WRITES, 'the relay to catch up', 120_000);
    const entries = await readAll(log);
    expect(entries.map((e) => e.after?.v as number)).toEqual(Array.from({ length: WRITES }, (_, i) => i + 1));
    relay.kill('SIGKILL');
    const drop = createPostgresChangeCapture({ url: database.url, source: 'app', tables: ['items'] });
    cleanups.push(() => drop.drop().catch(() => undefined));
  });
});
