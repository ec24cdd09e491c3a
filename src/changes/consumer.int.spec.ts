import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import type { Change, ChangeLog, LogEntry } from '../core/changes.js';
import { makePosition } from '../core/changes.js';
import { isStrataError, StrataError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import { describeChangeLogConformance, sampleChange } from '../testing/change-log-conformance.js';
import { createMemoryChangeLog } from '../testing/memory-change-log.js';
import { type Consumer, createConsumer } from './consumer.js';
import { createSqlCheckpointStore, type SqlCheckpointStore } from './sql-checkpoint-store.js';

describeChangeLogConformance('memory (strata/testing)', ({ name }) => createMemoryChangeLog({ name }));

const change = (n: number, id: number, table = 'users'): Change => sampleChange('src', n, table, id);

async function until(condition: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('consumer runtime', () => {
  let db: SqlDriver;
  let store: SqlCheckpointStore;
  let log: ChangeLog & { clear(): void };
  const consumers: Consumer[] = [];
  const consumer = (options: Partial<Parameters<typeof createConsumer>[0]>) => {
    const c = createConsumer({
      name: 'views',
      log,
      checkpoints: store,
      pollInterval: '50ms',
      retry: { attempts: 3, initialDelay: 5, maxDelay: 20 },
      ...options,
    } as Parameters<typeof createConsumer>[0]);
    consumers.push(c);
    return c;
  };

  beforeEach(async () => {
    db = createSqliteDriver(':memory:');
    store = createSqlCheckpointStore(db);
    await store.migrate();
    log = createMemoryChangeLog();
  });

  afterEach(async () => {
    for (const c of consumers.splice(0)) await c.stop();
    log.clear();
    await db.close();
  });

  it('delivers every change once, in log order per key, and checkpoints the head', async () => {
    await log.append(Array.from({ length: 200 }, (_, i) => change(i + 1, i % 7)));
    const seen = new Map<number, number[]>();
    const c = consumer({
      concurrency: 4,
      handle: async (entry) => {
        const id = entry.key.id as number;
        seen.set(id, [...(seen.get(id) ?? []), entry.offset]);
        await new Promise((r) => setTimeout(r, (entry.offset * 7) % 3));
      },
    });
    await c.start();
    await c.drained();
    const all = [...seen.values()].flat().sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    for (const offsets of seen.values()) expect(offsets).toEqual([...offsets].sort((a, b) => a - b));
    expect(c.stats()).toMatchObject({ checkpoint: 200, head: 200, lagChanges: 0, processed: 200 });
    expect(await store.load('views')).toMatchObject({ offset: 200 });
  });

  it('never runs two changes of one key at the same time', async () => {
    await log.append(Array.from({ length: 60 }, (_, i) => change(i + 1, i % 3)));
    const running = new Set<number>();
    let overlap = false;
    const c = consumer({
      concurrency: 8,
      handle: async (entry) => {
        const id = entry.key.id as number;
        if (running.has(id)) overlap = true;
        running.add(id);
        await new Promise((r) => setTimeout(r, 1));
        running.delete(id);
      },
    });
    await c.start();
    await c.drained();
    expect(overlap).toBe(false);
  });

  it('resumes from its checkpoint after a restart, without redelivering finished work', async () => {
    await log.append([1, 2, 3, 4, 5].map((n) => change(n, n)));
    const first: number[] = [];
    const a = consumer({ handle: (e) => void first.push(e.offset) });
    await a.start();
    await a.drained();
    await a.stop();
    await log.append([6, 7].map((n) => change(n, n)));
    const second: number[] = [];
    const b = consumer({ handle: (e) => void second.push(e.offset) });
    await b.start();
    await b.drained();
    expect(first).toEqual([1, 2, 3, 4, 5]);
    expect(second).toEqual([6, 7]);
  });

  it('retries a failing change, dead-letters it, and keeps other keys flowing meanwhile', async () => {
    await log.append([change(1, 1), change(2, 666), change(3, 2), change(4, 666), change(5, 3)]);
    const order: string[] = [];
    const attempts: number[] = [];
    const c = consumer({
      concurrency: 2,
      retry: { attempts: 3, initialDelay: 30, maxDelay: 30, jitter: false },
      handle: async (entry, ctx) => {
        if (entry.key.id === 666 && entry.offset === 2) {
          attempts.push(ctx.attempt);
          order.push(`fail ${entry.offset}`);
          throw new StrataError('E_HANDLER', 'view update failed');
        }
        order.push(`ok ${entry.offset}`);
      },
    });
    await c.start();
    await c.drained();
    expect(attempts).toEqual([1, 2, 3]);
    // Keys 2 and 3 (offsets 3, 5) were handled before the poison change gave up;
    // the same key's next change (offset 4) only after it.
    expect(order.indexOf('ok 3')).toBeLessThan(order.lastIndexOf('fail 2'));
    expect(order.indexOf('ok 5')).toBeLessThan(order.lastIndexOf('fail 2'));
    expect(order.indexOf('ok 4')).toBeGreaterThan(order.lastIndexOf('fail 2'));
    const letters = await store.deadLetters('views');
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({
      offset: 2,
      table: 'users',
      key: { id: 666 },
      attempts: 3,
      errorCode: 'E_HANDLER',
      errorMessage: 'view update failed',
    });
    expect(letters[0]!.entry.after).toEqual(change(2, 666).after);
    expect(c.stats()).toMatchObject({ deadLetters: 1, checkpoint: 5 });
  });

  it('does not copy a foreign error message into a dead letter', async () => {
    await log.append([change(1, 1)]);
    const c = consumer({
      retry: { attempts: 1 },
      handle: () => {
        throw new TypeError('secret value 4711 in message');
      },
    });
    await c.start();
    await c.drained();
    const [letter] = await store.deadLetters('views');
    expect(letter).toMatchObject({ errorCode: 'TypeError', errorMessage: 'handler failed' });
  });

  it('in batch mode isolates the failing key and finishes the rest of the batch', async () => {
    await log.append(Array.from({ length: 30 }, (_, i) => change(i + 1, i % 5)));
    const applied = new Set<number>();
    const batches: number[] = [];
    const c = consumer({
      batchSize: 50,
      retry: { attempts: 2, initialDelay: 1 },
      handleBatch: async (entries) => {
        batches.push(entries.length);
        if (entries.some((e) => e.offset === 12)) throw new Error('poison');
        for (const e of entries) applied.add(e.offset);
      },
    });
    await c.start();
    await c.drained();
    expect(batches[0]).toBe(30);
    const expected = Array.from({ length: 30 }, (_, i) => i + 1).filter((o) => o !== 12);
    expect([...applied].sort((a, b) => a - b)).toEqual(expected);
    expect((await store.deadLetters('views')).map((d) => d.offset)).toEqual([12]);
  });

  it('filters tables and still moves its checkpoint past other tables', async () => {
    await log.append([
      change(1, 1, 'users'),
      change(2, 1, 'posts'),
      change(3, 2, 'users'),
      change(4, 2, 'posts'),
    ]);
    const seen: string[] = [];
    const c = consumer({ tables: ['posts'], handle: (e) => void seen.push(`${e.table}:${e.offset}`) });
    await c.start();
    await c.drained();
    expect(seen).toEqual(['posts:2', 'posts:4']);
    await log.append([change(5, 3, 'users')]);
    await c.drained(5);
    expect(c.stats()).toMatchObject({ checkpoint: 5, lagChanges: 0 });
  });

  it('pauses and resumes', async () => {
    const seen: number[] = [];
    const c = consumer({ handle: (e) => void seen.push(e.offset) });
    await c.start();
    await log.append([change(1, 1)]);
    await c.drained(1);
    c.pause();
    await until(() => c.stats().status === 'paused', 'pause');
    await log.append([change(2, 2)]);
    await new Promise((r) => setTimeout(r, 150));
    expect(seen).toEqual([1]);
    c.resume();
    await c.drained(2);
    expect(seen).toEqual([1, 2]);
  });

  it('reports lag in changes and seconds while behind', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    await log.append([{ ...change(1, 1), commitTime: Date.now() - 5_000 }, change(2, 2)]);
    const c = consumer({ concurrency: 1, handle: () => gate });
    await c.start();
    await until(() => c.stats().inFlight === 1, 'the handler to start');
    const stats = c.stats();
    expect(stats.lagChanges).toBe(2);
    expect(stats.lagSeconds).toBeGreaterThanOrEqual(5);
    release();
    await c.drained();
    expect(c.stats()).toMatchObject({ lagChanges: 0, lagSeconds: 0 });
  });

  it('lets one of several processes with the same name work, and fails over when it stops', async () => {
    await log.append(Array.from({ length: 20 }, (_, i) => change(i + 1, i)));
    const byOwner = new Map<string, number[]>();
    const make = (owner: string) =>
      consumer({
        owner,
        lease: { ttl: '300ms' },
        handle: (e) => void byOwner.set(owner, [...(byOwner.get(owner) ?? []), e.offset]),
      });
    const a = make('a');
    await a.start();
    await a.drained();
    const b = make('b');
    await b.start();
    await until(() => b.stats().status === 'standby', 'b in standby');
    await log.append([21, 22].map((n) => change(n, n)));
    await a.drained(22);
    expect(byOwner.get('b')).toBeUndefined();
    await a.stop();
    await log.append([23, 24].map((n) => change(n, n)));
    await until(async () => (await store.load('views'))?.offset === 24, 'b to take over');
    expect(byOwner.get('a')).toEqual(Array.from({ length: 22 }, (_, i) => i + 1));
    expect(byOwner.get('b')).toEqual([23, 24]);
    expect(b.stats().epoch).toBeGreaterThan(1);
  });

  it('fences a former owner: its checkpoint writes fail with E_FENCED', async () => {
    const lease = await store.acquire('fenced', 'old', 50);
    expect(lease?.epoch).toBe(1);
    await store.save('fenced', 3, 1);
    await new Promise((r) => setTimeout(r, 60));
    const taken = await store.acquire('fenced', 'new', 10_000);
    expect(taken?.epoch).toBe(2);
    expect(await store.acquire('fenced', 'old', 50)).toBeUndefined();
    const err = await store.save('fenced', 9, 1).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_FENCED')).toBe(true);
    await store.save('fenced', 5, 2);
    await store.save('fenced', 4, 2);
    expect(await store.load('fenced')).toMatchObject({ offset: 5 });
  });

  it('rejects bad options at construction time', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ name: 'bad name!', handle: () => undefined }, 'name'],
      [{ name: 'x' }, 'handle'],
      [{ name: 'x', handle: () => undefined, handleBatch: () => undefined }, 'handle'],
      [{ name: 'x', handle: () => undefined, batchSize: 0 }, 'batchSize'],
      [{ name: 'x', handle: () => undefined, concurrency: -1 }, 'concurrency'],
      [{ name: 'x', handle: () => undefined, pollInterval: '-1s' }, 'pollInterval'],
      [{ name: 'x', handle: () => undefined, retry: { attempts: 0 } }, 'retry.attempts'],
    ];
    for (const [options, option] of cases) {
      expect(() => createConsumer({ log, checkpoints: store, ...options } as never)).toThrow(
        expect.objectContaining({ code: 'E_CONFIG', option }),
      );
    }
  });

  it('keeps dead letters readable and removable', async () => {
    const entry: LogEntry = { ...change(9, 9), offset: 9 };
    const letter = {
      consumer: 'views',
      offset: 9,
      table: 'users',
      key: { id: 9 },
      position: makePosition('src', 1009n),
      attempts: 5,
      errorCode: 'E_X',
      errorMessage: 'x',
      failedAt: 1,
      entry,
    };
    await store.deadLetter(letter);
    await store.deadLetter(letter);
    expect(await store.deadLetters('views')).toEqual([letter]);
    expect((await store.consumers()).find((c) => c.consumer === 'views')).toBeUndefined();
    expect(await store.removeDeadLetter('views', 9)).toBe(true);
    expect(await store.deadLetters('views')).toEqual([]);
  });
});
