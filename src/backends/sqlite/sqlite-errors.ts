import { type ConstraintKind, isStrataError, QueryError, type StrataError } from '../../core/errors.js';

/** The fields of better-sqlite3's `SqliteError` that we read. */
interface SqliteErrorLike {
  code?: unknown;
  message?: unknown;
}

const CONSTRAINT_KINDS: Record<string, ConstraintKind> = {
  SQLITE_CONSTRAINT_UNIQUE: 'unique',
  // PostgreSQL cannot tell a primary key from another unique constraint; neither do we.
  SQLITE_CONSTRAINT_PRIMARYKEY: 'unique',
  SQLITE_CONSTRAINT_NOTNULL: 'not_null',
  SQLITE_CONSTRAINT_FOREIGNKEY: 'foreign_key',
  SQLITE_CONSTRAINT_CHECK: 'check',
};

// SQLite's constraint messages name tables and columns, never values:
// "UNIQUE constraint failed: users.email", "NOT NULL constraint failed: posts.body",
// "CHECK constraint failed: positive_amount".
const COLUMN_CONSTRAINT = /constraint failed: ([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)/;
const NAMED_CONSTRAINT = /CHECK constraint failed: ([A-Za-z_][A-Za-z0-9_]*)$/;
const NO_SUCH_TABLE = /^no such table: (?:[A-Za-z_][A-Za-z0-9_]*\.)?([A-Za-z_][A-Za-z0-9_]*)$/;

/**
 * Converts a better-sqlite3 error into a `QueryError`: constraint violations become
 * `E_CONSTRAINT` with kind, table and column; lock contention (`SQLITE_BUSY`) becomes the
 * retryable `E_SERIALIZATION`; anything else `E_QUERY`. Strata errors pass through unchanged.
 */
export function toSqliteError(err: unknown): StrataError {
  if (isStrataError(err)) return err;
  const e = (typeof err === 'object' && err !== null ? err : {}) as SqliteErrorLike;
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.message === 'string' ? e.message : '';
  if (code?.startsWith('SQLITE_CONSTRAINT')) {
    const col = COLUMN_CONSTRAINT.exec(message);
    const named = NAMED_CONSTRAINT.exec(message);
    return new QueryError(
      'E_CONSTRAINT',
      {
        backend: 'sqlite',
        sqlState: code,
        constraintKind: CONSTRAINT_KINDS[code],
        table: col?.[1],
        column: col?.[2],
        constraint: named?.[1],
      },
      { cause: err },
    );
  }
  if (code?.startsWith('SQLITE_BUSY') || code?.startsWith('SQLITE_LOCKED')) {
    return new QueryError('E_SERIALIZATION', { backend: 'sqlite', sqlState: code }, { cause: err });
  }
  if (err instanceof RangeError || err instanceof TypeError) {
    // better-sqlite3 reports bad bindings (wrong parameter count, unsupported type) this way.
    return new QueryError('E_QUERY', { backend: 'sqlite', sqlState: 'BIND' }, { cause: err });
  }
  const table = NO_SUCH_TABLE.exec(message)?.[1];
  return new QueryError('E_QUERY', { backend: 'sqlite', sqlState: code, table }, { cause: err });
}
