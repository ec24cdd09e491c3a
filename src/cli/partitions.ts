/** `strata partitions status` and `strata partitions maintain`: the time partitions of one table. */
import type { Command } from 'commander';
import { ConfigError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import {
  createTimePartitioning,
  inspectTimePartitioning,
  type MaintainReport,
  type PartitionStatus,
  type TimePartitioning,
  type TimePartitioningInfo,
  type TimePeriod,
} from '../sharding/partitions.js';
import { openStore } from './endpoints.js';
import { integerOption } from './options.js';
import { type CliIo, renderFields, renderTable } from './output.js';

interface CommonFlags {
  database?: string;
  dataDir: string;
  shard: string;
  table: string;
  schema?: string;
  period?: string;
  keep?: string;
  json?: boolean;
}

interface StatusFlags extends CommonFlags {
  estimate?: boolean;
}

interface MaintainFlags extends CommonFlags {
  premake: string;
  onExpire: string;
  lockTimeout: string;
  dryRun?: boolean;
}

/** Registers the `partitions` command group on `program`. */
export function registerPartitions(program: Command, io: CliIo): void {
  const partitions = program
    .command('partitions')
    .description(
      'Time partitions of a table (PostgreSQL native partitions, SQLite per-period tables): list them, ' +
        'create them ahead, move rows out of the default partition, expire old ones.',
    );

  const common = (command: Command): Command =>
    command
      .option(
        '--database <spec>',
        "the store: sqlite:<file> or a postgres:// URL (default: the store of the reference app's --shard)",
      )
      .option('--shard <id>', 'without --database: which shard of the reference app (s0, s1, ...)', 's0')
      .option('--data-dir <dir>', 'data directory of the app started with `strata start`', './data')
      .requiredOption('--table <name>', 'the time-partitioned table')
      .option(
        '--schema <name>',
        'its schema (PostgreSQL, default public) or attached database (SQLite, default main)',
      )
      .option('--period <period>', 'day, month or year (default: as the table was set up)')
      .option('--keep <n>', 'retention: periods kept before the current one (default: nothing expires)')
      .option('--json', 'print JSON');

  common(partitions.command('status'))
    .description(
      'List partitions with their period, rows and size, then the default partition and detached tables.',
    )
    .option('--estimate', "use the planner's row estimates instead of counting rows (PostgreSQL)")
    .action(async (flags: StatusFlags) => {
      process.exitCode = await runStatus(flags, io);
    });

  common(partitions.command('maintain'))
    .description(
      'Create the current partition and --premake ahead, move rows out of the default partition, and ' +
        'expire partitions older than --keep periods (PostgreSQL takes a short ACCESS EXCLUSIVE lock per step).',
    )
    .option('--premake <n>', 'partitions created ahead of the current one', '3')
    .option(
      '--on-expire <action>',
      'what happens to expired partitions: detach (keep as <name>_detached) or drop',
      'detach',
    )
    .option('--lock-timeout <duration>', 'how long each step waits for its table lock', '2s')
    .option('--dry-run', 'print what would be done without changing anything')
    .action(async (flags: MaintainFlags) => {
      process.exitCode = await runMaintain(flags, io);
    });
}

/** The store of `--shard` of the app started with `--data-dir` (or on DATABASE_URL). */
async function appShardStore(flags: CommonFlags, io: CliIo): Promise<string> {
  const { shardStoreSpec } = await import('../../examples/social/stores.js');
  if (!/^[A-Za-z0-9_]{1,32}$/.test(flags.shard))
    throw new ConfigError('shard', 'must be a shard id such as s0');
  return shardStoreSpec(flags.shard, flags.dataDir, io.env.DATABASE_URL || undefined);
}

interface Opened {
  store: SqlDriver;
  info: TimePartitioningInfo;
  period: TimePeriod;
  parts: TimePartitioning;
}

function periodFlag(text: string | undefined): TimePeriod | undefined {
  if (text === undefined) return undefined;
  if (text === 'day' || text === 'month' || text === 'year') return text;
  throw new ConfigError('period', 'must be day, month or year');
}

async function open(
  flags: CommonFlags,
  io: CliIo,
  extra: { premake?: number; onExpire?: string; lockTimeout?: string },
): Promise<Opened> {
  const period = periodFlag(flags.period);
  const keep = flags.keep === undefined ? undefined : integerOption(flags.keep, 'keep', 0, 100_000);
  if (extra.onExpire !== undefined && extra.onExpire !== 'drop' && extra.onExpire !== 'detach') {
    throw new ConfigError('on-expire', 'must be detach or drop');
  }
  const store = await openStore(flags.database ?? (await appShardStore(flags, io)), 'database');
  try {
    const info = await inspectTimePartitioning(store, {
      table: flags.table,
      ...(flags.schema === undefined ? {} : { schema: flags.schema }),
    });
    if (info === undefined) {
      throw new ConfigError('table', `"${flags.table}" is not a time-partitioned table in this store`);
    }
    const chosen = period ?? info.period;
    if (chosen === undefined) {
      throw new ConfigError(
        'period',
        `cannot be inferred from table "${flags.table}", which has no partitions yet; pass --period`,
      );
    }
    const parts = createTimePartitioning(store, {
      table: flags.table,
      column: info.column,
      period: chosen,
      ...(flags.schema === undefined ? {} : { schema: flags.schema }),
      ...(extra.premake === undefined ? {} : { premake: extra.premake }),
      ...(extra.lockTimeout === undefined ? {} : { lockTimeout: extra.lockTimeout }),
      ...(keep === undefined
        ? {}
        : { retention: { keep, onExpire: (extra.onExpire ?? 'detach') as 'drop' | 'detach' } }),
    });
    return { store, info, period: chosen, parts };
  } catch (err) {
    await store.close();
    throw err;
  }
}

async function runStatus(flags: StatusFlags, io: CliIo): Promise<number> {
  const { store, info, period, parts } = await open(flags, io, {});
  try {
    const partitions = await parts.status({ estimate: flags.estimate === true });
    if (flags.json) {
      io.stdout.write(`${JSON.stringify(describe(flags.table, store, info, period, partitions), null, 2)}\n`);
      return 0;
    }
    io.stdout.write(header(flags.table, store, info, period));
    io.stdout.write(statusTable(partitions, period));
    return 0;
  } finally {
    await store.close();
  }
}

async function runMaintain(flags: MaintainFlags, io: CliIo): Promise<number> {
  const premake = integerOption(flags.premake, 'premake', 0, 1_000);
  const { store, info, period, parts } = await open(flags, io, {
    premake,
    onExpire: flags.onExpire,
    lockTimeout: flags.lockTimeout,
  });
  try {
    const report = await parts.maintain({ dryRun: flags.dryRun === true });
    const partitions = await parts.status();
    if (flags.json) {
      io.stdout.write(
        `${JSON.stringify({ ...describe(flags.table, store, info, period, partitions), report }, null, 2)}\n`,
      );
      return 0;
    }
    io.stdout.write(header(flags.table, store, info, period));
    io.stdout.write(reportText(report, info.mode === 'native'));
    io.stdout.write('\n');
    io.stdout.write(statusTable(partitions, period));
    return 0;
  } finally {
    await store.close();
  }
}

function describe(
  table: string,
  store: SqlDriver,
  info: TimePartitioningInfo,
  period: TimePeriod,
  partitions: readonly PartitionStatus[],
): Record<string, unknown> {
  return {
    table,
    store: store.name,
    mode: info.mode,
    column: info.column,
    columnType: info.columnType,
    period,
    partitions: partitions.map((p) => ({
      ...p,
      from: p.from?.toISOString() ?? null,
      to: p.to?.toISOString() ?? null,
      rows: p.rows ?? null,
      bytes: p.bytes ?? null,
    })),
  };
}

function header(table: string, store: SqlDriver, info: TimePartitioningInfo, period: TimePeriod): string {
  const how = info.mode === 'native' ? 'native partitions' : 'a table per period behind a view';
  return `${table} on ${store.name}: ${how}, one per ${period}, by ${info.column} (${info.columnType})\n\n`;
}

function day(date: Date | undefined, period: TimePeriod): string {
  if (date === undefined) return '';
  const iso = date.toISOString();
  return period === 'year' ? iso.slice(0, 4) : period === 'month' ? iso.slice(0, 7) : iso.slice(0, 10);
}

/** Bytes for people: `512 B`, `8.0 kB`, `1.5 MB`, `2.0 GB`. */
function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined) return '-';
  if (bytes < 1_024) return `${bytes} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = bytes / 1_024;
  let unit = 0;
  while (value >= 1_024 && unit < units.length - 1) {
    value /= 1_024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

function statusTable(partitions: readonly PartitionStatus[], period: TimePeriod): string {
  if (partitions.length === 0) return 'no partitions yet; run `strata partitions maintain`\n';
  return renderTable(
    ['partition', 'from', 'to', 'rows', 'size', 'note'],
    partitions.map((p) => [
      p.name,
      p.kind === 'default' ? '(default)' : day(p.from, period),
      day(p.to, period),
      p.rows === undefined ? '-' : String(p.rows),
      formatBytes(p.bytes),
      p.kind === 'detached'
        ? 'detached'
        : p.expired
          ? 'expired'
          : p.kind === 'default' && (p.rows ?? 0) > 0
            ? 'rows outside any partition'
            : '',
    ]),
    { right: [3, 4] },
  );
}

function reportText(report: MaintainReport, native: boolean): string {
  const list = (names: readonly string[]) => (names.length === 0 ? '-' : names.join(', '));
  const rows = (n: number) => `${n} row${n === 1 ? '' : 's'}`;
  const fields: Array<[string, string]> = [
    [report.dryRun ? 'would create' : 'created', list(report.created)],
  ];
  if (native) {
    fields.push([
      report.dryRun ? 'would move from default' : 'moved from default',
      rows(report.movedFromDefault),
    ]);
    fields.push(['left in default', rows(report.leftInDefault)]);
  }
  fields.push([report.dryRun ? 'would detach' : 'detached', list(report.detached)]);
  fields.push([report.dryRun ? 'would drop' : 'dropped', list(report.dropped)]);
  return `${report.dryRun ? 'dry run: nothing was changed\n' : ''}${renderFields(fields)}`;
}
