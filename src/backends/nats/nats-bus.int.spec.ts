import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../../test/helpers.js';
import { isStrataError } from '../../core/errors.js';
import { describeMessageBusConformance } from '../../testing/bus-conformance.js';
import { createNatsBus, type NatsBus, type NatsBusOptions } from './nats-bus.js';
import { connectNats, type NatsClient } from './nats-client.js';

const NATS_SERVER = process.env.NATS_SERVER ?? '/usr/sbin/nats-server';
const root = uniqueName('strata_bus');

/** A loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
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

/** A private nats-server with JetStream on `port`, resolved once it accepts clients. */
async function startNatsServer(port: number, storeDir: string): Promise<ChildProcess> {
  const child = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  await new Promise<void>((resolve, reject) => {
    let log = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      log += chunk.toString();
      if (log.includes('Server is ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`nats-server exited with ${code}: ${log}`)));
  });
  return child;
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

describe.skipIf(!services.nats)('nats bus on the test server', () => {
  describeMessageBusConformance('nats', () =>
    createNatsBus({ url: env.natsUrl, subjectPrefix: `${root}.own.` }),
  );

  let userClient: NatsClient | undefined;
  describeMessageBusConformance(
    "nats on the user's own client",
    async () => {
      userClient ??= await connectNats({ url: env.natsUrl, name: 'strata-bus-user' });
      return createNatsBus({ client: userClient, subjectPrefix: `${root}.user.` });
    },
    {
      teardown: async () => {
        // The suite closed every bus, after a handler threw on this connection: it must still work.
        expect(userClient?.closed).toBe(false);
        expect(userClient?.connection.isClosed()).toBe(false);
        await userClient?.connection.flush();
        await userClient?.close();
      },
    },
  );

  describe('nats bus', () => {
    const buses: NatsBus[] = [];
    const open = async (options: Partial<NatsBusOptions> = {}) => {
      const bus = await createNatsBus({ url: env.natsUrl, subjectPrefix: `${root}.spec.`, ...options });
      buses.push(bus);
      return bus;
    };

    afterAll(async () => {
      for (const bus of buses) await bus.close();
    });

    it('publishes and subscribes on subjectPrefix + channel, verbatim', async () => {
      const bus = await open({ subjectPrefix: `${root}.layout.` });
      expect(bus.subjectOf('users.1')).toBe(`${root}.layout.users.1`);
      const other = await connectNats({ url: env.natsUrl });
      const raw = other.connection;
      try {
        const seen: [string, string][] = [];
        raw.subscribe(`${root}.layout.>`, {
          callback: (_err, msg) => {
            seen.push([msg.subject, msg.string()]);
          },
        });
        await raw.flush();
        await bus.publish('users.1', 'from the bus');
        await until(() => seen.length === 1, 'the raw subscriber to receive');
        expect(seen).toEqual([[`${root}.layout.users.1`, 'from the bus']]);

        const got: string[] = [];
        await bus.subscribe('orders', (message) => got.push(message));
        raw.publish(`${root}.layout.orders`, 'from nats');
        await until(() => got.length === 1, 'the bus subscriber to receive');
        expect(got).toEqual(['from nats']);
      } finally {
        await other.close();
      }
    });

    it('rejects channels that are not literal subject tokens with E_VALIDATION', async () => {
      const bus = await open();
      for (const channel of [
        'a..b',
        '.a',
        'a.',
        'a b',
        'tab\t',
        'new\nline',
        'nul\0',
        '*',
        'a.>',
        'wild*card',
      ]) {
        for (const call of [() => bus.publish(channel, 'm'), () => bus.subscribe(channel, () => undefined)]) {
          let err: unknown;
          try {
            await call();
          } catch (e) {
            err = e;
          }
          expect(err, JSON.stringify(channel)).toMatchObject({
            code: 'E_VALIDATION',
            issues: [{ path: ['channel'] }],
          });
        }
      }
      expect(bus.subjectOf('é-🙂_x')).toBe(`${root}.spec.é-🙂_x`);
    });

    it("rejects a message larger than the server's max_payload with E_VALIDATION", async () => {
      const bus = await open();
      const max = bus.client.connection.info?.max_payload ?? 1024 * 1024;
      let err: unknown;
      try {
        await bus.publish('big', 'x'.repeat(max + 1));
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: 'E_VALIDATION', issues: [{ path: ['message'] }] });
    });

    it('reports handler errors to onError and keeps delivering', async () => {
      const errors: unknown[] = [];
      const bus = await open({ subjectPrefix: `${root}.onerror.`, onError: (err) => errors.push(err) });
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

    it("leaves the user's client open on close", async () => {
      const client = await connectNats({ url: env.natsUrl });
      const bus = await createNatsBus({ client, subjectPrefix: `${root}.userclose.` });
      expect(bus.client).toBe(client);
      await bus.subscribe('c', () => undefined);
      await bus.close();
      await bus.close();
      expect(client.closed).toBe(false);
      await client.connection.flush();
      await client.close();
    });
  });
});

describe('nats bus options', () => {
  it('rejects invalid options with E_CONFIG naming the option, before connecting', async () => {
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const cases: [unknown, string][] = [
      [{ url, subjectPrefix: 42 }, 'subjectPrefix'],
      [{ url, subjectPrefix: 'a..' }, 'subjectPrefix'],
      [{ url, subjectPrefix: 'a b.' }, 'subjectPrefix'],
      [{ url, subjectPrefix: '*.' }, 'subjectPrefix'],
      [{ url, requestTimeout: 0 }, 'requestTimeout'],
      [{ url, name: '' }, 'name'],
      [{ url, onError: 'log' }, 'onError'],
      [{ url, connectTimeout: '5 parsecs' }, 'connectTimeout'],
      [{ url, client: {} }, 'url'],
      [{ client: {} }, 'client'],
      [{ client: { connection: {} } }, 'client'],
    ];
    for (const [options, option] of cases) {
      const err = await settlesWithin(createNatsBus(options as NatsBusOptions), 5_000);
      expect(err, option).toMatchObject({ code: 'E_CONFIG', option });
    }
  });

  it('fails with E_CONNECTION naming host and port when the port is closed', async () => {
    const port = await freePort();
    const err = await settlesWithin(
      createNatsBus({ url: `nats://user:supersecret@127.0.0.1:${port}`, connectTimeout: '1s' }),
      10_000,
    );
    expect(err).toMatchObject({ code: 'E_CONNECTION', host: '127.0.0.1', port });
    expect(JSON.stringify(err)).not.toContain('supersecret');
  });
});

describe.skipIf(!existsSync(NATS_SERVER))('nats bus on a private server that dies', () => {
  const dir = tempDir('strata-nats-bus-');
  let port = 0;
  let server: ChildProcess | undefined;
  // Generous hang guard: a call must settle within requestTimeout plus slack.
  const BOUND = 5_000;
  const open = (url: string, subjectPrefix: string) =>
    createNatsBus({ url, subjectPrefix, reconnectWait: '100ms', requestTimeout: '1s' });

  afterAll(async () => {
    if (server !== undefined) await kill(server);
    dir.remove();
  });

  describeMessageBusConformance(
    'nats, killed and restarted',
    async () => {
      if (server === undefined) {
        port = await freePort();
        server = await startNatsServer(port, dir.path);
      }
      return open(`nats://127.0.0.1:${port}`, 'fault.');
    },
    {
      disconnect: async () => {
        await kill(server!);
        return async () => {
          server = await startNatsServer(port, dir.path);
        };
      },
    },
  );

  it('rejects publish, subscribe and flush within the bound while the server is down, then recovers', async () => {
    const privatePort = await freePort();
    const storeDir = tempDir('strata-nats-bus-down-');
    let own = await startNatsServer(privatePort, storeDir.path);
    const url = `nats://127.0.0.1:${privatePort}`;
    const publisher = await open(url, 'down.');
    const subscriber = await open(url, 'down.');
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
      // The publisher learns of the loss through its own status stream.
      await until(
        () =>
          publisher.publish('c', 'down').then(
            () => false,
            () => true,
          ),
        'publish to refuse while the server is down',
      );
      for (const call of [
        () => publisher.publish('c', 'down'),
        () => publisher.flush(),
        () => publisher.subscribe('other', () => undefined),
        () => subscriber.subscribe('other', () => undefined),
      ]) {
        const err = await settlesWithin(call(), BOUND);
        expect(isStrataError(err)).toBe(true);
        expect(['E_CONNECTION', 'E_TIMEOUT']).toContain((err as { code: string }).code);
      }

      own = await startNatsServer(privatePort, storeDir.path);
      await until(() => events.length === 2, 'onReconnect');
      await until(
        () =>
          publisher.publish('c', 'back').then(
            () => true,
            () => false,
          ),
        'a publish to succeed',
      );
      await publisher.flush();
      await until(() => got.includes('back'), 'a message after the restart');
      expect(got).not.toContain('down');
      expect(events).toEqual(['disconnect', 'reconnect']);
    } finally {
      await publisher.close();
      await subscriber.close();
      await kill(own);
      storeDir.remove();
    }
  });
});
