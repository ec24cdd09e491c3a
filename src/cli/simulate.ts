/** `strata simulate`: drives a running social API with simulated traffic and prints a summary. */
import type { Command } from 'commander';
import { loopbackUrl, type SimulationReport, simulate } from '../../examples/social/simulator.js';
import { parseDuration } from '../core/duration.js';
import { StrataError } from '../core/errors.js';
import { integerOption, rateOption } from './options.js';
import {
  type CliIo,
  createProgressView,
  formatMs,
  formatPercent,
  formatRate,
  renderTable,
} from './output.js';
import { findRunningApp } from './run-file.js';

interface SimulateFlags {
  url?: string;
  dataDir: string;
  rate: string;
  duration: string;
  users: string;
  seed: string;
  concurrency: string;
  burst: boolean;
  json?: boolean;
}

/** Exit code after a run stopped by Ctrl-C (128 + SIGINT). */
const EXIT_INTERRUPTED = 130;

/** Registers `strata simulate` on `program`. */
export function registerSimulate(program: Command, io: CliIo): void {
  program
    .command('simulate')
    .description(
      'Drive a running social API with a realistic mix of requests (Zipf-distributed users and posts, ' +
        'mostly reads, periodic bursts) for a fixed time, then print a summary. Loopback URLs only.',
    )
    .option('--url <url>', 'base URL of the API (default: the app recorded in --data-dir)')
    .option('--data-dir <dir>', 'where `strata start` recorded the running app', './data')
    .option('--rate <n>', 'mean requests per second outside bursts', '50')
    .option('--duration <duration>', 'how long to run, such as 30s or 5m', '30s')
    .option('--users <n>', 'size of the simulated population', '200')
    .option('--seed <n>', 'seed of the pseudo-random generator (same seed, same request sequence)', '1')
    .option('--concurrency <n>', 'most requests in flight; arrivals beyond it are skipped', '64')
    .option('--no-burst', 'turn off the periodic 4x bursts (2s every 10s)')
    .option('--json', 'print the report as JSON instead of a table')
    .action(async (flags: SimulateFlags) => {
      process.exitCode = await runSimulate(flags, io);
    });
}

async function runSimulate(flags: SimulateFlags, io: CliIo): Promise<number> {
  const options = {
    rate: rateOption(flags.rate),
    durationMs: parseDuration(flags.duration, 'duration', { allowZero: false }),
    users: integerOption(flags.users, 'users', 2, 100_000),
    seed: integerOption(flags.seed, 'seed', 0, 0xffff_ffff),
    concurrency: integerOption(flags.concurrency, 'concurrency', 1, 10_000),
  };
  const url = flags.url ?? findRunningApp(flags.dataDir).url;
  loopbackUrl(url, 'url');

  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const view = flags.json ? undefined : createProgressView(io.stdout);
  let report: SimulationReport;
  try {
    report = await simulate({
      baseUrl: url,
      rate: options.rate,
      duration: options.durationMs,
      users: options.users,
      seed: options.seed,
      concurrency: options.concurrency,
      ...(flags.burst ? {} : { burst: false as const }),
      signal: stop.signal,
      onSeeding: (p) => view?.seeding(p.done, p.total),
      onProgress: (p) => view?.update(p),
    });
  } finally {
    view?.stop();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
  if (flags.json) io.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else io.stdout.write(formatSimulationReport(report));
  if (report.aborted) return EXIT_INTERRUPTED;
  if (report.sent > 0 && report.ok === 0) {
    throw new StrataError(
      'E_SIMULATION',
      `no request succeeded; check that the API at ${report.url} is healthy`,
    );
  }
  return 0;
}

/** The human summary of a simulation: totals, status codes and a per-route table. */
export function formatSimulationReport(report: SimulationReport): string {
  const p = report.population;
  const population = p.reused
    ? `reused ${p.users} users, ${p.posts} posts`
    : `created ${p.users} users, ${p.follows} follows, ${p.posts} posts`;
  const done = report.aborted ? 'stopped early' : 'done';
  const lines = [
    '',
    `Simulation ${done}: ${formatMs(report.elapsedMs)} against ${report.url} at ${formatRate(report.rate)} req/s ` +
      `(seed ${report.seed}; ${population})`,
    `  sent ${report.sent}  ok ${report.ok}  failed ${report.failed}  skipped ${report.skipped}` +
      (report.cancelled > 0 ? `  cancelled ${report.cancelled}` : '') +
      `  achieved ${formatRate(report.achievedRps)} req/s`,
    `  latency p50 ${formatMs(report.p50Ms)}  p99 ${formatMs(report.p99Ms)}  max ${formatMs(report.maxMs)}`,
    `  reads ${report.reads} (${formatPercent(report.sent === 0 ? 0 : report.reads / report.sent)})  writes ${report.writes}`,
    `  status ${
      Object.entries(report.byStatus)
        .sort(([a], [b]) => Number(a) - Number(b))
        .map(([status, n]) => `${status}: ${n}`)
        .join(', ') || '-'
    }  timeouts ${report.errors.timeout}  connection errors ${report.errors.network}`,
    '',
  ];
  const rows = Object.entries(report.byRoute).map(([route, r]) => [
    route,
    String(r.sent),
    String(r.ok),
    String(r.failed),
    formatMs(r.p50Ms),
    formatMs(r.p99Ms),
  ]);
  const table =
    rows.length === 0
      ? ''
      : renderTable(['route', 'sent', 'ok', 'failed', 'p50', 'p99'], rows, {
          right: [1, 2, 3, 4, 5],
          indent: '  ',
        });
  return `${lines.join('\n')}\n${table}`;
}
