/** `strata events tail`: the event store's global log, printed live. */
import type { Command } from 'commander';
import { ConfigError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import type { EventStore, RecordedEvent } from '../events/types.js';
import { waitFor } from './changes.js';
import { defaultStore, openStore } from './endpoints.js';
import type { CliIo } from './output.js';

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
