/**
 * `strata verify --from A --to B --table T [--repair]`: compares a table in two stores chunk by
 * chunk (the reconcile tool), lists every mismatching key, and with `--repair` makes B equal to A
 * (after printing the plan; `--dry-run` stops there). Exits 1 while differences remain.
 */
import { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { type ReconcileKey, type ReconcileProgress, reconcile, repair } from '../changes/reconcile.js';
import { ConfigError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import { openStore } from './endpoints.js';
import { type CliIo, EXIT_FAILURE, renderFields } from './output.js';

interface VerifyFlags {
  from: string;
  to: string;
  table: string;
  targetTable?: string;
  key?: string;
  columns?: string;
  chunkSize: string;
  repair?: boolean;
  dryRun?: boolean;
  show: string;
  json?: boolean;
}

/** Registers `strata verify` on `program`. */
export function registerVerify(program: Command, io: CliIo): void {
  program
    .command('verify')
    .description(
      'Compare a table in two stores (SQLite or PostgreSQL, same or different engines) chunk by chunk with hashes, ' +
        'list every missing, extra and different key, and with --repair make the --to store equal to --from. ' +
        'Exits 0 when the tables match (or were repaired), 1 while differences remain.',
    )
    .requiredOption('--from <store>', 'the reference store: sqlite:<file> or a postgres:// URL')
    .requiredOption('--to <store>', 'the store compared against it (and repaired with --repair)')
    .requiredOption('--table <name>', 'the table to compare')
    .option('--target-table <name>', 'the table on --to, when its name differs')
    .option('--key <columns>', 'comma-separated key columns (default: the primary key)')
    .option('--columns <columns>', 'comma-separated columns to compare (default: all)')
    .option('--chunk-size <rows>', 'rows per chunk', '10000')
    .option('--repair', 'make --to equal to --from for every mismatching key')
    .option('--dry-run', 'with --repair: print the plan, change nothing')
    .option('--show <n>', 'list at most this many keys of each kind', '20')
    .option('--json', 'print the report as JSON')
    .action(async (flags: VerifyFlags) => {
      process.exitCode = await runVerify(flags, io);
    });
}

function list(value: string | undefined): string[] | undefined {
  return value === undefined
    ? undefined
    : value
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0);
}

function count(value: string, option: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(option, 'must be a positive integer');
  return n;
}

function progressReporter(io: CliIo): { update(p: ReconcileProgress): void; stop(): void } {
  if (io.stdout.isTTY === true) {
    let bar: SingleBar | undefined;
    return {
      update(p) {
        if (bar === undefined) {
          bar = new SingleBar({
            format: 'verify {bar} {value}/{total} chunks  {rows} rows  {mismatches} mismatches',
            stream: io.stdout,
            barsize: 24,
            hideCursor: true,
            fps: 5,
            barCompleteChar: '\u2588',
            barIncompleteChar: '\u2591',
          });
          bar.start(p.chunksTotal ?? p.chunksDone, 0, { rows: 0, mismatches: 0 });
        }
        if (p.chunksTotal !== undefined && p.chunksTotal > bar.getTotal()) bar.setTotal(p.chunksTotal);
        if (p.chunksDone > bar.getTotal()) bar.setTotal(p.chunksDone);
        bar.update(p.chunksDone, { rows: p.rowsCompared, mismatches: p.mismatches });
      },
      stop() {
        bar?.stop();
      },
    };
  }
  let last = 0;
  return {
    update(p) {
      const now = Date.now();
      if (now - last < 2_000) return;
      last = now;
      io.stdout.write(
        `verify: ${p.chunksDone}${p.chunksTotal === undefined ? '' : `/${p.chunksTotal}`} chunks, ${p.rowsCompared} rows, ${p.mismatches} mismatches\n`,
      );
    },
    stop() {},
  };
}

const keyText = (k: ReconcileKey) =>
  JSON.stringify(k, (_key, v) =>
    typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? '<bytes>' : v,
  );

async function runVerify(flags: VerifyFlags, io: CliIo): Promise<number> {
  const chunkSize = count(flags.chunkSize, 'chunk-size');
  const show = count(flags.show, 'show');
  if (flags.dryRun && !flags.repair) throw new ConfigError('dry-run', 'only applies together with --repair');
  const stores: SqlDriver[] = [];
  try {
    const from = await openStore(flags.from, 'from');
    stores.push(from);
    const to = await openStore(flags.to, 'to');
    stores.push(to);
    const progress = flags.json ? undefined : progressReporter(io);
    const key = list(flags.key);
    const columns = list(flags.columns);
    const report = await reconcile({
      source: { driver: from, table: flags.table },
      target: { driver: to, table: flags.targetTable ?? flags.table },
      chunkSize,
      ...(key ? { key } : {}),
      ...(columns ? { columns } : {}),
      onProgress: (p) => progress?.update(p),
      ...(flags.repair ? { plan: 'source' as const } : {}),
    });
    progress?.stop();
    const m = report.mismatches;
    let repaired: Awaited<ReturnType<typeof repair>> | undefined;
    if (flags.repair && !report.clean)
      repaired = await repair(report, { from: 'source', dryRun: flags.dryRun === true });
    if (flags.json) {
      io.stdout.write(
        `${JSON.stringify({ report, repair: repaired ?? null }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`,
      );
    } else {
      io.stdout.write(
        `\n${report.clean ? 'tables match' : 'tables differ'}: ${report.source.table} on ${report.source.driver} vs ${report.target.table} on ${report.target.driver}\n`,
      );
      io.stdout.write(
        renderFields([
          ['rows', `${report.rowsSource} in --from, ${report.rowsTarget} in --to`],
          [
            'chunks',
            `${report.chunks} compared, ${report.chunksMismatched} differed (hashed in ${report.hashing === 'database' ? 'the database' : 'node'})`,
          ],
          ['missing in --to', String(m.missing.length)],
          ['extra in --to', String(m.extra.length)],
          ['different', String(m.different.length)],
          ['took', `${(report.durationMs / 1000).toFixed(2)}s`],
        ]),
      );
      const sample = (title: string, keys: string[]) => {
        if (keys.length === 0) return;
        io.stdout.write(
          `${title}:\n${keys
            .slice(0, show)
            .map((k) => `  ${k}\n`)
            .join('')}`,
        );
        if (keys.length > show) io.stdout.write(`  ... and ${keys.length - show} more\n`);
      };
      sample('missing in --to', m.missing.map(keyText));
      sample('extra in --to', m.extra.map(keyText));
      sample(
        'different',
        m.different.map((d) => `${keyText(d.key)} columns ${d.columns.join(', ')}`),
      );
      if (report.truncated)
        io.stdout.write('stopped listing after the mismatch limit; run verify again after a repair\n');
      if (repaired !== undefined) {
        const p = repaired.plan;
        io.stdout.write(
          repaired.dryRun
            ? `repair plan (dry run, nothing changed): insert ${p.insert.length}, update ${p.update.length}, delete ${p.delete.length}\n`
            : `repaired --to: inserted ${repaired.inserted}, updated ${repaired.updated}, deleted ${repaired.deleted}\n`,
        );
      }
    }
    if (report.clean) return 0;
    return repaired !== undefined && !repaired.dryRun && repaired.plan.complete ? 0 : EXIT_FAILURE;
  } finally {
    for (const store of stores) await store.close();
  }
}
