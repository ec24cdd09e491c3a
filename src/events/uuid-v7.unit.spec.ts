import { describe, expect, it } from 'vitest';
import { createUuidV7Generator, uuidv7, uuidv7Time } from './uuid-v7.js';

const FORMAT = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** The 16 bytes of a UUID string. */
function bytes(id: string): number[] {
  const hex = id.replaceAll('-', '');
  return Array.from({ length: 16 }, (_, i) => Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16));
}

describe('uuidv7', () => {
  it('has the RFC 9562 layout: 48-bit time, version 7, variant 10', () => {
    const at = Date.UTC(2025, 0, 2, 3, 4, 5, 678);
    const id = createUuidV7Generator()(at);
    expect(id).toMatch(FORMAT);
    const b = bytes(id);
    expect(b[6]! >> 4).toBe(7);
    expect(b[8]! >> 6).toBe(0b10);
    expect(b.slice(0, 6).reduce((t, x) => t * 256 + x, 0)).toBe(at);
    expect(uuidv7Time(id)).toBe(at);
  });

  it('stamps the current time by default', () => {
    const before = Date.now();
    const id = uuidv7();
    expect(id).toMatch(FORMAT);
    expect(uuidv7Time(id)).toBeGreaterThanOrEqual(before);
    expect(uuidv7Time(id)).toBeLessThanOrEqual(Date.now());
  });

  it('strictly increases within one millisecond, across milliseconds and when the clock steps back', () => {
    const next = createUuidV7Generator();
    const times = [
      ...Array.from({ length: 5000 }, () => 1_700_000_000_000),
      ...Array.from({ length: 100 }, (_, i) => 1_700_000_000_001 + i),
      ...Array.from({ length: 100 }, () => 1_600_000_000_000),
    ];
    const ids = times.map((t) => next(t));
    for (const id of ids) expect(id).toMatch(FORMAT);
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    // A clock that stepped back keeps the last millisecond rather than going back with it.
    expect(uuidv7Time(ids.at(-1)!)).toBe(1_700_000_000_100);
  });

  it('seeds a fresh random counter each millisecond and keeps 32 random bits per id', () => {
    let calls = 0;
    const next = createUuidV7Generator((target) => {
      calls++;
      target.fill(0xff);
    });
    const a = next(1000);
    const b = next(1000);
    // The seed's top bit is clear: all ones below it, then the increment carries into it.
    expect(a).toBe('00000000-03e8-77ff-bfff-ffffffffffff');
    expect(b).toBe('00000000-03e8-7800-8000-0000ffffffff');
    expect(calls).toBe(3);
  });

  it('makes distinct ids in separate generators at the same millisecond', () => {
    const ids = new Set<string>();
    for (let g = 0; g < 50; g++) {
      const next = createUuidV7Generator();
      for (let i = 0; i < 20; i++) ids.add(next(1_700_000_000_000));
    }
    expect(ids.size).toBe(1000);
  });
});
