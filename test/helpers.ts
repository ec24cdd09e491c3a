import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inject } from 'vitest';
import { testEnvironment } from '../src/testing/environment.js';

/** Which engines the global setup found reachable. */
export const services = inject('services');
/** Connection settings of the test engines. */
export const env = testEnvironment();

/** A name unique to this spec file's run, for databases, key prefixes and streams. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
}

/** A fresh temporary directory and a function that removes it. */
export function tempDir(prefix = 'strata-'): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}
