import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { type RunningSocialApp, startSocialApp } from './app.js';
import { type SimulationReport, simulate } from './simulator.js';

const SEED = 7;
const USERS = 30;

/** Sum of `strata_http_requests_total` samples in a Prometheus text body, by `method route`. */
function requestCounters(metrics: string): Map<string, number> {
  const totals = new Map<string, number>();
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('strata_http_requests_total{')) continue;
    const labels = Object.fromEntries(
      [...line.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!] as const),
    );
    const key = `${labels.method} ${labels.route}`;
    totals.set(key, (totals.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return totals;
}

describe('simulate against the social app on SQLite', () => {
  const dir = tempDir('strata-sim-');
  let app: RunningSocialApp;
  let report: SimulationReport;
  const progress: number[] = [];

  beforeAll(async () => {
    app = await startSocialApp({ port: 0, dataDir: dir.path });
    report = await simulate({
      baseUrl: app.url,
      rate: 100,
      duration: '2s',
      users: USERS,
      seed: SEED,
      onProgress: (p) => progress.push(p.sent),
    });
  });
  afterAll(async () => {
    await app?.close();
    dir.remove();
  });

  it('stops by itself after the duration with most requests ok and no server error', () => {
    expect(report.aborted).toBe(false);
    expect(report.elapsedMs).toBeGreaterThanOrEqual(2_000);
    expect(report.sent).toBeGreaterThan(100);
    expect(report.ok / report.sent).toBeGreaterThan(0.99);
    expect(report.ok + report.failed + report.cancelled).toBe(report.sent);
    expect(Object.keys(report.byStatus).filter((status) => Number(status) >= 500)).toEqual([]);
    expect(report.errors).toEqual({ timeout: 0, network: 0 });
    // Every request targets the simulated population, so none should be refused as missing or bad.
    expect(report.byStatus['404'] ?? 0).toBe(0);
    expect(report.byStatus['400'] ?? 0).toBe(0);
    expect(report.p50Ms).not.toBeNull();
    expect(report.p99Ms!).toBeGreaterThanOrEqual(report.p50Ms!);
  });

  it('sends far more reads than writes, over many routes', () => {
    expect(report.reads).toBeGreaterThan(report.writes * 3);
    expect(report.reads + report.writes).toBe(report.sent);
    const reads = Object.entries(report.byRoute)
      .filter(([route]) => route.startsWith('GET '))
      .reduce((sum, [, r]) => sum + r.sent, 0);
    expect(reads).toBe(report.reads);
    const routes = Object.keys(report.byRoute);
    expect(routes).toContain('GET /users/:id/feed');
    expect(routes.length).toBeGreaterThanOrEqual(5);
    const feed = report.byRoute['GET /users/:id/feed']!;
    expect(feed.sent).toBe(Math.max(...Object.values(report.byRoute).map((r) => r.sent)));
  });

  it('seeded the population through the API and reported progress', async () => {
    expect(report.population).toMatchObject({ users: USERS, reused: false });
    expect(report.population.posts).toBeGreaterThan(0);
    expect(report.population.follows).toBeGreaterThan(0);
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress.at(-1)).toBe(report.sent);
    const status = (await (await fetch(`${app.url}/api/status`)).json()) as {
      counts: Record<string, number>;
    };
    expect(status.counts.users).toBe(USERS);
    expect(status.counts.follows).toBeGreaterThanOrEqual(report.population.follows);
    expect(status.counts.posts).toBeGreaterThanOrEqual(report.population.posts);
  });

  it("shows up in the app's own request figures", async () => {
    const expected = new Map(Object.entries(report.byRoute).map(([route, r]) => [route, r.ok + r.failed]));
    // The app counts a request when its response has been written, which can be just after the
    // client read it: poll (bounded) until the counters have caught up.
    let counted = new Map<string, number>();
    for (let attempt = 0; attempt < 50; attempt++) {
      counted = requestCounters(await (await fetch(app.metricsUrl)).text());
      if ([...expected].every(([route, n]) => (counted.get(route) ?? 0) >= n)) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    for (const [route, n] of expected) expect(counted.get(route) ?? 0, route).toBeGreaterThanOrEqual(n);
    const history = app.telemetry.history();
    expect(history.some((tick) => (tick.rps['GET /users/:id/feed'] ?? 0) > 0)).toBe(true);
  });

  it('reuses its population on the next run with the same seed, and stops on abort', async () => {
    const controller = new AbortController();
    const second = await simulate({
      baseUrl: app.url,
      rate: 200,
      duration: '1m',
      users: USERS,
      seed: SEED,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.sent > 0) controller.abort();
      },
    });
    expect(second.aborted).toBe(true);
    expect(second.elapsedMs).toBeLessThan(60_000);
    expect(second.population.reused).toBe(true);
    expect(second.sent).toBeGreaterThan(0);
    expect(second.ok + second.failed + second.cancelled).toBe(second.sent);
  });
});

describe('simulate against nothing', () => {
  it('fails with E_CONNECTION when no API answers', async () => {
    // Bind a port and close it again so that nothing listens there.
    const { createServer } = await import('node:net');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await expect(simulate({ baseUrl: `http://127.0.0.1:${port}`, duration: '1s' })).rejects.toMatchObject({
      code: 'E_CONNECTION',
      port,
    });
  });
});
