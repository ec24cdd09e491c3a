import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../../test/helpers.js';
import { type Change, makePosition } from '../../core/changes.js';
import { isStrataError } from '../../core/errors.js';
import { describeChangeLogConformance, sampleChange } from '../../testing/change-log-conformance.js';
import {
  createRedisChangeLog,
  type RedisChangeLog,
  type RedisChangeLogClientLike,
  type RedisChangeLogOptions,
} from './redis-change-log.js';

const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';
const base = `${uniqueName('strata_rcl')}:`;

/** The rejection of `promise`, or a failure when it resolves. */
async function rejectionOf(promise: Promise<unknown>): Promise<Record<string, unknown>> {
  try {
    await promise;
  } catch (err) {
    return err as Record<string, unknown>;
  }
  throw new Error('expected a rejection');
}

/** The value or rejection of `promise`; fails the test if it does not settle within `ms` (a hang guard). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        (v) => v,
        (e: unknown) => e,
      ),
      guard,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `condition` until it holds; throws after `limitMs`. */
async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  limitMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A TCP port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

/** Starts a private redis-server on `port` (settings first, `extra` overriding them); resolves once it accepts connections. */
async function startRedisServer(port: number, dir: string, extra: string[] = []): Promise<ChildProcess> {
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
      'no',
      '--dir',
      dir,
      ...extra,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
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

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

function positions(source: string, ns: number[]) {
  return ns.map((n) => makePosition(source, BigInt(1000 + n)));
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Removes the keys of the log under `prefix`. */
async function dropLog(raw: Redis, prefix: string): Promise<void> {
  await raw.del(`${prefix}log`, `${prefix}offset`, `${prefix}sources`);
}

describe.skipIf(!services.redis)('redis change log', () => {
  const admin = new Redis(env.redisUrl, { lazyConnect: true });

  afterAll(async () => {
    let cursor = '0';
    do {
      const [next, keys] = await admin.scan(cursor, 'MATCH', `${base}*`, 'COUNT', 500);
      if (keys.length > 0) await admin.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    await admin.quit();
  });

  describeChangeLogConformance(
    'redis',
    ({ name }) => createRedisChangeLog({ url: env.redisUrl, prefix: `${base}${name}:` }),
    { cleanup: ({ name }) => dropLog(admin, `${base}${name}:`) },
  );

  describe("on the user's own client", () => {
    const user = new Redis(env.redisUrl, { lazyConnect: true });
    afterAll(async () => {
      // The suite closed every log; the user's client must still work.
      expect(await user.ping()).toBe('PONG');
      await user.quit();
    });
    describeChangeLogConformance(
      'redis on a shared client',
      ({ name }) => createRedisChangeLog({ client: user, prefix: `${base}user:${name}:` }),
      { cleanup: ({ name }) => dropLog(admin, `${base}user:${name}:`) },
    );
  });

  describe('behaviour', () => {
    const logs: RedisChangeLog[] = [];
    const open = (label: string, options: Partial<RedisChangeLogOptions> = {}) => {
      const log = createRedisChangeLog({ url: env.redisUrl, prefix: `${base}${label}:`, ...options });
      logs.push(log);
      return log;
    };

    afterAll(async () => {
      for (const log of logs) await log.close();
    });

    it('stores entries with the ids <offset>-1 and readable fields, the counter and the sources hash', async () => {
      const log = open('layout');
      await log.append([
        sampleChange('one', 1, 'users'),
        sampleChange('two', 1, 'posts'),
        sampleChange('one', 2),
      ]);
      const prefix = `${base}layout:`;
      expect(log.streamKey).toBe(`${prefix}log`);
      const entries = await admin.xrange(`${prefix}log`, '-', '+');
      expect(entries.map(([id]) => id)).toEqual(['1-1', '2-1', '3-1']);
      const [, fields] = entries[1]!;
      expect(fields.slice(0, 6)).toEqual([
        'source',
        'two',
        'table',
        'posts',
        'position',
        positions('two', [1])[0],
      ]);
      expect(fields[6]).toBe('payload');
      expect(JSON.parse(fields[7]!)).toMatchObject({ source: 'two', table: 'posts', op: 'insert' });
      expect(await admin.get(`${prefix}offset`)).toBe('3');
      expect(await admin.hgetall(`${prefix}sources`)).toEqual({
        one: positions('one', [2])[0],
        two: positions('two', [1])[0],
      });
    });

    it('compares positions byte by byte, across digit and letter hex digits', async () => {
      const log = open('order');
      const at = (major: number) =>
        sampleChange('src', 0, 'users', major, { position: makePosition('src', major) });
      expect(await log.append([at(0x9), at(0xa), at(0x3f), at(0x40)])).toMatchObject({ appended: 4 });
      expect(await log.append([at(0xa), at(0xf), at(0x40), at(0x41)])).toEqual({
        appended: 1,
        duplicates: 3,
        lastOffset: 5,
      });
      expect((await log.read(0, 10)).map((e) => e.key)).toEqual(
        [0x9, 0xa, 0x3f, 0x40, 0x41].map((id) => ({ id })),
      );
    });

    it('trims to about maxLength entries while offsets, head and the skip of old positions stay exact', async () => {
      const log = open('trim', { maxLength: 10 });
      for (let i = 0; i < 3; i++) {
        await log.append(range(i * 100 + 1, i * 100 + 100).map((n) => sampleChange('src', n)));
      }
      const length = await admin.xlen(log.streamKey);
      expect(length).toBeLessThan(300);
      expect(length).toBeGreaterThanOrEqual(10);
      expect(await log.head()).toBe(300);
      const entries = await log.read(0, 1_000);
      expect(entries).toHaveLength(length);
      expect(entries.map((e) => e.offset)).toEqual(range(301 - length, 300));
      expect(await log.append(range(1, 300).map((n) => sampleChange('src', n)))).toEqual({
        appended: 0,
        duplicates: 300,
        lastOffset: 300,
      });
    });

    it('reads in chunks when a table filter is sparse, up to the limit', async () => {
      const log = open('sparse');
      await log.append(range(1, 2_500).map((n) => sampleChange('src', n, n % 500 === 0 ? 'rare' : 'common')));
      const rare = await log.read(0, 100, { tables: ['rare', 'none'] });
      expect(rare.map((e) => e.offset)).toEqual([500, 1000, 1500, 2000, 2500]);
      expect((await log.read(600, 2, { tables: ['rare'] })).map((e) => e.offset)).toEqual([1000, 1500]);
      expect(await log.read(0, 10, { tables: [] })).toEqual([]);
      expect((await log.read(0, 2_000)).map((e) => e.offset)).toEqual(range(1, 2_000));
    });

    it('lets two relays of the same source race without storing a position twice or skipping one', async () => {
      const a = open('race');
      const b = open('race');
      const relay = async (log: RedisChangeLog, batches: number[][]) => {
        const results = [];
        for (const ns of batches) results.push(await log.append(ns.map((n) => sampleChange('src', n))));
        return results;
      };
      const results = (
        await Promise.all([
          relay(a, [range(1, 8), range(9, 12), range(13, 20)]),
          relay(b, [range(1, 3), range(4, 10), range(11, 17), range(18, 20)]),
        ])
      ).flat();
      const entries = await a.read(0, 100);
      expect(entries.map((e) => e.position)).toEqual(positions('src', range(1, 20)));
      expect(entries.map((e) => e.offset)).toEqual(range(1, 20));
      expect(results.reduce((sum, r) => sum + r.appended, 0)).toBe(20);
      expect(await b.lastPosition('src')).toBe(positions('src', [20])[0]);
    });

    it('rejects malformed changes with E_VALIDATION and appends nothing of the batch', async () => {
      const log = open('malformed');
      const err = await rejectionOf(
        log.append([
          sampleChange('src', 1),
          { ...sampleChange('src', 2), position: 'nope' } as unknown as Change,
          { ...sampleChange('src', 3), source: 'other' },
          { ...sampleChange('src', 4), table: '' },
          null as unknown as Change,
        ]),
      );
      expect(err).toMatchObject({
        code: 'E_VALIDATION',
        issues: [{ path: [1, 'position'] }, { path: [2, 'source'] }, { path: [3, 'table'] }, { path: [4] }],
      });
      expect(await log.head()).toBe(0);
      expect(await admin.exists(log.streamKey)).toBe(0);
      for (const [call, option] of [
        [() => log.read(-1, 1), 'after'],
        [() => log.read(0, 0), 'limit'],
        [() => log.lastPosition('bad name'), 'source'],
      ] as const) {
        expect(await rejectionOf(call())).toMatchObject({ code: 'E_CONFIG', option });
      }
    });

    it('wakes a watcher when another instance appends, and not after it stopped', async () => {
      const a = open('watch');
      const b = open('watch', { pollInterval: '1h' });
      let woken = 0;
      const stop = b.watch(() => {
        woken++;
      });
      await until(() => woken === 1, 'the watch to be in place');
      woken = 0;
      await a.append([sampleChange('src', 1)]);
      await until(() => woken > 0, 'a wake-up from the blocking read');
      woken = 0;
      await a.append([sampleChange('src', 2)]);
      await until(() => woken > 0, 'a second wake-up');
      stop();
      woken = 0;
      await a.append([sampleChange('src', 3)]);
      expect(await b.head()).toBe(3);
      await new Promise((resolve) => setImmediate(resolve));
      expect(woken).toBe(0);
    });

    it('polls when the client cannot open a blocking connection', async () => {
      const raw = new Redis(env.redisUrl);
      // Only the methods of the structural type, without `duplicate`.
      const client: RedisChangeLogClientLike = {
        evalsha: (...args) => raw.evalsha(...args),
        eval: (...args) => raw.eval(...args),
        xrange: (...args) => raw.xrange(...args),
        get: (key) => raw.get(key),
        hget: (key, field) => raw.hget(key, field),
      };
      const prefix = `${base}poll:`;
      const log = createRedisChangeLog({ client, prefix, pollInterval: '50ms' });
      const writer = open('poll');
      let woken = 0;
      const stop = log.watch(() => {
        woken++;
      });
      await until(() => woken === 1, 'the watch to be in place');
      woken = 0;
      await writer.append([sampleChange('src', 1)]);
      await until(() => woken > 0, 'a wake-up from polling');
      stop();
      await log.close();
      expect(await raw.ping()).toBe('PONG');
      await raw.quit();
    });

    it("leaves the user's own client open on close", async () => {
      const raw = new Redis(env.redisUrl);
      const log = createRedisChangeLog({ client: raw, prefix: `${base}userclose:` });
      await log.append([sampleChange('src', 1)]);
      const stop = log.watch(() => undefined);
      await log.close();
      await log.close();
      stop();
      expect(await raw.ping()).toBe('PONG');
      expect(await raw.get(`${base}userclose:offset`)).toBe('1');
      expect(isStrataError(await rejectionOf(log.head()), 'E_CLOSED')).toBe(true);
      await raw.quit();
    });
  });
});

describe('redis change log options', () => {
  it('rejects invalid options at construction time with E_CONFIG naming the option', () => {
    const cases: [unknown, string][] = [
      [undefined, 'prefix'],
      [{}, 'prefix'],
      [{ prefix: '' }, 'prefix'],
      [{ prefix: 7 }, 'prefix'],
      [{ prefix: 'p:', maxLength: 0 }, 'maxLength'],
      [{ prefix: 'p:', maxLength: 1.5 }, 'maxLength'],
      [{ prefix: 'p:', connectTimeout: '5 parsecs' }, 'connectTimeout'],
      [{ prefix: 'p:', commandTimeout: 0 }, 'commandTimeout'],
      [{ prefix: 'p:', pollInterval: '-1s' }, 'pollInterval'],
      [{ prefix: 'p:', name: '' }, 'name'],
      [{ prefix: 'p:', url: 'http://127.0.0.1:6379' }, 'url'],
      [{ prefix: 'p:', url: 'redis://127.0.0.1', client: new Redis({ lazyConnect: true }) }, 'url'],
      [{ prefix: 'p:', client: { get: () => undefined } }, 'client'],
    ];
    for (const [options, option] of cases) {
      let err: unknown;
      try {
        createRedisChangeLog(options as RedisChangeLogOptions);
      } catch (e) {
        err = e;
      }
      expect(err, option).toMatchObject({ code: 'E_CONFIG', option });
    }
  });

  it('fails with E_CONNECTION naming host and port within the bound when no server listens', async () => {
    const port = await freePort();
    const log = createRedisChangeLog({
      url: `redis://127.0.0.1:${port}`,
      prefix: 'p:',
      connectTimeout: '1s',
    });
    for (const call of [() => log.append([sampleChange('src', 1)]), () => log.read(0, 1), () => log.head()]) {
      expect(await settlesWithin(call(), 5_000)).toMatchObject({
        code: 'E_CONNECTION',
        host: '127.0.0.1',
        port,
      });
    }
    await log.close();
  });
});

describe.skipIf(!existsSync(REDIS_SERVER))('redis change log on a private server that dies', () => {
  const dir = tempDir('strata-rcl-');
  const children: ChildProcess[] = [];
  // Durable appends: every write reaches the append-only file before Redis replies.
  const durable = ['--appendonly', 'yes', '--appendfsync', 'always'];
  const start = async (port: number) => {
    const child = await startRedisServer(port, dir.path, durable);
    children.push(child);
    return child;
  };

  afterAll(async () => {
    for (const child of children) await kill(child);
    dir.remove();
  });

  it('rejects appends within the bound while the server is down, then appends and reads again, losing nothing', async () => {
    const port = await freePort();
    let server = await start(port);
    const options = {
      url: `redis://127.0.0.1:${port}`,
      prefix: 'faults:',
      connectTimeout: '1s',
      commandTimeout: '500ms',
      pollInterval: '200ms',
    } as const;
    const log = createRedisChangeLog(options);
    const other = createRedisChangeLog(options);
    try {
      await log.append(range(1, 3).map((n) => sampleChange('src', n)));
      let woken = 0;
      const stop = log.watch(() => {
        woken++;
      });
      await until(() => woken > 0, 'the watch to be in place');

      await kill(server);
      for (const call of [
        () => log.append([sampleChange('src', 4)]),
        () => log.read(0, 10),
        () => log.head(),
      ]) {
        const err = await settlesWithin(call(), 5_000);
        expect(isStrataError(err)).toBe(true);
        expect(['E_CONNECTION', 'E_TIMEOUT']).toContain((err as { code: string }).code);
      }

      // The restarted server has an empty script cache: the next append falls back from EVALSHA to EVAL.
      server = await start(port);
      await until(
        () =>
          log.append(range(4, 5).map((n) => sampleChange('src', n))).then(
            () => true,
            () => false,
          ),
        'the log to append again',
      );
      const entries = await log.read(0, 100);
      expect(entries.map((e) => e.position)).toEqual(positions('src', range(1, 5)));
      expect(entries.map((e) => e.offset)).toEqual(range(1, 5));
      expect(await log.lastPosition('src')).toBe(positions('src', [5])[0]);

      woken = 0;
      await until(
        () =>
          other.append([sampleChange('src', 6)]).then(
            () => true,
            () => false,
          ),
        'the other instance to append again',
      );
      await until(() => woken > 0, 'a wake-up after the restart');
      stop();
      expect(await log.head()).toBe(6);
    } finally {
      await log.close();
      await other.close();
      await kill(server);
    }
  });

  it('appends through EVAL after the script cache was flushed', async () => {
    const port = await freePort();
    const server = await start(port);
    const log = createRedisChangeLog({ url: `redis://127.0.0.1:${port}`, prefix: 'flush:' });
    const raw = new Redis(`redis://127.0.0.1:${port}`);
    try {
      await log.append([sampleChange('src', 1)]);
      expect(await raw.call('SCRIPT', 'FLUSH')).toBe('OK');
      expect(await log.append([sampleChange('src', 2)])).toEqual({
        appended: 1,
        duplicates: 0,
        lastOffset: 2,
      });
      expect(await log.head()).toBe(2);
    } finally {
      await raw.quit();
      await log.close();
      await kill(server);
    }
  });
});
