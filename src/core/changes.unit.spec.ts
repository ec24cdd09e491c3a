import { describe, expect, it } from 'vitest';
import {
  type Change,
  changeKey,
  comparePositions,
  deserializeChange,
  isPosition,
  makePosition,
  parsePosition,
  serializeChange,
  stableJson,
} from './changes.js';
import { isStrataError } from './errors.js';

function error(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error');
}

describe('positions', () => {
  it('are short tokens that parse back to their parts', () => {
    const p = makePosition('social', 0x16b374d848n, 3);
    expect(p).toBe('social@00000016b374d848.00000003');
    expect(parsePosition(p)).toEqual({ source: 'social', major: 0x16b374d848n, minor: 3 });
    expect(isPosition(p)).toBe(true);
    expect(makePosition('a', (1n << 64n) - 1n, 0xffff_ffff)).toBe('a@ffffffffffffffff.ffffffff');
  });

  it('compare in commit order within a source', () => {
    const a = makePosition('s', 9n, 5);
    const b = makePosition('s', 10n, 0);
    const c = makePosition('s', 10n, 1);
    expect(comparePositions(a, b)).toBeLessThan(0);
    expect(comparePositions(c, b)).toBeGreaterThan(0);
    expect(comparePositions(b, makePosition('s', 10n))).toBe(0);
    expect([c, a, b].sort(comparePositions)).toEqual([a, b, c]);
  });

  it('refuse comparison across sources and malformed or forged tokens with E_POSITION', () => {
    expect(
      isStrataError(
        error(() => comparePositions(makePosition('a', 1n), makePosition('b', 1n))),
        'E_POSITION',
      ),
    ).toBe(true);
    for (const bad of [
      '',
      'x',
      's@1.2',
      's@0000000000000001.0000000g',
      's@0000000000000001',
      ' s@0000000000000001.00000000',
      42,
      null,
    ]) {
      expect(
        isStrataError(
          error(() => parsePosition(bad)),
          'E_POSITION',
        ),
      ).toBe(true);
      expect(isPosition(bad)).toBe(false);
    }
    expect(
      isStrataError(
        error(() => makePosition('s', -1n)),
        'E_POSITION',
      ),
    ).toBe(true);
    expect(
      isStrataError(
        error(() => makePosition('s', 1n << 64n)),
        'E_POSITION',
      ),
    ).toBe(true);
    expect(
      isStrataError(
        error(() => makePosition('bad source!', 1n)),
        'E_CONFIG',
      ),
    ).toBe(true);
  });
});

describe('the change codec', () => {
  it('round-trips bytes, bigints, unicode and nesting', () => {
    const change: Change = {
      source: 's',
      table: 't',
      op: 'update',
      key: { id: 1n },
      before: { data: Buffer.from([1, 2, 3]) },
      after: {
        data: new Uint8Array([0, 255]),
        n: 12345678901234567890n,
        text: '∑ \u{1F600}',
        nested: { a: [1, null] },
      },
      position: makePosition('s', 1n),
      txId: '77',
      commitTime: 1,
    };
    const back = deserializeChange<Change>(serializeChange(change));
    expect(back.key).toEqual({ id: 1n });
    expect(back.before?.data).toEqual(new Uint8Array([1, 2, 3]));
    expect(back.after).toEqual({
      data: new Uint8Array([0, 255]),
      n: 12345678901234567890n,
      text: '∑ \u{1F600}',
      nested: { a: [1, null] },
    });
  });

  it('reports undecodable text as E_CORRUPT', () => {
    expect(
      isStrataError(
        error(() => deserializeChange('{nope')),
        'E_CORRUPT',
      ),
    ).toBe(true);
  });

  it('groups rows by table and canonical key', () => {
    expect(stableJson({ b: 1, a: [2, { d: 1, c: 2 }] })).toBe('{"a":[2,{"c":2,"d":1}],"b":1}');
    expect(changeKey({ table: 't', key: { b: 2, a: 1 } })).toBe(
      changeKey({ table: 't', key: { a: 1, b: 2 } }),
    );
    expect(changeKey({ table: 't', key: { id: 1 } })).not.toBe(changeKey({ table: 'u', key: { id: 1 } }));
  });
});
