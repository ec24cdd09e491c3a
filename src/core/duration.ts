import { ConfigError } from './errors.js';

/** A unit accepted in a duration string. */
export type DurationUnit = 'ms' | 's' | 'm' | 'h' | 'd';

/**
 * A length of time: a number of milliseconds, or a string of one or more number-unit parts
 * such as `'250ms'`, `'5m'`, `'1h30m'` or `'1.5s'`.
 */
export type Duration = number | `${number}${DurationUnit}` | (string & {});

const UNIT_MS: Record<DurationUnit, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;

/** Options for `parseDuration`. */
export interface ParseDurationOptions {
  /** Allow zero (default true). */
  allowZero?: boolean;
  /** Allow `Infinity` / `'infinite'` (default false). */
  allowInfinite?: boolean;
}

/**
 * Converts a duration to whole milliseconds (fractions round up, so `'0.5ms'` is 1 ms).
 * Throws `E_CONFIG` naming `option` for a negative, non-finite, malformed or unit-less string.
 */
export function parseDuration(value: Duration, option: string, options: ParseDurationOptions = {}): number {
  const { allowZero = true, allowInfinite = false } = options;
  let ms: number;
  if (typeof value === 'number') {
    if (Number.isNaN(value)) throw new ConfigError(option, 'duration is not a number');
    if (value === Number.POSITIVE_INFINITY && allowInfinite) return value;
    if (!Number.isFinite(value)) throw new ConfigError(option, 'duration must be finite');
    ms = value;
  } else if (typeof value === 'string') {
    const text = value.trim();
    if (allowInfinite && text === 'infinite') return Number.POSITIVE_INFINITY;
    if (text.startsWith('-')) throw new ConfigError(option, 'duration must not be negative');
    ms = parseParts(text, option);
  } else {
    throw new ConfigError(option, 'duration must be a number of milliseconds or a string such as "5m"');
  }
  if (ms < 0) throw new ConfigError(option, 'duration must not be negative');
  if (ms === 0 && !allowZero) throw new ConfigError(option, 'duration must be greater than zero');
  return Math.ceil(ms);
}

function parseParts(text: string, option: string): number {
  if (text.length === 0) throw new ConfigError(option, 'duration is empty');
  let total = 0;
  PART.lastIndex = 0;
  while (PART.lastIndex < text.length) {
    const match = PART.exec(text);
    if (match === null) {
      throw new ConfigError(option, 'unknown duration format; use a number and a unit: ms, s, m, h or d');
    }
    total += Number(match[1]) * UNIT_MS[match[2] as DurationUnit];
  }
  return total;
}

/** Like `parseDuration` but returns `fallback` when `value` is undefined. */
export function parseOptionalDuration(
  value: Duration | undefined,
  option: string,
  fallback: number,
  options?: ParseDurationOptions,
): number {
  return value === undefined ? fallback : parseDuration(value, option, options);
}

/** Formats milliseconds as a short human string (`1.5s`, `250ms`, `2m`) for logs and the CLI. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return 'infinite';
  if (ms < 1_000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${trim(ms / 1_000)}s`;
  if (ms < 3_600_000) return `${trim(ms / 60_000)}m`;
  if (ms < 86_400_000) return `${trim(ms / 3_600_000)}h`;
  return `${trim(ms / 86_400_000)}d`;
}

function trim(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}
