/**
 * The strata error hierarchy.
 *
 * Every error strata throws is a `StrataError` with a stable `code` (`E_...`) that callers
 * compare instead of parsing messages. Messages are static sentences: they may name hosts,
 * ports, options, tables and columns, but never a value, a SQL parameter or a secret. Values
 * that help debugging live in structured `details` fields and in `cause`.
 */

/** The codes strata itself uses; modules may add their own `E_*` codes. */
export type StrataErrorCode =
  | 'E_CONNECTION'
  | 'E_CONFIG'
  | 'E_VALIDATION'
  | 'E_TIMEOUT'
  | 'E_QUERY'
  | 'E_CONSTRAINT'
  | 'E_SERIALIZATION'
  | 'E_IDENTIFIER'
  | 'E_CLOSED'
  | 'E_NOT_FOUND'
  | 'E_CONFLICT'
  | 'E_UNSUPPORTED'
  | 'E_TRANSACTION'
  | 'E_PERMISSION'
  | 'E_POSITION'
  | 'E_CORRUPT'
  | 'E_FENCED'
  | 'E_ABORTED'
  | 'E_BACKPRESSURE'
  | 'E_SHARD_KEY'
  | 'E_SHARD'
  | 'E_CLOCK'
  | 'E_EXHAUSTED'
  | 'E_TOKEN'
  | 'E_NOT_REPLICA'
  | 'E_VERIFY'
  | 'E_VERSION_CONFLICT'
  | 'E_DUPLICATE_EVENT'
  | 'E_STREAM_DELETED'
  | 'E_DECIDER'
  | 'E_REBUILD_BEHIND'
  | (string & {});

/** Options shared by every strata error constructor. */
export interface StrataErrorOptions {
  /** The underlying error, kept for debugging; never copied into the message. */
  cause?: unknown;
  /** Structured fields describing the failure (host, option, table, ...). */
  details?: Record<string, unknown>;
}

/** Base class of every error strata throws; `code` is stable across releases. */
export class StrataError extends Error {
  override readonly name: string = 'StrataError';
  /** Stable machine-readable code, such as `E_CONNECTION`. */
  readonly code: StrataErrorCode;
  /** Structured fields describing the failure; safe to log, never contain secrets. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: StrataErrorCode, message: string, options: StrataErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = Object.freeze({ ...(options.details ?? {}) });
  }

  /** A plain JSON form for logs and HTTP bodies: code, message and details, no stack or cause. */
  toJSON(): { code: string; message: string; details: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

/** Where a connection was attempted; never includes a password. */
export interface Endpoint {
  backend: string;
  host?: string | undefined;
  port?: number | undefined;
  database?: string | undefined;
  user?: string | undefined;
}

function describeEndpoint(endpoint: Endpoint): string {
  const where =
    endpoint.host === undefined
      ? ''
      : ` at ${endpoint.host}${endpoint.port === undefined ? '' : `:${endpoint.port}`}`;
  return `${endpoint.backend}${where}`;
}

/** A server could not be reached, refused the credentials, or dropped the connection. */
export class ConnectionError extends StrataError {
  override readonly name = 'ConnectionError';
  readonly backend: string;
  readonly host: string | undefined;
  readonly port: number | undefined;

  constructor(endpoint: Endpoint, reason: string, options: StrataErrorOptions = {}) {
    super('E_CONNECTION', `cannot connect to ${describeEndpoint(endpoint)}: ${reason}`, {
      ...options,
      details: { ...stripUndefined({ ...endpoint }), reason, ...(options.details ?? {}) },
    });
    this.backend = endpoint.backend;
    this.host = endpoint.host;
    this.port = endpoint.port;
  }
}

/** An option given at construction time is missing or invalid; `option` names it. */
export class ConfigError extends StrataError {
  override readonly name = 'ConfigError';
  readonly option: string;

  constructor(option: string, problem: string, options: StrataErrorOptions = {}) {
    super('E_CONFIG', `invalid option "${option}": ${problem}`, {
      ...options,
      details: { option, ...(options.details ?? {}) },
    });
    this.option = option;
  }
}

/** One problem found by a schema: where (`path`) and what (`message`). */
export interface ValidationIssue {
  path: ReadonlyArray<string | number>;
  message: string;
}

/** A value failed schema validation; `issues` lists every problem with its path. */
export class ValidationError extends StrataError {
  override readonly name = 'ValidationError';
  readonly issues: ReadonlyArray<ValidationIssue>;

  constructor(
    issues: ReadonlyArray<ValidationIssue>,
    options: StrataErrorOptions & { subject?: string } = {},
  ) {
    const subject = options.subject ?? 'value';
    const count = issues.length;
    super('E_VALIDATION', `${subject} failed validation with ${count} issue${count === 1 ? '' : 's'}`, {
      ...options,
      details: { subject, issues, ...(options.details ?? {}) },
    });
    this.issues = issues;
  }
}

/** An operation did not finish within its bound; `operation` and `timeoutMs` say which. */
export class TimeoutError extends StrataError {
  override readonly name = 'TimeoutError';
  readonly operation: string;
  readonly timeoutMs: number;

  constructor(operation: string, timeoutMs: number, options: StrataErrorOptions = {}) {
    super('E_TIMEOUT', `${operation} timed out after ${timeoutMs} ms`, {
      ...options,
      details: { operation, timeoutMs, ...(options.details ?? {}) },
    });
    this.operation = operation;
    this.timeoutMs = timeoutMs;
  }
}

/** The kind of integrity rule a write broke. */
export type ConstraintKind = 'unique' | 'foreign_key' | 'not_null' | 'check' | 'exclusion';

/** Structured fields a SQL engine reports about a failed statement. */
export interface QueryErrorFields {
  backend: string;
  /** SQLSTATE (PostgreSQL) or the extended result code name (SQLite). */
  sqlState?: string | undefined;
  constraint?: string | undefined;
  constraintKind?: ConstraintKind | undefined;
  schema?: string | undefined;
  table?: string | undefined;
  column?: string | undefined;
}

/**
 * A SQL statement failed. `code` is `E_CONSTRAINT` for integrity violations, `E_SERIALIZATION`
 * for serialization failures and deadlocks (safe to retry the whole transaction), and
 * `E_QUERY` otherwise. The engine's own message stays on `cause`, since it can contain values.
 */
export class QueryError extends StrataError {
  override readonly name = 'QueryError';
  readonly backend: string;
  readonly sqlState: string | undefined;
  readonly constraint: string | undefined;
  readonly constraintKind: ConstraintKind | undefined;
  readonly schema: string | undefined;
  readonly table: string | undefined;
  readonly column: string | undefined;

  constructor(
    code: 'E_QUERY' | 'E_CONSTRAINT' | 'E_SERIALIZATION',
    fields: QueryErrorFields,
    options: StrataErrorOptions = {},
  ) {
    super(code, queryMessage(code, fields), {
      ...options,
      details: { ...stripUndefined({ ...fields }), ...(options.details ?? {}) },
    });
    this.backend = fields.backend;
    this.sqlState = fields.sqlState;
    this.constraint = fields.constraint;
    this.constraintKind = fields.constraintKind;
    this.schema = fields.schema;
    this.table = fields.table;
    this.column = fields.column;
  }

  /** True when retrying the whole transaction may succeed (serialization failure, deadlock). */
  get retryable(): boolean {
    return this.code === 'E_SERIALIZATION';
  }
}

function queryMessage(code: string, f: QueryErrorFields): string {
  const on = f.table === undefined ? '' : ` on table "${f.table}"`;
  const state = f.sqlState === undefined ? '' : ` (${f.sqlState})`;
  if (code === 'E_CONSTRAINT') {
    const what =
      f.constraintKind === undefined ? 'constraint' : `${f.constraintKind.replace('_', ' ')} constraint`;
    const name = f.constraint === undefined ? '' : ` "${f.constraint}"`;
    const col = f.column === undefined ? '' : ` column "${f.column}"`;
    return `${f.backend}: ${what}${name} violated${on}${col}${state}`;
  }
  if (code === 'E_SERIALIZATION') return `${f.backend}: transaction conflict, retry the transaction${state}`;
  return `${f.backend}: statement failed${on}${state}`;
}

/** A closed resource was used; `resource` names it. */
export class ClosedError extends StrataError {
  override readonly name = 'ClosedError';
  constructor(resource: string, options: StrataErrorOptions = {}) {
    super('E_CLOSED', `${resource} is closed`, {
      ...options,
      details: { resource, ...(options.details ?? {}) },
    });
  }
}

/** An identifier (table, column, schema name) is not a safe SQL identifier. */
export class IdentifierError extends StrataError {
  override readonly name = 'IdentifierError';
  constructor(problem: string, options: StrataErrorOptions = {}) {
    super('E_IDENTIFIER', `invalid SQL identifier: ${problem}`, options);
  }
}

/**
 * True when `err` is a strata error, and, when `code` is given, has that code.
 * Compares codes rather than classes, so it works across copies of the package.
 */
export function isStrataError(err: unknown, code?: StrataErrorCode): err is StrataError {
  if (typeof err !== 'object' || err === null) return false;
  const candidate = err as { code?: unknown; details?: unknown };
  if (typeof candidate.code !== 'string' || !candidate.code.startsWith('E_')) return false;
  if (!(err instanceof Error) || typeof candidate.details !== 'object') return false;
  return code === undefined || candidate.code === code;
}

function stripUndefined<T extends Record<string, unknown>>(obj: T): Partial<T> {
  for (const key of Object.keys(obj)) if (obj[key] === undefined) delete obj[key];
  return obj;
}
