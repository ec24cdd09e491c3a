import { AsyncLocalStorage } from 'node:async_hooks';
import pg from 'pg';
import { Mutex, retry, withTimeout } from '../../core/async.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  ConnectionError,
  type Endpoint,
  isStrataError,
  StrataError,
} from '../../core/errors.js';
import {
  AfterCommitHooks,
  compileSql,
  isRetryableTransactionError,
  isSqlFragment,
  type QueryResult,
  type Row,
  reportBackgroundError,
  type SqlDriver,
  type SqlFragment,
  type SqlTransaction,
  type TransactionOptions,
  transactionRetryPolicy,
} from '../../core/sql.js';
import { postgresDialect } from './postgres-dialect.js';
import { type PostgresEndpoint, type PostgresErrorContext, toPostgresError } from './postgres-errors.js';

/** Type parsers pg consults per pool or per query, in the shape of pg's `types` option. */
export interface PgTypeParsersLike {
  /** The parser of values of type `oid` sent in `format`. */
  getTypeParser(oid: number, format?: 'text' | 'binary'): unknown;
}

/** One statement as pg's `client.query(config)` takes it. */
export interface PgQueryConfig {
  /** The statement, with `$n` placeholders. */
  text: string;
  /** The bound parameters, in placeholder order. */
  values?: unknown[];
  /** Result parsers for this statement, overriding the pool's. */
  types?: PgTypeParsersLike;
  /** `'extended'` forces the extended protocol: one statement, parameters bound separately. */
  queryMode?: 'extended';
}

/** The parts of pg's query result strata reads. */
export interface PgQueryResultLike {
  /** The rows returned. */
  rows: unknown[];
  /** Rows returned or changed; null for commands that report none. */
  rowCount: number | null;
  /** The command tag, such as `COMMIT` (which PostgreSQL answers with `ROLLBACK` for a failed transaction). */
  command?: string;
}

/** The parts of a checked-out pg `PoolClient` strata calls. */
export interface PgPoolClientLike {
  /** Runs one statement, or a parameterless script through the simple protocol. */
  query(config: PgQueryConfig): Promise<PgQueryResultLike | PgQueryResultLike[]>;
  /** Returns the client to its pool; an error (or `true`) destroys it instead. */
  release(err?: Error | boolean): void;
  /** Listens for the connection failing while the client is checked out. */
  on(event: 'error', listener: (err: Error) => void): unknown;
  /** Stops listening. */
  off(event: 'error', listener: (err: Error) => void): unknown;
}

/** The parts of a pg `Pool` strata calls, so a user can hand over their own. */
export interface PgPoolLike {
  /** Checks out a client, opening a connection when none is idle. */
  connect(): Promise<PgPoolClientLike>;
  /** Closes every connection; strata calls it only on a pool it created. */
  end(): Promise<void>;
}

/** Options for `createPostgresDriver`. */
export interface PostgresDriverOptions {
  /** A `postgres://user:password@host:port/database` URL; without it (and without `pool`), pg reads the `PG*` variables. */
  url?: string;
  /**
   * A pg pool the caller created and will end; strata never closes it, changes its settings or
   * listens to its 'error' event (give it your own listener). Strata's int8 parsing applies per query.
   */
  pool?: PgPoolLike;
  /** A label for messages and the dashboard (default `postgres:<database>`). */
  name?: string;
  /** How long opening a connection, or waiting for a free pooled one, may take (default 5s). */
  connectTimeout?: Duration;
  /** The most connections strata's pool opens (default 10). */
  maxConnections?: number;
  /** How long an unused pooled connection stays open (default 10s; 0 keeps them open). */
  idleTimeout?: Duration;
  /** The server-side `statement_timeout` of every connection (default: the server's setting). */
  statementTimeout?: Duration;
  /** The `application_name` shown in `pg_stat_activity` (default: `PGAPPNAME`, else none). */
  applicationName?: string;
  /** Where errors nobody awaits go: idle connection failures, after-commit hooks (default: a process warning). */
  onBackgroundError?: (err: unknown) => void;
}

/** A PostgreSQL database through a pg pool, with the `SqlDriver` contract. */
export interface PostgresDriver extends SqlDriver {
  /** The pool the driver uses (its own, or the caller's), for what strata does not wrap. */
  readonly pool: PgPoolLike;
  /** Host, port, database and user the driver connects to; never the password. */
  readonly endpoint: Endpoint;
}

// int8 (oid 20) and int8[] (oid 1016): a JavaScript number when it is exactly representable,
// a BigInt beyond 2^53 - 1. pg's own default is a string; its global parsers are left alone.
const INT8_OID = 20;
const INT8_ARRAY_OID = 1016;

function parseInt8(value: string): number | bigint {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : BigInt(value);
}

// pg-types' array parser (its typings describe it wrongly): splits a PostgreSQL array literal and
// hands each element, or null, to `transform`.
const pgArrayParser = pg.types.arrayParser as unknown as {
  create(source: string, transform: (entry: string | null) => unknown): { parse(): unknown };
};

function parseInt8Array(value: string): unknown {
  return pgArrayParser.create(value, (entry) => (entry === null ? null : parseInt8(entry))).parse();
}

const pgTypeParser = pg.types.getTypeParser as (oid: number, format?: 'text' | 'binary') => unknown;

const typeParsers: PgTypeParsersLike = Object.freeze({
  getTypeParser(oid: number, format: 'text' | 'binary' = 'text'): unknown {
    if (format === 'text' && oid === INT8_OID) return parseInt8;
    if (format === 'text' && oid === INT8_ARRAY_OID) return parseInt8Array;
    return pgTypeParser(oid, format);
  },
});

const ISOLATION_SQL: Record<string, string> = {
  'read uncommitted': 'READ UNCOMMITTED',
  'read committed': 'READ COMMITTED',
  'repeatable read': 'REPEATABLE READ',
  serializable: 'SERIALIZABLE',
};

/**
 * Creates a driver on a pg pool: its own, from `url` or else from the `PG*` variables and pg's
 * defaults, or the caller's `pool`. No connection is opened until the first call. Throws
 * `E_CONFIG` naming the option for invalid options; a malformed URL is reported without
 * echoing it, since it may hold a password.
 *
 * Results: int8 columns (`count(*)`, `bigint`, `bigserial`) are JavaScript numbers when they
 * fit in 2^53 - 1 and BigInts beyond; this is set per pool and per query through pg's `types`
 * option, never on pg's global parsers. `numeric` stays a string. Values are bound as pg binds
 * them (objects as JSON, arrays as PostgreSQL arrays, `undefined` as null).
 *
 * Every wait for a connection is bounded by `connectTimeout`; an idle connection that fails is
 * reported to `onBackgroundError` and never crashes the process.
 */
export function createPostgresDriver(options: PostgresDriverOptions | string): PostgresDriver {
  const opts: PostgresDriverOptions = typeof options === 'string' ? { url: options } : options;
  if (typeof opts !== 'object' || opts === null) {
    throw new ConfigError('options', 'expected a postgres:// URL or an options object');
  }
  const connectTimeoutMs = parseDuration(opts.connectTimeout ?? '5s', 'connectTimeout', { allowZero: false });
  const statementTimeoutMs =
    opts.statementTimeout === undefined
      ? undefined
      : parseDuration(opts.statementTimeout, 'statementTimeout', { allowZero: false });
  const idleTimeoutMs =
    opts.idleTimeout === undefined ? undefined : parseDuration(opts.idleTimeout, 'idleTimeout');
  const maxConnections = opts.maxConnections ?? 10;
  if (!Number.isInteger(maxConnections) || maxConnections < 1) {
    throw new ConfigError('maxConnections', 'must be an integer of at least 1');
  }
  if (
    opts.applicationName !== undefined &&
    (typeof opts.applicationName !== 'string' || opts.applicationName.length > 63)
  ) {
    throw new ConfigError('applicationName', 'must be a string of at most 63 characters');
  }
  if (opts.name !== undefined && (typeof opts.name !== 'string' || opts.name.length === 0)) {
    throw new ConfigError('name', 'must be a non-empty string');
  }
  if (opts.onBackgroundError !== undefined && typeof opts.onBackgroundError !== 'function') {
    throw new ConfigError('onBackgroundError', 'must be a function');
  }

  let pool: PgPoolLike;
  let endpoint: PostgresEndpoint;
  let ownPool: pg.Pool | undefined;
  if (opts.pool !== undefined) {
    if (!isPoolLike(opts.pool))
      throw new ConfigError('pool', 'expected a pg Pool (with connect() and end())');
    for (const option of [
      'url',
      'maxConnections',
      'idleTimeout',
      'statementTimeout',
      'applicationName',
    ] as const) {
      if (opts[option] !== undefined) {
        throw new ConfigError(option, 'cannot be combined with "pool"; set it on your own pool instead');
      }
    }
    pool = opts.pool;
    endpoint = endpointOfPool(opts.pool);
  } else {
    if (opts.url !== undefined) assertPostgresUrl(opts.url);
    endpoint = resolveEndpoint(opts.url);
    ownPool = new pg.Pool({
      ...(opts.url === undefined ? {} : { connectionString: opts.url }),
      max: maxConnections,
      connectionTimeoutMillis: connectTimeoutMs,
      ...(idleTimeoutMs === undefined ? {} : { idleTimeoutMillis: idleTimeoutMs }),
      ...(statementTimeoutMs === undefined ? {} : { statement_timeout: statementTimeoutMs }),
      ...(opts.applicationName === undefined ? {} : { application_name: opts.applicationName }),
      keepAlive: true,
      types: typeParsers as pg.CustomTypesConfig,
    });
    pool = ownPool;
  }
  const name = opts.name ?? `postgres:${endpoint.database ?? 'default'}`;
  const driver = new PostgresDriverImpl(
    pool,
    name,
    { backend: 'postgres', ...endpoint },
    ownPool !== undefined,
    { connectTimeoutMs, statementTimeoutMs },
    opts.onBackgroundError,
  );
  // An idle pooled client whose connection drops makes the pool emit 'error'; unheard, that
  // would crash the process. The pool has already discarded the client.
  ownPool?.on('error', (err) => driver.reportBackground('idle connection', err));
  return driver;
}

function isPoolLike(value: unknown): value is PgPoolLike {
  const candidate = value as { connect?: unknown; end?: unknown } | null;
  return (
    typeof candidate === 'object' &&
    candidate !== null &&
    typeof candidate.connect === 'function' &&
    typeof candidate.end === 'function'
  );
}

/** Throws `E_CONFIG` (option `url`) unless `url` is an absolute postgres URL; never echoes it. */
function assertPostgresUrl(url: unknown): asserts url is string {
  if (typeof url !== 'string' || url.length === 0) {
    throw new ConfigError('url', 'must be a postgres://user@host:port/database URL');
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // Node's URL error carries the input, which may hold a password: not kept as cause.
    throw new ConfigError('url', 'not a valid URL; expected postgres://user@host:port/database');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new ConfigError('url', 'must start with postgres:// or postgresql://');
  }
  try {
    decodeURIComponent(parsed.username);
    decodeURIComponent(parsed.password);
    decodeURIComponent(parsed.pathname);
  } catch {
    throw new ConfigError('url', 'contains an invalid percent-encoding');
  }
}

/** Host, port, database and user as pg itself resolves them (URL, then `PG*`, then defaults). */
function resolveEndpoint(url: string | undefined): PostgresEndpoint {
  try {
    // A Client resolves settings in its constructor and opens nothing until connect().
    const probe = new pg.Client(url === undefined ? {} : { connectionString: url });
    return {
      host: probe.host,
      port: probe.port,
      database: probe.database,
      user: probe.user,
    };
  } catch {
    throw new ConfigError('url', 'cannot be parsed as a PostgreSQL connection string');
  }
}

function endpointOfPool(pool: PgPoolLike): PostgresEndpoint {
  const options = (pool as { options?: unknown }).options;
  if (typeof options !== 'object' || options === null) return {};
  try {
    const probe = new pg.Client(options as pg.ClientConfig);
    return { host: probe.host, port: probe.port, database: probe.database, user: probe.user };
  } catch {
    return {};
  }
}

function normalise<R>(
  result: PgQueryResultLike | PgQueryResultLike[],
): QueryResult<R> & { command?: string } {
  // A multi-statement script answers with one result per statement; the last one is the answer.
  const last = Array.isArray(result) ? result[result.length - 1] : result;
  const rows = (last?.rows ?? []) as R[];
  return { rows, rowCount: last?.rowCount ?? rows.length, command: last?.command };
}

/** One checked-out client: maps its errors and remembers when its connection broke. */
class Lease {
  #broken: Error | undefined;
  #released = false;
  readonly #onError = (err: Error): void => {
    this.#broken ??= err;
  };

  constructor(
    private readonly client: PgPoolClientLike,
    private readonly mapError: (err: unknown) => StrataError,
  ) {
    // A checked-out client has no pool listener; its connection failing between queries would
    // otherwise be an unhandled 'error' event.
    client.on('error', this.#onError);
  }

  get broken(): boolean {
    return this.#broken !== undefined;
  }

  async run<R>(config: PgQueryConfig): Promise<QueryResult<R> & { command?: string }> {
    try {
      return normalise<R>(await this.client.query(config));
    } catch (err) {
      const mapped = this.mapError(err);
      if (mapped.code === 'E_CONNECTION')
        this.#broken ??= err instanceof Error ? err : new Error('connection lost');
      throw mapped;
    }
  }

  /** Returns the client to the pool, or destroys it when its connection broke. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.client.off('error', this.#onError);
    this.client.release(this.#broken);
  }

  /** Destroys the client instead of returning it to the pool. */
  destroy(reason: Error): void {
    this.#broken ??= reason;
    this.release();
  }
}

/** The handle of the innermost running transaction callback, to catch savepoint self-deadlocks. */
const txScope = new AsyncLocalStorage<PostgresTransaction>();

class PostgresDriverImpl implements PostgresDriver {
  readonly dialect = postgresDialect;
  readonly #onBackgroundError: ((err: unknown) => void) | undefined;
  readonly #context: PostgresErrorContext;
  readonly #connectTimeoutMs: number;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(
    readonly pool: PgPoolLike,
    readonly name: string,
    readonly endpoint: Endpoint,
    private readonly owned: boolean,
    context: PostgresErrorContext & { connectTimeoutMs: number },
    onBackgroundError: ((err: unknown) => void) | undefined,
  ) {
    this.#context = context;
    this.#connectTimeoutMs = context.connectTimeoutMs;
    this.#onBackgroundError = onBackgroundError;
  }

  get closed(): boolean {
    return this.#closed;
  }

  reportBackground(source: string, err: unknown, map = true): void {
    // Connection errors are pg's and get mapped; a hook's own error is the user's and passes as is.
    const mapped = !map || isStrataError(err) ? err : this.mapError(err);
    if (this.#onBackgroundError !== undefined) this.#onBackgroundError(mapped);
    else reportBackgroundError(`${this.name} ${source}`, mapped);
  }

  mapError(err: unknown): StrataError {
    const { backend: _backend, ...where } = this.endpoint;
    return toPostgresError(err, where, this.#context);
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError(this.name);
  }

  async #acquire(): Promise<Lease> {
    let client: PgPoolClientLike;
    try {
      const pending = Promise.resolve().then(() => this.pool.connect());
      // Strata's own pool bounds waits with connectionTimeoutMillis; a caller's pool may not.
      client = this.owned
        ? await pending
        : await withTimeout(pending, this.#connectTimeoutMs, 'waiting for a pooled postgres connection', {
            onTimeout: () => {
              pending.then(
                (late) => late.release(),
                () => undefined,
              );
            },
          });
    } catch (err) {
      if (this.#closed) throw new ClosedError(this.name, { cause: err });
      throw this.mapError(err);
    }
    return new Lease(client, (err) => this.mapError(err));
  }

  config(statement: SqlFragment | string, params: readonly unknown[] | undefined): PgQueryConfig {
    if (isSqlFragment(statement)) {
      const compiled = compileSql(statement, postgresDialect);
      return { text: compiled.text, values: compiled.params, types: typeParsers, queryMode: 'extended' };
    }
    return { text: statement, values: [...(params ?? [])], types: typeParsers, queryMode: 'extended' };
  }

  scriptConfig(script: string): PgQueryConfig {
    // No values and no queryMode: pg uses the simple protocol, which runs several statements.
    return { text: script, types: typeParsers };
  }

  async query<R = Row>(
    statement: SqlFragment | string,
    params?: readonly unknown[],
  ): Promise<QueryResult<R>> {
    this.#assertOpen();
    const config = this.config(statement, params);
    const lease = await this.#acquire();
    try {
      const { rows, rowCount } = await lease.run<R>(config);
      return { rows, rowCount };
    } finally {
      lease.release();
    }
  }

  async exec(script: string): Promise<void> {
    this.#assertOpen();
    const lease = await this.#acquire();
    try {
      await lease.run(this.scriptConfig(script));
    } finally {
      lease.release();
    }
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
    this.#assertOpen();
    const begin = beginStatement(options);
    const policy = transactionRetryPolicy(options.retry);
    const once = () => this.#runTopLevel(fn, begin);
    if (policy === undefined) return once();
    return retry(once, policy, isRetryableTransactionError);
  }

  async #runTopLevel<T>(fn: (tx: SqlTransaction) => Promise<T>, begin: string): Promise<T> {
    this.#assertOpen();
    const lease = await this.#acquire();
    try {
      await lease.run({ text: begin });
    } catch (err) {
      lease.release();
      throw err;
    }
    const hooks = new AfterCommitHooks();
    const tx = new PostgresTransaction(this, lease, 1, (hook) => hooks.add(hook), undefined);
    let result: T;
    try {
      result = await txScope.run(tx, () => fn(tx));
    } catch (err) {
      tx.finish();
      await this.#rollback(lease);
      throw err;
    }
    tx.finish();
    try {
      const commit = await lease.run({ text: 'COMMIT' });
      // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK, not an error.
      if (commit.command === 'ROLLBACK') {
        throw new StrataError(
          'E_TRANSACTION',
          `${this.name}: the transaction was rolled back because a statement in it failed`,
        );
      }
    } finally {
      lease.release();
    }
    await hooks.run((err) => this.reportBackground('after-commit hook', err, false));
    return result;
  }

  async #rollback(lease: Lease): Promise<void> {
    if (!lease.broken) {
      try {
        await lease.run({ text: 'ROLLBACK' });
      } catch (err) {
        // A connection whose ROLLBACK failed is in an unknown state: never hand it out again.
        lease.destroy(err instanceof Error ? err : new Error('rollback failed'));
      }
    }
    lease.release();
  }

  async ping(): Promise<void> {
    this.#assertOpen();
    const lease = await this.#acquire();
    const timeoutMs = this.#connectTimeoutMs;
    try {
      await withTimeout(lease.run({ text: 'select 1' }), timeoutMs, 'postgres ping', {
        onTimeout: () => lease.destroy(new Error('ping timed out')),
      });
    } catch (err) {
      if (isStrataError(err, 'E_TIMEOUT')) {
        throw new ConnectionError(this.endpoint, `timed out after ${timeoutMs} ms`, { cause: err });
      }
      throw err;
    } finally {
      lease.release();
    }
  }

  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#closed = true;
    // pg's end() waits for checked-out clients, so running transactions finish first.
    this.#closing = this.owned ? this.pool.end() : Promise.resolve();
    return this.#closing;
  }
}

function beginStatement(options: TransactionOptions): string {
  let text = 'BEGIN';
  if (options.isolation !== undefined) {
    const level = ISOLATION_SQL[options.isolation];
    if (level === undefined) {
      throw new ConfigError(
        'isolation',
        'must be read uncommitted, read committed, repeatable read or serializable',
      );
    }
    text += ` ISOLATION LEVEL ${level}`;
  }
  if (options.readOnly === true) text += ' READ ONLY';
  return text;
}

class PostgresTransaction implements SqlTransaction {
  readonly dialect = postgresDialect;
  readonly #savepoints = new Mutex();
  #done = false;

  constructor(
    private readonly driver: PostgresDriverImpl,
    private readonly lease: Lease,
    readonly depth: number,
    private readonly addHook: (fn: () => void | Promise<void>) => void,
    private readonly parent: PostgresTransaction | undefined,
  ) {}

  finish(): void {
    this.#done = true;
  }

  get active(): boolean {
    return !this.#done;
  }

  #assertActive(): void {
    if (this.#done) throw new ClosedError(`transaction on ${this.driver.name}`);
  }

  #within(ancestor: PostgresTransaction): boolean {
    for (let t = this.parent; t !== undefined; t = t.parent) if (t === ancestor) return true;
    return false;
  }

  async query<R = Row>(
    statement: SqlFragment | string,
    params?: readonly unknown[],
  ): Promise<QueryResult<R>> {
    this.#assertActive();
    const { rows, rowCount } = await this.lease.run<R>(this.driver.config(statement, params));
    return { rows, rowCount };
  }

  async exec(script: string): Promise<void> {
    this.#assertActive();
    await this.lease.run(this.driver.scriptConfig(script));
  }

  afterCommit(fn: () => void | Promise<void>): void {
    this.#assertActive();
    this.addHook(fn);
  }

  async transaction<T>(fn: (tx: SqlTransaction) => Promise<T>): Promise<T> {
    this.#assertActive();
    const current = txScope.getStore();
    if (current?.active && current.#within(this)) {
      // The caller runs inside a savepoint of this transaction, which holds #savepoints until it
      // settles: waiting for it here would never end.
      throw new StrataError(
        'E_TRANSACTION',
        `${this.driver.name}: an outer transaction handle was used inside a nested transaction; use the innermost handle`,
      );
    }
    // Savepoints nest strictly; concurrent nested calls on one transaction take turns.
    return this.#savepoints.run(async () => {
      this.#assertActive();
      const name = `strata_sp_${this.depth}`;
      await this.lease.run({ text: `SAVEPOINT ${name}` });
      const hooks: Array<() => void | Promise<void>> = [];
      const inner = new PostgresTransaction(
        this.driver,
        this.lease,
        this.depth + 1,
        (h) => hooks.push(h),
        this,
      );
      try {
        const result = await txScope.run(inner, () => fn(inner));
        inner.finish();
        await this.lease.run({ text: `RELEASE SAVEPOINT ${name}` });
        // Hooks of a savepoint count only once it is part of the enclosing transaction.
        for (const hook of hooks) this.addHook(hook);
        return result;
      } catch (err) {
        inner.finish();
        if (!this.lease.broken) {
          // If this fails too the transaction is aborted, and COMMIT reports it.
          await this.lease
            .run({ text: `ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}` })
            .catch(() => undefined);
        }
        throw err;
      }
    });
  }
}
