import { describe, expect, it } from 'vitest';
import { type BalanceCandidate, createBalancer } from './balance.js';

function candidate(index: number, extra: Partial<BalanceCandidate> = {}): BalanceCandidate {
  return { index, weight: 1, lag: 0, lagMs: 0, ...extra };
}

function picks(
  policy: Parameters<typeof createBalancer>[0],
  candidates: BalanceCandidate[],
  n: number,
  size = candidates.length,
) {
  const balancer = createBalancer(policy, size);
  return Array.from({ length: n }, () => balancer.pick(candidates)?.index);
}

describe('balance policies', () => {
  it('round-robin takes each candidate in turn and skips the ones missing from a call', () => {
    const all = [candidate(0), candidate(1), candidate(2)];
    expect(picks('round-robin', all, 7)).toEqual([0, 1, 2, 0, 1, 2, 0]);
    const balancer = createBalancer('round-robin', 3);
    expect(balancer.pick(all)?.index).toBe(0);
    expect(balancer.pick([all[0]!, all[2]!])?.index).toBe(2);
    expect(balancer.pick(all)?.index).toBe(0);
    expect(balancer.pick([])).toBeUndefined();
  });

  it('least-lag prefers the smallest lag in units, then in time, unmeasured last, in turn among equals', () => {
    expect(
      picks(
        'least-lag',
        [candidate(0, { lag: 500 }), candidate(1, { lag: 20 }), candidate(2, { lag: 90 })],
        3,
      ),
    ).toEqual([1, 1, 1]);
    expect(
      picks('least-lag', [candidate(0, { lag: 0, lagMs: 40 }), candidate(1, { lag: 0, lagMs: 10 })], 2),
    ).toEqual([1, 1]);
    expect(picks('least-lag', [candidate(0, { lag: 0 }), candidate(1, { lag: 0 })], 4)).toEqual([0, 1, 0, 1]);
    expect(
      picks(
        'least-lag',
        [candidate(0, { lag: undefined, lagMs: undefined }), candidate(1, { lag: 10_000 })],
        2,
      ),
    ).toEqual([1, 1]);
  });

  it('weighted spreads picks by weight, smoothly, without bursts', () => {
    const sequence = picks(
      'weighted',
      [candidate(0, { weight: 5 }), candidate(1, { weight: 1 }), candidate(2, { weight: 1 })],
      7,
    );
    expect(sequence).toEqual([0, 0, 1, 0, 2, 0, 0]);
    const many = picks('weighted', [candidate(0, { weight: 3 }), candidate(1, { weight: 1 })], 4_000);
    expect(many.filter((i) => i === 0)).toHaveLength(3_000);
    expect(many.filter((i) => i === 1)).toHaveLength(1_000);
    // Fractional weights work the same.
    const halves = picks('weighted', [candidate(0, { weight: 0.5 }), candidate(1, { weight: 1.5 })], 400);
    expect(halves.filter((i) => i === 1)).toHaveLength(300);
  });

  it('weighted keeps following weights when a candidate drops out for a while', () => {
    const balancer = createBalancer('weighted', 2);
    const a = candidate(0, { weight: 1 });
    const b = candidate(1, { weight: 1 });
    for (let i = 0; i < 10; i++) expect(balancer.pick([b])?.index).toBe(1);
    const counts = [0, 0];
    for (let i = 0; i < 100; i++) counts[balancer.pick([a, b])!.index]!++;
    expect(counts).toEqual([50, 50]);
  });
});
