/**
 * What a cache stores: the value with its timestamps and tags, in process as an object and in a
 * shared tier as JSON (bytes and bigints round-trip as in the change log's codec).
 */
import { ValidationError } from '../core/errors.js';

/** One cached value. Times are epoch ms on the cache's clock. */
export interface CacheEntry {
  /** The value (undefined for a negative entry). */
  v: unknown;
  /** When it was stored. */
  c: number;
  /** Logical expiry: fresh before, stale (usable as a fallback) after. */
  e: number;
  /** Physical expiry: the end of the grace period; gone after. */
  g: number;
  /** Tags, for deleteByTag / expireByTag. */
  t?: string[];
  /** A negative entry: the loader said "not found". */
  n?: 1;
}

/**
 * True when plain `JSON.stringify` encodes `value` exactly as the tagged encoding would: no
 * bigint, bytes, Buffer, function, symbol or custom `toJSON` inside (checked without building text).
 */
function plainJson(value: unknown, depth: number): boolean {
  const t = typeof value;
  if (t === 'string' || t === 'number' || t === 'boolean' || value === null) return true;
  if (t !== 'object' || depth > 32 || ArrayBuffer.isView(value)) return false;
  if (typeof (value as { toJSON?: unknown }).toJSON === 'function') return value instanceof Date;
  if (Array.isArray(value)) {
    for (const item of value) if (item === undefined || !plainJson(item, depth + 1)) return false;
    return true;
  }
  for (const key in value as object) {
    const item = (value as Record<string, unknown>)[key];
    if (item !== undefined && !plainJson(item, depth + 1)) return false;
  }
  return true;
}

/** Encodes an entry as JSON text; `E_VALIDATION` when the value cannot be stored. */
export function encodeEntry(entry: CacheEntry, maxBytes: number): string {
  let text: string | undefined;
  // Most values are plain JSON: skip the replacer (a cycle still throws and falls through).
  if (plainJson(entry.v, 0)) {
    try {
      text = JSON.stringify(entry);
    } catch {
      text = undefined;
    }
    if (text !== undefined && text.length <= maxBytes) return text;
  }
  try {
    text = JSON.stringify(entry, (_key, value: unknown) => {
      if (typeof value === 'bigint') return { $bigint: value.toString() };
      if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('base64') };
      if (typeof value === 'function' || typeof value === 'symbol') throw new TypeError('not serializable');
      if (value !== null && typeof value === 'object' && (value as { type?: unknown }).type === 'Buffer') {
        const data = (value as { data?: unknown }).data;
        if (Array.isArray(data)) return { $bytes: Buffer.from(data as number[]).toString('base64') };
      }
      return value;
    });
  } catch (err) {
    throw new ValidationError(
      [{ path: ['value'], message: 'cannot be serialized (a cycle, a function or a symbol)' }],
      {
        subject: 'cache value',
        cause: err,
      },
    );
  }
  if (text === undefined) {
    throw new ValidationError([{ path: ['value'], message: 'cannot be serialized' }], {
      subject: 'cache value',
    });
  }
  if (text.length > maxBytes) {
    throw new ValidationError([{ path: ['value'], message: `larger than the ${maxBytes}-byte limit` }], {
      subject: 'cache value',
      details: { size: text.length, maxBytes },
    });
  }
  return text;
}

function isEntry(entry: unknown): entry is CacheEntry {
  const e = entry as CacheEntry | null;
  return typeof e === 'object' && e !== null && typeof e.e === 'number' && typeof e.g === 'number';
}

/** Decodes `encodeEntry` output; undefined for anything that is not an entry (a foreign or corrupt key). */
export function decodeEntry(text: string): CacheEntry | undefined {
  // Tagged values always spell their tag: without one, the reviver (three times slower) is not needed.
  if (!text.includes('"$bigint"') && !text.includes('"$bytes"')) {
    try {
      const entry: unknown = JSON.parse(text);
      return isEntry(entry) ? entry : undefined;
    } catch {
      return undefined;
    }
  }
  try {
    const entry = JSON.parse(text, (_key, value: unknown) => {
      if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
        const v = value as { $bigint?: unknown; $bytes?: unknown };
        const keys = Object.keys(value);
        if (keys.length === 1 && typeof v.$bigint === 'string') return BigInt(v.$bigint);
        if (keys.length === 1 && typeof v.$bytes === 'string')
          return new Uint8Array(Buffer.from(v.$bytes, 'base64'));
      }
      return value;
    }) as CacheEntry;
    if (
      typeof entry !== 'object' ||
      entry === null ||
      typeof entry.e !== 'number' ||
      typeof entry.g !== 'number'
    ) {
      return undefined;
    }
    return entry;
  } catch {
    return undefined;
  }
}
