/**
 * The conformance suite of the event-store role. Every strata event store (SQLite, PostgreSQL)
 * runs it against its real engine; run it against your own store the same way:
 *
 * ```ts
 * describeEventStoreConformance('my store', (options) => createMyEventStore({ driver, ...options }));
 * ```
 *
 * The factory is called with a table prefix unique to one test (stores created with the same
 * prefix share their tables), and with the event types, snapshot settings and clock the test needs.
 */
import type { StandardSchemaV1 } from '@standard-schema/spec';
import { afterAll, describe, expect, it } from 'vitest';
import { parsePosition } from '../core/changes.js';
import type { Clock } from '../core/clock.js';
import { isStrataError, type StrataError, type ValidationError } from '../core/errors.js';
import type {
  EventStore,
  EventTypeDefinition,
  NewEvent,
  RecordedEvent,
  SnapshotOptions,
} from '../events/types.js';
import { FakeClock } from './fake-clock.js';

/** What the suite passes to the factory. */
export interface EventStoreFactoryOptions {
  /** A table prefix unique to one test (letters, digits, underscores); share it to share tables. */
  tablePrefix: string;
  /** Event types to register. */
  types?: EventTypeDefinition[];
  /** Snapshot settings. */
  snapshots?: SnapshotOptions;
  /** The clock the store must use. */
  clock?: Clock;
}

/** Creates a store for one test of the suite. */
export type EventStoreFactory = (options: EventStoreFactoryOptions) => Promise<EventStore> | EventStore;

/** Options for `describeEventStoreConformance`. */
export interface EventStoreConformanceOptions {
  /** Runs after the suite, once every store it created is closed. */
  cleanup?: () => Promise<void> | void;
}

/** A Standard Schema for `{ amount: number >= 0, currency?: string }` that fills in the currency. */
const depositSchema: StandardSchemaV1<unknown, { amount: number; currency: string }> = {
  '~standard': {
    version: 1,
    vendor: 'strata-conformance',
    validate(value: unknown) {
      const v = value as { amount?: unknown; currency?: unknown } | null;
      const issues: StandardSchemaV1.Issue[] = [];
      if (typeof v !== 'object' || v === null) return { issues: [{ message: 'expected an object' }] };
      if (typeof v.amount !== 'number' || v.amount < 0) {
        issues.push({ message: 'expected a non-negative number', path: ['amount'] });
      }
      if (v.currency !== undefined && typeof v.currency !== 'string') {
        issues.push({ message: 'expected a string', path: ['currency'] });
      }
      if (issues.length > 0) return { issues };
      return { value: { amount: v.amount as number, currency: (v.currency as string | undefined) ?? 'EUR' } };
    },
  },
};

function ev(type: string, data: Record<string, unknown>, extra: Partial<NewEvent> = {}): NewEvent {
  return { type, data, ...extra };
}

async function rejection(promise: Promise<unknown>): Promise<StrataError> {
  try {
    await promise;
  } catch (err) {
    if (isStrataError(err)) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

async function until(condition: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

let counter = 0;

/** Registers the event-store conformance tests. */
export function describeEventStoreConformance(
  label: string,
  create: EventStoreFactory,
  options: EventStoreConformanceOptions = {},
): void {
  describe(`EventStore conformance: ${label}`, () => {
    const opened: EventStore[] = [];
    const prefixes = new WeakMap<EventStore, string>();
    const open = async (o: Partial<EventStoreFactoryOptions> = {}) => {
      const tablePrefix =
        o.tablePrefix ?? `esc_${process.pid}_${Math.random().toString(36).slice(2, 6)}_${counter++}`;
      const store = await create({ ...o, tablePrefix });
      opened.push(store);
      prefixes.set(store, tablePrefix);
      await store.migrate();
      return store;
    };
    const prefixOf = (store: EventStore) => prefixes.get(store)!;

    afterAll(async () => {
      for (const store of opened) await store.close();
      await options.cleanup?.();
    });

    it('appends to a new stream and reads every field back', async () => {
      const store = await open();
      expect(await store.head()).toBe(0);
      expect(await store.readStream('order-1')).toEqual([]);
      expect(await store.streamInfo('order-1')).toBeUndefined();
      const result = await store.append(
        'order-1',
        [
          ev(
            'OrderPlaced',
            { total: 12.5, items: ['a', 'b'], note: 'ünïcødé ∑ 中文 \u{1F600}', nested: { x: null } },
            {
              metadata: { user: 'u1', correlation: 'c-1' },
            },
          ),
          ev('OrderPaid', { amount: 12.5, paid: true }),
        ],
        { expected: 'no_stream' },
      );
      expect(result.version).toBe(2);
      expect(result.alreadyAppended).toBe(false);
      expect(result.positions).toHaveLength(2);
      expect(result.positions[1]!).toBeGreaterThan(result.positions[0]!);
      const events = await store.readStream('order-1');
      expect(events).toHaveLength(2);
      expect(events[0]).toMatchObject({
        stream: 'order-1',
        type: 'OrderPlaced',
        version: 1,
        position: result.positions[0],
        schemaVersion: 1,
        data: { total: 12.5, items: ['a', 'b'], note: 'ünïcødé ∑ 中文 \u{1F600}', nested: { x: null } },
        metadata: { user: 'u1', correlation: 'c-1' },
      });
      expect(events[1]).toMatchObject({
        type: 'OrderPaid',
        version: 2,
        metadata: {},
        data: { amount: 12.5, paid: true },
      });
      for (const e of events) {
        expect(typeof e.id).toBe('string');
        expect(e.id.length).toBeGreaterThan(0);
        expect(Number.isFinite(e.time)).toBe(true);
      }
      expect(await store.streamInfo('order-1')).toEqual({
        stream: 'order-1',
        version: 2,
        deleted: false,
        metadata: {},
      });
      expect(await store.head()).toBe(result.positions[1]);
    });

    it('checks the expected version and reports a conflict with stream, expected and actual', async () => {
      const store = await open();
      expect((await store.append('acct-1', [ev('Opened', {})], { expected: 'no_stream' })).version).toBe(1);
      expect((await store.append('acct-1', [ev('Deposited', { n: 1 })], { expected: 1 })).version).toBe(2);
      const head = await store.head();

      const stale = await rejection(store.append('acct-1', [ev('Deposited', { n: 2 })], { expected: 1 }));
      expect(stale.code).toBe('E_VERSION_CONFLICT');
      expect(stale.details).toEqual({ stream: 'acct-1', expected: 1, actual: 2 });
      expect(stale.message).toContain('acct-1');

      const exists = await rejection(store.append('acct-1', [ev('Opened', {})], { expected: 'no_stream' }));
      expect(exists.details).toEqual({ stream: 'acct-1', expected: 'no_stream', actual: 2 });
      const missing = await rejection(store.append('acct-2', [ev('X', {})], { expected: 'stream_exists' }));
      expect(missing.details).toEqual({ stream: 'acct-2', expected: 'stream_exists', actual: 0 });
      const ahead = await rejection(store.append('acct-2', [ev('X', {})], { expected: 3 }));
      expect(ahead.details).toEqual({ stream: 'acct-2', expected: 3, actual: 0 });

      // Nothing of the refused appends was written.
      expect(await store.head()).toBe(head);
      expect((await store.readStream('acct-1')).map((e) => e.version)).toEqual([1, 2]);
      expect(await store.readStream('acct-2')).toEqual([]);

      expect(
        (await store.append('acct-1', [ev('Deposited', { n: 3 })], { expected: 'stream_exists' })).version,
      ).toBe(3);
      expect((await store.append('acct-1', [ev('Deposited', { n: 4 })], { expected: 'any' })).version).toBe(
        4,
      );
      expect((await store.append('acct-1', [ev('Deposited', { n: 5 })])).version).toBe(5);
      expect((await store.append('acct-3', [ev('Opened', {})], { expected: 0 })).version).toBe(1);
    });

    it('appends to several streams atomically: all or nothing', async () => {
      const store = await open();
      const results = await store.appendMany([
        { stream: 'from-1', expected: 'no_stream', events: [ev('Debited', { a: 5 }), ev('Noted', {})] },
        { stream: 'to-1', expected: 'no_stream', events: [ev('Credited', { a: 5 })] },
      ]);
      expect(results.map((r) => r.version)).toEqual([2, 1]);
      const all = results.flatMap((r) => r.positions);
      expect([...all].sort((a, b) => a - b)).toEqual(all);
      const head = await store.head();

      const err = await rejection(
        store.appendMany([
          { stream: 'new-1', expected: 'no_stream', events: [ev('Created', {})] },
          { stream: 'from-1', expected: 1, events: [ev('Debited', { a: 1 })] },
        ]),
      );
      expect(err.code).toBe('E_VERSION_CONFLICT');
      expect(err.details).toEqual({ stream: 'from-1', expected: 1, actual: 2 });
      expect(await store.readStream('new-1')).toEqual([]);
      expect((await store.streamInfo('new-1'))?.version ?? 0).toBe(0);
      expect(await store.head()).toBe(head);
      expect(await store.readAll(0, 100)).toHaveLength(3);

      const twice = await rejection(
        store.appendMany([
          { stream: 'x-1', expected: 'any', events: [ev('A', {})] },
          { stream: 'x-1', expected: 'any', events: [ev('B', {})] },
        ]),
      );
      expect(twice.code).toBe('E_VALIDATION');
    });

    it('makes a retried append idempotent by event id, and refuses an id reused with another payload', async () => {
      const store = await open();
      const events = [
        ev('Registered', { email: 'a@example.com' }, { id: 'evt-1', metadata: { by: 'signup' } }),
        ev('Verified', { at: 1 }, { id: 'evt-2' }),
      ];
      const first = await store.append('user-1', events, { expected: 'no_stream' });
      const head = await store.head();
      // The retry would conflict on its expected version; the ids say it already happened.
      const retry = await store.append('user-1', events, { expected: 'no_stream' });
      expect(retry).toEqual({ version: 2, positions: first.positions, alreadyAppended: true });
      expect(await store.head()).toBe(head);
      expect(await store.readStream('user-1')).toHaveLength(2);
      expect((await store.readStream('user-1')).map((e) => e.id)).toEqual(['evt-1', 'evt-2']);

      const changed = await rejection(
        store.append('user-1', [
          ev('Registered', { email: 'b@example.com' }, { id: 'evt-1', metadata: { by: 'signup' } }),
        ]),
      );
      expect(changed.code).toBe('E_DUPLICATE_EVENT');
      expect(changed.details).toMatchObject({ stream: 'user-1', id: 'evt-1' });
      const otherStream = await rejection(store.append('user-2', [events[0]!]));
      expect(otherStream.code).toBe('E_DUPLICATE_EVENT');
      const partial = await rejection(store.append('user-1', [events[0]!, ev('Other', {}, { id: 'evt-3' })]));
      expect(partial.code).toBe('E_DUPLICATE_EVENT');
      const sameTwice = await rejection(
        store.append('user-3', [ev('A', {}, { id: 'dup' }), ev('B', {}, { id: 'dup' })]),
      );
      expect(sameTwice.code).toBe('E_VALIDATION');
      expect(await store.head()).toBe(head);
    });

    it('reads a stream forwards and backwards from a version, with a limit', async () => {
      const store = await open();
      await store.append(
        'log-1',
        Array.from({ length: 10 }, (_, i) => ev('Line', { i: i + 1 })),
      );
      const versions = (events: RecordedEvent[]) => events.map((e) => e.version);
      expect(versions(await store.readStream('log-1'))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(versions(await store.readStream('log-1', { from: 4, limit: 3 }))).toEqual([4, 5, 6]);
      expect(versions(await store.readStream('log-1', { direction: 'backwards' }))).toEqual([
        10, 9, 8, 7, 6, 5, 4, 3, 2, 1,
      ]);
      expect(
        versions(await store.readStream('log-1', { direction: 'backwards', from: 5, limit: 2 })),
      ).toEqual([5, 4]);
      expect(versions(await store.readStream('log-1', { direction: 'backwards', limit: 1 }))).toEqual([10]);
      expect(await store.readStream('log-1', { from: 11 })).toEqual([]);
      expect((await store.readStream('log-1', { from: 10 }))[0]?.data).toEqual({ i: 10 });
    });

    it('reads the global log after a position, in order, with a limit and a type filter', async () => {
      const store = await open();
      expect(await store.readAll(0, 10)).toEqual([]);
      const expected: string[] = [];
      for (let i = 0; i < 9; i++) {
        const stream = `s${i % 3}-1`;
        const type = i % 2 === 0 ? 'Even' : 'Odd';
        await store.append(stream, [ev(type, { i }, { id: `g-${i}` })]);
        expected.push(`g-${i}`);
      }
      const all = await store.readAll(0, 100);
      expect(all.map((e) => e.id)).toEqual(expected);
      const positions = all.map((e) => e.position);
      for (let i = 1; i < positions.length; i++) expect(positions[i]!).toBeGreaterThan(positions[i - 1]!);
      expect((await store.readAll(positions[2]!, 2)).map((e) => e.id)).toEqual(['g-3', 'g-4']);
      expect((await store.readAll(0, 100, { types: ['Odd'] })).map((e) => e.id)).toEqual([
        'g-1',
        'g-3',
        'g-5',
        'g-7',
      ]);
      expect(await store.readAll(0, 100, { types: [] })).toEqual([]);
      expect(await store.head()).toBe(positions.at(-1));
      expect(await store.readAll(positions.at(-1)!, 10)).toEqual([]);
    });

    it('applies stream metadata on read: max count, truncate before and max age', async () => {
      const clock = new FakeClock();
      const store = await open({ clock });
      await store.append(
        'feed-1',
        Array.from({ length: 5 }, (_, i) => ev('Item', { i: i + 1 })),
      );
      await clock.advance(10_000);
      await store.append(
        'feed-1',
        Array.from({ length: 5 }, (_, i) => ev('Item', { i: i + 6 })),
      );
      const versions = async () => (await store.readStream('feed-1')).map((e) => e.version);

      await store.setMetadata('feed-1', { maxCount: 3 });
      expect(await versions()).toEqual([8, 9, 10]);
      expect((await store.streamInfo('feed-1'))?.metadata).toEqual({ maxCount: 3 });
      await store.setMetadata('feed-1', { truncateBefore: 4 });
      expect(await versions()).toEqual([4, 5, 6, 7, 8, 9, 10]);
      await store.setMetadata('feed-1', { maxAgeMs: 5_000, custom: { owner: 'team-a' } });
      expect(await versions()).toEqual([6, 7, 8, 9, 10]);
      expect((await store.streamInfo('feed-1'))?.metadata).toEqual({
        maxAgeMs: 5_000,
        custom: { owner: 'team-a' },
      });
      await clock.advance(6_000);
      expect(await versions()).toEqual([]);
      await store.setMetadata('feed-1', {});
      expect(await versions()).toHaveLength(10);
      // Metadata is for stream reads; the global log keeps everything.
      expect(await store.readAll(0, 100)).toHaveLength(10);

      const bad = await rejection(store.setMetadata('feed-1', { maxCount: 0 }));
      expect(bad.code).toBe('E_VALIDATION');
      // Metadata before the first event creates the stream without events.
      await store.setMetadata('later-1', { maxCount: 2 });
      expect(await store.streamInfo('later-1')).toEqual({
        stream: 'later-1',
        version: 0,
        deleted: false,
        metadata: { maxCount: 2 },
      });
      await store.append('later-1', [ev('A', {}), ev('B', {}), ev('C', {})], { expected: 'no_stream' });
      expect((await store.readStream('later-1')).map((e) => e.type)).toEqual(['B', 'C']);
    });

    it('soft-deletes a stream: reads are empty, appends fail until it is recreated with no_stream', async () => {
      const store = await open();
      await store.append('cart-1', [
        ev('Added', { sku: 1 }),
        ev('Added', { sku: 2 }),
        ev('Added', { sku: 3 }),
      ]);
      await store.deleteStream('cart-1');
      expect(await store.readStream('cart-1')).toEqual([]);
      expect(await store.streamInfo('cart-1')).toMatchObject({ version: 3, deleted: true });
      for (const expected of ['any', 'stream_exists', 3] as const) {
        const err = await rejection(store.append('cart-1', [ev('Added', { sku: 4 })], { expected }));
        expect(err.code).toBe('E_STREAM_DELETED');
        expect(err.details).toEqual({ stream: 'cart-1' });
      }
      // Recreated: versions continue, the old incarnation stays hidden from stream reads.
      const again = await store.append('cart-1', [ev('Added', { sku: 9 })], { expected: 'no_stream' });
      expect(again.version).toBe(4);
      expect((await store.readStream('cart-1')).map((e) => [e.version, e.data.sku])).toEqual([[4, 9]]);
      expect((await store.readStream('cart-1', { direction: 'backwards' })).map((e) => e.version)).toEqual([
        4,
      ]);
      expect(await store.streamInfo('cart-1')).toMatchObject({ version: 4, deleted: false });
      expect((await store.append('cart-1', [ev('Added', { sku: 10 })], { expected: 4 })).version).toBe(5);
      expect(await store.readAll(0, 100)).toHaveLength(5);
      await store.deleteStream('never-written');
      expect(await store.streamInfo('never-written')).toBeUndefined();
    });

    it('validates events with their schema on append and writes nothing when one fails', async () => {
      const store = await open({ types: [{ type: 'Deposited', version: 2, schema: depositSchema }] });
      const err = (await rejection(
        store.append('wallet-1', [ev('Deposited', { amount: 5 }), ev('Deposited', { amount: -1 })]),
      )) as ValidationError;
      expect(err.code).toBe('E_VALIDATION');
      expect(err.issues).toEqual([
        { path: [1, 'data', 'amount'], message: 'expected a non-negative number' },
      ]);
      expect(await store.head()).toBe(0);

      await store.append('wallet-1', [
        ev('Deposited', { amount: 5 }),
        ev('Unregistered', { anything: true }),
      ]);
      const [deposit, other] = await store.readStream('wallet-1');
      expect(deposit).toMatchObject({ schemaVersion: 2, data: { amount: 5, currency: 'EUR' } });
      expect(other).toMatchObject({ schemaVersion: 1, data: { anything: true } });

      const shape = (await rejection(
        store.append('wallet-1', [
          { type: 'Deposited', data: [1] as unknown as Record<string, unknown> },
          { type: '', data: {} },
        ]),
      )) as ValidationError;
      expect(shape.issues.map((i) => i.path)).toEqual([
        [0, 'data'],
        [1, 'type'],
      ]);
      const future = await rejection(
        store.append('wallet-1', [ev('Deposited', { amount: 1 }, { schemaVersion: 3 })]),
      );
      expect(future.code).toBe('E_VALIDATION');
    });

    it('upcasts older schema versions step by step on read', async () => {
      const v1 = await open({ types: [{ type: 'Renamed', version: 1 }] });
      await v1.append('person-1', [ev('Renamed', { name: 'Ada Lovelace' })]);
      const upcasters = {
        1: (d: Record<string, unknown>) => {
          const [first, ...rest] = String(d.name).split(' ');
          return { first, last: rest.join(' ') };
        },
        2: (d: Record<string, unknown>) => ({ ...d, display: `${d.last}, ${d.first}` }),
      };
      const v3 = await open({
        tablePrefix: prefixOf(v1),
        types: [{ type: 'Renamed', version: 3, upcasters }],
      });
      const [read] = await v3.readStream('person-1');
      expect(read).toMatchObject({
        schemaVersion: 3,
        data: { first: 'Ada', last: 'Lovelace', display: 'Lovelace, Ada' },
      });
      expect((await v3.readAll(0, 10))[0]?.data).toEqual(read?.data);
      // An old writer's payload is upcast on append too, and stored as the current version.
      await v3.append('person-1', [ev('Renamed', { name: 'Grace Hopper' }, { schemaVersion: 1 })]);
      expect((await v1.readStream('person-1'))[1]).toMatchObject({
        schemaVersion: 3,
        data: { first: 'Grace', last: 'Hopper', display: 'Hopper, Grace' },
      });
      const gap = await open({
        tablePrefix: prefixOf(v1),
        types: [{ type: 'Renamed', version: 3, upcasters: { 2: upcasters[2] } }],
      });
      const err = await rejection(gap.readStream('person-1'));
      expect(err.code).toBe('E_UPCAST');
      expect(err.details).toMatchObject({ type: 'Renamed', fromVersion: 1, toVersion: 2 });
    });

    it('keeps snapshots per state version and never trusts another one', async () => {
      const store = await open();
      expect(await store.loadSnapshot('acct-9', 1)).toBeUndefined();
      await store.saveSnapshot('acct-9', { version: 3, stateVersion: 1, state: { balance: 30 } });
      expect(await store.loadSnapshot('acct-9', 1)).toMatchObject({
        stream: 'acct-9',
        version: 3,
        stateVersion: 1,
        state: { balance: 30 },
      });
      expect(await store.loadSnapshot('acct-9', 2)).toBeUndefined();
      await store.saveSnapshot('acct-9', { version: 2, stateVersion: 1, state: { balance: 20 } });
      expect((await store.loadSnapshot('acct-9', 1))?.version).toBe(3);
      await store.saveSnapshot('acct-9', { version: 5, stateVersion: 1, state: { balance: 50 } });
      expect(await store.loadSnapshot('acct-9', 1)).toMatchObject({ version: 5, state: { balance: 50 } });
    });

    it('loads an aggregate from its snapshot and the events after it, saving snapshots by policy', async () => {
      const store = await open({ snapshots: { policy: (type) => (type === 'acct' ? 3 : undefined) } });
      let applied = 0;
      const options = {
        initialState: () => ({ balance: 0 }),
        evolve: (state: { balance: number }, event: RecordedEvent) => {
          applied++;
          return { balance: state.balance + (event.data.amount as number) };
        },
      };
      await store.append(
        'acct-1',
        [1, 2, 3, 4, 5].map((amount) => ev('Deposited', { amount })),
      );
      const first = await store.loadAggregate('acct-1', options);
      expect(first).toEqual({
        state: { balance: 15 },
        version: 5,
        snapshotVersion: undefined,
        snapshotSaved: true,
        deleted: false,
      });
      expect(applied).toBe(5);
      expect(await store.loadSnapshot('acct-1', 1)).toMatchObject({ version: 5, state: { balance: 15 } });

      applied = 0;
      expect(await store.loadAggregate('acct-1', options)).toMatchObject({
        state: { balance: 15 },
        version: 5,
        snapshotVersion: 5,
        snapshotSaved: false,
      });
      expect(applied).toBe(0);

      await store.append('acct-1', [ev('Deposited', { amount: 10 }), ev('Deposited', { amount: 20 })], {
        expected: 5,
      });
      applied = 0;
      expect(await store.loadAggregate('acct-1', options)).toMatchObject({
        state: { balance: 45 },
        version: 7,
      });
      expect(applied).toBe(2);

      // Another state shape ignores the snapshot, even a poisoned one of its own version elsewhere.
      await store.saveSnapshot('acct-1', { version: 7, stateVersion: 9, state: { balance: -1 } });
      applied = 0;
      expect(await store.loadAggregate('acct-1', { ...options, stateVersion: 2 })).toMatchObject({
        state: { balance: 45 },
        snapshotVersion: undefined,
        snapshotSaved: true,
      });
      expect(applied).toBe(7);

      await store.append(
        'cart-7',
        [1, 2, 3, 4].map((amount) => ev('Added', { amount })),
      );
      expect(await store.loadAggregate('cart-7', options)).toMatchObject({
        version: 4,
        snapshotSaved: false,
      });
      expect(await store.loadSnapshot('cart-7', 1)).toBeUndefined();

      expect(await store.loadAggregate('acct-404', options)).toEqual({
        state: { balance: 0 },
        version: 0,
        snapshotVersion: undefined,
        snapshotSaved: false,
        deleted: false,
      });
      await store.deleteStream('acct-1');
      expect(await store.loadAggregate('acct-1', options)).toMatchObject({
        state: { balance: 0 },
        version: 7,
        deleted: true,
      });
      // Recreated: the snapshot of the old incarnation is not this stream's state.
      await store.append('acct-1', [ev('Deposited', { amount: 1 })], { expected: 'no_stream' });
      expect(await store.loadAggregate('acct-1', options)).toMatchObject({
        state: { balance: 1 },
        version: 8,
        snapshotVersion: undefined,
      });
    });

    it('exposes the global log as a change log for the consumer runtime', async () => {
      const store = await open();
      await store.append('user-1', [ev('Registered', { n: 1 })]);
      await store.append('user-2', [ev('Registered', { n: 2 }), ev('Renamed', { n: 3 })]);
      await store.append('cart-1', [ev('Added', { n: 4 })]);
      const log = store.asChangeLog();
      expect(log.name).toBe(store.name);
      const entries = await log.read(0, 10);
      const events = await store.readAll(0, 10);
      expect(entries.map((e) => e.offset)).toEqual(events.map((e) => e.position));
      expect(entries.map((e) => e.table)).toEqual(['user', 'user', 'user', 'cart']);
      expect(entries[1]).toMatchObject({
        source: store.name,
        op: 'insert',
        key: { stream: 'user-2' },
        before: null,
        after: { stream: 'user-2', type: 'Registered', version: 1, data: { n: 2 } },
        commitTime: events[1]!.time,
      });
      const parts = parsePosition(entries[3]!.position);
      expect(parts).toEqual({ source: store.name, major: BigInt(events[3]!.position), minor: 0 });
      expect((await log.read(0, 10, { tables: ['cart'] })).map((e) => e.key)).toEqual([{ stream: 'cart-1' }]);
      expect(await log.read(events[1]!.position, 1)).toHaveLength(1);
      expect(await log.head()).toBe(await store.head());
      expect(await log.lastPosition(store.name)).toBe(entries[3]!.position);
      expect(await log.lastPosition('elsewhere')).toBeUndefined();
      const refused = await rejection(log.append([]));
      expect(refused.code).toBe('E_UNSUPPORTED');
      await log.close();
      expect(await store.head()).toBe(events[3]!.position);
    });

    it('wakes watchers after an append', async () => {
      const store = await open();
      let woken = 0;
      const stop = store.watch(() => {
        woken++;
      });
      await new Promise((r) => setTimeout(r, 20));
      const before = woken;
      await store.append('ping-1', [ev('Ping', {})]);
      await until(() => woken > before, 'the watcher');
      stop();
      stop();
    });

    it('lets exactly one of two concurrent appends with the same expected version win', async () => {
      const store = await open();
      await store.append('race-1', [ev('Started', {})]);
      const outcomes = await Promise.allSettled([
        store.append('race-1', [ev('Left', {})], { expected: 1 }),
        store.append('race-1', [ev('Right', {})], { expected: 1 }),
      ]);
      const won = outcomes.filter((o) => o.status === 'fulfilled');
      const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      expect(lost[0]!.reason).toMatchObject({
        code: 'E_VERSION_CONFLICT',
        details: { stream: 'race-1', expected: 1, actual: 2 },
      });
      // Many appends with no expectation all land, each at its own version, in position order.
      await Promise.all(Array.from({ length: 20 }, (_, i) => store.append('race-2', [ev('Tick', { i })])));
      const ticks = await store.readStream('race-2');
      expect(ticks.map((e) => e.version)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      for (let i = 1; i < ticks.length; i++)
        expect(ticks[i]!.position).toBeGreaterThan(ticks[i - 1]!.position);
    });

    it('appends a large batch in one call', async () => {
      const store = await open();
      const batch = Array.from({ length: 2_000 }, (_, i) => ev('Imported', { i, text: `row ${i}` }));
      const result = await store.append('import-1', batch, { expected: 'no_stream' });
      expect(result.version).toBe(2_000);
      expect(new Set(result.positions).size).toBe(2_000);
      const events = await store.readStream('import-1');
      expect(events.map((e) => e.data.i)).toEqual(batch.map((e) => e.data.i));
      expect(events.map((e) => e.position)).toEqual(result.positions);
    });

    it('rejects bad arguments with E_VALIDATION', async () => {
      const store = await open();
      const bad = [
        () => store.append('', [ev('A', {})]),
        () => store.append('ok-1', 'nope' as unknown as NewEvent[]),
        () => store.append('ok-1', [ev('A', {})], { expected: -1 }),
        () => store.append('ok-1', [ev('A', {})], { expected: 'later' as unknown as 'any' }),
        () => store.append('ok-1', [ev('A', {}, { id: '' })]),
        () => store.append('ok-1', [ev('A', { big: 1n })]),
        () => store.readStream('ok-1', { from: -1 }),
        () => store.readStream('ok-1', { direction: 'sideways' as 'forwards' }),
        () => store.readStream('ok-1', { limit: 0 }),
        () => store.readAll(-1, 10),
        () => store.readAll(0, 0),
        () => store.saveSnapshot('ok-1', { version: 1, stateVersion: 0, state: {} }),
        () => store.loadSnapshot('ok-1', 0),
      ];
      for (const call of bad) expect((await rejection(call())).code).toBe('E_VALIDATION');
      expect(await store.head()).toBe(0);
    });

    it('refuses every call once closed', async () => {
      const store = await open();
      await store.close();
      await store.close();
      expect((await rejection(store.append('late-1', [ev('A', {})]))).code).toBe('E_CLOSED');
      expect((await rejection(store.readAll(0, 1))).code).toBe('E_CLOSED');
    });
  });
}
