import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { inspect } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../../test/helpers.js';
import { isStrataError } from '../../core/errors.js';
import { hostPort } from '../../testing/environment.js';
import { describeKeyValueStoreConformance } from '../../testing/kv-store-conformance.js';
import { createRedisStore, type RedisStore, type RedisStoreOptions } from './redis-store.js';

const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';
const base = `${uniqueName('strata_kv')}:`;

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
  limitMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Starts a private redis-server on `port`; resolves once it accepts connections. */
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

/** A TCP server that accepts connections and never answers. */
async function blackhole(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

/**
 * A TCP proxy to the test Redis that records what the client sends and can hold the server's
 * replies: while held, only commands sent without waiting for a reply reach the server.
 */
async function holdingProxy(): Promise<{
  url: string;
  sent: () => string;
  hold: () => void;
  release: () => void;
  close: () => Promise<void>;
}> {
  const target = hostPort(env.redisUrl, 6379);
  let sent = '';
  let held = false;
  const queued: (() => void)[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = tcpConnect(target.port, target.host);
    sockets.add(client).add(upstream);
    client.on('data', (chunk: Buffer) => {
      sent += chunk.toString('latin1');
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (held) queued.push(() => client.write(chunk));
      else client.write(chunk);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = new URL(env.redisUrl);
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as { port: number }).port);
  return {
    url: url.toString(),
    sent: () => sent,
    hold: () => {
      held = true;
    },
    release: () => {
      held = false;
      for (const write of queued.splice(0)) write();
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

function count(text: string, pattern: RegExp): number {
  return text.match(pattern)?.length ?? 0;
}

function expectNoSecret(err: unknown, secret: string): void {
  expect((err as Error).message).not.toContain(secret);
  expect(JSON.stringify((err as { details?: unknown }).details)).not.toContain(secret);
  expect(JSON.stringify(err)).not.toContain(secret);
  expect(inspect(err, { depth: 5 })).not.toContain(secret);
}

describe.skipIf(!services.redis)('redis store on the test server', () => {
  describeKeyValueStoreConformance(
    'redis',
    ({ prefix, defaultTtl }) =>
      createRedisStore({ url: env.redisUrl, prefix: `${base}own:${prefix}`, defaultTtl }),
    {
      teardown: async () => {
        const all = createRedisStore({ url: env.redisUrl, prefix: `${base}own:` });
        await all.clear();
        await all.close();
      },
    },
  );

  const userClient = new Redis(env.redisUrl, { lazyConnect: true });
  describeKeyValueStoreConformance(
    "redis on the user's own client",
    ({ prefix, defaultTtl }) =>
      createRedisStore({ client: userClient, prefix: `${base}user:${prefix}`, defaultTtl }),
    {
      teardown: async () => {
        // The suite closed every store; the user's client must still work.
        expect(await userClient.ping()).toBe('PONG');
        const all = createRedisStore({ client: userClient, prefix: `${base}user:` });
        await all.clear();
        await userClient.quit();
      },
    },
  );

  describe('redis store', () => {
    const stores: RedisStore[] = [];
    const open = (options: Partial<RedisStoreOptions> = {}) => {
      const store = createRedisStore({ url: env.redisUrl, prefix: `${base}spec:`, ...options });
      stores.push(store);
      return store;
    };

    afterAll(async () => {
      const all = createRedisStore({ url: env.redisUrl, prefix: base });
      await all.clear();
      await all.close();
      for (const store of stores) await store.close();
    });

    it('stores keys as prefix + key, verbatim', async () => {
      const store = open({ prefix: `${base}layout:` });
      await store.set('user:1', 'alice', { ttl: '1m' });
      const raw = new Redis(env.redisUrl);
      expect(await raw.get(`${base}layout:user:1`)).toBe('alice');
      const pttl = await raw.pttl(`${base}layout:user:1`);
      expect(pttl).toBeGreaterThan(0);
      expect(pttl).toBeLessThanOrEqual(60_000);
      await raw.quit();
    });

    it('sends getMany as one MGET and setMany as one pipelined round trip', async () => {
      const proxy = await holdingProxy();
      const store = open({ url: proxy.url, prefix: `${base}roundtrip:` });
      try {
        await store.connect();
        const keys = Array.from({ length: 50 }, (_, i) => `rt${i}`);

        proxy.hold();
        let mark = proxy.sent().length;
        const written = store.setMany(
          keys.map((key, i) => ({ key, value: `v${i}`, ttl: i % 2 ? '1m' : undefined })),
        );
        // With the replies held back, every SET reaches the server only if none waited for a reply.
        await until(() => count(proxy.sent().slice(mark), /\$3\r\nset\r\n/gi) === keys.length, 'all SETs');
        proxy.release();
        await written;

        proxy.hold();
        mark = proxy.sent().length;
        const read = store.getMany(keys);
        await until(() => count(proxy.sent().slice(mark), /\$4\r\nmget\r\n/gi) === 1, 'one MGET');
        expect(count(proxy.sent().slice(mark), /\$3\r\nget\r\n/gi)).toBe(0);
        proxy.release();
        expect(await read).toEqual(keys.map((_, i) => `v${i}`));

        mark = proxy.sent().length;
        expect(await store.deleteMany(keys)).toBe(keys.length);
        expect(count(proxy.sent().slice(mark), /\$6\r\nunlink\r\n/gi)).toBe(1);
      } finally {
        proxy.release();
        await store.close();
        await proxy.close();
      }
    });

    it('reports a server reply error (WRONGTYPE) as E_QUERY with the reply code, without the value', async () => {
      const raw = new Redis(env.redisUrl);
      await raw.lpush(`${base}wrong:list`, 'secret-list-item');
      const store = open({ prefix: `${base}wrong:` });
      const err = await store.get('list').catch((e: unknown) => e);
      expect(isStrataError(err, 'E_QUERY')).toBe(true);
      expect(err).toMatchObject({ details: { backend: 'redis', reply: 'WRONGTYPE', operation: 'get' } });
      expectNoSecret(err, 'secret-list-item');
      const many = await store.getMany(['list']);
      expect(many).toEqual([undefined]);
      await raw.quit();
    });

    it("leaves the user's own client open on close", async () => {
      const raw = new Redis(env.redisUrl);
      const store = createRedisStore({ client: raw, prefix: `${base}user-close:` });
      await store.set('k', 'v');
      await store.close();
      await store.close();
      expect(await raw.ping()).toBe('PONG');
      expect(await raw.get(`${base}user-close:k`)).toBe('v');
      await raw.del(`${base}user-close:k`);
      await raw.quit();
    });
  });
});

describe('redis store without a server', () => {
  it('fails with E_CONNECTION naming host and port when the port is closed', async () => {
    const port = await freePort();
    const store = createRedisStore({ url: `redis://127.0.0.1:${port}`, prefix: 'p:', connectTimeout: '1s' });
    for (const call of [() => store.get('k'), () => store.set('k', 'v'), () => store.connect()]) {
      const err = await settlesWithin(call(), 3_000);
      expect(err).toMatchObject({ code: 'E_CONNECTION', backend: 'redis', host: '127.0.0.1', port });
      expect((err as Error).message).toContain(`127.0.0.1:${port}`);
    }
    await store.close();
  });

  it('never reveals the password of the URL', async () => {
    const port = await freePort();
    for (const url of [
      `redis://:supersecret@127.0.0.1:${port}`,
      `redis://alice:supersecret@127.0.0.1:${port}/2`,
    ]) {
      const store = createRedisStore({ url, prefix: 'p:', connectTimeout: '1s' });
      const err = await settlesWithin(store.get('k'), 3_000);
      expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
      expectNoSecret(err, 'supersecret');
      await store.close();
    }
    let config: unknown;
    try {
      createRedisStore({ url: 'redis://:supersecret@[not-a-host', prefix: 'p:' });
    } catch (e) {
      config = e;
    }
    expect(config).toMatchObject({ code: 'E_CONFIG', option: 'url' });
    expectNoSecret(config, 'supersecret');
  });

  it('rejects within the bound when the server accepts but never answers', async () => {
    const hole = await blackhole();
    const store = createRedisStore({
      url: `redis://127.0.0.1:${hole.port}`,
      prefix: 'p:',
      connectTimeout: '1s',
      commandTimeout: '300ms',
    });
    try {
      for (const call of [() => store.get('k'), () => store.getMany(['a', 'b']), () => store.connect()]) {
        const err = await settlesWithin(call(), 4_000);
        expect(isStrataError(err)).toBe(true);
        expect(['E_CONNECTION', 'E_TIMEOUT']).toContain((err as { code: string }).code);
      }
    } finally {
      await store.close();
      await hole.close();
    }
  });

  it('rejects invalid options at construction time with E_CONFIG naming the option', () => {
    const cases: [unknown, string][] = [
      [undefined, 'prefix'],
      [{}, 'prefix'],
      [{ prefix: '' }, 'prefix'],
      [{ prefix: 42 }, 'prefix'],
      [{ prefix: 'p:', commandTimeout: -1 }, 'commandTimeout'],
      [{ prefix: 'p:', commandTimeout: '-1s' }, 'commandTimeout'],
      [{ prefix: 'p:', commandTimeout: 0 }, 'commandTimeout'],
      [{ prefix: 'p:', connectTimeout: '5 parsecs' }, 'connectTimeout'],
      [{ prefix: 'p:', defaultTtl: 'abc' }, 'defaultTtl'],
      [{ prefix: 'p:', defaultTtl: '-1s' }, 'defaultTtl'],
      [{ prefix: 'p:', maxKeyLength: 0 }, 'maxKeyLength'],
      [{ prefix: 'p:', url: 'http://127.0.0.1:6379' }, 'url'],
      [{ prefix: 'p:', url: 'not a url' }, 'url'],
      [{ prefix: 'p:', url: 'redis://127.0.0.1', client: new Redis({ lazyConnect: true }) }, 'url'],
      [{ prefix: 'p:', client: {} }, 'client'],
      [{ prefix: 'p:', name: '' }, 'name'],
    ];
    for (const [options, option] of cases) {
      let err: unknown;
      try {
        createRedisStore(options as RedisStoreOptions);
      } catch (e) {
        err = e;
      }
      expect(err, option).toMatchObject({ code: 'E_CONFIG', option });
    }
  });
});

describe.skipIf(!existsSync(REDIS_SERVER))('redis store on a private server that dies', () => {
  const dir = tempDir('strata-redis-');
  const children: ChildProcess[] = [];
  const start = async (port: number, extra: string[] = []) => {
    const child = await startRedisServer(port, dir.path, extra);
    children.push(child);
    return child;
  };

  afterAll(async () => {
    for (const child of children) await kill(child);
    dir.remove();
  });

  const timeouts = { connectTimeout: '1s', commandTimeout: '500ms' } as const;
  // Generous hang guard: a call must settle within connectTimeout + commandTimeout plus slack.
  const BOUND = 5_000;

  it('fails every call fast while the server is down, and recovers on the same store after a restart', async () => {
    const port = await freePort();
    let server = await start(port);
    const store = createRedisStore({ url: `redis://127.0.0.1:${port}`, prefix: 'kill:', ...timeouts });
    try {
      await store.set('k', 'before');
      expect(await store.get('k')).toBe('before');

      const inflight = Array.from({ length: 100 }, (_, i) => store.set(`k${i}`, 'v'));
      await kill(server);
      const outcomes = await settlesWithin(Promise.allSettled(inflight), BOUND);
      for (const outcome of outcomes as PromiseSettledResult<void>[]) {
        if (outcome.status === 'rejected') {
          expect(['E_CONNECTION', 'E_TIMEOUT']).toContain((outcome.reason as { code: string }).code);
        }
      }

      const calls: (() => Promise<unknown>)[] = [
        () => store.get('k'),
        () => store.getMany(['k', 'k2']),
        () => store.set('k', 'v'),
        () => store.setMany([{ key: 'k', value: 'v' }]),
        () => store.delete('k'),
        () => store.deleteMany(['k']),
        () => store.has('k'),
        () => store.ttl('k'),
        () => store.clear(),
        () => store.connect(),
      ];
      for (const call of calls) {
        const err = await settlesWithin(call(), BOUND);
        expect(isStrataError(err)).toBe(true);
        expect(['E_CONNECTION', 'E_TIMEOUT']).toContain((err as { code: string }).code);
      }

      server = await start(port);
      await until(
        () =>
          store.set('k', 'after').then(
            () => true,
            () => false,
          ),
        'the store to reconnect',
      );
      expect(await store.get('k')).toBe('after');
    } finally {
      await store.close();
      await kill(server);
    }
  });

  it('starts a fresh connection on the next call once it has given up reconnecting', async () => {
    const port = await freePort();
    let server = await start(port);
    const store = createRedisStore({ url: `redis://127.0.0.1:${port}`, prefix: 'end:', ...timeouts });
    try {
      await store.set('k', 'v');
      await kill(server);
      const own = store.client as Redis;
      await until(() => own.status === 'end', 'ioredis to give up reconnecting', 20_000);
      const down = await settlesWithin(store.get('k'), BOUND);
      expect(isStrataError(down, 'E_CONNECTION')).toBe(true);
      server = await start(port);
      await until(
        () =>
          store.set('k', 'again').then(
            () => true,
            () => false,
          ),
        'the store to reconnect',
      );
      expect(await store.get('k')).toBe('again');
    } finally {
      await store.close();
      await kill(server);
    }
  });

  it('reports a refused password as E_CONNECTION "authentication failed" without the password', async () => {
    const port = await freePort();
    const server = await start(port, ['--requirepass', 'right-password']);
    try {
      for (const url of [`redis://127.0.0.1:${port}`, `redis://:wrong-password@127.0.0.1:${port}`]) {
        const store = createRedisStore({ url, prefix: 'auth:', ...timeouts });
        const err = await settlesWithin(store.get('k'), BOUND);
        expect(err).toMatchObject({ code: 'E_CONNECTION', details: { reason: 'authentication failed' } });
        expectNoSecret(err, 'wrong-password');
        await store.close();
      }
      const store = createRedisStore({ url: `redis://:right-password@127.0.0.1:${port}`, prefix: 'auth:' });
      await store.set('k', 'v');
      expect(await store.get('k')).toBe('v');
      await store.close();
    } finally {
      await kill(server);
    }
  });
});
