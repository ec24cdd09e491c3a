import { isStrataError } from 'strata';
import { describe, expect, it } from 'vitest';
import {
  createMixPicker,
  createZipfSampler,
  DEFAULT_MIX,
  isLoopbackUrl,
  loopbackUrl,
  type OperationName,
  READ_OPERATIONS,
  seededRandom,
  simulate,
} from './simulator.js';

const SAMPLES = 100_000;

function expectConfigError(fn: () => unknown, option: string): void {
  try {
    fn();
  } catch (err) {
    expect(isStrataError(err, 'E_CONFIG')).toBe(true);
    expect((err as { option?: string }).option).toBe(option);
    return;
  }
  throw new Error(`expected E_CONFIG naming ${option}`);
}

async function expectRejectsConfig(promise: Promise<unknown>, option: string): Promise<void> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isStrataError(err, 'E_CONFIG'), `expected E_CONFIG naming ${option}`).toBe(true);
  expect((err as { option?: string }).option).toBe(option);
}

describe('seededRandom', () => {
  it('repeats its sequence for the same seed and differs for another seed', () => {
    const a = seededRandom(42);
    const b = seededRandom(42);
    const c = seededRandom(43);
    const first = Array.from({ length: 5 }, a);
    expect(Array.from({ length: 5 }, b)).toEqual(first);
    expect(Array.from({ length: 5 }, c)).not.toEqual(first);
    for (const x of Array.from({ length: 1_000 }, a)) {
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(1);
    }
  });

  it('is roughly uniform', () => {
    const random = seededRandom(7);
    const bins = new Array<number>(10).fill(0);
    for (let i = 0; i < SAMPLES; i++) bins[Math.floor(random() * 10)]!++;
    for (const count of bins) expect(Math.abs(count - SAMPLES / 10)).toBeLessThan(SAMPLES / 100);
  });
});

describe('createZipfSampler', () => {
  const n = 200;
  const s = 1.1;
  const zipf = createZipfSampler(n, s, seededRandom(1));
  const counts = new Array<number>(n + 1).fill(0);
  for (let i = 0; i < SAMPLES; i++) counts[zipf.sample()]!++;

  it('draws only ranks 1..n, rank 1 most often', () => {
    expect(counts[0]).toBe(0);
    expect(counts.reduce((sum, c) => sum + c, 0)).toBe(SAMPLES);
    const max = Math.max(...counts);
    expect(counts[1]).toBe(max);
    expect(counts[1]!).toBeGreaterThan(counts[2]!);
    expect(counts[2]!).toBeGreaterThan(counts[4]!);
    expect(counts[4]!).toBeGreaterThan(counts[16]!);
  });

  it('follows the power law: each top rank within 5% of its expected share', () => {
    for (let rank = 1; rank <= 10; rank++) {
      const expected = zipf.probability(rank) * SAMPLES;
      expect(Math.abs(counts[rank]! - expected) / expected, `rank ${rank}`).toBeLessThan(0.05);
    }
    const sum = Array.from({ length: n }, (_, i) => zipf.probability(i + 1)).reduce((a, b) => a + b, 0);
    expect(sum).toBeCloseTo(1, 9);
  });

  it('has a log-log slope of -s over the top ranks', () => {
    const ranks = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    const xs = ranks.map(Math.log);
    const ys = ranks.map((r) => Math.log(counts[r]!));
    const mx = xs.reduce((a, b) => a + b) / xs.length;
    const my = ys.reduce((a, b) => a + b) / ys.length;
    const slope =
      xs.reduce((acc, x, i) => acc + (x - mx) * (ys[i]! - my), 0) /
      xs.reduce((acc, x) => acc + (x - mx) ** 2, 0);
    expect(slope).toBeGreaterThan(-s - 0.1);
    expect(slope).toBeLessThan(-s + 0.1);
  });

  it('with s = 0 is uniform', () => {
    const uniform = createZipfSampler(4, 0, seededRandom(3));
    const c = [0, 0, 0, 0, 0];
    for (let i = 0; i < 40_000; i++) c[uniform.sample()]!++;
    for (let rank = 1; rank <= 4; rank++) expect(Math.abs(c[rank]! - 10_000)).toBeLessThan(500);
  });

  it('rejects a bad size or exponent', () => {
    expectConfigError(() => createZipfSampler(0, 1.1, Math.random), 'zipf.n');
    expectConfigError(() => createZipfSampler(10, Number.NaN, Math.random), 'zipfExponent');
    expectConfigError(() => createZipfSampler(10, -1, Math.random), 'zipfExponent');
  });
});

describe('the operation mix', () => {
  it('reads far outnumber writes in the default mix (90/10)', () => {
    const total = Object.values(DEFAULT_MIX).reduce((a, b) => a + b, 0);
    const reads = Object.entries(DEFAULT_MIX)
      .filter(([name]) => READ_OPERATIONS.has(name as OperationName))
      .reduce((sum, [, w]) => sum + w, 0);
    expect(total).toBe(100);
    expect(reads / total).toBe(0.9);
  });

  it('picks each operation in proportion to its weight', () => {
    const pick = createMixPicker(DEFAULT_MIX, seededRandom(11));
    const counts = new Map<OperationName, number>();
    for (let i = 0; i < SAMPLES; i++) {
      const op = pick();
      counts.set(op, (counts.get(op) ?? 0) + 1);
    }
    for (const [name, weight] of Object.entries(DEFAULT_MIX) as Array<[OperationName, number]>) {
      const share = (counts.get(name) ?? 0) / SAMPLES;
      expect(Math.abs(share - weight / 100), name).toBeLessThan(0.005);
    }
  });

  it('never picks an operation of weight 0, and rejects bad weights', () => {
    const pick = createMixPicker({ feed: 1, getUser: 0 }, seededRandom(2));
    for (let i = 0; i < 1_000; i++) expect(pick()).toBe('feed');
    expectConfigError(() => createMixPicker({ feed: -1, getUser: 2 }, Math.random), 'mix');
    expectConfigError(() => createMixPicker({}, Math.random), 'mix');
    expectConfigError(() => createMixPicker({ nope: 1 } as never, Math.random), 'mix');
  });
});

describe('loopback only', () => {
  it.each([
    'http://127.0.0.1:3000',
    'http://127.1.2.3',
    'http://localhost:1',
    'http://[::1]:3000',
    'https://api.localhost',
  ])('accepts %s', (url) => {
    expect(isLoopbackUrl(url)).toBe(true);
    expect(loopbackUrl(url).href).toBe(new URL(url).href);
  });

  it.each([
    'http://10.0.0.1:1',
    'http://example.com',
    'http://128.0.0.1',
    'http://[::2]',
    'http://0.0.0.0:3000',
  ])('rejects %s with E_CONFIG naming url', (url) => {
    expect(isLoopbackUrl(url)).toBe(false);
    expectConfigError(() => loopbackUrl(url), 'url');
  });

  it('rejects what is not an http URL', () => {
    expectConfigError(() => loopbackUrl('not a url'), 'url');
    expectConfigError(() => loopbackUrl('ftp://127.0.0.1'), 'url');
  });

  it('simulate refuses a remote URL before sending anything', async () => {
    await expectRejectsConfig(simulate({ baseUrl: 'http://10.0.0.1:1' }), 'url');
    await expectRejectsConfig(simulate({ baseUrl: 'http://example.com' }), 'url');
  });
});

describe('simulate option checks', () => {
  // Port 1 on loopback: nothing listens there, and validation must fail before any request.
  const baseUrl = 'http://127.0.0.1:1';

  it.each([0, -5, Number.NaN, Number.POSITIVE_INFINITY, 1e9])('rejects rate %s', async (rate) => {
    await expectRejectsConfig(simulate({ baseUrl, rate }), 'rate');
  });

  it.each(['10 parsecs', '0s', 0, '-1s', ''])('rejects duration %j', async (duration) => {
    await expectRejectsConfig(simulate({ baseUrl, duration }), 'duration');
  });

  it('rejects bad users, seed, concurrency, timeout and bursts', async () => {
    await expectRejectsConfig(simulate({ baseUrl, users: 1 }), 'users');
    await expectRejectsConfig(simulate({ baseUrl, users: 2.5 }), 'users');
    await expectRejectsConfig(simulate({ baseUrl, seed: -1 }), 'seed');
    await expectRejectsConfig(simulate({ baseUrl, seed: 2 ** 32 }), 'seed');
    await expectRejectsConfig(simulate({ baseUrl, concurrency: 0 }), 'concurrency');
    await expectRejectsConfig(simulate({ baseUrl, timeout: 'soon' }), 'timeout');
    await expectRejectsConfig(simulate({ baseUrl, burst: { factor: 0.5 } }), 'burst.factor');
    await expectRejectsConfig(simulate({ baseUrl, burst: { every: '1s', length: '2s' } }), 'burst.length');
    await expectRejectsConfig(simulate({ baseUrl, mix: { feed: -1 } }), 'mix');
  });
});
