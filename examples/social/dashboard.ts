/**
 * The live dashboard: one HTML page, its script and stylesheet, the uPlot chart library served
 * from the installed `uplot` package, and a Server-Sent Events stream of the app's telemetry.
 *
 * The page is plain browser JavaScript read from `examples/social/dashboard/` (not compiled, so
 * there is no build step); the files are read once at registration and served from memory under
 * fixed URLs, so no request path ever reaches the file system.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ConfigError, type Duration, parseOptionalDuration, StrataError } from 'strata';
import type { Telemetry } from './telemetry.js';

/** Options of the dashboard's event stream; the defaults suit a browser on any network. */
export interface DashboardOptions {
  /** How often an idle event stream gets a comment line so proxies keep it open (default `15s`). */
  heartbeat?: Duration;
  /**
   * Bytes a client may leave unread, beyond the first message, before its stream is dropped
   * (default 1 MiB); the browser reconnects and starts again from a fresh snapshot.
   */
  maxBufferedBytes?: number;
}

interface StaticFile {
  body: Buffer;
  type: string;
  etag: string;
}

const PAGE_DIR = join('examples', 'social', 'dashboard');
const DEFAULT_HEARTBEAT_MS = 15_000;
const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024;
/** How long the browser waits before reconnecting a dropped stream. */
const RECONNECT_MS = 2_000;

const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "img-src 'self' data:",
  "style-src 'self' 'unsafe-inline'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Registers the dashboard page, its assets and its live event stream (`GET /dashboard/events`). */
export function registerDashboard(
  server: FastifyInstance,
  telemetry: Telemetry,
  options: DashboardOptions = {},
): void {
  const heartbeatMs = parseOptionalDuration(options.heartbeat, 'heartbeat', DEFAULT_HEARTBEAT_MS, {
    allowZero: false,
  });
  const maxBuffered = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
  if (!Number.isSafeInteger(maxBuffered) || maxBuffered < 1) {
    throw new ConfigError('maxBufferedBytes', 'must be a positive integer');
  }

  const page = pageDir();
  const vendor = uplotDir();
  const html = load(join(page, 'index.html'), 'text/html; charset=utf-8');
  const files = new Map<string, StaticFile>([
    ['/dashboard/assets/app.js', load(join(page, 'app.js'), 'text/javascript; charset=utf-8')],
    ['/dashboard/assets/style.css', load(join(page, 'style.css'), 'text/css; charset=utf-8')],
    [
      '/dashboard/vendor/uPlot.iife.min.js',
      load(join(vendor, 'uPlot.iife.min.js'), 'text/javascript; charset=utf-8'),
    ],
    ['/dashboard/vendor/uPlot.min.css', load(join(vendor, 'uPlot.min.css'), 'text/css; charset=utf-8')],
  ]);

  const sendPage = (request: FastifyRequest, reply: FastifyReply) =>
    sendStatic(request, reply.header('content-security-policy', CONTENT_SECURITY_POLICY), html);
  server.get('/dashboard', sendPage);
  server.get('/dashboard/', sendPage);
  for (const [url, file] of files) server.get(url, (request, reply) => sendStatic(request, reply, file));

  const startedAt = Date.now();
  const streams = new Set<() => void>();
  server.addHook('preClose', async () => {
    for (const close of [...streams]) close();
  });

  server.get('/dashboard/events', (_request, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-content-type-options': 'nosniff',
    });

    // The snapshot and the subscription happen in the same synchronous step, so no tick is
    // missed or sent twice between the history in `hello` and the first `tick`.
    const hello = frame('hello', {
      startedAt,
      now: Date.now(),
      topology: telemetry.topology(),
      figures: telemetry.figures(),
      history: telemetry.history(),
    });
    const limit = Buffer.byteLength(hello) + maxBuffered;
    let closed = false;
    const unsubscribe = telemetry.subscribe((event, data) => write(frame(event, data)));
    const heartbeat = setInterval(() => write(': heartbeat\n\n'), heartbeatMs);
    heartbeat.unref();
    const close = (): void => {
      if (closed) return;
      closed = true;
      clearInterval(heartbeat);
      unsubscribe();
      streams.delete(close);
      if (!res.destroyed) res.destroy();
    };
    streams.add(close);
    res.on('close', close);
    res.on('error', close);

    function write(chunk: string): void {
      if (closed) return;
      // A client that stops reading must not make the server buffer without bound: once its
      // backlog passes the limit the stream is dropped, and EventSource reconnects afresh.
      if (res.writableLength > limit) {
        close();
        return;
      }
      res.write(chunk);
    }

    write(`retry: ${RECONNECT_MS}\n\n`);
    write(hello);
  });
}

function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function sendStatic(request: FastifyRequest, reply: FastifyReply, file: StaticFile): FastifyReply {
  reply
    .header('cache-control', 'no-cache')
    .header('etag', file.etag)
    .header('x-content-type-options', 'nosniff')
    .type(file.type);
  if (request.headers['if-none-match'] === file.etag) return reply.code(304).send();
  return reply.send(file.body);
}

function load(path: string, type: string): StaticFile {
  const body = readFileSync(path);
  const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
  return { body, type, etag };
}

/**
 * The folder of the page's HTML, JS and CSS: beside this module when it runs from source, or
 * under the package root when it runs compiled from `dist/` (tsc does not copy those files).
 */
function pageDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const besideSource = join(here, 'dashboard');
  if (existsSync(join(besideSource, 'index.html'))) return besideSource;
  for (let dir = here; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, PAGE_DIR, 'index.html'))) {
      return join(dir, PAGE_DIR);
    }
    if (dirname(dir) === dir) break;
  }
  throw new StrataError(
    'E_DASHBOARD_ASSETS',
    `the dashboard page files (${PAGE_DIR}) are missing from the package`,
    {
      details: { folder: PAGE_DIR },
    },
  );
}

function uplotDir(): string {
  try {
    return dirname(createRequire(import.meta.url).resolve('uplot'));
  } catch (err) {
    throw new StrataError(
      'E_DASHBOARD_ASSETS',
      'the dashboard needs the uplot package; install it with npm install uplot',
      {
        cause: err,
        details: { package: 'uplot' },
      },
    );
  }
}
