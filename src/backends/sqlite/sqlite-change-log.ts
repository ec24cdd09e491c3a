/**
 * The embedded change log: a table in a SQLite file, the default log when nothing else runs.
 * Several log instances, in one process or several, may open the same file.
 */
import { realpathSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import {
  type AppendResult,
  type Change,
  type ChangeLog,
  comparePositions,
  deserializeChange,
  type LogEntry,
  type Position,
  parsePosition,
  type ReadOptions,
  serializeChange,
} from '../../core/changes.js';
import { type Clock, systemClock, type TimerHandle } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  StrataError,
  ValidationError,
  type ValidationIssue,
} from '../../core/errors.js';
import { configIdentifier, quoteIdentifierStandard, reportBackgroundError } from '../../core/sql.js';
import { createSqliteDriver, type SqliteDriver } from './sqlite-driver.js';

/** Options for `createSqliteChangeLog`. */
export interface SqliteChangeLogOptions {
  /** The log's file; the log opens and closes its own connection. Required unless `driver` is given. */
  filename?: string;
  /** A driver the caller opened and will close; the log's tables go into its database. Not with `filename`. */
  driver?: SqliteDriver;
  /** A label for messages, metrics and the dashboard (default `sqlite-log:<file name>`). */
  name?: string;
  /** The entries table; `<table>_sources` holds the last position per source (default `_strata_log`). */
  table?: string;
  /** How often watchers check for entries appended by other processes (default 250ms). */
  pollInterval?: Duration;
  /**
   * The `synchronous` pragma of a log that opens its own file (default `normal`: an append that
   * resolved survives a process crash; `full` also survives power loss, at a cost per append).
   */
  synchronous?: 'normal' | 'full';
  /** How long an append waits for another process's write lock (default 5s). */
  busyTimeout?: Duration;
  /** The source of time for watcher polling (default the system clock). */
  clock?: Clock;
}

/** A change log in a SQLite file. */
export interface SqliteChangeLog extends ChangeLog {
  /** The database file, or `:memory:`. */
  readonly filename: string;
  /**
   * Deletes entries with an offset below `beforeOffset` (retention) and returns how many went;
   * offsets are never reused and `head()` does not move.
   */
  truncate(beforeOffset: number): Promise<number>;
}

/**
 * One connection per file in this process, shared by every log that opens it: two connections of
 * one thread would wait on each other's write lock (better-sqlite3 waits synchronously), so logs
 * of one process take turns on one connection instead. `logs` are woken after each append.
 */
interface SharedFile {
  readonly driver: SqliteDriver;
  readonly logs: Set<SqliteChangeLogImpl>;
  /** Logs that opened the file themselves; the connection closes when the last one closes. */
  owners: number;
}

/** Shared files by canonical path; a caller's driver is keyed by itself. */
const sharedFiles = new Map<string, SharedFile>();
const sharedDrivers = new WeakMap<SqliteDriver, SharedFile>();

const OPERATIONS: ReadonlySet<string> = new Set(['insert', 'update', 'delete', 'message']);
const quote = quoteIdentifierStandard;

/**
 * Opens (creating when missing) a change log in a SQLite file, in WAL mode; an append is durable
 * when it resolves (see `synchronous`). Throws `E_CONFIG` naming the option when an option is
 * invalid, and `E_CONNECTION` naming the file when it cannot be opened.
 *
 * Log instances of this process that open the same file share one connection (the first one's
 * `synchronous` and `busyTimeout` apply) and wake each other's watchers right after an append;
 * other processes' appends are noticed by polling `head()` every `pollInterval` while a watcher
 * exists. Give a log the caller's driver only when no log of this process opens that file by name.
 */
export function createSqliteChangeLog(options: SqliteChangeLogOptions): SqliteChangeLog {
  const opts = (options ?? {}) as SqliteChangeLogOptions;
  const table = configIdentifier(opts.table ?? '_strata_log', 'table');
  const pollMs = parseDuration(opts.pollInterval ?? '250ms', 'pollInterval', { allowZero: false });
  if (opts.name !== undefined && (typeof opts.name !== 'string' || opts.name.length === 0)) {
    throw new ConfigError('name', 'must be a non-empty string');
  }
  const synchronous = opts.synchronous ?? 'normal';
  if (synchronous !== 'normal' && synchronous !== 'full') {
    throw new ConfigError('synchronous', 'must be normal or full');
  }
  let file: SharedFile;
  let path: string | undefined;
  if (opts.driver !== undefined) {
    if (opts.filename !== undefined) {
      throw new ConfigError('filename', 'give either filename or driver, not both');
    }
    if (opts.synchronous !== undefined) {
      throw new ConfigError('synchronous', "set it on the driver's options when giving a driver");
    }
    if (opts.busyTimeout !== undefined) {
      throw new ConfigError('busyTimeout', "set it on the driver's options when giving a driver");
    }
    const d = opts.driver as Partial<SqliteDriver> | null;
    if (
      d === null ||
      typeof d !== 'object' ||
      typeof d.transaction !== 'function' ||
      typeof d.filename !== 'string'
    ) {
      throw new ConfigError('driver', 'expected a SQLite driver from createSqliteDriver');
    }
    const driver = opts.driver;
    file = sharedDrivers.get(driver) ?? { driver, logs: new Set(), owners: 0 };
    sharedDrivers.set(driver, file);
  } else {
    if (typeof opts.filename !== 'string' || opts.filename.length === 0) {
      throw new ConfigError('filename', 'a file path (or ":memory:") is required unless driver is given');
    }
    const busyTimeout = opts.busyTimeout ?? '5s';
    parseDuration(busyTimeout, 'busyTimeout');
    path = canonicalPath(opts.filename);
    const existing = path === undefined ? undefined : sharedFiles.get(path);
    if (existing !== undefined) file = existing;
    else {
      const driver = createSqliteDriver({
        filename: opts.filename,
        synchronous,
        busyTimeout,
        name: `sqlite-log:${basename(opts.filename)}`,
      });
      file = { driver, logs: new Set(), owners: 0 };
      if (path !== undefined) sharedFiles.set(path, file);
    }
    file.owners++;
  }
  const driver = file.driver;
  const name =
    opts.name ?? `sqlite-log:${driver.filename === ':memory:' ? 'memory' : basename(driver.filename)}`;
  return new SqliteChangeLogImpl(file, path, name, table, pollMs, opts.clock ?? systemClock);
}

/** The file's path with its directory's symbolic links resolved; undefined for `:memory:`. */
function canonicalPath(filename: string): string | undefined {
  if (filename === ':memory:') return undefined;
  const full = resolve(filename);
  try {
    return join(realpathSync(dirname(full)), basename(full));
  } catch {
    // A missing directory: opening fails next, naming it.
    return full;
  }
}

function badArgument(path: string, message: string, subject: string): ValidationError {
  return new ValidationError([{ path: [path], message }], { subject });
}

function checkChange(change: Change, index: number): ValidationIssue[] {
  if (change === null || typeof change !== 'object') return [{ path: [index], message: 'expected a change' }];
  const issues: ValidationIssue[] = [];
  if (typeof change.table !== 'string' || change.table.length === 0) {
    issues.push({ path: [index, 'table'], message: 'expected a non-empty string' });
  }
  if (!OPERATIONS.has(change.op)) {
    issues.push({ path: [index, 'op'], message: 'expected insert, update, delete or message' });
  }
  return issues;
}

class SqliteChangeLogImpl implements SqliteChangeLog {
  readonly filename: string;
  readonly #entries: string;
  readonly #sources: string;
  readonly #file: SharedFile;
  readonly #driver: SqliteDriver;
  readonly #listeners = new Set<() => void>();
  #ready: Promise<void> | undefined;
  #closed = false;
  #notifyScheduled = false;
  /** The highest offset watchers were told about (or that was current when watching began). */
  #seen = 0;
  #poll: TimerHandle | undefined;
  /** Bumped whenever polling starts or stops, so a check of an earlier round does not reschedule. */
  #pollRound = 0;

  constructor(
    file: SharedFile,
    private readonly path: string | undefined,
    readonly name: string,
    private readonly table: string,
    private readonly pollMs: number,
    private readonly clock: Clock,
  ) {
    this.#file = file;
    this.#driver = file.driver;
    this.filename = file.driver.filename;
    this.#entries = quote(table);
    this.#sources = quote(`${table}_sources`);
    file.logs.add(this);
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError(this.name);
  }

  /** Creates the tables once; a failure is retried by the next call. */
  #init(): Promise<void> {
    this.#ready ??= this.#driver
      .transaction(async (tx) => {
        await tx.exec(`
          CREATE TABLE IF NOT EXISTS ${this.#entries} (
            "offset" INTEGER PRIMARY KEY AUTOINCREMENT,
            source TEXT NOT NULL,
            position TEXT NOT NULL,
            table_name TEXT NOT NULL,
            op TEXT NOT NULL,
            payload TEXT NOT NULL
          );
          CREATE INDEX IF NOT EXISTS ${quote(`${this.table}_by_table`)} ON ${this.#entries} (table_name, "offset");
          CREATE TABLE IF NOT EXISTS ${this.#sources} (
            source TEXT PRIMARY KEY,
            position TEXT NOT NULL
          ) WITHOUT ROWID;
        `);
      })
      .catch((err: unknown) => {
        this.#ready = undefined;
        throw err;
      });
    return this.#ready;
  }

  async #headNow(): Promise<number> {
    const result = await this.#driver.query<{ seq: number }>(
      'SELECT seq FROM sqlite_sequence WHERE name = ?',
      [this.table],
    );
    return result.rows[0]?.seq ?? 0;
  }

  async append(changes: readonly Change[]): Promise<AppendResult> {
    this.#assertOpen();
    if (!Array.isArray(changes)) {
      throw badArgument('changes', 'expected an array of changes', 'append arguments');
    }
    const issues = changes.flatMap(checkChange);
    if (issues.length > 0) throw new ValidationError(issues, { subject: 'changes' });
    for (const change of changes) {
      if (parsePosition(change.position).source !== change.source) {
        throw new StrataError(
          'E_POSITION',
          "invalid position: it belongs to another source than the change's",
        );
      }
    }
    await this.#init();
    if (changes.length === 0) return { appended: 0, duplicates: 0, lastOffset: await this.#headNow() };
    const result = await this.#driver.transaction(
      async (tx) => {
        const last = new Map<string, string | undefined>();
        let appended = 0;
        let duplicates = 0;
        for (const change of changes) {
          if (!last.has(change.source)) {
            const found = await tx.query<{ position: string }>(
              `SELECT position FROM ${this.#sources} WHERE source = ?`,
              [change.source],
            );
            last.set(change.source, found.rows[0]?.position);
          }
          const previous = last.get(change.source);
          if (previous !== undefined && comparePositions(change.position, previous) <= 0) {
            duplicates++;
            continue;
          }
          const { offset: _offset, ...stored } = change as LogEntry;
          await tx.query(
            `INSERT INTO ${this.#entries} (source, position, table_name, op, payload) VALUES (?, ?, ?, ?, ?)`,
            [change.source, change.position, change.table, change.op, serializeChange(stored)],
          );
          last.set(change.source, change.position);
          appended++;
        }
        if (appended > 0) {
          for (const [source, position] of last) {
            if (position === undefined) continue;
            await tx.query(
              `INSERT INTO ${this.#sources} (source, position) VALUES (?, ?) ` +
                'ON CONFLICT (source) DO UPDATE SET position = excluded.position',
              [source, position],
            );
          }
        }
        const head = await tx.query<{ seq: number }>('SELECT seq FROM sqlite_sequence WHERE name = ?', [
          this.table,
        ]);
        return { appended, duplicates, lastOffset: head.rows[0]?.seq ?? 0 };
      },
      { retry: true },
    );
    if (result.appended > 0) {
      for (const log of this.#file.logs) if (log.table === this.table) log.#appended(result.lastOffset);
    }
    return result;
  }

  async read(after: number, limit: number, options: ReadOptions = {}): Promise<LogEntry[]> {
    this.#assertOpen();
    if (!Number.isSafeInteger(after) || after < 0) {
      throw badArgument('after', 'expected a non-negative integer', 'read arguments');
    }
    if (!Number.isSafeInteger(limit) || limit < 1) {
      throw badArgument('limit', 'expected a positive integer', 'read arguments');
    }
    const tables = options.tables;
    if (tables !== undefined && (!Array.isArray(tables) || tables.some((t) => typeof t !== 'string'))) {
      throw badArgument('tables', 'expected an array of table names', 'read arguments');
    }
    await this.#init();
    let rows: Array<{ offset: number; payload: string }>;
    const select = `SELECT "offset", payload FROM ${this.#entries}`;
    if (tables === undefined) {
      rows = (
        await this.#driver.query(`${select} WHERE "offset" > ? ORDER BY "offset" LIMIT ?`, [after, limit])
      ).rows as typeof rows;
    } else {
      // One index range scan per table, merged: each stops after `limit` rows, however far apart
      // the tables' entries lie in the log.
      rows = [];
      for (const table of new Set(tables)) {
        const part = await this.#driver.query<{ offset: number; payload: string }>(
          `${select} WHERE table_name = ? AND "offset" > ? ORDER BY "offset" LIMIT ?`,
          [table, after, limit],
        );
        rows.push(...part.rows);
      }
      rows.sort((a, b) => a.offset - b.offset);
      rows.length = Math.min(rows.length, limit);
    }
    return rows.map((row) => ({ ...deserializeChange<Change>(row.payload), offset: row.offset }));
  }

  async head(): Promise<number> {
    this.#assertOpen();
    await this.#init();
    return this.#headNow();
  }

  async lastPosition(source: string): Promise<Position | undefined> {
    this.#assertOpen();
    if (typeof source !== 'string') {
      throw badArgument('source', 'expected a string', 'lastPosition arguments');
    }
    await this.#init();
    const found = await this.#driver.query<{ position: Position }>(
      `SELECT position FROM ${this.#sources} WHERE source = ?`,
      [source],
    );
    return found.rows[0]?.position;
  }

  async truncate(beforeOffset: number): Promise<number> {
    this.#assertOpen();
    if (!Number.isSafeInteger(beforeOffset) || beforeOffset < 0) {
      throw badArgument('beforeOffset', 'expected a non-negative integer', 'truncate arguments');
    }
    await this.#init();
    const result = await this.#driver.query(`DELETE FROM ${this.#entries} WHERE "offset" < ?`, [
      beforeOffset,
    ]);
    return result.rowCount;
  }

  watch(listener: () => void): () => void {
    this.#assertOpen();
    if (typeof listener !== 'function') throw new ConfigError('listener', 'expected a function');
    const entry = () => listener();
    this.#listeners.add(entry);
    if (this.#listeners.size === 1) this.#startPolling();
    return () => {
      this.#listeners.delete(entry);
      if (this.#listeners.size === 0) this.#stopPolling();
    };
  }

  /** Called by the appending log of this process, right after its transaction committed. */
  #appended(lastOffset: number): void {
    if (this.#closed || this.#listeners.size === 0) return;
    if (lastOffset > this.#seen) this.#seen = lastOffset;
    this.#notify();
  }

  /** Calls every listener once for a burst of appends, after the current task. */
  #notify(): void {
    if (this.#notifyScheduled) return;
    this.#notifyScheduled = true;
    setImmediate(() => {
      this.#notifyScheduled = false;
      if (this.#closed) return;
      for (const listener of this.#listeners) {
        try {
          listener();
        } catch (err) {
          reportBackgroundError(`${this.name} watcher`, err);
        }
      }
    });
  }

  #startPolling(): void {
    const round = ++this.#pollRound;
    const current = () => round === this.#pollRound && !this.#closed;
    let first = true;
    const check = async () => {
      this.#poll = undefined;
      if (!current()) return;
      try {
        await this.#init();
        const head = await this.#headNow();
        if (first) this.#seen = Math.max(this.#seen, head);
        else if (head > this.#seen) {
          this.#seen = head;
          this.#notify();
        }
        first = false;
      } catch {
        // A busy or closing database: the next round tries again; readers poll on their own too.
      }
      if (current()) this.#poll = this.clock.setTimeout(() => void check(), this.pollMs);
    };
    void check();
  }

  #stopPolling(): void {
    this.#pollRound++;
    if (this.#poll !== undefined) this.clock.clearTimeout(this.#poll);
    this.#poll = undefined;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopPolling();
    this.#listeners.clear();
    const file = this.#file;
    file.logs.delete(this);
    if (this.path === undefined && file.owners === 0) return;
    file.owners--;
    if (file.owners > 0) return;
    if (this.path !== undefined && sharedFiles.get(this.path) === file) sharedFiles.delete(this.path);
    // The driver lets a running append finish before its connection goes.
    await file.driver.close();
  }
}
