import { describe, expect, it } from 'vitest';
import type { Clock, TimerHandle } from '../core/clock.js';
import { isStrataError, type StrataError } from '../core/errors.js';
import { FakeClock } from '../testing/fake-clock.js';
import { createIdGenerator, DEFAULT_ID_EPOCH, decodeId, ID_LAYOUTS, type IdGeneratorOptions } from './ids.js';

const T = Date.UTC(2026, 0, 1);

/** A clock whose reading moves only by `afterRead`, called after every read with the read count. */
class ScriptedClock implements Clock {
  reads = 0;
  constructor(
    public time: number,
    private readonly afterRead: (clock: ScriptedClock) => void = () => undefined,
  ) {}
  now(): number {
    const value = this.time;
    this.reads++;
    this.afterRead(this);
    return value;
  }
  setTimeout(): TimerHandle {
    return {};
  }
  clearTimeout(): void {}
}

function caught(fn: () => unknown): StrataError {
  try {
    fn();
  } catch (err) {
    if (isStrataError(err)) return err;
    throw err;
  }
  throw new Error('expected a strata error');
}

async function rejected(promise: Promise<unknown>): Promise<StrataError> {
  try {
    await promise;
  } catch (err) {
    if (isStrataError(err)) return err;
    throw err;
  }
  throw new Error('expected a strata error');
}

describe('createIdGenerator (safe53)', () => {
  it('issues strictly increasing ids that decode to their time, worker and sequence', async () => {
    const clock = new FakeClock(T);
    const ids = await createIdGenerator({ workerId: 7, clock });
    const a = ids.next();
    const b = ids.next();
    await clock.advance(5);
    const c = ids.next();
    expect(typeof a).toBe('number');
    expect(a).toBeLessThan(b);
    expect(b).toBeLessThan(c);
    expect(ids.decode(a)).toEqual({ time: new Date(T), workerId: 7, sequence: 0 });
    expect(ids.decode(b)).toEqual({ time: new Date(T), workerId: 7, sequence: 1 });
    expect(ids.decode(c)).toEqual({ time: new Date(T + 5), workerId: 7, sequence: 0 });
    expect(decodeId(c)).toEqual(ids.decode(c));
    expect(ids.workerId).toBe(7);
    expect(ids.leaseExpiresAt).toBeUndefined();
  });

  it('orders ids of different generators by time first, whatever their workers', async () => {
    const clock = new FakeClock(T);
    const high = await createIdGenerator({ workerId: 31, clock });
    const low = await createIdGenerator({ workerId: 0, clock });
    const first = high.nextMany(100).at(-1)!;
    await clock.advance(1);
    const second = low.next();
    expect(second).toBeGreaterThan(first);
    expect(low.next()).not.toBe(high.next());
  });

  it('waits for the next millisecond when the 128 ids of one are used up', async () => {
    const clock = new ScriptedClock(T, (c) => {
      // Frozen for the first 130 reads, then time moves on.
      if (c.reads === 130) c.time += 1;
    });
    const ids = await createIdGenerator({ workerId: 3, clock });
    const batch = ids.nextMany(128);
    expect(batch.map((id) => ids.decode(id).sequence)).toEqual([...Array(128).keys()]);
    expect(new Set(batch.map((id) => ids.decode(id).time.getTime()))).toEqual(new Set([T]));
    const readsBefore = clock.reads;
    const overflow = ids.next();
    expect(clock.reads - readsBefore).toBeGreaterThan(1);
    expect(ids.decode(overflow)).toEqual({ time: new Date(T + 1), workerId: 3, sequence: 0 });
    expect(overflow).toBeGreaterThan(batch.at(-1)!);
  });

  it('waits for a clock that stepped back a little, without a duplicate', async () => {
    let stepping = false;
    const clock = new ScriptedClock(T, (c) => {
      if (stepping) c.time += 1;
    });
    const ids = await createIdGenerator({ workerId: 1, clock });
    const before = ids.nextMany(3);
    // 20 ms back; from then on every read moves the clock 1 ms forward.
    clock.time = T - 20;
    stepping = true;
    const readsBefore = clock.reads;
    const after = ids.next();
    expect(clock.reads - readsBefore).toBeGreaterThan(15);
    expect(after).toBeGreaterThan(before.at(-1)!);
    expect(ids.decode(after).time.getTime()).toBe(T);
    expect(ids.decode(after).sequence).toBe(3);
  });

  it('throws E_CLOCK when the clock is further back than maxClockSkew, and carries on after', async () => {
    const clock = new FakeClock(T);
    const ids = await createIdGenerator({ workerId: 2, clock });
    const last = ids.next();
    clock.set(T - 2_500);
    const err = caught(() => ids.next());
    expect(err.code).toBe('E_CLOCK');
    expect(err.details).toMatchObject({
      reason: 'moved-back',
      behindMs: 2_500,
      maxClockSkewMs: 2_000,
      workerId: 2,
    });
    expect(err.message).not.toContain('2500');
    clock.set(T + 1);
    expect(ids.next()).toBeGreaterThan(last);
  });

  it('honours a smaller maxClockSkew', async () => {
    const clock = new FakeClock(T);
    const ids = await createIdGenerator({ workerId: 2, clock, maxClockSkew: '5ms' });
    ids.next();
    clock.set(T - 6);
    expect(caught(() => ids.next()).details.reason).toBe('moved-back');
  });

  it('throws E_CLOCK instead of hanging when the clock does not move', async () => {
    const clock = new FakeClock(T);
    const ids = await createIdGenerator({ workerId: 2, clock, maxClockSkew: '10ms' });
    const batch = ids.nextMany(128);
    const err = caught(() => ids.next());
    expect([err.code, err.details.reason]).toEqual(['E_CLOCK', 'stalled']);
    // The failed call issued nothing: once time moves, the sequence goes on from where it was.
    await clock.advance(1);
    expect(ids.decode(ids.next())).toEqual({ time: new Date(T + 1), workerId: 2, sequence: 0 });
    expect(batch).toHaveLength(128);
  });

  it('reaches Number.MAX_SAFE_INTEGER exactly at the last worker, sequence and millisecond', async () => {
    const epoch = 1_000;
    const clock = new ScriptedClock(epoch + 2 ** 41 - 1);
    const ids = await createIdGenerator({ workerId: 31, clock, epoch });
    const batch = ids.nextMany(128);
    expect(batch.at(-1)).toBe(Number.MAX_SAFE_INTEGER);
    expect(ids.decode(Number.MAX_SAFE_INTEGER)).toEqual({
      time: new Date(epoch + 2 ** 41 - 1),
      workerId: 31,
      sequence: 127,
    });
    // Past the last millisecond of the range: E_CLOCK, not a wrapped id.
    clock.time += 1;
    const err = caught(() => ids.next());
    expect([err.code, err.details.reason]).toEqual(['E_CLOCK', 'time-range']);
  });

  it('decodes with the default epoch, and refuses values that are not ids', async () => {
    const ids = await createIdGenerator({ workerId: 0, clock: new FakeClock(T) });
    expect(ids.epoch).toBe(DEFAULT_ID_EPOCH);
    expect(decodeId(0).time.getTime()).toBe(DEFAULT_ID_EPOCH);
    for (const bad of [-1, 1.5, Number.MAX_SAFE_INTEGER + 1, Number.NaN, '12' as unknown as number]) {
      expect(caught(() => ids.decode(bad)).code).toBe('E_VALIDATION');
    }
  });

  it('fails after close with E_CLOSED', async () => {
    const ids = await createIdGenerator({ workerId: 0, clock: new FakeClock(T) });
    await ids.close();
    expect(ids.closed).toBe(true);
    expect(caught(() => ids.next()).code).toBe('E_CLOSED');
  });
});

describe('createIdGenerator (bigint64)', () => {
  it('returns bigints with 1024 workers and 4096 ids per millisecond', async () => {
    const clock = new ScriptedClock(T, (c) => {
      if (c.reads === 4_100) c.time += 1;
    });
    const ids = await createIdGenerator({ workerId: 1023, clock, layout: 'bigint64' });
    const batch = ids.nextMany(4_097);
    expect(typeof batch[0]).toBe('bigint');
    for (let i = 1; i < batch.length; i++) expect(batch[i]! > batch[i - 1]!).toBe(true);
    expect(ids.decode(batch[4_095]!)).toEqual({ time: new Date(T), workerId: 1023, sequence: 4_095 });
    expect(ids.decode(batch[4_096]!)).toEqual({ time: new Date(T + 1), workerId: 1023, sequence: 0 });
    expect(batch.at(-1)! < 2n ** 63n).toBe(true);
    expect(decodeId(batch[0]!, { layout: 'bigint64' })).toEqual(ids.decode(batch[0]!));
    expect(caught(() => ids.decode(2n ** 63n)).code).toBe('E_VALIDATION');
    expect(caught(() => ids.decode(-1n)).code).toBe('E_VALIDATION');
  });

  it('keeps the highest id below 2^63', async () => {
    const epoch = 0;
    const clock = new ScriptedClock(2 ** 41 - 1);
    const ids = await createIdGenerator({ workerId: 1023, clock, epoch, layout: 'bigint64' });
    const last = ids.nextMany(4_096).at(-1)!;
    expect(last).toBe(2n ** 63n - 1n);
  });
});

describe('createIdGenerator options', () => {
  const clock = new FakeClock(T);
  const cases: Array<[string, IdGeneratorOptions]> = [
    ['workerId', { clock }],
    ['workerId', { workerId: 32, clock }],
    ['workerId', { workerId: -1, clock }],
    ['workerId', { workerId: 1.5, clock }],
    ['workerId', { workerId: 1024, clock, layout: 'bigint64' }],
    ['workerId', { workerId: 1, allocate: { store: {} as never }, clock }],
    ['layout', { workerId: 1, layout: 'int32' as never, clock }],
    ['epoch', { workerId: 1, epoch: T + 1_000, clock }],
    ['epoch', { workerId: 1, epoch: new Date(Number.NaN), clock }],
    ['epoch', { workerId: 1, epoch: T - 2 ** 41, clock }],
    ['maxClockSkew', { workerId: 1, maxClockSkew: 'soon', clock }],
    ['allocate.store', { allocate: { store: {} as never }, clock }],
  ];
  for (const [option, options] of cases) {
    it(`refuses a bad ${option} with E_CONFIG naming it`, async () => {
      const err = await rejected(createIdGenerator(options));
      expect(err.code).toBe('E_CONFIG');
      expect(err.details.option).toBe(option);
    });
  }

  it('checks allocation options before touching the store', async () => {
    const store = {
      dialect: { name: 'sqlite' },
      query: () => {
        throw new Error('the store must not be used');
      },
    } as never;
    for (const [option, allocate] of [
      ['allocate.name', { store, name: 'no spaces' }],
      ['allocate.leaseTtl', { store, leaseTtl: 0 }],
      ['allocate.leaseTtl', { store, leaseTtl: '5ms' }],
      ['allocate.table', { store, table: 'bad-table' }],
    ] as const) {
      const err = await rejected(createIdGenerator({ allocate, clock }));
      expect([err.code, err.details.option]).toEqual(['E_CONFIG', option]);
    }
  });

  it('refuses a bad nextMany count with E_CONFIG naming n', async () => {
    const ids = await createIdGenerator({ workerId: 1, clock });
    for (const n of [0, -1, 2.5, 1_000_001]) expect(caught(() => ids.nextMany(n)).details.option).toBe('n');
  });

  it('documents the limits of both layouts', () => {
    expect(ID_LAYOUTS.safe53).toEqual({
      timeBits: 41,
      workerBits: 5,
      sequenceBits: 7,
      maxWorkers: 32,
      idsPerMs: 128,
    });
    expect(ID_LAYOUTS.bigint64.maxWorkers).toBe(1024);
    expect(ID_LAYOUTS.safe53.timeBits + ID_LAYOUTS.safe53.workerBits + ID_LAYOUTS.safe53.sequenceBits).toBe(
      53,
    );
  });
});
