/**
 * Change capture for a reshard: the role a reshard needs on each source shard (a `ChangeSource`
 * that can also remove everything it installed), and factories for SQLite (triggers into an
 * outbox of the reshard's own) and PostgreSQL (a logical replication slot and publication of the
 * reshard's own, without an initial snapshot). The engine modules are loaded on first use, so
 * `strata/sharding` does not load pg unless PostgreSQL shards are resharded.
 */
import type { SqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import type { Change, ChangeSource, Position } from '../core/changes.js';
import type { Duration } from '../core/duration.js';
import { ConfigError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import type { ShardId } from './types.js';

/** What a reshard asks of the capture factory for one source shard. */
export interface ReshardCaptureSpec {
  /** The source shard. */
  readonly shard: ShardId;
  /** Its driver, as given to the reshard. */
  readonly driver: SqlDriver;
  /** The change source name to use (the `source` of every change). */
  readonly source: string;
  /** The tables to capture: the resharded tables and the reshard's fence table. */
  readonly tables: readonly string[];
  /**
   * A lower-case identifier unique to this reshard and shard, at most 40 characters, for the names
   * of what the capture installs (outbox table, slot, publication).
   */
  readonly id: string;
}

/** Change capture on one source shard that can remove what it installed. */
export interface ReshardCapture extends ChangeSource {
  /**
   * Stops and removes everything the capture installed on the shard (triggers and outbox table,
   * or replication slot and publication); idempotent, and safe on a capture never started.
   */
  remove(): Promise<void>;
}

/** Builds the capture of one source shard; called once per source shard each time a reshard runs. */
export type ReshardCaptureFactory = (spec: ReshardCaptureSpec) => ReshardCapture | Promise<ReshardCapture>;

/** Options for `sqliteReshardCapture`. */
export interface SqliteReshardCaptureOptions {
  /** How often the outbox is read for writes of other connections and processes (default 50ms). */
  pollInterval?: Duration;
  /** Most changes per delivered batch (default 1000). */
  batchSize?: number;
}

interface SqliteDriverLike extends SqlDriver {
  onCommit(listener: () => void): () => void;
}

function isSqliteDriver(driver: SqlDriver): driver is SqliteDriverLike {
  return (
    driver.dialect.name === 'sqlite' && typeof (driver as Partial<SqliteDriverLike>).onCommit === 'function'
  );
}

/**
 * Capture for SQLite shards: triggers write every change of the captured tables into an outbox
 * table named after the reshard (`_strata_rs_<id>`), apart from the application's own capture.
 * `remove()` drops the triggers and the outbox table. The factory throws `E_CONFIG` (option
 * `shards.<id>`) for a shard whose driver is not a SQLite driver from `createSqliteDriver`.
 */
export function sqliteReshardCapture(options: SqliteReshardCaptureOptions = {}): ReshardCaptureFactory {
  return async (spec) => {
    if (!isSqliteDriver(spec.driver)) {
      throw new ConfigError(`shards.${spec.shard}`, 'SQLite capture needs a driver from createSqliteDriver');
    }
    const driver = spec.driver;
    const { createSqliteChangeCapture } = await import('../backends/sqlite/sqlite-change-source.js');
    const outboxTable = `_strata_rs_${spec.id}`;
    const capture = createSqliteChangeCapture(driver as unknown as SqliteDriver, {
      source: spec.source,
      tables: spec.tables,
      outboxTable,
      pollInterval: options.pollInterval ?? '50ms',
      batchSize: options.batchSize ?? 1_000,
    });
    return {
      name: capture.name,
      start: (onChanges: (changes: Change[]) => Promise<void>) => capture.start(onChanges),
      acknowledge: (position: Position) => capture.acknowledge(position),
      stop: () => capture.stop(),
      async remove() {
        await capture.stop();
        await capture.uninstall();
        await driver.query(`drop table if exists "${outboxTable}"`);
      },
    };
  };
}

/** Options for `postgresReshardCapture`. */
export interface PostgresReshardCaptureOptions {
  /** The URL of each PostgreSQL source shard (the role needs REPLICATION), by shard id. */
  urls: Readonly<Record<ShardId, string>>;
  /** Most changes handed over at once (default 1000). */
  batchSize?: number;
  /** How long opening a connection may take (default 10s). */
  connectTimeout?: Duration;
}

/**
 * Capture for PostgreSQL shards by logical replication: a pgoutput slot and a publication named
 * `strata_rs_<id>`, created when the capture first starts (no initial snapshot: the reshard
 * copies the rows itself), read from the slot's confirmed position after a restart. `remove()`
 * drops the slot and the publication. The factory throws `E_CONFIG` (option `urls`) when no URL
 * is given for a shard.
 */
export function postgresReshardCapture(options: PostgresReshardCaptureOptions): ReshardCaptureFactory {
  if (typeof options !== 'object' || options === null || typeof options.urls !== 'object') {
    throw new ConfigError('urls', 'must map each PostgreSQL source shard to its URL');
  }
  const urls = { ...options.urls };
  return async (spec) => {
    const url = urls[spec.shard];
    if (typeof url !== 'string' || url.length === 0) {
      throw new ConfigError('urls', `no URL for shard "${spec.shard}"`, { details: { shard: spec.shard } });
    }
    const { createPostgresChangeCapture } = await import('../backends/postgres/postgres-change-source.js');
    const name = `strata_rs_${spec.id}`;
    const capture = createPostgresChangeCapture({
      url,
      source: spec.source,
      tables: spec.tables,
      slot: name,
      publication: name,
      snapshot: false,
      batchSize: options.batchSize ?? 1_000,
      ...(options.connectTimeout === undefined ? {} : { connectTimeout: options.connectTimeout }),
    });
    return {
      name: capture.name,
      start: (onChanges: (changes: Change[]) => Promise<void>) => capture.start(onChanges),
      acknowledge: (position: Position) => capture.acknowledge(position),
      stop: () => capture.stop(),
      remove: () => capture.drop(),
    };
  };
}

/**
 * The capture used when a reshard is given none: SQLite triggers when every shard is SQLite;
 * otherwise `E_CONFIG` (option `capture`), since PostgreSQL capture needs the shards' URLs.
 */
export function defaultReshardCapture(drivers: Iterable<SqlDriver>): ReshardCaptureFactory {
  for (const driver of drivers) {
    if (driver.dialect.name !== 'sqlite') {
      throw new ConfigError(
        'capture',
        'is required for PostgreSQL shards: pass postgresReshardCapture({ urls }) with each source shard URL',
      );
    }
  }
  return sqliteReshardCapture();
}
