/**
 * The event store in a SQLite file: the embedded default. SQLite runs one write transaction at a
 * time, so positions commit in order and a reader never has to hold back.
 */
import type { Clock, TimerHandle } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ConfigError } from '../../core/errors.js';
import { type SqlFragment, type SqlTransaction, sql } from '../../core/sql.js';
import {
  type EventRowInput,
  type EventStoreEngine,
  type EventStoreOptions,
  type EventTables,
  resolveEventStoreOptions,
  SqlEventStore,
  type StreamRow,
  type StreamWrite,
} from '../../events/event-store.js';
import type { EventStore } from '../../events/types.js';
import type { SqliteDriver } from './sqlite-driver.js';

/** Options for `createSqliteEventStore`. */
export interface SqliteEventStoreOptions extends EventStoreOptions {
  /** The driver of the database file; the store never closes it. */
  driver: SqliteDriver;
  /** How often watchers look for events appended by other processes (default 250ms). */
  pollInterval?: Duration;
}

/**
 * Creates an event store in the driver's SQLite database; tables are created on first use (or
 * by `migrate()`). Throws `E_CONFIG` naming the option when an option is invalid.
 *
 * Appends take the file's write lock (`BEGIN IMMEDIATE`), so two processes appending to one
 * stream with the same expected version are decided by whoever locks first; the other gets
 * `E_VERSION_CONFLICT`. Watchers wake right after a commit through this driver, and within
 * `pollInterval` for appends by other processes.
 */
export function createSqliteEventStore(options: SqliteEventStoreOptions): EventStore {
  const opts = (options ?? {}) as SqliteEventStoreOptions;
  const d = opts.driver as Partial<SqliteDriver> | undefined;
  if (
    typeof d !== 'object' ||
    d === null ||
    typeof d.transaction !== 'function' ||
    typeof d.onCommit !== 'function' ||
    d.dialect?.name !== 'sqlite'
  ) {
    throw new ConfigError('driver', 'expected a SQLite driver from createSqliteDriver');
  }
  const pollMs = parseDuration(opts.pollInterval ?? '250ms', 'pollInterval', { allowZero: false });
  const { tables, clock } = resolveEventStoreOptions(opts);
  return new SqlEventStore(new SqliteEventEngine(opts.driver, tables, pollMs, clock), opts);
}

/** Rows per insert statement: 9 parameters each, well within SQLite's limit of 32,766. */
const INSERT_CHUNK = 200;

class SqliteEventEngine implements EventStoreEngine {
  readonly txColumn = undefined;
  readonly #events: SqlFragment;
  readonly #streams: SqlFragment;

  constructor(
    readonly driver: SqliteDriver,
    private readonly tables: EventTables,
    private readonly pollMs: number,
    private readonly clock: Clock,
  ) {
    this.#events = sql.id(tables.events);
    this.#streams = sql.id(tables.streams);
  }

  json(text: string): SqlFragment {
    return sql`${text}`;
  }

  async migrate(tx: SqlTransaction): Promise<void> {
    const { events, streams, snapshots } = this.tables;
    const q = (name: string) => `"${name}"`;
    await tx.exec(`
      CREATE TABLE IF NOT EXISTS ${q(events)} (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL,
        id TEXT NOT NULL,
        type TEXT NOT NULL,
        category TEXT NOT NULL,
        data TEXT NOT NULL,
        metadata TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        time INTEGER NOT NULL,
        CONSTRAINT ${q(`${events}_stream_version_unique`)} UNIQUE (stream, version),
        CONSTRAINT ${q(`${events}_id_unique`)} UNIQUE (id)
      );
      CREATE INDEX IF NOT EXISTS ${q(`${events}_by_type`)} ON ${q(events)} (type, position);
      CREATE INDEX IF NOT EXISTS ${q(`${events}_by_category`)} ON ${q(events)} (category, position);
      CREATE TABLE IF NOT EXISTS ${q(streams)} (
        stream TEXT PRIMARY KEY,
        version INTEGER NOT NULL DEFAULT 0,
        start_version INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        metadata TEXT NOT NULL DEFAULT '{}',
        updated_at INTEGER
      ) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS ${q(snapshots)} (
        stream TEXT NOT NULL,
        state_version INTEGER NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        time INTEGER NOT NULL,
        PRIMARY KEY (stream, state_version)
      ) WITHOUT ROWID;
    `);
  }

  async lockStreams(tx: SqlTransaction, streams: readonly string[]): Promise<Map<string, StreamRow>> {
    // The transaction already holds the file's write lock (BEGIN IMMEDIATE): reading is locking.
    const { rows } = await tx.query<{
      stream: string;
      version: number;
      start_version: number;
      deleted: number;
      metadata: string;
    }>(
      sql`select stream, version, start_version, deleted, metadata from ${this.#streams}
          where stream in (${sql.join(streams)})`,
    );
    const out = new Map<string, StreamRow>();
    for (const r of rows) {
      out.set(r.stream, {
        version: r.version,
        startVersion: r.start_version,
        deleted: r.deleted !== 0,
        metadata: {},
      });
    }
    return out;
  }

  async write(
    tx: SqlTransaction,
    rows: readonly EventRowInput[],
    streams: readonly StreamWrite[],
    now: number,
  ): Promise<number[]> {
    const positions: number[] = [];
    // Many rows per statement. One writer at a time: a statement's rows take increasing positions
    // in the order of its VALUES, whatever order RETURNING lists them in.
    for (let i = 0; i < rows.length; i += INSERT_CHUNK) {
      const chunk = rows.slice(i, i + INSERT_CHUNK);
      const values = sql.join(
        chunk.map(
          (r) =>
            sql`(${r.stream}, ${r.version}, ${r.id}, ${r.type}, ${r.category}, ${r.data}, ${r.metadata}, ${r.schemaVersion}, ${r.time})`,
        ),
      );
      const { rows: inserted } = await tx.query<{ position: number }>(
        sql`insert into ${this.#events} (stream, version, id, type, category, data, metadata, schema_version, time)
            values ${values} returning position`,
      );
      positions.push(...inserted.map((r) => r.position).sort((a, b) => a - b));
    }
    for (const s of streams) {
      await tx.query(
        sql`insert into ${this.#streams} (stream, version, start_version, deleted, updated_at)
            values (${s.stream}, ${s.version}, ${s.startVersion}, 0, ${now})
            on conflict (stream) do update set version = excluded.version,
              start_version = excluded.start_version, deleted = 0, updated_at = excluded.updated_at`,
      );
    }
    return positions;
  }

  async readBound(): Promise<number | undefined> {
    // One writer at a time: whatever a reader sees is a prefix of the committed positions.
    return undefined;
  }

  async head(): Promise<number> {
    const { rows } = await this.driver.query<{ head: number }>(
      sql`select coalesce(max(position), 0) as head from ${this.#events}`,
    );
    return rows[0]?.head ?? 0;
  }

  watch(wake: () => void): () => void {
    const stopCommits = this.driver.onCommit(wake);
    let stopped = false;
    let timer: TimerHandle | undefined;
    let seen: number | undefined;
    const check = async () => {
      timer = undefined;
      if (stopped) return;
      try {
        const head = await this.head();
        if (seen !== undefined && head > seen) wake();
        seen = Math.max(seen ?? 0, head);
      } catch {
        // A busy or closing file: the next round tries again; readers poll on their own too.
      }
      if (!stopped) timer = this.clock.setTimeout(() => void check(), this.pollMs);
    };
    void check();
    return () => {
      stopped = true;
      stopCommits();
      if (timer !== undefined) this.clock.clearTimeout(timer);
    };
  }

  appended(): void {
    // The driver's commit listeners and the store's own watchers already woke.
  }

  async close(): Promise<void> {}
}
