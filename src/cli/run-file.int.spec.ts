import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import {
  ensureWritableDir,
  findRunningApp,
  isProcessAlive,
  type RunInfo,
  readRunFile,
  removeRunFile,
  runFilePath,
  writeRunFile,
} from './run-file.js';

const dirs: Array<{ remove: () => void }> = [];
function tmp(): string {
  const dir = tempDir('strata-runfile-');
  dirs.push(dir);
  return dir.path;
}
afterAll(() => {
  for (const dir of dirs) dir.remove();
});

function info(dataDir: string, pid = process.pid): RunInfo {
  return {
    pid,
    url: 'http://127.0.0.1:3000',
    dashboardUrl: 'http://127.0.0.1:3000/dashboard',
    metricsUrl: 'http://127.0.0.1:3000/metrics',
    startedAt: new Date().toISOString(),
    engines: { database: 'sqlite', cache: 'memory' },
    dataDir,
    version: '0.1.0',
  };
}

/** The pid of a process that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  const pid = Number(child.stdout.toString());
  expect(isProcessAlive(pid)).toBe(false);
  return pid;
}

describe('strata.json', () => {
  it('is written, found while its process lives, and removed only by its owner', () => {
    const dir = tmp();
    const written = info(dir);
    writeRunFile(dir, written);
    expect(readRunFile(dir)).toEqual(written);
    expect(JSON.parse(readFileSync(runFilePath(dir), 'utf8')).pid).toBe(process.pid);
    expect(findRunningApp(dir).url).toBe('http://127.0.0.1:3000');
    expect(removeRunFile(dir, process.pid + 1)).toBe(false);
    expect(existsSync(runFilePath(dir))).toBe(true);
    expect(removeRunFile(dir, process.pid)).toBe(true);
    expect(existsSync(runFilePath(dir))).toBe(false);
    expect(readRunFile(dir)).toBeUndefined();
  });

  it('reports nothing running when the file is missing or its process has exited', () => {
    const dir = tmp();
    expect(() => findRunningApp(dir)).toThrow(expect.objectContaining({ code: 'E_NOT_RUNNING' }));
    writeRunFile(dir, info(dir, deadPid()));
    expect(() => findRunningApp(dir)).toThrow(/has exited/);
  });

  it('names a file that is not a status file', () => {
    const dir = tmp();
    writeFileSync(runFilePath(dir), '{ not json');
    expect(() => readRunFile(dir)).toThrow(expect.objectContaining({ code: 'E_STATUS_FILE' }));
    expect(() => readRunFile(dir)).toThrow(runFilePath(dir));
  });
});

describe('ensureWritableDir', () => {
  it('creates nested directories', () => {
    const dir = join(tmp(), 'a', 'b');
    expect(ensureWritableDir(dir)).toBe(dir);
    expect(existsSync(dir)).toBe(true);
  });

  it('names a directory under a regular file', () => {
    const base = tmp();
    writeFileSync(join(base, 'file.txt'), 'x');
    const dir = join(base, 'file.txt', 'data');
    expect(() => ensureWritableDir(dir)).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'data-dir' }),
    );
    expect(() => ensureWritableDir(dir)).toThrow(dir);
  });
});
