import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
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

/**
 * Runs `strata <args>` in this process (the whole program, as the bin does) with captured
 * output; resolves with the exit code and what it printed.
 */
export async function runCliInProcess(
  args: readonly string[],
  envVars: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { run } = await import('../src/cli/program.js');
  let stdout = '';
  let stderr = '';
  const sink = (write: (s: string) => void) =>
    new Writable({
      write(chunk, _encoding, done) {
        write(String(chunk));
        done();
      },
    });
  const io = {
    stdout: sink((s) => {
      stdout += s;
    }),
    stderr: sink((s) => {
      stderr += s;
    }),
    env: envVars,
  };
  try {
    const code = await run(['node', 'strata', ...args], io);
    return { code, stdout, stderr };
  } finally {
    process.exitCode = undefined;
  }
}
