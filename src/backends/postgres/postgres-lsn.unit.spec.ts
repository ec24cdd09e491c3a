import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isStrataError } from '../../core/errors.js';
import { compareLsns, formatLsn, isLsn, parseLsn } from './postgres-lsn.js';

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error');
}

describe('postgres LSNs', () => {
  it.each([
    ['0/0', 0n],
    ['0/16B3748', 0x16b3748n],
    ['16/B374D848', (0x16n << 32n) | 0xb374d848n],
    ['00000016/B374D848', (0x16n << 32n) | 0xb374d848n],
    ['0/1177c130', 0x1177c130n],
    ['FFFFFFFF/FFFFFFFF', (1n << 64n) - 1n],
  ])('parses %s', (text, value) => {
    expect(parseLsn(text)).toBe(value);
    expect(isLsn(text)).toBe(true);
  });

  it('formats the way PostgreSQL prints (upper case, no padding)', () => {
    expect(formatLsn(0n)).toBe('0/0');
    expect(formatLsn((0x16n << 32n) | 0xb374d848n)).toBe('16/B374D848');
    expect(formatLsn(0x0000_0001_0000_000an)).toBe('1/A');
  });

  it.each([
    ['16B374D848'],
    ['16/'],
    ['/1'],
    ['g/1'],
    ['123456789/0'],
    ['1/2/3'],
    [' 1/2'],
    [''],
    [12],
    [null],
  ])('rejects %j with E_POSITION, without echoing it', (input) => {
    const err = thrown(() => parseLsn(input));
    expect(isStrataError(err, 'E_POSITION')).toBe(true);
    if (typeof input === 'string' && input.length > 2) expect((err as Error).message).not.toContain(input);
    expect(isLsn(input)).toBe(false);
  });

  it('rejects values outside 64 bits when formatting', () => {
    expect(
      isStrataError(
        thrown(() => formatLsn(-1n)),
        'E_POSITION',
      ),
    ).toBe(true);
    expect(
      isStrataError(
        thrown(() => formatLsn(1n << 64n)),
        'E_POSITION',
      ),
    ).toBe(true);
  });

  it('round-trips and orders like the numbers it encodes', () => {
    const lsn = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
    fc.assert(
      fc.property(lsn, lsn, (a, b) => {
        expect(parseLsn(formatLsn(a))).toBe(a);
        const expected = a < b ? -1 : a > b ? 1 : 0;
        expect(compareLsns(formatLsn(a), formatLsn(b))).toBe(expected);
        expect(compareLsns(a, formatLsn(b))).toBe(expected);
      }),
    );
  });

  it('compares numerically, not as text', () => {
    expect(compareLsns('0/A', '0/9')).toBe(1);
    expect(compareLsns('1/0', '0/FFFFFFFF')).toBe(1);
    expect(compareLsns('00000000/0000000A', '0/A')).toBe(0);
  });
});
