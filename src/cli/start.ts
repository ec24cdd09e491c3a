/**
 * `strata start`: runs the social reference app in the foreground until SIGINT or SIGTERM,
 * records it in `<data-dir>/strata.json`, and optionally drives it with simulated traffic.
 */
import type { Command } from 'commander';
import { type RunningSocialApp, startSocialApp } from '../../examples/social/index.js';
import { replicaUrlsFromEnv } from '../../examples/social/replicas.js';
import { type SimulationReport, simulate } from '../../examples/social/simulator.js';
import { parseDuration } from '../core/duration.js';
import { StrataError } from '../core/errors.js';
import { integerOption, packageVersion, portOption, rateOption } from './options.js';
import { type CliIo, createProgressView, describeFailure, renderFields } from './output.js';
import {
  ensureWritableDir,
  isProcessAlive,
  readRunFile,
  removeRunFile,
  runFilePath,
  writeRunFile,
} from './run-file.js';
import { formatSimulationReport } from './simulate.js';

interface StartFlags {
  host: string;
  port: string;
  dataDir: string;
  simulate?: string | true;
  rate: string;
  shards?: string;
  replicas: string;
}

/** How long `--simulate` without a value runs. */
const DEFAULT_SIMULATION = '1m';
/** Longest wait for the server and engines to close before giving up. */
const SHUTDOWN_TIMEOUT_MS = 10_000;

/** Registers `strata start` on `program`. */
export function registerStart(program: Command, io: CliIo): void {
  program
    .command('start')
    .description(
      'Run the social reference app (API, dashboard, /metrics) in the foreground until Ctrl-C. ' +
        'SQLite files under --data-dir and an in-process cache by default; DATABASE_URL selects ' +
        'PostgreSQL and REDIS_URL selects Redis.',
    )
    .option('--host <host>', 'address to bind', '127.0.0.1')
    .option('--port <port>', 'port to bind (0 picks a free one)', '3000')
    .option('--data-dir <dir>', 'directory for the SQLite files and strata.json', './data')
    .option(
      '--simulate [duration]',
      `drive the app with simulated traffic for a while (default ${DEFAULT_SIMULATION})`,
    )
    .option('--rate <n>', 'mean requests per second of the simulated traffic', '50')
    .option(
      '--shards <n>',
      'shards of a new data directory or database (default 2; afterwards the stored shard map decides)',
    )
    .option(
      '--replicas <n>',
      'embedded SQLite read replicas per shard, fed from the change log (0 turns them off; with DATABASE_URL, STRATA_REPLICA_URLS lists PostgreSQL standbys instead)',
      '1',
    )
    .action(async (flags: StartFlags) => {
      process.exitCode = await runStart(flags, io);
    });
}

async function runStart(flags: StartFlags, io: CliIo): Promise<number> {
  const port = portOption(flags.port);
  const shards = flags.shards === undefined ? undefined : integerOption(flags.shards, 'shards', 1, 64);
  const replicas = integerOption(flags.replicas, 'replicas', 0, 8);
  const simulation =
    flags.simulate === undefined
      ? undefined
      : {
          durationMs: parseDuration(
            flags.simulate === true ? DEFAULT_SIMULATION : flags.simulate,
            'simulate',
            {
              allowZero: false,
            },
          ),
          rate: rateOption(flags.rate),
        };
  const dataDir = ensureWritableDir(flags.dataDir);
  const previous = readRunFile(dataDir);
  if (previous !== undefined && previous.pid !== process.pid && isProcessAlive(previous.pid)) {
    throw new StrataError(
      'E_RUNNING',
      `another strata (pid ${previous.pid}) is already running with data directory ${dataDir}; stop it or choose another --data-dir`,
      { details: { pid: previous.pid, dataDir } },
    );
  }

  const app = await startSocialApp({
    host: flags.host,
    port,
    dataDir,
    databaseUrl: io.env.DATABASE_URL || undefined,
    redisUrl: io.env.REDIS_URL || undefined,
    natsUrl: io.env.NATS_URL || undefined,
    shards,
    replicas,
    replicaUrls: replicaUrlsFromEnv(io.env.STRATA_REPLICA_URLS),
  });
  try {
    writeRunFile(dataDir, {
      pid: process.pid,
      url: app.url,
      dashboardUrl: app.dashboardUrl,
      metricsUrl: app.metricsUrl,
      startedAt: new Date().toISOString(),
      engines: app.engines,
      dataDir,
      version: packageVersion(),
    });
  } catch (err) {
    await app.close();
    throw err;
  }

  io.stdout.write(banner(app, dataDir));
  return serveUntilSignal(app, dataDir, simulation, io);
}

function banner(app: RunningSocialApp, dataDir: string): string {
  return (
    `strata ${packageVersion()}: social app running (pid ${process.pid})\n` +
    renderFields([
      ['API', app.url],
      ['dashboard', app.dashboardUrl],
      ['metrics', app.metricsUrl],
      [
        'engines',
        `database ${app.engines.database}, cache ${app.engines.cache}, change log ${app.engines.changeLog}`,
      ],
      ['data dir', dataDir],
      ['status', runFilePath(dataDir)],
    ]) +
    'Press Ctrl-C to stop.\n'
  );
}

async function serveUntilSignal(
  app: RunningSocialApp,
  dataDir: string,
  simulation: { durationMs: number; rate: number } | undefined,
  io: CliIo,
): Promise<number> {
  const stopSimulation = new AbortController();
  let signalled: (signal: NodeJS.Signals) => void = () => {};
  const stopped = new Promise<NodeJS.Signals>((resolve) => {
    signalled = resolve;
  });
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      // A second Ctrl-C: the user does not want to wait for a clean shutdown.
      io.stderr.write(`strata: ${signal} again, exiting without a clean shutdown\n`);
      process.exit(130);
    }
    stopping = true;
    stopSimulation.abort();
    signalled(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let running: Promise<void> = Promise.resolve();
  if (simulation !== undefined) running = runSimulation(app, simulation, stopSimulation.signal, io);

  const signal = await stopped;
  io.stdout.write(`\nstrata: ${signal} received, shutting down\n`);
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      (async () => {
        await running;
        await app.close();
      })(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new StrataError('E_TIMEOUT', `shutdown did not finish within ${SHUTDOWN_TIMEOUT_MS / 1000}s`),
            ),
          SHUTDOWN_TIMEOUT_MS,
        );
        timer.unref();
      }),
    ]);
  } finally {
    clearTimeout(timer);
    removeRunFile(dataDir, process.pid);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
  io.stdout.write('strata: stopped\n');
  return 0;
}

async function runSimulation(
  app: RunningSocialApp,
  simulation: { durationMs: number; rate: number },
  signal: AbortSignal,
  io: CliIo,
): Promise<void> {
  const view = createProgressView(io.stdout);
  let report: SimulationReport;
  try {
    report = await simulate({
      baseUrl: app.url,
      rate: simulation.rate,
      duration: simulation.durationMs,
      signal,
      onSeeding: (p) => view.seeding(p.done, p.total),
      onProgress: (p) => view.update(p),
    });
  } catch (err) {
    view.stop();
    // The server keeps running: a failed simulation is reported, not fatal.
    io.stderr.write(describeFailure(err, io.env).text.replace(/^strata: /, 'strata: simulation failed: '));
    return;
  }
  view.stop();
  io.stdout.write(formatSimulationReport(report));
  if (!report.aborted) io.stdout.write('The app keeps running; press Ctrl-C to stop.\n');
}
