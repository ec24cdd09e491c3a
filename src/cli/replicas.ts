/** `strata replicas status`: a primary and its replicas, with each replica's state, lag and position. */
import { basename } from 'node:path';
import type { Command } from 'commander';
import { type Duration, parseDuration } from '../core/duration.js';
import { ConfigError } from '../core/errors.js';
import type { PositionProvider } from '../core/positions.js';
import type { SqlDriver } from '../core/sql.js';
import { createReplicaSet, type ReplicaSetStats } from '../replication/replica-set.js';
import { type CliIo, renderTable } from './output.js';

interface StatusFlags {
  primary: string;
  replica: string[];
  maxLag: string;
  timeout: string;
  outbox?: string;
  json?: boolean;
}

/** Registers the `replicas` command group on `program`. */
export function registerReplicas(program: Command, io: CliIo): void {
  const replicas = program
    .command('replicas')
    .description('Read replicas: PostgreSQL streaming replicas, or SQLite replicas fed from the change log.');

  replicas
    .command('status')
    .description(
      'Probe a primary and its replicas once and list each replica: state, lag (WAL bytes or changes, and ' +
        'seconds) and applied position. Exits 1 when the primary or a replica is down or lagging.',
    )
    .requiredOption('--primary <spec>', 'the primary: a postgres:// URL or sqlite:<file>')
    .option(
      '--replica <spec>',
      'a replica (repeat for each): [name=]postgres://... or [name=]sqlite:<file>',
      (value: string, previous: string[]) => [...previous, value],
      [] as string[],
    )
    .option('--max-lag <duration>', 'lag over which a replica counts as lagging', '10s')
    .option('--timeout <duration>', 'how long each probe may take', '5s')
    .option('--outbox <table>', "the SQLite primary's outbox table (default _strata_outbox)")
    .option('--json', 'print JSON')
    .action(async (flags: StatusFlags) => {
      process.exitCode = await runStatus(flags, io);
    });
}

type Engine = 'postgres' | 'sqlite';

function engineOf(spec: string, option: string): Engine {
  if (/^postgres(ql)?:\/\//.test(spec)) return 'postgres';
  if (spec.startsWith('sqlite:') || /\.(db|sqlite|sqlite3)$/.test(spec)) return 'sqlite';
  throw new ConfigError(option, 'use a postgres:// URL or sqlite:<file>');
}

/** Splits `name=spec`; without a name, one is made from the host and port or the file name. */
function namedSpec(text: string, index: number): { name: string; spec: string } {
  const match = /^([A-Za-z0-9_.:-]{1,64})=(.+)$/.exec(text);
  if (match !== null && !/^[a-z]+:\/\//.test(text)) return { name: match[1]!, spec: match[2]! };
  if (engineOf(text, 'replica') === 'sqlite') {
    return { name: basename(text.replace(/^sqlite:/, '')).slice(0, 64) || `replica${index + 1}`, spec: text };
  }
  try {
    const url = new URL(text);
    return { name: `${url.hostname || 'localhost'}:${url.port || '5432'}`, spec: text };
  } catch {
    throw new ConfigError('replica', 'not a valid postgres:// URL');
  }
}

async function open(spec: string, engine: Engine, option: string, timeout: Duration): Promise<SqlDriver> {
  if (engine === 'postgres') {
    const { createPostgresDriver } = await import('../backends/postgres/postgres-driver.js');
    // No ping: a server that does not answer is reported as down, not as a failed command.
    return createPostgresDriver({
      url: spec,
      maxConnections: 2,
      connectTimeout: timeout,
      onBackgroundError: () => undefined,
    });
  }
  const { existsSync } = await import('node:fs');
  const file = spec.replace(/^sqlite:/, '');
  if (!existsSync(file)) throw new ConfigError(option, 'no SQLite file at that path');
  const { createSqliteDriver } = await import('../backends/sqlite/sqlite-driver.js');
  return createSqliteDriver({ filename: file, readonly: true });
}

async function provider(engine: Engine, outbox: string | undefined): Promise<PositionProvider> {
  if (engine === 'postgres') {
    if (outbox !== undefined) throw new ConfigError('outbox', 'applies to a SQLite primary only');
    const { postgresWalPosition } = await import('../backends/postgres/postgres-replication.js');
    return postgresWalPosition();
  }
  const { changeLogPosition } = await import('../backends/sqlite/sqlite-replica.js');
  return changeLogPosition(outbox === undefined ? {} : { outboxTable: outbox });
}

async function runStatus(flags: StatusFlags, io: CliIo): Promise<number> {
  const engine = engineOf(flags.primary, 'primary');
  const maxLagMs = parseDuration(flags.maxLag, 'max-lag');
  const timeoutMs = parseDuration(flags.timeout, 'timeout', { allowZero: false });
  if (flags.replica.length === 0) throw new ConfigError('replica', 'name at least one replica');
  const named = flags.replica.map(namedSpec);
  for (const r of named) {
    if (engineOf(r.spec, 'replica') !== engine) {
      throw new ConfigError('replica', 'replicas must be of the same engine as the primary');
    }
  }
  const position = await provider(engine, flags.outbox);
  const drivers: SqlDriver[] = [];
  try {
    const primary = await open(flags.primary, engine, 'primary', timeoutMs);
    drivers.push(primary);
    const replicas = [];
    for (const r of named) {
      const driver = await open(r.spec, engine, 'replica', timeoutMs);
      drivers.push(driver);
      replicas.push({ name: r.name, driver });
    }
    const set = createReplicaSet({
      primary,
      replicas,
      position,
      health: { interval: '1h', failures: 1, maxLag: maxLagMs, timeout: timeoutMs },
    });
    let stats: ReplicaSetStats;
    try {
      stats = await set.refresh();
    } finally {
      await set.close();
    }
    if (flags.json) io.stdout.write(`${JSON.stringify(stats, null, 2)}\n`);
    else io.stdout.write(formatStatus(stats));
    const ok = stats.primary.state === 'up' && stats.replicas.every((r) => r.state === 'healthy');
    return ok ? 0 : 1;
  } finally {
    for (const driver of drivers) await driver.close();
  }
}

/** A lag in the provider's unit for people: `0 B`, `12.3 kB`, `4.5 MB`, or `12 changes`. */
export function formatLag(lag: number | undefined, unit: 'bytes' | 'changes'): string {
  if (lag === undefined) return '-';
  if (unit === 'changes') return `${lag} change${lag === 1 ? '' : 's'}`;
  if (lag < 1_000) return `${lag} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = lag / 1_000;
  let i = 0;
  while (value >= 1_000 && i < units.length - 1) {
    value /= 1_000;
    i++;
  }
  return `${value.toFixed(value >= 100 ? 0 : 1)} ${units[i]}`;
}

/** The table `strata replicas status` prints. */
export function formatStatus(stats: ReplicaSetStats): string {
  const p = stats.primary;
  const head = `primary ${p.name}: ${p.state}${p.position === undefined ? '' : `, position ${p.position}`}${
    p.lastErrorCode === undefined || p.state === 'up' ? '' : ` (${p.lastErrorCode})`
  }\n\n`;
  const rows = stats.replicas.map((r) => [
    r.name,
    r.state,
    formatLag(r.lag, stats.unit),
    r.lagSeconds === undefined ? '-' : `${r.lagSeconds.toFixed(r.lagSeconds < 10 ? 2 : 0)}s`,
    r.position ?? '-',
    r.state === 'down' ? (r.lastErrorCode ?? '') : '',
  ]);
  return (
    head +
    renderTable(['replica', 'state', 'lag', 'lag (s)', 'replay position', 'error'], rows, { right: [2, 3] })
  );
}
