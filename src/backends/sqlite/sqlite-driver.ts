import { AsyncLocalStorage } from 'node:async_hooks';
import { basename, dirname } from 'node:path';
import Database from 'better-sqlite3';
import { Mutex, retry } from '../../core/async.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ClosedError, ConfigError, ConnectionError, StrataError } from '../../core/errors.js';
import {
  AfterCommitHooks,
  compileSql,
  isRetryableTransactionError,
  isSqlFragment,
  type QueryResult,
  type Row,
  reportBackgroundError,
  type SqlDriver,
  type SqlFragment,
  type SqlTransaction,
  type TransactionOptions,
  transactionRetryPolicy,
} from '../../core/sql.js';
import { sqliteDialect } from './sqlite-dialect.js';
import { toSqliteError } from './sqlite-errors.js';

/** The parts of a better-sqlite3 statement strata calls. */
export interface SqliteStatementLike {
  readonly reader: boolean;
  /** False for a statement that writes (better-sqlite3); a writer with RETURNING is also a reader. */
  readonly readonly?: boolean;
  /** Return integers as BigInt (better-sqlite3); strata turns safe ones back into numbers. */
  safeIntegers?(toggle?: boolean): unknown;
  all(...params: unknown[]): unknown[];
  run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint };
}

/** The parts of a better-sqlite3 `Database` strata calls, so a user can hand over their own. */
export interface SqliteDatabaseLike {
  readonly open: boolean;
  readonly inTransaction: boolean;
  readonly memory: boolean;
  prepare(source: string): SqliteStatementLike;
  exec(source: string): unknown;
  pragma(source: string, options?: { simple?: boolean }): unknown;
  close(): unknown;
}

/** Options for `createSqliteDriver`. */
export interface SqliteDriverOptions {
  /** A file path, or `':memory:'` for a private in-memory database. Required unless `database` is given. */
  filename?: string;
  /** A better-sqlite3 database the caller opened and will close; strata only sets pragmas it is asked to. */
  database?: SqliteDatabaseLike;
  /** A label for messages and the dashboard (default `sqlite:<file name>`). */
  name?: string;
  /** How long a statement waits for another process's lock before failing (default 5s). */
  busyTimeout?: Duration;
  /** The `synchronous` pragma (default `normal`, which is durable across process crashes in WAL mode). */
  synchronous?: 'off' | 'normal' | 'full' | 'extra';
  /** Enforce foreign keys (default true). */
  foreignKeys?: boolean;
  /** Open the file read-only (default false). */
  readonly?: boolean;
  /** How many prepared statements to keep (default 256). */
  statementCacheSize?: number;
  /**
   * How long a call waits for the connection while a transaction of this driver holds it, before
   * failing with `E_TIMEOUT` (default 30s).
   */
  lockTimeout?: Duration;
  /** Where errors of after-commit hooks go (default: a process warning). */
  onBackgroundError?: (err: unknown) => void;
}

/** A SQLite database through better-sqlite3, with the `SqlDriver` contract. */
export interface SqliteDriver extends SqlDriver {
  /** The file path, or `:memory:`. */
  readonly filename: string;
  /** The underlying better-sqlite3 database, for what strata does not wrap. */
  readonly database: SqliteDatabaseLike;
  /**
   * Calls `listener` after each commit through this driver (a write transaction, or a write
   * statement outside one), so change capture in this process can wake at once instead of
   * polling. Returns a function that removes the listener. Writes by other processes do not call it.
   */
  onCommit(listener: () => void): () => void;
}

type Params = readonly unknown[] | undefined;

const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** True when some value is not directly bindable (the common case, all plain, skips a copy). */
function needsConversion(values: readonly unknown[]): boolean {
  for (const v of values) {
    const t = typeof v;
    if (t !== 'string' && t !== 'number' && t !== 'bigint' && v !== null) return true;
  }
  return false;
}

/** Converts a JavaScript value into something SQLite can bind. */
function toSqliteValue(value: unknown): unknown {
  if (value === undefined || value === null) return null;
  if (typeof value === 'boolean') return value ? 1 : 0;
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array) return Buffer.isBuffer(value) ? value : Buffer.from(value);
  if (typeof value === 'object') return JSON.stringify(value);
  return value;
}

/**
 * Opens a SQLite database (WAL mode, busy timeout, foreign keys on) and returns a driver.
 * Throws `E_CONFIG` for invalid options and `E_CONNECTION` naming the file when it cannot be
 * opened or written.
 *
 * One connection serves the driver. Transactions hold it exclusively: other calls wait until
 * the transaction settles, so work from different callers never interleaves inside one.
 */
export function createSqliteDriver(options: SqliteDriverOptions | string): SqliteDriver {
  const opts: SqliteDriverOptions = typeof options === 'string' ? { filename: options } : options;
  const busyTimeoutMs = parseDuration(opts.busyTimeout ?? '5s', 'busyTimeout');
  const cacheSize = opts.statementCacheSize ?? 256;
  if (!Number.isInteger(cacheSize) || cacheSize < 0) {
    throw new ConfigError('statementCacheSize', 'must be a non-negative integer');
  }
  const synchronous = opts.synchronous ?? 'normal';
  if (!['off', 'normal', 'full', 'extra'].includes(synchronous)) {
    throw new ConfigError('synchronous', 'must be one of off, normal, full, extra');
  }
  const lockTimeoutMs = parseDuration(opts.lockTimeout ?? '30s', 'lockTimeout', {
    allowZero: false,
    allowInfinite: true,
  });
  let db: SqliteDatabaseLike;
  let filename: string;
  const owned = opts.database === undefined;
  if (opts.database !== undefined) {
    // Pragmas are the owner's business on a database strata did not open; refuse rather than ignore.
    for (const option of ['busyTimeout', 'synchronous', 'foreignKeys', 'readonly'] as const) {
      if (opts[option] !== undefined) {
        throw new ConfigError(option, 'cannot be combined with database; set it on your own connection');
      }
    }
    db = opts.database;
    filename = db.memory ? ':memory:' : (opts.filename ?? 'external');
  } else {
    if (typeof opts.filename !== 'string' || opts.filename.length === 0) {
      throw new ConfigError('filename', 'a file path or ":memory:" is required');
    }
    filename = opts.filename;
    db = openDatabase(filename, {
      busyTimeoutMs,
      synchronous,
      foreignKeys: opts.foreignKeys ?? true,
      readonly: opts.readonly ?? false,
    });
  }
  const name = opts.name ?? `sqlite:${filename === ':memory:' ? 'memory' : basename(filename)}`;
  return new SqliteDriverImpl(db, filename, name, owned, cacheSize, lockTimeoutMs, opts.onBackgroundError);
}

function openDatabase(
  filename: string,
  o: { busyTimeoutMs: number; synchronous: string; foreignKeys: boolean; readonly: boolean },
): SqliteDatabaseLike {
  const endpoint = { backend: 'sqlite', host: filename };
  let db: Database.Database | undefined;
  try {
    db = new Database(filename, { readonly: o.readonly, timeout: o.busyTimeoutMs });
    if (filename !== ':memory:' && !o.readonly) db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${o.synchronous}`);
    db.pragma(`foreign_keys = ${o.foreignKeys ? 'ON' : 'OFF'}`);
    // Touch the file so an unwritable directory fails here, not at the first write.
    if (!o.readonly) db.exec('BEGIN IMMEDIATE; COMMIT');
    return db as unknown as SqliteDatabaseLike;
  } catch (err) {
    db?.close();
    const code = (err as { code?: unknown }).code;
    const reason =
      code === 'SQLITE_CANTOPEN' || /directory does not exist/.test(String((err as Error).message))
        ? `cannot open the file (does the directory ${dirname(filename)} exist and is it writable?)`
        : code === 'SQLITE_READONLY'
          ? `the file or its directory ${dirname(filename)} is read-only`
          : code === 'SQLITE_NOTADB'
            ? 'the file is not a SQLite database'
            : 'cannot open the database';
    throw new ConnectionError(endpoint, reason, { cause: err, details: { filename } });
  }
}

/** Marks the async context of a running top-level transaction, to catch self-deadlocks. */
interface TransactionScope {
  driver: SqliteDriverImpl;
  active: boolean;
}
const scope = new AsyncLocalStorage<TransactionScope>();

class SqliteDriverImpl implements SqliteDriver {
  readonly dialect = sqliteDialect;
  readonly #statements = new Map<string, SqliteStatementLike>();
  readonly #lock = new Mutex();
  readonly #onBackgroundError: (err: unknown) => void;
  readonly #commitListeners = new Set<() => void>();
  #commitScheduled = false;
  #closed = false;

  constructor(
    readonly database: SqliteDatabaseLike,
    readonly filename: string,
    readonly name: string,
    private readonly owned: boolean,
    private readonly cacheSize: number,
    private readonly lockTimeoutMs: number,
    onBackgroundError: ((err: unknown) => void) | undefined,
  ) {
    this.#onBackgroundError =
      onBackgroundError ?? ((err) => reportBackgroundError(`${name} after-commit hook`, err));
  }

  get closed(): boolean {
    return this.#closed;
  }

  onCommit(listener: () => void): () => void {
    this.#commitListeners.add(listener);
    return () => this.#commitListeners.delete(listener);
  }

  /** Tells commit listeners, once per burst of commits, after the current task. */
  #committed(): void {
    if (this.#commitListeners.size === 0 || this.#commitScheduled) return;
    this.#commitScheduled = true;
    queueMicrotask(() => {
      this.#commitScheduled = false;
      for (const listener of this.#commitListeners) {
        try {
          listener();
        } catch (err) {
          this.#onBackgroundError(err);
        }
      }
    });
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError(this.name);
  }

  #prepare(text: string): SqliteStatementLike {
    let stmt = this.#statements.get(text);
    if (stmt !== undefined) return stmt;
    stmt = this.database.prepare(text);
    // Integers come back exact: BigInt from the engine, numbers again where that loses nothing.
    if (stmt.reader) stmt.safeIntegers?.(true);
    if (this.cacheSize > 0) {
      // First in, first out: statements of an application are a small stable set, and not
      // reordering on every hit keeps the hot path to one Map lookup.
      if (this.#statements.size >= this.cacheSize) {
        this.#statements.delete(this.#statements.keys().next().value as string);
      }
      this.#statements.set(text, stmt);
    }
    return stmt;
  }

  /** Runs one statement on the connection right now (the caller holds or does not need the lock). */
  runNow<R>(statement: SqlFragment | string, params: Params): QueryResult<R> {
    let text: string;
    let values: readonly unknown[];
    if (isSqlFragment(statement)) {
      const compiled = compileSql(statement, sqliteDialect);
      text = compiled.text;
      values = compiled.params;
    } else {
      text = statement;
      values = params ?? [];
    }
    try {
      const stmt = this.#prepare(text);
      const bound = needsConversion(values) ? values.map(toSqliteValue) : values;
      if (stmt.reader) {
        const rows = stmt.all(...bound) as Record<string, unknown>[];
        for (const row of rows) {
          for (const column in row) {
            const v = row[column];
            if (typeof v === 'bigint' && v >= MIN_SAFE && v <= MAX_SAFE) row[column] = Number(v);
          }
        }
        // A write with RETURNING reads rows too: it commits like any other write.
        if (stmt.readonly === false && !this.database.inTransaction) this.#committed();
        return { rows: rows as R[], rowCount: rows.length };
      }
      const info = stmt.run(...bound);
      if (!this.database.inTransaction) this.#committed();
      return { rows: [], rowCount: info.changes };
    } catch (err) {
      throw toSqliteError(err);
    }
  }

  execNow(script: string): void {
    try {
      this.database.exec(script);
    } catch (err) {
      throw toSqliteError(err);
    }
  }

  query<R = Row>(statement: SqlFragment | string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    try {
      this.#assertOpen();
      // Fast path: nobody holds the connection, run synchronously without queueing.
      if (!this.#lock.locked) return Promise.resolve(this.runNow<R>(statement, params));
    } catch (err) {
      return Promise.reject(err);
    }
    const deadlock = this.#selfDeadlock();
    if (deadlock) return Promise.reject(deadlock);
    return this.#lock.run(
      () => {
        this.#assertOpen();
        return this.runNow<R>(statement, params);
      },
      this.lockTimeoutMs,
      `${this.name} waiting for a running transaction`,
    );
  }

  /**
   * Calling the driver instead of the transaction handle from inside a running transaction would
   * wait for the connection that transaction holds, forever. Say so instead of hanging.
   */
  #selfDeadlock(): StrataError | undefined {
    const current = scope.getStore();
    if (current?.driver !== this || !current.active) return undefined;
    return new StrataError(
      'E_TRANSACTION',
      `${this.name} was called inside its own transaction; use the transaction handle passed to the callback`,
    );
  }

  exec(script: string): Promise<void> {
    const deadlock = this.#selfDeadlock();
    if (deadlock) return Promise.reject(deadlock);
    return this.#lock.run(
      () => {
        this.#assertOpen();
        this.execNow(script);
        if (!this.database.inTransaction) this.#committed();
      },
      this.lockTimeoutMs,
      `${this.name} waiting for a running transaction`,
    );
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
    this.#assertOpen();
    if (
      options.isolation !== undefined &&
      !sqliteDialect.capabilities.isolationLevels.includes(options.isolation)
    ) {
      throw new ConfigError(
        'isolation',
        'must be one of read uncommitted, read committed, repeatable read, serializable',
      );
    }
    const deadlock = this.#selfDeadlock();
    if (deadlock) throw deadlock;
    const policy = transactionRetryPolicy(options.retry);
    const once = async () => {
      const { result, hooks } = await this.#lock.run(
        () => this.#runTopLevel(fn, options),
        this.lockTimeoutMs,
        `${this.name} waiting for a running transaction`,
      );
      // After the connection is released, so a hook may use the driver again.
      await hooks.run(this.#onBackgroundError);
      return result;
    };
    if (policy === undefined) return once();
    return retry(once, policy, isRetryableTransactionError);
  }

  async #runTopLevel<T>(
    fn: (tx: SqlTransaction) => Promise<T>,
    options: TransactionOptions,
  ): Promise<{ result: T; hooks: AfterCommitHooks }> {
    this.#assertOpen();
    // IMMEDIATE takes the write lock up front, so two writers never deadlock upgrading a read lock.
    this.execNow(options.readOnly ? 'BEGIN DEFERRED' : 'BEGIN IMMEDIATE');
    // SQLite has no read-only transactions; query_only refuses writes for the transaction's span.
    if (options.readOnly) this.execNow('PRAGMA query_only = ON');
    const hooks = new AfterCommitHooks();
    const tx = new SqliteTransaction(this, 1, (hook) => hooks.add(hook));
    const txScope: TransactionScope = { driver: this, active: true };
    let result: T;
    try {
      result = await scope.run(txScope, () => fn(tx));
      tx.finish();
      txScope.active = false;
      this.execNow('COMMIT');
      if (!options.readOnly) this.#committed();
    } catch (err) {
      tx.finish();
      txScope.active = false;
      if (this.database.inTransaction) {
        try {
          this.execNow('ROLLBACK');
        } catch {
          // The engine already rolled back (for example after SQLITE_FULL); nothing left to undo.
        }
      }
      throw err;
    } finally {
      if (options.readOnly) this.execNow('PRAGMA query_only = OFF');
    }
    return { result, hooks };
  }

  async ping(): Promise<void> {
    await this.query('select 1');
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    // Let a running transaction finish (for at most the lock timeout) before the connection goes away.
    await this.#lock.run(() => {
      this.#closed = true;
      this.#statements.clear();
      if (this.owned && this.database.open) this.database.close();
    });
  }
}

/** The transactions whose savepoint slot an enclosing savepoint callback holds. */
const savepointScope = new AsyncLocalStorage<ReadonlySet<SqliteTransaction>>();

class SqliteTransaction implements SqlTransaction {
  readonly dialect = sqliteDialect;
  readonly #savepoints = new Mutex();
  #done = false;

  constructor(
    private readonly driver: SqliteDriverImpl,
    readonly depth: number,
    private readonly addHook: (fn: () => void | Promise<void>) => void,
  ) {}

  finish(): void {
    this.#done = true;
  }

  #assertActive(): void {
    if (this.#done) throw new ClosedError(`transaction on ${this.driver.name}`);
  }

  query<R = Row>(statement: SqlFragment | string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    try {
      this.#assertActive();
      return Promise.resolve(this.driver.runNow<R>(statement, params));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  async exec(script: string): Promise<void> {
    this.#assertActive();
    this.driver.execNow(script);
  }

  afterCommit(fn: () => void | Promise<void>): void {
    this.#assertActive();
    this.addHook(fn);
  }

  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    try {
      this.#assertActive();
    } catch (err) {
      return Promise.reject(err);
    }
    const enclosing = savepointScope.getStore();
    if (enclosing?.has(this)) {
      // Inside a savepoint of this very handle: waiting for its slot would wait forever.
      return Promise.reject(
        new StrataError(
          'E_TRANSACTION',
          `a transaction handle of ${this.driver.name} was used inside its own savepoint; use the inner handle`,
        ),
      );
    }
    // Savepoints nest strictly; concurrent nested calls on one transaction take turns.
    return this.#savepoints.run(async () => {
      this.#assertActive();
      const name = `strata_sp_${this.depth}`;
      this.driver.execNow(`SAVEPOINT ${name}`);
      // Hooks of a savepoint only count once it is released into its parent.
      const pending: Array<() => void | Promise<void>> = [];
      const inner = new SqliteTransaction(this.driver, this.depth + 1, (hook) => pending.push(hook));
      const held = new Set(enclosing ?? []);
      held.add(this);
      try {
        const result = await savepointScope.run(held, () => fn(inner));
        inner.finish();
        this.driver.execNow(`RELEASE ${name}`);
        for (const hook of pending) this.addHook(hook);
        return result;
      } catch (err) {
        inner.finish();
        this.driver.execNow(`ROLLBACK TO ${name}; RELEASE ${name}`);
        throw err;
      }
    });
  }
}
