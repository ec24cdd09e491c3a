/**
 * Stable hashing of shard keys: the canonical text of a key, MurmurHash3 (x86, 32-bit) of its
 * UTF-8 bytes, and jump consistent hash from a 32-bit hash to a bucket. Everything here is 32-bit
 * integer arithmetic (`Math.imul`), so results are identical in every process and Node version,
 * and no BigInt is touched on the placement path.
 */
import type { ShardKey } from './types.js';

/**
 * The canonical text of a key that hashing and the directory use: numbers and bigints in
 * decimal (so `5` and `5n` are the same key), strings as they are, dates as epoch milliseconds in
 * decimal. A string that spells a number is the same key as that number.
 */
export function canonicalKey(key: ShardKey): string {
  if (typeof key === 'string') return key;
  if (typeof key === 'number') return Object.is(key, -0) ? '0' : String(key);
  if (typeof key === 'bigint') return key.toString(10);
  return String(key.getTime());
}

const encoder = new TextEncoder();
const scratch = new Uint8Array(3 * 1024);

/**
 * Writes the UTF-8 bytes of `text` into the shared scratch buffer and returns their count, or
 * returns -1 when the text is too long for it. ASCII text (ids, tenant names: most keys) is
 * copied code unit by code unit, which is cheaper than a call into the encoder and allocates
 * nothing; other text goes through `encodeInto` (lone surrogates become U+FFFD).
 */
function toScratch(text: string): number {
  const n = text.length;
  if (n * 3 > scratch.length) return -1;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c > 0x7f) return encoder.encodeInto(text, scratch).written;
    scratch[i] = c;
  }
  return n;
}

/** MurmurHash3 x86 32-bit of the UTF-8 bytes of `text` with `seed`, as an unsigned 32-bit integer. */
export function murmur3_32(text: string, seed = 0): number {
  const length = toScratch(text);
  if (length >= 0) return murmurBytes(scratch, length, seed);
  const bytes = encoder.encode(text);
  return murmurBytes(bytes, bytes.length, seed);
}

/** MurmurHash3 x86 32-bit of the first `length` bytes of `bytes`. */
function murmurBytes(bytes: Uint8Array, length: number, seed: number): number {
  const c1 = 0xcc9e2d51;
  const c2 = 0x1b873593;
  let h = seed >>> 0;
  const blocks = length & ~3;
  for (let i = 0; i < blocks; i += 4) {
    let k = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
    k = Math.imul(k, c1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, c2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = length & 3;
  if (tail > 0) {
    let k = bytes[blocks]!;
    if (tail > 1) k ^= bytes[blocks + 1]! << 8;
    if (tail > 2) k ^= bytes[blocks + 2]! << 16;
    k = Math.imul(k, c1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, c2);
    h ^= k;
  }
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The 32-bit hash of a key's canonical text (`canonicalKey`) with `seed` (default 0). */
export function hashKey(key: ShardKey, seed = 0): number {
  return murmur3_32(canonicalKey(key), seed);
}

const TWO_POW_32 = 4_294_967_296;

/**
 * Jump consistent hash (Lamping and Veach): the bucket in `[0, buckets)` of a 32-bit hash. Going
 * from `n` to `n + 1` buckets moves about `1/(n + 1)` of the hashes, all of them to the new
 * bucket. The jumps draw uniform numbers from a mulberry32 sequence seeded by the hash, in 32-bit
 * arithmetic. Returns 0 for fewer than 2 buckets.
 */
export function jumpHash(hash32: number, buckets: number): number {
  let state = hash32 | 0;
  let b = 0;
  let j = 0;
  while (j < buckets) {
    b = j;
    state = (state + 0x6d2b79f5) | 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    // A uniform draw in (0, 1]: the next jump lands at floor((b + 1) / r), always past b.
    const r = (((t ^ (t >>> 14)) >>> 0) + 1) / TWO_POW_32;
    j = Math.floor((b + 1) / r);
  }
  return b;
}
