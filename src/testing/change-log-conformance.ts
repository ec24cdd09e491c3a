/**
 * The conformance suite of the change-log role. Every strata change log (embedded SQLite, NATS
 * JetStream, Redis Streams) runs it against its real engine; run it against your own log:
 *
 * ```ts
 * describeChangeLogConformance('my log', ({ name }) => openMyLog(name));
 * ```
 */
import { afterAll, describe, expect, it } from 'vitest';
import { type Change, type ChangeLog, type LogEntry, makePosition, type Position } from '../core/changes.js';
import { isStrataError } from '../core/errors.js';

/** What the suite passes to the factory: a log name unique to one test, shared by its instances. */
export interface ChangeLogFactoryOptions {
  name: string;
}

export type ChangeLogFactory = (options: ChangeLogFactoryOptions) => Promise<ChangeLog> | ChangeLog;

/** Options for `describeChangeLogConformance`. */
export interface ChangeLogConformanceOptions {
  /** The log keeps the last position per source (`lastPosition` answers). Default true. */
  tracksLastPosition?: boolean;
  /** Removes what a test's log left behind (streams, keys, files), after it is closed. */
  cleanup?: (options: ChangeLogFactoryOptions) => Promise<void> | void;
}

let counter = 0;

/** A change of `table` row `id` at `source` position `n`. */
export function sampleChange(
  source: string,
  n: number,
  table = 'users',
  id = n,
  extra: Partial<Change> = {},
): Change {
  return {
    source,
    table,
    op: 'insert',
    key: { id },
    before: null,
    after: { id, name: `row ${id}`, n },
    position: makePosition(source, BigInt(1000 + n)),
    txId: `tx${n}`,
    commitTime: Date.UTC(2026, 0, 1) + n,
    ...extra,
  };
}

function strip(entry: LogEntry): Change {
  const { offset: _offset, ...change } = entry;
  return change;
}

/** Registers the change-log conformance tests. */
export function describeChangeLogConformance(
  label: string,
  create: ChangeLogFactory,
  options: ChangeLogConformanceOptions = {},
): void {
  describe(`ChangeLog conformance: ${label}`, () => {
    const opened: Array<{ log: ChangeLog; name: string }> = [];
    const open = async (name?: string) => {
      const logName = name ?? `conf_${process.pid}_${Date.now().toString(36)}_${counter++}`;
      const log = await create({ name: logName });
      opened.push({ log, name: logName });
      return { log, name: logName };
    };

    afterAll(async () => {
      for (const { log } of opened) await log.close();
      const names = [...new Set(opened.map((o) => o.name))];
      for (const name of names) await options.cleanup?.({ name });
    });

    it('starts empty', async () => {
      const { log } = await open();
      expect(await log.head()).toBe(0);
      expect(await log.read(0, 10)).toEqual([]);
    });

    it('appends in order with offsets from 1 and reads every field back', async () => {
      const { log } = await open();
      const changes = [
        sampleChange('src', 1),
        sampleChange('src', 2, 'posts', 7, {
          op: 'update',
          before: { id: 7, body: 'old', tags: ['a'], meta: { deep: { x: 1 } } },
          after: { id: 7, body: 'new ∑ 中文 \u{1F600}', tags: [], meta: null, flag: true, ratio: 0.5 },
          unchanged: ['blob'],
        }),
        sampleChange('src', 3, 'posts', 7, { op: 'delete', before: { id: 7 }, after: null, txId: null }),
        sampleChange('src', 4, 'outbox_topic', 0, {
          op: 'message',
          key: { key: 'order-9' },
          after: { kind: 'OrderPlaced', total: 12.5 },
          headers: { 'content-type': 'application/json' },
        }),
        sampleChange('src', 5, 'users', 5, { snapshot: true }),
      ];
      const result = await log.append(changes);
      expect(result).toEqual({ appended: 5, duplicates: 0, lastOffset: 5 });
      const entries = await log.read(0, 100);
      expect(entries.map((e) => e.offset)).toEqual([1, 2, 3, 4, 5]);
      expect(entries.map(strip)).toEqual(changes);
      expect(await log.head()).toBe(5);
    });

    it('round-trips bytes, bigints and wide rows', async () => {
      const { log } = await open();
      const wide = 'x'.repeat(200_000);
      const change = sampleChange('src', 1, 'blobs', 1, {
        after: { id: 1, data: new Uint8Array([0, 1, 254, 255]), big: 9007199254740993n, wide },
      });
      await log.append([change]);
      const [entry] = await log.read(0, 1);
      expect(entry?.after).toEqual({
        id: 1,
        data: new Uint8Array([0, 1, 254, 255]),
        big: 9007199254740993n,
        wide,
      });
    });

    it('reads from an offset, with a limit and a table filter', async () => {
      const { log } = await open();
      await log.append(
        Array.from({ length: 30 }, (_, i) => sampleChange('src', i + 1, i % 3 === 0 ? 'a' : 'b')),
      );
      const page = await log.read(10, 5);
      expect(page.map((e) => e.offset)).toEqual([11, 12, 13, 14, 15]);
      expect(await log.read(30, 10)).toEqual([]);
      expect(await log.read(1_000, 10)).toEqual([]);
      const onlyA = await log.read(0, 100, { tables: ['a'] });
      expect(onlyA.map((e) => e.table)).toEqual(Array(10).fill('a'));
      expect(onlyA.map((e) => e.offset)).toEqual([1, 4, 7, 10, 13, 16, 19, 22, 25, 28]);
    });

    it('skips changes already appended, so a relay may re-append after a crash', async () => {
      const { log } = await open();
      const batch = [1, 2, 3].map((n) => sampleChange('src', n));
      expect(await log.append(batch)).toMatchObject({ appended: 3, duplicates: 0 });
      expect(await log.append(batch)).toEqual({ appended: 0, duplicates: 3, lastOffset: 3 });
      const next = [2, 3, 4, 5].map((n) => sampleChange('src', n));
      expect(await log.append(next)).toEqual({ appended: 2, duplicates: 2, lastOffset: 5 });
      const entries = await log.read(0, 100);
      expect(entries.map((e) => e.position)).toEqual(
        [1, 2, 3, 4, 5].map((n) => makePosition('src', BigInt(1000 + n))),
      );
    });

    it('keeps positions of different sources apart', async () => {
      const { log } = await open();
      await log.append([sampleChange('one', 1), sampleChange('two', 1), sampleChange('one', 2)]);
      expect(await log.append([sampleChange('two', 1), sampleChange('two', 2)])).toMatchObject({
        appended: 1,
        duplicates: 1,
      });
      if (options.tracksLastPosition !== false) {
        expect(await log.lastPosition('one')).toBe(makePosition('one', 1002n));
        expect(await log.lastPosition('two')).toBe(makePosition('two', 1002n));
        expect(await log.lastPosition('three')).toBeUndefined();
      }
      expect(await log.head()).toBe(4);
    });

    it('appends an empty batch as a no-op', async () => {
      const { log } = await open();
      expect(await log.append([])).toEqual({ appended: 0, duplicates: 0, lastOffset: 0 });
    });

    it('is shared by two instances with the same name, and wakes watchers of the other', async () => {
      const a = await open();
      const b = await open(a.name);
      let woken = 0;
      const stop = b.log.watch(() => {
        woken++;
      });
      await a.log.append([sampleChange('src', 1), sampleChange('src', 2)]);
      const deadline = Date.now() + 10_000;
      while (woken === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      stop();
      expect(woken).toBeGreaterThan(0);
      expect((await b.log.read(0, 10)).map((e) => e.offset)).toEqual([1, 2]);
      expect(await b.log.head()).toBe(2);
    });

    it('gives concurrent appenders distinct offsets and loses nothing', async () => {
      const a = await open();
      const b = await open(a.name);
      await Promise.all([
        (async () => {
          for (let i = 1; i <= 20; i++) await a.log.append([sampleChange('left', i)]);
        })(),
        (async () => {
          for (let i = 1; i <= 20; i++) await b.log.append([sampleChange('right', i)]);
        })(),
      ]);
      const entries = await a.log.read(0, 100);
      expect(entries.map((e) => e.offset)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
      const positions = (source: string) => entries.filter((e) => e.source === source).map((e) => e.position);
      const expected = (source: string): Position[] =>
        Array.from({ length: 20 }, (_, i) => makePosition(source, BigInt(1001 + i)));
      expect(positions('left')).toEqual(expected('left'));
      expect(positions('right')).toEqual(expected('right'));
    });

    it('fails with E_CLOSED after close, and closing twice is safe', async () => {
      const { log } = await open();
      await log.close();
      await log.close();
      const err = await log.append([sampleChange('src', 1)]).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CLOSED')).toBe(true);
      const readErr = await log.read(0, 1).catch((e: unknown) => e);
      expect(isStrataError(readErr, 'E_CLOSED')).toBe(true);
    });
  });
}
