/**
 * A durable write-behind queue in a SQLite file: one row per queued write, keyed by its version.
 *
 * Each append is one transaction (the engine hands over every write of a turn at once: group
 * commit). In WAL mode with `synchronous = normal` a committed append survives a crash of the
 * process (kill -9), not a power loss; `synchronous: 'full'` survives that too, at the cost of
 * an fsync per append. The table's AUTOINCREMENT counter remembers the highest version ever
 * appended after its rows are acknowledged (deleted), so versions keep growing across restarts.
 */
import { basename } from 'node:path';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ClosedError, ConfigError } from '../../core/errors.js';
import { configIdentifier, quoteIdentifierStandard } from '../../core/sql.js';
import {
  checkAcknowledgedVersion,
  checkWriteBehindRecords,
  versionConflict,
  type WriteBehindQueue,
  type WriteBehindRecord,
} from '../../core/write-behind-queue.js';
import { createSqliteDriver, type SqliteDriver } from './sqlite-driver.js';

/** Options for `createSqliteWriteBehindQueue`. */
export interface SqliteWriteBehindQueueOptions {
  /** The queue's file; the queue opens and closes its own connection. Required unless `driver` is given. */
  filename?: string;
  /**
   * A driver the caller opened and will close; the queue's table goes into its database. Not with
   * `filename`. Use it when this process opens the file for other work too, so both share one
   * connection instead of waiting on each other's write lock.
   */
  driver?: SqliteDriver;
  /** The queue's table (default `_strata_write_behind`); one table per engine. */
  table?: string;
  /**
   * The `synchronous` pragma of a queue that opens its own file (default `normal`: an append that
   * resolved survives a process crash; `full` also survives power loss).
   */
  synchronous?: 'normal' | 'full';
  /** How long an append waits for another process's write lock (default 5s). */
  busyTimeout?: Duration;
  /** A label for messages, metrics and the dashboard (default `sqlite-write-behind:<file name>`). */
  name?: string;
}

/** A write-behind queue in a SQLite file. */
export interface SqliteWriteBehindQueue extends WriteBehindQueue {
  /** The database file, or `:memory:`. */
  readonly filename: string;
  /** The queue's table. */
  readonly table: string;
}

/**
 * Opens (creating when missing) a write-behind queue in a SQLite file, in WAL mode. Throws
 * `E_CONFIG` naming the option when an option is invalid, and `E_CONNECTION` naming the file when
 * it cannot be opened.
 */
export function createSqliteWriteBehindQueue(options: SqliteWriteBehindQueueOptions): SqliteWriteBehindQueue {
  const opts = (options ?? {}) as SqliteWriteBehindQueueOptions;
  const table = configIdentifier(opts.table ?? '_strata_write_behind', 'table');
  if (opts.name !== undefined && (typeof opts.name !== 'string' || opts.name.length === 0)) {
    throw new ConfigError('name', 'must be a non-empty string');
  }
  const synchronous = opts.synchronous ?? 'normal';
  if (synchronous !== 'normal' && synchronous !== 'full') {
    throw new ConfigError('synchronous', 'must be normal or full');
  }
  let driver: SqliteDriver;
  let owned: boolean;
  if (opts.driver !== undefined) {
    if (opts.filename !== undefined)
      throw new ConfigError('filename', 'give either filename or driver, not both');
    for (const option of ['synchronous', 'busyTimeout'] as const) {
      if (opts[option] !== undefined) {
        throw new ConfigError(option, "set it on the driver's options when giving a driver");
      }
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
    driver = opts.driver;
    owned = false;
  } else {
    if (typeof opts.filename !== 'string' || opts.filename.length === 0) {
      throw new ConfigError('filename', 'a file path is required unless driver is given');
    }
    const busyTimeout = opts.busyTimeout ?? '5s';
    parseDuration(busyTimeout, 'busyTimeout');
    driver = createSqliteDriver({
      filename: opts.filename,
      synchronous,
      busyTimeout,
      name: `sqlite-write-behind:${basename(opts.filename)}`,
    });
    owned = true;
  }
  const name =
    opts.name ??
    `sqlite-write-behind:${driver.filename === ':memory:' ? 'memory' : basename(driver.filename)}`;
  return new SqliteWriteBehindQueueImpl(driver, owned, table, name);
}

class SqliteWriteBehindQueueImpl implements SqliteWriteBehindQueue {
  readonly filename: string;
  readonly #quoted: string;
  readonly #insert: string;
  #ready: Promise<void> | undefined;
  #closed = false;

  constructor(
    private readonly driver: SqliteDriver,
    private readonly owned: boolean,
    readonly table: string,
    readonly name: string,
  ) {
    this.filename = driver.filename;
    this.#quoted = quoteIdentifierStandard(table);
    this.#insert = `INSERT INTO ${this.#quoted} (version, key, value) VALUES (?, ?, ?)`;
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError(this.name);
  }

  /** Creates the table once; a failure is retried by the next call. */
  #init(): Promise<void> {
    // AUTOINCREMENT keeps the highest version in sqlite_sequence after its row is deleted.
    this.#ready ??= this.driver
      .exec(
        `CREATE TABLE IF NOT EXISTS ${this.#quoted} (
          version INTEGER PRIMARY KEY AUTOINCREMENT,
          key TEXT NOT NULL,
          value TEXT
        )`,
      )
      .catch((err: unknown) => {
        this.#ready = undefined;
        throw err;
      });
    return this.#ready;
  }

  async append(records: readonly WriteBehindRecord[]): Promise<void> {
    this.#assertOpen();
    checkWriteBehindRecords(records);
    if (records.length === 0) return;
    await this.#init();
    await this.driver.transaction(
      async (tx) => {
        const { rows } = await tx.query<{ seq: number }>('SELECT seq FROM sqlite_sequence WHERE name = ?', [
          this.table,
        ]);
        const last = Number(rows[0]?.seq ?? 0);
        if (records[0]!.version <= last) throw versionConflict(this.name, last);
        for (const record of records) {
          await tx.query(this.#insert, [record.version, record.key, record.value]);
        }
      },
      { retry: true },
    );
  }

  async load(): Promise<WriteBehindRecord[]> {
    this.#assertOpen();
    await this.#init();
    // Only the newest row of each key: that is all the engine writes, and it bounds recovery's
    // memory by the number of keys, however long the store was away.
    const { rows } = await this.driver.query<{ version: number; key: string; value: string | null }>(
      `SELECT version, key, value FROM ${this.#quoted}
       WHERE version IN (SELECT max(version) FROM ${this.#quoted} GROUP BY key)
       ORDER BY version`,
    );
    return rows.map((row) => ({ key: row.key, value: row.value, version: Number(row.version) }));
  }

  async lastVersion(): Promise<number> {
    this.#assertOpen();
    await this.#init();
    const { rows } = await this.driver.query<{ seq: number }>(
      'SELECT seq FROM sqlite_sequence WHERE name = ?',
      [this.table],
    );
    return Number(rows[0]?.seq ?? 0);
  }

  async acknowledge(upToVersion: number): Promise<void> {
    this.#assertOpen();
    checkAcknowledgedVersion(upToVersion);
    await this.#init();
    await this.driver.query(`DELETE FROM ${this.#quoted} WHERE version <= ?`, [upToVersion]);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.owned) await this.driver.close();
  }
}
