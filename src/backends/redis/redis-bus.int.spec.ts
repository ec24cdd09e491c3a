import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../../test/helpers.js';
import { isStrataError } from '../../core/errors.js';
import { describeMessageBusConformance } from '../../testing/bus-conformance.js';
import { createRedisBus, type RedisBus, type RedisBusOptions } from './redis-bus.js';

const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server';
const base = `${uniqueName('strata_bus')}:`;

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
async function startRedisServer(port: number, dir: string): Promise<ChildProcess> {
  const child = spawn(
    REDIS_SERVER,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
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

describe.skipIf(!services.redis)('redis bus on the test server', () => {
  describeMessageBusConformance('redis', () =>
    createRedisBus({ url: env.redisUrl, channelPrefix: `${base}own:` }),
  );

  const userClient = new Redis(env.redisUrl, { lazyConnect: true });
  describeMessageBusConformance(
    "redis on the user's own client",
    () => createRedisBus({ client: userClient, channelPrefix: `${base}user:` }),
    {
      teardown: async () => {
        // The suite closed every bus; the user's client must still work, and not in subscriber mode.
        await userClient.set(`${base}user:check`, 'v');
        expect(await userClient.get(`${base}user:check`)).toBe('v');
        await userClient.del(`${base}user:check`);
        await userClient.quit();
      },
    },
  );

  describe('redis bus', () => {
    const buses: RedisBus[] = [];
    const raws: Redis[] = [];
    const open = (options: Partial<RedisBusOptions> = {}) => {
      const bus = createRedisBus({ url: env.redisUrl, channelPrefix: `${base}spec:`, ...options });
      buses.push(bus);
      return bus;
    };
    const raw = () => {
      const client = new Redis(env.redisUrl);
      raws.push(client);
      return client;
    };

    afterAll(async () => {
      for (const bus of buses) await bus.close();
      for (const client of raws) client.disconnect();
    });

    it('publishes and subscribes on channelPrefix + channel, verbatim', async () => {
      const bus = open({ channelPrefix: `${base}layout:` });
      expect(bus.channelOf('users')).toBe(`${base}layout:users`);
      const listener = raw();
      const seen: [string, string][] = [];
      listener.on('message', (channel: string, message: string) => seen.push([channel, message]));
      await listener.subscribe(`${base}layout:users`);
      await bus.publish('users', 'from the bus');
      await until(() => seen.length === 1, 'the raw subscriber to receive');
      expect(seen).toEqual([[`${base}layout:users`, 'from the bus']]);

      const got: string[] = [];
      await bus.subscribe('orders', (message) => got.push(message));
      expect(await raw().publish(`${base}layout:orders`, 'from redis')).toBe(1);
      await until(() => got.length === 1, 'the bus subscriber to receive');
      expect(got).toEqual(['from redis']);
    });

    it("subscribes on a connection of its own, leaving the user's client free for commands", async () => {
      const client = raw();
      const bus = createRedisBus({ client, channelPrefix: `${base}dedicated:` });
      buses.push(bus);
      const got: string[] = [];
      await bus.subscribe('k', (message) => got.push(message));
      await client.set(`${base}dedicated:plain`, 'v');
      expect(await client.get(`${base}dedicated:plain`)).toBe('v');
      await client.del(`${base}dedicated:plain`);
      await bus.publish('k', 'm');
      await until(() => got.length === 1, 'the message');
      await bus.close();
      expect(await client.ping()).toBe('PONG');
    });

    it('unsubscribes the channel on the server once its last handler leaves', async () => {
      const bus = open({ channelPrefix: `${base}numsub:` });
      const counter = raw();
      const subscribers = async () => {
        const reply = (await counter.call('PUBSUB', 'NUMSUB', `${base}numsub:c`)) as [string, number];
        return Number(reply[1]);
      };
      const first = await bus.subscribe('c', () => undefined);
      const second = await bus.subscribe('c', () => undefined);
      expect(await subscribers()).toBe(1);
      await first.unsubscribe();
      expect(await subscribers()).toBe(1);
      await second.unsubscribe();
      expect(await subscribers()).toBe(0);
    });

    it('reports handler errors to onError and keeps delivering', async () => {
      const errors: unknown[] = [];
      const bus = open({ channelPrefix: `${base}onerror:`, onError: (err) => errors.push(err) });
      const got: string[] = [];
      await bus.subscribe('c', (message) => {
        got.push(message);
        throw new Error(`boom ${message}`);
      });
      await bus.publish('c', '1');
      await bus.publish('c', '2');
      await until(() => errors.length === 2, 'two reported errors');
      expect(got).toEqual(['1', '2']);
      expect((errors as Error[]).map((e) => e.message)).toEqual(['boom 1', 'boom 2']);
    });
  });
});

describe('redis bus without a server', () => {
  it('fails publish and subscribe with E_CONNECTION naming host and port when the port is closed', async () => {
    const port = await freePort();
    const bus = createRedisBus({ url: `redis://:supersecret@127.0.0.1:${port}`, connectTimeout: '1s' });
    try {
      for (const call of [() => bus.publish('c', 'm'), () => bus.subscribe('c', () => undefined)]) {
        const err = await settlesWithin(call(), 3_000);
        expect(err).toMatchObject({ code: 'E_CONNECTION', backend: 'redis', host: '127.0.0.1', port });
        expect(JSON.stringify(err)).not.toContain('supersecret');
        expect((err as Error).message).not.toContain('supersecret');
      }
    } finally {
      await bus.close();
    }
  });

  it('rejects invalid options at construction time with E_CONFIG naming the option', () => {
    const cases: [unknown, string][] = [
      [{ channelPrefix: 42 }, 'channelPrefix'],
      [{ channelPrefix: '\uD800' }, 'channelPrefix'],
      [{ connectTimeout: '5 parsecs' }, 'connectTimeout'],
      [{ connectTimeout: 0 }, 'connectTimeout'],
      [{ commandTimeout: -1 }, 'commandTimeout'],
      [{ name: '' }, 'name'],
      [{ onError: 'log' }, 'onError'],
      [{ url: 'http://127.0.0.1:6379' }, 'url'],
      [{ url: 'redis://:supersecret@[not-a-host' }, 'url'],
      [{ url: 'redis://127.0.0.1', client: new Redis({ lazyConnect: true }) }, 'url'],
      [{ client: {} }, 'client'],
      [{ client: { publish: () => 0 } }, 'client'],
    ];
    for (const [options, option] of cases) {
      let err: unknown;
      try {
        createRedisBus(options as RedisBusOptions);
      } catch (e) {
        err = e;
      }
      expect(err, option).toMatchObject({ code: 'E_CONFIG', option });
      expect(JSON.stringify(err)).not.toContain('supersecret');
    }
  });
});

describe.skipIf(!existsSync(REDIS_SERVER))('redis bus on a private server that dies', () => {
  const dir = tempDir('strata-redis-bus-');
  let port = 0;
  let server: ChildProcess | undefined;
  const timeouts = { connectTimeout: '1s', commandTimeout: '500ms' } as const;
  // Generous hang guard: a call must settle within connectTimeout + commandTimeout plus slack.
  const BOUND = 5_000;

  afterAll(async () => {
    if (server !== undefined) await kill(server);
    dir.remove();
  });

  describeMessageBusConformance(
    'redis, killed and restarted',
    async () => {
      if (server === undefined) {
        port = await freePort();
        server = await startRedisServer(port, dir.path);
      }
      return createRedisBus({ url: `redis://127.0.0.1:${port}`, channelPrefix: 'fault:', ...timeouts });
    },
    {
      disconnect: async () => {
        await kill(server!);
        return async () => {
          server = await startRedisServer(port, dir.path);
        };
      },
    },
  );

  it('rejects publish and subscribe within the bound while the server is down, then recovers', async () => {
    const privatePort = await freePort();
    let own = await startRedisServer(privatePort, dir.path);
    const url = `redis://127.0.0.1:${privatePort}`;
    const publisher = createRedisBus({ url, channelPrefix: 'down:', ...timeouts });
    const subscriber = createRedisBus({ url, channelPrefix: 'down:', ...timeouts });
    try {
      const got: string[] = [];
      const events: string[] = [];
      await subscriber.subscribe('c', (m) => got.push(m), {
        onDisconnect: () => events.push('disconnect'),
        onReconnect: () => events.push('reconnect'),
      });
      await publisher.publish('c', 'up');
      await until(() => got.includes('up'), 'the first message');

      await kill(own);
      await until(() => events.length === 1, 'onDisconnect');
      for (const call of [
        () => publisher.publish('c', 'down'),
        () => publisher.subscribe('other', () => undefined),
        () => subscriber.subscribe('other', () => undefined),
      ]) {
        const err = await settlesWithin(call(), BOUND);
        expect(isStrataError(err)).toBe(true);
        expect(['E_CONNECTION', 'E_TIMEOUT']).toContain((err as { code: string }).code);
      }

      own = await startRedisServer(privatePort, dir.path);
      await until(() => events.length === 2, 'onReconnect');
      await until(
        () =>
          publisher.publish('c', 'back').then(
            () => true,
            () => false,
          ),
        'a publish to succeed',
      );
      await until(() => got.includes('back'), 'a message after the restart');
      expect(got).not.toContain('down');
      expect(events).toEqual(['disconnect', 'reconnect']);
    } finally {
      await publisher.close();
      await subscriber.close();
      await kill(own);
    }
  });

  it('reports a dropped subscriber connection while the server stays up, and resubscribes', async () => {
    const privatePort = await freePort();
    const own = await startRedisServer(privatePort, dir.path);
    const url = `redis://127.0.0.1:${privatePort}`;
    const bus = createRedisBus({ url, channelPrefix: 'drop:', ...timeouts });
    const admin = new Redis(url);
    try {
      const got: string[] = [];
      const events: string[] = [];
      const channels = ['a', 'b'];
      for (const c of channels) {
        await bus.subscribe(c, (m) => got.push(`${c}:${m}`), {
          onDisconnect: () => events.push(`${c} disconnect`),
          onReconnect: () => events.push(`${c} reconnect`),
        });
      }
      expect(Number(await admin.client('KILL', 'TYPE', 'pubsub'))).toBe(1);
      await until(() => events.length === 4, 'onDisconnect and onReconnect for both subscriptions');
      expect(events).toEqual(['a disconnect', 'b disconnect', 'a reconnect', 'b reconnect']);
      // onReconnect came after the channels were subscribed again: a publish now reaches both.
      expect(await admin.publish('drop:a', '1')).toBe(1);
      expect(await admin.publish('drop:b', '2')).toBe(1);
      await until(() => got.length === 2, 'both messages');
      expect(got).toEqual(['a:1', 'b:2']);
    } finally {
      await bus.close();
      admin.disconnect();
      await kill(own);
    }
  });
});
