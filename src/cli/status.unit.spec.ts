import { describe, expect, it } from 'vitest';
import { formatStatus } from './status.js';

describe('formatStatus', () => {
  const status = {
    app: 'social',
    uptimeSeconds: 303,
    engines: { database: 'sqlite', cache: 'memory' },
    topology: {
      nodes: [
        { id: 'api', label: 'HTTP API', engine: 'fastify' },
        { id: 'db', label: 'social database', engine: 'sqlite', detail: '/data/social.db' },
        { id: 'r1', label: 'replica 1', engine: 'postgres', status: 'down' },
      ],
    },
    latest: {
      rps: { 'GET /a': 30, 'POST /b': 12.5 },
      p50: 1.23,
      p99: 14.2,
      errorRate: 0.01,
      clientErrorRate: 0.025,
    },
    counts: { users: 200, posts: 410 },
  };
  const info = {
    pid: 4242,
    url: 'http://127.0.0.1:3000',
    dashboardUrl: 'http://127.0.0.1:3000/dashboard',
    metricsUrl: 'http://127.0.0.1:3000/metrics',
    startedAt: new Date(0).toISOString(),
    engines: { database: 'sqlite', cache: 'memory' },
    dataDir: '/data',
    version: '0.1.0',
  };

  it('shows where it runs and the key figures', () => {
    const text = formatStatus('http://127.0.0.1:3000', status, info);
    expect(text).toMatch(/^strata: social app running\n/);
    expect(text).toMatch(/pid\s+4242\n/);
    expect(text).toMatch(/uptime\s+5m 3s\n/);
    expect(text).toMatch(/dashboard\s+http:\/\/127\.0\.0\.1:3000\/dashboard\n/);
    expect(text).toContain('database sqlite, cache memory');
    expect(text).toContain('42.5 req/s');
    expect(text).toContain('p50 1.2ms  p99 14ms');
    expect(text).toContain('1.0% server (5xx), 2.5% client (4xx)');
    expect(text).toContain('users 200, posts 410');
    expect(text).toContain('topology (3 nodes)');
    expect(text).toMatch(/replica 1\s+postgres {2}\[down\]/);
    expect(text).toContain('/data/strata.json');
  });

  it('works from a URL alone, before the first tick', () => {
    const text = formatStatus('http://127.0.0.1:9', { app: 'social', latest: null });
    expect(text).toContain('API        http://127.0.0.1:9\n');
    expect(text).toContain('0.0 req/s');
    expect(text).toContain('p50 -  p99 -');
    expect(text).not.toContain('pid');
  });
});
