import { describe, expect, it } from 'vitest';
import { FakeClock } from '../testing/fake-clock.js';
import { backoffDelay, Mutex, retry, retryPolicy, withTimeout } from './async.js';
import { sleep } from './clock.js';
import { isStrataError } from './errors.js';

describe('withTimeout', () => {
  it('rejects with E_TIMEOUT naming the operation when the bound passes first', async () => {
    const clock = new FakeClock();
    let cleaned = false;
    const pending = withTimeout(new Promise(() => {}), 500, 'redis GET', {
      clock,
      onTimeout: () => {
        cleaned = true;
      },
    }).catch((e: unknown) => e);
    await clock.advance(499);
    expect(cleaned).toBe(false);
    await clock.advance(1);
    const err = await pending;
    expect(isStrataError(err, 'E_TIMEOUT')).toBe(true);
    expect(err).toMatchObject({ operation: 'redis GET', timeoutMs: 500 });
    expect(cleaned).toBe(true);
  });

  it('passes results and errors through and clears its timer', async () => {
    const clock = new FakeClock();
    await expect(withTimeout(Promise.resolve(7), 100, 'x', { clock })).resolves.toBe(7);
    await expect(withTimeout(Promise.reject(new Error('no')), 100, 'x', { clock })).rejects.toThrow('no');
    expect(clock.pendingTimers).toBe(0);
  });
});

describe('retry', () => {
  it('validates its policy once, naming the option', () => {
    expect(() => retryPolicy({ attempts: 0 })).toThrow(expect.objectContaining({ option: 'retry.attempts' }));
    expect(() => retryPolicy({ initialDelay: '-1s' })).toThrow(
      expect.objectContaining({ option: 'retry.initialDelay' }),
    );
  });

  it('backs off exponentially up to the cap', () => {
    const policy = retryPolicy({ initialDelay: 10, maxDelay: 50, factor: 2, jitter: false });
    expect([1, 2, 3, 4].map((n) => backoffDelay(policy, n))).toEqual([10, 20, 40, 50]);
    const jittered = retryPolicy({ initialDelay: 100 });
    expect(backoffDelay(jittered, 1, () => 0.5)).toBe(50);
  });

  it('retries only what shouldRetry accepts, up to the attempts', async () => {
    const clock = new FakeClock();
    const policy = retryPolicy({ attempts: 4, initialDelay: 10, jitter: false });
    let calls = 0;
    const done = retry(
      async () => {
        calls++;
        if (calls < 3) throw new Error('transient');
        return 'ok';
      },
      policy,
      () => true,
      { clock },
    );
    await clock.advance(100);
    await expect(done).resolves.toBe('ok');
    expect(calls).toBe(3);

    let fatalCalls = 0;
    await expect(
      retry(
        async () => {
          fatalCalls++;
          throw new Error('fatal');
        },
        policy,
        () => false,
        { clock },
      ),
    ).rejects.toThrow('fatal');
    expect(fatalCalls).toBe(1);
  });
});

describe('Mutex', () => {
  it('runs callbacks one at a time in call order, even when one fails', async () => {
    const mutex = new Mutex();
    const log: string[] = [];
    const task = (name: string, fail = false) =>
      mutex.run(async () => {
        log.push(`${name} start`);
        await sleep(1);
        log.push(`${name} end`);
        if (fail) throw new Error(name);
      });
    const results = await Promise.allSettled([task('a'), task('b', true), task('c')]);
    expect(log).toEqual(['a start', 'a end', 'b start', 'b end', 'c start', 'c end']);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(mutex.locked).toBe(false);
  });
});

describe('sleep', () => {
  it('rejects when its signal aborts', async () => {
    const controller = new AbortController();
    const pending = sleep(10_000, { signal: controller.signal });
    controller.abort(new Error('stop'));
    await expect(pending).rejects.toThrow('stop');
  });
});
