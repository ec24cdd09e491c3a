/**
 * `strata events tail` (the event store's global log, live), `strata projections status` (each
 * projection's checkpoint and lag behind the store's head) and `strata projections rebuild NAME`
 * (a rebuild into a shadow table, swapped in when caught up, with a progress bar).
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { createSqlCheckpointStore } from '../changes/sql-checkpoint-store.js';
import { ConfigError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import type { Projection } from '../cqrs/projection.js';
import type { EventStore, RecordedEvent } from '../events/types.js';
import { waitFor } from './changes.js';
import { defaultStore, openStore } from './endpoints.js';
import { type CliIo, renderTable } from './output.js';

interface StoreFlags {
  dataDir: string;
  store?: string;
  prefix: string;
}

interface TailFlags extends StoreFlags {
  from: string;
  limit?: string;
  type: string[];
  stream?: string;
  poll: string;
  json?: boolean;
}

const collect = (value: string, previous: string[]) => [...previous, value];

/** Adds the options every event-store command shares. */
export function storeOptions(command: Command): Command {
  return command
    .option('--data-dir <dir>', 'data directory of the app started with `strata start`', './data')
    .option(
      '--store <spec>',
      'the event store: sqlite:<file> or a postgres:// URL (default: the app database)',
    )
    .option('--prefix <prefix>', 'the event store table prefix', 'strata');
}

/** Opens the event store a command names; closes the driver with the store. */
export async function openEventStore(
  flags: StoreFlags,
  io: CliIo,
): Promise<{ store: EventStore; driver: SqlDriver; close(): Promise<void> }> {
  const driver = await openStore(flags.store ?? defaultStore(flags.dataDir, io.env), 'store');
  let store: EventStore;
  try {
    if (driver.dialect.name === 'postgres') {
      const { createPostgresEventStore } = await import('../backends/postgres/postgres-event-store.js');
      store = createPostgresEventStore({ driver: driver as never, tablePrefix: flags.prefix });
    } else {
      const { createSqliteEventStore } = await import('../backends/sqlite/sqlite-event-store.js');
      store = createSqliteEventStore({ driver: driver as never, tablePrefix: flags.prefix });
    }
  } catch (err) {
    await driver.close();
    throw err;
  }
  return {
    store,
    driver,
    async close() {
      await store.close();
      await driver.close();
    },
  };
}

/** Registers the `events` command group on `program`. */
export function registerEvents(program: Command, io: CliIo): void {
  const events = program.command('events').description('The event store: its global log, live.');
  storeOptions(
    events
      .command('tail')
      .description('Print events of the global log as they are committed, in order (Ctrl-C stops).'),
  )
    .option('--from <where>', 'start at "end" (only new events), "beginning", or after a position', 'end')
    .option('--type <type>', 'only events of this type (repeat for several)', collect, [] as string[])
    .option('--stream <id>', 'only events of this stream')
    .option('--limit <n>', 'stop after this many events')
    .option('--poll <ms>', 'how often to look for new events when nothing wakes us', '500')
    .option('--json', 'one JSON object per event')
    .action(async (flags: TailFlags) => {
      process.exitCode = await runTail(flags, io);
    });
}

interface StatusFlags extends StoreFlags {
  json?: boolean;
}

interface RebuildFlags extends StoreFlags {
  module?: string;
  batchSize: string;
  restart?: boolean;
}

/** Registers the `projections` command group on `program`. */
export function registerProjections(program: Command, io: CliIo): void {
  const projections = program
    .command('projections')
    .description('Read models built from the event store: their checkpoints, lag and rebuilds.');
  storeOptions(
    projections
      .command('status')
      .description("List each projection's consumer: checkpoint, the store's head, lag and dead letters."),
  )
    .option('--json', 'print JSON')
    .action(async (flags: StatusFlags) => {
      process.exitCode = await runStatus(flags, io);
    });
  storeOptions(
    projections
      .command('rebuild')
      .description(
        'Rebuild a projection from position 0 into shadow tables and swap them in once caught up; readers keep the old tables until the swap. Resumes an interrupted rebuild.',
      )
      .argument('<name>', 'the projection to rebuild'),
  )
    .option(
      '--module <file>',
      "a module exporting the projections (`projections`, an array, or a default array); default: the reference app's",
    )
    .option('--batch-size <n>', 'events per batch', '500')
    .option('--restart', 'start from position 0 even when an interrupted rebuild could resume')
    .action(async (name: string, flags: RebuildFlags) => {
      process.exitCode = await runRebuild(name, flags, io);
    });
}

async function runStatus(flags: StatusFlags, io: CliIo): Promise<number> {
  const opened = await openEventStore(flags, io);
  try {
    await opened.store.migrate();
    const head = await opened.store.head();
    const checkpoints = createSqlCheckpointStore(opened.driver);
    await checkpoints.migrate();
    const now = Date.now();
    const rows = (await checkpoints.consumers())
      .filter((c) => c.consumer.startsWith('projection.'))
      .map((c) => {
        const position = c.checkpoint?.offset ?? 0;
        return {
          projection: c.consumer.slice('projection.'.length),
          consumer: c.consumer,
          position,
          head,
          lag: Math.max(0, head - position),
          owner: c.lease !== undefined && c.lease.expiresAt > now ? c.lease.owner : undefined,
          deadLetters: c.deadLetters,
          updatedAt: c.checkpoint?.updatedAt,
        };
      });
    if (flags.json) {
      io.stdout.write(`${JSON.stringify({ head, projections: rows }, null, 2)}\n`);
      return 0;
    }
    io.stdout.write(`event store ${opened.store.name}: head ${head}\n`);
    if (rows.length === 0) {
      io.stdout.write('no asynchronous projection has a checkpoint yet\n');
      return 0;
    }
    io.stdout.write(
      renderTable(
        ['projection', 'position', 'lag', 'owner', 'dead letters', 'updated'],
        rows.map((r) => [
          r.projection,
          String(r.position),
          String(r.lag),
          r.owner ?? '-',
          String(r.deadLetters),
          r.updatedAt === undefined ? '-' : new Date(r.updatedAt).toISOString(),
        ]),
        { right: [1, 2, 4] },
      ),
    );
    return 0;
  } finally {
    await opened.close();
  }
}

/** The projections of `--module`, or of the reference app when none is given. */
async function loadProjections(modulePath: string | undefined): Promise<readonly Projection[]> {
  let exported: unknown;
  if (modulePath === undefined) {
    const app = (await import('../../examples/social/index.js')) as { socialProjections?: () => unknown };
    exported = app.socialProjections?.();
  } else {
    let mod: Record<string, unknown>;
    try {
      mod = (await import(pathToFileURL(resolve(modulePath)).href)) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError('module', `cannot load ${resolve(modulePath)}`, { cause: err });
    }
    exported = mod.projections ?? mod.default;
  }
  if (!Array.isArray(exported)) {
    throw new ConfigError(
      'module',
      'must export `projections` (or a default export): an array of projections',
    );
  }
  return exported as Projection[];
}

async function runRebuild(name: string, flags: RebuildFlags, io: CliIo): Promise<number> {
  const batchSize = nonNegative(flags.batchSize, 'batch-size');
  if (batchSize === undefined || batchSize < 1 || batchSize > 10_000) {
    throw new ConfigError('batch-size', 'must be an integer from 1 to 10000');
  }
  const projections = await loadProjections(flags.module);
  const projection = projections.find((p) => p.name === name);
  if (projection === undefined) {
    throw new ConfigError(
      'name',
      `no projection named "${name}"; known: ${projections.map((p) => p.name).join(', ') || 'none'}`,
    );
  }
  const { rebuildProjection } = await import('../cqrs/rebuild.js');
  const opened = await openEventStore(flags, io);
  const bar =
    io.stdout.isTTY === true
      ? new SingleBar({
          format: `${name} {bar} {value}/{total} positions  {line}`,
          stream: io.stdout,
          barsize: 24,
          hideCursor: true,
          clearOnComplete: false,
          fps: 5,
        })
      : undefined;
  let started = false;
  let lastLine = 0;
  try {
    await opened.store.migrate();
    const checkpoints = createSqlCheckpointStore(opened.driver);
    await checkpoints.migrate();
    const result = await rebuildProjection({
      projection,
      store: opened.store,
      driver: opened.driver,
      batchSize,
      checkpoints,
      ...(flags.restart ? { restart: true } : {}),
      onProgress: (p) => {
        if (bar !== undefined) {
          if (!started) bar.start(Math.max(1, p.head), 0, { line: '' });
          started = true;
          bar.setTotal(Math.max(1, p.head));
          bar.update(Math.min(p.position, Math.max(1, p.head)), { line: `${p.phase}, ${p.applied} events` });
        } else if (p.phase === 'swap' || Date.now() - lastLine > 5_000) {
          lastLine = Date.now();
          io.stdout.write(`${p.phase}: position ${p.position} of ${p.head}, ${p.applied} events applied\n`);
        }
      },
    });
    bar?.stop();
    io.stdout.write(
      `rebuilt ${result.projection}: ${result.applied} events applied up to position ${result.position}` +
        `${result.resumedFrom > 0 ? ` (resumed from ${result.resumedFrom})` : ''}, swapped in after ${result.swapAttempts} attempt(s)\n`,
    );
    return 0;
  } finally {
    bar?.stop();
    await opened.close();
  }
}

function nonNegative(value: string | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new ConfigError(option, 'must be a non-negative integer');
  return n;
}

function formatEvent(e: RecordedEvent): string {
  const when = new Date(e.time).toISOString().slice(11, 23);
  const data = JSON.stringify(e.data);
  const short = data.length > 100 ? `${data.slice(0, 97)}...` : data;
  return `${String(e.position).padStart(8)}  ${when}  ${e.stream}@${e.version}  ${e.type}  ${short}\n`;
}

async function runTail(flags: TailFlags, io: CliIo): Promise<number> {
  const limit = nonNegative(flags.limit, 'limit');
  const pollMs = nonNegative(flags.poll, 'poll') ?? 500;
  let after: number | undefined;
  if (flags.from !== 'end' && flags.from !== 'beginning') after = nonNegative(flags.from, 'from');
  const opened = await openEventStore(flags, io);
  const { store } = opened;
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let wake: (() => void) | undefined;
  let unwatch: (() => void) | undefined;
  try {
    await store.migrate();
    if (after === undefined) after = flags.from === 'beginning' ? 0 : await store.head();
    if (!flags.json) io.stderr.write(`tailing ${store.name} after position ${after}\n`);
    unwatch = store.watch(() => wake?.());
    const types = flags.type.length > 0 ? { types: flags.type } : undefined;
    let printed = 0;
    while (!stop.signal.aborted && (limit === undefined || printed < limit)) {
      const batch = await store.readAll(after, 500, types);
      for (const e of batch) {
        after = e.position;
        if (flags.stream !== undefined && e.stream !== flags.stream) continue;
        if (limit !== undefined && printed >= limit) break;
        io.stdout.write(flags.json ? `${JSON.stringify(e)}\n` : formatEvent(e));
        printed++;
      }
      if (batch.length === 0) {
        await waitFor(pollMs, stop.signal, (resolve) => {
          wake = resolve;
        });
      }
    }
  } finally {
    unwatch?.();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await opened.close();
  }
  return 0;
}
