/**
 * The SQL a reshard runs on shards: table checks against the catalog, keyset pages in primary-key
 * order, reads and deletes by primary key, and idempotent upserts that skip rows already equal
 * (so a repeated copy writes nothing and wakes no capture trigger). Identifiers are validated and
 * quoted, values always bound. Works on SQLite and PostgreSQL.
 */
import { ConfigError } from '../core/errors.js';
import { type Row, type SqlDriver, type SqlExecutor, type SqlFragment, sql } from '../core/sql.js';
import type { ShardId } from './types.js';

/** A resharded table: its shard key column and primary key columns. */
export interface ReshardTable {
  readonly table: string;
  readonly key: string;
  readonly primaryKey: readonly string[];
}

/** A primary key's values, in primary-key column order. */
export type KeyValues = readonly unknown[];

/** The primary key values of `row`. */
export function keyOf(t: ReshardTable, row: Row): KeyValues {
  return t.primaryKey.map((c) => row[c]);
}

/** Most keys in one `in (...)` list. */
const KEYS_PER_STATEMENT = 500;
/** Most rows in one multi-row insert. */
const ROWS_PER_STATEMENT = 500;

function keysPerStatement(executor: SqlExecutor, t: ReshardTable): number {
  return Math.max(
    1,
    Math.min(
      KEYS_PER_STATEMENT,
      Math.floor(executor.dialect.capabilities.maxParameters / t.primaryKey.length),
    ),
  );
}

/** Turns a value read from one engine into one the other binds the same way. */
function bind(executor: SqlExecutor, value: unknown): unknown {
  if (value instanceof Uint8Array && !Buffer.isBuffer(value)) {
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  }
  if (typeof value === 'bigint' && executor.dialect.name === 'postgres') return value.toString();
  return value;
}

function keyColumns(t: ReshardTable): SqlFragment {
  const ids = t.primaryKey.map((c) => sql.id(c));
  return ids.length === 1 ? ids[0]! : sql`(${sql.join(ids)})`;
}

function keyValue(executor: SqlExecutor, key: KeyValues): SqlFragment {
  const values = key.map((v) => sql.value(bind(executor, v)));
  return values.length === 1 ? values[0]! : sql`(${sql.join(values)})`;
}

function selectList(columns: readonly string[] | undefined): SqlFragment {
  return columns === undefined ? sql.raw('*') : sql.join(columns.map((c) => sql.id(c)));
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * Up to `limit` rows of `t` after the key `after` (from the first when undefined), in primary-key
 * order; `columns` selects columns (default all).
 */
export async function scanPage(
  executor: SqlExecutor,
  t: ReshardTable,
  after: KeyValues | undefined,
  limit: number,
  columns?: readonly string[],
): Promise<Row[]> {
  const order = sql.join(t.primaryKey.map((c) => sql.id(c)));
  const where = after === undefined ? sql.empty : sql` where ${keyColumns(t)} > ${keyValue(executor, after)}`;
  const { rows } = await executor.query(
    sql`select ${selectList(columns)} from ${sql.id(t.table)}${where} order by ${order} limit ${limit}`,
  );
  return rows;
}

function keyIn(executor: SqlExecutor, t: ReshardTable, keys: readonly KeyValues[]): SqlFragment {
  return sql`${keyColumns(t)} in (${sql.join(keys.map((k) => keyValue(executor, k)))})`;
}

/** The rows of `t` with these primary keys that exist (any order); `columns` selects columns (default all). */
export async function selectByKeys(
  executor: SqlExecutor,
  t: ReshardTable,
  keys: readonly KeyValues[],
  columns?: readonly string[],
): Promise<Row[]> {
  const out: Row[] = [];
  for (const part of chunks(keys, keysPerStatement(executor, t))) {
    const { rows } = await executor.query(
      sql`select ${selectList(columns)} from ${sql.id(t.table)} where ${keyIn(executor, t, part)}`,
    );
    out.push(...rows);
  }
  return out;
}

/** Deletes the rows of `t` with these primary keys; returns how many went. */
export async function deleteByKeys(
  executor: SqlExecutor,
  t: ReshardTable,
  keys: readonly KeyValues[],
): Promise<number> {
  let deleted = 0;
  for (const part of chunks(keys, keysPerStatement(executor, t))) {
    const result = await executor.query(
      sql`delete from ${sql.id(t.table)} where ${keyIn(executor, t, part)}`,
    );
    deleted += result.rowCount;
  }
  return deleted;
}

/**
 * Inserts `rows` into `t`, replacing the other columns of rows whose primary key exists when they
 * differ (rows already equal are left untouched, so no trigger fires); returns the rows written.
 */
export async function upsertRows(
  executor: SqlExecutor,
  t: ReshardTable,
  rows: readonly Row[],
): Promise<number> {
  if (rows.length === 0) return 0;
  // Rows of one table read with `select *` share their columns; group anyway, in case shards differ.
  const groups = new Map<string, Row[]>();
  for (const row of rows) {
    const signature = Object.keys(row).join('\u0000');
    let group = groups.get(signature);
    if (group === undefined) {
      group = [];
      groups.set(signature, group);
    }
    group.push(row);
  }
  const pg = executor.dialect.name === 'postgres';
  let written = 0;
  for (const group of groups.values()) {
    const columns = Object.keys(group[0]!);
    const table = sql.id(t.table);
    const others = columns.filter((c) => !t.primaryKey.includes(c));
    // PostgreSQL compares text forms: json and a few other types have no equality operator.
    const side = (qualifier: SqlFragment, c: string) =>
      pg ? sql`${qualifier}.${sql.id(c)}::text` : sql`${qualifier}.${sql.id(c)}`;
    const tuple = (qualifier: SqlFragment) => {
      const items = others.map((c) => side(qualifier, c));
      return items.length === 1 ? items[0]! : sql`(${sql.join(items)})`;
    };
    const conflict =
      others.length === 0
        ? sql`do nothing`
        : sql`do update set ${sql.join(others.map((c) => sql`${sql.id(c)} = excluded.${sql.id(c)}`))}
              where ${tuple(table)} ${sql.raw(pg ? 'is distinct from' : 'is not')} ${tuple(sql.raw('excluded'))}`;
    const perStatement = Math.max(
      1,
      Math.min(ROWS_PER_STATEMENT, Math.floor(executor.dialect.capabilities.maxParameters / columns.length)),
    );
    for (const part of chunks(group, perStatement)) {
      const values = part.map(
        (row) => sql`(${sql.join(columns.map((c) => sql.value(bind(executor, row[c]))))})`,
      );
      const result = await executor.query(
        sql`insert into ${table} (${sql.join(columns.map((c) => sql.id(c)))}) values ${sql.join(values)}
            on conflict (${sql.join(t.primaryKey.map((c) => sql.id(c)))}) ${conflict}`,
      );
      written += result.rowCount;
    }
  }
  return written;
}

/** The number of rows in `table`. */
export async function countRows(executor: SqlExecutor, table: string): Promise<number> {
  const { rows } = await executor.query<{ n: number | string | bigint }>(
    sql`select count(*) as n from ${sql.id(table)}`,
  );
  return Number(rows[0]?.n ?? 0);
}

/**
 * Checks that `t` exists on `driver` with its shard key column and exactly its primary key.
 * Throws `E_CONFIG` naming `tables.<table>` (and the shard) otherwise.
 */
export async function checkShardTable(driver: SqlDriver, shard: ShardId, t: ReshardTable): Promise<void> {
  let columns: string[];
  let primaryKey: string[];
  if (driver.dialect.name === 'postgres') {
    const cols = await driver.query<{ name: string }>(
      sql`select a.attname::text as name from pg_attribute a
          where a.attrelid = to_regclass(${`"${t.table}"`}) and a.attnum > 0 and not a.attisdropped`,
    );
    const pk = await driver.query<{ name: string }>(
      sql`select a.attname::text as name
          from pg_index i
          cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
          where i.indrelid = to_regclass(${`"${t.table}"`}) and i.indisprimary
          order by k.ord`,
    );
    columns = cols.rows.map((r) => r.name);
    primaryKey = pk.rows.map((r) => r.name);
  } else {
    const info = await driver.query<{ name: string; pk: number }>(
      sql`select name, pk from pragma_table_info(${t.table})`,
    );
    columns = info.rows.map((r) => r.name);
    primaryKey = info.rows
      .filter((r) => r.pk > 0)
      .sort((a, b) => a.pk - b.pk)
      .map((r) => r.name);
  }
  const at = `tables.${t.table}`;
  const details = { table: t.table, shard };
  if (columns.length === 0) {
    throw new ConfigError(at, `table "${t.table}" does not exist on shard "${shard}"`, { details });
  }
  if (!columns.includes(t.key)) {
    throw new ConfigError(`${at}.key`, `column "${t.key}" does not exist on shard "${shard}"`, { details });
  }
  if (primaryKey.length !== t.primaryKey.length || primaryKey.some((c, i) => c !== t.primaryKey[i])) {
    throw new ConfigError(
      `${at}.primaryKey`,
      `does not match the primary key of table "${t.table}" on shard "${shard}"`,
      { details },
    );
  }
}
