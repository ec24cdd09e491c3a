/**
 * `<data-dir>/strata.json`: what `strata start` is running and where, for `strata status` and
 * `strata simulate` to find it. Written when the server listens, removed on a clean shutdown.
 */
import { accessSync, constants, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError, StrataError } from '../core/errors.js';

/** The file name inside the data directory. */
export const RUN_FILE = 'strata.json';

/** The contents of `strata.json`. */
export interface RunInfo {
  pid: number;
  /** Base URL of the API with the bound port. */
  url: string;
  dashboardUrl: string;
  metricsUrl: string;
  /** ISO 8601 start time. */
  startedAt: string;
  engines: { database: string; cache: string; changeLog?: string };
  /** Absolute data directory. */
  dataDir: string;
  version: string;
}

/** The absolute path of `strata.json` in `dataDir`. */
export function runFilePath(dataDir: string): string {
  return resolve(dataDir, RUN_FILE);
}

/**
 * Creates `dir` if needed and checks it is writable; returns its absolute path, or throws
 * `E_CONFIG` (`data-dir`) naming the directory.
 */
export function ensureWritableDir(dir: string): string {
  const abs = resolve(dir);
  try {
    mkdirSync(abs, { recursive: true });
    accessSync(abs, constants.W_OK);
  } catch (err) {
    throw new ConfigError('data-dir', `directory ${abs} cannot be created or written`, { cause: err });
  }
  return abs;
}

/** Writes `strata.json` atomically (a temporary file, then a rename); `E_CONFIG` (`data-dir`) on failure. */
export function writeRunFile(dataDir: string, info: RunInfo): void {
  const path = runFilePath(dataDir);
  const temporary = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(temporary, `${JSON.stringify(info, null, 2)}\n`);
    renameSync(temporary, path);
  } catch (err) {
    rmSync(temporary, { force: true });
    throw new ConfigError('data-dir', `cannot write ${path}`, { cause: err });
  }
}

/**
 * Reads `strata.json` from `dataDir`: undefined when there is none, `E_STATUS_FILE` naming the
 * file when it is not one `strata start` wrote.
 */
export function readRunFile(dataDir: string): RunInfo | undefined {
  const path = runFilePath(dataDir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (
      (err as NodeJS.ErrnoException).code === 'ENOENT' ||
      (err as NodeJS.ErrnoException).code === 'ENOTDIR'
    ) {
      return undefined;
    }
    throw new StrataError('E_STATUS_FILE', `cannot read ${path}`, { cause: err });
  }
  try {
    const info = JSON.parse(text) as Partial<RunInfo>;
    if (!Number.isInteger(info.pid) || typeof info.url !== 'string')
      throw new TypeError('missing pid or url');
    return info as RunInfo;
  } catch (err) {
    throw new StrataError('E_STATUS_FILE', `${path} is not a strata status file; remove it`, { cause: err });
  }
}

/** Removes `strata.json` when it still belongs to `pid`; returns whether it did. */
export function removeRunFile(dataDir: string, pid: number): boolean {
  try {
    if (readRunFile(dataDir)?.pid !== pid) return false;
    rmSync(runFilePath(dataDir), { force: true });
    return true;
  } catch {
    return false;
  }
}

/** True when a process with `pid` exists (also when it belongs to another user). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The running app recorded in `dataDir`: its `strata.json` when the process is alive, else
 * `E_NOT_RUNNING` with a one-line reason (no file, or the recorded process has exited).
 */
export function findRunningApp(dataDir: string): RunInfo {
  const info = readRunFile(dataDir);
  const dir = resolve(dataDir);
  if (info === undefined) {
    throw new StrataError(
      'E_NOT_RUNNING',
      `nothing is running: no ${RUN_FILE} in ${dir}; start the app with "strata start"`,
      {
        details: { dataDir: dir },
      },
    );
  }
  if (!isProcessAlive(info.pid)) {
    throw new StrataError(
      'E_NOT_RUNNING',
      `nothing is running: the app recorded in ${runFilePath(dir)} (pid ${info.pid}) has exited`,
      {
        details: { dataDir: dir, pid: info.pid },
      },
    );
  }
  return info;
}
