import { type CompiledSql, compileSql, type SqlExecutor, type SqlFragment, sql } from 'strata';
import { postgresDialect } from 'strata/postgres';

/** Filters of a user search; every one is optional. */
export interface UserFilters {
  emails?: readonly string[];
  since?: number;
  sort?: 'email' | 'created_at';
  newestFirst?: boolean;
}

/** Builds the search: values become bound parameters, the sort column a validated, quoted identifier. */
export function userSearch(filters: UserFilters): SqlFragment {
  const conditions: SqlFragment[] = [];
  if (filters.emails !== undefined && filters.emails.length > 0) {
    conditions.push(sql`email in (${sql.join(filters.emails)})`);
  }
  if (filters.since !== undefined) conditions.push(sql`created_at >= ${filters.since}`);
  const where = conditions.length === 0 ? sql.empty : sql`where ${sql.join(conditions, ' and ')}`;
  const direction = filters.newestFirst === true ? sql.raw('desc') : sql.raw('asc');
  return sql`select id, email from ${sql.id('users')} ${where} order by ${sql.id(filters.sort ?? 'email')} ${direction}`;
}

/** Runs the search on any driver or transaction. */
export async function searchUsers(
  db: SqlExecutor,
  filters: UserFilters,
): Promise<{ id: number; email: string }[]> {
  const { rows } = await db.query<{ id: number; email: string }>(userSearch(filters));
  return rows;
}

/** What the PostgreSQL driver sends for one search: text with `$n` placeholders, values apart. */
export function compiledForPostgres(): CompiledSql {
  return compileSql(
    userSearch({ emails: ['ada@example.com', 'grace@example.com'], since: 1_700_000 }),
    postgresDialect,
  );
  // text:   'select id, email from "users" where email in ($1, $2) and created_at >= $3 order by "email" asc'
  // params: ['ada@example.com', 'grace@example.com', 1700000]
}
