import { describe, expect, it } from 'vitest';
import { type ConfigError, isStrataError } from '../core/errors.js';
import { hashKey, jumpHash } from './hashing.js';
import {
  assertShardKey,
  compareCodePoints,
  directoryStrategy,
  hashStrategy,
  periodOf,
  placeSync,
  type RangeInput,
  rangeStrategy,
  ShardKeyError,
  timeStrategy,
  validateStrategy,
} from './strategies.js';
import type { RangeStrategy } from './types.js';

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

/** The option an `E_CONFIG` error names. */
function configOption(fn: () => unknown): string {
  const err = thrown(fn);
  expect(isStrataError(err, 'E_CONFIG')).toBe(true);
  return (err as ConfigError).option;
}

/** The `E_SHARD_KEY` error `fn` throws; its message must not contain `secret`. */
function keyError(fn: () => unknown, secret?: string): ShardKeyError {
  const err = thrown(fn);
  expect(isStrataError(err, 'E_SHARD_KEY')).toBe(true);
  expect(err).toBeInstanceOf(ShardKeyError);
  if (secret !== undefined) expect((err as Error).message).not.toContain(secret);
  return err as ShardKeyError;
}

function isDeepFrozen(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return true;
  return Object.isFrozen(value) && Object.values(value).every(isDeepFrozen);
}

const numberRanges = (): RangeStrategy =>
  rangeStrategy({
    keyType: 'number',
    ranges: [
      { shard: 'a', to: 100 },
      { shard: 'b', from: 100, to: 1_000 },
      { shard: 'c', from: 1_000, to: 5_000.5 },
      { shard: 'a', from: 5_000.5 },
    ],
  });

describe('hashStrategy', () => {
  it('returns a deeply frozen, versioned definition with defaults', () => {
    const s = hashStrategy({ shards: ['s0', 's1', 's2'] });
    expect(s).toEqual({ kind: 'hash', version: 1, shards: ['s0', 's1', 's2'], seed: 0 });
    expect(isDeepFrozen(s)).toBe(true);
    expect(hashStrategy({ shards: ['x'], seed: 7, version: 3 })).toMatchObject({ seed: 7, version: 3 });
  });

  it('does not keep a reference to the caller array', () => {
    const shards = ['s0', 's1'];
    const s = hashStrategy({ shards });
    shards.push('s2');
    expect(s.shards).toEqual(['s0', 's1']);
  });

  it('rejects bad options with E_CONFIG naming the exact option', () => {
    expect(configOption(() => hashStrategy({ shards: [] }))).toBe('shards');
    expect(configOption(() => hashStrategy({ shards: 's0' as never }))).toBe('shards');
    expect(configOption(() => hashStrategy({ shards: ['s0', 's1', 's0'] }))).toBe('shards[2]');
    expect(configOption(() => hashStrategy({ shards: ['s0', 7 as never] }))).toBe('shards[1]');
    expect(configOption(() => hashStrategy({ shards: [''] }))).toBe('shards[0]');
    expect(configOption(() => hashStrategy({ shards: ['bad id'] }))).toBe('shards[0]');
    expect(configOption(() => hashStrategy({ shards: ['s0'], seed: -1 }))).toBe('seed');
    expect(configOption(() => hashStrategy({ shards: ['s0'], seed: 1.5 }))).toBe('seed');
    expect(configOption(() => hashStrategy({ shards: ['s0'], seed: 2 ** 32 }))).toBe('seed');
    expect(configOption(() => hashStrategy({ shards: ['s0'], version: 0 }))).toBe('version');
    expect(configOption(() => hashStrategy({ shards: ['s0'], version: 1.5 }))).toBe('version');
    expect(configOption(() => hashStrategy({ shards: ['s0'], version: '2' as never }))).toBe('version');
    expect(configOption(() => hashStrategy(null as never))).toBe('options');
  });

  it('places keys by jump hash of the key hash, pinned', () => {
    const s = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((k) => placeSync(s, k))).toEqual([
      's2',
      's2',
      's1',
      's1',
      's2',
      's1',
      's3',
      's0',
    ]);
    expect(placeSync(s, 'tenant-a')).toBe(s.shards[jumpHash(hashKey('tenant-a'), 4)]);
    expect(placeSync(s, 42n)).toBe(placeSync(s, 42));
    const seeded = hashStrategy({ shards: s.shards, seed: 99 });
    const differ = [...Array(100).keys()].filter((k) => placeSync(seeded, k) !== placeSync(s, k));
    expect(differ.length).toBeGreaterThan(50);
  });

  it('moves keys only to an appended shard', () => {
    const three = hashStrategy({ shards: ['a', 'b', 'c'] });
    const four = hashStrategy({ shards: ['a', 'b', 'c', 'd'] });
    for (let k = 0; k < 10_000; k++) {
      const before = placeSync(three, k);
      const after = placeSync(four, k);
      if (after !== before) expect(after).toBe('d');
    }
  });

  it('rejects missing, null and wrong-typed keys with E_SHARD_KEY, never echoing the value', () => {
    const s = hashStrategy({ shards: ['s0', 's1'] });
    expect(keyError(() => placeSync(s, undefined)).problem).toBe('the key is missing');
    expect(keyError(() => placeSync(s, null)).problem).toBe('the key is null');
    expect(keyError(() => placeSync(s, Number.NaN)).problem).toBe('the key is not a finite number');
    expect(keyError(() => placeSync(s, Number.POSITIVE_INFINITY)).problem).toBe(
      'the key is not a finite number',
    );
    keyError(() => placeSync(s, 1.5), '1.5');
    keyError(() => placeSync(s, 2 ** 60));
    keyError(() => placeSync(s, new Date(Number.NaN)));
    keyError(() => placeSync(s, { secret: 'hunter2' }), 'hunter2');
    keyError(() => placeSync(s, ['hunter2']), 'hunter2');
    keyError(() => placeSync(s, true));
    const err = keyError(() => placeSync(s, null, { table: 'posts', column: 'user_id' }));
    expect(err.message).toBe('invalid shard key for table "posts" column "user_id": the key is null');
    expect(err.details).toMatchObject({ table: 'posts', column: 'user_id', type: 'null' });
  });

  it('accepts strings, safe integers, bigints and dates as keys', () => {
    for (const key of ['', 'x', 0, -5, Number.MAX_SAFE_INTEGER, 2n ** 70n, new Date()]) {
      expect(() => assertShardKey(key)).not.toThrow();
    }
  });
});

describe('rangeStrategy', () => {
  it('returns a deeply frozen definition and derives its shards', () => {
    const s = numberRanges();
    expect(isDeepFrozen(s)).toBe(true);
    expect(s.shards).toEqual(['a', 'b', 'c']);
    expect(s.version).toBe(1);
    expect(s.ranges[0]).toEqual({ shard: 'a', to: 100 });
    expect(s.ranges[3]).toEqual({ shard: 'a', from: 5_000.5 });
  });

  it('places number and bigint keys: from inclusive, to exclusive, open ends', () => {
    const s = numberRanges();
    const cases: [number | bigint, string][] = [
      [-1e300, 'a'],
      [-1, 'a'],
      [99.999, 'a'],
      [100, 'b'],
      [999, 'b'],
      [1_000, 'c'],
      [5_000, 'c'],
      [5_000.5, 'a'],
      [1e300, 'a'],
      [99n, 'a'],
      [100n, 'b'],
      [2n ** 80n, 'a'],
      [-(2n ** 80n), 'a'],
    ];
    for (const [key, shard] of cases) expect(placeSync(s, key)).toBe(shard);
  });

  it('places string keys in code point order (UTF-8 byte order)', () => {
    const s = rangeStrategy({
      keyType: 'string',
      ranges: [
        { shard: 'lo', to: 'm' },
        { shard: 'mid', from: 'm', to: '\uffff' },
        { shard: 'hi', from: '\uffff' },
      ],
    });
    expect(placeSync(s, '')).toBe('lo');
    expect(placeSync(s, 'apple')).toBe('lo');
    expect(placeSync(s, 'm')).toBe('mid');
    expect(placeSync(s, 'zebra')).toBe('mid');
    expect(placeSync(s, '\ufffe')).toBe('mid');
    // U+1F600 is above U+FFFF as a code point, though its UTF-16 surrogate sorts below it.
    expect(placeSync(s, '😀')).toBe('hi');
    expect(compareCodePoints('😀', '\uffff')).toBeGreaterThan(0);
    expect(compareCodePoints('a', 'ab')).toBeLessThan(0);
    expect(compareCodePoints('b', 'b')).toBe(0);
  });

  it('takes date bounds as Date, ISO text or epoch ms, stores ISO text, and places dates', () => {
    const s = rangeStrategy({
      keyType: 'date',
      ranges: [
        { shard: 'old', to: new Date(Date.UTC(2024, 0, 1)) },
        { shard: 'y2024', from: '2024-01-01', to: Date.UTC(2025, 0, 1) },
        { shard: 'new', from: '2025-01-01T00:00:00Z' },
      ],
    });
    expect(s.ranges).toEqual([
      { shard: 'old', to: '2024-01-01T00:00:00.000Z' },
      { shard: 'y2024', from: '2024-01-01T00:00:00.000Z', to: '2025-01-01T00:00:00.000Z' },
      { shard: 'new', from: '2025-01-01T00:00:00.000Z' },
    ]);
    expect(placeSync(s, new Date(Date.UTC(2023, 11, 31, 23, 59, 59, 999)))).toBe('old');
    expect(placeSync(s, new Date(Date.UTC(2024, 0, 1)))).toBe('y2024');
    expect(placeSync(s, '2024-06-01T10:00:00Z')).toBe('y2024');
    expect(placeSync(s, '2024-12-31 23:59:59.999')).toBe('y2024');
    expect(placeSync(s, '2025-01-01T00:30:00+01:00')).toBe('y2024');
    expect(placeSync(s, Date.UTC(2030, 0, 1))).toBe('new');
  });

  it('rejects keys of the wrong type for the range, never echoing the value', () => {
    const numbers = numberRanges();
    expect(keyError(() => placeSync(numbers, '150'), '150').problem).toBe(
      'a number range needs a number or bigint key',
    );
    keyError(() => placeSync(numbers, Number.NaN));
    keyError(() => placeSync(numbers, undefined));
    keyError(() => placeSync(numbers, null));
    const strings = rangeStrategy({
      keyType: 'string',
      ranges: [
        { shard: 'a', to: 'm' },
        { shard: 'b', from: 'm' },
      ],
    });
    keyError(() => placeSync(strings, 12345), '12345');
    const dates = rangeStrategy({
      keyType: 'date',
      ranges: [
        { shard: 'a', to: '2024-01-01' },
        { shard: 'b', from: '2024-01-01' },
      ],
    });
    keyError(() => placeSync(dates, 'not-a-date-secret'), 'not-a-date-secret');
    keyError(() => placeSync(dates, '2024-02-30'));
    keyError(() => placeSync(dates, new Date(Number.NaN)));
    keyError(() => placeSync(dates, 5n));
  });

  it('rejects holes, overlaps, unsorted ranges, bad types and missing open ends, naming the bound', () => {
    const make =
      (ranges: RangeInput[], keyType: 'number' | 'string' | 'date' = 'number') =>
      () =>
        rangeStrategy({ keyType, ranges });
    expect(configOption(make([]))).toBe('ranges');
    expect(configOption(() => rangeStrategy({ keyType: 'number', ranges: 'x' as never }))).toBe('ranges');
    expect(configOption(() => rangeStrategy({ keyType: 'int' as never, ranges: [{ shard: 'a' }] }))).toBe(
      'keyType',
    );
    // A single open range is a valid strategy.
    expect(rangeStrategy({ keyType: 'number', ranges: [{ shard: 'a' }] }).shards).toEqual(['a']);
    expect(
      configOption(
        make([
          { shard: 'a', from: 0, to: 10 },
          { shard: 'b', from: 10 },
        ]),
      ),
    ).toBe('ranges[0].from');
    expect(
      configOption(
        make([
          { shard: 'a', to: 10 },
          { shard: 'b', from: 10, to: 20 },
        ]),
      ),
    ).toBe('ranges[1].to');
    expect(
      configOption(
        make([
          { shard: 'a', to: 10 },
          { shard: 'b', from: 10, to: 20 },
          { shard: 'c', from: 25 },
        ]),
      ),
    ).toBe('ranges[2].from');
    const overlap = thrown(
      make([
        { shard: 'a', to: 10 },
        { shard: 'b', from: 10, to: 20 },
        { shard: 'c', from: 15 },
      ]),
    );
    expect((overlap as ConfigError).option).toBe('ranges[2].from');
    expect((overlap as Error).message).toContain('overlaps');
    const hole = thrown(
      make([
        { shard: 'a', to: 10 },
        { shard: 'b', from: 11 },
      ]),
    );
    expect((hole as ConfigError).option).toBe('ranges[1].from');
    expect((hole as Error).message).toContain('hole');
    const unsorted = thrown(
      make([
        { shard: 'a', to: 10 },
        { shard: 'b', from: 10, to: 20 },
        { shard: 'c', from: 5, to: 10 },
        { shard: 'd', from: 20 },
      ]),
    );
    expect((unsorted as ConfigError).option).toBe('ranges[2].from');
    expect((unsorted as Error).message).toContain('ascending');
    expect(
      configOption(
        make([
          { shard: 'a', to: 10 },
          { shard: 'b', from: 10, to: 10 },
          { shard: 'c', from: 10 },
        ]),
      ),
    ).toBe('ranges[1].to');
    expect(
      configOption(
        make([
          { shard: 'a', to: 10 },
          { shard: 'b', to: 20 },
          { shard: 'c', from: 20 },
        ]),
      ),
    ).toBe('ranges[1].from');
    expect(
      configOption(
        make([
          { shard: 'a', to: 10 },
          { shard: 'b', from: 10 },
          { shard: 'c', from: 20 },
        ]),
      ),
    ).toBe('ranges[1].to');
    expect(
      configOption(
        make([
          { shard: 'a', to: '10' },
          { shard: 'b', from: '10' },
        ]),
      ),
    ).toBe('ranges[0].to');
    expect(
      configOption(
        make([
          { shard: 'a', to: 10 },
          { shard: 'b', from: Number.NaN },
        ]),
      ),
    ).toBe('ranges[1].from');
    expect(
      configOption(
        make(
          [
            { shard: 'a', to: 10 },
            { shard: 'b', from: 10 },
          ],
          'string',
        ),
      ),
    ).toBe('ranges[0].to');
    expect(
      configOption(
        make(
          [
            { shard: 'a', to: '2024-13-01' },
            { shard: 'b', from: '2024-13-01' },
          ],
          'date',
        ),
      ),
    ).toBe('ranges[0].to');
    expect(
      configOption(
        make([
          { shard: '', to: 10 },
          { shard: 'b', from: 10 },
        ]),
      ),
    ).toBe('ranges[0].shard');
    expect(configOption(make([{ shard: 'a', to: 10 }, 'b' as never]))).toBe('ranges[1]');
    expect(
      configOption(() => rangeStrategy({ keyType: 'number', ranges: [{ shard: 'a' }], version: -1 })),
    ).toBe('version');
  });
});

describe('timeStrategy and periodOf', () => {
  it('returns a frozen definition and rejects an unknown period', () => {
    const s = timeStrategy({ period: 'month' });
    expect(s).toEqual({ kind: 'time', version: 1, period: 'month', zone: 'UTC' });
    expect(Object.isFrozen(s)).toBe(true);
    expect(configOption(() => timeStrategy({ period: 'week' as never }))).toBe('period');
    expect(configOption(() => timeStrategy({ period: 'day', version: 0 }))).toBe('version');
  });

  it('names periods and bounds them in UTC', () => {
    const at = new Date(Date.UTC(2024, 1, 29, 23, 30));
    expect(periodOf(timeStrategy({ period: 'day' }), at)).toEqual({
      name: '2024_02_29',
      from: new Date(Date.UTC(2024, 1, 29)),
      to: new Date(Date.UTC(2024, 2, 1)),
    });
    expect(periodOf(timeStrategy({ period: 'month' }), at)).toEqual({
      name: '2024_02',
      from: new Date(Date.UTC(2024, 1, 1)),
      to: new Date(Date.UTC(2024, 2, 1)),
    });
    expect(periodOf(timeStrategy({ period: 'year' }), at)).toEqual({
      name: '2024',
      from: new Date(Date.UTC(2024, 0, 1)),
      to: new Date(Date.UTC(2025, 0, 1)),
    });
    expect(periodOf(timeStrategy({ period: 'month' }), '2024-12-31T23:59:59.999Z')).toMatchObject({
      name: '2024_12',
      to: new Date(Date.UTC(2025, 0, 1)),
    });
    expect(periodOf(timeStrategy({ period: 'day' }), Date.UTC(2025, 11, 31)).to).toEqual(
      new Date(Date.UTC(2026, 0, 1)),
    );
    // Years below 100 are not shifted to 19xx.
    const early = periodOf(timeStrategy({ period: 'year' }), '0050-06-01');
    expect(early.name).toBe('0050');
    expect(early.from.toISOString()).toBe('0050-01-01T00:00:00.000Z');
    expect(early.to.toISOString()).toBe('0051-01-01T00:00:00.000Z');
  });

  it('rejects missing and invalid dates with E_SHARD_KEY', () => {
    const s = timeStrategy({ period: 'day' });
    keyError(() => periodOf(s, undefined));
    keyError(() => periodOf(s, null));
    keyError(() => periodOf(s, 'yesterday-secret'), 'yesterday-secret');
    keyError(() => periodOf(s, new Date(Number.NaN)));
    keyError(() => periodOf(s, Date.UTC(10_000, 0, 1)));
    keyError(() => periodOf(s, {}));
  });
});

describe('directoryStrategy', () => {
  it('returns a frozen definition with defaults', () => {
    const s = directoryStrategy({ shards: ['s0', 's1'] });
    expect(s).toEqual({
      kind: 'directory',
      version: 1,
      table: 'strata_shard_directory',
      fallback: undefined,
      shards: ['s0', 's1'],
      cacheTtlMs: 60_000,
    });
    expect(isDeepFrozen(s)).toBe(true);
    const withFallback = directoryStrategy({
      shards: ['s0', 's1', 'big'],
      fallback: hashStrategy({ shards: ['s0', 's1'] }),
      cacheTtl: '5s',
      table: 'tenants_dir',
    });
    expect(withFallback).toMatchObject({
      cacheTtlMs: 5_000,
      table: 'tenants_dir',
      fallback: { kind: 'hash' },
    });
    expect(isDeepFrozen(withFallback)).toBe(true);
  });

  it('rejects bad options naming them', () => {
    expect(configOption(() => directoryStrategy({ shards: [] }))).toBe('shards');
    expect(configOption(() => directoryStrategy({ shards: ['a'], table: 'bad-name' }))).toBe('table');
    expect(configOption(() => directoryStrategy({ shards: ['a'], cacheTtl: 'soon' }))).toBe('cacheTtl');
    expect(
      configOption(() =>
        directoryStrategy({ shards: ['a'], fallback: hashStrategy({ shards: ['a', 'z'] }) }),
      ),
    ).toBe('fallback');
    expect(
      configOption(() =>
        directoryStrategy({ shards: ['a'], fallback: { kind: 'hash', shards: [] } as never }),
      ),
    ).toBe('fallback.shards');
    expect(
      configOption(() => directoryStrategy({ shards: ['a'], fallback: { kind: 'time' } as never })),
    ).toBe('fallback');
  });

  it('is not placed synchronously', () => {
    expect(configOption(() => placeSync(directoryStrategy({ shards: ['a'] }), 'k'))).toBe('strategy');
  });
});

describe('validateStrategy', () => {
  it('loads stored definitions (JSON) back into equal, frozen strategies that place the same', () => {
    const strategies = [
      hashStrategy({ shards: ['s0', 's1', 's2'], seed: 5, version: 2 }),
      numberRanges(),
      rangeStrategy({
        keyType: 'date',
        ranges: [
          { shard: 'a', to: '2024-01-01' },
          { shard: 'b', from: '2024-01-01' },
        ],
      }),
      directoryStrategy({
        shards: ['a', 'b'],
        fallback: hashStrategy({ shards: ['a', 'b'] }),
        cacheTtl: '2s',
      }),
      timeStrategy({ period: 'day' }),
    ];
    for (const s of strategies) {
      expect(validateStrategy(s)).toBe(s);
      const loaded = validateStrategy(JSON.parse(JSON.stringify(s)));
      expect(loaded).not.toBe(s);
      expect(loaded).toEqual(s);
      expect(isDeepFrozen(loaded)).toBe(true);
    }
    const loadedHash = validateStrategy(JSON.parse(JSON.stringify(strategies[0])));
    const loadedRange = validateStrategy(JSON.parse(JSON.stringify(strategies[1])));
    for (let k = 0; k < 2_000; k += 7) {
      expect(placeSync(loadedHash as never, k)).toBe(placeSync(strategies[0] as never, k));
      expect(placeSync(loadedRange as never, k)).toBe(placeSync(strategies[1] as never, k));
    }
  });

  it('names options under the given prefix', () => {
    expect(configOption(() => validateStrategy({ kind: 'nope' }))).toBe('strategy.kind');
    expect(configOption(() => validateStrategy(null))).toBe('strategy');
    expect(
      configOption(() =>
        validateStrategy({
          kind: 'range',
          keyType: 'number',
          ranges: [
            { shard: 'a', to: 1 },
            { shard: 'b', from: 2 },
          ],
        }),
      ),
    ).toBe('strategy.ranges[1].from');
    expect(configOption(() => validateStrategy({ kind: 'hash', shards: ['a', 'a'] }, 'next'))).toBe(
      'next.shards[1]',
    );
  });
});
