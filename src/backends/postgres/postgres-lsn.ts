/**
 * PostgreSQL log sequence numbers (LSNs): the 64-bit WAL positions that replication slots,
 * commit records and `pg_current_wal_lsn()` report as `X/Y` text (two hexadecimal halves).
 */
import { StrataError } from '../../core/errors.js';

const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;
const MAX_LSN = (1n << 64n) - 1n;

function lsnError(problem: string): StrataError {
  return new StrataError('E_POSITION', `invalid PostgreSQL LSN: ${problem}`);
}

/** True when `value` is LSN text such as `16/B374D848` (either half may be zero-padded). */
export function isLsn(value: unknown): value is string {
  return typeof value === 'string' && LSN_TEXT.test(value);
}

/**
 * Parses LSN text (`16/B374D848`, or the zero-padded `00000016/B374D848`) into its 64-bit value;
 * `E_POSITION` for anything else.
 */
export function parseLsn(text: unknown): bigint {
  if (typeof text !== 'string') throw lsnError('an LSN is a string such as "16/B374D848"');
  const m = LSN_TEXT.exec(text);
  if (m === null) throw lsnError('expected two hexadecimal halves separated by "/"');
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** Formats a 64-bit LSN the way PostgreSQL prints it (`16/B374D848`); `E_POSITION` when out of range. */
export function formatLsn(lsn: bigint): string {
  if (typeof lsn !== 'bigint' || lsn < 0n || lsn > MAX_LSN) throw lsnError('out of the 64-bit range');
  const high = (lsn >> 32n).toString(16).toUpperCase();
  const low = (lsn & 0xffff_ffffn).toString(16).toUpperCase();
  return `${high}/${low}`;
}

/** Orders two LSNs given as text or bigints: negative, zero or positive; `E_POSITION` for malformed text. */
export function compareLsns(a: string | bigint, b: string | bigint): number {
  const x = typeof a === 'bigint' ? a : parseLsn(a);
  const y = typeof b === 'bigint' ? b : parseLsn(b);
  return x < y ? -1 : x > y ? 1 : 0;
}
