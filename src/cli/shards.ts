/**
 * `strata shards status` (rows, size and share per shard, and the skew) and `strata reshard`
 * (plan with `--dry-run`, run with a progress bar, resume by running it again, `--abort`).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { ConfigError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { createShardMapStore, type ShardMapStore } from '../sharding/map-store.js';
import {
  createReshard,
  type ReshardOptions,
  type ReshardPlan,
  type ReshardProgress,
  type ReshardStatus,
  type ReshardStep,
  type ReshardTableOptions,
  readReshardStatus,
} from '../sharding/reshard.js';
import { postgresReshardCapture } from '../sharding/reshard-capture.js';
import { RESHARD_STEPS } from '../sharding/reshard-state.js';
import { hashStrategy, validateStrategy } from '../sharding/strategies.js';
import type { ShardId, ShardStrategy } from '../sharding/types.js';
import { openStore } from './endpoints.js';
import { integerOption } from './options.js';
import { type CliIo, formatMs, formatPercent, renderFields, renderTable } from './output.js';

interface CommonFlags {
  map: string;
  state: string;
  shard: string[];
  table: string[];
  json?: boolean;
}

interface ReshardFlags extends CommonFlags {
  to?: string;
  toFile?: string;
  dryRun?: boolean;
  abort?: boolean;
  workDir: string;
  chunkSize: string;
  until?: string;
  lease: string;
  settle: string;
}

const collect = (value: string, previous: string[]) => [...previous, value];

/** Registers `strata shards status` and `strata reshard` on `program`. */
export function registerShards(program: Command, io: CliIo): void {
  const common = (command: Command): Command =>
    command
      .requiredOption('--map <name>', 'the shard map name')
      .requiredOption('--state <store>', 'the store of the shard maps: sqlite:<file> or a postgres:// URL')
      .option('--shard <id=store>', 'a shard and its store (repeat for each shard)', collect, [] as string[])
      .option('--json', 'print JSON');

  const shards = program.command('shards').description('Shard maps: where rows live and how evenly.');
  common(shards.command('status'))
    .description(
      'List each shard with its rows per table, size and share of all rows, and the skew (max/mean).',
    )
    .option(
      '--table <name>',
      'a table to count (repeat; default: every table of the first shard)',
      collect,
      [],
    )
    .action(async (flags: CommonFlags) => {
      process.exitCode = await runStatus(flags, io);
    });

  common(program.command('reshard'))
    .description(
      'Move rows to a new shard map online: capture changes, copy in chunks, catch up, verify, cut over ' +
        'with a short write pause, clean up. Running it again resumes where it stopped.',
    )
    .option(
      '--table <name:key[:pk,...]>',
      'a table to move, its shard key and primary key (repeat; default primary key: the shard key)',
      collect,
      [],
    )
    .option('--to <n>', 'the number of hash shards to end with (the new ones from --shard, in order)')
    .option('--to-file <file>', 'a JSON file with the new strategy (hash, range or directory)')
    .option('--dry-run', 'print the rows that would move, per source and target, and change nothing')
    .option('--abort', 'undo a reshard that has not cut over yet')
    .option('--until <step>', `stop before this step (${RESHARD_STEPS.join(', ')})`)
    .option('--work-dir <dir>', 'where the reshard keeps its change log', './data')
    .option('--chunk-size <n>', 'rows per chunk', '1000')
    .option('--lease <duration>', 'how long a crashed run holds the reshard', '15s')
    .option(
      '--settle <duration>',
      'wait after announcing the cutover before pausing, so running apps (which poll the map every 2s) hold their writes',
      '3s',
    )
    .action(async (flags: ReshardFlags) => {
      process.exitCode = await runReshard(flags, io);
    });
}

// ---------------------------------------------------------------------------------------------
// Opening stores

interface Opened {
  state: SqlDriver;
  mapStore: ShardMapStore;
  shards: Map<ShardId, { driver: SqlDriver; spec: string }>;
  close(): Promise<void>;
}

function parseShard(text: string): { id: ShardId; spec: string } {
  const match = /^([A-Za-z0-9_][A-Za-z0-9_.:-]{0,62})=(.+)$/.exec(text);
  if (match === null) throw new ConfigError('shard', 'use <id>=<store>, as in s0=sqlite:data/s0.db');
  return { id: match[1]!, spec: match[2]! };
}

async function open(flags: CommonFlags): Promise<Opened> {
  const parsed = flags.shard.map(parseShard);
  const ids = new Set<string>();
  for (const { id } of parsed) {
    if (ids.has(id)) throw new ConfigError('shard', `shard "${id}" is given twice`);
    ids.add(id);
  }
  const opened: SqlDriver[] = [];
  const close = async () => {
    for (const d of opened.reverse()) await d.close().catch(() => undefined);
  };
  try {
    const state = await openStore(flags.state, 'state');
    opened.push(state);
    const shards = new Map<ShardId, { driver: SqlDriver; spec: string }>();
    for (const { id, spec } of parsed) {
      const driver = await openStore(spec, `shard ${id}`);
      opened.push(driver);
      shards.set(id, { driver, spec });
    }
    const mapStore = createShardMapStore(state);
    await mapStore.migrate();
    return { state, mapStore, shards, close };
  } catch (err) {
    await close();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// shards status

interface ShardFigures {
  shard: ShardId;
  inMap: boolean;
  rows: Record<string, number>;
  total: number;
  bytes: number | undefined;
}

async function listTables(driver: SqlDriver): Promise<string[]> {
  if (driver.dialect.name === 'postgres') {
    const { rows } = await driver.query<{ name: string }>(
      sql`select table_name::text as name from information_schema.tables
          where table_schema = current_schema() and table_type = 'BASE TABLE' order by 1`,
    );
    return rows.map((r) => r.name).filter((n) => !/^_?strata_/.test(n));
  }
  const { rows } = await driver.query<{ name: string }>(
    sql`select name from sqlite_schema where type = 'table' and name not like 'sqlite_%' order by name`,
  );
  return rows.map((r) => r.name).filter((n) => !/^_?strata_/.test(n));
}

async function sizeOf(driver: SqlDriver, tables: readonly string[]): Promise<number | undefined> {
  try {
    if (driver.dialect.name === 'postgres') {
      const { rows } = await driver.query<{ bytes: number | string | null }>(
        sql`select sum(pg_total_relation_size(to_regclass(t)))::int8 as bytes from unnest(${tables}::text[]) as t`,
      );
      return rows[0]?.bytes === null || rows[0] === undefined ? undefined : Number(rows[0].bytes);
    }
    const { rows } = await driver.query<{ bytes: number }>(
      'select page_count * page_size as bytes from pragma_page_count(), pragma_page_size()',
    );
    return Number(rows[0]?.bytes ?? 0);
  } catch {
    return undefined;
  }
}

async function runStatus(flags: CommonFlags, io: CliIo): Promise<number> {
  const o = await open(flags);
  try {
    const active = await o.mapStore.active(flags.map);
    if (active === undefined)
      throw new ConfigError('map', `no shard map named "${flags.map}" in the state store`);
    const strategy = active.strategy as ShardStrategy;
    const order = [...strategy.shards, ...[...o.shards.keys()].filter((s) => !strategy.shards.includes(s))];
    const first = o.shards.get(order.find((s) => o.shards.has(s)) ?? '');
    const tables =
      flags.table.length > 0 ? flags.table : first === undefined ? [] : await listTables(first.driver);
    const figures: ShardFigures[] = [];
    for (const shard of order) {
      const entry = o.shards.get(shard);
      if (entry === undefined) continue;
      const rows: Record<string, number> = {};
      for (const table of tables) {
        try {
          const { rows: r } = await entry.driver.query<{ n: number | string }>(
            sql`select count(*) as n from ${sql.id(table)}`,
          );
          rows[table] = Number(r[0]?.n ?? 0);
        } catch {
          rows[table] = 0;
        }
      }
      const total = Object.values(rows).reduce((a, b) => a + b, 0);
      figures.push({
        shard,
        inMap: strategy.shards.includes(shard),
        rows,
        total,
        bytes: await sizeOf(entry.driver, tables),
      });
    }
    const inMap = figures.filter((f) => f.inMap);
    const all = figures.reduce((a, f) => a + f.total, 0);
    const mean = inMap.length === 0 ? 0 : inMap.reduce((a, f) => a + f.total, 0) / inMap.length;
    const max = Math.max(0, ...inMap.map((f) => f.total));
    const skew = mean === 0 ? 1 : max / mean;
    const reshard = await reshardOf(flags, o);
    if (flags.json) {
      io.stdout.write(
        `${JSON.stringify(
          {
            map: flags.map,
            version: active.version,
            state: active.state,
            strategy,
            shards: figures.map((f) => ({ ...f, share: all === 0 ? 0 : f.total / all })),
            skew,
            reshard: reshard ?? null,
          },
          null,
          2,
        )}\n`,
      );
      return 0;
    }
    io.stdout.write(
      `shard map ${flags.map}: ${strategy.kind} v${active.version}, ${strategy.shards.length} shards, state ${active.state}\n\n`,
    );
    io.stdout.write(
      renderTable(
        ['shard', ...tables, 'rows', 'size', 'share', ''],
        figures.map((f) => [
          f.shard,
          ...tables.map((t) => String(f.rows[t] ?? 0)),
          String(f.total),
          formatBytes(f.bytes),
          formatPercent(all === 0 ? 0 : f.total / all),
          f.inMap ? '' : 'not in the map',
        ]),
        { right: [...tables.map((_, i) => i + 1), tables.length + 1, tables.length + 2, tables.length + 3] },
      ),
    );
    io.stdout.write(`\nskew ${skew.toFixed(2)} (largest shard / mean of the map's shards)\n`);
    if (reshard !== undefined && reshard.step !== 'done' && reshard.step !== 'aborted') {
      io.stdout.write(`reshard in progress: step ${reshard.step}, ${copyLine(reshard)}\n`);
    }
    return 0;
  } finally {
    await o.close();
  }
}

/** The reshard of the map recorded in the state store, if any. */
function reshardOf(flags: CommonFlags, o: Opened): Promise<ReshardStatus | undefined> {
  return readReshardStatus(o.state, flags.map);
}

function copyLine(s: ReshardStatus): string {
  const pct = s.rowsEstimated === 0 ? 1 : Math.min(1, s.rowsScanned / s.rowsEstimated);
  return `copied ${s.rowsCopied} rows (${formatPercent(pct)} scanned), ${s.changesApplied} changes applied`;
}

/** Bytes for people: `512 B`, `8.0 kB`, `1.5 MB`. */
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

// ---------------------------------------------------------------------------------------------
// reshard

function parseTables(specs: readonly string[]): Record<string, ReshardTableOptions> {
  if (specs.length === 0)
    throw new ConfigError('table', 'name at least one table as <name>:<shard key>[:<pk>,...]');
  const out: Record<string, ReshardTableOptions> = {};
  for (const spec of specs) {
    const [name, key, pk] = spec.split(':');
    if (!name || !key) throw new ConfigError('table', 'use <name>:<shard key>[:<primary key>,...]');
    out[name] = pk === undefined || pk === '' ? { key } : { key, primaryKey: pk.split(',') };
  }
  return out;
}

function targetStrategy(
  flags: ReshardFlags,
  from: ShardStrategy,
  shardIds: readonly ShardId[],
): ShardStrategy {
  if ((flags.to === undefined) === (flags.toFile === undefined)) {
    throw new ConfigError('to', 'give either --to <n> or --to-file <file>');
  }
  if (flags.toFile !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(resolve(flags.toFile), 'utf8'));
    } catch (err) {
      throw new ConfigError('to-file', 'cannot be read as JSON', { cause: err });
    }
    const strategy = validateStrategy(parsed, 'to-file');
    if (strategy.kind === 'time')
      throw new ConfigError('to-file', 'must be a hash, range or directory strategy');
    return strategy;
  }
  const n = integerOption(flags.to!, 'to', 1, 4_096);
  if (from.kind !== 'hash') {
    throw new ConfigError('to', 'only a hash map can be resharded by a shard count; use --to-file');
  }
  const spare = shardIds.filter((s) => !from.shards.includes(s));
  const shards = n <= from.shards.length ? from.shards.slice(0, n) : [...from.shards, ...spare].slice(0, n);
  if (shards.length < n) {
    throw new ConfigError(
      'shard',
      `${n} shards need ${n - from.shards.length} more --shard beyond the map's`,
    );
  }
  return hashStrategy({ shards, seed: from.seed });
}

async function runReshard(flags: ReshardFlags, io: CliIo): Promise<number> {
  const tables = parseTables(flags.table);
  const chunkSize = integerOption(flags.chunkSize, 'chunk-size', 1, 100_000);
  if (flags.until !== undefined && !RESHARD_STEPS.includes(flags.until as ReshardStep)) {
    throw new ConfigError('until', `must be one of ${RESHARD_STEPS.join(', ')}`);
  }
  const o = await open(flags);
  try {
    const active = await o.mapStore.active(flags.map);
    if (active === undefined)
      throw new ConfigError('map', `no shard map named "${flags.map}" in the state store`);
    const from = active.strategy as ShardStrategy;
    const drivers = Object.fromEntries([...o.shards].map(([id, e]) => [id, e.driver]));
    const urls = Object.fromEntries(
      [...o.shards].filter(([, e]) => /^postgres(ql)?:\/\//.test(e.spec)).map(([id, e]) => [id, e.spec]),
    );
    // A reshard in progress continues towards its own target, whatever --to says now.
    const current = await readReshardStatus(o.state, flags.map);
    const inProgress =
      current !== undefined && current.step !== 'done' && current.step !== 'aborted' ? current : undefined;
    const options: ReshardOptions = {
      name: flags.map,
      mapStore: o.mapStore,
      to: inProgress?.to ?? (flags.abort ? from : targetStrategy(flags, from, [...o.shards.keys()])),
      shards: drivers,
      tables,
      state: o.state,
      workDir: resolve(flags.workDir),
      chunkSize,
      lease: flags.lease,
      settle: flags.settle,
      ...(Object.keys(urls).length > 0 ? { capture: postgresReshardCapture({ urls }) } : {}),
    };
    if (flags.abort) {
      const status = await createReshard(options).abort();
      io.stdout.write(
        flags.json ? `${JSON.stringify(status, null, 2)}\n` : `reshard ${flags.map}: aborted\n`,
      );
      return 0;
    }
    if (flags.dryRun) {
      const plan = await createReshard(options).plan();
      io.stdout.write(flags.json ? `${JSON.stringify(plan, null, 2)}\n` : planText(plan));
      return 0;
    }
    const view = progressView(io);
    const reshard = createReshard({ ...options, onProgress: (p) => view.update(p) });
    let status: ReshardStatus;
    try {
      status = await reshard.run(flags.until === undefined ? {} : { until: flags.until as ReshardStep });
    } finally {
      view.stop();
    }
    io.stdout.write(flags.json ? `${JSON.stringify(status, null, 2)}\n` : statusText(status));
    return 0;
  } finally {
    await o.close();
  }
}

function planText(plan: ReshardPlan): string {
  const head =
    `dry run: nothing was changed\n` +
    `shard map ${plan.name}: ${plan.from.kind} over ${plan.from.shards.join(', ')} -> ` +
    `${plan.to.kind} over ${plan.to.shards.join(', ')}\n` +
    `${plan.moving} of ${plan.rows} rows move${plan.estimated ? ' (estimated from a sample)' : ''}\n\n`;
  if (plan.moves.length === 0) return `${head}no rows move\n`;
  return (
    head +
    renderTable(
      ['table', 'move', 'rows'],
      plan.moves.map((m) => [m.table, `${m.source} -> ${m.target}`, String(m.rows)]),
      { right: [2] },
    )
  );
}

function statusText(s: ReshardStatus): string {
  return `reshard ${s.name}: ${s.step}\n${renderFields([
    ['from', `${s.from.kind} over ${s.from.shards.join(', ')} (v${s.fromVersion})`],
    ['to', `${s.to.kind} over ${s.to.shards.join(', ')} (v${s.toVersion})`],
    ['rows scanned', `${s.rowsScanned} of ${s.rowsEstimated}`],
    ['rows copied', String(s.rowsCopied)],
    ['changes applied', String(s.changesApplied)],
    ['rows cleaned up', String(s.rowsCleaned)],
    ['longest write pause', s.longestPauseMs === undefined ? '-' : formatMs(s.longestPauseMs)],
  ])}`;
}

// ---------------------------------------------------------------------------------------------
// Progress

interface View {
  update(p: ReshardProgress): void;
  stop(): void;
}

function stepLine(p: ReshardProgress): string {
  switch (p.step) {
    case 'copy':
      return `copied ${p.rowsCopied} rows, scanned ${p.rowsScanned}/${p.rowsEstimated}`;
    case 'catchup':
      return `${p.changesApplied} changes applied`;
    case 'verify':
      return `${p.rowsVerified} rows verified`;
    case 'cutover':
      return p.pauseMs === undefined ? 'switching' : `writes paused ${formatMs(p.pauseMs)}`;
    case 'cleanup':
      return `${p.rowsCleaned} moved rows removed from their old shards`;
    default:
      return '';
  }
}

/** A progress bar of the copy on a terminal; otherwise a line per step and at most one every 5s. */
function progressView(io: CliIo): View {
  let lastStep: string | undefined;
  if (io.stdout.isTTY === true) {
    let bar: SingleBar | undefined;
    return {
      update(p) {
        if (p.step !== lastStep) {
          bar?.stop();
          bar = undefined;
          lastStep = p.step;
          if (p.step === 'copy') {
            bar = new SingleBar({
              format: 'copy {bar} {value}/{total} rows  {line}',
              stream: io.stdout,
              barsize: 24,
              hideCursor: true,
              clearOnComplete: false,
              fps: 5,
              barCompleteChar: '\u2588',
              barIncompleteChar: '\u2591',
            });
            bar.start(Math.max(1, p.rowsEstimated), 0, { line: '' });
          } else {
            io.stdout.write(`${p.step}\n`);
          }
        }
        bar?.update(Math.min(p.rowsScanned, Math.max(1, p.rowsEstimated)), { line: stepLine(p) });
        if (p.event === 'activated') io.stdout.write(`cutover: ${stepLine(p)}\n`);
      },
      stop() {
        bar?.stop();
      },
    };
  }
  let lastLine = 0;
  return {
    update(p) {
      const now = Date.now();
      if (p.step !== lastStep || now - lastLine >= 5_000 || p.event === 'activated') {
        lastStep = p.step;
        lastLine = now;
        const detail = stepLine(p);
        io.stdout.write(`${p.step}${detail === '' ? '' : `: ${detail}`}\n`);
      }
    },
    stop() {},
  };
}
