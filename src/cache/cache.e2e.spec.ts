/** A stampede across real processes: 1,000 concurrent misses of one key from 4 processes cause one load. */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, uniqueName } from '../../test/helpers.js';

const root = new URL('../../', import.meta.url).pathname;
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
});

describe.skipIf(!services.redis)('cache stampede across processes', () => {
  it('loads a hot key once for 1,000 concurrent misses spread over 4 processes', async () => {
    const prefix = `${uniqueName('stampede')}:`;
    const workers = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const child = spawn(
          process.execPath,
          [
            '--import',
            'tsx',
            join(root, 'test/fixtures/cache-stampede-worker.ts'),
            env.redisUrl,
            prefix,
            '250',
          ],
          { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] },
        );
        children.push(child);
        const lines = createInterface({ input: child.stdout! });
        const ready = new Promise<void>((resolve) => lines.once('line', () => resolve()));
        const done = new Promise<string>((resolve) =>
          lines.on('line', (l) => l.startsWith('done ') && resolve(l)),
        );
        await ready;
        return { child, done };
      }),
    );
    for (const w of workers) w.child.stdin!.write('go\n');
    const results = await Promise.all(workers.map((w) => w.done));
    const redis = new Redis(env.redisUrl);
    expect(await redis.get(`${prefix}loads`)).toBe('1');
    // Every one of the 1,000 callers got the single loaded value.
    const values = new Set(results.flatMap((line) => JSON.parse(line.split(' ')[1]!) as string[]));
    expect(values.size).toBe(1);
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  });
});
