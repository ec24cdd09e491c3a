import {
  ClosedError,
  ConnectionError,
  type ConstraintKind,
  type Endpoint,
  isStrataError,
  QueryError,
  type StrataError,
  TimeoutError,
} from '../../core/errors.js';

/** Where a PostgreSQL connection goes; the backend is always `postgres`, never a password. */
export type PostgresEndpoint = Omit<Endpoint, 'backend'>;

/** Settings that make mapped errors more precise; both are optional. */
export interface PostgresErrorContext {
  /** The connect timeout in force, so a timed-out connect says how long it waited. */
  connectTimeoutMs?: number | undefined;
  /** The statement timeout in force, so a cancelled statement becomes `E_TIMEOUT`. */
  statementTimeoutMs?: number | undefined;
}

/** The fields of pg's `DatabaseError` (and of Node's system errors) that we read. */
interface PgErrorLike {
  code?: unknown;
  message?: unknown;
  constraint?: unknown;
  table?: unknown;
  column?: unknown;
  schema?: unknown;
  detail?: unknown;
  errors?: unknown;
  cause?: unknown;
}

const CONSTRAINT_KINDS: Record<string, ConstraintKind> = {
  '23505': 'unique',
  '23503': 'foreign_key',
  '23502': 'not_null',
  '23514': 'check',
  '23P01': 'exclusion',
};

const SERIALIZATION_STATES = new Set(['40001', '40P01']);

const SQLSTATE_CONNECTION_REASONS: Record<string, string> = {
  '28000': 'authentication failed',
  '28P01': 'authentication failed',
  '3D000': 'database does not exist',
  '57P01': 'connection terminated by the server (shutdown or administrator command)',
  '57P02': 'server shutting down after a crash',
  '57P03': 'server not accepting connections (starting up or shutting down)',
  '53300': 'too many connections for the server',
};

const SYSTEM_REASONS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ECONNRESET: 'connection reset',
  EPIPE: 'connection lost',
  ETIMEDOUT: 'timed out',
};

// pg's own messages for connection failures; none contains a value.
const TIMED_OUT = new Set(['timeout expired', 'Connection terminated due to connection timeout']);
const CONNECTION_LOST = new Set([
  'Connection terminated unexpectedly',
  'Connection terminated',
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
]);
const POOL_WAIT_TIMEOUT = 'timeout exceeded when trying to connect';
const POOL_ENDED = 'Cannot use a pool after calling end on the pool';

const IDENT = '[A-Za-z_][A-Za-z0-9_$]*';
// 42P01's message names the relation as written, schema-qualified or not, and nothing else.
const UNDEFINED_TABLE = new RegExp(`^relation "(?:(${IDENT})\\.)?(${IDENT})" does not exist$`);
// A unique or foreign-key detail starts with the key columns: `Key (email)=(...) already exists.`
// Only the part before `=` is read, and only when it is one plain column name.
const KEY_COLUMN = new RegExp(`^Key \\((${IDENT})\\)=`);

/**
 * Converts an error from pg into a strata error. Server errors keep their SQLSTATE (`sqlState`),
 * constraint, schema, table and column: integrity violations become `E_CONSTRAINT`, serialization
 * failures and deadlocks the retryable `E_SERIALIZATION`, anything else `E_QUERY`. Refused,
 * timed-out, dropped and unauthenticated connections become `E_CONNECTION` naming host, port,
 * database and user (never the password); a wait for a pooled connection past the connect timeout
 * is `E_TIMEOUT`. pg's message and detail, which can hold values, stay on `cause` only. Strata
 * errors pass through unchanged.
 */
export function toPostgresError(
  err: unknown,
  endpoint: PostgresEndpoint = {},
  context: PostgresErrorContext = {},
): StrataError {
  if (isStrataError(err)) return err;
  const e = (typeof err === 'object' && err !== null ? err : {}) as PgErrorLike;
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.message === 'string' ? e.message : '';
  // Only the named fields: a caller's endpoint object may carry more (a password) than we print.
  const where: Endpoint = {
    backend: 'postgres',
    host: endpoint.host,
    port: endpoint.port,
    database: endpoint.database,
    user: endpoint.user,
  };

  if (code !== undefined && isSqlState(code)) return fromSqlState(err, e, code, message, where, context);

  const systemCode = code ?? innerSystemCode(e);
  if (systemCode !== undefined && SYSTEM_REASONS[systemCode] !== undefined) {
    const reason = systemCode === 'ETIMEDOUT' ? timedOut(context) : (SYSTEM_REASONS[systemCode] as string);
    return new ConnectionError(where, reason, { cause: err, details: { systemCode } });
  }
  if (TIMED_OUT.has(message)) return new ConnectionError(where, timedOut(context), { cause: err });
  if (CONNECTION_LOST.has(message)) return new ConnectionError(where, 'connection lost', { cause: err });
  if (message === POOL_WAIT_TIMEOUT) {
    return new TimeoutError('waiting for a pooled postgres connection', context.connectTimeoutMs ?? 0, {
      cause: err,
      details: { backend: 'postgres' },
    });
  }
  if (message === POOL_ENDED) return new ClosedError('postgres connection pool', { cause: err });
  return new QueryError('E_QUERY', { backend: 'postgres' }, { cause: err });
}

function isSqlState(code: string): boolean {
  // SQLSTATE classes never start with E, while Node's system codes (EPIPE, ...) always do.
  return /^[0-9A-Z]{5}$/.test(code) && !code.startsWith('E');
}

function innerSystemCode(e: PgErrorLike): string | undefined {
  // Node reports a refused dual-stack connect as an AggregateError of one error per address.
  const inner = Array.isArray(e.errors) ? e.errors : [e.cause];
  for (const item of inner) {
    const c = (item as { code?: unknown } | null | undefined)?.code;
    if (typeof c === 'string' && SYSTEM_REASONS[c] !== undefined) return c;
  }
  return undefined;
}

function timedOut(context: PostgresErrorContext): string {
  return context.connectTimeoutMs === undefined
    ? 'timed out'
    : `timed out after ${context.connectTimeoutMs} ms`;
}

function fromSqlState(
  err: unknown,
  e: PgErrorLike,
  code: string,
  message: string,
  where: Endpoint,
  context: PostgresErrorContext,
): StrataError {
  const connectionReason = SQLSTATE_CONNECTION_REASONS[code];
  if (connectionReason !== undefined) {
    return new ConnectionError(where, connectionReason, { cause: err, details: { sqlState: code } });
  }
  // Class 08 is connection exceptions, except 08P01, which the server also uses for a wrong
  // number of bound parameters on a healthy connection.
  if (code.startsWith('08') && code !== '08P01') {
    return new ConnectionError(where, 'connection failure', { cause: err, details: { sqlState: code } });
  }
  if (code === '57014' && context.statementTimeoutMs !== undefined && /statement timeout/.test(message)) {
    return new TimeoutError('postgres statement', context.statementTimeoutMs, {
      cause: err,
      details: { backend: 'postgres', sqlState: code },
    });
  }
  const fields = {
    backend: 'postgres',
    sqlState: code,
    constraint: text(e.constraint),
    schema: text(e.schema),
    table: text(e.table),
    column: text(e.column),
  };
  const kind = CONSTRAINT_KINDS[code];
  if (kind !== undefined) {
    const detail = typeof e.detail === 'string' ? e.detail : '';
    const column =
      fields.column ??
      (kind === 'unique' || kind === 'foreign_key' ? KEY_COLUMN.exec(detail)?.[1] : undefined);
    return new QueryError('E_CONSTRAINT', { ...fields, column, constraintKind: kind }, { cause: err });
  }
  if (SERIALIZATION_STATES.has(code)) return new QueryError('E_SERIALIZATION', fields, { cause: err });
  if (code === '42P01' && fields.table === undefined) {
    const match = UNDEFINED_TABLE.exec(message);
    if (match !== null)
      return new QueryError(
        'E_QUERY',
        { ...fields, schema: match[1] ?? fields.schema, table: match[2] },
        { cause: err },
      );
  }
  return new QueryError('E_QUERY', fields, { cause: err });
}

function text(value: unknown): string | undefined {
  return typeof value === 'string' && value.length > 0 ? value : undefined;
}
