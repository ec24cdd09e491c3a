/** Conversions of command-line option strings, with `E_CONFIG` errors naming the flag. */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../core/errors.js';

/** A number from a flag's text; NaN for empty or non-numeric text, so that validation rejects it. */
export function toNumber(text: string): number {
  return text.trim() === '' ? Number.NaN : Number(text);
}

/** An integer from `min` to `max` from a flag's text, or `E_CONFIG` naming `option`. */
export function integerOption(text: string, option: string, min: number, max: number): number {
  const value = toNumber(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(option, `must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** A TCP port (0..65535; 0 picks a free one), or `E_CONFIG` naming `port`. */
export function portOption(text: string): number {
  return integerOption(text, 'port', 0, 65_535);
}

/** A request rate above 0, or `E_CONFIG` naming `rate`. */
export function rateOption(text: string): number {
  const value = toNumber(text);
  if (!Number.isFinite(value) || value <= 0)
    throw new ConfigError('rate', 'must be a number of requests per second above 0');
  return value;
}

let cachedVersion: string | undefined;

/**
 * The version in strata's package.json, found by walking up from this file (it sits at a
 * different depth under `src/` and `dist/src/`); `0.0.0` when it cannot be found.
 */
export function packageVersion(): string {
  if (cachedVersion !== undefined) return cachedVersion;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 6; depth++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'strata' && typeof pkg.version === 'string') {
        cachedVersion = pkg.version;
        return pkg.version;
      }
    } catch {
      // No package.json at this level; keep walking up.
    }
    dir = dirname(dir);
  }
  cachedVersion = '0.0.0';
  return cachedVersion;
}
