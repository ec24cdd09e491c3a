/**
 * Durable write-behind queues on their real engines: the SQLite queue on files, the Redis queue
 * on the shared test server (a stream key per test). Both pass one conformance suite, then an
 * engine on each recovers every acknowledged write after being abandoned mid-flight.
 */
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../test/helpers.js';
import {
  createRedisWriteBehindQueue,
  type RedisWriteBehindClientLike,
} from '../backends/redis/redis-write-behind-queue.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { createSqliteWriteBehindQueue } from '../backends/sqlite/sqlite-write-behind-queue.js';
import { isStrataError } from '../core/errors.js';
import { sql } from '../core/sql.js';
import type { WriteBehindQueue, WriteBehindRecord } from '../core/write-behind-queue.js';
import { createWriteBehind, type WriteBehindItem } from './write-behind.js';

const dir = tempDir('strata-write-behind-');
afterAll(() => dir.remove());

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

/** Opens the queue named `id`; opening the same id again reaches the same stored queue. */
type OpenQueue = (id: string) => WriteBehindQueue;

const record = (key: string, value: string | null, version: number): WriteBehindRecord => ({
  key,
  value,
  version,
});

/** The conformance suite of the write-behind queue role, run against each durable backend. */
function describeQueueConformance(backend: string, open: OpenQueue, skip = false): void {
  describe.skipIf(skip)(`${backend} write-behind queue conformance`, () => {
    const opened: WriteBehindQueue[] = [];
    const fresh = (id = uniqueName('q')) => {
      const queue = open(id);
      opened.push(queue);
      return queue;
    };
    afterAll(async () => {
      for (const queue of opened) await queue.close();
    });

    it('starts empty, at version 0', async () => {
      const queue = fresh();
      expect(await queue.lastVersion()).toBe(0);
      expect(await queue.load()).toEqual([]);
      await queue.append([]);
      expect(await queue.lastVersion()).toBe(0);
    });

    it('loads appended records in version order, values and deletes as appended', async () => {
      const queue = fresh();
      const first = [record('a', '{"n":1}', 5), record('b', null, 6), record('é 🙂', '', 7)];
      await queue.append(first);
      await queue.append([record('c', 'x'.repeat(10_000), 9)]);
      expect(await queue.load()).toEqual([...first, record('c', 'x'.repeat(10_000), 9)]);
      expect(await queue.lastVersion()).toBe(9);
    });

    it('forgets acknowledged records only, and keeps the last version after forgetting everything', async () => {
      const queue = fresh();
      await queue.append([record('a', '1', 10), record('b', '2', 20), record('c', '3', 30)]);
      await queue.acknowledge(19);
      expect(await queue.load()).toEqual([record('b', '2', 20), record('c', '3', 30)]);
      await queue.acknowledge(20);
      expect(await queue.load()).toEqual([record('c', '3', 30)]);
      await queue.acknowledge(5);
      expect(await queue.load()).toEqual([record('c', '3', 30)]);
      await queue.acknowledge(1_000);
      expect(await queue.load()).toEqual([]);
      expect(await queue.lastVersion()).toBe(30);
    });

    it('returns at least the newest record of each key, in version order', async () => {
      const queue = fresh();
      const appended = [
        record('a', '1', 1),
        record('b', '1', 2),
        record('a', '2', 3),
        record('a', null, 4),
        record('c', '1', 5),
        record('b', '2', 6),
      ];
      await queue.append(appended.slice(0, 3));
      await queue.append(appended.slice(3));
      const loaded = await queue.load();
      const versions = loaded.map((r) => r.version);
      expect(versions).toEqual([...versions].sort((x, y) => x - y));
      for (const r of loaded) expect(appended).toContainEqual(r);
      const newest = new Map(loaded.map((r) => [r.key, r]));
      expect([...newest.values()].sort((x, y) => x.version - y.version)).toEqual([
        record('a', null, 4),
        record('c', '1', 5),
        record('b', '2', 6),
      ]);
    });

    it('loads a long queue completely', async () => {
      const queue = fresh();
      const records = Array.from({ length: 2_500 }, (_, i) => record(`k${i}`, String(i), i + 1));
      await queue.append(records.slice(0, 1_200));
      await queue.append(records.slice(1_200));
      expect(await queue.load()).toEqual(records);
    });

    it('refuses versions not above the last one with E_CONFLICT, storing nothing', async () => {
      const queue = fresh();
      await queue.append([record('a', '1', 100)]);
      await queue.acknowledge(100);
      const err = await rejectionOf(queue.append([record('b', '1', 100), record('c', '1', 101)]));
      expect(isStrataError(err, 'E_CONFLICT')).toBe(true);
      expect(isStrataError(await rejectionOf(queue.append([record('b', '1', 50)])), 'E_CONFLICT')).toBe(true);
      expect(await queue.load()).toEqual([]);
      expect(await queue.lastVersion()).toBe(100);
      await queue.append([record('b', '1', 101)]);
      expect(await queue.load()).toEqual([record('b', '1', 101)]);
    });

    it('refuses malformed records with E_VALIDATION, storing nothing', async () => {
      const queue = fresh();
      for (const bad of [
        [record('a', '1', 2), record('b', '1', 1)],
        [record('a', '1', 0)],
        [record('a', '1', 1.5)],
        [{ key: 5, value: '1', version: 1 }],
        [{ key: 'a', value: 5, version: 1 }],
        'records',
      ]) {
        const err = await rejectionOf(queue.append(bad as unknown as WriteBehindRecord[]));
        expect(isStrataError(err, 'E_VALIDATION')).toBe(true);
      }
      expect(isStrataError(await rejectionOf(queue.acknowledge(-1)), 'E_VALIDATION')).toBe(true);
      expect(await queue.load()).toEqual([]);
      expect(await queue.lastVersion()).toBe(0);
    });

    it('keeps records and the last version across instances', async () => {
      const id = uniqueName('q');
      const first = open(id);
      await first.append([record('a', '1', 7), record('b', null, 8)]);
      await first.close();
      const second = open(id);
      expect(await second.load()).toEqual([record('a', '1', 7), record('b', null, 8)]);
      await second.acknowledge(8);
      await second.close();
      const third = fresh(id);
      expect(await third.load()).toEqual([]);
      expect(await third.lastVersion()).toBe(8);
      expect(isStrataError(await rejectionOf(third.append([record('c', '1', 8)])), 'E_CONFLICT')).toBe(true);
    });

    it('refuses every call after close() with E_CLOSED; close() twice is fine', async () => {
      const queue = open(uniqueName('q'));
      await queue.lastVersion();
      await queue.close();
      await queue.close();
      for (const call of [
        () => queue.append([record('a', '1', 1)]),
        () => queue.load(),
        () => queue.lastVersion(),
        () => queue.acknowledge(1),
      ]) {
        expect(isStrataError(await rejectionOf(call()), 'E_CLOSED')).toBe(true);
      }
    });
  });
}

/** An in-memory store that applies an item only if its version is newer, and can be stalled. */
function createStore() {
  const rows = new Map<string, { value: unknown; version: number }>();
  let stalled = false;
  return {
    rows,
    stall() {
      stalled = true;
    },
    async writeBatch(items: WriteBehindItem<unknown>[]): Promise<void> {
      if (stalled) await new Promise<never>(() => undefined);
      for (const item of items) {
        const current = rows.get(item.key);
        if (current === undefined || current.version < item.version) {
          rows.set(item.key, { value: item.value, version: item.version });
        }
      }
    },
  };
}

/** Recovery of an engine abandoned with acknowledged writes stuck behind a stalled store. */
function describeEngineRecovery(backend: string, open: OpenQueue, skip = false): void {
  describe.skipIf(skip)(`write-behind on a ${backend} queue`, () => {
    it('a new engine on the queue writes every acknowledged write, newest per key', async () => {
      const id = uniqueName('engine');
      const firstQueue = open(id);
      const stalled = createStore();
      stalled.stall();
      const crashed = createWriteBehind({
        writeBatch: (items) => stalled.writeBatch(items),
        queue: firstQueue,
        maxBatch: 20,
      });
      const expected = new Map<string, unknown>();
      let lastVersion = 0;
      for (let round = 0; round < 10; round++) {
        // Writes of one turn share an append; each is acknowledged once that append committed.
        const writes = Array.from({ length: 40 }, (_, i) => {
          const key = `k${(round * 7 + i) % 30}`;
          if (i % 13 === 12) {
            expected.set(key, undefined);
            return crashed.delete(key);
          }
          const value = { round, i };
          expected.set(key, value);
          return crashed.set(key, value);
        });
        lastVersion = Math.max(lastVersion, ...(await Promise.all(writes)));
      }
      // Abandoned without close(): the stalled batch never finished, nothing was acknowledged.
      expect(crashed.stats().inFlight).toBeGreaterThan(0);

      const queue = open(id);
      const store = createStore();
      const recovered = createWriteBehind({ writeBatch: (items) => store.writeBatch(items), queue });
      await recovered.flush();
      expect(new Map([...store.rows].map(([key, row]) => [key, row.value]))).toEqual(expected);
      expect(recovered.stats().recovered).toBe(expected.size);
      expect(await recovered.set('after', 1)).toBeGreaterThan(lastVersion);
      await recovered.close();
      expect(await queue.load()).toEqual([]);
      await queue.close();
      await firstQueue.close();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// SQLite

const sqliteFile = (id: string) => join(dir.path, `${id}.db`);
const openSqlite: OpenQueue = (id) => createSqliteWriteBehindQueue({ filename: sqliteFile(id) });

describeQueueConformance('sqlite', openSqlite);
describeEngineRecovery('sqlite', openSqlite);

describe('createSqliteWriteBehindQueue', () => {
  it('refuses bad options with E_CONFIG naming the option', () => {
    const driver = createSqliteDriver(':memory:');
    const cases: Array<[string, Record<string, unknown>]> = [
      ['filename', {}],
      ['filename', { filename: sqliteFile('x'), driver }],
      ['table', { filename: sqliteFile('x'), table: 'bad name' }],
      ['synchronous', { filename: sqliteFile('x'), synchronous: 'off' }],
      ['synchronous', { driver, synchronous: 'full' }],
      ['busyTimeout', { filename: sqliteFile('x'), busyTimeout: 'soon' }],
      ['driver', { driver: {} }],
      ['name', { filename: sqliteFile('x'), name: '' }],
    ];
    for (const [option, options] of cases) {
      let caught: unknown;
      try {
        createSqliteWriteBehindQueue(options);
      } catch (err) {
        caught = err;
      }
      expect(isStrataError(caught, 'E_CONFIG'), option).toBe(true);
      expect((caught as { option: string }).option).toBe(option);
    }
  });

  it("puts its table in a caller's database and leaves the caller's connection open", async () => {
    const driver = createSqliteDriver(sqliteFile(uniqueName('shared')));
    const queue = createSqliteWriteBehindQueue({ driver, table: 'likes_queue' });
    await queue.append([record('a', '1', 3)]);
    const { rows } = await driver.query(sql`select key, value, version from ${sql.id('likes_queue')}`);
    expect(rows).toEqual([{ key: 'a', value: '1', version: 3 }]);
    await queue.close();
    expect(driver.closed).toBe(false);
    await driver.close();
  });

  it('fails with E_CONNECTION naming the file when it cannot be opened', () => {
    let caught: unknown;
    try {
      createSqliteWriteBehindQueue({ filename: join(dir.path, 'missing', 'dir', 'queue.db') });
    } catch (err) {
      caught = err;
    }
    expect(isStrataError(caught, 'E_CONNECTION')).toBe(true);
  });

  it('writes each group of writes in one transaction', async () => {
    const id = uniqueName('group');
    const driver = createSqliteDriver(sqliteFile(id));
    const transaction = driver.transaction.bind(driver);
    let transactions = 0;
    driver.transaction = (fn, options) => {
      transactions++;
      return transaction(fn, options);
    };
    const queue = createSqliteWriteBehindQueue({ driver, table: 'wb' });
    const store = createStore();
    const wb = createWriteBehind({ writeBatch: (items) => store.writeBatch(items), queue, flushEvery: '1h' });
    await wb.set('warm', 0);
    transactions = 0;
    await Promise.all(Array.from({ length: 200 }, (_, i) => wb.set(`k${i % 10}`, i)));
    expect(transactions).toBe(1);
    const { rows } = await driver.query<{ n: number }>('select count(*) as n from wb');
    expect(rows[0]?.n).toBe(201);
    await wb.close();
    await queue.close();
    await driver.close();
    for (const suffix of ['', '-wal', '-shm']) rmSync(`${sqliteFile(id)}${suffix}`, { force: true });
  });
});

// ---------------------------------------------------------------------------------------------
// Redis

const redisPrefix = `${uniqueName('strata_wb')}:`;
const openRedis: OpenQueue = (id) =>
  createRedisWriteBehindQueue({ url: env.redisUrl, key: `${redisPrefix}${id}` });

describeQueueConformance('redis', openRedis, !services.redis);
describeEngineRecovery('redis', openRedis, !services.redis);

describe.skipIf(!services.redis)('createRedisWriteBehindQueue', () => {
  afterAll(async () => {
    const raw = new Redis(env.redisUrl);
    let cursor = '0';
    do {
      const [next, keys] = await raw.scan(cursor, 'MATCH', `${redisPrefix}*`, 'COUNT', 500);
      if (keys.length > 0) await raw.unlink(...keys);
      cursor = next;
    } while (cursor !== '0');
    await raw.quit();
  });

  it('refuses bad options with E_CONFIG naming the option', () => {
    const client = new Redis(env.redisUrl, { lazyConnect: true });
    const cases: Array<[string, Record<string, unknown>]> = [
      ['key', {}],
      ['key', { key: '' }],
      ['url', { key: 'k', url: 'http://127.0.0.1' }],
      ['url', { key: 'k', url: env.redisUrl, client }],
      ['client', { key: 'k', client: {} }],
      ['connectTimeout', { key: 'k', connectTimeout: 0 }],
      ['commandTimeout', { key: 'k', commandTimeout: 'later' }],
      ['name', { key: 'k', name: '' }],
    ];
    for (const [option, options] of cases) {
      let caught: unknown;
      try {
        createRedisWriteBehindQueue(options as never);
      } catch (err) {
        caught = err;
      }
      expect(isStrataError(caught, 'E_CONFIG'), option).toBe(true);
      expect((caught as { option: string }).option).toBe(option);
    }
    client.disconnect();
  });

  it("uses a caller's ioredis client and never quits it", async () => {
    const client = new Redis(env.redisUrl);
    const typed: RedisWriteBehindClientLike = client;
    const key = `${redisPrefix}own`;
    const queue = createRedisWriteBehindQueue({ client: typed, key });
    await queue.append([record('a', '1', 4), record('b', null, 5)]);
    expect(await client.xlen(key)).toBe(2);
    await queue.close();
    expect(await client.ping()).toBe('PONG');
    await client.quit();
  });

  it('fails with E_QUERY when the key holds something else than a stream', async () => {
    const raw = new Redis(env.redisUrl);
    const key = `${redisPrefix}string`;
    await raw.set(key, 'x');
    const queue = createRedisWriteBehindQueue({ url: env.redisUrl, key });
    expect(isStrataError(await rejectionOf(queue.append([record('a', '1', 1)])), 'E_QUERY')).toBe(true);
    expect(isStrataError(await rejectionOf(queue.load()), 'E_QUERY')).toBe(true);
    await queue.close();
    await raw.quit();
  });

  it('fails with E_CONNECTION within connectTimeout when the server is unreachable', async () => {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as { port: number };
    server.close();
    await once(server, 'close');
    const queue = createRedisWriteBehindQueue({
      url: `redis://127.0.0.1:${port}`,
      key: 'k',
      connectTimeout: '1s',
    });
    const err = await rejectionOf(queue.append([record('a', '1', 1)]));
    expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
    expect((err as Error).message).toContain(`127.0.0.1:${port}`);
    await queue.close();
  });
});
