import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { createSqliteChangeLog } from '../backends/sqlite/sqlite-change-log.js';
import {
  createSqliteChangeCapture,
  type SqliteChangeCapture,
} from '../backends/sqlite/sqlite-change-source.js';
import { createSqliteDriver, type SqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import type { ChangeLog } from '../core/changes.js';
import { sql } from '../core/sql.js';
import { type ChaosChangeLog, chaosChangeLog } from '../testing/chaos.js';
import { createRelay, type Relay } from './relay.js';

async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('relay (SQLite capture to the embedded log)', () => {
  let dir: ReturnType<typeof tempDir>;
  let db: SqliteDriver;
  let capture: SqliteChangeCapture;
  let inner: ChangeLog;
  let log: ChaosChangeLog;
  let relay: Relay;
  const errors: unknown[] = [];

  beforeEach(async () => {
    dir = tempDir('strata-relay-');
    db = createSqliteDriver(join(dir.path, 'app.db'));
    await db.exec('create table items (id integer primary key, v integer not null)');
    capture = createSqliteChangeCapture(db, { source: 'app', tables: ['items'], pollInterval: '20ms' });
    await capture.install();
    inner = createSqliteChangeLog({ filename: join(dir.path, 'log.db') });
    log = chaosChangeLog(inner);
    relay = createRelay({
      source: capture,
      log,
      backoff: { initialDelay: 5, maxDelay: 20 },
      onError: (e) => errors.push(e),
    });
  });

  afterEach(async () => {
    await relay.stop();
    await inner.close();
    await db.close();
    dir.remove();
  });

  const write = (id: number, v: number) =>
    db.query(
      sql`insert into items (id, v) values (${id}, ${v}) on conflict (id) do update set v = excluded.v`,
    );

  it('moves committed changes into the log and acknowledges them at the source', async () => {
    await relay.start();
    for (let i = 1; i <= 50; i++) await write(i % 5, i);
    await until(async () => (await inner.head()) === 50 && (await capture.pending()) === 0, 'the relay');
    expect(relay.stats()).toMatchObject({ relayed: 50, failures: 0, status: 'running', lastOffset: 50 });
  });

  it('backs off while the log fails and acknowledges nothing until it accepts', async () => {
    log.failAppends(4);
    await relay.start();
    await write(1, 1);
    await write(2, 2);
    await until(() => log.appendAttempts >= 3, 'a few failed attempts');
    expect(await capture.pending()).toBe(2);
    expect(await inner.head()).toBe(0);
    await until(async () => (await inner.head()) === 2 && (await capture.pending()) === 0, 'recovery');
    expect(relay.stats().failures).toBe(4);
    expect(errors).toHaveLength(4);
    expect(relay.stats().lastErrorCode).toBe('E_CONNECTION');
  });

  it('acknowledges only after the append resolved', async () => {
    const release = log.stallNextAppend();
    await relay.start();
    await write(1, 1);
    await until(() => log.appendAttempts === 1, 'the append to start');
    await new Promise((r) => setTimeout(r, 50));
    expect(await capture.pending()).toBe(1);
    release();
    await until(async () => (await capture.pending()) === 0, 'the acknowledgement');
    expect(await inner.head()).toBe(1);
  });

  it('keeps an outage-long backlog and delivers all of it in order when the log returns', async () => {
    log.down();
    await relay.start();
    for (let i = 1; i <= 200; i++) await write(i % 10, i);
    await until(() => relay.stats().failures >= 3, 'failures');
    expect(relay.stats().status).toBe('backing-off');
    log.up();
    await until(async () => (await inner.head()) === 200, 'the backlog');
    const entries = await inner.read(0, 500);
    const perKey = new Map<number, number[]>();
    for (const e of entries)
      perKey.set(e.key.id as number, [...(perKey.get(e.key.id as number) ?? []), e.after!.v as number]);
    for (const values of perKey.values()) expect(values).toEqual([...values].sort((a, b) => a - b));
  });
});
