/**
 * A replica set: one primary that takes every write, and replicas that serve reads at the
 * consistency each read names.
 *
 * - `strong`: the primary.
 * - `eventual`: a replica in the rotation, picked by the balance policy; the primary when none is.
 * - `{ session: token }` (read-your-writes): a replica that has applied at least the token's
 *   position, waiting up to `session.wait` for one to get there, else the primary.
 * - `{ maxLag: '2s' }` (bounded staleness): a replica whose staleness, as last measured plus the
 *   time since, is within the bound; else the primary.
 *
 * Every write returns a token of the primary's position after its commit. A read that fails on a
 * replica with a connection-like error (`E_CONNECTION`, `E_TIMEOUT`, `E_CLOSED`, or
 * `E_SERIALIZATION`, which a standby raises when replay cancels a query) runs again on another
 * eligible replica, then on the primary; the caller sees only the primary's own failure. Read
 * callbacks must therefore be safe to run twice.
 */
import { type Clock, systemClock } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ClosedError, ConfigError, isStrataError, StrataError } from '../core/errors.js';
import type { PositionProvider } from '../core/positions.js';
import type {
  QueryResult,
  Row,
  SqlDriver,
  SqlExecutor,
  SqlFragment,
  SqlTransaction,
  TransactionOptions,
} from '../core/sql.js';
import { type BalancePolicy, createBalancer } from './balance.js';
import { type HealthChange, HealthMonitor, ReplicaNode, type ReplicaState } from './health.js';
import { clusterIdFrom, createTokenCodec, randomTokenSecret, type TokenCodec } from './tokens.js';

/**
 * How fresh a read must be: `strong`, `eventual`, `{ session: token }` (a token from a write;
 * undefined or null means no write to wait for, as `eventual`) or `{ maxLag: duration }`.
 */
export type Consistency =
  | 'strong'
  | 'eventual'
  | { readonly session: string | null | undefined }
  | { readonly maxLag: Duration };

/** One replica of the set. */
export interface ReplicaOptions {
  /** Its name in stats and messages (1-64 letters, digits, `_.:-`; not `primary`). */
  name: string;
  /** A driver connected to it; the replica set never closes it. */
  driver: SqlDriver;
  /** Its weight for `balance: 'weighted'` (default 1). */
  weight?: number;
}

/** Options for `createReplicaSet`. */
export interface ReplicaSetOptions {
  /** The primary: every write and every strong read. The replica set never closes it. */
  primary: SqlDriver;
  /** The replicas (may be empty: every read then goes to the primary). */
  replicas: readonly ReplicaOptions[];
  /** How positions are read: `postgresWalPosition()` or `changeLogPosition(...)`. */
  position: PositionProvider;
  /** How an eventual read picks a replica (default `round-robin`). */
  balance?: BalancePolicy;
  health?: {
    /** Time between probes (default 250ms). */
    interval?: Duration;
    /** A replica lagging more than this leaves the rotation until it catches up (default 10s). */
    maxLag?: Duration;
    /** Failed probes or reads in a row that take a replica out of the rotation (default 3). */
    failures?: number;
    /** How long one probe may take before it counts as failed (default 1s). */
    timeout?: Duration;
  };
  session?: {
    /** How long a session read waits for a replica to reach its token (default 500ms). */
    wait?: Duration;
    /** How often a waited-on replica is polled (default 10ms). */
    pollEvery?: Duration;
  };
  /** The consistency of reads that name none: `strong`, `eventual` (default) or `{ maxLag }`. */
  defaultConsistency?: Exclude<Consistency, { readonly session: unknown }>;
  /**
   * The secret that signs tokens, at least 16 bytes; every process that issues or accepts this
   * cluster's tokens needs the same one (default: random, so tokens only work in this process).
   */
  tokenSecret?: string | Uint8Array;
  /** The cluster's id in tokens (default: the primary driver's name, made URL-safe). */
  clusterId?: string;
  /** The source of time for probes, waits and lag (default the system clock). */
  clock?: Clock;
  /** Called when a replica changes state (enters or leaves the rotation). */
  onHealthChange?: (change: HealthChange) => void;
}

/** What a write returns: the callback's value and the token of its position. */
export interface Written<T> {
  value: T;
  /** The token a later read passes as `{ session: token }` to see this write. */
  token: string;
}

/** Where a read ran, passed to read callbacks. */
export interface ReadInfo {
  /** The replica's name, or `primary`. */
  node: string;
  /** True when a replica serves the read. */
  replica: boolean;
  /** The consistency the read asked for. */
  consistency: 'strong' | 'eventual' | 'session' | 'maxLag';
  /** How long a session read waited for a replica to catch up, in ms. */
  waitedMs: number;
  /** 1 for the first node tried, 2+ after failures. */
  attempt: number;
}

/** A read callback: runs its statements on the executor of the chosen node. */
export type ReadFunction<T> = (db: SqlExecutor, info: ReadInfo) => Promise<T>;

/** Options of one read. */
export interface ReadOptions {
  /** How fresh the read must be (default the set's `defaultConsistency`). */
  consistency?: Consistency;
}

/** Options of a statement read: its consistency and parameters. */
export interface StatementReadOptions extends ReadOptions {
  /** Parameters of a string statement, in the dialect's placeholder order. */
  params?: readonly unknown[];
}

/** Per-replica figures. */
export interface ReplicaStats {
  /** The replica's name. */
  name: string;
  /** Where it stands (see `ReplicaState`). */
  state: ReplicaState;
  /** In the rotation (`unknown` or `healthy`). */
  healthy: boolean;
  /** Its weight for `weighted` balance. */
  weight: number;
  /** The applied position as people read it (an LSN for PostgreSQL). */
  position: string | undefined;
  /** Lag in the provider's unit (WAL bytes, changes), as last measured. */
  lag: number | undefined;
  /**
   * Lag in seconds as last measured: an upper bound, or, for a replica further behind than the
   * monitor's history reaches, a lower bound.
   */
  lagSeconds: number | undefined;
  /** When lag was last measured, epoch ms. */
  measuredAt: number | undefined;
  /** Reads served. */
  reads: number;
  /** Share of all reads of the set that this replica served (0..1). */
  share: number;
  /** Reads that failed here and ran elsewhere. */
  errors: number;
  /** Probes and session polls that failed. */
  failedProbes: number;
  /** The code of the last failure (`E_CONNECTION`, `E_TIMEOUT`, `E_NOT_REPLICA`, ...). */
  lastErrorCode: string | undefined;
}

/** The figures of a replica set, for the dashboard, the CLI and metrics. */
export interface ReplicaSetStats {
  /** The id in this set's tokens. */
  clusterId: string;
  /** The position provider's kind and unit. */
  kind: string;
  unit: 'bytes' | 'changes';
  /** The primary: its state from the probes, its newest position, reads it served and writes. */
  primary: {
    name: string;
    state: 'unknown' | 'up' | 'down';
    position: string | undefined;
    reads: number;
    share: number;
    writes: number;
    lastErrorCode: string | undefined;
  };
  /** Each replica, in the order given. */
  replicas: ReplicaStats[];
  /** Reads by the consistency they asked for. */
  reads: {
    total: number;
    strong: number;
    eventual: number;
    session: number;
    maxLag: number;
    /** Reads run again elsewhere after a failure on a replica. */
    retries: number;
  };
  /** Reads that wanted a replica and were served by the primary, by consistency. */
  fallbacks: { eventual: number; session: number; maxLag: number };
  /** Session (read-your-writes) reads: served by replicas, fallen back, and how long they waited. */
  session: {
    reads: number;
    servedByReplicas: number;
    fallbacks: number;
    /** Session reads that had to wait for a replica to catch up. */
    waited: number;
    /** Median and 99th percentile of those waits (the last 1,024), in ms. */
    waitP50Ms: number | undefined;
    waitP99Ms: number | undefined;
  };
}

/** A primary and its replicas, with reads routed by consistency. */
export interface ReplicaSet {
  /** The id carried by this set's tokens. */
  readonly clusterId: string;
  /** The primary's driver, for what the set does not wrap. */
  readonly primary: SqlDriver;
  /**
   * Runs `fn` on the primary and returns its value with the token of the position after it.
   * The callback's errors pass unchanged (`E_CONNECTION` naming the primary when it is down).
   * When the write committed but the position cannot be read: `E_POSITION` with
   * `details.committed` true.
   */
  write<T>(fn: (db: SqlExecutor) => Promise<T>): Promise<Written<T>>;
  /** Runs `fn` in a transaction on the primary; after the commit, returns its value and token. */
  transaction<T>(fn: (tx: SqlTransaction) => Promise<T>, options?: TransactionOptions): Promise<Written<T>>;
  /** Runs one statement on the primary; returns its result and the token after it. */
  query<R = Row>(
    statement: SqlFragment | string,
    params?: readonly unknown[],
  ): Promise<QueryResult<R> & { token: string }>;
  /**
   * Runs `fn` on the node the consistency chooses and returns its value; `E_TOKEN` for a bad
   * session token, `E_CONFIG` for a bad consistency.
   */
  read<T>(fn: ReadFunction<T>, options?: ReadOptions): Promise<T>;
  /** Runs one statement on the node the consistency chooses. */
  read<R = Row>(statement: SqlFragment | string, options?: StatementReadOptions): Promise<QueryResult<R>>;
  /** A token of the primary's current position (a sync point for writes made elsewhere). */
  token(): Promise<string>;
  /** The token of `position` (a bigint, or text in the provider's form, such as an LSN). */
  tokenFor(position: bigint | string): string;
  /** The position a token demands; `E_TOKEN` when it is malformed, forged or from another cluster. */
  parseToken(token: string): bigint;
  /** Probes the primary and every replica now; resolves with the stats after it. */
  refresh(): Promise<ReplicaSetStats>;
  /** The current figures. */
  stats(): ReplicaSetStats;
  /** Stops the monitor; later calls fail with `E_CLOSED`. The drivers stay open. Safe to call twice. */
  close(): Promise<void>;
}

const REPLICA_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
const WAIT_SAMPLES = 1_024;
const TOKEN_CACHE = 4_096;
const RETRYABLE = new Set(['E_CONNECTION', 'E_TIMEOUT', 'E_CLOSED', 'E_SERIALIZATION']);

function isDriver(value: unknown): value is SqlDriver {
  const d = value as Partial<SqlDriver> | null;
  return (
    typeof d === 'object' &&
    d !== null &&
    typeof d.query === 'function' &&
    typeof d.transaction === 'function'
  );
}

function isProvider(value: unknown): value is PositionProvider {
  const p = value as Partial<PositionProvider> | null;
  return (
    typeof p === 'object' &&
    p !== null &&
    typeof p.afterWrite === 'function' &&
    typeof p.primary === 'function' &&
    typeof p.replica === 'function' &&
    typeof p.format === 'function' &&
    typeof p.parse === 'function'
  );
}

/** True when a read that failed this way on a replica may run elsewhere. */
function retryable(err: unknown): boolean {
  return isStrataError(err) && RETRYABLE.has(err.code);
}

/**
 * Creates a replica set and starts its health monitor (an unref'd timer). Throws `E_CONFIG`
 * naming the option for anything invalid: a missing driver or provider, duplicate or invalid
 * replica names, weights that are not positive, durations, `failures` below 1, the token secret.
 */
export function createReplicaSet(options: ReplicaSetOptions): ReplicaSet {
  const o = (options ?? {}) as ReplicaSetOptions;
  if (!isDriver(o.primary)) throw new ConfigError('primary', 'expected a SQL driver');
  if (!Array.isArray(o.replicas)) throw new ConfigError('replicas', 'expected an array of { name, driver }');
  if (!isProvider(o.position)) {
    throw new ConfigError('position', 'expected a position provider such as postgresWalPosition()');
  }
  const balance = o.balance ?? 'round-robin';
  if (balance !== 'round-robin' && balance !== 'least-lag' && balance !== 'weighted') {
    throw new ConfigError('balance', 'must be round-robin, least-lag or weighted');
  }
  const names = new Set<string>();
  const nodes = o.replicas.map((r, index) => {
    const option = `replicas[${index}]`;
    if (typeof r !== 'object' || r === null) throw new ConfigError(option, 'expected { name, driver }');
    if (typeof r.name !== 'string' || !REPLICA_NAME.test(r.name) || r.name === 'primary') {
      throw new ConfigError(`${option}.name`, 'must be 1-64 letters, digits or _.:- and not "primary"');
    }
    if (names.has(r.name)) throw new ConfigError(`${option}.name`, 'duplicates the name of another replica');
    names.add(r.name);
    if (!isDriver(r.driver)) throw new ConfigError(`${option}.driver`, 'expected a SQL driver');
    if (r.driver === o.primary) throw new ConfigError(`${option}.driver`, 'is the primary driver');
    const weight = r.weight ?? 1;
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
      throw new ConfigError(`${option}.weight`, 'must be a positive number');
    }
    return new ReplicaNode(index, r.name, r.driver, weight);
  });
  const health = o.health ?? {};
  const failures = health.failures ?? 3;
  if (!Number.isInteger(failures) || failures < 1) {
    throw new ConfigError('health.failures', 'must be an integer of at least 1');
  }
  if (o.onHealthChange !== undefined && typeof o.onHealthChange !== 'function') {
    throw new ConfigError('onHealthChange', 'expected a function');
  }
  const defaultConsistency = o.defaultConsistency ?? 'eventual';
  if (
    typeof defaultConsistency === 'object' &&
    defaultConsistency !== null &&
    'session' in defaultConsistency
  ) {
    throw new ConfigError('defaultConsistency', 'a session token belongs to one read, not to every read');
  }
  const clock = o.clock ?? systemClock;
  const monitor = new HealthMonitor(o.primary, nodes, o.position, {
    intervalMs: parseDuration(health.interval ?? '250ms', 'health.interval', { allowZero: false }),
    maxLagMs: parseDuration(health.maxLag ?? '10s', 'health.maxLag', { allowInfinite: true }),
    failures,
    timeoutMs: parseDuration(health.timeout ?? '1s', 'health.timeout', { allowZero: false }),
    pollEveryMs: parseDuration(o.session?.pollEvery ?? '10ms', 'session.pollEvery', { allowZero: false }),
    clock,
    onChange: o.onHealthChange,
  });
  const waitMs = parseDuration(o.session?.wait ?? '500ms', 'session.wait');
  const codec = createTokenCodec({
    clusterId: o.clusterId ?? clusterIdFrom(o.primary.name ?? 'primary'),
    secret: o.tokenSecret ?? randomTokenSecret(),
  });
  const set = new ReplicaSetImpl(o.primary, nodes, o.position, codec, monitor, clock, {
    balance,
    waitMs,
    defaultConsistency,
  });
  monitor.start();
  return set;
}

type Plan =
  | { kind: 'strong' }
  | { kind: 'eventual' }
  | { kind: 'session'; target: bigint }
  | { kind: 'maxLag'; boundMs: number };

class ReplicaSetImpl implements ReplicaSet {
  readonly clusterId: string;
  readonly #defaultPlan: Plan;
  readonly #waitMs: number;
  readonly #balancer;
  readonly #maxLagCache = new Map<Duration, number>();
  readonly #tokenCache = new Map<string, bigint>();
  readonly #waits: number[] = [];
  #waitCursor = 0;
  #closed = false;
  #primaryReads = 0;
  #writes = 0;
  #retries = 0;
  readonly #byConsistency = { strong: 0, eventual: 0, session: 0, maxLag: 0 };
  readonly #fallbacks = { eventual: 0, session: 0, maxLag: 0 };
  #sessionServed = 0;
  #sessionWaited = 0;

  constructor(
    readonly primary: SqlDriver,
    private readonly nodes: readonly ReplicaNode[],
    private readonly provider: PositionProvider,
    private readonly codec: TokenCodec,
    private readonly monitor: HealthMonitor,
    private readonly clock: Clock,
    settings: { balance: BalancePolicy; waitMs: number; defaultConsistency: Consistency },
  ) {
    this.clusterId = codec.clusterId;
    this.#balancer = createBalancer(settings.balance, nodes.length);
    this.#waitMs = settings.waitMs;
    this.#defaultPlan = this.#plan(settings.defaultConsistency, 'defaultConsistency');
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError('replica set');
  }

  // -------------------------------------------------------------------------------------------
  // Writes

  async #tokenAfterWrite(): Promise<string> {
    let position: bigint;
    try {
      position = await this.provider.afterWrite(this.primary);
    } catch (err) {
      throw new StrataError(
        'E_POSITION',
        'the write committed, but the primary position after it could not be read; read it back with strong consistency',
        { cause: err, details: { committed: true } },
      );
    }
    this.#writes++;
    this.monitor.observePrimary(position, true);
    return this.codec.encode(position);
  }

  async write<T>(fn: (db: SqlExecutor) => Promise<T>): Promise<Written<T>> {
    this.#assertOpen();
    if (typeof fn !== 'function') throw new ConfigError('fn', 'expected a function');
    const value = await fn(this.primary);
    return { value, token: await this.#tokenAfterWrite() };
  }

  async transaction<T>(
    fn: (tx: SqlTransaction) => Promise<T>,
    options?: TransactionOptions,
  ): Promise<Written<T>> {
    this.#assertOpen();
    const value = await this.primary.transaction(fn, options);
    return { value, token: await this.#tokenAfterWrite() };
  }

  async query<R = Row>(
    statement: SqlFragment | string,
    params?: readonly unknown[],
  ): Promise<QueryResult<R> & { token: string }> {
    this.#assertOpen();
    const result = await this.primary.query<R>(statement, params);
    return { rows: result.rows, rowCount: result.rowCount, token: await this.#tokenAfterWrite() };
  }

  async token(): Promise<string> {
    this.#assertOpen();
    const position = await this.provider.afterWrite(this.primary);
    this.monitor.observePrimary(position, true);
    return this.codec.encode(position);
  }

  tokenFor(position: bigint | string): string {
    return this.codec.encode(typeof position === 'bigint' ? position : this.provider.parse(position));
  }

  parseToken(token: string): bigint {
    return this.#decode(token);
  }

  #decode(token: string): bigint {
    const cached = this.#tokenCache.get(token);
    if (cached !== undefined) return cached;
    const position = this.codec.decode(token);
    if (this.#tokenCache.size >= TOKEN_CACHE) this.#tokenCache.clear();
    this.#tokenCache.set(token, position);
    return position;
  }

  // -------------------------------------------------------------------------------------------
  // Reads

  /** Validates a consistency; `E_CONFIG` naming `option`, `E_TOKEN` for a bad session token. */
  #plan(consistency: Consistency, option: string): Plan {
    if (consistency === 'strong') return { kind: 'strong' };
    if (consistency === 'eventual') return { kind: 'eventual' };
    if (typeof consistency === 'object' && consistency !== null) {
      if ('session' in consistency) {
        const token = consistency.session;
        if (token === undefined || token === null) return { kind: 'eventual' };
        return { kind: 'session', target: this.#decode(token) };
      }
      if ('maxLag' in consistency) {
        const text = consistency.maxLag;
        let boundMs = this.#maxLagCache.get(text);
        if (boundMs === undefined) {
          boundMs = parseDuration(text, `${option}.maxLag`);
          if (this.#maxLagCache.size < 256) this.#maxLagCache.set(text, boundMs);
        }
        return { kind: 'maxLag', boundMs };
      }
    }
    throw new ConfigError(option, "must be 'strong', 'eventual', { session: token } or { maxLag: duration }");
  }

  read<T>(fn: ReadFunction<T>, options?: ReadOptions): Promise<T>;
  read<R = Row>(statement: SqlFragment | string, options?: StatementReadOptions): Promise<QueryResult<R>>;
  async read<T>(
    target: ReadFunction<T> | SqlFragment | string,
    options: StatementReadOptions = {},
  ): Promise<T | QueryResult> {
    this.#assertOpen();
    const plan =
      options.consistency === undefined ? this.#defaultPlan : this.#plan(options.consistency, 'consistency');
    const run: ReadFunction<T | QueryResult> =
      typeof target === 'function' ? target : (db) => db.query(target, options.params);
    this.#byConsistency[plan.kind]++;
    switch (plan.kind) {
      case 'strong':
        return this.#onPrimary(run, 'strong', 0, 1);
      case 'eventual':
        return this.#onReplicas(run, 'eventual', () => this.#rotation(), 0);
      case 'maxLag':
        return this.#onReplicas(run, 'maxLag', () => this.#fresh(plan.boundMs), 0);
      case 'session':
        return this.#session(run, plan.target);
    }
  }

  #rotation(): ReplicaNode[] {
    return this.nodes.filter((n) => n.inRotation);
  }

  /** Replicas whose staleness bound (lag as measured plus the time since) is within `boundMs`. */
  #fresh(boundMs: number): ReplicaNode[] {
    const now = this.clock.now();
    return this.nodes.filter(
      (n) =>
        n.inRotation &&
        n.lagMs !== undefined &&
        n.measuredAt !== undefined &&
        n.lagMs + Math.max(0, now - n.measuredAt) <= boundMs,
    );
  }

  async #session<T>(run: ReadFunction<T>, target: bigint): Promise<T> {
    const caughtUp = () =>
      this.nodes.filter((n) => n.inRotation && n.position !== undefined && n.position >= target);
    const ready = caughtUp();
    if (ready.length > 0) return this.#onReplicas(run, 'session', caughtUp, 0);
    const waiting = this.#rotation();
    if (waiting.length === 0) return this.#fallBack(run, 'session', 0, 1);
    const started = this.clock.now();
    const first = await this.monitor.waitForAny(waiting, target, this.#waitMs);
    const waitedMs = this.clock.now() - started;
    this.#sessionWaited++;
    this.#waits[this.#waitCursor] = waitedMs;
    this.#waitCursor = (this.#waitCursor + 1) % WAIT_SAMPLES;
    if (first === undefined) return this.#fallBack(run, 'session', waitedMs, 1);
    // Several replicas may have caught up in the same round: the balancer chooses among them.
    return this.#onReplicas(run, 'session', caughtUp, waitedMs);
  }

  /**
   * Runs `run` on a replica the balancer picks from `candidates()`, then on other candidates
   * after retryable failures, then on the primary.
   */
  async #onReplicas<T>(
    run: ReadFunction<T>,
    consistency: 'eventual' | 'session' | 'maxLag',
    candidates: () => ReplicaNode[],
    waitedMs: number,
  ): Promise<T> {
    const tried = new Set<ReplicaNode>();
    let node = this.#balancer.pick(candidates());
    let attempt = 1;
    while (node !== undefined) {
      tried.add(node);
      let result: T;
      try {
        result = await run(node.driver, { node: node.name, replica: true, consistency, waitedMs, attempt });
      } catch (err) {
        if (!retryable(err)) throw err;
        this.monitor.readFailed(node, err);
        this.#retries++;
        attempt++;
        node = this.#balancer.pick(candidates().filter((n) => !tried.has(n)));
        continue;
      }
      this.monitor.readSucceeded(node);
      if (consistency === 'session') this.#sessionServed++;
      return result;
    }
    return this.#fallBack(run, consistency, waitedMs, attempt);
  }

  /** Serves a read that wanted a replica from the primary, and counts it. */
  #fallBack<T>(
    run: ReadFunction<T>,
    consistency: 'eventual' | 'session' | 'maxLag',
    waitedMs: number,
    attempt: number,
  ): Promise<T> {
    this.#fallbacks[consistency]++;
    return this.#onPrimary(run, consistency, waitedMs, attempt);
  }

  async #onPrimary<T>(
    run: ReadFunction<T>,
    consistency: ReadInfo['consistency'],
    waitedMs: number,
    attempt: number,
  ): Promise<T> {
    const result = await run(this.primary, {
      node: 'primary',
      replica: false,
      consistency,
      waitedMs,
      attempt,
    });
    this.#primaryReads++;
    return result;
  }

  // -------------------------------------------------------------------------------------------
  // Health and figures

  async refresh(): Promise<ReplicaSetStats> {
    this.#assertOpen();
    await this.monitor.probe();
    return this.stats();
  }

  stats(): ReplicaSetStats {
    const replicaReads = this.nodes.reduce((sum, n) => sum + n.reads, 0);
    const total = replicaReads + this.#primaryReads;
    const share = (reads: number) => (total === 0 ? 0 : reads / total);
    const p = this.monitor.primaryHealth;
    const waits = this.#waits.slice().sort((a, b) => a - b);
    const pct = (q: number) =>
      waits.length === 0 ? undefined : waits[Math.min(waits.length - 1, Math.ceil(q * waits.length) - 1)];
    return {
      clusterId: this.clusterId,
      kind: this.provider.kind,
      unit: this.provider.unit,
      primary: {
        name: this.primary.name,
        state: p.state,
        position: p.position === undefined ? undefined : this.provider.format(p.position),
        reads: this.#primaryReads,
        share: share(this.#primaryReads),
        writes: this.#writes,
        lastErrorCode: p.lastErrorCode,
      },
      replicas: this.nodes.map((n) => ({
        name: n.name,
        state: n.state,
        healthy: n.inRotation,
        weight: n.weight,
        position: n.position === undefined ? undefined : this.provider.format(n.position),
        lag: n.lag,
        lagSeconds: n.measuredAt === undefined ? undefined : (n.lagMs ?? n.lagAtLeastMs) / 1000,
        measuredAt: n.measuredAt,
        reads: n.reads,
        share: share(n.reads),
        errors: n.errors,
        failedProbes: n.failedProbes,
        lastErrorCode: n.lastErrorCode,
      })),
      reads: { total, ...this.#byConsistency, retries: this.#retries },
      fallbacks: { ...this.#fallbacks },
      session: {
        reads: this.#byConsistency.session,
        servedByReplicas: this.#sessionServed,
        fallbacks: this.#fallbacks.session,
        waited: this.#sessionWaited,
        waitP50Ms: pct(0.5),
        waitP99Ms: pct(0.99),
      },
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.monitor.stop();
  }
}
