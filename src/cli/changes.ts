/** `strata changes tail` and `strata changes consumers`: the change log and its consumers, live. */
import type { Command } from 'commander';
import { createSqlCheckpointStore } from '../changes/sql-checkpoint-store.js';
import type { ChangeLog, LogEntry } from '../core/changes.js';
import { ConfigError } from '../core/errors.js';
import { defaultLog, defaultStore, openLog, openStore } from './endpoints.js';
import { type CliIo, renderTable } from './output.js';

interface TailFlags {
  dataDir: string;
  log?: string;
  from: string;
  limit?: string;
  json?: boolean;
  poll: string;
}

interface ConsumersFlags {
  dataDir: string;
  database?: string;
  log?: string;
  json?: boolean;
  deadLetters?: string;
}

/** Registers the `changes` command group on `program`. */
export function registerChanges(program: Command, io: CliIo): void {
  const changes = program
    .command('changes')
    .description(
      'The change log: tail it live, list its consumers with their positions, lag and dead letters.',
    );

  changes
    .command('tail')
    .description('Print changes from the log as they arrive (Ctrl-C stops); optionally only some tables.')
    .argument('[tables...]', 'only changes of these tables')
    .option('--data-dir <dir>', 'data directory of the app started with `strata start`', './data')
    .option('--log <spec>', 'the log: sqlite:<file>, nats://host:port#stream or redis://host:port#prefix')
    .option('--from <where>', 'start at "end" (only new changes), "beginning", or after an offset', 'end')
    .option('--limit <n>', 'stop after this many changes')
    .option('--poll <ms>', 'how often to look for new changes when the log does not wake us', '200')
    .option('--json', 'one JSON object per change')
    .action(async (tables: string[], flags: TailFlags) => {
      process.exitCode = await runTail(tables, flags, io);
    });

  changes
    .command('consumers')
    .description('List consumers: checkpoint, log head, lag, lease owner and dead letters.')
    .option('--data-dir <dir>', 'data directory of the app started with `strata start`', './data')
    .option('--database <spec>', 'where checkpoints are kept: sqlite:<file> or a postgres:// URL')
    .option('--log <spec>', 'the log, to compute lag against its head')
    .option('--dead-letters <consumer>', 'list the dead letters of one consumer instead')
    .option('--json', 'print JSON')
    .action(async (flags: ConsumersFlags) => {
      process.exitCode = await runConsumers(flags, io);
    });
}

function positiveInt(value: string | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new ConfigError(option, 'must be a non-negative integer');
  return n;
}

function formatEntry(e: LogEntry): string {
  const when = new Date(e.commitTime).toISOString().slice(11, 23);
  const row = e.op === 'delete' ? e.before : e.after;
  const preview =
    row === null ? '' : JSON.stringify(row, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
  const short = preview.length > 100 ? `${preview.slice(0, 97)}...` : preview;
  return `${String(e.offset).padStart(8)}  ${when}  ${e.op.padEnd(7)} ${e.table} ${JSON.stringify(e.key)}  ${short}\n`;
}

async function runTail(tables: string[], flags: TailFlags, io: CliIo): Promise<number> {
  const limit = positiveInt(flags.limit, 'limit');
  const pollMs = positiveInt(flags.poll, 'poll') ?? 200;
  const log = await openLog(flags.log ?? (await defaultLog(flags.dataDir, io.env)));
  let after: number;
  if (flags.from === 'end') after = await log.head();
  else if (flags.from === 'beginning') after = 0;
  else after = positiveInt(flags.from, 'from') ?? 0;
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  if (!flags.json) {
    io.stderr.write(
      `tailing ${log.name}${tables.length > 0 ? ` (${tables.join(', ')})` : ''} after offset ${after}\n`,
    );
  }
  let printed = 0;
  let wake: (() => void) | undefined;
  const unwatch = log.watch(() => wake?.());
  try {
    while (!stop.signal.aborted && (limit === undefined || printed < limit)) {
      const batch = await log.read(after, 500, tables.length > 0 ? { tables } : undefined);
      for (const e of batch) {
        if (limit !== undefined && printed >= limit) break;
        io.stdout.write(json(flags.json, e));
        printed++;
        after = e.offset;
      }
      if (batch.length === 0) {
        const head = await log.head();
        if (head > after && tables.length > 0) after = head;
        await waitFor(pollMs, stop.signal, (resolve) => {
          wake = resolve;
        });
      }
    }
  } finally {
    unwatch();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await log.close();
  }
  return 0;
}

function json(asJson: boolean | undefined, e: LogEntry): string {
  if (!asJson) return formatEntry(e);
  return `${JSON.stringify(e, (_k, v) => (typeof v === 'bigint' ? v.toString() : v instanceof Uint8Array ? Buffer.from(v).toString('base64') : v))}\n`;
}

/** Waits `ms`, or until `signal` aborts, or until the function handed to `onWake` is called. */
export function waitFor(
  ms: number,
  signal: AbortSignal,
  onWake: (resolve: () => void) => void,
): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    onWake(done);
  });
}

async function runConsumers(flags: ConsumersFlags, io: CliIo): Promise<number> {
  const store = await openStore(flags.database ?? defaultStore(flags.dataDir, io.env), 'database');
  let log: ChangeLog | undefined;
  try {
    const checkpoints = createSqlCheckpointStore(store);
    await checkpoints.migrate();
    if (flags.deadLetters !== undefined) {
      const letters = await checkpoints.deadLetters(flags.deadLetters, 1_000);
      if (flags.json)
        io.stdout.write(
          `${JSON.stringify(letters, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`,
        );
      else if (letters.length === 0) io.stdout.write(`no dead letters for ${flags.deadLetters}\n`);
      else
        io.stdout.write(
          renderTable(
            ['offset', 'table', 'key', 'attempts', 'error', 'failed at'],
            letters.map((l) => [
              String(l.offset),
              l.table,
              JSON.stringify(l.key),
              String(l.attempts),
              `${l.errorCode}: ${l.errorMessage}`,
              new Date(l.failedAt).toISOString(),
            ]),
            { right: [0, 3] },
          ),
        );
      return 0;
    }
    // Projections follow the event store, not the change log: `strata projections status` lists them.
    const consumers = (await checkpoints.consumers()).filter((c) => !c.consumer.startsWith('projection.'));
    let head: number | undefined;
    try {
      log = await openLog(flags.log ?? (await defaultLog(flags.dataDir, io.env)));
      head = await log.head();
    } catch {
      head = undefined;
    }
    const now = Date.now();
    const rows = consumers.map((c) => ({
      consumer: c.consumer,
      checkpoint: c.checkpoint?.offset ?? 0,
      head,
      lag: head === undefined ? undefined : Math.max(0, head - (c.checkpoint?.offset ?? 0)),
      owner: c.lease !== undefined && c.lease.expiresAt > now ? c.lease.owner : undefined,
      epoch: c.lease?.epoch,
      deadLetters: c.deadLetters,
      updatedAt: c.checkpoint?.updatedAt,
    }));
    if (flags.json) {
      io.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
      return 0;
    }
    if (rows.length === 0) {
      io.stdout.write('no consumers have checkpoints yet\n');
      return 0;
    }
    io.stdout.write(
      renderTable(
        ['consumer', 'checkpoint', 'head', 'lag', 'dead letters', 'lease owner', 'updated'],
        rows.map((r) => [
          r.consumer,
          String(r.checkpoint),
          r.head === undefined ? '-' : String(r.head),
          r.lag === undefined ? '-' : String(r.lag),
          String(r.deadLetters),
          r.owner ?? '-',
          r.updatedAt === undefined ? '-' : new Date(r.updatedAt).toISOString(),
        ]),
        { right: [1, 2, 3, 4] },
      ),
    );
    return 0;
  } finally {
    await log?.close();
    await store.close();
  }
}
