/**
 * Checkpoints, leases and dead letters of change consumers in a SQL database (SQLite or
 * PostgreSQL, through the `SqlDriver` role), usually the database the derived data lives in, so
 * a handler's writes and the progress it records can share one transaction.
 */
import type { Checkpoint, CheckpointStore, DeadLetter, Lease, LogEntry, Position } from '../core/changes.js';
import { deserializeChange, serializeChange } from '../core/changes.js';
import { type Clock, systemClock } from '../core/clock.js';
import { ConfigError, StrataError } from '../core/errors.js';
import { configIdentifier, type SqlDriver, type SqlExecutor, sql } from '../core/sql.js';

/** Options for `createSqlCheckpointStore`. */
export interface SqlCheckpointStoreOptions {
  /** Prefix of the two tables (default `strata`: `strata_checkpoints`, `strata_dead_letters`). */
  tablePrefix?: string;
  /** Source of time for leases (default the system clock). */
  clock?: Clock;
}

/** A `CheckpointStore` with its tables created by `migrate()`. */
export interface SqlCheckpointStore extends CheckpointStore {
  /** Creates the tables if missing (idempotent). */
  migrate(): Promise<void>;
  /** Saves a checkpoint inside the caller's transaction, so progress commits with the work. */
  saveIn(executor: SqlExecutor, consumer: string, offset: number, epoch?: number): Promise<void>;
}

const CONSUMER_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$/;

/** Throws `E_CONFIG` naming `option` unless `name` is a valid consumer name. */
export function assertConsumerName(name: unknown, option = 'name'): asserts name is string {
  if (typeof name !== 'string' || !CONSUMER_NAME.test(name)) {
    throw new ConfigError(
      option,
      'a consumer name is 1-128 letters, digits, underscores, dots, colons or dashes',
    );
  }
}

/** Creates a checkpoint store on `driver`; call `migrate()` once before use. */
export function createSqlCheckpointStore(
  driver: SqlDriver,
  options: SqlCheckpointStoreOptions = {},
): SqlCheckpointStore {
  const prefix = configIdentifier(options.tablePrefix ?? 'strata', 'tablePrefix');
  const clock = options.clock ?? systemClock;
  const cp = sql.id(`${prefix}_checkpoints`);
  const dl = sql.id(`${prefix}_dead_letters`);
  const bigint = driver.dialect.name === 'postgres' ? 'bigint' : 'integer';

  async function saveIn(ex: SqlExecutor, consumer: string, offset: number, epoch?: number): Promise<void> {
    assertConsumerName(consumer, 'consumer');
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw new ConfigError('offset', 'must be a non-negative integer');
    const now = clock.now();
    // Never backwards; with an epoch, only while that epoch still holds the lease.
    const { rowCount } = await ex.query(
      sql`insert into ${cp} (consumer, last_offset, updated_at, epoch) values (${consumer}, ${offset}, ${now}, ${epoch ?? 0})
          on conflict (consumer) do update set
            last_offset = case when excluded.last_offset > ${cp}.last_offset then excluded.last_offset else ${cp}.last_offset end,
            updated_at = excluded.updated_at
          where ${epoch === undefined ? sql`1 = 1` : sql`${cp}.epoch = ${epoch}`}`,
    );
    if (rowCount === 0) {
      throw new StrataError('E_FENCED', `consumer "${consumer}" lost its lease; another process took over`, {
        details: { consumer, epoch },
      });
    }
  }

  return {
    async migrate() {
      await driver.transaction(async (tx) => {
        await tx.query(
          sql`create table if not exists ${cp} (
            consumer text primary key,
            last_offset ${sql.raw(bigint)} not null default 0,
            updated_at ${sql.raw(bigint)} not null,
            owner text,
            epoch ${sql.raw(bigint)} not null default 0,
            lease_expires_at ${sql.raw(bigint)} not null default 0
          )`,
        );
        await tx.query(
          sql`create table if not exists ${dl} (
            consumer text not null,
            entry_offset ${sql.raw(bigint)} not null,
            table_name text not null,
            row_key text not null,
            position text not null,
            attempts integer not null,
            error_code text not null,
            error_message text not null,
            failed_at ${sql.raw(bigint)} not null,
            entry text not null,
            primary key (consumer, entry_offset)
          )`,
        );
      });
    },

    saveIn,

    async load(consumer) {
      const { rows } = await driver.query<{ last_offset: number | string; updated_at: number | string }>(
        sql`select last_offset, updated_at from ${cp} where consumer = ${consumer}`,
      );
      const row = rows[0];
      return row === undefined
        ? undefined
        : { offset: Number(row.last_offset), updatedAt: Number(row.updated_at) };
    },

    save(consumer, offset, epoch) {
      return saveIn(driver, consumer, offset, epoch);
    },

    async acquire(consumer, owner, ttlMs) {
      assertConsumerName(consumer, 'consumer');
      if (typeof owner !== 'string' || owner.length === 0)
        throw new ConfigError('owner', 'must be a non-empty string');
      const now = clock.now();
      const expires = now + ttlMs;
      // Take the lease when it is free, expired or ours; a takeover bumps the fencing epoch.
      const { rows } = await driver.query<{
        owner: string;
        epoch: number | string;
        lease_expires_at: number | string;
      }>(
        sql`insert into ${cp} (consumer, last_offset, updated_at, owner, epoch, lease_expires_at)
            values (${consumer}, ${0}, ${now}, ${owner}, ${1}, ${expires})
            on conflict (consumer) do update set
              epoch = case when ${cp}.owner = excluded.owner and ${cp}.lease_expires_at > ${now}
                           then ${cp}.epoch else ${cp}.epoch + 1 end,
              owner = excluded.owner,
              lease_expires_at = excluded.lease_expires_at
            where ${cp}.owner is null or ${cp}.owner = excluded.owner or ${cp}.lease_expires_at <= ${now}
            returning owner, epoch, lease_expires_at`,
      );
      const row = rows[0];
      if (row === undefined) return undefined;
      return {
        consumer,
        owner: row.owner,
        epoch: Number(row.epoch),
        expiresAt: Number(row.lease_expires_at),
      } satisfies Lease;
    },

    async release(consumer, owner) {
      await driver.query(
        sql`update ${cp} set owner = null, lease_expires_at = ${0} where consumer = ${consumer} and owner = ${owner}`,
      );
    },

    async deadLetter(letter: DeadLetter) {
      await driver.query(
        sql`insert into ${dl} (consumer, entry_offset, table_name, row_key, position, attempts, error_code, error_message, failed_at, entry)
            values (${letter.consumer}, ${letter.offset}, ${letter.table}, ${JSON.stringify(letter.key)}, ${letter.position},
                    ${letter.attempts}, ${letter.errorCode}, ${letter.errorMessage}, ${letter.failedAt}, ${serializeChange(letter.entry)})
            on conflict (consumer, entry_offset) do nothing`,
      );
    },

    async deadLetters(consumer, limit = 100) {
      const { rows } = await driver.query<Record<string, unknown>>(
        sql`select * from ${dl} where consumer = ${consumer} order by entry_offset limit ${limit}`,
      );
      return rows.map(
        (r): DeadLetter => ({
          consumer: String(r.consumer),
          offset: Number(r.entry_offset),
          table: String(r.table_name),
          key: JSON.parse(String(r.row_key)) as Record<string, unknown>,
          position: String(r.position) as Position,
          attempts: Number(r.attempts),
          errorCode: String(r.error_code),
          errorMessage: String(r.error_message),
          failedAt: Number(r.failed_at),
          entry: deserializeChange<LogEntry>(String(r.entry)),
        }),
      );
    },

    async removeDeadLetter(consumer, offset) {
      const { rowCount } = await driver.query(
        sql`delete from ${dl} where consumer = ${consumer} and entry_offset = ${offset}`,
      );
      return rowCount > 0;
    },

    async consumers() {
      const { rows } = await driver.query<Record<string, unknown>>(
        sql`select c.consumer, c.last_offset, c.updated_at, c.owner, c.epoch, c.lease_expires_at,
                   (select count(*) from ${dl} d where d.consumer = c.consumer) as dead_letters
            from ${cp} c order by c.consumer`,
      );
      return rows.map((r) => {
        const checkpoint: Checkpoint = { offset: Number(r.last_offset), updatedAt: Number(r.updated_at) };
        const lease: Lease | undefined =
          r.owner === null || r.owner === undefined
            ? undefined
            : {
                consumer: String(r.consumer),
                owner: String(r.owner),
                epoch: Number(r.epoch),
                expiresAt: Number(r.lease_expires_at),
              };
        return {
          consumer: String(r.consumer),
          checkpoint,
          ...(lease ? { lease } : {}),
          deadLetters: Number(r.dead_letters),
        };
      });
    },
  };
}
