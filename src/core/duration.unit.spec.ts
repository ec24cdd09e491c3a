import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration, parseOptionalDuration } from './duration.js';
import { isStrataError } from './errors.js';

function configError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error');
}

describe('durations', () => {
  it.each([
    [250, 250],
    ['250ms', 250],
    ['5s', 5_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['2d', 172_800_000],
    ['1h30m', 5_400_000],
    ['1.5s', 1_500],
    ['0.5ms', 1],
    [' 10s ', 10_000],
    [0, 0],
    ['0s', 0],
  ])('parses %j as %d ms', (input, ms) => {
    expect(parseDuration(input, 'ttl')).toBe(ms);
  });

  it.each([
    ['-5s', 'negative'],
    [-1, 'negative'],
    ['5', 'format'],
    ['5 parsecs', 'format'],
    ['5sec', 'format'],
    ['', 'empty'],
    ['s5', 'format'],
    [Number.NaN, 'number'],
    [Number.POSITIVE_INFINITY, 'finite'],
    [{} as unknown as string, 'milliseconds'],
  ])('rejects %j with E_CONFIG naming the option', (input, problem) => {
    const err = configError(() => parseDuration(input, 'cache.ttl'));
    expect(isStrataError(err, 'E_CONFIG')).toBe(true);
    expect(err).toMatchObject({ option: 'cache.ttl' });
    expect((err as Error).message).toContain(problem);
  });

  it('refuses zero when asked to, and allows infinity only when asked to', () => {
    expect(configError(() => parseDuration(0, 'flushEvery', { allowZero: false }))).toMatchObject({
      option: 'flushEvery',
    });
    expect(parseDuration('infinite', 'ttl', { allowInfinite: true })).toBe(Number.POSITIVE_INFINITY);
    expect(configError(() => parseDuration('infinite', 'ttl'))).toMatchObject({ code: 'E_CONFIG' });
  });

  it('falls back when the option is absent', () => {
    expect(parseOptionalDuration(undefined, 'x', 42)).toBe(42);
    expect(parseOptionalDuration('1s', 'x', 42)).toBe(1_000);
  });

  it('formats milliseconds for humans', () => {
    expect(formatDuration(250)).toBe('250ms');
    expect(formatDuration(1_500)).toBe('1.5s');
    expect(formatDuration(120_000)).toBe('2m');
    expect(formatDuration(5_400_000)).toBe('1.5h');
    expect(formatDuration(Number.POSITIVE_INFINITY)).toBe('infinite');
  });
});
