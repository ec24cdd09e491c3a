/**
 * JSON for values that plain JSON loses, in durable state (cursors, journals): bigints become
 * `{"$bigint": "digits"}`, bytes `{"$bytes": base64}`, dates `{"$date": epoch ms}`, and
 * `fromTypedJson` turns them back. (The change log's wire form is `serializeChange`, which keeps
 * dates as ISO strings for every log reader.)
 */

/** JSON text of `value` keeping bigints, bytes and dates. */
export function toTypedJson(value: unknown): string {
  return JSON.stringify(value, function (this: Record<string, unknown>, key, v: unknown) {
    // Buffer#toJSON and Date#toJSON run before the replacer: look at the original value.
    const original = this[key];
    if (typeof original === 'bigint') return { $bigint: original.toString() };
    if (original instanceof Uint8Array) return { $bytes: Buffer.from(original).toString('base64') };
    if (original instanceof Date) return { $date: original.getTime() };
    return v;
  });
}

/** Reads `toTypedJson` text back; throws the `JSON.parse` error on malformed text. */
export function fromTypedJson<T = unknown>(text: string): T {
  return JSON.parse(text, (_key, value: unknown) => {
    if (
      value !== null &&
      typeof value === 'object' &&
      !Array.isArray(value) &&
      Object.keys(value).length === 1
    ) {
      const v = value as { $bigint?: unknown; $bytes?: unknown; $date?: unknown };
      if (typeof v.$bigint === 'string') return BigInt(v.$bigint);
      if (typeof v.$bytes === 'string') return new Uint8Array(Buffer.from(v.$bytes, 'base64'));
      if (typeof v.$date === 'number') return new Date(v.$date);
    }
    return value;
  }) as T;
}
