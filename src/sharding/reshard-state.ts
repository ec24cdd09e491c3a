/**
 * The durable state of reshards: one row per shard map in a SQL table (`strata_reshard` by
 * default) with the step, the plan (`details`), the resume points (`cursors`) and a lease, so a
 * reshard killed at any point continues where it was, and two processes never run the same
 * reshard at once (every save is fenced by the lease's owner).
 */
import type { Clock } from '../core/clock.js';
import { StrataError } from '../core/errors.js';
import { fromTypedJson, toTypedJson } from '../core/json.js';
import { type SqlDriver, sql } from '../core/sql.js';

/** The steps of a reshard, in order; `aborting` and `aborted` replace the rest after `abort()`. */
export type ReshardStep =
  | 'planned'
  | 'capture'
  | 'copy'
  | 'catchup'
  | 'verify'
  | 'cutover'
  | 'cleanup'
  | 'done'
  | 'aborting'
  | 'aborted';

/** Every step in run order. */
export const RESHARD_STEPS: readonly ReshardStep[] = Object.freeze([
  'planned',
  'capture',
  'copy',
  'catchup',
  'verify',
  'cutover',
  'cleanup',
  'done',
]);

/** One reshard's stored row. */
export interface StoredReshard<D, C> {
  readonly name: string;
  readonly step: ReshardStep;
  readonly details: D;
  readonly cursors: C;
  readonly owner: string | null;
  readonly leaseUntil: number;
  readonly abortRequested: boolean;
  readonly startedAt: number;
  readonly updatedAt: number;
}

interface RawRow {
  name: string;
  step: string;
  details: string;
  cursors: string;
  owner: string | null;
  lease_until: number | string | null;
  abort_requested: number | string | boolean;
  started_at: number | string;
  updated_at: number | string;
}

function fenced(name: string): StrataError {
  return new StrataError('E_FENCED', `another process took over reshard "${name}"`, { details: { name } });
}

/** Reads and writes reshard rows; every write after `acquire` is fenced by the owner. */
export class ReshardStateStore<D, C> {
  readonly #driver: SqlDriver;
  readonly #table: string;
  readonly #clock: Clock;

  constructor(driver: SqlDriver, table: string, clock: Clock) {
    this.#driver = driver;
    this.#table = table;
    this.#clock = clock;
  }

  /** Creates the table if missing. */
  async migrate(): Promise<void> {
    const big = this.#driver.dialect.name === 'postgres' ? 'bigint' : 'integer';
    const create = () =>
      this.#driver.query(
        sql`create table if not exists ${sql.id(this.#table)} (
          name text primary key,
          step text not null,
          details text not null,
          cursors text not null,
          owner text,
          lease_until ${sql.raw(big)} not null default 0,
          abort_requested integer not null default 0,
          started_at ${sql.raw(big)} not null,
          updated_at ${sql.raw(big)} not null
        )`,
      );
    try {
      await create();
    } catch {
      // Two processes creating the table at once: PostgreSQL fails one on its catalog; retry once.
      await create();
    }
  }

  /** The row of `name`, or undefined. */
  async read(name: string): Promise<StoredReshard<D, C> | undefined> {
    const { rows } = await this.#driver.query<RawRow>(
      sql`select name, step, details, cursors, owner, lease_until, abort_requested, started_at, updated_at
          from ${sql.id(this.#table)} where name = ${name}`,
    );
    const row = rows[0];
    if (row === undefined) return undefined;
    return {
      name: row.name,
      step: row.step as ReshardStep,
      details: fromTypedJson<D>(row.details),
      cursors: fromTypedJson<C>(row.cursors),
      owner: row.owner,
      leaseUntil: Number(row.lease_until ?? 0),
      abortRequested: Number(row.abort_requested) === 1 || row.abort_requested === true,
      startedAt: Number(row.started_at),
      updatedAt: Number(row.updated_at),
    };
  }

  /**
   * Starts a reshard row owned by `owner`: inserts it, or replaces a finished (`done`, `aborted`)
   * row whose lease is free. Returns false when another reshard of `name` is in progress.
   */
  async create(name: string, owner: string, leaseMs: number, step: ReshardStep, details: D, cursors: C) {
    const now = this.#clock.now();
    const d = toTypedJson(details);
    const c = toTypedJson(cursors);
    const until = now + leaseMs;
    const result = await this.#driver.query(
      sql`insert into ${sql.id(this.#table)}
            (name, step, details, cursors, owner, lease_until, abort_requested, started_at, updated_at)
          values (${name}, ${step}, ${d}, ${c}, ${owner}, ${until}, 0, ${now}, ${now})
          on conflict (name) do update set step = excluded.step, details = excluded.details,
            cursors = excluded.cursors, owner = excluded.owner, lease_until = excluded.lease_until,
            abort_requested = 0, started_at = excluded.started_at, updated_at = excluded.updated_at
          where ${sql.id(this.#table)}.step in ('done', 'aborted')
            and (${sql.id(this.#table)}.owner is null or ${sql.id(this.#table)}.lease_until < ${now})`,
    );
    return result.rowCount === 1;
  }

  /** Takes the lease of `name` for `owner` when it is free, expired or already `owner`'s. */
  async acquire(name: string, owner: string, leaseMs: number): Promise<boolean> {
    const now = this.#clock.now();
    const result = await this.#driver.query(
      sql`update ${sql.id(this.#table)} set owner = ${owner}, lease_until = ${now + leaseMs}
          where name = ${name} and (owner is null or owner = ${owner} or lease_until < ${now})`,
    );
    return result.rowCount === 1;
  }

  /** Extends `owner`'s lease; returns whether an abort was requested. `E_FENCED` when the lease was lost. */
  async renew(name: string, owner: string, leaseMs: number): Promise<{ abortRequested: boolean }> {
    const { rows } = await this.#driver.query<{ abort_requested: number | string | boolean }>(
      sql`update ${sql.id(this.#table)} set lease_until = ${this.#clock.now() + leaseMs}
          where name = ${name} and owner = ${owner} returning abort_requested`,
    );
    if (rows[0] === undefined) throw fenced(name);
    return { abortRequested: Number(rows[0].abort_requested) === 1 || rows[0].abort_requested === true };
  }

  /**
   * Saves the step, details and cursors and extends the lease, only while `owner` holds it;
   * returns whether an abort was requested. `E_FENCED` when another process took over.
   */
  async save(
    name: string,
    owner: string,
    leaseMs: number,
    step: ReshardStep,
    details: D,
    cursors: C,
  ): Promise<{ abortRequested: boolean }> {
    const now = this.#clock.now();
    const { rows } = await this.#driver.query<{ abort_requested: number | string | boolean }>(
      sql`update ${sql.id(this.#table)} set step = ${step}, details = ${toTypedJson(details)},
            cursors = ${toTypedJson(cursors)}, lease_until = ${now + leaseMs}, updated_at = ${now}
          where name = ${name} and owner = ${owner} returning abort_requested`,
    );
    if (rows[0] === undefined) throw fenced(name);
    return { abortRequested: Number(rows[0].abort_requested) === 1 || rows[0].abort_requested === true };
  }

  /** Gives the lease up (only if `owner` holds it). */
  async release(name: string, owner: string): Promise<void> {
    await this.#driver.query(
      sql`update ${sql.id(this.#table)} set owner = null, lease_until = 0
          where name = ${name} and owner = ${owner}`,
    );
  }

  /** Flags the reshard for abort, so the process running it stops at its next checkpoint. */
  async requestAbort(name: string): Promise<void> {
    await this.#driver.query(sql`update ${sql.id(this.#table)} set abort_requested = 1 where name = ${name}`);
  }
}
