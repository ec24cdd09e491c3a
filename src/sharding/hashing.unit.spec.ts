import { describe, expect, it } from 'vitest';
import { canonicalKey, hashKey, jumpHash, murmur3_32 } from './hashing.js';

/** A seeded generator, so the "random" keys are the same in every run. */
function mulberry32(seed: number): () => number {
  let state = seed | 0;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomStrings(n: number, seed: number): string[] {
  const random = mulberry32(seed);
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_éß中😀';
  const chars = [...alphabet];
  const out: string[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const length = 4 + Math.floor(random() * 16);
    let s = '';
    for (let j = 0; j < length; j++) s += chars[Math.floor(random() * chars.length)];
    out[i] = s;
  }
  return out;
}

function maxDeviation(counts: readonly number[], expected: number): number {
  return Math.max(...counts.map((c) => Math.abs(c - expected)));
}

describe('murmur3_32', () => {
  it('matches the published MurmurHash3 x86_32 vectors, over UTF-8 bytes', () => {
    const vectors: [string, number, number][] = [
      ['', 0, 0],
      ['', 1, 0x514e28b7],
      ['', 0xffffffff, 0x81f16f39],
      ['test', 0, 0xba6bd213],
      ['Hello, world!', 0, 0xc0363e43],
      ['Hello, world!', 1234, 0xfaf6cdb3],
      ['The quick brown fox jumps over the lazy dog', 0, 0x2e4ff723],
      ['a', 0x9747b28c, 0x7fa09ea6],
      ['aa', 0x9747b28c, 0x5d211726],
      ['aaa', 0x9747b28c, 0x283e0130],
      ['aaaa', 0x9747b28c, 0x5a97808a],
      ['abc', 0x9747b28c, 0xc84a62dd],
      ['abcd', 0x9747b28c, 0xf0478627],
      ['Hello, world!', 0x9747b28c, 0x24884cba],
      ['ππππππππ', 0x9747b28c, 0xd58063c1],
    ];
    for (const [text, seed, expected] of vectors) expect(murmur3_32(text, seed)).toBe(expected);
  });

  it('hashes long strings (the encoding buffer grows) and stays an unsigned 32-bit integer', () => {
    const long = 'x'.repeat(1_000_000) + '😀';
    const h = murmur3_32(long, 0);
    expect(Number.isInteger(h) && h >= 0 && h < 2 ** 32).toBe(true);
    expect(murmur3_32(long, 0)).toBe(h);
    expect(murmur3_32('abcd', 0x9747b28c)).toBe(0xf0478627);
  });
});

describe('canonicalKey and hashKey', () => {
  it('writes numbers and bigints in decimal, dates as epoch ms, strings as they are', () => {
    expect(canonicalKey(42)).toBe('42');
    expect(canonicalKey(-0)).toBe('0');
    expect(canonicalKey(9007199254740993n)).toBe('9007199254740993');
    expect(canonicalKey(new Date(Date.UTC(2024, 0, 1)))).toBe('1704067200000');
    expect(canonicalKey('tenant-a')).toBe('tenant-a');
  });

  it('hashes 5, 5n and "5" alike, and the seed changes the hash', () => {
    expect(hashKey(5)).toBe(hashKey(5n));
    expect(hashKey(5)).toBe(hashKey('5'));
    expect(hashKey(5, 1)).not.toBe(hashKey(5, 0));
  });

  it('is pinned: the same keys hash and place the same in every process and Node version', () => {
    const pinned: [Parameters<typeof hashKey>[0], number, number, number, number][] = [
      [1, 2484513939, 3501201481, 2, 83],
      [42, 3159925814, 4169614725, 8, 202],
      [1_000_000, 2211409277, 908365846, 9, 575],
      ['tenant-a', 1598802257, 249523141, 8, 293],
      ['ünïcødé', 2210329462, 771727162, 5, 275],
      ['😀', 3199479546, 309394656, 0, 48],
      [new Date(Date.UTC(2024, 0, 1)), 647851970, 3678480001, 2, 438],
      [9007199254740993n, 918386081, 3878017013, 7, 581],
      ['', 0, 415870660, 3, 3],
    ];
    for (const [key, h0, h7, of10, of1000] of pinned) {
      expect(hashKey(key)).toBe(h0);
      expect(hashKey(key, 7)).toBe(h7);
      expect(jumpHash(h0, 10)).toBe(of10);
      expect(jumpHash(h0, 1000)).toBe(of1000);
    }
  });
});

describe('jumpHash', () => {
  it('returns a bucket in range, and 0 for one bucket or none', () => {
    for (let i = 0; i < 1000; i++) {
      const h = hashKey(i);
      expect(jumpHash(h, 1)).toBe(0);
      expect(jumpHash(h, 0)).toBe(0);
      const b = jumpHash(h, 7);
      expect(b >= 0 && b < 7 && Number.isInteger(b)).toBe(true);
    }
  });

  it('spreads 1,000,000 ids over 10 shards within 1% of even', () => {
    const counts = new Array<number>(10).fill(0);
    for (let id = 1; id <= 1_000_000; id++) counts[jumpHash(hashKey(id), 10)]!++;
    expect(counts.reduce((a, b) => a + b, 0)).toBe(1_000_000);
    expect(maxDeviation(counts, 100_000)).toBeLessThan(1_000);
  }, 60_000);

  it('spreads 1,000,000 random strings over 10 shards within 1% of even', () => {
    const counts = new Array<number>(10).fill(0);
    for (const key of randomStrings(1_000_000, 2024)) counts[jumpHash(hashKey(key), 10)]!++;
    expect(maxDeviation(counts, 100_000)).toBeLessThan(1_000);
  }, 60_000);

  it('moves about 1/(N+1) of the keys from N to N+1 shards, all of them to the new shard', () => {
    const n = 1_000_000;
    const hashes = new Uint32Array(n);
    for (let i = 0; i < n; i++) hashes[i] = hashKey(i + 1);
    const before = new Int32Array(n);
    for (let i = 0; i < n; i++) before[i] = jumpHash(hashes[i]!, 2);
    for (let shards = 2; shards <= 16; shards++) {
      let moved = 0;
      let movedElsewhere = 0;
      for (let i = 0; i < n; i++) {
        const after = jumpHash(hashes[i]!, shards + 1);
        if (after === before[i]) continue;
        moved++;
        if (after !== shards) movedElsewhere++;
        before[i] = after;
      }
      const expected = 1 / (shards + 1);
      expect(movedElsewhere).toBe(0);
      expect(Math.abs(moved / n - expected)).toBeLessThan(expected * 0.1);
    }
  }, 60_000);

  it('is not linear in the number of buckets (2^31 buckets answer at once)', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 10_000; i++) {
      const b = jumpHash(hashKey(i), 2 ** 31);
      expect(b >= 0 && b < 2 ** 31).toBe(true);
      seen.add(b);
    }
    expect(seen.size).toBeGreaterThan(9_990);
  });
});
