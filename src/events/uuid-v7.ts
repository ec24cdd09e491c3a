/**
 * Time-ordered UUIDs (version 7, RFC 9562): a 48-bit Unix time in milliseconds, then random bits.
 * The default event id: ids made one after another sort (as strings and as bytes) in the order
 * they were made, so inserts land at the right edge of a unique index instead of at random pages,
 * which keeps appends fast as the table grows.
 *
 * Layout: `unix_ts_ms` (48) | version `0111` (4) | counter (42, split by the 2 variant bits `10`)
 * | random (32). The counter is seeded at random (its top bit clear) whenever the millisecond
 * moves on and incremented for each id within one millisecond (RFC 9562 section 6.2, method 1,
 * with a randomly seeded counter), so ids of one process strictly increase even when many are
 * made in one millisecond or the clock steps back; 32 fresh random bits per id keep ids of
 * separate processes apart.
 */
import { randomFillSync } from 'node:crypto';

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const COUNTER_LIMIT = 2 ** 42;
const MAX_TIMESTAMP = 2 ** 48 - 1;
const POOL_BYTES = 4096;

/** Fills `target` with random bytes. */
export type RandomFill = (target: Uint8Array) => void;

/** A generator of UUIDv7 strings; `now` is the time to stamp (epoch ms, default `Date.now()`). */
export type UuidV7Generator = (now?: number) => string;

/**
 * A UUIDv7 generator with its own monotonic state. `random` fills buffers with random bytes
 * (default: the crypto generator, drawn in blocks).
 */
export function createUuidV7Generator(random?: RandomFill): UuidV7Generator {
  const fill = random ?? pooledRandom();
  const scratch = new Uint8Array(6);
  let lastMs = -1;
  let counter = 0;

  const seed = (): number => {
    fill(scratch);
    // 41 random bits: at least 2^41 increments remain before the counter overflows.
    return (scratch[0]! & 0x01) * 2 ** 40 + scratch[1]! * 2 ** 32 + readUint32(scratch, 2);
  };

  return (now?: number): string => {
    const t = now ?? Date.now();
    const ms = Number.isFinite(t) ? Math.min(Math.max(Math.floor(t), 0), MAX_TIMESTAMP) : 0;
    if (ms > lastMs) {
      lastMs = ms;
      counter = seed();
    } else {
      // The same millisecond, or the clock stepped back: stay on the last one and count up.
      counter++;
      if (counter >= COUNTER_LIMIT && lastMs < MAX_TIMESTAMP) {
        lastMs++;
        counter = seed();
      }
    }
    fill(scratch);
    const hi = Math.floor(lastMs / 2 ** 16);
    const lo = lastMs % 2 ** 16;
    const cHi = Math.floor(counter / 2 ** 24); // the counter's top 18 bits
    const cLo = counter % 2 ** 24; // its low 24 bits
    return (
      HEX[(hi >>> 24) & 0xff]! +
      HEX[(hi >>> 16) & 0xff]! +
      HEX[(hi >>> 8) & 0xff]! +
      HEX[hi & 0xff]! +
      '-' +
      HEX[(lo >>> 8) & 0xff]! +
      HEX[lo & 0xff]! +
      '-' +
      HEX[0x70 | ((cHi >>> 14) & 0x0f)]! +
      HEX[(cHi >>> 6) & 0xff]! +
      '-' +
      HEX[0x80 | (cHi & 0x3f)]! +
      HEX[(cLo >>> 16) & 0xff]! +
      '-' +
      HEX[(cLo >>> 8) & 0xff]! +
      HEX[cLo & 0xff]! +
      HEX[scratch[0]!]! +
      HEX[scratch[1]!]! +
      HEX[scratch[2]!]! +
      HEX[scratch[3]!]!
    );
  };
}

function readUint32(bytes: Uint8Array, at: number): number {
  return ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
}

/** Random bytes from the crypto generator, drawn a block at a time. */
function pooledRandom(): RandomFill {
  const pool = new Uint8Array(POOL_BYTES);
  let offset = POOL_BYTES;
  return (target) => {
    if (offset + target.length > POOL_BYTES) {
      randomFillSync(pool);
      offset = 0;
    }
    target.set(pool.subarray(offset, offset + target.length));
    offset += target.length;
  };
}

/** The process-wide UUIDv7 generator: ids it makes strictly increase. */
export const uuidv7: UuidV7Generator = createUuidV7Generator();

/** The Unix time in milliseconds stamped into a UUIDv7 (no check of the version). */
export function uuidv7Time(id: string): number {
  return Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}
