/**
 * Change capture from SQLite, as a transactional outbox: triggers on the captured tables write
 * every row change into an outbox table in the same transaction as the write, and the capture
 * reads that table in sequence order and hands the rows to a relay, which acknowledges them once
 * a change log holds them.
 *
 * Outbox encoding (what a trigger stores): rows are JSON objects of column to value; integers,
 * reals, text and null are plain JSON, a BLOB is `{"$hex": "<upper-case hex>"}` (SQLite has no
 * base64), an integer outside ±(2^53 - 1) is `{"$bigint": "<digits>"}`. Reading turns those into
 * `Uint8Array` and `bigint`, which `serializeChange` then stores as `$bytes` and `$bigint`. Rows of
 * more than 60 columns are stored as an array of objects, merged on reading, to stay within old
 * SQLite builds' limit of 127 function arguments (the trigger runs in whichever process writes).
 */
import { backoffDelay, Mutex, type RetryPolicy, retryPolicy } from '../../core/async.js';
import {
  assertSourceName,
  type Change,
  type ChangeOperation,
  type ChangeSource,
  makePosition,
  type Position,
  parsePosition,
} from '../../core/changes.js';
import { type Clock, systemClock, type TimerHandle } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ConfigError,
  isStrataError,
  StrataError,
  ValidationError,
  type ValidationIssue,
} from '../../core/errors.js';
import {
  assertIdentifier,
  configIdentifier,
  quoteIdentifierStandard,
  reportBackgroundError,
  type SqlExecutor,
  type SqlTransaction,
} from '../../core/sql.js';
import type { SqliteDriver } from './sqlite-driver.js';

/** Options for `createSqliteChangeCapture`. */
export interface SqliteChangeCaptureOptions {
  /** The source's name, the `source` of every change and position (1-64 letters, digits, `_.-`). */
  source: string;
  /**
   * Tables whose inserts, updates and deletes are captured; each must exist and have a primary
   * key when `install()` runs. May be empty when only `publish` feeds the outbox.
   */
  tables: readonly string[];
  /** The outbox table the triggers and `publish` write to (default `_strata_outbox`). */
  outboxTable?: string;
  /** Most changes per delivered batch (default 500). */
  batchSize?: number;
  /**
   * How often the outbox is read when no commit through the driver woke the capture (default
   * 1s); it is how writes by other connections and processes are picked up.
   */
  pollInterval?: Duration;
  /**
   * Delays before a batch whose callback failed is delivered again: from `initialDelay` (default
   * 100ms), doubling on each consecutive failure, up to `maxDelay` (default 30s).
   */
  retryBackoff?: { initialDelay?: Duration; maxDelay?: Duration };
  /** The source of time for polling and backoff (default the system clock). */
  clock?: Clock;
  /** Where failures of the background loop go: a failed callback, a failed read (default: a process warning). */
  onError?: (err: unknown) => void;
}

/** A message published through the outbox, atomically with the caller's writes. */
export interface OutboxMessage {
  /** Where the message goes; it becomes the change's `table`. */
  topic: string;
  /** The message's key, for per-key order; it becomes the change's key `{ key }`. */
  key: string;
  /** The message body, a JSON object (bytes and bigints round-trip); it becomes the change's `after`. */
  payload: Record<string, unknown>;
  /** String headers carried along with the message. */
  headers?: Record<string, string>;
}

/** Change capture from a SQLite database through triggers and an outbox table. */
export interface SqliteChangeCapture extends ChangeSource {
  /** The captured tables, as given. */
  readonly tables: readonly string[];
  /** The outbox table's name. */
  readonly outboxTable: string;
  /**
   * Creates the outbox table and the capture triggers, replacing triggers whose table changed
   * and dropping this outbox's triggers on tables no longer captured; idempotent, all in one
   * transaction. `E_CONFIG` (option `tables`, `details.table`) when a table is missing, is not a
   * plain table or has no primary key; then nothing is written.
   */
  install(): Promise<void>;
  /**
   * Runs `fn` (schema changes of captured tables) in one transaction with this outbox's triggers
   * dropped before and installed again after, so the new columns are captured from the commit on
   * and no other write escapes capture meanwhile; writes `fn` itself makes are not captured.
   * Needed to drop a captured column, which SQLite refuses while a trigger names it.
   * Resolves to what `fn` returned; when `fn` or the reinstall fails (`E_CONFIG` for a captured
   * table it dropped) nothing is changed.
   */
  migrate<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T>;
  /**
   * Drops this outbox's triggers; the outbox table and its rows stay. Stop the capture first: a
   * running capture installs them again on its next round.
   */
  uninstall(): Promise<void>;
  /**
   * Inserts a message into the outbox through `executor`, so it commits or rolls back with the
   * caller's transaction (pass the transaction handle); returns the message's position.
   * `E_VALIDATION` for a malformed message, `E_NOT_FOUND` before `install()`.
   */
  publish(executor: SqlExecutor, message: OutboxMessage): Promise<Position>;
  /** The number of outbox rows not acknowledged yet. */
  pending(): Promise<number>;
}

interface TableSpec {
  table: string;
  columns: string[];
  keyColumns: string[];
}

interface OutboxRow {
  seq: number;
  table_name: string;
  op: ChangeOperation;
  key: string;
  before: string | null;
  after: string | null;
  headers: string | null;
  created_at: number;
}

const DEFAULT_OUTBOX = '_strata_outbox';
const DEFAULT_BATCH_SIZE = 500;
/** Columns per `json_object` call: 2 arguments each, within the historic limit of 127. */
const COLUMNS_PER_OBJECT = 60;
const MAX_SAFE = '9007199254740991';
/** Epoch milliseconds in SQL that every SQLite version runs (`unixepoch('subsec')` needs 3.42). */
const NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
const OPERATIONS: ReadonlySet<string> = new Set(['insert', 'update', 'delete', 'message']);

const quote = quoteIdentifierStandard;

function literal(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/** The JSON form of one column value (see the module comment). */
function valueSql(ref: string): string {
  return (
    `CASE WHEN typeof(${ref}) = 'blob' THEN json_object('$hex', hex(${ref})) ` +
    `WHEN typeof(${ref}) = 'integer' AND (${ref} > ${MAX_SAFE} OR ${ref} < -${MAX_SAFE}) ` +
    `THEN json_object('$bigint', CAST(${ref} AS TEXT)) ELSE ${ref} END`
  );
}

/** A JSON object of `columns` of the `row` (`NEW` or `OLD`), chunked for wide tables. */
function rowSql(row: 'NEW' | 'OLD', columns: readonly string[]): string {
  const objects: string[] = [];
  for (let i = 0; i < columns.length; i += COLUMNS_PER_OBJECT) {
    const pairs = columns
      .slice(i, i + COLUMNS_PER_OBJECT)
      .map((c) => `${literal(c)}, ${valueSql(`${row}.${quote(c)}`)}`);
    objects.push(`json_object(${pairs.join(', ')})`);
  }
  return objects.length === 1 ? objects[0]! : `json_array(${objects.join(', ')})`;
}

function triggerName(outbox: string, table: string, event: string): string {
  return `${outbox}__${table}__${event}`;
}

/** The capture triggers of one table, by name. */
function triggersFor(outbox: string, spec: TableSpec): Map<string, string> {
  const { table, columns, keyColumns } = spec;
  const into = `INSERT INTO ${quote(outbox)} (table_name, op, "key", "before", "after", created_at) VALUES`;
  const row = (op: string, key: 'NEW' | 'OLD', before: string, after: string) =>
    `${into} (${literal(table)}, '${op}', ${rowSql(key, keyColumns)}, ${before}, ${after}, ${NOW_MS});`;
  const sameKey = keyColumns.map((c) => `OLD.${quote(c)} IS NEW.${quote(c)}`).join(' AND ');
  const create = (event: string, when: string, body: string[]) =>
    `CREATE TRIGGER ${quote(triggerName(outbox, table, event))} AFTER ${when} ON ${quote(table)} ` +
    `FOR EACH ROW${event.startsWith('update') ? ` WHEN ${event === 'update' ? '' : 'NOT '}(${sameKey})` : ''} ` +
    `BEGIN ${body.join(' ')} END`;
  const oldRow = rowSql('OLD', columns);
  const newRow = rowSql('NEW', columns);
  const triggers = new Map<string, string>();
  const add = (event: string, when: string, body: string[]) =>
    triggers.set(triggerName(outbox, table, event), create(event, when, body));
  add('insert', 'INSERT', [row('insert', 'NEW', 'NULL', newRow)]);
  add('update', 'UPDATE', [row('update', 'NEW', oldRow, newRow)]);
  // A changed primary key is a different row: the old key is deleted, the new one inserted.
  add('update_key', 'UPDATE', [row('delete', 'OLD', oldRow, 'NULL'), row('insert', 'NEW', 'NULL', newRow)]);
  add('delete', 'DELETE', [row('delete', 'OLD', oldRow, 'NULL')]);
  return triggers;
}

function outboxDdl(outbox: string): string {
  return `CREATE TABLE IF NOT EXISTS ${quote(outbox)} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'message')),
    "key" TEXT NOT NULL,
    "before" TEXT,
    "after" TEXT,
    headers TEXT,
    created_at INTEGER NOT NULL
  )`;
}

async function describeTable(tx: SqlTransaction, table: string, outbox: string): Promise<TableSpec> {
  const fail = (problem: string) =>
    new ConfigError('tables', `table "${table}" ${problem}`, { details: { table } });
  const found = await tx.query<{ type: string; sql: string | null }>(
    "SELECT type, sql FROM sqlite_schema WHERE name = ? COLLATE NOCASE AND type IN ('table', 'view')",
    [table],
  );
  const entry = found.rows[0];
  if (entry === undefined) throw fail('does not exist');
  if (entry.type !== 'table' || /^\s*create\s+virtual\b/i.test(entry.sql ?? '')) {
    throw fail('is not a plain table (views and virtual tables cannot have capture triggers)');
  }
  if (table.toLowerCase() === outbox.toLowerCase()) throw fail('is the outbox table itself');
  const info = await tx.query<{ name: string; pk: number; hidden: number }>(
    'SELECT name, pk, hidden FROM pragma_table_xinfo(?)',
    [table],
  );
  // hidden 1 marks a virtual table's hidden column; 2 and 3 are generated columns, which triggers can read.
  const columns = info.rows.filter((c) => c.hidden !== 1);
  const keyColumns = columns
    .filter((c) => c.pk > 0)
    .sort((a, b) => a.pk - b.pk)
    .map((c) => c.name);
  if (keyColumns.length === 0) throw fail('has no primary key (a rowid alone does not identify a row)');
  return { table, columns: columns.map((c) => c.name), keyColumns };
}

function bytesFromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

/** Decodes a trigger's JSON: `$hex` and `$bigint`, and chunked wide rows. */
function reviveRow(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const v = value as { $hex?: unknown; $bigint?: unknown };
    const keys = Object.keys(value);
    if (keys.length === 1) {
      if (typeof v.$hex === 'string') return bytesFromHex(v.$hex);
      if (typeof v.$bigint === 'string') return BigInt(v.$bigint);
    }
  }
  return value;
}

/** Decodes a published payload, written with the convention of `serializeChange`. */
function reviveMessage(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const v = value as { $bytes?: unknown; $bigint?: unknown };
    if (Object.keys(value).length === 1) {
      if (typeof v.$bytes === 'string') return new Uint8Array(Buffer.from(v.$bytes, 'base64'));
      if (typeof v.$bigint === 'string') return BigInt(v.$bigint);
    }
  }
  return value;
}

function encodeMessageValue(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return { $bigint: value.toString() };
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('base64') };
  if (value !== null && typeof value === 'object' && (value as { type?: unknown }).type === 'Buffer') {
    const data = (value as { data?: unknown }).data;
    if (Array.isArray(data)) return { $bytes: Buffer.from(data as number[]).toString('base64') };
  }
  return value;
}

function parseJson(text: string | null, message: boolean): Record<string, unknown> | null {
  if (text === null) return null;
  const value = JSON.parse(text, message ? reviveMessage : reviveRow) as unknown;
  if (Array.isArray(value)) return Object.assign({}, ...(value as Record<string, unknown>[]));
  return value as Record<string, unknown>;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function checkMessage(message: OutboxMessage): ValidationIssue[] {
  if (!isPlainObject(message)) {
    return [{ path: [], message: 'expected an object with topic, key and payload' }];
  }
  const issues: ValidationIssue[] = [];
  if (typeof message.topic !== 'string' || message.topic.length === 0) {
    issues.push({ path: ['topic'], message: 'expected a non-empty string' });
  }
  if (typeof message.key !== 'string') issues.push({ path: ['key'], message: 'expected a string' });
  if (!isPlainObject(message.payload)) issues.push({ path: ['payload'], message: 'expected a JSON object' });
  if (message.headers !== undefined) {
    if (!isPlainObject(message.headers)) issues.push({ path: ['headers'], message: 'expected an object' });
    else {
      for (const [name, value] of Object.entries(message.headers)) {
        if (typeof value !== 'string') issues.push({ path: ['headers', name], message: 'expected a string' });
      }
    }
  }
  return issues;
}

/**
 * Creates change capture on `driver`'s database for `options.tables`; nothing is written until
 * `install()` or `start()`. Throws `E_CONFIG` naming the option when an option is invalid (a
 * table name that is not a plain SQL identifier names `tables`).
 *
 * `start` installs (as `install()` does) and resolves once delivery runs; each start delivers from
 * the oldest row not acknowledged. Delivery is at least once, in outbox order, which is commit
 * order: SQLite has one writer at a time and the outbox sequence is assigned inside the writing
 * transaction. Positions are `(source, outbox seq, 0)`; `txId` is null (SQLite names no
 * transaction) and `commitTime` is when the row was written. Run one capture per outbox: a second
 * one delivers the same rows again (a log drops them as duplicates). Changes committed
 * between a schema change of a captured table and the capture's next poll are captured with the
 * old column list; `migrate()` closes that gap. A REPLACE that removes a row for another key fires delete triggers only when
 * the writing connection has `PRAGMA recursive_triggers = ON`.
 */
export function createSqliteChangeCapture(
  driver: SqliteDriver,
  options: SqliteChangeCaptureOptions,
): SqliteChangeCapture {
  const opts = (options ?? {}) as SqliteChangeCaptureOptions;
  if (
    driver === null ||
    typeof driver !== 'object' ||
    typeof driver.query !== 'function' ||
    typeof driver.onCommit !== 'function'
  ) {
    throw new ConfigError('driver', 'expected a SQLite driver from createSqliteDriver');
  }
  assertSourceName(opts.source, 'source');
  const outboxTable = configIdentifier(opts.outboxTable ?? DEFAULT_OUTBOX, 'outboxTable');
  if (!Array.isArray(opts.tables)) throw new ConfigError('tables', 'expected an array of table names');
  const tables: string[] = [];
  opts.tables.forEach((table: unknown, index) => {
    try {
      assertIdentifier(table);
    } catch (err) {
      throw new ConfigError(
        'tables',
        'a table name is not a valid SQL identifier (letters, digits, underscores)',
        {
          cause: err,
          details: { index },
        },
      );
    }
    if (/^sqlite_/i.test(table)) {
      throw new ConfigError('tables', `table "${table}" is an internal SQLite table`, { details: { table } });
    }
    if (table.toLowerCase() === outboxTable.toLowerCase()) {
      throw new ConfigError('tables', `table "${table}" is the outbox table itself`, { details: { table } });
    }
    if (!tables.some((t) => t.toLowerCase() === table.toLowerCase())) tables.push(table);
  });
  const batchSize = opts.batchSize ?? DEFAULT_BATCH_SIZE;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
    throw new ConfigError('batchSize', 'must be a positive integer');
  }
  const pollMs = parseDuration(opts.pollInterval ?? '1s', 'pollInterval', { allowZero: false });
  const backoff = retryPolicy(
    {
      initialDelay: opts.retryBackoff?.initialDelay ?? '100ms',
      maxDelay: opts.retryBackoff?.maxDelay ?? '30s',
      factor: 2,
      jitter: false,
    },
    'retryBackoff',
  );
  if (opts.onError !== undefined && typeof opts.onError !== 'function') {
    throw new ConfigError('onError', 'expected a function');
  }
  return new SqliteChangeCaptureImpl(driver, {
    source: opts.source,
    tables: Object.freeze(tables),
    outboxTable,
    batchSize,
    pollMs,
    backoff,
    clock: opts.clock ?? systemClock,
    onError: opts.onError ?? ((err) => reportBackgroundError(`${opts.source} change capture`, err)),
  });
}

interface Settings {
  source: string;
  tables: readonly string[];
  outboxTable: string;
  batchSize: number;
  pollMs: number;
  backoff: RetryPolicy;
  clock: Clock;
  onError: (err: unknown) => void;
}

/** One `start()` to `stop()` span: the loop's wake-ups and its completion. */
class Run {
  stopping = false;
  /** A commit happened since the loop last started reading. */
  dirty = false;
  done: Promise<void> = Promise.resolve();
  stopped: Promise<void> | undefined;
  #resume: (() => void) | undefined;
  #wakeable = false;

  constructor(private readonly clock: Clock) {}

  /** Waits `ms`, or less when stopped or (if `wakeable`) when a commit arrives. */
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

class SqliteChangeCaptureImpl implements SqliteChangeCapture {
  readonly name: string;
  readonly tables: readonly string[];
  readonly outboxTable: string;
  readonly #installLock = new Mutex();
  /** `schema_version` after the last install attempt: a different value means the schema changed. */
  #schemaVersion: number | undefined;
  #run: Run | undefined;

  constructor(
    private readonly driver: SqliteDriver,
    private readonly settings: Settings,
  ) {
    this.name = settings.source;
    this.tables = settings.tables;
    this.outboxTable = settings.outboxTable;
  }

  install(): Promise<void> {
    return this.#installLock.run(() => this.#install());
  }

  async #install(): Promise<void> {
    this.#schemaVersion = await this.driver.transaction((tx) => this.#installIn(tx));
  }

  /** Brings the outbox and triggers up to date inside `tx`; returns the schema version after. */
  async #installIn(tx: SqlTransaction): Promise<number> {
    const outbox = this.outboxTable;
    const specs: TableSpec[] = [];
    for (const table of this.tables) specs.push(await describeTable(tx, table, outbox));
    await tx.exec(outboxDdl(outbox));
    const desired = new Map<string, string>();
    for (const spec of specs) for (const [name, text] of triggersFor(outbox, spec)) desired.set(name, text);
    const existing = await this.#ownTriggers(tx);
    for (const [name, text] of existing) {
      if (desired.get(name) !== text) await tx.exec(`DROP TRIGGER ${quote(name)}`);
    }
    for (const [name, text] of desired) if (existing.get(name) !== text) await tx.exec(text);
    return this.#readSchemaVersion(tx);
  }

  migrate<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    return this.#installLock.run(async () => {
      let result!: T;
      this.#schemaVersion = await this.driver.transaction(async (tx) => {
        for (const name of (await this.#ownTriggers(tx)).keys()) await tx.exec(`DROP TRIGGER ${quote(name)}`);
        result = await fn(tx);
        return this.#installIn(tx);
      });
      return result;
    });
  }

  /** This outbox's triggers: named after it and inserting into it. */
  async #ownTriggers(tx: SqlTransaction): Promise<Map<string, string>> {
    const all = await tx.query<{ name: string; sql: string | null }>(
      "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger'",
    );
    const marker = `INSERT INTO ${quote(this.outboxTable)} (`;
    const own = new Map<string, string>();
    for (const t of all.rows) {
      const text = t.sql ?? '';
      if (t.name.startsWith(`${this.outboxTable}__`) && text.includes(marker)) own.set(t.name, text);
    }
    return own;
  }

  async #readSchemaVersion(executor: SqlExecutor): Promise<number> {
    const result = await executor.query<{ schema_version: number }>('PRAGMA schema_version');
    return result.rows[0]?.schema_version ?? 0;
  }

  uninstall(): Promise<void> {
    return this.#installLock.run(async () => {
      await this.driver.transaction(async (tx) => {
        for (const name of (await this.#ownTriggers(tx)).keys()) await tx.exec(`DROP TRIGGER ${quote(name)}`);
      });
      this.#schemaVersion = undefined;
    });
  }

  /** Reinstalls the triggers when the schema changed since the last install; failures are reported once per schema version. */
  async #refreshTriggers(): Promise<void> {
    const version = await this.#readSchemaVersion(this.driver);
    if (version === this.#schemaVersion) return;
    try {
      await this.install();
    } catch (err) {
      if (isStrataError(err, 'E_CLOSED')) throw err;
      this.#schemaVersion = version;
      this.settings.onError(err);
    }
  }

  async publish(executor: SqlExecutor, message: OutboxMessage): Promise<Position> {
    const issues = checkMessage(message);
    let payload = '';
    if (issues.length === 0) {
      try {
        payload = JSON.stringify(message.payload, encodeMessageValue);
      } catch (err) {
        throw new ValidationError([{ path: ['payload'], message: 'not serializable as JSON' }], {
          subject: 'outbox message',
          cause: err,
        });
      }
    }
    if (issues.length > 0) throw new ValidationError(issues, { subject: 'outbox message' });
    const headers = message.headers === undefined ? null : JSON.stringify(message.headers);
    try {
      // A savepoint inside the caller's transaction, or a transaction of its own on a driver.
      const result = await executor.transaction((tx) =>
        tx.query<{ seq: number }>(
          `INSERT INTO ${quote(this.outboxTable)} (table_name, op, "key", "before", "after", headers, created_at) ` +
            `VALUES (?, 'message', ?, NULL, ?, ?, ${NOW_MS}) RETURNING seq`,
          [message.topic, JSON.stringify({ key: message.key }), payload, headers],
        ),
      );
      return makePosition(this.name, result.rows[0]!.seq);
    } catch (err) {
      if (isStrataError(err, 'E_QUERY') && err.details.table === this.outboxTable) {
        throw new StrataError(
          'E_NOT_FOUND',
          `outbox table "${this.outboxTable}" does not exist; call install() first`,
          { cause: err, details: { table: this.outboxTable } },
        );
      }
      throw err;
    }
  }

  async pending(): Promise<number> {
    const result = await this.driver.query<{ n: number }>(
      `SELECT count(*) AS n FROM ${quote(this.outboxTable)}`,
    );
    return result.rows[0]?.n ?? 0;
  }

  async acknowledge(position: Position): Promise<void> {
    const { source, major } = parsePosition(position);
    if (source !== this.name) {
      throw new StrataError('E_POSITION', 'invalid position: it belongs to another source', {
        details: { source: this.name },
      });
    }
    await this.driver.query(`DELETE FROM ${quote(this.outboxTable)} WHERE seq <= ?`, [major]);
  }

  async start(onChanges: (changes: Change[]) => Promise<void>): Promise<void> {
    if (typeof onChanges !== 'function') throw new ConfigError('onChanges', 'expected a function');
    if (this.#run !== undefined) {
      throw new StrataError('E_CONFLICT', `change capture ${this.name} is already running`);
    }
    const run = new Run(this.settings.clock);
    this.#run = run;
    try {
      await this.install();
    } catch (err) {
      this.#run = undefined;
      throw err;
    }
    if (run.stopping) return;
    const unsubscribe = this.driver.onCommit(() => run.wake());
    run.done = this.#loop(run, onChanges).finally(unsubscribe);
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

  async #loop(run: Run, onChanges: (changes: Change[]) => Promise<void>): Promise<void> {
    const { batchSize, pollMs, backoff, onError } = this.settings;
    let cursor = 0;
    let failures = 0;
    const fail = (err: unknown) => {
      failures++;
      onError(err);
      return run.pause(backoffDelay(backoff, failures), false);
    };
    while (!run.stopping) {
      run.dirty = false;
      let changes: Change[];
      let last: number;
      try {
        await this.#refreshTriggers();
        const rows = await this.driver.query<OutboxRow>(
          `SELECT seq, table_name, op, "key", "before", "after", headers, created_at FROM ${quote(this.outboxTable)} ` +
            'WHERE seq > ? ORDER BY seq LIMIT ?',
          [cursor, batchSize],
        );
        if (rows.rows.length === 0) {
          failures = 0;
          await run.pause(pollMs, true);
          continue;
        }
        changes = rows.rows.map((row) => this.#toChange(row));
        last = rows.rows.at(-1)!.seq;
      } catch (err) {
        if (isStrataError(err, 'E_CLOSED')) {
          onError(err);
          return;
        }
        await fail(err);
        continue;
      }
      try {
        await onChanges(changes);
      } catch (err) {
        // The cursor stays: the same rows come again after the backoff.
        await fail(err);
        continue;
      }
      failures = 0;
      cursor = last;
    }
  }

  #toChange(row: OutboxRow): Change {
    if (!OPERATIONS.has(row.op)) {
      throw new StrataError(
        'E_CORRUPT',
        `outbox table "${this.outboxTable}" holds a row with an unknown operation`,
        {
          details: { table: this.outboxTable, seq: row.seq },
        },
      );
    }
    const message = row.op === 'message';
    try {
      const change: Change = {
        source: this.name,
        table: row.table_name,
        op: row.op,
        key: parseJson(row.key, message) ?? {},
        before: parseJson(row.before, message),
        after: parseJson(row.after, message),
        position: makePosition(this.name, row.seq),
        txId: null,
        commitTime: row.created_at,
      };
      if (row.headers !== null) change.headers = JSON.parse(row.headers) as Record<string, string>;
      return change;
    } catch (err) {
      throw new StrataError(
        'E_CORRUPT',
        `outbox table "${this.outboxTable}" holds a row that cannot be decoded`,
        {
          cause: err,
          details: { table: this.outboxTable, seq: row.seq },
        },
      );
    }
  }
}
