/**
 * Idempotent apply by position: delivery is at least once, so a handler may see a change twice
 * (after a crash, a failover or a relay re-append) or see an older change after a newer one was
 * applied by a replay. `applyIfNewer` runs the handler's write only when the change is newer than
 * the last one applied to the same row, recording the position in the same transaction.
 */
import { type Change, changeKey } from '../core/changes.js';
import { configIdentifier, type SqlDriver, type SqlExecutor, sql } from '../core/sql.js';

/** Options for the applied-positions table. */
export interface AppliedTableOptions {
  /** Table name (default `strata_applied`). */
  table?: string;
}

function table(options: AppliedTableOptions = {}) {
  return sql.id(configIdentifier(options.table ?? 'strata_applied', 'table'));
}

/** Creates the table that records the last applied position per scope and row (idempotent). */
export async function migrateApplied(driver: SqlDriver, options: AppliedTableOptions = {}): Promise<void> {
  await driver.query(
    sql`create table if not exists ${table(options)} (
      scope text not null,
      row_key text not null,
      position text not null,
      primary key (scope, row_key)
    )`,
  );
}

/**
 * Runs `apply` only if `change` is newer than the last change applied to its row in `scope`
 * (a consumer or view name), and records its position; returns whether it ran. Call it inside
 * the transaction that does the write, so the write and the record commit together.
 */
export async function applyIfNewer(
  executor: SqlExecutor,
  scope: string,
  change: Pick<Change, 'table' | 'key' | 'position' | 'source'>,
  apply: () => Promise<void>,
  options: AppliedTableOptions = {},
): Promise<boolean> {
  const t = table(options);
  const rowKey = `${change.source}|${changeKey(change)}`;
  // Tokens of one source compare as strings in position order; the source is part of the row key.
  const { rowCount } = await executor.query(
    sql`insert into ${t} (scope, row_key, position) values (${scope}, ${rowKey}, ${change.position})
        on conflict (scope, row_key) do update set position = excluded.position
        where ${t}.position < excluded.position`,
  );
  if (rowCount === 0) return false;
  await apply();
  return true;
}
