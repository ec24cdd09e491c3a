/**
 * The SQL role: a small driver interface that every pattern uses, dialect capability flags,
 * and the `sql` tagged template that keeps values as parameters and identifiers validated and
 * quoted, whatever the engine.
 */
import { type RetryOptions, type RetryPolicy, retryPolicy } from './async.js';
import { ConfigError, IdentifierError, isStrataError } from './errors.js';

// ---------------------------------------------------------------------------------------------
// Dialects

/** Transaction isolation levels, from weakest to strongest. */
export type IsolationLevel = 'read uncommitted' | 'read committed' | 'repeatable read' | 'serializable';

/**
 * What an engine can do. Patterns branch on these flags, never on the dialect's name, so a new
 * engine only has to describe itself.
 */
export interface DialectCapabilities {
  /** `INSERT ... RETURNING` and `UPDATE ... RETURNING`. */
  readonly returning: boolean;
  /** `SAVEPOINT` for nested transactions. */
  readonly savepoints: boolean;
  /** DDL statements take part in transactions and roll back with them. */
  readonly transactionalDdl: boolean;
  /** `INSERT ... ON CONFLICT (...) DO UPDATE`. */
  readonly upsert: boolean;
  /** `LISTEN` / `NOTIFY` between sessions. */
  readonly listenNotify: boolean;
  /** `SELECT ... FOR UPDATE SKIP LOCKED`. */
  readonly skipLocked: boolean;
  /** A binary JSON column type with operators. */
  readonly jsonb: boolean;
  /** `PARTITION BY RANGE` tables. */
  readonly declarativePartitioning: boolean;
  /** A logical replication stream of committed changes. */
  readonly logicalReplication: boolean;
  /** More than one connection can write at the same time. */
  readonly concurrentWriters: boolean;
  /** Isolation levels a transaction may ask for. */
  readonly isolationLevels: readonly IsolationLevel[];
  /** Largest number of bound parameters in one statement. */
  readonly maxParameters: number;
}

/** Conservative defaults: a dialect starts from these and switches on what it supports. */
export const defaultCapabilities: DialectCapabilities = Object.freeze({
  returning: false,
  savepoints: false,
  transactionalDdl: false,
  upsert: false,
  listenNotify: false,
  skipLocked: false,
  jsonb: false,
  declarativePartitioning: false,
  logicalReplication: false,
  concurrentWriters: false,
  isolationLevels: Object.freeze(['serializable'] as IsolationLevel[]),
  maxParameters: 999,
});

/** How an engine spells parameters and identifiers, and what it can do. */
export interface SqlDialect {
  /** The engine's name, for messages and metrics (`'sqlite'`, `'postgres'`). */
  readonly name: string;
  readonly capabilities: DialectCapabilities;
  /** The placeholder for the parameter at `index` (1-based): `$1` or `?`. */
  placeholder(index: number): string;
  /** Quotes an already validated identifier part. */
  quoteIdentifier(name: string): string;
}

// ---------------------------------------------------------------------------------------------
// Identifiers

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** PostgreSQL truncates identifiers longer than 63 bytes; we refuse them instead. */
export const MAX_IDENTIFIER_LENGTH = 63;

/**
 * Checks that `name` is a plain SQL identifier (letters, digits, underscore, not starting with a
 * digit, at most 63 characters). Throws `E_IDENTIFIER` otherwise; the name is not echoed.
 */
export function assertIdentifier(name: unknown): asserts name is string {
  if (typeof name !== 'string') throw new IdentifierError('an identifier must be a string');
  if (name.length === 0) throw new IdentifierError('an identifier must not be empty');
  if (name.length > MAX_IDENTIFIER_LENGTH) {
    throw new IdentifierError(`an identifier must be at most ${MAX_IDENTIFIER_LENGTH} characters`);
  }
  if (!IDENTIFIER.test(name)) {
    throw new IdentifierError('only letters, digits and underscores are allowed, not starting with a digit');
  }
}

/**
 * Validates an identifier that came from configuration; throws `E_CONFIG` naming `option`
 * (with the `E_IDENTIFIER` error as cause) so the user knows which setting to fix.
 */
export function configIdentifier(name: unknown, option: string): string {
  try {
    assertIdentifier(name);
    return name;
  } catch (err) {
    throw new ConfigError(option, 'not a valid SQL identifier (letters, digits, underscores)', {
      cause: err,
    });
  }
}

/** Quotes an identifier part the standard way (double quotes, doubled inside). */
export function quoteIdentifierStandard(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

// ---------------------------------------------------------------------------------------------
// The sql template

type Part =
  | { readonly t: 'text'; readonly text: string }
  | { readonly t: 'param'; readonly value: unknown }
  | { readonly t: 'ident'; readonly names: readonly string[] };

const SQL_BRAND: unique symbol = Symbol.for('strata.sql');

/**
 * A piece of SQL with its parameters kept apart; compile it with `compileSql`. A fragment from
 * the `sql` tag keeps its call site's strings, so the compiled text can be cached per call site.
 */
export interface SqlFragment {
  readonly [SQL_BRAND]: true;
}

/** Fragments from the tag: the call site's strings and the interpolated values. */
class TemplateFragment implements SqlFragment {
  readonly [SQL_BRAND] = true as const;
  constructor(
    readonly strings: TemplateStringsArray,
    readonly values: readonly unknown[],
  ) {}
}

/** Fragments built by the helpers (`sql.id`, `sql.join`, ...): a flat list of parts. */
class PartsFragment implements SqlFragment {
  readonly [SQL_BRAND] = true as const;
  constructor(readonly parts: readonly Part[]) {}
}

/** True when `value` is a fragment built by `sql`. */
export function isSqlFragment(value: unknown): value is SqlFragment {
  return value instanceof TemplateFragment || value instanceof PartsFragment;
}

function partsOf(value: unknown, out: Part[]): void {
  if (value instanceof PartsFragment) out.push(...value.parts);
  else if (value instanceof TemplateFragment) {
    const { strings, values } = value;
    for (let i = 0; i < strings.length; i++) {
      if (strings[i]!.length > 0) out.push({ t: 'text', text: strings[i]! });
      if (i < values.length) partsOf(values[i], out);
    }
  } else out.push({ t: 'param', value });
}

/**
 * Builds a statement: interpolated values become bound parameters, interpolated fragments
 * (`sql.id`, `sql.join`, nested `sql`) are spliced in.
 *
 * ```ts
 * sql`select * from ${sql.id('users')} where email = ${email}`
 * ```
 */
export function sql(strings: TemplateStringsArray, ...values: unknown[]): SqlFragment {
  return new TemplateFragment(strings, values);
}

/** A validated, quoted identifier; several parts make a qualified name (`schema.table`). */
sql.id = (...names: string[]): SqlFragment => {
  if (names.length === 0) throw new IdentifierError('an identifier needs at least one part');
  for (const name of names) assertIdentifier(name);
  return new PartsFragment([{ t: 'ident', names }]);
};

/** Trusted SQL text spliced in as is. Never pass user input here. */
sql.raw = (text: string): SqlFragment => new PartsFragment([{ t: 'text', text }]);

/** A single bound parameter (useful inside `sql.join`). */
sql.value = (value: unknown): SqlFragment => new PartsFragment([{ t: 'param', value }]);

/** Joins fragments or values (values become parameters) with `separator` (default `, `). */
sql.join = (items: readonly unknown[], separator = ', '): SqlFragment => {
  const parts: Part[] = [];
  items.forEach((item, i) => {
    if (i > 0) parts.push({ t: 'text', text: separator });
    partsOf(item, parts);
  });
  return new PartsFragment(parts);
};

/** The empty fragment. */
sql.empty = new PartsFragment([]) as SqlFragment;

/** A statement compiled for one dialect. */
export interface CompiledSql {
  readonly text: string;
  readonly params: unknown[];
}

// Compiled text per call site and dialect, for templates whose values are all plain parameters
// (the common case): compiling is then one lookup and a copy of the values.
const textCache = new WeakMap<SqlDialect, WeakMap<TemplateStringsArray, string>>();

function cachedText(statement: TemplateFragment, dialect: SqlDialect): string | undefined {
  for (const v of statement.values)
    if (v instanceof TemplateFragment || v instanceof PartsFragment) return undefined;
  let perDialect = textCache.get(dialect);
  if (perDialect === undefined) {
    perDialect = new WeakMap();
    textCache.set(dialect, perDialect);
  }
  let text = perDialect.get(statement.strings);
  if (text === undefined) {
    const { strings } = statement;
    text = strings[0]!;
    for (let i = 1; i < strings.length; i++) text += dialect.placeholder(i) + strings[i]!;
    perDialect.set(statement.strings, text);
  }
  return text;
}

/** Compiles a fragment into text with the dialect's placeholders and an ordered parameter list. */
export function compileSql(statement: SqlFragment, dialect: SqlDialect): CompiledSql {
  if (statement instanceof TemplateFragment) {
    const text = cachedText(statement, dialect);
    if (text !== undefined) return { text, params: [...statement.values] };
  }
  const parts: Part[] = [];
  partsOf(statement, parts);
  let text = '';
  const params: unknown[] = [];
  for (const part of parts) {
    if (part.t === 'text') text += part.text;
    else if (part.t === 'param') {
      params.push(part.value);
      text += dialect.placeholder(params.length);
    } else text += part.names.map((n) => dialect.quoteIdentifier(n)).join('.');
  }
  return { text, params };
}

// ---------------------------------------------------------------------------------------------
// The driver role

/** A row as the engine returns it: column name to value. */
export type Row = Record<string, unknown>;

/** The outcome of one statement. */
export interface QueryResult<R = Row> {
  /** Rows returned (empty for statements that return none). */
  readonly rows: R[];
  /** Rows returned, or rows changed by an INSERT, UPDATE or DELETE. */
  readonly rowCount: number;
}

/** Options for a transaction. */
export interface TransactionOptions {
  /** Isolation level (default: the engine's default; SQLite is always serializable). */
  isolation?: IsolationLevel;
  /** A read-only transaction (PostgreSQL `READ ONLY`, SQLite `BEGIN DEFERRED`). */
  readOnly?: boolean;
  /**
   * Retry the whole callback on a serialization failure or deadlock (`E_SERIALIZATION`).
   * `true` means the default retry policy. Ignored for nested transactions.
   */
  retry?: boolean | RetryOptions;
}

/** Something that runs statements: a driver, or a transaction. */
export interface SqlExecutor {
  readonly dialect: SqlDialect;
  /**
   * Runs one statement and returns its rows and row count. A fragment is compiled for the
   * dialect; a string uses the dialect's own placeholders with `params`. Engine failures are
   * `QueryError`s (`E_QUERY`, `E_CONSTRAINT`, `E_SERIALIZATION`); lost connections `E_CONNECTION`.
   */
  query<R = Row>(statement: SqlFragment | string, params?: readonly unknown[]): Promise<QueryResult<R>>;
  /** Runs a script of one or more statements without parameters (DDL, migrations). */
  exec(script: string): Promise<void>;
  /**
   * Runs `fn` in a transaction: committed when it resolves, rolled back when it throws (the
   * error is rethrown). Inside a transaction this opens a savepoint instead.
   */
  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>, options?: TransactionOptions): Promise<T>;
}

/** An open transaction (or savepoint); valid only until its callback settles. */
export interface SqlTransaction extends SqlExecutor {
  /** 1 for a top-level transaction, 2+ for savepoints inside it. */
  readonly depth: number;
  /** Registers `fn` to run after the top-level transaction commits (not on rollback). */
  afterCommit(fn: () => void | Promise<void>): void;
}

/** A connection (or pool) to one SQL database. */
export interface SqlDriver extends SqlExecutor {
  /** A label for messages, metrics and the dashboard (defaults to the engine and database). */
  readonly name: string;
  /** True after `close()`; every later call fails with `E_CLOSED`. */
  readonly closed: boolean;
  /** Checks the database answers; throws `E_CONNECTION` within the connect timeout if not. */
  ping(): Promise<void>;
  /** Releases connections; safe to call twice. Drivers built on a user's own pool leave it open. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by driver implementations

/** Resolves `TransactionOptions.retry` to a policy, or `undefined` when the caller did not ask. */
export function transactionRetryPolicy(retry: TransactionOptions['retry']): RetryPolicy | undefined {
  if (retry === undefined || retry === false) return undefined;
  return retryPolicy(retry === true ? { attempts: 5, initialDelay: 5, maxDelay: 250 } : retry, 'retry');
}

/** True when a failed transaction may be retried as a whole. */
export function isRetryableTransactionError(err: unknown): boolean {
  return isStrataError(err, 'E_SERIALIZATION');
}

/** Collects `afterCommit` callbacks of one top-level transaction and runs them after commit. */
export class AfterCommitHooks {
  readonly #hooks: Array<() => void | Promise<void>> = [];

  add(fn: () => void | Promise<void>): void {
    this.#hooks.push(fn);
  }

  /**
   * Runs every hook in order. A failing hook does not undo the commit nor stop later hooks; its
   * error goes to `onError`.
   */
  async run(onError: (err: unknown) => void): Promise<void> {
    for (const hook of this.#hooks) {
      try {
        await hook();
      } catch (err) {
        onError(err);
      }
    }
  }
}

/** The default sink for errors nobody awaits (after-commit hooks, background work): a process warning. */
export function reportBackgroundError(source: string, err: unknown): void {
  const code = isStrataError(err) ? err.code : err instanceof Error ? err.name : 'unknown';
  // Only strata messages are known to be free of values; other errors are named by class alone.
  const detail = isStrataError(err) ? err.message : undefined;
  process.emitWarning(`${source} failed in the background (${code})`, {
    code: 'STRATA_BACKGROUND',
    ...(detail === undefined ? {} : { detail }),
  });
}

/** A stable 32-bit unsigned key from a name (FNV-1a), e.g. for PostgreSQL advisory locks. */
export function nameHash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
