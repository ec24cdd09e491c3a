import { existsSync, mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { type RunningSocialApp, startSocialApp } from './app.js';
import { type SimulationReport, simulate } from './simulator.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
const WAIT_MS = 30_000;
const SCREENSHOT = resolve('artifacts', 'dashboard.png');

const hasChromium = existsSync(CHROMIUM);
const required = process.env.STRATA_REQUIRE_SERVICES === '1';
if (!hasChromium && !required) {
  const line = `!!! strata: SKIPPING the dashboard browser tests: ${CHROMIUM} is missing; run scripts/browser.sh to install it`;
  console.warn(`\n${'!'.repeat(100)}\n${line}\n${'!'.repeat(100)}\n`);
}

/** What app.js exposes on `window.__strataDashboard` for tests. */
interface DashboardHook {
  points(): Record<string, number>;
  series(): Record<string, string[]>;
  status(): string;
  nodes(): string[];
  replicas(): Array<{ id: string; status: string; lag: string; seconds: string; share: string }>;
  eventStore(): { head: number | undefined; rows: Array<{ name: string; mode: string; position: string }> };
}

// The browser globals the page functions below use; the project compiles without the DOM lib.
declare const window: { __strataDashboard?: DashboardHook };
declare const document: { querySelector(selector: string): { offsetWidth: number } | null };

describe.runIf(!hasChromium && required)('dashboard in a real browser', () => {
  it('needs chromium', () => {
    expect.fail(`${CHROMIUM} is missing and STRATA_REQUIRE_SERVICES=1; run scripts/browser.sh`);
  });
});

describe.skipIf(!hasChromium)('dashboard in a real browser', () => {
  const dir = tempDir('strata-dashboard-e2e-');
  let app: RunningSocialApp;
  let browser: Browser;
  let page: Page;
  let traffic: Promise<SimulationReport>;
  const stopTraffic = new AbortController();
  const foreignRequests: string[] = [];
  const pageErrors: string[] = [];

  const wait = { timeout: WAIT_MS, polling: 100 } as const;

  beforeAll(async () => {
    app = await startSocialApp({ dataDir: dir.path, port: 0 });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const origin = new URL(app.url).origin;
    page.on('request', (request) => {
      const url = request.url();
      if (!url.startsWith(`${origin}/`) && !url.startsWith('data:')) foreignRequests.push(url);
    });
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (message) => {
      if (message.type() === 'error') pageErrors.push(message.text());
    });
    await page.goto(app.dashboardUrl);
    // The simulator seeds a small population through the API, then sends a modest open-loop load.
    traffic = simulate({
      baseUrl: app.url,
      rate: 40,
      duration: '10m',
      users: 30,
      signal: stopTraffic.signal,
    });
    traffic.catch(() => undefined);
  });

  afterAll(async () => {
    stopTraffic.abort();
    await traffic?.catch(() => undefined);
    await browser?.close();
    await app?.close();
    dir.remove();
  });

  it('shows the connection as live', async () => {
    await page.waitForFunction(() => window.__strataDashboard?.status() === 'live', null, wait);
    expect(await page.locator('#status').getAttribute('data-state')).toBe('live');
    expect(await page.locator('#status-text').textContent()).toBe('live');
    expect(await page.locator('#engines').textContent()).toContain('sqlite');
  });

  it('draws the topology with the app nodes and the arrows between them', async () => {
    const svg = page.locator('#topology svg');
    await svg.waitFor({ timeout: WAIT_MS });
    const labels = {
      api: 'HTTP API',
      router: 'shard router',
      db: 'social database',
      'shard-s0': 'shard s0',
      'shard-s1': 'shard s1',
      kv: 'cache',
      'write-behind': 'like counters',
      'capture-s0': 'change capture s0',
      'capture-s1': 'change capture s1',
      log: 'change log',
      'consumer-user-stats': 'user-stats',
      'consumer-feed-events': 'feed-events',
      events: 'event store',
      'projection-feed': 'feed projection',
      'projection-accounts': 'accounts projection',
    };
    for (const [id, label] of Object.entries(labels)) {
      const node = svg.locator(`g.node[data-id="${id}"]`);
      expect(await node.count(), id).toBe(1);
      expect(await node.locator('.node-label').textContent(), id).toBe(label);
    }
    expect(await svg.locator('g.node[data-id="db"]').getAttribute('data-kind')).toBe('store');
    expect(await svg.locator('g.node[data-id="shard-s0"]').getAttribute('data-kind')).toBe('shard');
    expect(await svg.locator('g.node[data-id="router"]').getAttribute('data-kind')).toBe('router');
    expect(await svg.locator('path.edge[data-from="api"][data-to="db"]').count()).toBe(1);
    expect(await svg.locator('path.edge[data-from="api"][data-to="router"]').count()).toBe(1);
    expect(await svg.locator('path.edge[data-from="router"][data-to="shard-s1"]').count()).toBe(1);
    expect(await svg.locator('path.edge[data-from="shard-s0"][data-to="capture-s0"]').count()).toBe(1);
    expect(await svg.locator('path.edge[data-from="api"][data-to="kv"]').count()).toBe(1);
    expect(await svg.locator('path.edge[data-from="log"][data-to="consumer-user-stats"]').count()).toBe(1);
    expect(await svg.locator('g.node[data-id="consumer-user-stats"]').getAttribute('data-kind')).toBe(
      'consumer',
    );
    expect(await svg.locator('.edge-label').allTextContents()).toEqual(
      expect.arrayContaining(['reads, writes', 'profiles, posts, feeds']),
    );
  });

  it('adds points to every chart as ticks arrive, with traffic on the route and latency charts', async () => {
    const panels = [
      'rps',
      'latency',
      'errors',
      'figure:Cache hit ratio',
      'figure:Consumer lag (changes)',
      'figure:Rows per shard',
    ];
    await page.waitForFunction(
      (ids) => ids.every((id) => (window.__strataDashboard?.points()[id] ?? 0) > 0),
      panels,
      wait,
    );
    const before = await page.evaluate(() => window.__strataDashboard!.points());
    await page.waitForFunction(
      ({ ids, start }) =>
        ids.every((id) => (window.__strataDashboard?.points()[id] ?? 0) >= (start[id] ?? 0) + 3),
      { ids: panels, start: before },
      wait,
    );

    await page.waitForFunction(
      () => (window.__strataDashboard?.series().rps ?? []).includes('GET /users/:id/feed'),
      null,
      wait,
    );
    for (const id of panels) {
      const panel = page.locator(`[data-panel="${id}"]`);
      expect(await panel.locator('.uplot canvas').first().isVisible(), id).toBe(true);
    }
    await page.locator('[data-panel="latency"] .empty-state').waitFor({ state: 'hidden', timeout: WAIT_MS });
    await page.locator('[data-panel="rps"] .empty-state').waitFor({ state: 'hidden', timeout: WAIT_MS });
    expect(await page.locator('[data-panel="latency"] .now').textContent()).toMatch(/p50 .* · p99 /);
    expect(await page.locator('[data-panel="errors"] h2').textContent()).toBe('Error rate');
    expect(await page.locator('[data-panel="figure:Cache hit ratio"] .help').textContent()).toContain(
      'cache reads',
    );
  });

  it('shows the read replicas: a table with lag, read share and fallbacks, and lag charts', async () => {
    const card = page.locator('#replicas');
    await card.waitFor({ state: 'visible', timeout: WAIT_MS });
    expect(await card.locator('h2').textContent()).toBe('Read replicas');
    const rows = card.locator('tbody tr');
    await page.waitForFunction(() => (window.__strataDashboard?.replicas() ?? []).length === 2, null, wait);
    expect(await rows.count()).toBe(2);
    expect(await rows.locator('th').allTextContents()).toEqual(['s0/r1', 's1/r1']);
    // The simulator sends no cookie: its reads are eventual, and the replicas serve some of them.
    await page.waitForFunction(
      () => (window.__strataDashboard?.replicas() ?? []).some((r) => r.share !== '0%' && r.share !== '–'),
      null,
      wait,
    );
    const first = rows.first().locator('td');
    expect(await first.nth(0).getAttribute('data-state')).toMatch(/^(ok|degraded|down)$/);
    expect(await first.nth(1).textContent()).toMatch(/^\d/);
    expect(await first.nth(2).textContent()).toMatch(/ s$/);
    expect(await first.nth(3).textContent()).toMatch(/%$/);
    expect(await first.nth(4).textContent()).toMatch(/^\d/);
    const svg = page.locator('#topology svg');
    expect(await svg.locator('g.node[data-id="replica-s0-r1"]').getAttribute('data-kind')).toBe('replica');
    expect(await svg.locator('path.edge[data-from="log"][data-to="replica-s1-r1"]').count()).toBe(1);
    const lagPanels = [
      'figure:Replica lag (changes)',
      'figure:Replica lag (seconds)',
      'figure:Reads served by replicas',
    ];
    await page.waitForFunction(
      (ids) => ids.every((id) => (window.__strataDashboard?.points()[id] ?? 0) > 0),
      lagPanels,
      wait,
    );
    for (const id of lagPanels) {
      expect(await page.evaluate((panel) => window.__strataDashboard!.series()[panel], id), id).toEqual([
        's0/r1',
        's1/r1',
      ]);
    }
  });

  it('shows the event store: its head, the projections with their lag, and lag charts', async () => {
    const card = page.locator('#events');
    await card.waitFor({ state: 'visible', timeout: WAIT_MS });
    expect(await card.locator('h2').textContent()).toBe('Event store');
    // The simulator's posts and follows become feed events: the head moves past zero.
    await page.waitForFunction(() => (window.__strataDashboard?.eventStore().head ?? 0) > 0, null, wait);
    expect(await page.locator('#events-now').textContent()).toMatch(/^head \d[\d.k]* · 2 projections$/);
    const rows = card.locator('tbody tr');
    expect(await rows.locator('th').allTextContents()).toEqual(['accounts', 'feed']);
    expect(await rows.nth(0).locator('td').nth(0).textContent()).toBe('inline');
    expect(await rows.nth(1).locator('td').nth(0).textContent()).toBe('async');
    expect(await rows.nth(1).locator('td').nth(1).getAttribute('data-state')).toMatch(/^(ok|degraded|down)$/);
    expect(await rows.nth(1).locator('td').nth(3).textContent()).toMatch(/^\d/);
    // Users registered through the API: the accounts projection has applied some events.
    await page.waitForFunction(
      () =>
        (window.__strataDashboard?.eventStore().rows ?? []).some(
          (r) => r.name === 'accounts' && r.position !== '0',
        ),
      null,
      wait,
    );
    const svg = page.locator('#topology svg');
    expect(await svg.locator('g.node[data-id="events"]').getAttribute('data-kind')).toBe('store');
    expect(await svg.locator('g.node[data-id="projection-feed"]').getAttribute('data-kind')).toBe('view');
    expect(await svg.locator('path.edge[data-from="events"][data-to="projection-feed"]').count()).toBe(1);
    expect(await svg.locator('path.edge[data-from="consumer-feed-events"][data-to="events"]').count()).toBe(
      1,
    );
    const panels = [
      'figure:Projection lag (events)',
      'figure:Projection lag (seconds)',
      'figure:Event store positions',
    ];
    await page.waitForFunction(
      (ids) => ids.every((id) => (window.__strataDashboard?.points()[id] ?? 0) > 0),
      panels,
      wait,
    );
    expect(
      await page.evaluate(() => window.__strataDashboard!.series()['figure:Projection lag (events)']),
    ).toEqual(['accounts', 'feed']);
    expect(
      await page.evaluate(() => window.__strataDashboard!.series()['figure:Event store positions']),
    ).toEqual(['head', 'accounts', 'feed']);
  });

  it('resizes the charts with the window', async () => {
    const wide = await page.evaluate(
      () => document.querySelector('[data-panel="rps"] .uplot')?.offsetWidth ?? 0,
    );
    expect(wide).toBeGreaterThan(900);
    await page.setViewportSize({ width: 900, height: 900 });
    await page.waitForFunction(
      (previous) => {
        const node = document.querySelector('[data-panel="rps"] .uplot');
        return node !== null && node.offsetWidth < previous - 200;
      },
      wide,
      wait,
    );
    await page.setViewportSize({ width: 1400, height: 900 });
    await page.waitForFunction(
      (previous) => {
        const node = document.querySelector('[data-panel="rps"] .uplot');
        return node !== null && node.offsetWidth >= previous - 2;
      },
      wide,
      wait,
    );
  });

  it('loads everything from the app itself and runs without script errors', async () => {
    mkdirSync(resolve('artifacts'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`dashboard screenshot: ${SCREENSHOT}`);
    expect(foreignRequests).toEqual([]);
    expect(pageErrors).toEqual([]);
  });

  it('shows the stream dropping and reconnects by itself when the server comes back', async () => {
    const port = Number(new URL(app.url).port);
    stopTraffic.abort();
    await traffic.catch(() => undefined);
    await app.close();
    await page.waitForFunction(() => window.__strataDashboard?.status() !== 'live', null, wait);
    expect(['reconnecting', 'disconnected', 'stalled']).toContain(
      await page.locator('#status').getAttribute('data-state'),
    );

    app = await startSocialApp({ dataDir: dir.path, port });
    await page.waitForFunction(() => window.__strataDashboard?.status() === 'live', null, wait);
    await page.waitForFunction(() => (window.__strataDashboard?.nodes() ?? []).includes('db'), null, wait);
  });
});
