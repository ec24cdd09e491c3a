import { describe, expect, it } from 'vitest';
import type { SimulationReport } from '../../examples/social/simulator.js';
import { formatSimulationReport } from './simulate.js';

const report: SimulationReport = {
  url: 'http://127.0.0.1:3000',
  seed: 1,
  rate: 50,
  durationMs: 30_000,
  elapsedMs: 30_012,
  aborted: false,
  population: { users: 200, posts: 200, follows: 1600, reused: false },
  sent: 1500,
  ok: 1497,
  failed: 3,
  skipped: 2,
  cancelled: 0,
  reads: 1350,
  writes: 150,
  byStatus: { '201': 45, '200': 1452, '500': 1 },
  errors: { timeout: 2, network: 0 },
  byRoute: {
    'GET /users/:id/feed': { sent: 600, ok: 599, failed: 1, p50Ms: 1.2, p99Ms: 8.1 },
    'POST /users/:id/posts': { sent: 30, ok: 30, failed: 0, p50Ms: 3, p99Ms: 12.5 },
  },
  p50Ms: 1.4,
  p99Ms: 9.3,
  maxMs: 40,
  achievedRps: 49.98,
};

describe('formatSimulationReport', () => {
  it('prints totals, statuses in order and a per-route table', () => {
    const text = formatSimulationReport(report);
    expect(text).toContain('Simulation done: 30.0s against http://127.0.0.1:3000 at 50.0 req/s');
    expect(text).toContain('created 200 users, 1600 follows, 200 posts');
    expect(text).toContain('sent 1500  ok 1497  failed 3  skipped 2  achieved 50.0 req/s');
    expect(text).toContain('reads 1350 (90.0%)  writes 150');
    expect(text).toContain('status 200: 1452, 201: 45, 500: 1  timeouts 2  connection errors 0');
    expect(text).toMatch(/GET \/users\/:id\/feed\s+600\s+599\s+1\s+1\.2ms\s+8\.1ms\n/);
    expect(text).not.toContain('cancelled');
  });

  it('says when the run was stopped early and the population reused', () => {
    const text = formatSimulationReport({
      ...report,
      aborted: true,
      cancelled: 4,
      population: { ...report.population, reused: true },
      byRoute: {},
    });
    expect(text).toContain('Simulation stopped early');
    expect(text).toContain('reused 200 users, 200 posts');
    expect(text).toContain('cancelled 4');
    expect(text).not.toContain('route');
  });
});
