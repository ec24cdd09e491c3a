/**
 * Global ids: time-ordered, collision-free 64-bit ids in the manner of Twitter's snowflake, with
 * the worker (a process, or a shard) inside the id. A worker id is either given, or leased from
 * a SQL table so that processes sharing the table never hold the same one at the same time.
 *
 * Two layouts:
 *
 * | layout     | type   | time (ms since epoch)  | worker          | sequence (per ms, per worker) |
 * | ---------- | ------ | ---------------------- | --------------- | ----------------------------- |
 * | `safe53`   | number | 41 bits (~69.7 years)  | 5 bits: 0..31   | 7 bits: 128 ids               |
 * | `bigint64` | bigint | 41 bits (~69.7 years)  | 10 bits: 0..1023| 12 bits: 4096 ids             |
 *
 * `safe53` ids are exact JavaScript numbers (at most `Number.MAX_SAFE_INTEGER`), so they survive
 * JSON and SQL drivers untouched; `bigint64` ids fit a signed 64-bit column (`bigint`) and allow
 * more workers and a higher rate. With the default epoch (2025-01-01) both run out in 2094.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { type Clock, sleep, systemClock, type TimerHandle } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ClosedError, ConfigError, isStrataError, StrataError, ValidationError } from '../core/errors.js';
import {
  configIdentifier,
  reportBackgroundError,
  type SqlDriver,
  type SqlFragment,
  sql,
} from '../core/sql.js';

/** The bit layout of an id: `safe53` (a JS number, the default) or `bigint64` (a bigint). */
export type IdLayout = 'safe53' | 'bigint64';

/** The sizes of one layout's fields. */
export interface IdLayoutSpec {
  /** Bits of milliseconds since the epoch (41: about 69.7 years). */
  readonly timeBits: number;
  /** Bits of the worker id. */
  readonly workerBits: number;
  /** Bits of the per-millisecond sequence. */
  readonly sequenceBits: number;
  /** Worker ids run from 0 to `maxWorkers - 1`. */
  readonly maxWorkers: number;
  /** Ids one worker can issue in one millisecond. */
  readonly idsPerMs: number;
}

/** The two layouts and their limits. */
export const ID_LAYOUTS: Readonly<Record<IdLayout, IdLayoutSpec>> = Object.freeze({
  safe53: Object.freeze({ timeBits: 41, workerBits: 5, sequenceBits: 7, maxWorkers: 32, idsPerMs: 128 }),
  bigint64: Object.freeze({
    timeBits: 41,
    workerBits: 10,
    sequenceBits: 12,
    maxWorkers: 1024,
    idsPerMs: 4096,
  }),
});

/** The default epoch of ids: 2025-01-01T00:00:00Z. */
export const DEFAULT_ID_EPOCH = Date.UTC(2025, 0, 1);

const TIME_LIMIT = 2 ** 41;

/** Where and how a generator leases its worker id. */
export interface IdWorkerAllocation {
  /** The database holding the lease table; every process that shares ids must use the same one. */
  store: SqlDriver;
  /** The id space: generators with different names lease independently (default `default`). */
  name?: string;
  /** How long a lease lasts without renewal (default 30s); it is renewed every third of it. */
  leaseTtl?: Duration;
  /** The lease table (default `strata_id_workers`), created when missing. */
  table?: string;
  /** Where errors of background renewals go (default: a process warning). */
  onError?: (err: unknown) => void;
}

/** Options for `createIdGenerator`. */
export interface IdGeneratorOptions<L extends IdLayout = IdLayout> {
  /** A fixed worker id (0..31 for `safe53`, 0..1023 for `bigint64`); give this or `allocate`. */
  workerId?: number;
  /** Lease the lowest free worker id from a SQL table instead of giving one. */
  allocate?: IdWorkerAllocation;
  /** The bit layout (default `safe53`). */
  layout?: L;
  /** Time zero of the ids, a `Date` or epoch ms (default 2025-01-01T00:00:00Z). */
  epoch?: Date | number;
  /** Source of time (default the system clock). */
  clock?: Clock;
  /**
   * How far the clock may step back before `next()` throws `E_CLOCK` instead of waiting for it to
   * catch up (default 2s).
   */
  maxClockSkew?: Duration;
}

/** The parts of an id. */
export interface DecodedId {
  /** When the id was issued (to the millisecond). */
  readonly time: Date;
  /** The worker that issued it. */
  readonly workerId: number;
  /** The id's position among those its worker issued in the same millisecond. */
  readonly sequence: number;
}

/** Issues ids; `T` is `number` for the `safe53` layout and `bigint` for `bigint64`. */
export interface IdGenerator<T extends number | bigint = number> {
  /** The worker id inside every id this generator issues. */
  readonly workerId: number;
  /** The bit layout of the ids. */
  readonly layout: IdLayout;
  /** Time zero of the ids, in epoch ms. */
  readonly epoch: number;
  /** When the worker lease ends unless renewed (epoch ms); undefined for a fixed worker id. */
  readonly leaseExpiresAt: number | undefined;
  /** True after `close()`. */
  readonly closed: boolean;
  /**
   * The next id: strictly greater than every id this generator issued before, and ordered by
   * time (to the ms) against other generators' ids. Waits (blocking, at most `maxClockSkew`) when
   * the millisecond's sequence is used up or the clock stepped back; throws `E_CLOCK` when the
   * clock is further back or does not move, `E_FENCED` when the worker lease has lapsed, and
   * `E_CLOSED` after `close()`.
   */
  next(): T;
  /** `n` consecutive ids, ascending (1 <= n <= 1,000,000); fails like `next()`. */
  nextMany(n: number): T[];
  /** The parts of an id of this layout and epoch; `E_VALIDATION` for a value that is not one. */
  decode(id: T): DecodedId;
  /** Stops renewing and releases the worker lease (if any); later `next()` calls fail with `E_CLOSED`. */
  close(): Promise<void>;
}

/**
 * Creates an id generator, leasing a worker id first when `allocate` is given. Rejects with
 * `E_CONFIG` naming the option for invalid options (before any I/O), `E_EXHAUSTED` when every
 * worker id of the name is leased, and `E_CONFLICT` when other processes kept winning the race.
 */
export function createIdGenerator(
  options: IdGeneratorOptions<'bigint64'> & { layout: 'bigint64' },
): Promise<IdGenerator<bigint>>;
export function createIdGenerator(options: IdGeneratorOptions<'safe53'>): Promise<IdGenerator<number>>;
export function createIdGenerator(options: IdGeneratorOptions): Promise<IdGenerator<number | bigint>>;
export async function createIdGenerator(options: IdGeneratorOptions): Promise<IdGenerator<number | bigint>> {
  const config = resolveOptions(options);
  if (config.allocation === undefined) {
    return new Generator(config, config.workerId!, undefined, -1);
  }
  const lease = new WorkerLease(config.allocation, config.spec.maxWorkers, config.clock);
  const acquired = await lease.acquire();
  const floor = acquired.floorMs - config.epoch;
  return new Generator(config, acquired.workerId, lease, floor - 1);
}

/**
 * The parts of `id` under a layout (default `safe53`) and epoch (default 2025-01-01); throws
 * `E_VALIDATION` when `id` is not a non-negative integer of that layout.
 */
export function decodeId(
  id: number | bigint,
  options: { layout?: IdLayout; epoch?: Date | number } = {},
): DecodedId {
  const layout = resolveLayout(options.layout);
  return decodeWith(id, ID_LAYOUTS[layout], layout, resolveEpoch(options.epoch));
}

// ---------------------------------------------------------------------------------------------
// Options

interface ResolvedAllocation {
  readonly store: SqlDriver;
  readonly name: string;
  readonly table: string;
  readonly ttlMs: number;
  readonly onError: (err: unknown) => void;
}

interface Config {
  readonly layout: IdLayout;
  readonly spec: IdLayoutSpec;
  readonly epoch: number;
  readonly clock: Clock;
  readonly maxSkewMs: number;
  readonly workerId: number | undefined;
  readonly allocation: ResolvedAllocation | undefined;
}

const ID_SPACE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$/;

function resolveLayout(layout: unknown): IdLayout {
  if (layout === undefined) return 'safe53';
  if (layout !== 'safe53' && layout !== 'bigint64') {
    throw new ConfigError('layout', 'must be "safe53" or "bigint64"');
  }
  return layout;
}

function resolveEpoch(epoch: unknown): number {
  if (epoch === undefined) return DEFAULT_ID_EPOCH;
  const ms = epoch instanceof Date ? epoch.getTime() : epoch;
  if (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms < 0) {
    throw new ConfigError('epoch', 'must be a valid Date or a non-negative integer of epoch ms');
  }
  return ms;
}

function resolveOptions(options: IdGeneratorOptions): Config {
  if (typeof options !== 'object' || options === null) {
    throw new ConfigError('options', 'must be an object with workerId or allocate');
  }
  const layout = resolveLayout(options.layout);
  const spec = ID_LAYOUTS[layout];
  const epoch = resolveEpoch(options.epoch);
  const clock = options.clock ?? systemClock;
  const maxSkewMs = parseDuration(options.maxClockSkew ?? '2s', 'maxClockSkew');
  const sinceEpoch = clock.now() - epoch;
  if (sinceEpoch < 0 || sinceEpoch >= TIME_LIMIT) {
    throw new ConfigError('epoch', 'must lie in the past, less than 2^41 ms (about 69 years) ago');
  }
  const { workerId, allocate } = options;
  if (workerId !== undefined && allocate !== undefined) {
    throw new ConfigError('workerId', 'give either workerId or allocate, not both');
  }
  if (workerId === undefined && allocate === undefined) {
    throw new ConfigError('workerId', 'give a workerId, or allocate one from a SQL store');
  }
  if (workerId !== undefined) {
    if (!Number.isInteger(workerId) || workerId < 0 || workerId >= spec.maxWorkers) {
      throw new ConfigError(
        'workerId',
        `must be an integer from 0 to ${spec.maxWorkers - 1} for this layout`,
        {
          details: { maxWorkers: spec.maxWorkers, layout },
        },
      );
    }
    return { layout, spec, epoch, clock, maxSkewMs, workerId, allocation: undefined };
  }
  return {
    layout,
    spec,
    epoch,
    clock,
    maxSkewMs,
    workerId: undefined,
    allocation: resolveAllocation(allocate!),
  };
}

function resolveAllocation(allocate: IdWorkerAllocation): ResolvedAllocation {
  if (typeof allocate !== 'object' || allocate === null) {
    throw new ConfigError('allocate', 'must be an object with a store');
  }
  const store = allocate.store as Partial<SqlDriver> | undefined;
  if (typeof store?.query !== 'function' || typeof store.dialect !== 'object') {
    throw new ConfigError('allocate.store', 'must be a SqlDriver');
  }
  const name = allocate.name ?? 'default';
  if (typeof name !== 'string' || !ID_SPACE_NAME.test(name)) {
    throw new ConfigError(
      'allocate.name',
      'a name is 1-128 letters, digits, underscores, dots, colons or dashes',
    );
  }
  const ttlMs = parseDuration(allocate.leaseTtl ?? '30s', 'allocate.leaseTtl', { allowZero: false });
  if (ttlMs < 30) throw new ConfigError('allocate.leaseTtl', 'must be at least 30ms');
  if (allocate.onError !== undefined && typeof allocate.onError !== 'function') {
    throw new ConfigError('allocate.onError', 'must be a function');
  }
  return {
    store: allocate.store,
    name,
    table: configIdentifier(allocate.table ?? 'strata_id_workers', 'allocate.table'),
    ttlMs,
    onError: allocate.onError ?? ((err) => reportBackgroundError('id worker lease renewal', err)),
  };
}

// ---------------------------------------------------------------------------------------------
// Encoding

function decodeWith(id: number | bigint, spec: IdLayoutSpec, layout: IdLayout, epoch: number): DecodedId {
  const invalid = () =>
    new ValidationError([{ path: [], message: `not an id of the ${layout} layout` }], { subject: 'id' });
  let ms: number;
  let rest: number;
  const low = spec.workerBits + spec.sequenceBits;
  if (typeof id === 'bigint') {
    if (id < 0n || id >= 1n << BigInt(spec.timeBits + low)) throw invalid();
    ms = Number(id >> BigInt(low));
    rest = Number(id & ((1n << BigInt(low)) - 1n));
  } else if (typeof id === 'number') {
    if (!Number.isSafeInteger(id) || id < 0 || (layout === 'safe53' && id > Number.MAX_SAFE_INTEGER)) {
      throw invalid();
    }
    const scale = 2 ** low;
    ms = Math.floor(id / scale);
    rest = id % scale;
  } else {
    throw invalid();
  }
  return Object.freeze({
    time: new Date(epoch + ms),
    workerId: rest >>> spec.sequenceBits,
    sequence: rest & (spec.idsPerMs - 1),
  });
}

// ---------------------------------------------------------------------------------------------
// The generator

const sleeper = new Int32Array(new SharedArrayBuffer(4));
/** Slack on top of `maxClockSkew` before a wait for the clock counts as a stalled clock. */
const STALL_GRACE_MS = 100;

class Generator implements IdGenerator<number | bigint> {
  readonly layout: IdLayout;
  readonly epoch: number;
  readonly #spec: IdLayoutSpec;
  readonly #clock: Clock;
  readonly #maxSkewMs: number;
  readonly #lease: WorkerLease | undefined;
  readonly #workerBits: number;
  readonly #workerBig: bigint;
  /** The millisecond (since epoch) and sequence of the last id; the next id must be above both. */
  #lastMs: number;
  #sequence: number;
  #closed = false;

  constructor(
    config: Config,
    readonly workerId: number,
    lease: WorkerLease | undefined,
    lastMs: number,
  ) {
    this.layout = config.layout;
    this.epoch = config.epoch;
    this.#spec = config.spec;
    this.#clock = config.clock;
    this.#maxSkewMs = config.maxSkewMs;
    this.#lease = lease;
    this.#workerBits = workerId * config.spec.idsPerMs;
    this.#workerBig = BigInt(workerId) << BigInt(config.spec.sequenceBits);
    // Starting "full" at lastMs makes the first id wait for the millisecond after it.
    this.#lastMs = lastMs;
    this.#sequence = config.spec.idsPerMs - 1;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get leaseExpiresAt(): number | undefined {
    return this.#lease?.validUntil;
  }

  next(): number | bigint {
    this.#step();
    return this.#encode(this.#lastMs, this.#sequence);
  }

  nextMany(n: number): Array<number | bigint> {
    if (!Number.isInteger(n) || n < 1 || n > 1_000_000) {
      throw new ConfigError('n', 'must be an integer from 1 to 1000000');
    }
    const ids = new Array<number | bigint>(n);
    for (let i = 0; i < n; i++) {
      this.#step();
      ids[i] = this.#encode(this.#lastMs, this.#sequence);
    }
    return ids;
  }

  decode(id: number | bigint): DecodedId {
    return decodeWith(id, this.#spec, this.layout, this.epoch);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#lease?.release(this.epoch + this.#lastMs);
  }

  #encode(ms: number, sequence: number): number | bigint {
    if (this.layout === 'safe53') return ms * 4096 + this.#workerBits + sequence;
    return (BigInt(ms) << 22n) | this.#workerBig | BigInt(sequence);
  }

  /** Advances (lastMs, sequence) to the next free slot, or throws leaving them unchanged. */
  #step(): void {
    if (this.#closed) throw new ClosedError('id generator');
    let ms = this.#clock.now() - this.epoch;
    let sequence = 0;
    if (ms < this.#lastMs) ms = this.#waitFor(this.#lastMs, ms);
    if (ms === this.#lastMs) {
      sequence = this.#sequence + 1;
      if (sequence === this.#spec.idsPerMs) {
        ms = this.#waitFor(this.#lastMs + 1, ms);
        sequence = 0;
      }
    }
    if (ms >= TIME_LIMIT) {
      throw new StrataError('E_CLOCK', 'the id time range of 2^41 ms after the epoch is used up', {
        details: { reason: 'time-range', epoch: this.epoch },
      });
    }
    // The id's own millisecond must lie inside the lease, so a successor (which starts at or after
    // the lease's end) never issues an id in a millisecond this worker used.
    if (this.#lease !== undefined) this.#lease.assertValid(this.epoch + ms, this.workerId);
    this.#lastMs = ms;
    this.#sequence = sequence;
  }

  /**
   * Blocks until the clock reads at least `target` (ms since epoch) and returns the reading.
   * Sleeps in short slices rather than spinning, except for the last millisecond.
   */
  #waitFor(target: number, now: number): number {
    const behind = target - now;
    if (behind > this.#maxSkewMs) {
      throw new StrataError('E_CLOCK', 'the clock moved back further than maxClockSkew; no id issued', {
        details: {
          reason: 'moved-back',
          behindMs: behind,
          maxClockSkewMs: this.#maxSkewMs,
          workerId: this.workerId,
        },
      });
    }
    // A clock that does not move at all (a frozen fake, a broken source) must not hang the caller.
    const giveUpAt = performance.now() + this.#maxSkewMs + STALL_GRACE_MS;
    let current = now;
    while (current < target) {
      if (performance.now() > giveUpAt) {
        throw new StrataError('E_CLOCK', 'the clock did not advance while waiting to issue an id', {
          details: {
            reason: 'stalled',
            behindMs: target - current,
            maxClockSkewMs: this.#maxSkewMs,
            workerId: this.workerId,
          },
        });
      }
      const gap = target - current;
      if (gap > 1) Atomics.wait(sleeper, 0, 0, Math.min(gap - 1, 10));
      current = this.#clock.now() - this.epoch;
    }
    return current;
  }
}

// ---------------------------------------------------------------------------------------------
// Worker leases

const ACQUIRE_ROUNDS = 20;

/**
 * One lease of a worker id in `<table>(name, worker_id, owner, expires_at)`. A slot is free when
 * its `expires_at` (epoch ms) has passed; a holder renews it every third of the TTL and issues no
 * id at or after the time it last managed to renew to. Release leaves `expires_at` just after
 * the last id's millisecond, so the next holder starts in a later millisecond.
 */
class WorkerLease {
  readonly owner = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  workerId = -1;
  /** The lease's end as written by the last successful acquire or renewal (epoch ms). */
  validUntil = 0;
  #lost = false;
  #stopped = false;
  #timer: TimerHandle | undefined;
  #renewing: Promise<void> | undefined;
  readonly #table: SqlFragment;

  constructor(
    private readonly config: ResolvedAllocation,
    private readonly maxWorkers: number,
    private readonly clock: Clock,
  ) {
    this.#table = sql.id(config.table);
  }

  async acquire(): Promise<{ workerId: number; floorMs: number }> {
    await this.#migrate();
    const t = this.#table;
    const { store, name, ttlMs } = this.config;
    for (let round = 1; round <= ACQUIRE_ROUNDS; round++) {
      const now = this.clock.now();
      const { rows } = await store.query<{
        worker_id: number | string;
        owner: string | null;
        expires_at: number | string;
      }>(sql`select worker_id, owner, expires_at from ${t} where name = ${name} order by worker_id`);
      // A slot is busy while its lease runs; a released slot (no owner) is free at once, and its
      // next holder issues ids only from the millisecond the release left in `expires_at`.
      const busy = new Set<number>();
      const releasedUntil = new Map<number, number>();
      for (const row of rows) {
        const expires = Number(row.expires_at);
        if (row.owner === null) releasedUntil.set(Number(row.worker_id), expires);
        else if (expires > now) busy.add(Number(row.worker_id));
      }
      let candidates = 0;
      for (let workerId = 0; workerId < this.maxWorkers; workerId++) {
        if (busy.has(workerId)) continue;
        candidates++;
        const expires = now + ttlMs;
        // A released slot is taken only as we read it: had another holder taken and released it
        // since, its `expires_at` (our floor) would have moved on.
        const released = releasedUntil.get(workerId);
        // Insert a missing slot, or take over one whose lease has ended; a slot someone else
        // took since the select matches neither and returns no row.
        let taken: boolean;
        try {
          const { rows } = await store.query(
            sql`insert into ${t} (name, worker_id, owner, expires_at)
                values (${name}, ${workerId}, ${this.owner}, ${expires})
                on conflict (name, worker_id) do update set owner = excluded.owner, expires_at = excluded.expires_at
                where ${t}.expires_at <= ${now} or (${t}.owner is null and ${t}.expires_at = ${released ?? -1})
                returning worker_id`,
          );
          taken = rows.length === 1;
        } catch (err) {
          // A concurrent writer invalidated our snapshot (SQLite) or the row (PostgreSQL): a lost race.
          if (!isStrataError(err, 'E_SERIALIZATION') && !isStrataError(err, 'E_CONSTRAINT')) throw err;
          break;
        }
        if (taken) {
          this.workerId = workerId;
          this.validUntil = expires;
          this.#schedule();
          return { workerId, floorMs: Math.max(now, released ?? now) };
        }
      }
      if (candidates === 0) {
        throw new StrataError(
          'E_EXHAUSTED',
          `all ${this.maxWorkers} worker ids of id space "${name}" are leased`,
          { details: { name, maxWorkers: this.maxWorkers, table: this.config.table } },
        );
      }
      await sleep(Math.floor(Math.random() * 20), { clock: systemClock });
    }
    throw new StrataError(
      'E_CONFLICT',
      `could not lease a worker id of id space "${name}"; too much contention`,
      {
        details: { name, attempts: ACQUIRE_ROUNDS },
      },
    );
  }

  /** Throws `E_FENCED` unless the lease covers the millisecond `at` (epoch ms). */
  assertValid(at: number, workerId: number): void {
    if (this.#lost || at >= this.validUntil) {
      throw new StrataError(
        'E_FENCED',
        `the worker lease of id space "${this.config.name}" lapsed; no id issued until it is renewed`,
        { details: { name: this.config.name, workerId, lost: this.#lost, expiresAt: this.validUntil } },
      );
    }
  }

  async release(lastIdAt: number): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    await this.#renewing;
    if (this.#lost) return;
    const t = this.#table;
    const freeFrom = Math.max(this.clock.now(), lastIdAt) + 1;
    await this.config.store.query(
      sql`update ${t} set owner = null, expires_at = ${freeFrom}
          where name = ${this.config.name} and worker_id = ${this.workerId} and owner = ${this.owner}`,
    );
  }

  #schedule(): void {
    if (this.#stopped || this.#lost) return;
    this.#timer = this.clock.setTimeout(
      () => {
        this.#renewing = this.#renew().finally(() => {
          this.#renewing = undefined;
          this.#schedule();
        });
      },
      Math.max(1, Math.floor(this.config.ttlMs / 3)),
    );
  }

  async #renew(): Promise<void> {
    if (this.#stopped) return;
    const t = this.#table;
    const expires = this.clock.now() + this.config.ttlMs;
    try {
      const { rows } = await this.config.store.query(
        sql`update ${t} set expires_at = ${expires}
            where name = ${this.config.name} and worker_id = ${this.workerId} and owner = ${this.owner}
            returning worker_id`,
      );
      if (rows.length === 1) {
        if (expires > this.validUntil) this.validUntil = expires;
        return;
      }
      this.#lost = true;
      throw new StrataError(
        'E_FENCED',
        `the worker lease of id space "${this.config.name}" was taken over; this generator issues no more ids`,
        { details: { name: this.config.name, workerId: this.workerId } },
      );
    } catch (err) {
      if (!this.#stopped) this.config.onError(err);
    }
  }

  #migrate(): Promise<void> {
    const { store, table } = this.config;
    let perStore = migrated.get(store);
    if (perStore === undefined) {
      perStore = new Map();
      migrated.set(store, perStore);
    }
    let done = perStore.get(table);
    if (done === undefined) {
      done = createLeaseTable(store, this.#table).catch((err: unknown) => {
        perStore.delete(table);
        throw err;
      });
      perStore.set(table, done);
    }
    return done;
  }
}

/** Lease tables already created, per store, so generators of one process create each once. */
const migrated = new WeakMap<SqlDriver, Map<string, Promise<void>>>();

async function createLeaseTable(store: SqlDriver, table: SqlFragment): Promise<void> {
  const bigint = store.dialect.name === 'postgres' ? 'bigint' : 'integer';
  const create = () =>
    store.query(
      sql`create table if not exists ${table} (
        name text not null,
        worker_id integer not null,
        owner text,
        expires_at ${sql.raw(bigint)} not null,
        primary key (name, worker_id)
      )`,
    );
  try {
    await create();
  } catch {
    // Two processes creating the table at once: PostgreSQL fails one of them on its catalog
    // (42710 or 23505) once the other commits; by then the table exists and a retry passes.
    await create();
  }
}
