import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { env, services, tempDir, uniqueName } from '../../../test/helpers.js';
import {
  type Change,
  type ChangeLog,
  deserializeChange,
  type LogEntry,
  makePosition,
  serializeChange,
} from '../../core/changes.js';
import { isStrataError } from '../../core/errors.js';
import { describeChangeLogConformance, sampleChange } from '../../testing/change-log-conformance.js';
import { createNatsChangeLog, type NatsChangeLog, type NatsChangeLogOptions } from './nats-change-log.js';
import { connectNats, type NatsClient } from './nats-client.js';

const NATS_SERVER = '/usr/sbin/nats-server';
const base = uniqueName('strata_ncl');
const decoder = new TextDecoder();

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

/** A loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A private nats-server on `port`, resolved once it accepts clients; `kill()` is SIGKILL, `pause()` SIGSTOP. */
async function startNatsServer(
  port: number,
  args: string[],
): Promise<{ kill: () => Promise<void>; pause: () => void; resume: () => void }> {
  const child: ChildProcess = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port), ...args], {
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
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
  };
}

function positions(source: string, ns: number[]) {
  return ns.map((n) => makePosition(source, BigInt(1000 + n)));
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** Changes of `source` at positions from `from` on, in runs of [table, length, row padding bytes]. */
function runsOf(source: string, from: number, runs: Array<[string, number, number?]>): Change[] {
  const out: Change[] = [];
  let n = from;
  for (const [table, length, padding = 40] of runs) {
    for (let i = 0; i < length; i++, n++) {
      out.push(sampleChange(source, n, table, n, { after: { id: n, pad: 'r'.repeat(padding) } }));
    }
  }
  return out;
}

/** The entries `changes` become when the log holds exactly them from offset `first` on. */
function asEntries(changes: Change[], first = 1): LogEntry[] {
  return changes.map((c, i) => ({ ...c, offset: first + i }));
}

/** Every entry after `after`, read in pages of `page`. */
async function readAll(log: ChangeLog, page = 1000, after = 0): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for (;;) {
    const entries = await log.read(after, page);
    if (entries.length === 0) return out;
    out.push(...entries);
    after = entries[entries.length - 1]!.offset;
  }
}

describe.skipIf(!services.nats)('nats change log', () => {
  let admin: NatsClient;
  const streams = new Set<string>();
  const streamName = (label: string) => {
    const name = `${base}_${label}`;
    streams.add(name);
    return name;
  };

  beforeAll(async () => {
    admin = await connectNats({ url: env.natsUrl, name: 'strata-change-log-spec' });
  });

  afterAll(async () => {
    for (const name of streams) await admin.deleteStream(name);
    await admin.close();
  });

  describeChangeLogConformance(
    'nats',
    ({ name }) => createNatsChangeLog({ url: env.natsUrl, name: streamName(name) }),
    {
      cleanup: async ({ name }) => {
        await admin.deleteStream(`${base}_${name}`);
      },
    },
  );

  describe("on the user's own client", () => {
    let shared: NatsClient;
    beforeAll(async () => {
      shared = await connectNats({ url: env.natsUrl, name: 'strata-change-log-shared' });
    });
    afterAll(async () => {
      // The suite closed every log; the user's client must still be open.
      expect(shared.closed).toBe(false);
      expect(shared.connection.isClosed()).toBe(false);
      await shared.close();
    });
    describeChangeLogConformance(
      'nats on a shared client',
      ({ name }) => createNatsChangeLog({ client: shared, name: streamName(`shared_${name}`) }),
      { cleanup: async ({ name }) => void (await admin.deleteStream(`${base}_shared_${name}`)) },
    );
  });

  describe('behaviour', () => {
    const logs: NatsChangeLog[] = [];
    const open = async (label: string, options: Partial<NatsChangeLogOptions> = {}) => {
      const log = await createNatsChangeLog({ url: env.natsUrl, name: streamName(label), ...options });
      logs.push(log);
      return log;
    };

    afterAll(async () => {
      for (const log of logs) await log.close();
    });

    it('publishes a run of one table per message on <prefix>.<table>, with its offsets, positions and a message id', async () => {
      const log = await open('layout', { subjectPrefix: `${base}.layout` });
      const info = await admin.streamInfo(log.stream);
      expect(info?.config).toMatchObject({
        subjects: [`${base}.layout.>`],
        storage: 'file',
        duplicate_window: 120_000_000_000,
      });
      const batch = [
        sampleChange('one', 1, 'users'),
        sampleChange('two', 1, 'posts'),
        sampleChange('one', 2, 'posts'),
      ];
      expect(await log.append(batch)).toEqual({ appended: 3, duplicates: 0, lastOffset: 3 });
      const messages = await admin.readFrom(log.stream, { startSequence: 1 });
      expect(messages.map((m) => [m.sequence, m.subject])).toEqual([
        [1, `${base}.layout.users`],
        [2, `${base}.layout.posts`],
      ]);
      expect(messages.map((m) => [m.headers['Strata-Offset'], m.headers['Strata-Count']])).toEqual([
        [['1'], ['1']],
        [['2'], ['2']],
      ]);
      expect(messages.map((m) => m.headers['Strata-Positions'])).toEqual([
        [positions('one', [1]).join(',')],
        [[...positions('one', [2]), ...positions('two', [1])].join(',')],
      ]);
      // The id names the run's last position and first offset, then a digest of the message.
      const ids = messages.map((m) => m.headers['Nats-Msg-Id']?.[0]?.split('/'));
      expect(ids.map((id) => id?.slice(0, 2))).toEqual([
        [positions('one', [1])[0], '1'],
        [positions('one', [2])[0], '2'],
      ]);
      expect(ids.map((id) => id?.[2])).toEqual([
        expect.stringMatching(/^[\w-]{22}$/),
        expect.stringMatching(/^[\w-]{22}$/),
      ]);
      expect(JSON.parse(decoder.decode(messages[1]!.data))).toEqual([
        JSON.parse(serializeChange(batch[1]!)),
        JSON.parse(serializeChange(batch[2]!)),
      ]);
      expect(log.subjectOf('users')).toBe(`${base}.layout.users`);
    });

    it('stores every change of a message exactly as the shared codec encodes it', async () => {
      const log = await open('codec');
      const batch = [
        sampleChange('src', 1, 'rows', 1, {
          after: { id: 1, at: new Date(Date.UTC(2026, 0, 2)), tags: ['x'] },
        }),
        sampleChange('src', 2, 'rows', 2, {
          after: { id: 2, data: new Uint8Array([0, 255]), big: 2n ** 70n, buf: Buffer.from('hi') },
        }),
        sampleChange('src', 3, 'rows', 3, { after: { id: 3, like: { type: 'Buffer', data: [1, 2] } } }),
        sampleChange('src', 4, 'rows', 4, { after: { id: 4, text: 'quote " and $bytes' } }),
      ];
      await log.append(batch);
      expect(await admin.readFrom(log.stream, { startSequence: 1 })).toHaveLength(1);
      expect(await log.read(0, 10)).toEqual(
        batch.map((c, i) => ({ ...deserializeChange(serializeChange(c)), offset: i + 1 })),
      );
    });

    it('puts at most maxChangesPerMessage changes in a message', async () => {
      const log = await open('permessage', { maxChangesPerMessage: 2 });
      await log.append([1, 2, 3, 4, 5].map((n) => sampleChange('src', n)));
      const messages = await admin.readFrom(log.stream, { startSequence: 1 });
      expect(messages.map((m) => [m.headers['Strata-Offset']?.[0], m.headers['Strata-Count']?.[0]])).toEqual([
        ['1', '2'],
        ['3', '2'],
        ['5', '1'],
      ]);
      expect((await log.read(2, 10)).map((e) => e.offset)).toEqual([3, 4, 5]);
    });

    it('maps a schema-qualified table to a deeper subject and filters one table on the server', async () => {
      const log = await open('dotted');
      await log.append([
        sampleChange('src', 1, 'public.users'),
        sampleChange('src', 2, 'public'),
        sampleChange('src', 3, 'public.users'),
      ]);
      const messages = await admin.readFrom(log.stream, { startSequence: 1 });
      expect(messages.map((m) => m.subject)).toEqual([
        `${log.stream}.public.users`,
        `${log.stream}.public`,
        `${log.stream}.public.users`,
      ]);
      expect((await log.read(0, 10, { tables: ['public.users'] })).map((e) => e.offset)).toEqual([1, 3]);
      expect((await log.read(0, 10, { tables: ['public'] })).map((e) => e.offset)).toEqual([2]);
      expect((await log.read(0, 10, { tables: ['public', 'public.users'] })).map((e) => e.offset)).toEqual([
        1, 2, 3,
      ]);
      expect(await log.read(0, 10, { tables: ['no such table', 'public.*'] })).toEqual([]);
      expect(await log.read(0, 10, { tables: [] })).toEqual([]);
    });

    it('filters several tables on the client, up to the limit, across reads', async () => {
      const log = await open('multi');
      const tables = ['a', 'b', 'c'];
      await log.append(Array.from({ length: 40 }, (_, i) => sampleChange('src', i + 1, tables[i % 3])));
      const page = await log.read(5, 4, { tables: ['a', 'c'] });
      expect(page.map((e) => [e.offset, e.table])).toEqual([
        [6, 'c'],
        [7, 'a'],
        [9, 'c'],
        [10, 'a'],
      ]);
      const all = await log.read(0, 100, { tables: ['c', 'a'] });
      expect(all).toHaveLength(27);
      expect(all.every((e) => e.table !== 'b')).toBe(true);
    });

    it('keeps offsets dense across messages of different tables, run lengths and sizes', async () => {
      const log = await open('dense');
      const batch = runsOf('src', 1, [
        ['a', 1],
        ['b', 1500],
        ['c', 7],
        ['a', 1],
        ['b', 499],
        ['c', 501],
        ['blobs', 300, 5_000],
        ['a', 2],
        ['b', 1000],
      ]);
      expect(await log.append(batch)).toEqual({ appended: 3811, duplicates: 0, lastOffset: 3811 });
      // The next batch goes on with the table the previous one ended with, in a message of its own.
      const more = runsOf('src', 3812, [
        ['b', 3],
        ['a', 600],
      ]);
      expect(await log.append(more)).toEqual({ appended: 603, duplicates: 0, lastOffset: 4414 });

      const messages = await admin.readFrom(log.stream, { startSequence: 1, maxMessages: 1000 });
      const maxPayload = admin.connection.info?.max_payload ?? 0;
      let next = 1;
      for (const m of messages) {
        const offset = Number(m.headers['Strata-Offset']?.[0]);
        const count = Number(m.headers['Strata-Count']?.[0]);
        const changes = JSON.parse(decoder.decode(m.data)) as Change[];
        expect(offset).toBe(next);
        expect(changes).toHaveLength(count);
        expect(count).toBeLessThanOrEqual(500);
        expect(new Set(changes.map((c) => `${log.stream}.${c.table}`))).toEqual(new Set([m.subject]));
        expect(m.data.length).toBeLessThan(maxPayload);
        next += count;
      }
      expect(next).toBe(4415);
      const subjects = messages.map((m) => m.subject.slice(log.stream.length + 1));
      expect(subjects.filter((t) => t === 'b')).toHaveLength(3 + 1 + 2 + 1);
      // About 5 KB each: the 300 blobs are cut by the payload limit, not by the count.
      expect(subjects.filter((t) => t === 'blobs').length).toBeGreaterThan(1);

      const reader = await open('dense');
      expect(await readAll(reader)).toEqual(asEntries([...batch, ...more]));
      expect(await reader.head()).toBe(4414);
    });

    it('reads from the middle of a message, across messages and past the end, on any instance', async () => {
      const log = await open('middle');
      // Messages hold offsets 1-500, 501-1000, 1001-1200 (a), 1201-1205 (b), 1206-1705, 1706-2005 (a).
      const batch = runsOf('src', 1, [
        ['a', 1200],
        ['b', 5],
        ['a', 800],
      ]);
      await log.append(batch);
      const entries = asEntries(batch);
      const cases: Array<[after: number, limit: number, first: number, last: number]> = [
        [750, 10, 751, 760],
        [500, 3, 501, 503],
        [499, 3, 500, 502],
        [1199, 4, 1200, 1203],
        [1203, 1000, 1204, 2005],
        [2004, 10, 2005, 2005],
        [0, 1, 1, 1],
      ];
      // A new instance has seen no message: it finds each start by searching the stream.
      for (const [after, limit, first, last] of cases) {
        const fresh = await createNatsChangeLog({ url: env.natsUrl, name: log.stream });
        expect(await fresh.read(after, limit), `read(${after}, ${limit})`).toEqual(
          entries.slice(first - 1, last),
        );
        await fresh.close();
      }
      for (const after of [2005, 2006, 10_000]) {
        const fresh = await createNatsChangeLog({ url: env.natsUrl, name: log.stream });
        expect(await fresh.read(after, 10)).toEqual([]);
        await fresh.close();
      }
      // One instance pages with a limit that does not divide the messages, then jumps back and forth.
      const reader = await open('middle');
      expect(await readAll(reader, 333)).toEqual(entries);
      expect(await reader.read(1000, 2)).toEqual(entries.slice(1000, 1002));
      expect(await reader.read(10, 2)).toEqual(entries.slice(10, 12));
      expect(await reader.read(1700, 7)).toEqual(entries.slice(1700, 1707));
      expect(await reader.read(1707, 2)).toEqual(entries.slice(1707, 1709));
      expect(await reader.read(2005, 2)).toEqual([]);
    });

    it('filters tables over multi-change messages, from any offset, with several cursors on one instance', async () => {
      const log = await open('filtered');
      const batch = runsOf('src', 1, [
        ['a', 700],
        ['b', 300],
        ['c', 50],
        ['a', 20],
        ['b', 900],
        ['c', 1],
      ]);
      await log.append(batch);
      const entries = asEntries(batch);
      const only = (tables: string[], after = 0) =>
        entries.filter((e) => tables.includes(e.table) && e.offset > after);
      const fresh = await open('filtered');
      expect(await fresh.read(0, 10_000, { tables: ['b'] })).toEqual(only(['b']));
      expect(await fresh.read(850, 7, { tables: ['b'] })).toEqual(only(['b'], 850).slice(0, 7));
      expect(await fresh.read(600, 150, { tables: ['a', 'c'] })).toEqual(only(['a', 'c'], 600).slice(0, 150));
      expect(await fresh.read(1071, 10, { tables: ['c'] })).toEqual(only(['c'], 1071));
      expect(await fresh.read(1971, 10, { tables: ['b'] })).toEqual([]);

      // Two cursors take turns on one instance: one table in pages of 200, every table in pages of 300.
      const reader = await open('filtered');
      const onlyB: LogEntry[] = [];
      const all: LogEntry[] = [];
      for (let afterB = 0, afterAll = 0; ; ) {
        const pageB = await reader.read(afterB, 200, { tables: ['b'] });
        const pageAll = await reader.read(afterAll, 300);
        if (pageB.length === 0 && pageAll.length === 0) break;
        onlyB.push(...pageB);
        all.push(...pageAll);
        afterB = pageB.at(-1)?.offset ?? afterB;
        afterAll = pageAll.at(-1)?.offset ?? afterAll;
      }
      expect(onlyB).toEqual(only(['b']));
      expect(all).toEqual(entries);
    });

    it('gives two appenders of multi-message batches dense, distinct offsets and loses nothing', async () => {
      const a = await open('racebig');
      const b = await open('racebig');
      const batches = (source: string) =>
        range(0, 5).map((k) =>
          runsOf(source, 1 + k * 400, [
            ['x', 50],
            ['y', 150],
            ['x', 200],
          ]),
        );
      const relay = async (log: NatsChangeLog, source: string) => {
        for (const batch of batches(source)) {
          expect(await log.append(batch)).toMatchObject({ appended: 400, duplicates: 0 });
        }
      };
      await Promise.all([relay(a, 'left'), relay(b, 'right')]);
      const entries = await readAll(await open('racebig'));
      expect(entries.map((e) => e.offset)).toEqual(range(1, 4800));
      for (const source of ['left', 'right']) {
        expect(entries.filter((e) => e.source === source).map((e) => e.position)).toEqual(
          positions(source, range(1, 2400)),
        );
      }
      const messages = await admin.readFrom(a.stream, { startSequence: 1, maxMessages: 1000 });
      let next = 1;
      for (const m of messages) {
        expect(Number(m.headers['Strata-Offset']?.[0])).toBe(next);
        next += Number(m.headers['Strata-Count']?.[0]);
      }
      expect(next).toBe(4801);
    });

    it('reads and continues after messages written one change per message, before batching', async () => {
      const name = streamName('legacy');
      await admin.ensureStream({ name, subjects: [`${name}.>`] });
      for (const n of [1, 2, 3]) {
        const [position] = positions('src', [n]);
        await admin.publish(`${name}.users`, serializeChange(sampleChange('src', n)), {
          msgId: position!,
          headers: { 'Strata-Positions': position! },
        });
      }
      const log = await open('legacy');
      expect(await log.head()).toBe(3);
      expect(await log.lastPosition('src')).toBe(positions('src', [3])[0]);
      expect(await log.append([3, 4, 5].map((n) => sampleChange('src', n)))).toEqual({
        appended: 2,
        duplicates: 1,
        lastOffset: 5,
      });
      expect((await log.read(0, 10)).map((e) => [e.offset, e.position])).toEqual(
        range(1, 5).map((n) => [n, positions('src', [n])[0]]),
      );
      const fresh = await open('legacy');
      expect((await fresh.read(1, 10)).map((e) => e.offset)).toEqual([2, 3, 4, 5]);
      expect(await fresh.read(3, 1)).toEqual([{ ...sampleChange('src', 4), offset: 4 }]);
    });

    it('never reuses an offset once every message is gone: it goes on above any offset the stream held', async () => {
      const log = await open('purged');
      await log.append([1, 2, 3].map((n) => sampleChange('src', n)));
      await admin.manager.streams.purge(log.stream);
      const other = await open('purged');
      // One message was stored: it held at most 10,000 changes.
      expect(await other.head()).toBe(10_000);
      expect(await other.append([sampleChange('src', 4)])).toEqual({
        appended: 1,
        duplicates: 0,
        lastOffset: 10_001,
      });
      expect((await log.read(3, 10)).map((e) => [e.offset, e.position])).toEqual([
        [10_001, positions('src', [4])[0]],
      ]);
      expect(await log.head()).toBe(10_001);
    });

    it('replaces a read cursor that the server removed', async () => {
      const log = await open('cursor');
      await log.append(runsOf('src', 1, [['a', 1000]]));
      expect((await log.read(0, 500)).map((e) => e.offset)).toEqual(range(1, 500));
      const names: string[] = [];
      for await (const c of await admin.manager.consumers.list(log.stream)) names.push(c.name);
      expect(names.length).toBeGreaterThan(0);
      for (const name of names) await admin.manager.consumers.delete(log.stream, name);
      expect((await log.read(500, 1000)).map((e) => e.offset)).toEqual(range(501, 1000));
      expect(await log.read(1000, 10)).toEqual([]);
      await log.append(runsOf('src', 1001, [['a', 5]]));
      expect((await log.read(1000, 10)).map((e) => e.offset)).toEqual(range(1001, 1005));
    });

    it('rejects a table name that cannot be a subject with E_VALIDATION and appends nothing of the batch', async () => {
      const log = await open('badtable');
      for (const table of ['has space', 'star*', '>', 'a..b', '.a', 'a.', '', 'tab\tname']) {
        const err = await rejectionOf(
          log.append([sampleChange('src', 1, 'ok'), sampleChange('src', 2, table)]),
        );
        expect(err).toMatchObject({ code: 'E_VALIDATION', issues: [{ path: [1, 'table'] }] });
        expect((err as unknown as Error).message).not.toContain(table || '\u0000');
      }
      expect(() => log.subjectOf('a b')).toThrow(expect.objectContaining({ code: 'E_VALIDATION' }));
      expect(await log.head()).toBe(0);
      expect((await admin.streamInfo(log.stream))?.state.messages).toBe(0);
    });

    it('rejects a change larger than the server max payload before publishing any of the batch', async () => {
      const log = await open('big');
      const huge = sampleChange('src', 2, 'blobs', 2, { after: { id: 2, data: 'x'.repeat(1_100_000) } });
      const err = await rejectionOf(log.append([sampleChange('src', 1), huge, sampleChange('src', 3)]));
      expect(err).toMatchObject({
        code: 'E_VALIDATION',
        issues: [{ path: [1] }],
        details: { maxPayload: admin.connection.info?.max_payload },
      });
      expect(await log.head()).toBe(0);
      // Just under the limit still goes through.
      const fits = sampleChange('src', 4, 'blobs', 4, { after: { id: 4, data: 'y'.repeat(1_000_000) } });
      expect(await log.append([fits])).toEqual({ appended: 1, duplicates: 0, lastOffset: 1 });
    });

    it('rejects malformed changes with E_VALIDATION naming each problem', async () => {
      const log = await open('malformed');
      const err = await rejectionOf(
        log.append([
          { ...sampleChange('src', 1), position: 'nope' } as unknown as Change,
          { ...sampleChange('src', 2), source: 'other' },
          null as unknown as Change,
        ]),
      );
      expect(err).toMatchObject({
        code: 'E_VALIDATION',
        issues: [{ path: [0, 'position'] }, { path: [1, 'source'] }, { path: [2] }],
      });
      expect(await log.head()).toBe(0);
      for (const [call, option] of [
        [() => log.read(-1, 1), 'after'],
        [() => log.read(0, 0), 'limit'],
        [() => log.read(0.5, 1), 'after'],
        [() => log.lastPosition('bad name'), 'source'],
      ] as const) {
        expect(await rejectionOf(call())).toMatchObject({ code: 'E_CONFIG', option });
      }
    });

    it('skips positions already in the log without publishing them, from a new instance, whatever the window', async () => {
      const name = streamName('restart');
      const first = await createNatsChangeLog({ url: env.natsUrl, name });
      await first.append([1, 2, 3].map((n) => sampleChange('src', n)));
      await first.close();

      const seen: unknown[] = [];
      const watcher = await connectNats({ url: env.natsUrl });
      const sub = watcher.connection.subscribe(`${name}.>`, {
        callback: (_err, msg) => {
          const changes = JSON.parse(decoder.decode(msg.data)) as Change[];
          seen.push([msg.headers?.get('Strata-Offset'), changes.map((c) => c.position)]);
        },
      });
      await watcher.connection.flush();
      const second = await open('restart');
      expect(await second.lastPosition('src')).toBe(positions('src', [3])[0]);
      expect(await second.append([1, 2, 3, 4].map((n) => sampleChange('src', n)))).toEqual({
        appended: 1,
        duplicates: 3,
        lastOffset: 4,
      });
      // One connection delivers in order: had the old positions been sent, they would come first.
      await until(() => seen.length > 0, 'the new message');
      expect(seen).toEqual([['4', positions('src', [4])]]);
      sub.unsubscribe();
      await watcher.close();
    });

    it('lets two relays of the same source race without storing a position twice or skipping one', async () => {
      const a = await open('race');
      const b = await open('race');
      const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
      // Both deliver the source's changes in order, cut into different batches: some publishes lose
      // on the expected sequence, others are dropped as repeated message ids.
      const relay = async (log: NatsChangeLog, batches: number[][]) => {
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
      expect(results.reduce((sum, r) => sum + r.appended + r.duplicates, 0)).toBe(40);
      expect(await b.lastPosition('src')).toBe(positions('src', [20])[0]);
    });

    it('wakes a watcher when another instance appends, and not after it stopped', async () => {
      const a = await open('watch', { pollInterval: '1h' });
      const b = await open('watch', { pollInterval: '1h' });
      let woken = 0;
      const stop = b.watch(() => {
        woken++;
      });
      // The first call says the watch is in place (entries may have come before it).
      await until(() => woken === 1, 'the watch to be in place');
      woken = 0;
      await a.append([sampleChange('src', 1)]);
      await until(() => woken > 0, 'a wake-up');
      stop();
      woken = 0;
      await a.append([sampleChange('src', 2)]);
      // The append was acknowledged, so its message passed any subscription; a flush round trip later, nothing came.
      await b.client.connection.flush();
      await new Promise((resolve) => setImmediate(resolve));
      expect(woken).toBe(0);
    });

    /** The names of the consumers on `stream`. */
    const consumersOf = async (stream: string): Promise<string[]> => {
      const names: string[] = [];
      for await (const c of await admin.manager.consumers.list(stream)) names.push(c.name);
      return names;
    };

    it('pushes each stored message to a caught-up reader: every append reads in order, without a pull per read', async () => {
      const a = await open('push');
      const b = await open('push', { pollInterval: '1h' });
      // Pull requests pass through core NATS, where a subscriber of the same account sees them.
      let pulls = 0;
      const sub = admin.connection.subscribe(`$JS.API.CONSUMER.MSG.NEXT.${b.stream}.>`, {
        callback: () => {
          pulls++;
        },
      });
      await admin.connection.flush();
      let woken = 0;
      const stop = b.watch(() => {
        woken++;
      });
      await until(() => woken === 1, 'the watch to be in place');
      expect(await b.read(0, 100)).toEqual([]);
      const read: LogEntry[] = [];
      const sizes = [1, 3, 1, 700, 2, 1, 1, 40];
      let n = 1;
      for (const size of sizes) {
        woken = 0;
        await a.append(runsOf('src', n, [['t', size]]));
        n += size;
        // Stored, so the reader's outstanding pull brings it and wakes the watcher.
        await until(() => woken > 0, 'a wake-up');
        const entries = await b.read(read.length, 1000);
        expect(entries.map((e) => e.offset)).toEqual(range(read.length + 1, read.length + size));
        read.push(...entries);
      }
      expect(read.map((e) => e.position)).toEqual(positions('src', range(1, n - 1)));

      // A publish JetStream refuses passes core NATS all the same: the reader never serves it.
      const forged = JSON.stringify([JSON.parse(serializeChange(sampleChange('forged', 1, 't')))]);
      const refused = await rejectionOf(
        admin.publish(a.subjectOf('t'), forged, {
          expectedLastSequence: 1_000_000,
          headers: { 'Strata-Offset': String(n), 'Strata-Count': '1' },
        }),
      );
      expect(refused).toMatchObject({ code: 'E_CONFLICT' });
      expect(await b.read(n - 1, 10)).toEqual([]);
      await a.append(runsOf('src', n, [['t', 1]]));
      expect((await b.read(n - 1, 10)).map((e) => [e.offset, e.position])).toEqual([
        [n, positions('src', [n])[0]],
      ]);

      // One consumer served every read, its pulls outstanding between reads.
      expect(await consumersOf(b.stream)).toHaveLength(1);
      expect(pulls).toBeLessThanOrEqual(2);
      stop();
      sub.unsubscribe();
      // Closing stops the pull and removes the consumer.
      await b.close();
      expect(await consumersOf(b.stream)).toEqual([]);
    });

    it('continues without a gap or a duplicate when the reader loses its consumer or its connection mid-stream', async () => {
      const a = await open('handover', { maxChangesPerMessage: 7 });
      const b = await open('handover', { reconnectWait: '100ms' });
      const read: LogEntry[] = [];
      const readSome = async (limit: number) => {
        const entries = await b.read(read.length, limit);
        read.push(...entries);
        return entries.length;
      };
      await a.append(runsOf('src', 1, [['t', 50]]));
      // Part of a message read: the rest waits in the reader's buffer.
      expect(await readSome(10)).toBe(10);
      // The server deletes the consumer under the reader's outstanding pull.
      for (const name of await consumersOf(b.stream)) await admin.manager.consumers.delete(b.stream, name);
      await a.append(runsOf('src', 51, [['t', 30]]));
      while ((await readSome(13)) > 0);
      expect(read.map((e) => e.offset)).toEqual(range(1, 80));

      // The connection drops and comes back while appends go on.
      const appending = (async () => {
        for (let i = 0; i < 10; i++) await a.append(runsOf('src', 81 + i * 5, [['t', 5]]));
      })();
      await readSome(17);
      const events = b.client.status();
      const reconnected = (async () => {
        for await (const event of events) if (event.type === 'reconnect') return;
      })();
      await b.client.connection.reconnect();
      await reconnected;
      await readSome(9);
      await appending;
      while ((await readSome(9)) > 0);
      expect(read.map((e) => e.offset)).toEqual(range(1, 130));
      expect(read.map((e) => e.position)).toEqual(positions('src', range(1, 130)));
    });

    it('notices a delivery that never reached the reader and reads that message again on a new consumer', async () => {
      const a = await open('gap', { maxChangesPerMessage: 1 });
      const b = await open('gap');
      expect(await b.read(0, 10)).toEqual([]);
      // More messages than the reader's buffer takes: its pulls end filled, none left waiting.
      await a.append(runsOf('src', 1, [['t', 200]]));
      const [name] = await consumersOf(b.stream);
      await until(async () => {
        const info = await admin.manager.consumers.info(b.stream, name!);
        return info.delivered.consumer_seq > 0 && info.num_waiting === 0;
      }, 'the reader to hold all it asked for');
      // Another client takes the consumer's next delivery, as a message lost in transit would be.
      const consumer = await admin.jetstream.consumers.get(b.stream, name!);
      expect((await consumer.next({ expires: 5_000 }))?.seq).toBe(65);
      const entries = await readAll(b, 7);
      expect(entries.map((e) => e.offset)).toEqual(range(1, 200));
      expect(entries.map((e) => e.position)).toEqual(positions('src', range(1, 200)));
    });

    it('asks for a bounded number of messages for a reader nobody reads, and the rest when it reads', async () => {
      const a = await open('bounded', { maxChangesPerMessage: 1 });
      const b = await open('bounded');
      expect(await b.read(0, 10)).toEqual([]);
      await a.append(runsOf('src', 1, [['t', 300]]));
      const [name] = await consumersOf(b.stream);
      const state = () => admin.manager.consumers.info(b.stream, name!);
      await until(async () => (await state()).delivered.consumer_seq > 0, 'the first deliveries');
      // Whatever reached the reader by now, the server holds the rest until the reader has room.
      await b.client.connection.flush();
      const info = await state();
      expect(info.delivered.consumer_seq).toBeLessThanOrEqual(64);
      expect(info.num_pending).toBe(300 - info.delivered.consumer_seq);
      expect((await readAll(b, 100)).map((e) => e.offset)).toEqual(range(1, 300));
    });

    it("leaves the user's own client open on close", async () => {
      const own = await connectNats({ url: env.natsUrl });
      const log = await createNatsChangeLog({ client: own, name: streamName('userclient') });
      await log.append([sampleChange('src', 1)]);
      await log.close();
      await log.close();
      expect(own.closed).toBe(false);
      expect((await own.streamInfo(log.stream))?.state.messages).toBe(1);
      expect(isStrataError(await rejectionOf(log.head()), 'E_CLOSED')).toBe(true);
      await own.close();
    });
  });
});

describe('nats change log options', () => {
  it('rejects invalid options with E_CONFIG naming the option, before connecting', async () => {
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const cases: [unknown, string][] = [
      [undefined, 'name'],
      [{ url }, 'name'],
      [{ url, name: 'has.dot' }, 'name'],
      [{ url, name: 'ok', subjectPrefix: 'a.*' }, 'subjectPrefix'],
      [{ url, name: 'ok', subjectPrefix: 'a..b' }, 'subjectPrefix'],
      [{ url, name: 'ok', storage: 'disk' }, 'storage'],
      [{ url, name: 'ok', maxAge: '-1s' }, 'maxAge'],
      [{ url, name: 'ok', maxAge: '1m', duplicateWindow: '2m' }, 'duplicateWindow'],
      [{ url, name: 'ok', duplicateWindow: 0 }, 'duplicateWindow'],
      [{ url, name: 'ok', pollInterval: 0 }, 'pollInterval'],
      [{ url, name: 'ok', requestTimeout: 'soon' }, 'requestTimeout'],
      [{ url, name: 'ok', maxChangesPerMessage: 0 }, 'maxChangesPerMessage'],
      [{ url, name: 'ok', maxChangesPerMessage: 10_001 }, 'maxChangesPerMessage'],
      [{ url, name: 'ok', maxChangesPerMessage: 2.5 }, 'maxChangesPerMessage'],
      [{ url, name: 'ok', maxChangesPerMessage: '500' }, 'maxChangesPerMessage'],
      [{ name: 'ok', client: {} }, 'client'],
      [{ url, name: 'ok', client: {} }, 'url'],
      [{ url: 'http://127.0.0.1:4222', name: 'ok' }, 'url'],
    ];
    for (const [options, option] of cases) {
      const err = await rejectionOf(createNatsChangeLog(options as NatsChangeLogOptions));
      expect(err, option).toMatchObject({ code: 'E_CONFIG', option });
    }
  });

  it('fails with E_CONNECTION within the bound when no server listens', async () => {
    const port = await freePort();
    const attempt = createNatsChangeLog({
      url: `nats://127.0.0.1:${port}`,
      name: 'nowhere',
      connectTimeout: '1s',
    });
    const err = await settlesWithin(attempt, 10_000);
    expect(err).toMatchObject({ code: 'E_CONNECTION', port });
  });
});

describe.skipIf(!services.nats)('nats change log on a private server that dies', () => {
  it('rejects appends within the bound while the server is down, then appends and reads again, losing nothing', async () => {
    const dir = tempDir('strata-ncl-');
    const port = await freePort();
    const args = ['-js', '-sd', dir.path];
    let server = await startNatsServer(port, args);
    const options = {
      url: `nats://127.0.0.1:${port}`,
      name: 'faults',
      requestTimeout: '1s',
      reconnectWait: '100ms',
    } as const;
    const log = await createNatsChangeLog(options);
    const other = await createNatsChangeLog(options);
    try {
      await log.append([1, 2, 3].map((n) => sampleChange('src', n)));
      // A read leaves a cursor behind for the next one; the restart takes its consumer away.
      expect((await log.read(0, 10)).map((e) => e.offset)).toEqual([1, 2, 3]);
      let woken = 0;
      const stop = log.watch(() => {
        woken++;
      });
      await until(() => woken > 0, 'the watch to be in place');

      await server.kill();
      for (const call of [
        () => log.append([sampleChange('src', 4)]),
        () => log.read(0, 10),
        () => log.head(),
      ]) {
        const err = await settlesWithin(call(), 10_000);
        expect(isStrataError(err)).toBe(true);
        expect(['E_TIMEOUT', 'E_CONNECTION']).toContain((err as { code: string }).code);
      }

      server = await startNatsServer(port, args);
      await until(
        () =>
          log.append([4, 5].map((n) => sampleChange('src', n))).then(
            () => true,
            () => false,
          ),
        'the log to append again',
      );
      expect((await log.read(3, 100)).map((e) => e.offset)).toEqual([4, 5]);
      // The append that failed during the outage may still have been stored from the client's buffer.
      const entries = await log.read(0, 100);
      expect(entries.map((e) => e.position)).toEqual(positions('src', [1, 2, 3, 4, 5]));
      expect(entries.map((e) => e.offset)).toEqual([1, 2, 3, 4, 5]);
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
      await server.kill();
      dir.remove();
    }
  });

  it('stores a batch once when it is appended again after its publishes went unanswered', async () => {
    const dir = tempDir('strata-ncl-');
    const port = await freePort();
    const server = await startNatsServer(port, ['-js', '-sd', dir.path]);
    const options = {
      url: `nats://127.0.0.1:${port}`,
      name: 'ambiguous',
      requestTimeout: '1s',
      reconnectWait: '100ms',
    } as const;
    const log = await createNatsChangeLog(options);
    const other = await createNatsChangeLog(options);
    try {
      await log.append(runsOf('src', 1, [['a', 10]]));
      const batch = runsOf('src', 11, [
        ['a', 700],
        ['b', 300],
        ['a', 500],
      ]);
      // A stopped server takes the publishes into its socket and answers none of them.
      server.pause();
      expect(await settlesWithin(log.append(batch), 10_000)).toMatchObject({ code: 'E_TIMEOUT' });
      server.resume();
      // Once running again it stores what it had received: the whole batch, which the client gave up on.
      await until(async () => (await other.head()) === 1510, 'the unanswered publishes to be stored');
      expect(await log.append(batch)).toEqual({ appended: 0, duplicates: 1500, lastOffset: 1510 });
      expect(await other.append([...batch, ...runsOf('src', 1511, [['b', 5]])])).toEqual({
        appended: 5,
        duplicates: 1500,
        lastOffset: 1515,
      });
      const entries = await readAll(log);
      expect(entries.map((e) => e.offset)).toEqual(range(1, 1515));
      expect(entries.map((e) => e.position)).toEqual(positions('src', range(1, 1515)));
    } finally {
      server.resume();
      await log.close();
      await other.close();
      await server.kill();
      dir.remove();
    }
  });
});
