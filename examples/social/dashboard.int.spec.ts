import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setImmediate as nextTurn } from 'node:timers/promises';
import Fastify, { type FastifyInstance } from 'fastify';
import { withTimeout } from 'strata';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { createSocialApp, type SocialApp } from './app.js';
import { registerDashboard } from './dashboard.js';
import { Telemetry } from './telemetry.js';

const WAIT_MS = 10_000;

interface SseEvent {
  event: string;
  data: string;
}

/** A Server-Sent Events client over fetch that collects events and comments as they arrive. */
async function openStream(url: string) {
  const controller = new AbortController();
  const res = await fetch(url, { signal: controller.signal, headers: { accept: 'text/event-stream' } });
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const events: SseEvent[] = [];
  const comments: string[] = [];
  let buffer = '';
  let ended = false;

  const parse = (block: string) => {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line.slice(1).trim());
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (data.length > 0) events.push({ event, data: data.join('\n') });
  };

  /** Reads until `find` returns something, the stream ends (rejects) or WAIT_MS passes. */
  const until = <T>(find: () => T | undefined, what: string): Promise<T> =>
    withTimeout(
      (async () => {
        for (;;) {
          const found = find();
          if (found !== undefined) return found;
          if (ended) throw new Error(`the stream ended before ${what}`);
          const chunk = await reader.read().catch(() => ({ done: true as const, value: undefined }));
          if (chunk.done) {
            ended = true;
            continue;
          }
          buffer += chunk.value;
          for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
            parse(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      })(),
      WAIT_MS,
      `waiting for ${what}`,
    );

  const eventNamed = <T>(name: string, match: (data: T) => boolean = () => true) =>
    until(() => {
      for (const e of events) {
        if (e.event !== name) continue;
        const data = JSON.parse(e.data) as T;
        if (match(data)) return data;
      }
      return undefined;
    }, `a "${name}" event`);

  return {
    res,
    events,
    comments,
    until,
    eventNamed,
    /** Resolves once the server has closed the stream. */
    ended: () => until(() => (ended ? true : undefined), 'the end of the stream'),
    abort: () => controller.abort(),
  };
}

/** Counts the live subscriptions of a real Telemetry by wrapping its `subscribe`. */
function countSubscriptions(telemetry: Telemetry): { active: () => number } {
  let active = 0;
  const subscribe = telemetry.subscribe.bind(telemetry);
  telemetry.subscribe = (listener) => {
    const unsubscribe = subscribe(listener);
    active++;
    let done = false;
    return () => {
      if (!done) {
        done = true;
        active--;
      }
      return unsubscribe();
    };
  };
  return { active: () => active };
}

/** Polls `check` until it holds, at most WAIT_MS. */
async function eventually(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A GET over a raw socket, so the path reaches the server exactly as written (no URL normalising). */
function rawGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function portOf(server: FastifyInstance): number {
  return (server.server.address() as AddressInfo).port;
}

describe('dashboard of the social app', () => {
  const dir = tempDir('strata-dashboard-');
  let app: SocialApp;
  let base: string;
  let subscriptions: { active: () => number };

  beforeAll(async () => {
    app = await createSocialApp({ dataDir: dir.path });
    subscriptions = countSubscriptions(app.telemetry);
    await app.server.listen({ host: '127.0.0.1', port: 0 });
    base = `http://127.0.0.1:${portOf(app.server)}`;
  });
  afterAll(async () => {
    await app?.close();
    dir.remove();
  });

  it('serves the page at /dashboard and /dashboard/, referencing its assets by absolute URLs', async () => {
    for (const url of ['/dashboard', '/dashboard/']) {
      const res = await app.server.inject({ method: 'GET', url });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(res.headers['cache-control']).toBe('no-cache');
      expect(res.headers['content-security-policy']).toContain("default-src 'self'");
      for (const asset of [
        '/dashboard/assets/app.js',
        '/dashboard/assets/style.css',
        '/dashboard/vendor/uPlot.iife.min.js',
        '/dashboard/vendor/uPlot.min.css',
      ]) {
        expect(res.body).toContain(`"${asset}"`);
      }
      expect(res.body).not.toMatch(/(src|href)="(https?:)?\/\//);
    }
  });

  it('serves the assets and the vendored uPlot with their content types and validators', async () => {
    const cases = [
      ['/dashboard/assets/app.js', 'text/javascript; charset=utf-8', 'EventSource'],
      ['/dashboard/assets/style.css', 'text/css; charset=utf-8', '.topology'],
      ['/dashboard/vendor/uPlot.iife.min.js', 'text/javascript; charset=utf-8', 'uPlot'],
      ['/dashboard/vendor/uPlot.min.css', 'text/css; charset=utf-8', '.uplot'],
    ] as const;
    for (const [url, type, marker] of cases) {
      const res = await app.server.inject({ method: 'GET', url });
      expect(res.statusCode, url).toBe(200);
      expect(res.headers['content-type'], url).toBe(type);
      expect(res.headers['x-content-type-options'], url).toBe('nosniff');
      expect(res.body, url).toContain(marker);
      const etag = res.headers.etag as string;
      expect(etag, url).toMatch(/^"[\w-]+"$/);
      const again = await app.server.inject({ method: 'GET', url, headers: { 'if-none-match': etag } });
      expect(again.statusCode, url).toBe(304);
      expect(again.body, url).toBe('');
    }
  });

  it('answers 404 for any path outside the fixed list of files, traversal attempts included', async () => {
    const port = portOf(app.server);
    const paths = [
      '/dashboard/assets/../../package.json',
      '/dashboard/assets/%2e%2e/%2e%2e/package.json',
      '/dashboard/assets/..%2f..%2fpackage.json',
      '/dashboard/assets/%2E%2E%2F%2E%2E%2Fpackage.json',
      '/dashboard/vendor/../../../package.json',
      '/dashboard/vendor/uPlot.cjs.js',
      '/dashboard/vendor/..%2fpackage.json',
      '/dashboard/assets/index.html',
      '/dashboard/assets/',
      '/dashboard/assets/app.js/..',
      '/dashboard/index.html',
      '/dashboard/dashboard.ts',
    ];
    for (const path of paths) {
      const injected = await app.server.inject({ method: 'GET', url: path });
      expect(injected.statusCode, path).toBe(404);
      const wire = await rawGet(port, path);
      expect(wire.status, path).toBe(404);
      expect(wire.body, path).not.toContain('"devDependencies"');
      expect(wire.body, path).not.toContain('import ');
    }
  });

  it('streams a hello with the topology, then ticks, topology and figure changes as they happen', async () => {
    const stream = await openStream(`${base}/dashboard/events`);
    try {
      expect(stream.res.status).toBe(200);
      expect(stream.res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
      expect(stream.res.headers.get('cache-control')).toContain('no-cache');

      const hello = await stream.eventNamed<{
        startedAt: number;
        now: number;
        topology: { nodes: Array<{ id: string; kind: string }>; edges: unknown[] };
        figures: Array<{ id: string; panel: string }>;
        history: unknown[];
      }>('hello');
      expect(hello.topology.nodes.map((n) => n.id)).toEqual(expect.arrayContaining(['api', 'db', 'kv']));
      expect(hello.topology.edges.length).toBeGreaterThan(0);
      expect(hello.figures.map((f) => f.id)).toContain('cache_hit_ratio');
      expect(Array.isArray(hello.history)).toBe(true);
      expect(hello.startedAt).toBeLessThanOrEqual(hello.now);

      await app.server.inject({ method: 'GET', url: '/health' });
      const sent = app.telemetry.tick(Date.now() + 10_000_000);
      const tick = await stream.eventNamed<{ t: number; rps: Record<string, number> }>(
        'tick',
        (t) => t.t === sent.t,
      );
      expect(tick.rps).toEqual(sent.rps);

      app.telemetry.addToTopology({ id: 'test-log', kind: 'log', label: 'change log', engine: 'sqlite' }, [
        { from: 'db', to: 'test-log', label: 'changes' },
      ]);
      const topology = await stream.eventNamed<{ nodes: Array<{ id: string }> }>('topology', (t) =>
        t.nodes.some((n) => n.id === 'test-log'),
      );
      expect(topology.nodes.map((n) => n.id)).toEqual(
        expect.arrayContaining(['api', 'db', 'kv', 'test-log']),
      );

      app.telemetry.addFigure({
        id: 'test_lag',
        panel: 'Consumer lag',
        unit: 'count',
        help: 'x',
        read: () => ({ a: 1 }),
      });
      const figures = await stream.eventNamed<Array<{ id: string }>>('figures', (f) =>
        f.some((x) => x.id === 'test_lag'),
      );
      expect(figures.map((f) => f.id)).toEqual(expect.arrayContaining(['cache_hit_ratio', 'test_lag']));
    } finally {
      stream.abort();
      app.telemetry.removeFigure('test_lag');
    }
  });

  it('unsubscribes from the telemetry when clients go away', async () => {
    await eventually(() => subscriptions.active() === 0, 'earlier streams to be released');
    const streams = await Promise.all([1, 2, 3].map(() => openStream(`${base}/dashboard/events`)));
    await Promise.all(streams.map((s) => s.eventNamed('hello')));
    expect(subscriptions.active()).toBe(3);

    streams[0]!.abort();
    await eventually(() => subscriptions.active() === 2, 'one stream to be released');
    for (const s of streams.slice(1)) s.abort();
    await eventually(() => subscriptions.active() === 0, 'every stream to be released');

    // The telemetry keeps working for a newcomer after the others left.
    const late = await openStream(`${base}/dashboard/events`);
    try {
      const sent = app.telemetry.tick(Date.now() + 20_000_000);
      await late.eventNamed<{ t: number }>('tick', (t) => t.t === sent.t);
    } finally {
      late.abort();
    }
    await eventually(() => subscriptions.active() === 0, 'the late stream to be released');
  });
});

describe('dashboard event stream', () => {
  const servers: FastifyInstance[] = [];

  async function serve(telemetry: Telemetry, options: Parameters<typeof registerDashboard>[2] = {}) {
    const server = Fastify();
    servers.push(server);
    registerDashboard(server, telemetry, options);
    await server.listen({ host: '127.0.0.1', port: 0 });
    return { server, port: portOf(server), base: `http://127.0.0.1:${portOf(server)}` };
  }

  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  it('rejects invalid options at registration, naming the option', () => {
    const telemetry = new Telemetry({ processMetrics: false });
    expect(() => registerDashboard(Fastify(), telemetry, { heartbeat: 'soon' })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'heartbeat' }),
    );
    expect(() => registerDashboard(Fastify(), telemetry, { heartbeat: 0 })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'heartbeat' }),
    );
    expect(() => registerDashboard(Fastify(), telemetry, { maxBufferedBytes: 0 })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'maxBufferedBytes' }),
    );
  });

  it('sends a comment heartbeat while nothing else happens', async () => {
    const telemetry = new Telemetry({ processMetrics: false });
    const { base } = await serve(telemetry, { heartbeat: '20ms' });
    const stream = await openStream(`${base}/dashboard/events`);
    try {
      await stream.until(
        () => (stream.comments.filter((c) => c === 'heartbeat').length >= 2 ? true : undefined),
        'two heartbeats',
      );
    } finally {
      stream.abort();
    }
  });

  it('ends open streams when the server closes, so close() does not hang', async () => {
    const telemetry = new Telemetry({ processMetrics: false });
    const subscriptions = countSubscriptions(telemetry);
    const { server, base } = await serve(telemetry);
    const streams = await Promise.all([1, 2].map(() => openStream(`${base}/dashboard/events`)));
    await Promise.all(streams.map((s) => s.eventNamed('hello')));
    await withTimeout(server.close(), WAIT_MS, 'closing the server with open streams');
    await Promise.all(streams.map((s) => s.ended()));
    expect(subscriptions.active()).toBe(0);
  });

  it('drops a client that stops reading once its backlog passes the limit', async () => {
    const telemetry = new Telemetry({ processMetrics: false });
    const subscriptions = countSubscriptions(telemetry);
    // Wide ticks (about 60 KB each) fill the socket buffers quickly.
    const values = Object.fromEntries(Array.from({ length: 2_000 }, (_, i) => [`series_${i}`, i]));
    telemetry.addFigure({
      id: 'wide',
      panel: 'Wide',
      unit: 'count',
      help: 'many series',
      read: () => values,
    });
    const { port } = await serve(telemetry, { maxBufferedBytes: 64 * 1024 });

    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: '/dashboard/events' }, resolve);
      req.on('error', reject);
      req.end();
    });
    expect(response.statusCode).toBe(200);
    response.pause();
    await eventually(() => subscriptions.active() === 1, 'the stream to subscribe');

    let sent = 0;
    while (subscriptions.active() === 1 && sent < 5_000) {
      telemetry.tick();
      sent++;
      await nextTurn();
    }
    expect(subscriptions.active()).toBe(0);

    let received = '';
    response.setEncoding('utf8');
    response.on('data', (chunk: string) => {
      received += chunk;
    });
    await withTimeout(
      new Promise<void>((resolve) => {
        response.on('close', () => resolve());
        response.resume();
      }),
      WAIT_MS,
      'the dropped stream to close',
    );
    const ticksReceived = received.split('event: tick\n').length - 1;
    expect(ticksReceived).toBeLessThan(sent);
  });
});
