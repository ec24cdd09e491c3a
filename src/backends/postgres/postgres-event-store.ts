/**
 * The event store on PostgreSQL.
 *
 * Global order that never skips. A sequence hands out positions when a row is inserted, long
 * before its transaction commits, and transactions commit in any order: a reader that simply
 * reads "after the last position I saw" skips an event whose transaction commits after a later
 * position became visible. Filtering on the writing transaction id (`xid < xmin` of the reader's
 * snapshot) does not repair that for a numeric position either: a transaction may have taken its
 * id before an older open transaction took its positions, so its later positions pass the filter
 * while the lower ones are still in flight.
 *
 * So every append first announces the lowest position it may take: in the statement that locks
 * its streams it takes a shared, transaction-scoped advisory lock keyed by the sequence's next
 * value, before any position is handed out. Locks are visible to every session at once, and
 * PostgreSQL releases them only after the commit is visible. A reader (1) reads the sequence's
 * next value N, (2) reads the lowest key K among those locks, and (3) in a later statement,
 * hence a later snapshot, reads up to H = min(N, K) - 1. Proof: a committed position p <= H was
 * handed out before (1); its transaction locked a key <= p before that. Were it still open at
 * (2), K <= p, contradicting p <= H; so it had ended before (2), and its commit is visible to
 * (3). Readers therefore never skip, and since H never decreases, never see an event twice.
 * Only appends in flight hold readers back (a long analytics query does not), and the lock
 * names the one that does: `blockedBy()`.
 *
 * The writing transaction's id (`xid8`) is kept with each event as the change-log `txId`.
 *
 * Appends outside a caller's transaction take one round trip: a PL/pgSQL function (created by
 * `migrate()`) locks the streams, checks expected versions, deleted streams and given ids, takes
 * the reservation above, inserts the events and moves the streams on, in the statement's implicit
 * transaction. Calls made in the same turn of the event loop, or while four are running, are sent
 * together when their streams are distinct: one transaction and one commit (one WAL flush) for
 * all, yet each call succeeds or fails on its own. A call whose given id is already stored, or
 * whose group the server refused as a whole, is redone alone through the transactional path.
 */
import { performance } from 'node:perf_hooks';
import { withTimeout } from '../../core/async.js';
import type { Clock, TimerHandle } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ConfigError, isStrataError } from '../../core/errors.js';
import {
  nameHash32,
  reportBackgroundError,
  type SqlFragment,
  type SqlTransaction,
  sql,
} from '../../core/sql.js';
import {
  type DirectOutcome,
  type DirectUnit,
  type EventRowInput,
  type EventStoreEngine,
  type EventStoreOptions,
  type EventTables,
  resolveEventStoreOptions,
  SqlEventStore,
  type StreamRow,
  type StreamWrite,
} from '../../events/event-store.js';
import type { EventStore } from '../../events/types.js';
import type { PgQueryConfig, PostgresDriver } from './postgres-driver.js';
import { toPostgresError } from './postgres-errors.js';

/** A notification as pg's client emits it. */
export interface PgNotificationLike {
  channel: string;
  payload?: string;
}

/** The parts of a checked-out pg client the store's listening connection calls. */
export interface PgListenClientLike {
  /** Runs `LISTEN` / `UNLISTEN`. */
  query(config: PgQueryConfig): Promise<unknown>;
  /** Returns the client to its pool; an error destroys it instead. */
  release(err?: Error | boolean): void;
  /** Listens for notifications and for the connection failing. */
  on(event: 'notification', listener: (message: PgNotificationLike) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  /** Stops listening. */
  off(event: 'notification', listener: (message: PgNotificationLike) => void): unknown;
  off(event: 'error', listener: (err: Error) => void): unknown;
}

/** The transaction holding the readers of the global log back. */
export interface BlockingTransaction {
  /** Its transaction id (`backend_xid`), when the server reports one. */
  xid: string | null;
  /** Its backend's process id; null for a prepared (two-phase) transaction. */
  pid: number | null;
  /** When the transaction started (epoch ms, the server's clock), when known. */
  since: number | null;
  /** The backend's current or last statement, for diagnosis only; it may contain values. */
  query?: string;
  /** The first position readers cannot read past while it is open. */
  position: number;
}

/** A warning for logs and the dashboard. */
export interface PostgresEventStoreWarning {
  /** `W_LONG_TRANSACTION`: one transaction held readers back for longer than `longTransactionWarning`. */
  code: 'W_LONG_TRANSACTION';
  /** A static description. */
  message: string;
  pid: number | null;
  xid: string | null;
  /** How long the transaction had been open when the warning was raised (ms), when known. */
  ageMs: number | null;
  /** The first position readers cannot read past. */
  position: number;
}

/** Options for `createPostgresEventStore`. */
export interface PostgresEventStoreOptions extends EventStoreOptions {
  /** The driver (its pool also gives the listening connection); the store never closes it. */
  driver: PostgresDriver;
  /** How long one transaction may hold readers back before `onWarning` hears of it (default 5s). */
  longTransactionWarning?: Duration;
  /** Receives warnings (default: a process warning). */
  onWarning?: (warning: PostgresEventStoreWarning) => void;
  /** Where background failures go: the listening connection, notifications (default: a process warning). */
  onBackgroundError?: (err: unknown) => void;
}

/** An event store on PostgreSQL. */
export interface PostgresEventStore extends EventStore {
  /** The open transaction readers of the global log are waiting for, or undefined when none holds them back. */
  blockedBy(): Promise<BlockingTransaction | undefined>;
}

/**
 * Creates an event store in the driver's PostgreSQL database; tables, the position sequence and
 * the head function are created on first use (or by `migrate()`). Throws `E_CONFIG` naming the
 * option when an option is invalid.
 *
 * Two processes appending to one stream with the same expected version are decided by the
 * stream's row lock: the second waits for the first, then gets `E_VERSION_CONFLICT`. Concurrent
 * appends through one store on distinct streams may commit in one transaction (see above); the
 * events of one call always commit together and nothing of a failed call is written. Watchers are
 * woken at once by appends through this store, and by `LISTEN`/`NOTIFY` (on one connection
 * taken from the driver's pool while anyone watches, reconnected on failure) for appends by
 * other processes. The notification is sent right after the append commits, coalesced per store
 * (during a burst of appends, at most one every 5 ms): a `NOTIFY` inside the append's transaction
 * would make PostgreSQL serialize every notifying commit, cutting concurrent append throughput
 * about threefold.
 */
export function createPostgresEventStore(options: PostgresEventStoreOptions): PostgresEventStore {
  const opts = (options ?? {}) as PostgresEventStoreOptions;
  const d = opts.driver as Partial<PostgresDriver> | undefined;
  if (
    typeof d !== 'object' ||
    d === null ||
    typeof d.transaction !== 'function' ||
    typeof d.pool?.connect !== 'function' ||
    d.dialect?.name !== 'postgres'
  ) {
    throw new ConfigError('driver', 'expected a PostgreSQL driver from createPostgresDriver');
  }
  const warnMs = parseDuration(opts.longTransactionWarning ?? '5s', 'longTransactionWarning', {
    allowZero: false,
  });
  for (const fn of ['onWarning', 'onBackgroundError'] as const) {
    if (opts[fn] !== undefined && typeof opts[fn] !== 'function') {
      throw new ConfigError(fn, 'expected a function');
    }
  }
  const { tables, clock } = resolveEventStoreOptions(opts);
  const engine = new PostgresEventEngine(opts.driver, tables, clock, {
    warnMs,
    onWarning: opts.onWarning,
    onBackgroundError: opts.onBackgroundError,
  });
  return new PostgresEventStoreImpl(engine, opts);
}

class PostgresEventStoreImpl extends SqlEventStore implements PostgresEventStore {
  readonly #engine: PostgresEventEngine;

  constructor(engine: PostgresEventEngine, options: PostgresEventStoreOptions) {
    super(engine, options);
    this.#engine = engine;
  }

  async blockedBy(): Promise<BlockingTransaction | undefined> {
    this.assertOpen();
    await this.migrate();
    return this.#engine.blockedBy();
  }
}

interface HeadRow {
  /** The highest position readers may read up to (it may be a rolled-back, empty position). */
  bound: number;
  /** The newest committed event at or below the bound. */
  head: number;
  holder_pid: number | null;
  holder_key: number | null;
}

class PostgresEventEngine implements EventStoreEngine {
  readonly txColumn = 'tx::text';
  readonly #events: SqlFragment;
  readonly #streams: SqlFragment;
  readonly #sequence: string;
  readonly #headFunction: string;
  readonly #appendFunction: string;
  /** The lock namespace (advisory lock class) of this store's reservations, unsigned. */
  readonly #namespace: number;
  readonly #channel: string;
  readonly #warnMs: number;
  readonly #onWarning: ((warning: PostgresEventStoreWarning) => void) | undefined;
  readonly #onBackgroundError: ((err: unknown) => void) | undefined;
  #holder: { key: string; seenAt: number; warned: boolean } | undefined;
  #notifying = false;
  #notifyAgain = false;
  /** When the last NOTIFY was sent (`performance.now()`: a rate limit on the wire, not store time). */
  #lastNotify = Number.NEGATIVE_INFINITY;
  #listener: Listener | undefined;
  /** Direct appends waiting for a connection; see `appendDirect`. */
  readonly #queue: QueuedUnit[] = [];
  #running = 0;
  #pumpScheduled = false;

  constructor(
    readonly driver: PostgresDriver,
    private readonly tables: EventTables,
    private readonly clock: Clock,
    o: {
      warnMs: number;
      onWarning: ((warning: PostgresEventStoreWarning) => void) | undefined;
      onBackgroundError: ((err: unknown) => void) | undefined;
    },
  ) {
    this.#events = sql.id(tables.events);
    this.#streams = sql.id(tables.streams);
    this.#sequence = `${tables.events}_position_seq`;
    this.#headFunction = `${tables.events}_head`;
    this.#appendFunction = `${tables.events}_append`;
    this.#namespace = nameHash32(`strata.events:${tables.events}`);
    this.#channel = `${tables.events}`;
    this.#warnMs = o.warnMs;
    this.#onWarning = o.onWarning;
    this.#onBackgroundError = o.onBackgroundError;
  }

  json(text: string): SqlFragment {
    return sql`${text}::jsonb`;
  }

  /** The reservation of the sequence's next value, as an argument pair of the advisory lock. */
  #reserve(): string {
    const ns = this.#namespace | 0;
    return `pg_advisory_xact_lock_shared(${ns}, (select ((q.last_value + q.is_called::int) % 4294967296 - 2147483648)::int4 from "${this.#sequence}" q))`;
  }

  async migrate(tx: SqlTransaction): Promise<void> {
    const { events, streams, snapshots } = this.tables;
    const q = (name: string) => `"${name}"`;
    // Concurrent `create ... if not exists` can still collide in the catalog: take turns.
    await tx.query(`select pg_advisory_xact_lock(${nameHash32(`strata.events.migrate:${events}`) | 0}, 0)`);
    await tx.exec(`
      CREATE SEQUENCE IF NOT EXISTS ${q(this.#sequence)} AS bigint CACHE 1;
      CREATE TABLE IF NOT EXISTS ${q(events)} (
        position bigint PRIMARY KEY DEFAULT nextval('${q(this.#sequence)}'),
        stream text NOT NULL,
        version bigint NOT NULL,
        id text NOT NULL,
        type text NOT NULL,
        category text NOT NULL,
        data jsonb NOT NULL,
        metadata jsonb NOT NULL,
        schema_version integer NOT NULL,
        time bigint NOT NULL,
        tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
        CONSTRAINT ${q(`${events}_stream_version_unique`)} UNIQUE (stream, version),
        CONSTRAINT ${q(`${events}_id_unique`)} UNIQUE (id)
      );
      ALTER SEQUENCE ${q(this.#sequence)} OWNED BY ${q(events)}.position;
      CREATE INDEX IF NOT EXISTS ${q(`${events}_by_type`)} ON ${q(events)} (type, position);
      CREATE INDEX IF NOT EXISTS ${q(`${events}_by_category`)} ON ${q(events)} (category, position);
      CREATE TABLE IF NOT EXISTS ${q(streams)} (
        stream text PRIMARY KEY,
        version bigint NOT NULL DEFAULT 0,
        start_version bigint NOT NULL DEFAULT 0,
        deleted boolean NOT NULL DEFAULT false,
        metadata jsonb NOT NULL DEFAULT '{}',
        updated_at bigint
      );
      CREATE TABLE IF NOT EXISTS ${q(snapshots)} (
        stream text NOT NULL,
        state_version integer NOT NULL,
        version bigint NOT NULL,
        state jsonb NOT NULL,
        time bigint NOT NULL,
        PRIMARY KEY (stream, state_version)
      );
      CREATE OR REPLACE FUNCTION ${q(this.#headFunction)}(
        OUT bound bigint, OUT head bigint, OUT holder_pid integer, OUT holder_key bigint
      ) LANGUAGE plpgsql VOLATILE AS $strata$
      DECLARE
        next_position bigint;
      BEGIN
        -- The sequence first, then the reservations: see postgres-event-store.ts for why.
        SELECT s.last_value + s.is_called::int INTO next_position FROM ${q(this.#sequence)} s;
        SELECT x.k, x.pid INTO holder_key, holder_pid FROM (
          SELECT next_position - ((next_position - (l.objid::bigint + 2147483648) % 4294967296)
                   % 4294967296 + 4294967296) % 4294967296 AS k,
                 l.pid
          FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.classid = ${this.#namespace}::oid AND l.objsubid = 2
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        ) x ORDER BY x.k LIMIT 1;
        IF holder_key IS NOT NULL AND holder_key < next_position THEN
          bound := holder_key - 1;
        ELSE
          bound := next_position - 1;
          holder_key := NULL;
          holder_pid := NULL;
        END IF;
        -- A later statement, so a later snapshot: the newest committed event readers may read.
        SELECT coalesce(max(e.position), 0) INTO head FROM ${q(events)} e WHERE e.position <= bound;
      END
      $strata$;
      ${this.#appendFunctionSql()}
    `);
  }

  /**
   * The direct append: one or more calls (units) in one transaction, each succeeding or failing on
   * its own. Statuses per stream append: 0 written, 1 version conflict (the version is the
   * stream's), 2 stream deleted, 3 a given id of its unit is stored, 4 not written because another
   * stream of its unit failed. Positions: those of the written events, in input order.
   */
  #appendFunctionSql(): string {
    const q = (name: string) => `"${name}"`;
    const { events, streams } = this.tables;
    return `
      CREATE OR REPLACE FUNCTION ${q(this.#appendFunction)}(
        a_unit int[], a_stream text[], a_expected bigint[], a_category text[], a_time bigint[],
        a_count int[], a_lock int[],
        e_append int[], e_id text[], e_type text[], e_data jsonb[], e_metadata jsonb[], e_schema int[],
        g_id text[], g_unit int[],
        OUT o_status int[], OUT o_version bigint[], OUT o_positions bigint[]
      ) LANGUAGE plpgsql VOLATILE AS $strata$
      DECLARE
        v_n int := cardinality(a_stream);
        v_k int;
        v_version bigint;
        v_start bigint;
        v_deleted boolean;
        v_created boolean[] := array_fill(false, ARRAY[v_n]);
        v_base bigint[] := array_fill(0::bigint, ARRAY[v_n]);
        v_start_at bigint[] := array_fill(0::bigint, ARRAY[v_n]);
        v_was_deleted boolean[] := array_fill(false, ARRAY[v_n]);
        v_existing int[];
        v_failed int[] := '{}';
        v_insert boolean := false;
      BEGIN
        o_status := array_fill(0, ARRAY[v_n]);
        o_version := array_fill(0::bigint, ARRAY[v_n]);
        o_positions := '{}';
        -- Lock the streams in the caller's order, the order of every appender (so no deadlock),
        -- creating missing rows so that a racing creator waits too.
        FOREACH v_k IN ARRAY a_lock LOOP
          LOOP
            SELECT s.version, s.start_version, s.deleted INTO v_version, v_start, v_deleted
              FROM ${q(streams)} s WHERE s.stream = a_stream[v_k] FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO ${q(streams)} (stream) VALUES (a_stream[v_k]) ON CONFLICT (stream) DO NOTHING;
            IF FOUND THEN
              v_version := 0;
              v_start := 0;
              v_deleted := false;
              v_created[v_k] := true;
              EXIT;
            END IF;
          END LOOP;
          v_base[v_k] := v_version;
          v_start_at[v_k] := v_start;
          v_was_deleted[v_k] := v_deleted;
        END LOOP;
        -- Looked up after the locks: an identical append that committed meanwhile is seen here.
        IF cardinality(g_id) > 0 THEN
          SELECT array_agg(DISTINCT g.u) INTO v_existing FROM unnest(g_id, g_unit) AS g(id, u)
            WHERE EXISTS (SELECT 1 FROM ${q(events)} e WHERE e.id = g.id);
        END IF;
        FOR v_k IN 1..v_n LOOP
          IF a_unit[v_k] = ANY(v_existing) THEN
            o_status[v_k] := 3;
          ELSIF v_was_deleted[v_k] THEN
            IF a_expected[v_k] <> -2 THEN
              o_status[v_k] := 2;
            ELSE
              v_start_at[v_k] := v_base[v_k];
            END IF;
          ELSIF (a_expected[v_k] = -2 AND v_base[v_k] <> 0) OR (a_expected[v_k] = -3 AND v_base[v_k] = 0)
             OR (a_expected[v_k] >= 0 AND a_expected[v_k] <> v_base[v_k]) THEN
            o_status[v_k] := 1;
          END IF;
          o_version[v_k] := v_base[v_k];
          IF o_status[v_k] <> 0 THEN
            v_failed := v_failed || a_unit[v_k];
          END IF;
        END LOOP;
        FOR v_k IN 1..v_n LOOP
          IF a_unit[v_k] = ANY(v_failed) THEN
            IF o_status[v_k] = 0 THEN
              o_status[v_k] := 4;
            END IF;
            -- A failed call leaves nothing behind, not even the row that locked a new stream.
            IF v_created[v_k] THEN
              DELETE FROM ${q(streams)} s WHERE s.stream = a_stream[v_k];
            END IF;
          ELSE
            o_version[v_k] := v_base[v_k] + a_count[v_k];
            v_insert := v_insert OR a_count[v_k] > 0;
          END IF;
        END LOOP;
        IF v_insert THEN
          -- Announce the lowest position this transaction may take before it takes any.
          PERFORM ${this.#reserve()};
          WITH inserted AS (
            INSERT INTO ${q(events)} (stream, version, id, type, category, data, metadata, schema_version, time)
            SELECT a_stream[x.a], v_base[x.a] + x.n, x.id, x.type, a_category[x.a], x.data, x.metadata,
                   x.sv, a_time[x.a]
            FROM (
              SELECT u.a, u.id, u.type, u.data, u.metadata, u.sv, u.ord,
                     row_number() OVER (PARTITION BY u.a ORDER BY u.ord) AS n
              FROM unnest(e_append, e_id, e_type, e_data, e_metadata, e_schema) WITH ORDINALITY
                AS u(a, id, type, data, metadata, sv, ord)
            ) x
            WHERE o_status[x.a] = 0
            ORDER BY x.ord
            RETURNING position
          )
          SELECT coalesce(array_agg(i.position ORDER BY i.position), '{}') INTO o_positions FROM inserted i;
        END IF;
        UPDATE ${q(streams)} t
          SET version = u.v, start_version = u.sv, deleted = false, updated_at = u.tm
          FROM unnest(a_stream, o_version, v_start_at, a_time, o_status, a_count, v_was_deleted)
            AS u(s, v, sv, tm, st, c, d)
          WHERE t.stream = u.s AND u.st = 0 AND (u.c > 0 OR u.d);
      END
      $strata$;`;
  }

  async lockStreams(tx: SqlTransaction, streams: readonly string[]): Promise<Map<string, StreamRow>> {
    // One statement: lock (creating missing rows, so a racing creator waits too), then reserve
    // this transaction's place in the global order before any position is handed out.
    const { rows } = await tx.query<{
      stream: string;
      version: number;
      start_version: number;
      deleted: boolean;
    }>(
      sql`with locked as (
            insert into ${this.#streams} as t (stream) select unnest(${[...streams]}::text[])
            on conflict (stream) do update set version = t.version
            returning t.stream, t.version, t.start_version, t.deleted
          )
          select locked.stream, locked.version, locked.start_version, locked.deleted, ${sql.raw(this.#reserve())}
          from locked`,
    );
    const out = new Map<string, StreamRow>();
    for (const r of rows) {
      out.set(r.stream, {
        version: r.version,
        startVersion: r.start_version,
        deleted: r.deleted,
        metadata: {},
      });
    }
    return out;
  }

  async write(
    tx: SqlTransaction,
    rows: readonly EventRowInput[],
    streams: readonly StreamWrite[],
    now: number,
  ): Promise<number[]> {
    const col = <K extends keyof EventRowInput>(key: K) => rows.map((r) => r[key]);
    const { rows: inserted } = await tx.query<{ position: number }>(
      sql`with inserted as (
            insert into ${this.#events} (stream, version, id, type, category, data, metadata, schema_version, time)
            select * from unnest(${col('stream')}::text[], ${col('version')}::bigint[], ${col('id')}::text[],
              ${col('type')}::text[], ${col('category')}::text[], ${col('data')}::jsonb[], ${col('metadata')}::jsonb[],
              ${col('schemaVersion')}::int[], ${col('time')}::bigint[])
            returning position
          ), updated as (
            update ${this.#streams} t
            set version = u.version, start_version = u.start_version, deleted = false, updated_at = ${now}
            from unnest(${streams.map((s) => s.stream)}::text[], ${streams.map((s) => s.version)}::bigint[],
              ${streams.map((s) => s.startVersion)}::bigint[]) as u(stream, version, start_version)
            where t.stream = u.stream
            returning 1
          )
          select position from inserted order by position`,
    );
    // Positions are handed out in insertion order, which is the rows' order.
    return inserted.map((r) => r.position);
  }

  /**
   * One round trip: the append function in an implicit transaction. Calls made while
   * `DIRECT_CONCURRENCY` others are running wait, and those waiting on distinct streams are then
   * sent together, one transaction and one commit for all of them.
   */
  appendDirect(unit: DirectUnit): Promise<DirectOutcome> {
    return new Promise<DirectOutcome>((resolve, reject) => {
      this.#queue.push({
        unit,
        streams: unit.appends.map((a) => a.stream),
        events: unit.appends.reduce((n, a) => n + a.events.length, 0),
        resolve,
        reject,
      });
      // Once everything runnable now has run, so calls made together are sent together.
      if (!this.#pumpScheduled) {
        this.#pumpScheduled = true;
        process.nextTick(() => {
          this.#pumpScheduled = false;
          this.#pump();
        });
      }
    });
  }

  #pump(): void {
    while (this.#running < DIRECT_CONCURRENCY && this.#queue.length > 0) {
      const group = this.#takeGroup();
      this.#running++;
      void this.#runGroup(group).finally(() => {
        this.#running--;
        this.#pump();
      });
    }
  }

  /** The oldest waiting call, with the next ones on streams no earlier waiting call touches. */
  #takeGroup(): QueuedUnit[] {
    const group: QueuedUnit[] = [this.#queue.shift()!];
    const taken = new Set(group[0]!.streams);
    let events = group[0]!.events;
    const skipped = new Set<string>();
    for (let i = 0; i < this.#queue.length && i < GROUP_SCAN && group.length < GROUP_MAX_UNITS; ) {
      const next = this.#queue[i]!;
      const clash = next.streams.some((s) => taken.has(s) || skipped.has(s));
      if (clash || events + next.events > GROUP_MAX_EVENTS) {
        // Calls on one stream keep their order: a later one never overtakes a skipped one.
        for (const s of next.streams) skipped.add(s);
        i++;
        continue;
      }
      this.#queue.splice(i, 1);
      group.push(next);
      for (const s of next.streams) taken.add(s);
      events += next.events;
    }
    return group;
  }

  async #runGroup(group: readonly QueuedUnit[]): Promise<void> {
    let outcomes: DirectOutcome[];
    try {
      outcomes = await this.#callAppend(group.map((g) => g.unit));
    } catch (err) {
      // An error from the server rolled the whole transaction back: nothing of it was written, so
      // each call may take the transactional path, which finds its own error (or none). Without
      // an answer (a lost connection) the outcome is unknown and the calls fail with it.
      const server =
        isStrataError(err) &&
        err.code !== 'E_CONNECTION' &&
        typeof (err.details as { sqlState?: unknown } | undefined)?.sqlState === 'string';
      const retry =
        server &&
        (group.length > 1 || isStrataError(err, 'E_CONSTRAINT') || isStrataError(err, 'E_SERIALIZATION'));
      for (const g of group) {
        if (retry) g.resolve({ status: 'fallback' });
        else g.reject(err);
      }
      return;
    }
    for (const [i, g] of group.entries()) g.resolve(outcomes[i]!);
  }

  async #callAppend(units: readonly DirectUnit[]): Promise<DirectOutcome[]> {
    const unitOf: number[] = [];
    const streams: string[] = [];
    const expected: number[] = [];
    const categories: string[] = [];
    const times: number[] = [];
    const counts: number[] = [];
    const eAppend: number[] = [];
    const ids: string[] = [];
    const types: string[] = [];
    const data: string[] = [];
    const metadata: string[] = [];
    const schemas: number[] = [];
    const givenIds: string[] = [];
    const givenUnits: number[] = [];
    units.forEach((unit, u) => {
      for (const a of unit.appends) {
        unitOf.push(u);
        streams.push(a.stream);
        expected.push(
          a.expected === 'any'
            ? -1
            : a.expected === 'no_stream'
              ? -2
              : a.expected === 'stream_exists'
                ? -3
                : a.expected,
        );
        categories.push(a.category);
        times.push(unit.time);
        counts.push(a.events.length);
        const index = streams.length; // 1-based, as in SQL arrays
        for (const e of a.events) {
          eAppend.push(index);
          ids.push(e.id);
          types.push(e.type);
          data.push(e.data);
          metadata.push(e.metadata);
          schemas.push(e.schemaVersion);
          if (e.given) {
            givenIds.push(e.id);
            givenUnits.push(u);
          }
        }
      }
    });
    // Every appender locks streams in this order.
    const lock = streams
      .map((_, i) => i + 1)
      .sort((x, y) => compareStrings(streams[x - 1]!, streams[y - 1]!));
    const { rows } = await this.driver.query<{
      o_status: number[];
      o_version: number[];
      o_positions: number[];
    }>(
      sql`select o_status, o_version, o_positions from ${sql.id(this.#appendFunction)}(
            ${unitOf}::int[], ${streams}::text[], ${expected}::bigint[], ${categories}::text[], ${times}::bigint[],
            ${counts}::int[], ${lock}::int[], ${eAppend}::int[], ${ids}::text[], ${types}::text[],
            ${data}::jsonb[], ${metadata}::jsonb[], ${schemas}::int[], ${givenIds}::text[], ${givenUnits}::int[])`,
    );
    const { o_status: status, o_version: version, o_positions: positions } = rows[0]!;
    const outcomes: DirectOutcome[] = units.map(() => ({ status: 'appended', results: [] }));
    let k = 0;
    let p = 0;
    units.forEach((unit, u) => {
      let outcome: DirectOutcome = { status: 'appended', results: [] };
      unit.appends.forEach((a, i) => {
        const st = status[k]!;
        const v = version[k]!;
        k++;
        if (st === 0) {
          if (outcome.status === 'appended') {
            outcome.results.push({ version: v, positions: positions.slice(p, p + a.events.length) });
          }
          p += a.events.length;
        } else if (st === 3) {
          outcome = { status: 'fallback' };
        } else if (outcome.status === 'appended' && st === 1) {
          outcome = { status: 'conflict', index: i, actual: v };
        } else if (outcome.status === 'appended' && st === 2) {
          outcome = { status: 'deleted', index: i };
        }
      });
      outcomes[u] = outcome;
    });
    return outcomes;
  }

  async #headRow(): Promise<HeadRow> {
    const { rows } = await this.driver.query<HeadRow>(
      `select bound, head, holder_pid, holder_key from "${this.#headFunction}"()`,
    );
    const row = rows[0] ?? { bound: 0, head: 0, holder_pid: null, holder_key: null };
    this.#track(row);
    return row;
  }

  async readBound(): Promise<number> {
    return (await this.#headRow()).bound;
  }

  async head(): Promise<number> {
    return (await this.#headRow()).head;
  }

  /** Notices one transaction holding readers back for longer than the warning threshold. */
  #track(row: HeadRow): void {
    if (row.holder_key === null) {
      this.#holder = undefined;
      return;
    }
    const key = `${row.holder_pid}:${row.holder_key}`;
    const now = this.clock.now();
    if (this.#holder?.key !== key) {
      this.#holder = { key, seenAt: now, warned: false };
      return;
    }
    if (this.#holder.warned || now - this.#holder.seenAt < this.#warnMs) return;
    this.#holder.warned = true;
    void this.#warnLong(row.bound + 1).catch((err) => this.#background(err));
  }

  async #warnLong(position: number): Promise<void> {
    const blocking = await this.#blocking();
    const warning: PostgresEventStoreWarning = {
      code: 'W_LONG_TRANSACTION',
      message:
        'an open transaction has held readers of the global event log back for longer than longTransactionWarning',
      pid: blocking?.pid ?? null,
      xid: blocking?.xid ?? null,
      ageMs: blocking?.ageMs ?? null,
      position: blocking?.position ?? position,
    };
    if (this.#onWarning !== undefined) {
      try {
        this.#onWarning(warning);
      } catch {
        // A throwing listener must not break reads.
      }
      return;
    }
    process.emitWarning(`event store ${this.tables.events}: ${warning.message} (pid ${warning.pid})`, {
      code: 'STRATA_W_LONG_TRANSACTION',
    });
  }

  async blockedBy(): Promise<BlockingTransaction | undefined> {
    const found = await this.#blocking();
    if (found === undefined) return undefined;
    const { ageMs: _ageMs, ...blocking } = found;
    return blocking;
  }

  async #blocking(): Promise<(BlockingTransaction & { ageMs: number | null }) | undefined> {
    const { rows } = await this.driver.query<HeadRow>(
      `select bound, head, holder_pid, holder_key from "${this.#headFunction}"()`,
    );
    const row = rows[0];
    if (row === undefined || row.holder_key === null) return undefined;
    const position = row.bound + 1;
    if (row.holder_pid === null) return { xid: null, pid: null, since: null, position, ageMs: null };
    const { rows: activity } = await this.driver.query<{
      xid: string | null;
      since: number | null;
      age_ms: number | null;
      query: string | null;
    }>(
      sql`select backend_xid::text as xid, (extract(epoch from xact_start) * 1000)::bigint as since,
            (extract(epoch from clock_timestamp() - xact_start) * 1000)::bigint as age_ms, query
          from pg_stat_activity where pid = ${row.holder_pid}`,
    );
    const a = activity[0];
    return {
      xid: a?.xid ?? null,
      pid: row.holder_pid,
      since: a?.since ?? null,
      ...(a?.query == null ? {} : { query: a.query }),
      position,
      ageMs: a?.age_ms ?? null,
    };
  }

  watch(wake: () => void): () => void {
    const listener = new Listener(this.driver, this.#channel, this.clock, wake, (err) =>
      this.#background(err),
    );
    this.#listener = listener;
    listener.start();
    return () => {
      if (this.#listener === listener) this.#listener = undefined;
      listener.stop();
    };
  }

  appended(): void {
    // Coalesced: one NOTIFY in flight per store; appends meanwhile ask for exactly one more, sent
    // at least NOTIFY_SPACING_MS after the previous one started (each costs the server a
    // transaction, as much as a small append). The first append after a quiet spell is announced
    // at once; during a burst, other processes hear of appends at most that much later.
    if (this.#notifying) {
      this.#notifyAgain = true;
      return;
    }
    this.#notifying = true;
    void (async () => {
      try {
        do {
          this.#notifyAgain = false;
          const wait = this.#lastNotify + NOTIFY_SPACING_MS - performance.now();
          if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
          if (this.driver.closed) break;
          this.#lastNotify = performance.now();
          await this.driver.query(sql`select pg_notify(${this.#channel}, '')`);
        } while (this.#notifyAgain && !this.driver.closed);
      } catch (err) {
        this.#background(err);
      } finally {
        this.#notifying = false;
      }
    })();
  }

  #background(err: unknown): void {
    if (this.#onBackgroundError !== undefined) this.#onBackgroundError(err);
    else reportBackgroundError(`event store ${this.tables.events}`, err);
  }

  async close(): Promise<void> {
    this.#listener?.stop();
    this.#listener = undefined;
  }
}

/** The least time between two NOTIFYs of one store. */
const NOTIFY_SPACING_MS = 5;

/** Direct appends running at once per store; more wait and are then sent together. */
const DIRECT_CONCURRENCY = 4;
/** At most this many calls, and this many events, go in one transaction. */
const GROUP_MAX_UNITS = 64;
const GROUP_MAX_EVENTS = 2000;
/** How far down the waiting calls a group looks for ones on distinct streams. */
const GROUP_SCAN = 256;

interface QueuedUnit {
  unit: DirectUnit;
  streams: string[];
  events: number;
  resolve: (outcome: DirectOutcome) => void;
  reject: (err: unknown) => void;
}

/** JavaScript's default sort order of strings (UTF-16 code units), which the transactional path locks in. */
function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

const LISTEN_CONNECT_TIMEOUT_MS = 10_000;
const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 5_000;

/** One pooled connection that LISTENs on the store's channel, reconnecting after failures. */
class Listener {
  #client: PgListenClientLike | undefined;
  #stopped = false;
  #timer: TimerHandle | undefined;
  #failures = 0;

  constructor(
    private readonly driver: PostgresDriver,
    private readonly channel: string,
    private readonly clock: Clock,
    private readonly wake: () => void,
    private readonly report: (err: unknown) => void,
  ) {}

  readonly #onNotification = (message: PgNotificationLike): void => {
    if (message.channel === this.channel) this.wake();
  };

  readonly #onError = (err: Error): void => {
    this.report(toPostgresError(err, this.driver.endpoint));
    this.#drop(err);
    this.#schedule();
  };

  start(): void {
    void this.#connect();
  }

  async #connect(): Promise<void> {
    this.#timer = undefined;
    if (this.#stopped) return;
    let client: PgListenClientLike | undefined;
    try {
      const pending = Promise.resolve().then(() => this.driver.pool.connect());
      client = (await withTimeout(pending, LISTEN_CONNECT_TIMEOUT_MS, 'opening the listening connection', {
        onTimeout: () => {
          pending.then(
            (late) => late.release(),
            () => undefined,
          );
        },
      })) as unknown as PgListenClientLike;
      if (this.#stopped) {
        client.release();
        return;
      }
      client.on('error', this.#onError);
      client.on('notification', this.#onNotification);
      this.#client = client;
      await client.query({ text: `LISTEN "${this.channel}"` });
      this.#failures = 0;
      // Appends while no connection listened went unheard: readers look once.
      this.wake();
    } catch (err) {
      if (this.#stopped) return;
      this.report(toPostgresError(err, this.driver.endpoint));
      if (client !== undefined) this.#drop(err instanceof Error ? err : new Error('listen failed'));
      this.#schedule();
    }
  }

  #drop(err: Error): void {
    const client = this.#client;
    this.#client = undefined;
    if (client === undefined) return;
    client.off('notification', this.#onNotification);
    client.off('error', this.#onError);
    // A broken connection is destroyed, never handed back to the pool.
    client.release(err);
  }

  #schedule(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    this.#failures++;
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** (this.#failures - 1));
    this.#timer = this.clock.setTimeout(() => void this.#connect(), delay);
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#timer !== undefined) this.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    const client = this.#client;
    this.#client = undefined;
    if (client === undefined) return;
    client.off('notification', this.#onNotification);
    // UNLISTEN before the connection goes back to the pool, so its next user hears nothing of ours.
    void client
      .query({ text: 'UNLISTEN *' })
      .then(
        () => {
          client.off('error', this.#onError);
          client.release();
        },
        (err: unknown) => {
          client.off('error', this.#onError);
          client.release(err instanceof Error ? err : true);
        },
      )
      .catch(() => undefined);
  }
}
