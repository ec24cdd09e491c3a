import { describe, expect, it } from 'vitest';
import { isStrataError } from '../core/errors.js';
import type { WriteBehindQueue } from '../core/write-behind-queue.js';
import { FakeClock, flushMicrotasks } from '../testing/fake-clock.js';
import { createWriteBehind, type WriteBehindItem, type WriteBehindOptions } from './write-behind.js';
import { createMemoryWriteBehindQueue } from './write-behind-queue.js';

/** A store that applies an item only if it is newer, and can be stalled or made to fail. */
function createStore<V = number>() {
  const rows = new Map<string, { value: V | undefined; version: number }>();
  const batches: WriteBehindItem<V>[][] = [];
  let gate: Promise<void> | undefined;
  let open: () => void = () => undefined;
  let failures = 0;
  return {
    rows,
    batches,
    stall() {
      gate = new Promise<void>((resolve) => {
        open = resolve;
      });
    },
    release() {
      gate = undefined;
      open();
    },
    failNext(n: number) {
      failures = n;
    },
    async writeBatch(items: WriteBehindItem<V>[]): Promise<void> {
      batches.push(items);
      const waitFor = gate;
      if (waitFor !== undefined) await waitFor;
      if (failures > 0) {
        failures--;
        throw new Error('store unavailable');
      }
      for (const item of items) {
        const current = rows.get(item.key);
        if (current === undefined || current.version < item.version) {
          rows.set(item.key, { value: item.value, version: item.version });
        }
      }
    },
    /** The live values, without tombstones. */
    values(): Record<string, V> {
      const out: Record<string, V> = {};
      for (const [key, row] of rows) if (row.value !== undefined) out[key] = row.value;
      return out;
    },
  };
}

/** Follows a promise without awaiting it, so a test can ask whether it has settled yet. */
function track<T>(promise: Promise<T>) {
  const state: { settled: boolean; value?: T; error?: unknown } = { settled: false };
  promise.then(
    (value) => {
      state.settled = true;
      state.value = value;
    },
    (error: unknown) => {
      state.settled = true;
      state.error = error;
    },
  );
  return state;
}

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function setup<V = number>(options: Partial<WriteBehindOptions<V>> = {}) {
  const clock = new FakeClock();
  const store = createStore<V>();
  const wb = createWriteBehind<V>({
    writeBatch: (items) => store.writeBatch(items),
    clock,
    retry: { initialDelay: 100, maxDelay: 1_000, jitter: false },
    ...options,
  });
  return { clock, store, wb };
}

describe('createWriteBehind', () => {
  it('coalesces writes to a key: 1000 sets over 10 keys reach the store as each last value, in one batch', async () => {
    const { clock, store, wb } = setup();
    for (let i = 0; i < 1000; i++) await wb.set(`k${i % 10}`, i);
    expect(store.batches).toHaveLength(0);
    expect(wb.stats().pending).toBe(10);
    await clock.advance(1_000);
    expect(store.batches).toHaveLength(1);
    expect(store.values()).toEqual(
      Object.fromEntries(Array.from({ length: 10 }, (_, k) => [`k${k}`, 990 + k])),
    );
    expect(wb.stats()).toMatchObject({ pending: 0, inFlight: 0, flushed: 10, batches: 1, failures: 0 });
  });

  it('flushes as soon as maxBatch keys are queued, without waiting for flushEvery', async () => {
    const { store, wb } = setup({ maxBatch: 5, flushEvery: '1h' });
    for (let i = 0; i < 4; i++) await wb.set(`k${i}`, i);
    await flushMicrotasks();
    expect(store.batches).toHaveLength(0);
    await wb.set('k4', 4);
    await flushMicrotasks();
    expect(store.batches).toHaveLength(1);
    expect(store.batches[0]!.map((item) => item.key)).toEqual(['k0', 'k1', 'k2', 'k3', 'k4']);
  });

  it('splits a backlog into batches of at most maxBatch, oldest keys first', async () => {
    const { clock, store, wb } = setup({ maxBatch: 4, flushEvery: '1s' });
    store.stall();
    for (let i = 0; i < 10; i++) await wb.set(`k${i}`, i);
    await flushMicrotasks();
    store.release();
    await clock.advance(1_000);
    expect(store.batches.map((batch) => batch.length)).toEqual([4, 4, 2]);
    expect(store.batches.flat().map((item) => item.key)).toEqual(
      Array.from({ length: 10 }, (_, i) => `k${i}`),
    );
  });

  it('flushes flushEvery after the oldest queued write', async () => {
    const { clock, store, wb } = setup({ flushEvery: '1s' });
    await wb.set('a', 1);
    await clock.advance(600);
    await wb.set('b', 2);
    await clock.advance(399);
    expect(store.batches).toHaveLength(0);
    expect(wb.stats().oldestPendingAgeMs).toBe(999);
    await clock.advance(1);
    expect(store.batches).toHaveLength(1);
    expect(store.values()).toEqual({ a: 1, b: 2 });
  });

  it('does not starve a key that is rewritten faster than flushEvery', async () => {
    const { clock, store, wb } = setup({ flushEvery: '1s' });
    for (let i = 0; i < 15; i++) {
      await wb.set('hot', i);
      await clock.advance(100);
    }
    expect(store.batches.length).toBeGreaterThanOrEqual(1);
    expect(store.rows.get('hot')?.value).toBeGreaterThanOrEqual(9);
  });

  it('sends a key written again during its flight in the next batch, with a newer version', async () => {
    const { clock, store, wb } = setup();
    store.stall();
    const v1 = await wb.set('a', 1);
    await clock.advance(1_000);
    expect(wb.stats().inFlight).toBe(1);
    const v2 = await wb.set('a', 2);
    expect(v2).toBeGreaterThan(v1);
    expect(wb.get('a')).toEqual({ pending: true, value: 2 });
    store.release();
    await flushMicrotasks();
    expect(store.rows.get('a')).toEqual({ value: 1, version: v1 });
    await clock.advance(1_000);
    expect(store.batches.map((batch) => batch.map((item) => item.version))).toEqual([[v1], [v2]]);
    expect(store.rows.get('a')).toEqual({ value: 2, version: v2 });
  });

  it('gives each write a higher version, at least the time in microseconds', async () => {
    const { clock, wb } = setup();
    const versions = [await wb.set('a', 1), await wb.set('b', 1), await wb.delete('a')];
    expect(versions[0]).toBeGreaterThanOrEqual(clock.now() * 1000);
    expect(versions[1]).toBeGreaterThan(versions[0]!);
    expect(versions[2]).toBeGreaterThan(versions[1]!);
    expect(wb.stats().lastVersion).toBe(versions[2]);
  });

  it('retries a failing batch with backoff, loses nothing, and keeps accepting writes meanwhile', async () => {
    const errors: unknown[] = [];
    const { clock, store, wb } = setup({ onError: (err) => errors.push(err) });
    store.failNext(3);
    await wb.set('a', 1);
    await wb.set('b', 2);
    await clock.advance(1_000);
    expect(wb.stats()).toMatchObject({ failures: 1, retries: 0, inFlight: 2, lastErrorCode: 'E_UNKNOWN' });
    await wb.set('c', 3);
    await wb.set('a', 10);
    await clock.advance(99);
    expect(store.batches).toHaveLength(1);
    await clock.advance(1);
    expect(store.batches).toHaveLength(2);
    await clock.advance(200);
    expect(store.batches).toHaveLength(3);
    expect(store.rows.size).toBe(0);
    await clock.advance(400);
    expect(store.batches).toHaveLength(4);
    expect(store.values()).toEqual({ a: 1, b: 2 });
    // The writes accepted meanwhile go out flushEvery after the oldest of them.
    await clock.advance(300);
    expect(store.batches).toHaveLength(5);
    expect(store.values()).toEqual({ a: 10, b: 2, c: 3 });
    expect(errors).toHaveLength(3);
    expect(wb.stats()).toMatchObject({ failures: 3, retries: 3, pending: 0, inFlight: 0, flushed: 4 });
  });

  it('with a stalled store and maxPending 10, the 11th write of a new key waits for room', async () => {
    const { clock, store, wb } = setup({ maxPending: 10, maxBatch: 5 });
    store.stall();
    for (let i = 0; i < 10; i++) await wb.set(`k${i}`, i);
    await flushMicrotasks();
    expect(wb.stats()).toMatchObject({ pending: 5, inFlight: 5 });
    const eleventh = track(wb.set('k10', 10));
    await clock.advance(5_000);
    expect(eleventh.settled).toBe(false);
    expect(wb.stats().waiting).toBe(1);
    // A queued key takes no room: its write replaces the queued value.
    await wb.set('k7', 70);
    store.release();
    await clock.advance(0);
    expect(eleventh.settled).toBe(true);
    expect(eleventh.error).toBeUndefined();
    await wb.flush();
    expect(store.rows.size).toBe(11);
    expect(store.rows.get('k7')?.value).toBe(70);
  });

  it("with onFull 'reject', a write of a new key to a full queue fails with E_BACKPRESSURE", async () => {
    const { store, wb } = setup({ maxPending: 10, onFull: 'reject' });
    store.stall();
    for (let i = 0; i < 10; i++) await wb.set(`k${i}`, i);
    const err = await rejectionOf(wb.set('k10', 10));
    expect(isStrataError(err, 'E_BACKPRESSURE')).toBe(true);
    expect((err as { details: unknown }).details).toEqual({ maxPending: 10 });
    expect((err as Error).message).not.toContain('k10');
    store.release();
    await wb.flush();
    await wb.set('k10', 10);
    await wb.flush();
    expect(store.rows.size).toBe(11);
  });

  it('a write waiting for room fails with E_TIMEOUT after maxWait', async () => {
    const { clock, store, wb } = setup({ maxPending: 2, maxWait: '500ms' });
    store.stall();
    await wb.set('a', 1);
    await wb.set('b', 2);
    const third = track(wb.set('c', 3));
    await clock.advance(499);
    expect(third.settled).toBe(false);
    await clock.advance(1);
    expect(isStrataError(third.error, 'E_TIMEOUT')).toBe(true);
    expect(wb.stats().waiting).toBe(0);
    store.release();
  });

  it('reads see queued writes and deletes until the store has them', async () => {
    const { clock, store, wb } = setup();
    store.rows.set('b', { value: 5, version: 1 });
    await wb.set('a', 1);
    await wb.delete('b');
    expect(wb.get('a')).toEqual({ pending: true, value: 1 });
    expect(wb.get('b')).toEqual({ pending: true, value: undefined });
    expect(wb.get('c')).toBeUndefined();
    store.stall();
    await clock.advance(1_000);
    expect(wb.get('a')).toEqual({ pending: true, value: 1 });
    store.release();
    await flushMicrotasks();
    expect(wb.get('a')).toBeUndefined();
    expect(wb.get('b')).toBeUndefined();
    expect(store.values()).toEqual({ a: 1 });
    expect(store.rows.get('b')?.value).toBeUndefined();
  });

  it('flush() resolves once everything written before it is in the store, without waiting for flushEvery', async () => {
    const { store, wb } = setup({ flushEvery: '1h' });
    await wb.set('a', 1);
    await wb.set('b', 2);
    await wb.flush();
    expect(store.values()).toEqual({ a: 1, b: 2 });
    await wb.flush();
    expect(store.batches).toHaveLength(1);
  });

  it('flush() fails with E_TIMEOUT when the store does not take the writes in time, and they stay queued', async () => {
    const { clock, store, wb } = setup();
    store.stall();
    await wb.set('a', 1);
    const flushing = track(wb.flush({ timeout: '2s' }));
    await clock.advance(2_000);
    expect(isStrataError(flushing.error, 'E_TIMEOUT')).toBe(true);
    expect(wb.get('a')).toEqual({ pending: true, value: 1 });
    store.release();
    await wb.flush();
    expect(store.values()).toEqual({ a: 1 });
  });

  it('close() drains, refuses later writes with E_CLOSED, and is idempotent', async () => {
    const { store, wb } = setup({ flushEvery: '1h' });
    await wb.set('a', 1);
    await wb.delete('b');
    const first = wb.close();
    expect(wb.close()).toBe(first);
    await first;
    expect(store.values()).toEqual({ a: 1 });
    expect(store.rows.has('b')).toBe(true);
    expect(isStrataError(await rejectionOf(wb.set('c', 3)), 'E_CLOSED')).toBe(true);
    expect(isStrataError(await rejectionOf(wb.delete('a')), 'E_CLOSED')).toBe(true);
    await wb.flush();
    await wb.close();
  });

  it('close() rejects writes waiting for room with E_CLOSED and still drains what was accepted', async () => {
    const { store, wb } = setup({ maxPending: 1 });
    store.stall();
    await wb.set('a', 1);
    const waiting = track(wb.set('b', 2));
    const closing = wb.close();
    await flushMicrotasks();
    expect(isStrataError(waiting.error, 'E_CLOSED')).toBe(true);
    store.release();
    await closing;
    expect(store.values()).toEqual({ a: 1 });
  });

  it('close() fails with E_TIMEOUT when the store stays away, and stops anyway', async () => {
    const { clock, store, wb } = setup();
    store.stall();
    await wb.set('a', 1);
    const closing = track(wb.close({ timeout: '3s' }));
    await clock.advance(3_000);
    expect(isStrataError(closing.error, 'E_TIMEOUT')).toBe(true);
    expect(isStrataError(await rejectionOf(wb.set('b', 2)), 'E_CLOSED')).toBe(true);
    expect(isStrataError(await rejectionOf(wb.flush()), 'E_CLOSED')).toBe(true);
    store.release();
  });

  it('refuses bad options with E_CONFIG naming the option', () => {
    const writeBatch = async () => undefined;
    const cases: Array<[string, Record<string, unknown>]> = [
      ['writeBatch', {}],
      ['flushEvery', { writeBatch, flushEvery: 'soon' }],
      ['maxBatch', { writeBatch, maxBatch: 0 }],
      ['maxPending', { writeBatch, maxPending: 1.5 }],
      ['onFull', { writeBatch, onFull: 'drop' }],
      ['retry.factor', { writeBatch, retry: { factor: 0 } }],
      ['maxWait', { writeBatch, maxWait: -1 }],
      ['drainTimeout', { writeBatch, drainTimeout: 0 }],
      ['queue', { writeBatch, queue: {} }],
      ['deserialize', { writeBatch, serialize: String }],
      ['serialize', { writeBatch, serialize: 5, deserialize: String }],
      ['clock', { writeBatch, clock: {} }],
      ['onError', { writeBatch, onError: 'log' }],
      ['name', { writeBatch, name: '' }],
    ];
    for (const [option, options] of cases) {
      let caught: unknown;
      try {
        createWriteBehind(options as unknown as WriteBehindOptions<unknown>);
      } catch (err) {
        caught = err;
      }
      expect(isStrataError(caught, 'E_CONFIG'), option).toBe(true);
      expect((caught as { option: string }).option).toBe(option);
    }
  });

  it('refuses bad writes with E_VALIDATION and queues nothing', async () => {
    const queue = createMemoryWriteBehindQueue();
    const { wb } = setup<unknown>({ queue });
    await wb.flush();
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    for (const attempt of [
      () => wb.set('', 1),
      () => wb.set(5 as unknown as string, 1),
      () => wb.set('a', undefined),
      () => wb.set('a', circular),
      () => wb.delete(null as unknown as string),
    ]) {
      expect(isStrataError(await rejectionOf(attempt()), 'E_VALIDATION')).toBe(true);
    }
    expect(wb.stats()).toMatchObject({ pending: 0, appending: 0 });
    expect(await queue.load()).toEqual([]);
  });

  it('an error listener that throws does not stop the engine', async () => {
    const { clock, store, wb } = setup({
      onError: () => {
        throw new Error('listener failed');
      },
    });
    store.failNext(1);
    await wb.set('a', 1);
    await clock.advance(1_000);
    await clock.advance(100);
    expect(store.values()).toEqual({ a: 1 });
  });
});

describe('createWriteBehind with a queue', () => {
  /** A memory queue whose calls can be gated, failed and counted. */
  function instrumented(queue: WriteBehindQueue = createMemoryWriteBehindQueue()) {
    const calls = { append: 0, acknowledge: [] as number[], concurrentAppends: 0, maxConcurrentAppends: 0 };
    let appendGate: Promise<void> | undefined;
    let openAppend: () => void = () => undefined;
    let failAppends = 0;
    let failLoads = 0;
    let failAcks = 0;
    const wrapped: WriteBehindQueue = {
      name: queue.name,
      async append(records) {
        calls.append++;
        calls.concurrentAppends++;
        calls.maxConcurrentAppends = Math.max(calls.maxConcurrentAppends, calls.concurrentAppends);
        try {
          const gate = appendGate;
          if (gate !== undefined) await gate;
          if (failAppends > 0) {
            failAppends--;
            throw Object.assign(new Error('disk full'), { code: 'SQLITE_FULL' });
          }
          return await queue.append(records);
        } finally {
          calls.concurrentAppends--;
        }
      },
      async load() {
        if (failLoads > 0) {
          failLoads--;
          throw new Error('queue unavailable');
        }
        return queue.load();
      },
      lastVersion: () => queue.lastVersion(),
      async acknowledge(upTo) {
        calls.acknowledge.push(upTo);
        if (failAcks > 0) {
          failAcks--;
          throw new Error('queue unavailable');
        }
        return queue.acknowledge(upTo);
      },
      close: () => queue.close(),
    };
    return {
      queue: wrapped,
      inner: queue,
      calls,
      gateAppends() {
        appendGate = new Promise<void>((resolve) => {
          openAppend = resolve;
        });
      },
      openAppends() {
        appendGate = undefined;
        openAppend();
      },
      failAppends(n: number) {
        failAppends = n;
      },
      failLoads(n: number) {
        failLoads = n;
      },
      failAcks(n: number) {
        failAcks = n;
      },
    };
  }

  it('acknowledges a write only after its append, and writes of one turn share one append', async () => {
    const q = instrumented();
    const { wb } = setup({ queue: q.queue });
    await wb.flush();
    q.gateAppends();
    const writes = Array.from({ length: 100 }, (_, i) => track(wb.set(`k${i % 7}`, i)));
    await flushMicrotasks();
    expect(q.calls.append).toBe(1);
    expect(writes.some((w) => w.settled)).toBe(false);
    expect(wb.get('k0')).toBeUndefined();
    expect(wb.stats().appending).toBe(100);
    q.openAppends();
    await flushMicrotasks();
    expect(writes.every((w) => w.settled && w.error === undefined)).toBe(true);
    expect(wb.get('k6')).toEqual({ pending: true, value: 97 });
    expect(await q.inner.load()).toHaveLength(100);
  });

  it('a failed append rejects its writes and queues none of them', async () => {
    const q = instrumented();
    const { wb } = setup({ queue: q.queue });
    q.failAppends(1);
    const err = await rejectionOf(wb.set('a', 1));
    expect((err as { code: string }).code).toBe('SQLITE_FULL');
    expect(wb.get('a')).toBeUndefined();
    expect(wb.stats()).toMatchObject({ pending: 0, appending: 0 });
    await wb.set('a', 2);
    expect(wb.get('a')).toEqual({ pending: true, value: 2 });
  });

  it('never runs two appends at once, even when a failed append lets a waiting write in', async () => {
    const q = instrumented();
    const { store, wb } = setup({ queue: q.queue, maxPending: 2 });
    await wb.flush();
    q.gateAppends();
    const first = wb.set('a', 1);
    void wb.set('x', 1).catch(() => undefined);
    const waiting = wb.set('b', 2);
    // A caller that reacts to the failure by writing again, before the next append starts.
    const retried = first.catch(() => wb.set('c', 3));
    await flushMicrotasks();
    q.failAppends(1);
    q.openAppends();
    q.gateAppends();
    await flushMicrotasks();
    q.openAppends();
    await Promise.all([waiting, retried]);
    expect(q.calls.maxConcurrentAppends).toBe(1);
    await wb.flush();
    expect(store.values()).toEqual({ b: 2, c: 3 });
  });

  it('lets the queue forget only writes the store has (or a newer write of their key)', async () => {
    const q = instrumented();
    const { clock, store, wb } = setup({ queue: q.queue, maxBatch: 2, flushEvery: '1h' });
    store.stall();
    const va = await wb.set('a', 1);
    const vb = await wb.set('b', 1);
    await flushMicrotasks();
    expect(wb.stats().inFlight).toBe(2);
    const va2 = await wb.set('a', 2);
    store.release();
    await flushMicrotasks();
    expect(store.values()).toEqual({ a: 1, b: 1 });
    // The second write of a is not in the store yet: its record stays; the first one may go.
    expect(q.calls.acknowledge).toEqual([va2 - 1]);
    expect((await q.inner.load()).map((r) => r.version)).toEqual([va2]);
    expect(va).toBeLessThan(vb);
    await clock.advance(3_600_000);
    expect(store.values()).toEqual({ a: 2, b: 1 });
    expect(await q.inner.load()).toEqual([]);
    expect(await q.inner.lastVersion()).toBe(va2);
  });

  it('a new engine on the queue writes every acknowledged write first, then continues with higher versions', async () => {
    const queue = createMemoryWriteBehindQueue();
    const crashed = setup({ queue });
    crashed.store.stall();
    await crashed.wb.set('a', 1);
    await crashed.wb.set('b', 2);
    await crashed.wb.set('a', 3);
    const lastAcknowledged = await crashed.wb.delete('c');
    // The first engine is abandoned with its batch stuck in the store: a crash, as far as the queue knows.

    const { store, wb } = setup({ queue, flushEvery: '1h' });
    store.rows.set('c', { value: 7, version: 1 });
    await wb.flush();
    expect(store.values()).toEqual({ a: 3, b: 2 });
    expect(store.rows.get('c')).toEqual({ value: undefined, version: lastAcknowledged });
    expect(wb.stats()).toMatchObject({ recovered: 3, flushed: 3 });
    expect(await wb.set('d', 4)).toBeGreaterThan(lastAcknowledged);
    expect(await queue.load()).toHaveLength(1);
  });

  it('redelivers a batch the store took before the crash but the queue never forgot; "only if newer" absorbs it', async () => {
    const q = instrumented();
    const first = setup({ queue: q.queue });
    q.failAcks(1);
    const version = await first.wb.set('a', 1);
    await first.wb.flush();
    expect(first.store.rows.get('a')).toEqual({ value: 1, version });
    expect(await q.inner.load()).toHaveLength(1);

    const second = setup({ queue: q.queue });
    second.store.rows.set('a', { value: 1, version });
    await second.wb.set('a', 2);
    await second.wb.flush();
    const redelivered = second.store.batches.flat().filter((item) => item.version === version);
    expect(redelivered).toHaveLength(1);
    expect(second.store.values()).toEqual({ a: 2 });
  });

  it('writes made while the queue loads wait for it and land after the recovered ones', async () => {
    const q = instrumented();
    const old = setup({ queue: q.queue });
    old.store.stall();
    await old.wb.set('a', 1);

    const { store, wb } = setup({ queue: q.queue, flushEvery: '1h' });
    const write = wb.set('a', 2);
    expect(wb.get('a')).toBeUndefined();
    await write;
    await wb.flush();
    expect(store.values()).toEqual({ a: 2 });
  });

  it('when loading the queue fails, writes fail with that error until a later attempt succeeds', async () => {
    const errors: unknown[] = [];
    const q = instrumented();
    q.failLoads(1);
    const { clock, store, wb } = setup({ queue: q.queue, onError: (err) => errors.push(err) });
    const err = await rejectionOf(wb.set('a', 1));
    expect((err as Error).message).toBe('queue unavailable');
    expect(errors).toHaveLength(1);
    await clock.advance(100);
    await wb.set('a', 2);
    await wb.flush();
    expect(store.values()).toEqual({ a: 2 });
  });

  it('refuses a queued value that cannot be deserialized with E_CORRUPT, reported and retried', async () => {
    const errors: unknown[] = [];
    const queue = createMemoryWriteBehindQueue();
    await queue.append([{ key: 'a', value: '{not json', version: 1 }]);
    const { wb } = setup({ queue, onError: (err) => errors.push(err) });
    expect(isStrataError(await rejectionOf(wb.flush()), 'E_CORRUPT')).toBe(true);
    expect(isStrataError(errors[0], 'E_CORRUPT')).toBe(true);
    expect(wb.stats().lastErrorCode).toBe('E_CORRUPT');
    await wb.close();
  });

  it('uses the given serializer for the queue and the deserializer on recovery', async () => {
    const queue = createMemoryWriteBehindQueue();
    const codec = {
      serialize: (value: Date) => String(value.getTime()),
      deserialize: (text: string) => new Date(Number(text)),
    };
    const first = setup<Date>({ queue, ...codec });
    first.store.stall();
    await first.wb.set('when', new Date(5_000));
    expect((await queue.load())[0]?.value).toBe('5000');
    const { store, wb } = setup<Date>({ queue, ...codec });
    await wb.flush();
    expect(store.rows.get('when')?.value).toEqual(new Date(5_000));
  });

  it('close() before the queue is loaded leaves the queue as it is', async () => {
    const queue = createMemoryWriteBehindQueue();
    await queue.append([{ key: 'a', value: '1', version: 1 }]);
    const q = instrumented(queue);
    q.failLoads(1);
    const { wb } = setup({ queue: q.queue });
    await flushMicrotasks();
    await wb.close();
    expect(isStrataError(await rejectionOf(wb.set('b', 2)), 'E_CLOSED')).toBe(true);
    expect(await queue.load()).toEqual([{ key: 'a', value: '1', version: 1 }]);
  });
});

describe('createMemoryWriteBehindQueue', () => {
  it('keeps unacknowledged records in order, remembers the last version and refuses going back', async () => {
    const queue = createMemoryWriteBehindQueue();
    expect(await queue.lastVersion()).toBe(0);
    await queue.append([
      { key: 'a', value: '1', version: 10 },
      { key: 'b', value: null, version: 11 },
    ]);
    await queue.append([{ key: 'a', value: '2', version: 12 }]);
    await queue.acknowledge(10);
    expect(await queue.load()).toEqual([
      { key: 'b', value: null, version: 11 },
      { key: 'a', value: '2', version: 12 },
    ]);
    await queue.acknowledge(12);
    expect(await queue.load()).toEqual([]);
    expect(await queue.lastVersion()).toBe(12);
    expect(
      isStrataError(await rejectionOf(queue.append([{ key: 'c', value: 'x', version: 12 }])), 'E_CONFLICT'),
    ).toBe(true);
    expect(
      isStrataError(
        await rejectionOf(
          queue.append([
            { key: 'c', value: 'x', version: 20 },
            { key: 'd', value: 'y', version: 19 },
          ]),
        ),
        'E_VALIDATION',
      ),
    ).toBe(true);
    expect(isStrataError(await rejectionOf(queue.acknowledge(-1)), 'E_VALIDATION')).toBe(true);
    await queue.close();
    expect(isStrataError(await rejectionOf(queue.load()), 'E_CLOSED')).toBe(true);
  });
});
