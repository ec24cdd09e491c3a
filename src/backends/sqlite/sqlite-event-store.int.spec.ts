import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { raceTwoProcesses } from '../../../test/fixtures/event-store-race.js';
import { tempDir } from '../../../test/helpers.js';
import { createConsumer } from '../../changes/consumer.js';
import { createSqlCheckpointStore } from '../../changes/sql-checkpoint-store.js';
import type { LogEntry } from '../../core/changes.js';
import type { EventStore, RecordedEvent } from '../../events/types.js';
import { describeEventStoreConformance } from '../../testing/event-store-conformance.js';
import { createSqliteDriver } from './sqlite-driver.js';
import { createSqliteEventStore, type SqliteEventStoreOptions } from './sqlite-event-store.js';

async function until(condition: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const root = fileURLToPath(new URL('../../..', import.meta.url));
const dir = tempDir('strata-sqlite-events-');
const file = join(dir.path, 'events.db');
const driver = createSqliteDriver(file);
let prefixes = 0;
const stores: EventStore[] = [];

function store(options: Partial<SqliteEventStoreOptions> = {}): EventStore {
  const s = createSqliteEventStore({ driver, tablePrefix: `t${prefixes++}`, ...options });
  stores.push(s);
  return s;
}

describe('sqlite event store', () => {
  afterAll(async () => {
    for (const s of stores) await s.close();
    await driver.close();
    dir.remove();
  });

  describeEventStoreConformance('sqlite', (options) => createSqliteEventStore({ driver, ...options }));

  it('appends inside the caller transaction: committed with it, or rolled back with it', async () => {
    const s = store();
    await s.migrate();
    let woken = 0;
    const stop = s.watch(() => {
      woken++;
    });
    await expect(
      driver.transaction(async (tx) => {
        await s.append('tx-1', [{ type: 'A', data: {} }], { executor: tx });
        throw new Error('changed my mind');
      }),
    ).rejects.toThrow('changed my mind');
    expect(await s.streamInfo('tx-1')).toBeUndefined();
    expect(await s.head()).toBe(0);
    await driver.transaction(async (tx) => {
      await s.append('tx-1', [{ type: 'A', data: {} }], { executor: tx, expected: 'no_stream' });
      await s.append('tx-2', [{ type: 'B', data: {} }], { executor: tx, expected: 'no_stream' });
    });
    expect((await s.readAll(0, 10)).map((e) => e.stream)).toEqual(['tx-1', 'tx-2']);
    await until(() => woken > 0, 'the watcher');
    stop();
  });

  it('feeds the consumer runtime: catch-up, then live woken in process well before a 10s poll, with dead letters', async () => {
    const s = store();
    const checkpoints = createSqlCheckpointStore(driver, { tablePrefix: 'es_cp' });
    await checkpoints.migrate();
    for (let i = 0; i < 10; i++) {
      await s.append(`acct-${i % 3}`, [{ type: 'Deposited', data: { i, poison: i === 4 } }]);
    }
    const handled: LogEntry[] = [];
    const consumer = createConsumer({
      name: 'balances',
      log: s.asChangeLog(),
      checkpoints,
      pollInterval: '10s',
      retry: { attempts: 2, initialDelay: 5, maxDelay: 10 },
      handle: (entry) => {
        const event = entry.after as unknown as RecordedEvent;
        if (event.data.poison === true) throw new Error('cannot handle this one');
        handled.push(entry);
      },
    });
    await consumer.start();
    try {
      await until(() => handled.length === 9, 'the catch-up');
      await consumer.drained();
      const started = Date.now();
      await s.append('acct-9', [{ type: 'Deposited', data: { i: 10 } }]);
      await until(() => handled.length === 10, 'the live event', 5_000);
      expect(Date.now() - started).toBeLessThan(5_000);
      await consumer.drained();
      expect((await checkpoints.load('balances'))?.offset).toBe(await s.head());
      const letters = await checkpoints.deadLetters('balances');
      expect(letters.map((l) => l.entry.after)).toEqual([
        expect.objectContaining({ stream: 'acct-1', data: { i: 4, poison: true } }),
      ]);
    } finally {
      await consumer.stop();
    }
  });

  it('commits positions in order across processes: a reader never has to wait for a gap, and misses nothing', async () => {
    const s = store({ pollInterval: '20ms' });
    await s.migrate();
    const prefix = s.name.replace(/_events$/, '');
    let woken = 0;
    const stop = s.watch(() => {
      woken++;
    });
    const writers = ['left', 'middle', 'right'].map((stream) => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', join(root, 'test/fixtures/event-store-writer.ts'), file, prefix, stream, '150'],
        { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] },
      );
      const lines: string[] = [];
      createInterface({ input: child.stdout! }).on('line', (line) => lines.push(line));
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      return { child, lines, exited };
    });
    try {
      await until(() => writers.every((w) => w.lines.includes('ready')), 'the writers', 30_000);
      for (const w of writers) w.child.stdin!.write('go\n');
      let running = true;
      void Promise.all(writers.map((w) => w.exited)).then(() => {
        running = false;
      });
      const seen: RecordedEvent[] = [];
      let after = 0;
      for (;;) {
        const last = !running;
        const batch = await s.readAll(after, 50);
        seen.push(...batch);
        if (batch.length > 0) after = batch.at(-1)!.position;
        else if (last) break;
        // SQLite answers synchronously: let the child processes' events in.
        else await new Promise((r) => setTimeout(r, 1));
      }
      expect(await Promise.all(writers.map((w) => w.exited))).toEqual([0, 0, 0]);
      expect(seen).toHaveLength(450);
      expect(seen.map((e) => e.position)).toEqual(Array.from({ length: 450 }, (_, i) => i + 1));
      for (const stream of ['left', 'middle', 'right']) {
        expect(seen.filter((e) => e.stream === stream).map((e) => e.version)).toEqual(
          Array.from({ length: 150 }, (_, i) => i + 1),
        );
      }
      expect(woken).toBeGreaterThan(0);
    } finally {
      stop();
      for (const w of writers) if (w.child.exitCode === null) w.child.kill('SIGKILL');
    }
  }, 60_000);

  it('two processes racing on one stream with the same expected version: exactly one wins', async () => {
    const s = store();
    await s.append('race-1', [{ type: 'Started', data: {} }]);
    const prefix = s.name.replace(/_events$/, '');
    const outcomes = await raceTwoProcesses('sqlite', file, prefix, 'race-1', 1);
    expect(outcomes.filter((o) => o.ok)).toEqual([{ ok: true, version: 2 }]);
    expect(outcomes.filter((o) => !o.ok)).toEqual([
      { ok: false, code: 'E_VERSION_CONFLICT', details: { stream: 'race-1', expected: 1, actual: 2 } },
    ]);
    expect((await s.readStream('race-1')).map((e) => e.type)).toEqual(['Started', 'Raced']);
  }, 60_000);

  it('refuses a driver that is not a SQLite driver, and bad options, at construction', () => {
    for (const bad of [
      {},
      { driver: {} },
      { driver: { transaction() {}, onCommit() {}, dialect: { name: 'postgres' } } },
    ]) {
      expect(() => createSqliteEventStore(bad as unknown as SqliteEventStoreOptions)).toThrow(
        expect.objectContaining({ code: 'E_CONFIG', option: 'driver' }),
      );
    }
    expect(() => createSqliteEventStore({ driver, pollInterval: 0 })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'pollInterval' }),
    );
    expect(() => createSqliteEventStore({ driver, types: [{ type: 'A', version: 0 }] })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'types[0].version' }),
    );
  });
});
