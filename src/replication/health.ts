/**
 * Lag and health of a replica set: a background monitor probes the primary's position and each
 * replica's applied position every interval, derives each replica's lag in position units and in
 * time, and moves replicas in and out of the rotation. Session reads wait on it for a replica to
 * reach a position: one shared poll per replica, however many reads wait.
 *
 * Lag in time is derived from a history of the primary's positions (one sample per probe and per
 * write): a replica at or past the newest sample is 0 behind; otherwise it misses what the primary
 * wrote after the last sample it has, so its staleness is at most the age of that sample (capped by
 * the replica's own figure where the engine has one: PostgreSQL's
 * `now() - pg_last_xact_replay_timestamp()`). Unlike the replay timestamp alone, this does not
 * report an hour of lag for a replica of a primary that was idle for an hour and just wrote once.
 */
import { withTimeout } from '../core/async.js';
import { type Clock, sleep, type TimerHandle } from '../core/clock.js';
import { isStrataError, StrataError } from '../core/errors.js';
import type { PositionProvider, ReplicaPosition } from '../core/positions.js';
import type { SqlExecutor } from '../core/sql.js';

/**
 * Where a replica stands: `unknown` before its first probe, `healthy`, `lagging` (measured lag
 * over `health.maxLag`), `down` (`health.failures` probes or reads in a row failed, or it is not a
 * replica of this primary). `unknown` and `healthy` replicas are in the rotation.
 */
export type ReplicaState = 'unknown' | 'healthy' | 'lagging' | 'down';

/** A replica's change of state, for logs and the dashboard. */
export interface HealthChange {
  /** The replica's name. */
  replica: string;
  /** The state it left. */
  from: ReplicaState;
  /** The state it entered. */
  to: ReplicaState;
  /** The code of the error that took it down, when one did. */
  errorCode?: string | undefined;
}

/** The monitor's resolved settings. */
export interface HealthSettings {
  readonly intervalMs: number;
  readonly maxLagMs: number;
  readonly failures: number;
  readonly timeoutMs: number;
  readonly pollEveryMs: number;
  readonly clock: Clock;
  readonly onChange: ((change: HealthChange) => void) | undefined;
}

/** A session read waiting for one of several replicas to reach `target`. */
interface Waiter {
  readonly target: bigint;
  readonly nodes: Set<ReplicaNode>;
  settle(node: ReplicaNode | undefined): void;
}

/** One replica: its driver, its measurements and its counters. */
export class ReplicaNode {
  state: ReplicaState = 'unknown';
  /** The applied position last reported (probes and session polls). */
  position: bigint | undefined;
  /** Lag in position units at `measuredAt`. */
  lag: number | undefined;
  /** Lag in milliseconds at `measuredAt`, an upper bound (see the module comment); undefined when unbounded. */
  lagMs: number | undefined;
  /** Lag in milliseconds at `measuredAt`, a lower bound. */
  lagAtLeastMs = 0;
  measuredAt: number | undefined;
  consecutiveFailures = 0;
  failedProbes = 0;
  /** Reads served. */
  reads = 0;
  /** Reads that failed on this replica and were retried elsewhere. */
  errors = 0;
  lastErrorCode: string | undefined;
  /** Session reads waiting on this replica. */
  readonly waiters = new Set<Waiter>();
  polling = false;

  constructor(
    readonly index: number,
    readonly name: string,
    readonly driver: SqlExecutor,
    readonly weight: number,
  ) {}

  /** True while reads may be routed here. */
  get inRotation(): boolean {
    return this.state === 'healthy' || this.state === 'unknown';
  }
}

/** What the monitor knows about the primary. */
export interface PrimaryHealth {
  state: 'unknown' | 'up' | 'down';
  position: bigint | undefined;
  identity: string | undefined;
  consecutiveFailures: number;
  lastErrorCode: string | undefined;
  measuredAt: number | undefined;
}

const HISTORY_SAMPLES = 4096;
const WRITE_SAMPLE_MS = 10;

/** A replica that is not a replica of this primary, or not a replica at all. */
function notAReplica(name: string, why: string): StrataError {
  return new StrataError('E_NOT_REPLICA', `replica "${name}" ${why}`, { details: { replica: name } });
}

function codeOf(err: unknown): string {
  return isStrataError(err) ? err.code : err instanceof Error ? err.name : 'E_UNKNOWN';
}

/** Probes the primary and the replicas, keeps their state, and serves session waits. */
export class HealthMonitor {
  readonly primaryHealth: PrimaryHealth = {
    state: 'unknown',
    position: undefined,
    identity: undefined,
    consecutiveFailures: 0,
    lastErrorCode: undefined,
    measuredAt: undefined,
  };
  /** The primary's positions over time, ascending; equal positions keep the latest time. */
  readonly #history: Array<{ at: number; position: bigint }> = [];
  #timer: TimerHandle | undefined;
  #probing: Promise<void> | undefined;
  #stopped = false;

  constructor(
    private readonly primary: SqlExecutor,
    readonly nodes: readonly ReplicaNode[],
    private readonly provider: PositionProvider,
    private readonly settings: HealthSettings,
  ) {}

  /** Probes now, then every interval until `stop()`; the timer never holds the process open. */
  start(): void {
    const tick = async () => {
      this.#timer = undefined;
      await this.probe();
      if (!this.#stopped)
        this.#timer = this.settings.clock.setTimeout(() => void tick(), this.settings.intervalMs);
    };
    void tick();
  }

  /** Stops probing and releases every waiting session read (they fall back to the primary). */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.settings.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const node of this.nodes) for (const waiter of [...node.waiters]) waiter.settle(undefined);
  }

  /**
   * Probes the primary, then every replica at once, in a round that starts after the one running
   * (so the result is at least as new as the call). Never rejects.
   */
  probe(): Promise<void> {
    const round = (this.#probing ?? Promise.resolve()).then(() => this.#probeAll());
    this.#probing = round;
    void round.then(() => {
      if (this.#probing === round) this.#probing = undefined;
    });
    return round;
  }

  async #probeAll(): Promise<void> {
    const { clock, timeoutMs } = this.settings;
    const p = this.primaryHealth;
    // The position is dated when the probe was sent: the primary reached it no later than it
    // answered, and dating it earlier only makes lag figures larger, never too small.
    const sentAt = clock.now();
    try {
      const status = await withTimeout(
        this.provider.primary(this.primary),
        timeoutMs,
        'primary position probe',
        {
          clock,
        },
      );
      p.state = 'up';
      p.consecutiveFailures = 0;
      p.identity = status.identity;
      p.measuredAt = clock.now();
      this.observePrimary(status.position, false, sentAt);
    } catch (err) {
      p.consecutiveFailures++;
      p.lastErrorCode = codeOf(err);
      if (p.consecutiveFailures >= this.settings.failures) p.state = 'down';
    }
    await Promise.all(this.nodes.map((node) => this.#probeReplica(node)));
  }

  async #probeReplica(node: ReplicaNode): Promise<void> {
    if (this.#stopped) return;
    let status: ReplicaPosition;
    try {
      status = await this.#ask(node);
    } catch (err) {
      this.#failed(node, err);
      return;
    }
    this.#observe(node, status);
  }

  #ask(node: ReplicaNode): Promise<ReplicaPosition> {
    return withTimeout(
      this.provider.replica(node.driver),
      this.settings.timeoutMs,
      `replica "${node.name}" probe`,
      {
        clock: this.settings.clock,
      },
    );
  }

  /**
   * Adds a primary position to the history; older positions are ignored. Positions from writes
   * (`dense`) are kept at most one per 10 ms, so a busy primary's history still spans minutes;
   * a skipped sample only makes later lag figures less tight, never too small. `at` dates the
   * sample (default now).
   */
  observePrimary(position: bigint, dense = false, at?: number): void {
    const now = at ?? this.settings.clock.now();
    const p = this.primaryHealth;
    if (p.position === undefined || position > p.position) p.position = position;
    const last = this.#history.at(-1);
    if (last !== undefined && position < last.position) return;
    if (last !== undefined && position === last.position) last.at = now;
    else if (dense && last !== undefined && now - last.at < WRITE_SAMPLE_MS) return;
    else this.#history.push({ at: now, position });
    const horizon = now - Math.max(60_000, 3 * this.settings.maxLagMs);
    let drop = 0;
    // Keep one sample older than the horizon: it bounds the lag of replicas further behind.
    while (drop < this.#history.length - 1 && this.#history[drop + 1]!.at < horizon) drop++;
    if (this.#history.length - drop > HISTORY_SAMPLES) drop = this.#history.length - HISTORY_SAMPLES;
    if (drop > 0) this.#history.splice(0, drop);
  }

  /**
   * Lag of a replica at `position`: in units, and in milliseconds as an upper bound (`lagMs`,
   * undefined when nothing bounds it) and a lower bound (`atLeastMs`), from the primary's history.
   */
  #lagOf(
    position: bigint,
    behindMs: number | undefined,
    now: number,
  ): { lag: number | undefined; lagMs: number | undefined; atLeastMs: number } {
    const history = this.#history;
    const newest = history.at(-1);
    if (newest === undefined) return { lag: undefined, lagMs: behindMs, atLeastMs: 0 };
    if (position >= newest.position) return { lag: 0, lagMs: 0, atLeastMs: 0 };
    const lag = Number(newest.position - position);
    // The last sample the replica already has: it misses what the primary wrote after it, and
    // the first sample it lacks was taken after that write.
    let lo = 0;
    let hi = history.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (history[mid]!.position <= position) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    const atLeastMs = Math.max(0, now - history[found + 1]!.at);
    const fromHistory = found >= 0 ? now - history[found]!.at : undefined;
    const upper =
      fromHistory !== undefined && behindMs !== undefined
        ? Math.min(fromHistory, behindMs)
        : (fromHistory ?? behindMs);
    return { lag, lagMs: upper === undefined ? undefined : Math.max(atLeastMs, upper), atLeastMs };
  }

  #observe(node: ReplicaNode, status: ReplicaPosition): void {
    const p = this.primaryHealth;
    if (status.position === undefined) {
      this.#down(node, notAReplica(node.name, 'is not in recovery (not a replica)'));
      return;
    }
    if (status.identity !== undefined && p.identity !== undefined && status.identity !== p.identity) {
      this.#down(node, notAReplica(node.name, 'replicates another cluster than the primary'));
      return;
    }
    const now = this.settings.clock.now();
    // Taken as reported, even when lower: a restarted or rebuilt replica can be behind where it
    // was, and a position that is too low only makes a session read wait.
    node.position = status.position;
    const { lag, lagMs, atLeastMs } = this.#lagOf(node.position, status.behindMs, now);
    node.lag = lag;
    node.lagMs = lagMs;
    node.lagAtLeastMs = atLeastMs;
    node.measuredAt = now;
    node.consecutiveFailures = 0;
    this.#setState(node, (lagMs ?? atLeastMs) > this.settings.maxLagMs ? 'lagging' : 'healthy');
    for (const waiter of [...node.waiters]) if (waiter.target <= node.position) waiter.settle(node);
  }

  #failed(node: ReplicaNode, err: unknown): void {
    node.failedProbes++;
    this.#countFailure(node, err);
  }

  #countFailure(node: ReplicaNode, err: unknown): void {
    node.consecutiveFailures++;
    node.lastErrorCode = codeOf(err);
    if (node.consecutiveFailures >= this.settings.failures) this.#down(node, err);
  }

  #down(node: ReplicaNode, err: unknown): void {
    node.lastErrorCode = codeOf(err);
    this.#setState(node, 'down', node.lastErrorCode);
  }

  #setState(node: ReplicaNode, state: ReplicaState, errorCode?: string): void {
    if (node.state === state) return;
    const from = node.state;
    node.state = state;
    if (!node.inRotation) {
      // Reads waiting on it wait on the others, or give up at once when it was their last hope.
      for (const waiter of [...node.waiters]) {
        waiter.nodes.delete(node);
        node.waiters.delete(waiter);
        if (waiter.nodes.size === 0) waiter.settle(undefined);
      }
    }
    try {
      this.settings.onChange?.({ replica: node.name, from, to: state, errorCode });
    } catch {
      // A listener's failure is its own; the monitor keeps its state.
    }
  }

  /** A read on `node` failed with a connection-like error: it counts like a failed probe. */
  readFailed(node: ReplicaNode, err: unknown): void {
    node.errors++;
    this.#countFailure(node, err);
  }

  /** A read on `node` succeeded: the replica answers, so earlier failures no longer count. */
  readSucceeded(node: ReplicaNode): void {
    node.reads++;
    if (node.consecutiveFailures > 0 && node.state !== 'down') node.consecutiveFailures = 0;
  }

  /**
   * Resolves with the first of `nodes` seen at or past `target`, or undefined after `timeoutMs`
   * (or at once when every one of them leaves the rotation). Each replica is polled every
   * `pollEvery` while somebody waits on it, once for all waiters.
   */
  waitForAny(
    nodes: readonly ReplicaNode[],
    target: bigint,
    timeoutMs: number,
  ): Promise<ReplicaNode | undefined> {
    const { clock } = this.settings;
    return new Promise((resolve) => {
      if (this.#stopped || nodes.length === 0) {
        resolve(undefined);
        return;
      }
      let settled = false;
      let timer: TimerHandle | undefined;
      const waiter: Waiter = {
        target,
        nodes: new Set(nodes),
        settle: (node) => {
          if (settled) return;
          settled = true;
          if (timer !== undefined) clock.clearTimeout(timer);
          for (const n of waiter.nodes) n.waiters.delete(waiter);
          resolve(node);
        },
      };
      timer = clock.setTimeout(() => waiter.settle(undefined), timeoutMs);
      for (const node of nodes) {
        node.waiters.add(waiter);
        this.#poll(node);
      }
    });
  }

  #poll(node: ReplicaNode): void {
    if (node.polling) return;
    node.polling = true;
    void (async () => {
      try {
        while (node.waiters.size > 0 && !this.#stopped) {
          try {
            this.#observe(node, await this.#ask(node));
          } catch (err) {
            this.#failed(node, err);
          }
          if (node.waiters.size === 0 || this.#stopped) break;
          await sleep(this.settings.pollEveryMs, { clock: this.settings.clock });
        }
      } finally {
        node.polling = false;
      }
    })();
  }
}
