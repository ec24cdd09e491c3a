/**
 * Embedded read replicas: a SQLite file that applies one source's changes from a change log, in
 * log order (which is the source's commit order), and records how far it got in the same
 * transaction as the rows. It is the replica of the embedded default (SQLite primary, outbox
 * capture, relay, SQLite log), so that a replica set's consistency levels work with nothing
 * installed; `changeLogPosition()` is its position provider: a write's position is the outbox
 * sequence after it, a replica's position the outbox sequence of the last change it applied.
 */
import { backoffDelay, type RetryPolicy, retryPolicy } from '../../core/async.js';
import {
  assertSourceName,
  type ChangeLog,
  type LogEntry,
  parsePosition,
  stableJson,
} from '../../core/changes.js';
import { type Clock, systemClock, type TimerHandle } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ClosedError, ConfigError, isStrataError, StrataError, TimeoutError } from '../../core/errors.js';
import type { PositionProvider, PrimaryPosition, ReplicaPosition } from '../../core/positions.js';
import {
  assertIdentifier,
  configIdentifier,
  quoteIdentifierStandard,
  reportBackgroundError,
  type SqlExecutor,
  type SqlTransaction,
} from '../../core/sql.js';
import { createSqliteDriver, type SqliteDriver } from './sqlite-driver.js';

/** Options for `createSqliteReplica`. */
export interface SqliteReplicaOptions {
  /** The replica's file (created when missing); the replica opens and closes its own connections. */
  filename: string;
  /** The log to apply changes from. */
  log: ChangeLog;
  /** The source whose changes are applied (the capture's name); other sources' entries are skipped. */
  source: string;
  /** A label for messages and stats (default `sqlite-replica:<file name>`). */
  name?: string;
  /**
   * DDL that creates the replicated tables, run once, when the file is not a replica yet. The
   * tables need the primary's primary keys; constraints beyond them are best left out, since rows
   * arrive one change at a time.
   */
  schema?: string;
  /** Only changes of these tables are applied (default all); others still advance the position. */
  tables?: readonly string[];
  /** The table that records the replica's progress (default `_strata_replica`). */
  stateTable?: string;
  /** Most entries applied per transaction (default 500). */
  batchSize?: number;
  /** How often the log is read when its watch is silent (default 1s). */
  pollInterval?: Duration;
  /** Delays after a failed apply: from `initialDelay` (default 100ms) doubling up to `maxDelay` (default 30s). */
  retryBackoff?: { initialDelay?: Duration; maxDelay?: Duration };
  /** The source of time for polling and backoff (default the system clock). */
  clock?: Clock;
  /** Where failures of the apply loop go (default: a process warning); the loop keeps retrying. */
  onError?: (err: unknown) => void;
}

/** How far a replica got. */
export interface SqliteReplicaStatus {
  /** The log offset of the last entry applied or skipped (0: none). */
  offset: number;
  /** The outbox sequence of the source's last change applied (0: none). */
  position: bigint;
  /** When that change committed on the primary, epoch ms. */
  commitTime: number | undefined;
  /** Changes applied by this instance since it was created. */
  applied: number;
  /** `running` while the apply loop runs. */
  status: 'stopped' | 'running';
  lastErrorCode: string | undefined;
}

/** A SQLite replica fed from a change log. */
export interface SqliteReplica {
  /** The label given (default `sqlite-replica:<file name>`). */
  readonly name: string;
  /** The replica's file. */
  readonly filename: string;
  /** A read-only connection to the replica: give it to a replica set (`replicas: [{ name, driver }]`). */
  readonly driver: SqliteDriver;
  /** Starts applying; resolves once the loop runs. `E_CONFLICT` when it already runs. */
  start(): Promise<void>;
  /** Stops after the current batch; resolves once it is committed. Safe to call twice. */
  stop(): Promise<void>;
  /** Where the replica stands. */
  status(): Promise<SqliteReplicaStatus>;
  /**
   * Resolves once every entry up to `offset` (default: the log's head now) is applied; `E_TIMEOUT`
   * after `timeout` (default 10s).
   */
  caughtUp(options?: { offset?: number; timeout?: Duration }): Promise<void>;
  /** Stops and closes both connections; safe to call twice. */
  close(): Promise<void>;
}

const quote = quoteIdentifierStandard;

interface StateRow {
  source: string;
  log_offset: number;
  position_major: number | bigint | null;
  commit_time: number | null;
}

function stateDdl(table: string): string {
  return `CREATE TABLE IF NOT EXISTS ${quote(table)} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    source TEXT NOT NULL,
    log_offset INTEGER NOT NULL,
    position TEXT,
    position_major INTEGER,
    commit_time INTEGER,
    applied_at INTEGER
  )`;
}

/**
 * Opens (creating when missing) a replica file that applies `options.source`'s changes from
 * `options.log`; call `start()`. The first open runs `schema` and creates the state table in one
 * transaction. Throws `E_CONFIG` naming the option for invalid options (`schema` when its DDL
 * fails, `source` when the file replicates another source) and `E_CONNECTION` naming the file when
 * it cannot be opened.
 *
 * Entries are applied strictly in log order, a batch per transaction that also records the log
 * offset and the source position, so a restart resumes exactly after the last applied entry.
 * Inserts and updates are upserts on the change's key columns, deletes delete by key, messages
 * are skipped. A change that cannot be applied (a missing table) stops the replica at that entry
 * and is retried with backoff, never skipped: its lag grows and a replica set takes it out of the
 * rotation.
 */
export function createSqliteReplica(options: SqliteReplicaOptions): SqliteReplica {
  const o = (options ?? {}) as SqliteReplicaOptions;
  if (typeof o.filename !== 'string' || o.filename.length === 0 || o.filename === ':memory:') {
    throw new ConfigError('filename', 'a file path is required (an in-memory database cannot be shared)');
  }
  const log = o.log as Partial<ChangeLog> | null;
  if (
    typeof log !== 'object' ||
    log === null ||
    typeof log.read !== 'function' ||
    typeof log.watch !== 'function'
  ) {
    throw new ConfigError('log', 'expected a change log');
  }
  assertSourceName(o.source, 'source');
  if (o.schema !== undefined && typeof o.schema !== 'string')
    throw new ConfigError('schema', 'expected SQL text');
  let tables: ReadonlySet<string> | undefined;
  if (o.tables !== undefined) {
    if (!Array.isArray(o.tables)) throw new ConfigError('tables', 'expected an array of table names');
    tables = new Set(o.tables.map((t: unknown) => configIdentifier(t, 'tables')));
  }
  const stateTable = configIdentifier(o.stateTable ?? '_strata_replica', 'stateTable');
  const batchSize = o.batchSize ?? 500;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1)
    throw new ConfigError('batchSize', 'must be a positive integer');
  const pollMs = parseDuration(o.pollInterval ?? '1s', 'pollInterval', { allowZero: false });
  const backoff = retryPolicy(
    {
      initialDelay: o.retryBackoff?.initialDelay ?? '100ms',
      maxDelay: o.retryBackoff?.maxDelay ?? '30s',
      factor: 2,
      jitter: false,
    },
    'retryBackoff',
  );
  if (o.onError !== undefined && typeof o.onError !== 'function')
    throw new ConfigError('onError', 'expected a function');
  const base = o.filename.split(/[\\/]/).pop() ?? o.filename;
  const name = o.name ?? `sqlite-replica:${base}`;

  const writer = createSqliteDriver({ filename: o.filename, foreignKeys: false, name: `${name}:writer` });
  let offset: number;
  try {
    offset = initialise(writer, stateTable, o.source, o.schema);
  } catch (err) {
    void writer.close();
    throw err;
  }
  let reader: SqliteDriver;
  try {
    reader = createSqliteDriver({ filename: o.filename, readonly: true, name });
  } catch (err) {
    void writer.close();
    throw err;
  }
  return new SqliteReplicaImpl(name, o.filename, writer, reader, o.log, {
    source: o.source,
    tables,
    stateTable,
    batchSize,
    pollMs,
    backoff,
    clock: o.clock ?? systemClock,
    onError: o.onError ?? ((err) => reportBackgroundError(`${name} apply`, err)),
    offset,
  });
}

/** Creates the state table (and runs `schema`) on first open; returns the stored log offset. */
function initialise(
  writer: SqliteDriver,
  stateTable: string,
  source: string,
  schema: string | undefined,
): number {
  const db = writer.database;
  const exists = db.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?").all(stateTable);
  if (exists.length === 0) {
    db.exec('BEGIN IMMEDIATE');
    try {
      if (schema !== undefined) {
        try {
          db.exec(schema);
        } catch (err) {
          throw new ConfigError('schema', 'the replica schema failed to run', { cause: err });
        }
      }
      db.exec(stateDdl(stateTable));
      db.prepare(`INSERT INTO ${quote(stateTable)} (id, source, log_offset) VALUES (1, ?, 0)`).run(source);
      db.exec('COMMIT');
    } catch (err) {
      if (db.inTransaction) db.exec('ROLLBACK');
      throw err;
    }
  }
  const row = db.prepare(`SELECT source, log_offset FROM ${quote(stateTable)} WHERE id = 1`).all()[0] as
    | { source: string; log_offset: number }
    | undefined;
  if (row === undefined) {
    throw new StrataError('E_CORRUPT', `replica state table "${stateTable}" has no row`, {
      details: { table: stateTable },
    });
  }
  if (row.source !== source) {
    throw new ConfigError('source', 'the replica file replicates another source', {
      details: { table: stateTable },
    });
  }
  return Number(row.log_offset);
}

interface Settings {
  source: string;
  tables: ReadonlySet<string> | undefined;
  stateTable: string;
  batchSize: number;
  pollMs: number;
  backoff: RetryPolicy;
  clock: Clock;
  onError: (err: unknown) => void;
  offset: number;
}

/** One `start()` to `stop()` span. */
class Run {
  stopping = false;
  done: Promise<void> = Promise.resolve();
  stopped: Promise<void> | undefined;
  dirty = false;
  #resume: (() => void) | undefined;
  #wakeable = false;

  constructor(private readonly clock: Clock) {}

  /** Waits `ms`, or less when stopped or (if `wakeable`) when the log signals. */
  pause(ms: number, wakeable: boolean): Promise<void> {
    if (this.stopping || (wakeable && this.dirty)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      let handle: TimerHandle | undefined;
      const resume = () => {
        if (handle !== undefined) this.clock.clearTimeout(handle);
        this.#resume = undefined;
        resolve();
      };
      this.#resume = resume;
      this.#wakeable = wakeable;
      handle = this.clock.setTimeout(resume, ms);
    });
  }

  wake(): void {
    this.dirty = true;
    if (this.#wakeable) this.#resume?.();
  }

  stop(): void {
    this.stopping = true;
    this.#resume?.();
  }
}

function corrupt(entry: LogEntry, problem: string, cause?: unknown): StrataError {
  return new StrataError('E_CORRUPT', `a change cannot be applied to the replica: ${problem}`, {
    ...(cause === undefined ? {} : { cause }),
    details: { offset: entry.offset },
  });
}

function columnsOf(entry: LogEntry, row: Record<string, unknown>): string[] {
  const columns = Object.keys(row);
  for (const column of columns) {
    try {
      assertIdentifier(column);
    } catch (err) {
      throw corrupt(entry, 'a column name is not a plain SQL identifier', err);
    }
  }
  return columns;
}

/** Applies one change inside `tx`. */
async function applyChange(tx: SqlTransaction, entry: LogEntry): Promise<void> {
  if (entry.op === 'message') return;
  try {
    assertIdentifier(entry.table);
  } catch (err) {
    throw corrupt(entry, 'the table name is not a plain SQL identifier', err);
  }
  const table = quote(entry.table);
  const key = entry.key ?? {};
  const keyColumns = columnsOf(entry, key);
  if (keyColumns.length === 0) throw corrupt(entry, 'the change has no key');
  const deleteKey = async (values: Record<string, unknown>) => {
    const where = keyColumns.map((c) => `${quote(c)} = ?`).join(' AND ');
    await tx.query(
      `DELETE FROM ${table} WHERE ${where}`,
      keyColumns.map((c) => values[c]),
    );
  };
  if (entry.op === 'delete') {
    await deleteKey(key);
    return;
  }
  const row = entry.after;
  if (row === null || typeof row !== 'object') throw corrupt(entry, 'an insert or update without its row');
  if (entry.op === 'update' && entry.before !== null && typeof entry.before === 'object') {
    // A changed primary key: the row under the old key goes.
    const before = entry.before;
    if (keyColumns.some((c) => c in before && stableJson(before[c]) !== stableJson(key[c])))
      await deleteKey(before);
  }
  const columns = columnsOf(entry, { ...key, ...row });
  const values = columns.map((c) => (c in row ? row[c] : key[c]));
  const rest = columns.filter((c) => !keyColumns.includes(c));
  const conflict =
    rest.length === 0
      ? 'DO NOTHING'
      : `DO UPDATE SET ${rest.map((c) => `${quote(c)} = excluded.${quote(c)}`).join(', ')}`;
  await tx.query(
    `INSERT INTO ${table} (${columns.map(quote).join(', ')}) VALUES (${columns.map(() => '?').join(', ')}) ` +
      `ON CONFLICT (${keyColumns.map(quote).join(', ')}) ${conflict}`,
    values,
  );
}

class SqliteReplicaImpl implements SqliteReplica {
  readonly driver: SqliteDriver;
  #offset: number;
  #applied = 0;
  #lastErrorCode: string | undefined;
  #run: Run | undefined;
  #closed = false;
  #waiters: Array<{ offset: number; resolve: () => void }> = [];

  constructor(
    readonly name: string,
    readonly filename: string,
    private readonly writer: SqliteDriver,
    reader: SqliteDriver,
    private readonly log: ChangeLog,
    private readonly settings: Settings,
  ) {
    this.driver = reader;
    this.#offset = settings.offset;
  }

  async start(): Promise<void> {
    if (this.#closed) throw new ClosedError(this.name);
    if (this.#run !== undefined)
      throw new StrataError('E_CONFLICT', `replica ${this.name} is already running`);
    const run = new Run(this.settings.clock);
    this.#run = run;
    const unwatch = this.log.watch(() => run.wake());
    run.done = this.#loop(run).finally(unwatch);
  }

  stop(): Promise<void> {
    const run = this.#run;
    if (run === undefined) return Promise.resolve();
    if (run.stopped === undefined) {
      run.stop();
      run.stopped = run.done.then(() => {
        if (this.#run === run) this.#run = undefined;
      });
    }
    return run.stopped;
  }

  async status(): Promise<SqliteReplicaStatus> {
    const rows = await this.driver.query<StateRow>(
      `SELECT source, log_offset, position_major, commit_time FROM ${quote(this.settings.stateTable)} WHERE id = 1`,
    );
    const row = rows.rows[0];
    return {
      offset: Number(row?.log_offset ?? 0),
      position: BigInt(row?.position_major ?? 0),
      commitTime: row?.commit_time ?? undefined,
      applied: this.#applied,
      status: this.#run === undefined ? 'stopped' : 'running',
      lastErrorCode: this.#lastErrorCode,
    };
  }

  async caughtUp(options: { offset?: number; timeout?: Duration } = {}): Promise<void> {
    const timeoutMs = parseDuration(options.timeout ?? '10s', 'timeout');
    const target = options.offset ?? (await this.log.head());
    if (this.#offset >= target) return;
    await new Promise<void>((resolve, reject) => {
      const waiter = {
        offset: target,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new TimeoutError(`${this.name} catching up with the log`, timeoutMs));
      }, timeoutMs);
      timer.unref();
      this.#waiters.push(waiter);
    });
  }

  async #loop(run: Run): Promise<void> {
    const { batchSize, pollMs, backoff, onError } = this.settings;
    let failures = 0;
    const fail = (err: unknown) => {
      failures++;
      this.#lastErrorCode = isStrataError(err) ? err.code : err instanceof Error ? err.name : 'E_UNKNOWN';
      onError(err);
      return run.pause(backoffDelay(backoff, failures), false);
    };
    while (!run.stopping) {
      run.dirty = false;
      let entries: LogEntry[];
      try {
        entries = await this.log.read(this.#offset, batchSize);
      } catch (err) {
        if (isStrataError(err, 'E_CLOSED')) {
          onError(err);
          return;
        }
        await fail(err);
        continue;
      }
      if (entries.length === 0) {
        failures = 0;
        await run.pause(pollMs, true);
        continue;
      }
      try {
        await this.#apply(entries);
      } catch (err) {
        if (isStrataError(err, 'E_CLOSED')) {
          onError(err);
          return;
        }
        await fail(err);
        continue;
      }
      failures = 0;
    }
  }

  /**
   * Applies `entries` in one transaction. When one fails, the entries before it are applied in a
   * transaction of their own before the error is rethrown, so the replica stops right at it.
   */
  async #apply(entries: LogEntry[]): Promise<void> {
    let failedAt = -1;
    try {
      await this.#applyBatch(entries, (index) => {
        failedAt = index;
      });
    } catch (err) {
      if (failedAt > 0) await this.#applyBatch(entries.slice(0, failedAt), () => undefined);
      throw err;
    }
  }

  async #applyBatch(entries: LogEntry[], onFailure: (index: number) => void): Promise<void> {
    const { source, tables, stateTable } = this.settings;
    let applied = 0;
    await this.writer.transaction(async (tx) => {
      let last: LogEntry | undefined;
      for (const [index, entry] of entries.entries()) {
        if (entry.source !== source) continue;
        if (tables === undefined || tables.has(entry.table)) {
          try {
            await applyChange(tx, entry);
          } catch (err) {
            onFailure(index);
            throw err;
          }
          applied++;
        }
        last = entry;
      }
      const offset = entries.at(-1)!.offset;
      if (last === undefined) {
        await tx.query(`UPDATE ${quote(stateTable)} SET log_offset = ? WHERE id = 1`, [offset]);
        return;
      }
      let major: bigint;
      try {
        major = parsePosition(last.position).major;
      } catch (err) {
        throw corrupt(last, 'its position is not a position token', err);
      }
      await tx.query(
        `UPDATE ${quote(stateTable)} SET log_offset = ?, position = ?, position_major = ?, commit_time = ?, ` +
          'applied_at = ? WHERE id = 1',
        [offset, last.position, major, last.commitTime, this.settings.clock.now()],
      );
    });
    this.#offset = entries.at(-1)!.offset;
    this.#applied += applied;
    this.#waiters = this.#waiters.filter((w) => {
      if (w.offset > this.#offset) return true;
      w.resolve();
      return false;
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.stop();
    await this.driver.close();
    await this.writer.close();
  }
}

/** Options for `changeLogPosition`. */
export interface ChangeLogPositionOptions {
  /** The primary's outbox table (default `_strata_outbox`). */
  outboxTable?: string;
  /** The replicas' state table (default `_strata_replica`). */
  stateTable?: string;
}

/**
 * The position provider of SQLite replicas fed from a change log: a write's position is the
 * primary's outbox sequence after it (SQLite's `sqlite_sequence`, which outlives acknowledged
 * rows), a replica's the outbox sequence of the last change it applied, and lag is counted in
 * changes. Throws `E_CONFIG` naming the option for an invalid table name.
 */
export function changeLogPosition(options: ChangeLogPositionOptions = {}): PositionProvider {
  const outbox = configIdentifier(options.outboxTable ?? '_strata_outbox', 'outboxTable');
  const state = configIdentifier(options.stateTable ?? '_strata_replica', 'stateTable');
  const outboxSequence = async (primary: SqlExecutor): Promise<bigint> => {
    try {
      const result = await primary.query<{ seq: number | bigint }>(
        'SELECT seq FROM sqlite_sequence WHERE name = ?',
        [outbox],
      );
      return BigInt(result.rows[0]?.seq ?? 0);
    } catch (err) {
      if (isStrataError(err, 'E_QUERY') && err.details.table === 'sqlite_sequence') return 0n;
      throw err;
    }
  };
  return Object.freeze({
    kind: 'change-log',
    unit: 'changes' as const,
    afterWrite: outboxSequence,
    async primary(primary: SqlExecutor): Promise<PrimaryPosition> {
      return { position: await outboxSequence(primary) };
    },
    async replica(replica: SqlExecutor): Promise<ReplicaPosition> {
      let rows: Array<{ position_major: number | bigint | null; commit_time: number | null }>;
      try {
        rows = (
          await replica.query<{ position_major: number | bigint | null; commit_time: number | null }>(
            `SELECT position_major, commit_time FROM ${quote(state)} WHERE id = 1`,
          )
        ).rows;
      } catch (err) {
        // A file without the state table is not a replica.
        if (isStrataError(err, 'E_QUERY') && err.details.table === state) return { position: undefined };
        throw err;
      }
      const row = rows[0];
      if (row === undefined) return { position: undefined };
      // Its data is at most as old as the last change it applied: an upper bound of its
      // staleness while it is behind (the monitor ignores it for a replica that is caught up).
      const behindMs =
        row.commit_time === null ? undefined : Math.max(0, Date.now() - Number(row.commit_time));
      return { position: BigInt(row.position_major ?? 0), behindMs };
    },
    format: (position: bigint) => position.toString(),
    parse(text: string): bigint {
      if (typeof text === 'string' && /^\d{1,20}$/.test(text)) return BigInt(text);
      return parsePosition(text).major;
    },
  });
}
