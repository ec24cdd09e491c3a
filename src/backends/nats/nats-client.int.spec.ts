import { type ChildProcess, spawn } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../../test/helpers.js';
import { isStrataError } from '../../core/errors.js';
import { connectNats, type NatsClient } from './nats-client.js';

const NATS_SERVER = '/usr/sbin/nats-server';
const prefix = uniqueName('strata_nats');
const decoder = new TextDecoder();

/** A stream name and a subject root unique to this file's run. */
function names(label: string): { stream: string; root: string } {
  return { stream: `${prefix}_${label}`, root: `${prefix}.${label}` };
}

/** The rejection of `promise`, or a failure when it resolves. */
async function rejectionOf(promise: Promise<unknown>): Promise<Record<string, unknown>> {
  try {
    await promise;
  } catch (err) {
    return err as Record<string, unknown>;
  }
  throw new Error('expected a rejection');
}

/** Whether `promise` settled before `ms` passed: a guard against hangs, far above the bound under test. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const settled = promise.then(
    () => true as const,
    () => true as const,
  );
  try {
    return await Promise.race([settled, hung]);
  } finally {
    clearTimeout(timer);
  }
}

/** A loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A private nats-server on `port`, resolved once it accepts clients; `kill()` is SIGKILL. */
async function startNatsServer(
  port: number,
  args: string[],
): Promise<{ process: ChildProcess; kill: () => Promise<void> }> {
  const child = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port), ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let log = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      log += chunk.toString();
      if (log.includes('Server is ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`nats-server exited with ${code}: ${log}`)));
  });
  return {
    process: child,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

describe.skipIf(!services.nats)('nats client', () => {
  let client: NatsClient;
  const streams: string[] = [];

  function stream(label: string): { stream: string; root: string } {
    const n = names(label);
    streams.push(n.stream);
    return n;
  }

  beforeAll(async () => {
    client = await connectNats({ url: env.natsUrl, name: 'strata-nats-spec' });
  });

  afterAll(async () => {
    for (const name of streams) await client.deleteStream(name);
    await client.close();
  });

  describe('stream lifecycle', () => {
    it('creates a stream, is idempotent, and updates subjects and limits', async () => {
      const { stream: name, root } = stream('life');
      const created = await client.ensureStream({ name, subjects: [`${root}.a`] });
      expect(created.config).toMatchObject({
        name,
        subjects: [`${root}.a`],
        storage: 'file',
        retention: 'limits',
        duplicate_window: 120_000_000_000,
        max_msgs: -1,
      });

      // A client of its own, so nothing else this file does shows in its request count.
      const quiet = await connectNats({ url: env.natsUrl });
      const before = quiet.connection.stats().outMsgs;
      const again = await quiet.ensureStream({ name, subjects: [`${root}.a`] });
      // One request (the stream info), no update.
      expect(quiet.connection.stats().outMsgs - before).toBe(1);
      await quiet.close();
      expect(again.created).toBe(created.created);

      const updated = await client.ensureStream({
        name,
        subjects: [`${root}.a`, `${root}.b.*`],
        maxMessages: 100,
        maxAge: '1h',
        duplicateWindow: '30s',
      });
      expect(updated.created).toBe(created.created);
      expect(updated.config).toMatchObject({
        subjects: [`${root}.a`, `${root}.b.*`],
        max_msgs: 100,
        max_age: 3_600_000_000_000,
        duplicate_window: 30_000_000_000,
      });
      const ack = await client.publish(`${root}.b.x`, 'on the new subject');
      expect(ack).toMatchObject({ stream: name, sequence: 1, duplicate: false });

      const info = await client.streamInfo(name);
      expect(info?.state.messages).toBe(1);
    });

    it('reports a missing stream as undefined and deletes once', async () => {
      const { stream: name, root } = stream('delete');
      expect(await client.streamInfo(name)).toBeUndefined();
      await client.ensureStream({ name, subjects: [`${root}.>`], storage: 'memory' });
      expect(await client.deleteStream(name)).toBe(true);
      expect(await client.deleteStream(name)).toBe(false);
      expect(await client.streamInfo(name)).toBeUndefined();
    });

    it('refuses to change the storage type of an existing stream with E_CONFIG naming storage', async () => {
      const { stream: name, root } = stream('storage');
      await client.ensureStream({ name, subjects: [`${root}.>`] });
      const err = await rejectionOf(
        client.ensureStream({ name, subjects: [`${root}.>`], storage: 'memory' }),
      );
      expect(err).toMatchObject({ code: 'E_CONFIG', option: 'storage', details: { stream: name } });
      expect((await client.streamInfo(name))?.config.storage).toBe('file');
    });

    it('refuses subjects that overlap another stream with E_CONFIG naming subjects', async () => {
      const { stream: name, root } = stream('overlap');
      const other = stream('overlap2');
      await client.ensureStream({ name, subjects: [`${root}.>`] });
      const err = await rejectionOf(client.ensureStream({ name: other.stream, subjects: [`${root}.x`] }));
      expect(err).toMatchObject({ code: 'E_CONFIG', option: 'subjects', details: { jsErrCode: 10065 } });
    });

    it('rejects bad names and subjects with E_CONFIG naming the option, before any request', async () => {
      const root = names('bad').root;
      const quiet = await connectNats({ url: env.natsUrl });
      const before = quiet.connection.stats().outMsgs;
      const cases: [Promise<unknown>, string][] = [
        [quiet.ensureStream({ name: '', subjects: [`${root}.a`] }), 'name'],
        [quiet.ensureStream({ name: 'has.dot', subjects: [`${root}.a`] }), 'name'],
        [quiet.ensureStream({ name: 'has space', subjects: [`${root}.a`] }), 'name'],
        [quiet.ensureStream({ name: 'star*', subjects: [`${root}.a`] }), 'name'],
        [quiet.ensureStream({ name: 'gt>', subjects: [`${root}.a`] }), 'name'],
        [quiet.ensureStream({ name: 'a/b', subjects: [`${root}.a`] }), 'name'],
        [quiet.ensureStream({ name: 'a\\b', subjects: [`${root}.a`] }), 'name'],
        [quiet.ensureStream({ name: 'ok', subjects: [] }), 'subjects'],
        [quiet.ensureStream({ name: 'ok', subjects: [`${root}..a`] }), 'subjects'],
        [quiet.ensureStream({ name: 'ok', subjects: [`${root}.a*`] }), 'subjects'],
        [quiet.ensureStream({ name: 'ok', subjects: [`${root}.>.a`] }), 'subjects'],
        [quiet.ensureStream({ name: 'ok', subjects: [`${root} a`] }), 'subjects'],
        [
          quiet.ensureStream({ name: 'ok', subjects: [`${root}.a`], maxAge: '1m', duplicateWindow: '2m' }),
          'duplicateWindow',
        ],
        [quiet.ensureStream({ name: 'ok', subjects: [`${root}.a`], maxMessages: 0 }), 'maxMessages'],
        [quiet.publish(`${root}.*`, 'x'), 'subject'],
        [quiet.publish(`${root}.a`, 'x', { msgId: '' }), 'msgId'],
        [quiet.publish(`${root}.a`, 'x', { expectedLastSequence: -1 }), 'expectedLastSequence'],
        [quiet.publish(`${root}.a`, 'x', { headers: { 'bad name': 'v' } }), 'headers'],
        [quiet.readFrom('bad.name', { startSequence: 1 }), 'stream'],
        [quiet.readFrom('ok', { startSequence: 0 }), 'startSequence'],
        [quiet.readFrom('ok', { startSequence: 1, subject: 'a..b' }), 'subject'],
        [quiet.streamInfo('a.b'), 'stream'],
        [quiet.deleteStream(''), 'stream'],
      ];
      for (const [promise, option] of cases) {
        expect(await rejectionOf(promise)).toMatchObject({ code: 'E_CONFIG', option });
      }
      expect(quiet.connection.stats().outMsgs).toBe(before);
      await quiet.close();
    });
  });

  describe('publish', () => {
    it('stores a repeated message id once and reports the repeat as a duplicate', async () => {
      const { stream: name, root } = stream('dedup');
      await client.ensureStream({ name, subjects: [`${root}.>`] });
      const first = await client.publish(`${root}.a`, 'once', { msgId: 'orders:42' });
      const second = await client.publish(`${root}.a`, 'once', { msgId: 'orders:42' });
      expect(first).toEqual({ stream: name, sequence: 1, duplicate: false });
      expect(second).toEqual({ stream: name, sequence: 1, duplicate: true });
      expect((await client.streamInfo(name))?.state.messages).toBe(1);

      const third = await client.publish(`${root}.a`, new TextEncoder().encode('twice'), {
        msgId: 'orders:43',
      });
      expect(third).toEqual({ stream: name, sequence: 2, duplicate: false });
      expect((await client.streamInfo(name))?.state.messages).toBe(2);
    });

    it('rejects a wrong expected last subject sequence with E_CONFLICT and expected/actual', async () => {
      const { stream: name, root } = stream('expect');
      await client.ensureStream({ name, subjects: [`${root}.>`] });
      await client.publish(`${root}.a`, '1', { expectedLastSubjectSequence: 0 });
      await client.publish(`${root}.b`, '2');
      const ok = await client.publish(`${root}.a`, '3', { expectedLastSubjectSequence: 1 });
      expect(ok.sequence).toBe(3);

      const err = await rejectionOf(client.publish(`${root}.a`, '4', { expectedLastSubjectSequence: 1 }));
      expect(isStrataError(err, 'E_CONFLICT')).toBe(true);
      expect(err).toMatchObject({
        details: { expected: 1, actual: 3, jsErrCode: 10071, subject: `${root}.a` },
      });

      const stale = await rejectionOf(client.publish(`${root}.b`, '5', { expectedLastSequence: 2 }));
      expect(stale).toMatchObject({ code: 'E_CONFLICT', details: { expected: 2, actual: 3 } });
      expect((await client.streamInfo(name))?.state.messages).toBe(3);
    });

    it('rejects a subject no stream stores with E_NOT_FOUND', async () => {
      const err = await rejectionOf(client.publish(`${names('nowhere').root}.a`, 'x'));
      expect(err).toMatchObject({ code: 'E_NOT_FOUND' });
    });

    it('carries headers through to readers', async () => {
      const { stream: name, root } = stream('headers');
      await client.ensureStream({ name, subjects: [`${root}.>`] });
      await client.publish(`${root}.a`, 'x', {
        msgId: 'h1',
        headers: { 'Strata-Table': 'users', multi: ['1', '2'] },
      });
      const [message] = await client.readFrom(name, { startSequence: 1 });
      expect(message?.headers).toMatchObject({
        'Strata-Table': ['users'],
        multi: ['1', '2'],
        'Nats-Msg-Id': ['h1'],
      });
      expect(message?.time).toBeInstanceOf(Date);
    });
  });

  describe('readFrom', () => {
    const { stream: name, root } = names('read');

    beforeAll(async () => {
      streams.push(name);
      await client.ensureStream({ name, subjects: [`${root}.>`] });
      for (let i = 1; i <= 50; i++) {
        await client.publish(`${root}.${i % 2 === 0 ? 'even' : 'odd'}`, `m${i}`, { msgId: `read-${i}` });
      }
    });

    it('returns exactly the messages from a sequence on, in order', async () => {
      const messages = await client.readFrom(name, { startSequence: 20 });
      expect(messages.map((m) => m.sequence)).toEqual(Array.from({ length: 31 }, (_, i) => 20 + i));
      expect(messages.map((m) => decoder.decode(m.data))).toEqual(
        Array.from({ length: 31 }, (_, i) => `m${20 + i}`),
      );
    });

    it('filters by subject', async () => {
      const messages = await client.readFrom(name, { startSequence: 20, subject: `${root}.even` });
      expect(messages.map((m) => m.sequence)).toEqual(Array.from({ length: 16 }, (_, i) => 20 + 2 * i));
      expect(messages.every((m) => m.subject === `${root}.even`)).toBe(true);
    });

    it('stops at maxMessages and continues from the next sequence', async () => {
      const page = await client.readFrom(name, { startSequence: 1, maxMessages: 10 });
      expect(page.map((m) => m.sequence)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
      const next = await client.readFrom(name, { startSequence: page.at(-1)!.sequence + 1, maxMessages: 10 });
      expect(next[0]?.sequence).toBe(11);
    });

    it('returns nothing past the end, and E_NOT_FOUND for a missing stream', async () => {
      expect(await client.readFrom(name, { startSequence: 51 })).toEqual([]);
      expect(await client.readFrom(name, { startSequence: 1, subject: `${root}.none` })).toEqual([]);
      const err = await rejectionOf(client.readFrom(names('missing').stream, { startSequence: 1 }));
      expect(err).toMatchObject({ code: 'E_NOT_FOUND', details: { jsErrCode: 10059 } });
    });
  });

  describe('connection', () => {
    it('leaves a caller-owned connection open on close and fails later calls with E_CLOSED', async () => {
      const nc = await connect({ servers: env.natsUrl.replace(/^nats:\/\//, '') });
      const own = await connectNats({ connection: nc });
      expect(own.connection).toBe(nc);
      await own.close();
      await own.close();
      expect(own.closed).toBe(true);
      expect(nc.isClosed()).toBe(false);
      expect(await rejectionOf(own.streamInfo('any'))).toMatchObject({ code: 'E_CLOSED' });
      expect(await rejectionOf(own.publish('a.b', 'x'))).toMatchObject({ code: 'E_CLOSED' });
      await nc.close();
    });

    it('reports a closed port as E_CONNECTION naming host and port, never the password', async () => {
      const port = await freePort();
      const attempt = connectNats({ url: `nats://user:supersecret@127.0.0.1:${port}`, connectTimeout: '1s' });
      expect(await settlesWithin(attempt, 10_000)).toBe(true);
      const err = await rejectionOf(attempt);
      expect(err).toMatchObject({ code: 'E_CONNECTION', host: '127.0.0.1', port });
      expect(err.message).toContain(`127.0.0.1:${port}`);
      expect(err.message).not.toContain('supersecret');
      expect(JSON.stringify(err)).not.toContain('supersecret');
      expect(JSON.stringify(err.details)).not.toContain('supersecret');
    });

    it('gives up on a server that accepts but never speaks within connectTimeout', async () => {
      const sockets: Socket[] = [];
      const blackhole: Server = createServer((socket) => sockets.push(socket));
      await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
      const { port } = blackhole.address() as { port: number };
      try {
        const attempt = connectNats({ url: `nats://tok3n@127.0.0.1:${port}`, connectTimeout: '1s' });
        expect(await settlesWithin(attempt, 10_000)).toBe(true);
        const err = await rejectionOf(attempt);
        expect(err).toMatchObject({ code: 'E_CONNECTION', host: '127.0.0.1', port });
        expect(JSON.stringify(err)).not.toContain('tok3n');
      } finally {
        for (const socket of sockets) socket.destroy();
        await new Promise((resolve) => blackhole.close(resolve));
      }
    });

    it('reports an unknown host name as E_CONNECTION', async () => {
      const attempt = connectNats({ url: 'nats://strata-no-such-host.invalid:4222', connectTimeout: '1s' });
      expect(await settlesWithin(attempt, 10_000)).toBe(true);
      expect(await rejectionOf(attempt)).toMatchObject({
        code: 'E_CONNECTION',
        host: 'strata-no-such-host.invalid',
      });
    });

    it('authenticates with credentials from the URL and reports wrong ones as E_CONNECTION', async () => {
      const port = await freePort();
      // No -js: getting as far as the JetStream check proves the credentials were accepted.
      const server = await startNatsServer(port, ['--user', 'strata', '--pass', 'supersecret']);
      try {
        const wrong = await rejectionOf(
          connectNats({ url: `nats://strata:wrongsecret@127.0.0.1:${port}`, connectTimeout: '2s' }),
        );
        expect(wrong).toMatchObject({
          code: 'E_CONNECTION',
          port,
          details: { reason: 'authentication failed' },
        });
        expect(JSON.stringify(wrong)).not.toContain('wrongsecret');

        const right = await rejectionOf(
          connectNats({ url: `nats://strata:supersecret@127.0.0.1:${port}`, connectTimeout: '2s' }),
        );
        expect(right).toMatchObject({
          code: 'E_CONNECTION',
          details: { reason: 'JetStream is not enabled on the server' },
        });
        expect(JSON.stringify(right)).not.toContain('supersecret');
      } finally {
        await server.kill();
      }
    });

    it('bounds publish while its server is down, then reconnects and keeps file-stored messages', async () => {
      const dir = tempDir('strata-nats-');
      const port = await freePort();
      const args = ['-js', '-sd', dir.path];
      let server = await startNatsServer(port, args);
      const own = await connectNats({
        url: `nats://127.0.0.1:${port}`,
        requestTimeout: '1s',
        reconnectWait: '100ms',
      });
      const { stream: name, root } = names('restart');
      try {
        await own.ensureStream({ name, subjects: [`${root}.>`] });
        for (let i = 1; i <= 3; i++) await own.publish(`${root}.a`, `before-${i}`, { msgId: `before-${i}` });
        const events = own.status()[Symbol.asyncIterator]();

        await server.kill();
        const during = own.publish(`${root}.a`, 'during', { msgId: 'during' });
        expect(await settlesWithin(during, 10_000)).toBe(true);
        const err = await rejectionOf(during);
        expect(['E_TIMEOUT', 'E_CONNECTION']).toContain(err.code);

        server = await startNatsServer(port, args);
        for (;;) {
          const next = await events.next();
          expect(next.done).toBe(false);
          if (next.value.type === 'reconnect') break;
        }
        await events.return?.();

        // The timed-out publish may still reach the server from the client's buffer; its message
        // id makes the retry safe either way.
        const retried = await own.publish(`${root}.a`, 'during', { msgId: 'during' });
        expect(retried.sequence).toBe(4);
        const after = await own.publish(`${root}.a`, 'after', { msgId: 'after' });
        expect(after).toMatchObject({ sequence: 5, duplicate: false });

        const messages = await own.readFrom(name, { startSequence: 1 });
        expect(messages.map((m) => decoder.decode(m.data))).toEqual([
          'before-1',
          'before-2',
          'before-3',
          'during',
          'after',
        ]);
      } finally {
        await own.close();
        await server.kill();
        dir.remove();
      }
    });
  });
});
