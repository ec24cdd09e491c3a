/** `strata status`: what is running, where, and its key figures from `GET /api/status`. */
import type { Command } from 'commander';
import { ConfigError, ConnectionError, StrataError } from '../core/errors.js';
import { type CliIo, formatMs, formatPercent, formatRate, formatUptime, renderFields } from './output.js';
import { findRunningApp, type RunInfo, runFilePath } from './run-file.js';

interface StatusFlags {
  dataDir: string;
  url?: string;
  json?: boolean;
}

/** The parts of the app's `/api/status` body this command shows. */
export interface AppStatus {
  app?: string;
  uptimeSeconds?: number;
  engines?: Record<string, string>;
  topology?: {
    nodes?: Array<{ id: string; label?: string; engine?: string; detail?: string; status?: string }>;
  };
  latest?: {
    rps?: Record<string, number>;
    p50?: number | null;
    p99?: number | null;
    errorRate?: number;
    clientErrorRate?: number;
  } | null;
  counts?: Record<string, number>;
}

const STATUS_TIMEOUT_MS = 3_000;

/** Registers `strata status` on `program`. */
export function registerStatus(program: Command, io: CliIo): void {
  program
    .command('status')
    .description(
      'Show what is running and where (URLs, engines, pid, uptime) with its key figures: requests/s, ' +
        'latency, error rate, row counts, topology. Exits 1 when nothing is running.',
    )
    .option('--data-dir <dir>', 'data directory of the app started with `strata start`', './data')
    .option('--url <url>', 'ask the API at this base URL instead of reading --data-dir')
    .option('--json', 'print the status as JSON')
    .action(async (flags: StatusFlags) => {
      process.exitCode = await runStatus(flags, io);
    });
}

async function runStatus(flags: StatusFlags, io: CliIo): Promise<number> {
  const info = flags.url === undefined ? findRunningApp(flags.dataDir) : undefined;
  const base = parseBaseUrl(flags.url ?? info!.url);
  const status = await fetchStatus(base, info);
  if (flags.json) {
    io.stdout.write(`${JSON.stringify({ process: info ?? null, status }, null, 2)}\n`);
    return 0;
  }
  io.stdout.write(formatStatus(base.origin, status, info));
  return 0;
}

function parseBaseUrl(url: string): URL {
  try {
    const parsed = new URL(url);
    if (parsed.protocol === 'http:' || parsed.protocol === 'https:') return parsed;
  } catch {
    // Reported below with the option's name.
  }
  throw new ConfigError('url', 'must be an http or https URL');
}

async function fetchStatus(base: URL, info: RunInfo | undefined): Promise<AppStatus> {
  const host = base.hostname.replace(/^\[|\]$/g, '');
  const port = Number(base.port || (base.protocol === 'https:' ? 443 : 80));
  let res: Response;
  try {
    res = await fetch(new URL('/api/status', base), { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) });
  } catch (err) {
    const who = info === undefined ? 'the API' : `the app (pid ${info.pid})`;
    throw new ConnectionError({ backend: 'social API', host, port }, `${who} does not answer /api/status`, {
      cause: err,
    });
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new StrataError(
      'E_STATUS',
      `GET /api/status at ${base.origin} answered HTTP ${res.status}; is this a strata app?`,
      {
        details: { status: res.status },
      },
    );
  }
  try {
    return (await res.json()) as AppStatus;
  } catch (err) {
    throw new StrataError(
      'E_STATUS',
      `GET /api/status at ${base.origin} did not answer JSON; is this a strata app?`,
      {
        cause: err,
      },
    );
  }
}

/** The human form of a status: where it runs, then the figures of the last second. */
export function formatStatus(origin: string, status: AppStatus, info?: RunInfo): string {
  const app = status.app ?? 'app';
  const uptime =
    status.uptimeSeconds ?? (info ? (Date.now() - Date.parse(info.startedAt)) / 1000 : undefined);
  const where: Array<[string, string]> = [];
  if (info !== undefined) where.push(['pid', String(info.pid)]);
  if (uptime !== undefined && Number.isFinite(uptime)) where.push(['uptime', formatUptime(uptime)]);
  where.push(['API', info?.url ?? origin]);
  where.push(['dashboard', info?.dashboardUrl ?? `${origin}/dashboard`]);
  where.push(['metrics', info?.metricsUrl ?? `${origin}/metrics`]);
  const engines = status.engines ?? info?.engines;
  if (engines !== undefined) {
    where.push([
      'engines',
      Object.entries(engines)
        .map(([role, engine]) => `${role.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} ${engine}`)
        .join(', '),
    ]);
  }
  if (info !== undefined) where.push(['status file', runFilePath(info.dataDir)]);

  const latest = status.latest ?? undefined;
  const rps = latest?.rps === undefined ? 0 : Object.values(latest.rps).reduce((sum, n) => sum + n, 0);
  const figures: Array<[string, string]> = [
    ['requests', `${formatRate(rps)} req/s`],
    ['latency', `p50 ${formatMs(latest?.p50)}  p99 ${formatMs(latest?.p99)}`],
    [
      'errors',
      `${formatPercent(latest?.errorRate ?? 0)} server (5xx), ${formatPercent(latest?.clientErrorRate ?? 0)} client (4xx)`,
    ],
  ];
  const counts = status.counts ?? {};
  const rows = Object.entries(counts)
    .map(([table, n]) => `${table} ${n}`)
    .join(', ');
  const nodes = status.topology?.nodes ?? [];

  let out = `strata: ${app} app running\n${renderFields(where)}`;
  out += `figures (last second)\n${renderFields(figures)}`;
  if (rows.length > 0) out += `rows\n  ${rows}\n`;
  if (nodes.length > 0) {
    out += `topology (${nodes.length} nodes)\n${renderFields(
      nodes.map((n) => [
        n.label ?? n.id,
        [n.engine, n.detail, n.status && n.status !== 'ok' ? `[${n.status}]` : undefined]
          .filter(Boolean)
          .join('  '),
      ]),
    )}`;
  }
  return out;
}
