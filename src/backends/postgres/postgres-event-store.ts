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
 */
import { withTimeout } from '../../core/async.js';
import type { Clock, TimerHandle } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ConfigError } from '../../core/errors.js';
import { reportBackgroundError, type SqlFragment, type SqlTransaction, sql } from '../../core/sql.js';
import {
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
 * stream's row lock: the second waits for the first, then gets `E_VERSION_CONFLICT`. Watchers are
 * woken at once by appends through this store, and by `LISTEN`/`NOTIFY` (on one connection
 * taken from the driver's pool while anyone watches, reconnected on failure) for appends by
 * other processes. The notification is sent right after the append commits, coalesced per store:
 * a `NOTIFY` inside the append's transaction would make PostgreSQL serialize every notifying
 * commit, cutting concurrent append throughput about threefold.
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

/** FNV-1a: a stable 32-bit lock namespace from a name. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
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
  /** The lock namespace (advisory lock class) of this store's reservations, unsigned. */
  readonly #namespace: number;
  readonly #channel: string;
  readonly #warnMs: number;
  readonly #onWarning: ((warning: PostgresEventStoreWarning) => void) | undefined;
  readonly #onBackgroundError: ((err: unknown) => void) | undefined;
  #holder: { key: string; seenAt: number; warned: boolean } | undefined;
  #notifying = false;
  #notifyAgain = false;
  #listener: Listener | undefined;

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
    this.#namespace = hash32(`strata.events:${tables.events}`);
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
    await tx.query(`select pg_advisory_xact_lock(${hash32(`strata.events.migrate:${events}`) | 0}, 0)`);
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
    `);
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
    // Coalesced: one NOTIFY in flight per store; appends meanwhile ask for exactly one more.
    if (this.#notifying) {
      this.#notifyAgain = true;
      return;
    }
    this.#notifying = true;
    void (async () => {
      try {
        do {
          this.#notifyAgain = false;
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
