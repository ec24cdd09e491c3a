import { describe, expect, it } from 'vitest';
import { fromTypedJson, toTypedJson } from './json.js';

describe('typed JSON', () => {
  it('round-trips bigints, bytes (Uint8Array and Buffer), dates and plain values, nested', () => {
    const value = {
      big: 2n ** 70n,
      bytes: new Uint8Array([0, 1, 254, 255]),
      buffer: Buffer.from('hi'),
      when: new Date('2026-03-04T05:06:07.089Z'),
      list: [1, 'two', null, { at: new Date(0) }],
      plain: { a: 1, b: 'x' },
    };
    const back = fromTypedJson<typeof value>(toTypedJson(value));
    expect(back.big).toBe(2n ** 70n);
    expect(Array.from(back.bytes)).toEqual([0, 1, 254, 255]);
    expect(Buffer.from(back.buffer as Uint8Array).toString()).toBe('hi');
    expect(back.when).toEqual(value.when);
    expect(back.list).toEqual([1, 'two', null, { at: new Date(0) }]);
    expect(back.plain).toEqual({ a: 1, b: 'x' });
  });

  it('leaves objects that only look alike but have more keys alone', () => {
    expect(fromTypedJson('{"$date": 5, "other": 1}')).toEqual({ $date: 5, other: 1 });
  });
});
