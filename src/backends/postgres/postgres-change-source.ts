/**
 * Change data capture from PostgreSQL by logical replication: a publication and a pgoutput slot
 * that strata manages, an initial snapshot consistent with the slot, then the slot's stream, with
 * the slot confirmed only after the caller acknowledged (the log holds the changes durably).
 * The replication protocol is pg-logical-replication's; this file decides what to confirm when.
 *
 * Positions. A streamed change's position is (commit LSN of its transaction, index of the change
 * within the transaction). The commit LSN (where the commit record starts, the same in pgoutput's
 * Begin and Commit messages) increases strictly from one transaction to the next. It is also what
 * the slot is confirmed with: pg-logical-replication reports `lsn + 1` as flushed, and PostgreSQL
 * skips on restart exactly the transactions whose commit record starts before the flushed LSN, so
 * confirming a commit LSN skips that transaction and never the next one. (Confirming the end LSN
 * instead could skip a next transaction whose commit record starts exactly there.)
 *
 * Snapshot. The slot is created with an exported snapshot; the snapshot's rows are read in that
 * snapshot, in primary-key order, and delivered as inserts with `snapshot: true` at positions
 * (consistent point - 1, running index), which sort before every streamed change (the slot
 * streams only commits at or after the consistent point). Completion is recorded in
 * `public.strata_capture_state` once the last snapshot row is acknowledged; before that the slot
 * is never confirmed. A process that dies mid-snapshot keeps its slot: the next start reads a fresh
 * snapshot (taken after the consistent point) and continues the running index from the highest
 * index ever handed out (recorded before each batch), so the new rows sort after the old ones and
 * before the stream. Every change after the consistent point is then streamed on top of that newer
 * snapshot: consumers that apply by position converge, rows deleted meanwhile are deleted, and
 * nothing is lost (some rows arrive twice).
 */
import pg from 'pg';
import { LogicalReplicationService, type Pgoutput, PgoutputPlugin } from 'pg-logical-replication';
import { backoffDelay, Mutex, type RetryOptions, retryPolicy } from '../../core/async.js';
import {
  assertSourceName,
  type Change,
  type ChangeSource,
  comparePositions,
  makePosition,
  type Position,
  parsePosition,
  stableJson,
} from '../../core/changes.js';
import { type Clock, sleep, systemClock } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ClosedError, ConfigError, ConnectionError, isStrataError, StrataError } from '../../core/errors.js';
import {
  configIdentifier,
  quoteIdentifierStandard,
  reportBackgroundError,
  type SqlTransaction,
} from '../../core/sql.js';
import { createPostgresDriver, type PostgresDriver } from './postgres-driver.js';
import { toPostgresError } from './postgres-errors.js';
import { formatLsn, parseLsn } from './postgres-lsn.js';

/** A warning about the slot's health, for logs and the dashboard. */
export interface PostgresCaptureWarning {
  /**
   * `W_SLOT_LAG`: the slot retains more WAL than `lagWarning.bytes`. `W_SLOT_RECREATED`: the slot
   * of a capture whose snapshot was done had vanished (dropped, or invalidated by
   * `max_slot_wal_keep_size`) and was created again with a new snapshot; deletes in between are
   * missing downstream. `W_TRUNCATE`: a captured table was truncated; truncation is not a row
   * change and is not delivered.
   */
  code: 'W_SLOT_LAG' | 'W_SLOT_RECREATED' | 'W_TRUNCATE';
  /** The replication slot. */
  slot: string;
  /** WAL the slot holds back (`pg_current_wal_lsn()` minus its `restart_lsn`) at the last check, in bytes. */
  retainedBytes: number;
  /** The table, for `W_TRUNCATE`. */
  table?: string;
}

/** Options for `createPostgresChangeCapture`. */
export interface PostgresChangeCaptureOptions {
  /** `postgres://user:password@host:port/database` of the captured database; without it, pg reads the `PG*` variables. The role needs REPLICATION. */
  url?: string;
  /** The source's name: the `source` of every change and position. */
  source: string;
  /** The captured tables, `name` or `schema.name`; each must exist and have a primary key (or REPLICA IDENTITY FULL). */
  tables: readonly string[];
  /** The replication slot (default `strata_<source>`, lower-cased, other characters as `_`). */
  slot?: string;
  /** The publication (default `strata_<source>`, like the slot). */
  publication?: string;
  /** Read the tables' existing rows before streaming (default true). */
  snapshot?: boolean;
  /**
   * Set REPLICA IDENTITY FULL on the captured tables (default false), so `before` holds whole rows
   * and unchanged TOASTed values are filled from it instead of being listed in `unchanged`.
   */
  replicaIdentityFull?: boolean;
  /** How often an idle slot is advanced and a heartbeat written to the source database (default 10s). */
  heartbeat?: Duration;
  /** Warn (`W_SLOT_LAG`) when the slot retains more WAL than `bytes` (default 512 MiB). */
  lagWarning?: { bytes?: number };
  /** Where warnings go (default: a process warning). */
  onWarning?: (warning: PostgresCaptureWarning) => void;
  /** Where background failures go: dropped streams, failed callbacks, heartbeats (default: a process warning). The capture keeps retrying. */
  onError?: (err: unknown) => void;
  /** The most changes handed to the callback at once (default 1000); a larger transaction comes in several batches. */
  batchSize?: number;
  /** How long opening a connection may take (default 10s). */
  connectTimeout?: Duration;
  /** Backoff between reconnects and between deliveries of a batch whose callback failed (default 100ms doubling to 10s, with jitter). */
  backoff?: Omit<RetryOptions, 'attempts'>;
  /** The clock of heartbeats and backoff (default the system clock). */
  clock?: Clock;
}

/** Progress of the initial snapshot. */
export interface PostgresSnapshotProgress {
  /** `off` when `snapshot: false`; `pending` until it runs; `done` once its last row was acknowledged. */
  state: 'off' | 'pending' | 'running' | 'delivered' | 'done';
  /** Tables to read. */
  tables: number;
  /** Tables read completely by the current attempt. */
  tablesDone: number;
  /** Rows delivered by the current attempt. */
  rows: number;
}

/** What a capture is doing, for the dashboard and `strata changes`. */
export interface PostgresCaptureStats {
  /** The source's name. */
  source: string;
  /** The replication slot. */
  slot: string;
  /** The publication. */
  publication: string;
  /** What the capture is doing now. */
  status: 'idle' | 'snapshot' | 'streaming' | 'reconnecting' | 'stopped';
  /** The LSN the slot was last confirmed to (what PostgreSQL may discard before). */
  confirmedLsn: string | undefined;
  /** The newest WAL position received from the server (data or keepalive). */
  receivedLsn: string | undefined;
  /** WAL the slot retains (current LSN minus `restart_lsn`) at the last check, in bytes. */
  retainedBytes: number | undefined;
  /** Current LSN minus `confirmed_flush_lsn` at the last check, in bytes. */
  lagBytes: number | undefined;
  /** Progress of the initial snapshot. */
  snapshot: PostgresSnapshotProgress;
  /** Changes handed to the callback (including redeliveries). */
  delivered: number;
  /** Times the replication stream was reopened after it failed. */
  reconnects: number;
  /** The code of the last background failure (a stream drop, a failed callback), if any. */
  lastErrorCode: string | undefined;
}

/** A running capture of PostgreSQL tables: a `ChangeSource`, plus its stats and teardown. */
export interface PostgresChangeCapture extends ChangeSource {
  /** The replication slot it reads. */
  readonly slot: string;
  /** The publication it reads. */
  readonly publication: string;
  /** A snapshot of its progress and health. */
  stats(): PostgresCaptureStats;
  /** Stops, then removes the slot, the publication and the snapshot record (for tests and teardown). */
  drop(): Promise<void>;
}

interface CapturedTable {
  /** The name as configured, used as `Change.table`. */
  label: string;
  schema: string;
  name: string;
  oid: number;
  /** Primary-key columns, or every column (null) for a table without one. */
  key: string[] | null;
  identity: 'd' | 'f';
}

interface SlotRow {
  here: boolean;
  plugin: string | null;
  slot_type: string;
  confirmed: string | null;
  wal_status: string | null;
  active_pid: number | null;
}

interface StateRow {
  slot: string;
  consistent: string | null;
  snapshot_done: boolean;
  snapshot_next: number;
}

type Plan =
  | { kind: 'stream' }
  | { kind: 'snapshot'; consistent: bigint; exported: Promise<void> | undefined; commitTime: number };

interface OpenTransaction {
  commitLsn: bigint;
  xid: string;
  commitTime: number;
  count: number;
}

/** A delivered (or buffered) transaction whose commit the slot has not been confirmed past. */
interface Unconfirmed {
  commitLsn: bigint;
  /** The position of its last change; null for a transaction with no captured change. */
  last: Position | null;
}

const STATE_TABLE = 'public.strata_capture_state';
const DEFAULT_LAG_BYTES = 512 * 1024 * 1024;
const STATUS_INTERVAL_MS = 10_000;
const MAX_MINOR = 0xffff_ffff;
const SNAPSHOT_NAME = /^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$/;
const INT8_OID = 20;
const INT8_ARRAY_OID = 1016;

type ParsedMessage = Pgoutput.Message | { tag: 'unparseable'; error: unknown };

/** pgoutput parsing that counts what arrived, so an idle keepalive is told from one racing queued data. */
class CountingPgoutputPlugin extends PgoutputPlugin {
  received = 0;

  override parse(buffer: Buffer): Pgoutput.Message {
    this.received++;
    try {
      return super.parse(buffer);
    } catch (error) {
      // Thrown here it would escape pg's socket handler and crash the process.
      return { tag: 'unparseable', error } as unknown as Pgoutput.Message;
    }
  }
}

/** One replication connection and what it has buffered; discarded whole when the stream fails. */
class Session {
  dead = false;
  tx: OpenTransaction | null = null;
  pending: Change[] = [];
  done = 0;
  idleLsn: bigint | undefined;
  readonly ended: Promise<unknown>;
  #end!: (error: unknown) => void;

  constructor(
    readonly service: LogicalReplicationService,
    readonly plugin: CountingPgoutputPlugin,
  ) {
    this.ended = new Promise((resolve) => {
      this.#end = resolve;
    });
  }

  fail(error: unknown): void {
    if (this.dead) return;
    this.dead = true;
    this.#end(error);
  }

  /** True when every received message was handled and nothing is buffered. */
  get drained(): boolean {
    return this.plugin.received === this.done && this.tx === null && this.pending.length === 0;
  }
}

function defaultName(source: string, option: string): string {
  const name = `strata_${source.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`;
  if (name.length > 63)
    throw new ConfigError(option, `the default name would exceed 63 characters; set "${option}"`);
  return name;
}

function slotName(value: unknown): string {
  if (typeof value !== 'string' || !/^[a-z0-9_]{1,63}$/.test(value)) {
    throw new ConfigError('slot', 'a slot name is 1-63 lower-case letters, digits or underscores');
  }
  return value;
}

function parseTables(value: unknown): Array<{ label: string; schema: string | undefined; name: string }> {
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError('tables', 'expected a non-empty array of table names');
  }
  const seen = new Set<string>();
  return value.map((entry: unknown) => {
    if (typeof entry !== 'string')
      throw new ConfigError('tables', 'each table is a string, name or schema.name');
    const parts = entry.split('.');
    if (parts.length > 2) throw new ConfigError('tables', 'a table is name or schema.name');
    const name = configIdentifier(parts[parts.length - 1], 'tables');
    const schema = parts.length === 2 ? configIdentifier(parts[0], 'tables') : undefined;
    if (seen.has(entry))
      throw new ConfigError('tables', `table "${entry}" is listed twice`, { details: { table: entry } });
    seen.add(entry);
    return { label: entry, schema, name };
  });
}

function qualified(table: { schema: string; name: string }): string {
  return `${quoteIdentifierStandard(table.schema)}.${quoteIdentifierStandard(table.name)}`;
}

function parseInt8(value: string): number | bigint {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : BigInt(value);
}

/**
 * A tuple as pgoutput sent it, as a plain object: int8 as the driver reads it (a number, or a
 * BigInt beyond 2^53 - 1) rather than pg's global string, so snapshot and stream rows agree.
 */
function toRow(tuple: Record<string, unknown>, relation: Pgoutput.MessageRelation): Record<string, unknown> {
  const row: Record<string, unknown> = {};
  for (const column of relation.columns) {
    if (!(column.name in tuple)) continue;
    let value = tuple[column.name];
    if (column.typeOid === INT8_OID && typeof value === 'string') value = parseInt8(value);
    else if (column.typeOid === INT8_ARRAY_OID && Array.isArray(value)) {
      value = value.map((v: unknown) => (typeof v === 'string' ? parseInt8(v) : v));
    }
    row[column.name] = value;
  }
  return row;
}

function pick(row: Record<string, unknown>, columns: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const c of columns) out[c] = row[c];
  return out;
}

/**
 * Creates a capture of `tables` in the database at `url`, as the change source `source`. Options
 * are checked here (`E_CONFIG` naming the option); nothing connects until `start()`, which checks
 * the tables in the catalogs (`E_CONFIG` naming a table that does not exist or has no primary key)
 * before it creates the publication, the slot and the state table.
 *
 * Delivery is at least once and in commit order: the slot is confirmed only up to transactions
 * whose every change was acknowledged, never on receipt, so a restart or a dropped stream
 * delivers again what was not acknowledged. A callback that fails gets the same batch again after
 * a backoff; a stream that drops is reopened with backoff from the slot's confirmed position.
 * Unchanged TOASTed columns are never invented: filled from `before` under REPLICA IDENTITY FULL,
 * otherwise absent from `after` and listed in `unchanged`. An update that changes the primary key
 * is delivered as a delete of the old key and an insert of the new one. Tables added to `tables`
 * later are streamed from then on; their existing rows are not snapshotted (drop and start again
 * for that). Do not await `stop()` inside the callback: it waits for the callback.
 */
export function createPostgresChangeCapture(options: PostgresChangeCaptureOptions): PostgresChangeCapture {
  if (typeof options !== 'object' || options === null) {
    throw new ConfigError('options', 'expected an options object with source and tables');
  }
  assertSourceName(options.source);
  const tables = parseTables(options.tables);
  const slot = options.slot === undefined ? defaultName(options.source, 'slot') : slotName(options.slot);
  const publication =
    options.publication === undefined
      ? defaultName(options.source, 'publication')
      : configIdentifier(options.publication, 'publication');
  const heartbeatMs = parseDuration(options.heartbeat ?? '10s', 'heartbeat', { allowZero: false });
  const connectTimeoutMs = parseDuration(options.connectTimeout ?? '10s', 'connectTimeout', {
    allowZero: false,
  });
  const lagBytes = options.lagWarning?.bytes ?? DEFAULT_LAG_BYTES;
  if (typeof lagBytes !== 'number' || !Number.isFinite(lagBytes) || lagBytes <= 0) {
    throw new ConfigError('lagWarning.bytes', 'must be a positive number of bytes');
  }
  const batchSize = options.batchSize ?? 1000;
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 100_000) {
    throw new ConfigError('batchSize', 'must be an integer from 1 to 100000');
  }
  for (const flag of ['snapshot', 'replicaIdentityFull'] as const) {
    if (options[flag] !== undefined && typeof options[flag] !== 'boolean') {
      throw new ConfigError(flag, 'must be true or false');
    }
  }
  for (const fn of ['onWarning', 'onError'] as const) {
    if (options[fn] !== undefined && typeof options[fn] !== 'function')
      throw new ConfigError(fn, 'must be a function');
  }
  const policy = retryPolicy(
    { initialDelay: 100, maxDelay: 10_000, ...options.backoff, attempts: 1 },
    'backoff',
  );
  const applicationName = `strata capture ${options.source}`.slice(0, 63);
  const makeDriver = (): PostgresDriver =>
    createPostgresDriver({
      ...(options.url === undefined ? {} : { url: options.url }),
      connectTimeout: connectTimeoutMs,
      maxConnections: 3,
      applicationName,
      onBackgroundError: (err) =>
        options.onError === undefined
          ? reportBackgroundError(`postgres capture ${options.source}`, err)
          : options.onError(err),
    });
  // Validates the URL now; opens nothing.
  const firstDriver = makeDriver();
  return new PostgresChangeCaptureImpl({
    source: options.source,
    url: options.url,
    tables,
    slot,
    publication,
    snapshot: options.snapshot ?? true,
    replicaIdentityFull: options.replicaIdentityFull ?? false,
    heartbeatMs,
    connectTimeoutMs,
    lagBytes,
    batchSize,
    policy,
    applicationName,
    onWarning: options.onWarning,
    onError: options.onError,
    clock: options.clock ?? systemClock,
    makeDriver,
    firstDriver,
  });
}

interface Settings {
  source: string;
  url: string | undefined;
  tables: Array<{ label: string; schema: string | undefined; name: string }>;
  slot: string;
  publication: string;
  snapshot: boolean;
  replicaIdentityFull: boolean;
  heartbeatMs: number;
  connectTimeoutMs: number;
  lagBytes: number;
  batchSize: number;
  policy: ReturnType<typeof retryPolicy>;
  applicationName: string;
  onWarning: ((warning: PostgresCaptureWarning) => void) | undefined;
  onError: ((err: unknown) => void) | undefined;
  clock: Clock;
  makeDriver: () => PostgresDriver;
  firstDriver: PostgresDriver;
}

class PostgresChangeCaptureImpl implements PostgresChangeCapture {
  readonly name: string;
  readonly slot: string;
  readonly publication: string;
  readonly #s: Settings;
  readonly #delivery = new Mutex();
  #spareDriver: PostgresDriver | undefined;
  #driver: PostgresDriver | undefined;
  #onChanges: ((changes: Change[]) => Promise<void>) | undefined;
  #running = false;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  #abort = new AbortController();
  #background: Promise<void> | undefined;
  #timer: ReturnType<Clock['setTimeout']> | undefined;
  #ticking = false;
  #lastHeartbeatAt = 0;
  #lagWarned = false;
  #session: Session | undefined;
  #tables = new Map<number, CapturedTable>();
  #byName = new Map<string, CapturedTable>();
  #unconfirmed: Unconfirmed[] = [];
  #acked: Position | undefined;
  #confirmedFlush = 0n;
  #snapshotDone = false;
  #snapshotNext = 0;
  #snapshotLast: Position | undefined;
  #markingDone: Promise<void> | undefined;
  #stats: PostgresCaptureStats;

  constructor(settings: Settings) {
    this.#s = settings;
    this.name = settings.source;
    this.slot = settings.slot;
    this.publication = settings.publication;
    this.#spareDriver = settings.firstDriver;
    this.#stats = {
      source: settings.source,
      slot: settings.slot,
      publication: settings.publication,
      status: 'idle',
      confirmedLsn: undefined,
      receivedLsn: undefined,
      retainedBytes: undefined,
      lagBytes: undefined,
      snapshot: {
        state: settings.snapshot ? 'pending' : 'off',
        tables: settings.tables.length,
        tablesDone: 0,
        rows: 0,
      },
      delivered: 0,
      reconnects: 0,
      lastErrorCode: undefined,
    };
  }

  stats(): PostgresCaptureStats {
    return { ...this.#stats, snapshot: { ...this.#stats.snapshot } };
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  async start(onChanges: (changes: Change[]) => Promise<void>): Promise<void> {
    if (typeof onChanges !== 'function') throw new ConfigError('onChanges', 'must be a function');
    if (this.#running) throw new StrataError('E_CONFLICT', `capture ${this.name} is already started`);
    if (this.#stopped !== undefined) await this.#stopped;
    this.#running = true;
    this.#stopping = false;
    this.#stopped = undefined;
    this.#abort = new AbortController();
    this.#onChanges = onChanges;
    this.#unconfirmed = [];
    this.#acked = undefined;
    this.#snapshotLast = undefined;
    this.#markingDone = undefined;
    this.#driver = this.#spareDriver ?? this.#s.makeDriver();
    this.#spareDriver = undefined;
    const gate = deferred();
    try {
      const plan = await this.#prepare(gate.promise);
      let first: Session | undefined;
      if (plan.kind === 'stream') {
        this.#stats.status = 'streaming';
        first = await this.#openSession();
      } else {
        this.#stats.status = 'snapshot';
      }
      gate.resolve();
      this.#schedule();
      this.#background = this.#supervise(plan, first);
    } catch (err) {
      gate.reject(new ClosedError(`capture ${this.name}`));
      this.#stopping = true;
      this.#abort.abort();
      await this.#session?.service.stop().catch(() => undefined);
      this.#session = undefined;
      await this.#driver.close().catch(() => undefined);
      this.#running = false;
      this.#stats.status = 'stopped';
      throw this.#mapError(err);
    }
  }

  stop(): Promise<void> {
    if (this.#stopped !== undefined) return this.#stopped;
    if (!this.#running) return Promise.resolve();
    this.#stopping = true;
    this.#abort.abort();
    this.#stopped = (async () => {
      if (this.#timer !== undefined) this.#s.clock.clearTimeout(this.#timer);
      this.#timer = undefined;
      // Waits for the running callback; deliveries after it see #stopping and return.
      await this.#delivery.run(() => undefined);
      await this.#session?.service.stop().catch(() => undefined);
      this.#session?.fail(undefined);
      await this.#background?.catch(() => undefined);
      await this.#markingDone?.catch(() => undefined);
      await this.#driver?.close().catch(() => undefined);
      this.#session = undefined;
      this.#background = undefined;
      this.#running = false;
      this.#stats.status = 'stopped';
    })();
    return this.#stopped;
  }

  async drop(): Promise<void> {
    await this.stop();
    const driver = this.#spareDriver ?? this.#s.makeDriver();
    this.#spareDriver = undefined;
    try {
      const deadline = this.#s.clock.now() + this.#s.connectTimeoutMs;
      for (;;) {
        try {
          await driver.query(
            'select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1',
            [this.slot],
          );
          break;
        } catch (err) {
          // The walsender of a stream that just stopped may still hold the slot for a moment.
          if (!isStrataError(err) || err.details.sqlState !== '55006' || this.#s.clock.now() > deadline)
            throw err;
          await sleep(50, { clock: this.#s.clock });
        }
      }
      await driver.query(`drop publication if exists ${quoteIdentifierStandard(this.publication)}`);
      const { rows } = await driver.query<{ present: boolean }>(
        `select to_regclass('${STATE_TABLE}') is not null as present`,
      );
      if (rows[0]?.present === true)
        await driver.query(`delete from ${STATE_TABLE} where source = $1`, [this.name]);
      this.#snapshotDone = false;
      this.#snapshotNext = 0;
    } finally {
      await driver.close();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Preparation: tables, publication, state, slot

  async #prepare(gate: Promise<void>): Promise<Plan> {
    const db = this.#driver!;
    await this.#resolveTables(db);
    await this.#ensureStateTable(db);
    if (this.#s.replicaIdentityFull) {
      for (const table of this.#tables.values()) {
        if (table.identity !== 'f') {
          await db.query(`alter table ${qualified(table)} replica identity full`);
          table.identity = 'f';
        }
      }
    }
    await this.#ensurePublication(db);

    const state = (
      await db.query<StateRow>(
        `select slot, consistent_lsn::text as consistent, snapshot_done, snapshot_next from ${STATE_TABLE} where source = $1`,
        [this.name],
      )
    ).rows[0];
    let slotRow = await this.#slotRow(db);
    if (slotRow !== undefined && !slotRow.here) {
      throw new ConfigError('slot', `replication slot "${this.slot}" belongs to another database`, {
        details: { slot: this.slot },
      });
    }
    if (slotRow !== undefined && (slotRow.slot_type !== 'logical' || slotRow.plugin !== 'pgoutput')) {
      throw new ConfigError('slot', `replication slot "${this.slot}" is not a pgoutput logical slot`, {
        details: { slot: this.slot },
      });
    }
    if (slotRow?.wal_status === 'lost') {
      await db.query('select pg_drop_replication_slot($1)', [this.slot]);
      slotRow = undefined;
    }
    const ownState = state !== undefined && state.slot === this.slot ? state : undefined;

    if (slotRow === undefined) {
      if (ownState?.snapshot_done === true) this.#warn('W_SLOT_RECREATED');
      return this.#createSlot(db, gate);
    }
    await this.#waitSlotFree(db, slotRow);
    this.#confirmedFlush = slotRow.confirmed === null ? 0n : parseLsn(slotRow.confirmed);
    this.#stats.confirmedLsn = slotRow.confirmed ?? undefined;
    if (ownState?.snapshot_done === true || !this.#s.snapshot) {
      if (ownState?.snapshot_done !== true) await this.#writeState(db, this.#confirmedFlush, true, 0);
      this.#markSnapshotState(true);
      return { kind: 'stream' };
    }
    // A slot whose snapshot never completed: read a fresh snapshot, keep the slot (see the header).
    const consistent = ownState?.consistent != null ? parseLsn(ownState.consistent) : this.#confirmedFlush;
    this.#snapshotNext = ownState?.snapshot_next ?? 0;
    if (ownState === undefined) await this.#writeState(db, consistent, false, this.#snapshotNext);
    this.#markSnapshotState(false);
    return { kind: 'snapshot', consistent, exported: undefined, commitTime: this.#s.clock.now() };
  }

  async #resolveTables(db: PostgresDriver): Promise<void> {
    this.#tables.clear();
    this.#byName.clear();
    for (const t of this.#s.tables) {
      const regclass =
        t.schema === undefined
          ? quoteIdentifierStandard(t.name)
          : `${quoteIdentifierStandard(t.schema)}.${quoteIdentifierStandard(t.name)}`;
      const { rows } = await db.query<{
        oid: number;
        schema: string;
        name: string;
        kind: string;
        identity: string;
        pk: string[] | null;
      }>(
        `select c.oid::int8 as oid, n.nspname::text as schema, c.relname::text as name,
                c.relkind::text as kind, c.relreplident::text as identity,
                (select array_agg(a.attname::text order by k.ord)
                   from pg_index i
                   cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
                   join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                  where i.indrelid = c.oid and i.indisprimary) as pk
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where c.oid = to_regclass($1)`,
        [regclass],
      );
      const row = rows[0];
      const details = { table: t.label };
      if (row === undefined)
        throw new ConfigError('tables', `table "${t.label}" does not exist`, { details });
      if (row.kind !== 'r') throw new ConfigError('tables', `"${t.label}" is not a plain table`, { details });
      const full = row.identity === 'f' || this.#s.replicaIdentityFull;
      if (row.pk === null && !full) {
        throw new ConfigError(
          'tables',
          `table "${t.label}" has no primary key; add one or use REPLICA IDENTITY FULL (replicaIdentityFull)`,
          { details },
        );
      }
      if (!full && row.identity !== 'd') {
        throw new ConfigError(
          'tables',
          `table "${t.label}" has a replica identity other than its primary key; use DEFAULT or FULL`,
          { details },
        );
      }
      if (this.#tables.has(row.oid)) {
        throw new ConfigError('tables', `table "${t.label}" is listed twice`, { details });
      }
      const table: CapturedTable = {
        label: t.label,
        schema: row.schema,
        name: row.name,
        oid: row.oid,
        key: row.pk,
        identity: row.identity === 'f' ? 'f' : 'd',
      };
      this.#tables.set(row.oid, table);
      this.#byName.set(`${row.schema}.${row.name}`, table);
    }
  }

  async #ensureStateTable(db: PostgresDriver): Promise<void> {
    try {
      await db.query(
        `create table if not exists ${STATE_TABLE} (
           source text primary key,
           slot text not null,
           publication text not null,
           consistent_lsn pg_lsn,
           snapshot_done boolean not null default false,
           snapshot_next bigint not null default 0,
           tables text[] not null default '{}',
           updated_at timestamptz not null default now())`,
      );
    } catch (err) {
      // Two captures creating it at once: one wins, the other sees a duplicate type or table.
      if (!isStrataError(err) || !['23505', '42P07'].includes(String(err.details.sqlState))) throw err;
    }
  }

  async #ensurePublication(db: PostgresDriver): Promise<void> {
    const wanted = [...this.#tables.values()];
    const list = wanted.map(qualified).join(', ');
    const pub = quoteIdentifierStandard(this.publication);
    const { rows } = await db.query<{ all_tables: boolean; tables: string[] }>(
      `select p.puballtables as all_tables,
              coalesce((select array_agg(pt.schemaname::text || '.' || pt.tablename::text)
                          from pg_publication_tables pt where pt.pubname = p.pubname), '{}') as tables
         from pg_publication p where p.pubname = $1`,
      [this.publication],
    );
    const existing = rows[0];
    if (existing === undefined) {
      try {
        await db.query(`create publication ${pub} for table ${list}`);
      } catch (err) {
        if (!isStrataError(err) || err.details.sqlState !== '42710') throw err;
        await db.query(`alter publication ${pub} set table ${list}`);
      }
      return;
    }
    if (existing.all_tables) {
      throw new ConfigError(
        'publication',
        `publication "${this.publication}" is FOR ALL TABLES; strata manages its own`,
        {
          details: { publication: this.publication },
        },
      );
    }
    const have = new Set(existing.tables);
    const same = have.size === wanted.length && wanted.every((t) => have.has(`${t.schema}.${t.name}`));
    if (!same) await db.query(`alter publication ${pub} set table ${list}`);
  }

  async #slotRow(db: PostgresDriver): Promise<SlotRow | undefined> {
    const { rows } = await db.query<SlotRow>(
      `select database = current_database() as here, plugin::text as plugin, slot_type, confirmed_flush_lsn::text as confirmed,
              wal_status, active_pid
         from pg_replication_slots where slot_name = $1`,
      [this.slot],
    );
    return rows[0];
  }

  async #waitSlotFree(db: PostgresDriver, row: SlotRow): Promise<void> {
    const deadline = this.#s.clock.now() + this.#s.connectTimeoutMs;
    let current: SlotRow | undefined = row;
    while (current?.active_pid != null) {
      if (this.#s.clock.now() > deadline) {
        throw new StrataError(
          'E_CONFLICT',
          `replication slot "${this.slot}" is in use by another connection`,
          {
            details: { slot: this.slot, pid: current.active_pid },
          },
        );
      }
      await sleep(50, { clock: this.#s.clock, signal: this.#abort.signal });
      current = await this.#slotRow(db);
    }
  }

  async #writeState(db: PostgresDriver, consistent: bigint, done: boolean, next: number): Promise<void> {
    await db.query(
      `insert into ${STATE_TABLE} (source, slot, publication, consistent_lsn, snapshot_done, snapshot_next, tables, updated_at)
       values ($1, $2, $3, $4::pg_lsn, $5, $6, $7, now())
       on conflict (source) do update set slot = excluded.slot, publication = excluded.publication,
         consistent_lsn = excluded.consistent_lsn, snapshot_done = excluded.snapshot_done,
         snapshot_next = excluded.snapshot_next, tables = excluded.tables, updated_at = now()`,
      [
        this.name,
        this.slot,
        this.publication,
        formatLsn(consistent),
        done,
        next,
        this.#s.tables.map((t) => t.label),
      ],
    );
  }

  #markSnapshotState(done: boolean): void {
    this.#snapshotDone = done;
    if (this.#s.snapshot) this.#stats.snapshot.state = done ? 'done' : 'pending';
  }

  /** Creates the slot; with a snapshot, imports it into a transaction that the background reads. */
  async #createSlot(db: PostgresDriver, gate: Promise<void>): Promise<Plan> {
    const replication = new pg.Client({
      ...this.#clientConfig(),
      replication: 'database',
    } as pg.ClientConfig);
    replication.on('error', () => undefined);
    try {
      await replication.connect();
      const mode = this.#s.snapshot ? 'export' : 'nothing';
      const created = await replication.query<{ consistent_point: string; snapshot_name: string | null }>(
        `CREATE_REPLICATION_SLOT ${quoteIdentifierStandard(this.slot)} LOGICAL pgoutput (SNAPSHOT '${mode}')`,
      );
      const consistent = parseLsn(created.rows[0]?.consistent_point);
      this.#confirmedFlush = consistent;
      this.#stats.confirmedLsn = formatLsn(consistent);
      this.#snapshotNext = 0;
      if (!this.#s.snapshot) {
        await this.#writeState(db, consistent, true, 0);
        this.#markSnapshotState(true);
        return { kind: 'stream' };
      }
      const snapshotName = created.rows[0]?.snapshot_name;
      if (typeof snapshotName !== 'string' || !SNAPSHOT_NAME.test(snapshotName)) {
        throw new StrataError('E_UNSUPPORTED', 'the server did not export a snapshot for the new slot');
      }
      const commitTime = this.#s.clock.now();
      const imported = deferred();
      const plan: Plan = { kind: 'snapshot', consistent, exported: undefined, commitTime };
      // The exported snapshot lives while the replication connection is idle: import it first.
      plan.exported = db.transaction(
        async (tx) => {
          await tx.query(`set transaction snapshot '${snapshotName}'`);
          imported.resolve();
          await gate;
          await this.#readSnapshot(tx, plan);
        },
        { isolation: 'repeatable read', readOnly: true },
      );
      plan.exported.catch(() => undefined);
      await Promise.race([imported.promise, plan.exported]);
      await this.#writeState(db, consistent, false, 0);
      this.#markSnapshotState(false);
      return plan;
    } finally {
      await replication.end().catch(() => undefined);
    }
  }

  #clientConfig(): pg.ClientConfig {
    return {
      ...(this.#s.url === undefined ? {} : { connectionString: this.#s.url }),
      connectionTimeoutMillis: this.#s.connectTimeoutMs,
      application_name: this.#s.applicationName,
      keepAlive: true,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Background: snapshot, then the stream, reopened with backoff

  async #supervise(plan: Plan, first: Session | undefined): Promise<void> {
    if (plan.kind === 'snapshot') {
      for (let attempt = 1; !this.#stopping; attempt++) {
        try {
          this.#stats.status = 'snapshot';
          await (plan.exported ?? this.#freshSnapshot(plan));
          break;
        } catch (err) {
          plan.exported = undefined;
          if (this.#stopping) return;
          this.#report(err);
          await this.#backoff(attempt);
        }
      }
    }
    let session = first;
    let attempt = 1;
    while (!this.#stopping) {
      if (session === undefined) {
        try {
          session = await this.#openSession();
          attempt = 1;
        } catch (err) {
          if (this.#stopping) return;
          this.#report(err);
          this.#stats.status = 'reconnecting';
          await this.#backoff(attempt++);
          continue;
        }
      }
      this.#stats.status = 'streaming';
      const error = await session.ended;
      await session.service.stop().catch(() => undefined);
      session = undefined;
      if (this.#stopping) return;
      this.#stats.reconnects++;
      this.#stats.status = 'reconnecting';
      this.#report(error ?? new ConnectionError(this.#endpoint(), 'replication stream ended'));
      await this.#backoff(attempt++);
    }
  }

  async #backoff(attempt: number): Promise<void> {
    await sleep(backoffDelay(this.#s.policy, Math.min(attempt, 30)), {
      clock: this.#s.clock,
      signal: this.#abort.signal,
    }).catch(() => undefined);
  }

  async #freshSnapshot(plan: Extract<Plan, { kind: 'snapshot' }>): Promise<void> {
    await this.#driver!.transaction((tx) => this.#readSnapshot(tx, plan), {
      isolation: 'repeatable read',
      readOnly: true,
    });
  }

  async #readSnapshot(tx: SqlTransaction, plan: Extract<Plan, { kind: 'snapshot' }>): Promise<void> {
    const progress = this.#stats.snapshot;
    progress.state = 'running';
    progress.tablesDone = 0;
    progress.rows = 0;
    const major = plan.consistent - 1n;
    const start = this.#snapshotNext;
    let index = start;
    const alive = () => !this.#stopping;
    for (const table of this.#tables.values()) {
      const order =
        table.key === null ? '' : ` order by ${table.key.map(quoteIdentifierStandard).join(', ')}`;
      await tx.query(
        `declare strata_snapshot no scroll cursor for select * from ${qualified(table)}${order}`,
      );
      for (;;) {
        if (this.#stopping) throw new ClosedError(`capture ${this.name}`);
        const { rows } = await tx.query<Record<string, unknown>>(
          `fetch forward ${this.#s.batchSize} from strata_snapshot`,
        );
        if (rows.length === 0) break;
        if (index + rows.length - 1 > MAX_MINOR) {
          throw new StrataError('E_UNSUPPORTED', 'the snapshot has more rows than a position can number');
        }
        const changes = rows.map(
          (row): Change => ({
            source: this.name,
            table: table.label,
            op: 'insert',
            key: pick(row, table.key ?? Object.keys(row)),
            before: null,
            after: { ...row },
            position: makePosition(this.name, major, index++),
            txId: null,
            commitTime: plan.commitTime,
            snapshot: true,
          }),
        );
        // The highest index handed out is durable before the rows leave, so a later attempt
        // numbers its rows after every row this one delivered.
        await this.#driver!.query(
          `update ${STATE_TABLE} set snapshot_next = $2, updated_at = now() where source = $1`,
          [this.name, index],
        );
        this.#snapshotNext = index;
        if (!(await this.#deliver(changes, alive))) throw new ClosedError(`capture ${this.name}`);
        progress.rows += rows.length;
      }
      await tx.query('close strata_snapshot');
      progress.tablesDone++;
    }
    progress.state = 'delivered';
    this.#snapshotLast = index > start ? makePosition(this.name, major, index - 1) : undefined;
    if (
      this.#snapshotLast === undefined ||
      (this.#acked !== undefined && comparePositions(this.#acked, this.#snapshotLast) >= 0)
    ) {
      await this.#markSnapshotDone();
    }
  }

  #markSnapshotDone(): Promise<void> {
    if (this.#snapshotDone) return Promise.resolve();
    this.#markingDone ??= (async () => {
      await this.#driver!.query(
        `update ${STATE_TABLE} set snapshot_done = true, updated_at = now() where source = $1 and slot = $2`,
        [this.name, this.slot],
      );
      this.#markSnapshotState(true);
      this.#tryConfirm();
    })().finally(() => {
      this.#markingDone = undefined;
    });
    return this.#markingDone;
  }

  /** Hands `changes` to the callback, again after a backoff while it fails; false once `alive()` is over. */
  #deliver(changes: Change[], alive: () => boolean): Promise<boolean> {
    return this.#delivery.run(async () => {
      for (let attempt = 1; ; attempt++) {
        if (this.#stopping || !alive()) return false;
        try {
          await this.#onChanges!(changes);
          this.#stats.delivered += changes.length;
          return true;
        } catch (err) {
          if (this.#stopping || !alive()) return false;
          this.#report(err, true);
          await this.#backoff(attempt);
        }
      }
    });
  }

  // -------------------------------------------------------------------------------------------
  // The stream

  async #openSession(): Promise<Session> {
    const plugin = new CountingPgoutputPlugin({ protoVersion: 1, publicationNames: [this.publication] });
    // acknowledge.timeoutSeconds 0: the library would otherwise confirm whatever it last received.
    const service = new LogicalReplicationService(this.#clientConfig(), {
      acknowledge: { auto: false, timeoutSeconds: 0 },
      flowControl: { enabled: true },
    });
    const session = new Session(service, plugin);
    this.#unconfirmed = [];
    this.#session = session;
    service.on('data', (lsn: string, message: ParsedMessage) => this.#onData(session, lsn, message));
    service.on('heartbeat', (lsn: string, _time: number, reply: boolean) =>
      this.#onKeepalive(session, lsn, reply),
    );
    service.on('error', (err: Error) => session.fail(err));
    const started = new Promise<void>((resolve) => service.once('start', () => resolve()));
    // Starting at 0/0 makes the server start at the slot's confirmed position.
    service.subscribe(plugin, this.slot, '0/00000000').then(
      () => session.fail(undefined),
      (err: unknown) => session.fail(err),
    );
    const outcome = await Promise.race([started.then(() => 'started' as const), session.ended]);
    if (outcome !== 'started' || this.#stopping) {
      await service.stop().catch(() => undefined);
      if (outcome === 'started') throw new ClosedError(`capture ${this.name}`);
      throw this.#mapError(outcome ?? new ConnectionError(this.#endpoint(), 'replication stream ended'));
    }
    this.#sendStatus();
    return session;
  }

  async #onData(session: Session, lsn: string, message: ParsedMessage): Promise<void> {
    try {
      if (session.dead || this.#stopping || session !== this.#session) return;
      this.#noteReceived(lsn);
      await this.#handle(session, message);
    } catch (err) {
      // The library would go on with the next message: the session must not.
      session.fail(err);
    } finally {
      session.done++;
    }
  }

  async #handle(session: Session, message: ParsedMessage): Promise<void> {
    switch (message.tag) {
      case 'begin':
        session.tx = {
          commitLsn: parseLsn(message.commitLsn),
          xid: String(message.xid >>> 0),
          // Begin carries the final commit time, so a batch cut inside a transaction has it too.
          commitTime: Number((message.commitTime as unknown as bigint) / 1000n),
          count: 0,
        };
        return;
      case 'insert':
      case 'update':
      case 'delete': {
        const tx = session.tx;
        if (tx === null)
          throw new StrataError('E_CORRUPT', 'pgoutput sent a row change outside a transaction');
        for (const change of this.#toChanges(message, tx)) session.pending.push(change);
        if (session.pending.length >= this.#s.batchSize) await this.#flush(session);
        return;
      }
      case 'truncate':
        for (const relation of message.relations) {
          if (relation !== undefined) this.#warn('W_TRUNCATE', this.#tableOf(relation).label);
        }
        return;
      case 'commit': {
        const tx = session.tx;
        if (tx === null) throw new StrataError('E_CORRUPT', 'pgoutput sent a commit outside a transaction');
        session.tx = null;
        this.#unconfirmed.push({
          commitLsn: tx.commitLsn,
          last: tx.count === 0 ? null : makePosition(this.name, tx.commitLsn, tx.count - 1),
        });
        // Batch small transactions while more messages wait in the queue; deliver once it is empty.
        const queueEmpty = session.plugin.received === session.done + 1;
        if (session.pending.length >= this.#s.batchSize || queueEmpty) await this.#flush(session);
        this.#tryConfirm();
        return;
      }
      case 'unparseable':
        throw new StrataError('E_CORRUPT', 'a pgoutput message could not be parsed', {
          cause: message.error,
        });
      default:
        return;
    }
  }

  async #flush(session: Session): Promise<void> {
    const batch = session.pending;
    session.pending = [];
    if (batch.length > 0) await this.#deliver(batch, () => !session.dead);
  }

  #tableOf(relation: Pgoutput.MessageRelation): CapturedTable {
    const known =
      this.#tables.get(relation.relationOid >>> 0) ?? this.#byName.get(`${relation.schema}.${relation.name}`);
    if (known !== undefined) return known;
    return {
      label: `${relation.schema}.${relation.name}`,
      schema: relation.schema,
      name: relation.name,
      oid: relation.relationOid >>> 0,
      key: relation.replicaIdentity === 'full' ? null : relation.keyColumns,
      identity: relation.replicaIdentity === 'full' ? 'f' : 'd',
    };
  }

  #toChanges(
    message: Pgoutput.MessageInsert | Pgoutput.MessageUpdate | Pgoutput.MessageDelete,
    tx: OpenTransaction,
  ): Change[] {
    const relation = message.relation;
    const table = this.#tableOf(relation);
    const keyOf = (row: Record<string, unknown>) => pick(row, table.key ?? Object.keys(row));
    const make = (
      op: Change['op'],
      key: Record<string, unknown>,
      before: Record<string, unknown> | null,
      after: Record<string, unknown> | null,
      unchanged: string[],
    ): Change => {
      const change: Change = {
        source: this.name,
        table: table.label,
        op,
        key,
        before,
        after,
        position: makePosition(this.name, tx.commitLsn, tx.count++),
        txId: tx.xid,
        commitTime: tx.commitTime,
      };
      if (unchanged.length > 0) change.unchanged = unchanged;
      return change;
    };

    if (message.tag === 'delete') {
      const before = toRow((message.old ?? message.key ?? {}) as Record<string, unknown>, relation);
      return [make('delete', keyOf(before), before, null, [])];
    }
    const raw = toRow(message.new as Record<string, unknown>, relation);
    // pgoutput's 'u' (unchanged TOASTed value) reaches us as undefined unless the library filled it
    // from a REPLICA IDENTITY FULL old tuple: never a value we could invent.
    const unchanged = Object.keys(raw).filter((c) => raw[c] === undefined);
    const after: Record<string, unknown> = {};
    for (const [c, v] of Object.entries(raw)) if (v !== undefined) after[c] = v;
    if (message.tag === 'insert') return [make('insert', keyOf(after), null, after, [])];

    const oldTuple = message.old ?? message.key;
    const before = oldTuple === null ? null : toRow(oldTuple as Record<string, unknown>, relation);
    const newKey = keyOf(after);
    if (before !== null) {
      const oldKey = keyOf(before);
      if (stableJson(oldKey) !== stableJson(newKey)) {
        // A new key is a new row for every per-key consumer: the old one goes away.
        return [make('delete', oldKey, before, null, []), make('insert', newKey, null, after, unchanged)];
      }
    }
    return [make('update', newKey, before, after, unchanged)];
  }

  #onKeepalive(session: Session, lsn: string, reply: boolean): void {
    if (session.dead || session !== this.#session) return;
    this.#noteReceived(lsn);
    // The library queues data but reports keepalives on arrival: a keepalive is a safe place to
    // confirm only when no message before it is still queued or in hand, and all is acknowledged.
    if (session.drained && this.#unconfirmed.length === 0) session.idleLsn = parseLsn(lsn);
    if (reply) this.#sendStatus();
  }

  #noteReceived(lsn: string): void {
    const value = parseLsn(lsn);
    if (value === 0n) return;
    const current = this.#stats.receivedLsn === undefined ? 0n : parseLsn(this.#stats.receivedLsn);
    if (value > current) this.#stats.receivedLsn = formatLsn(value);
  }

  // -------------------------------------------------------------------------------------------
  // Acknowledgement and confirmation

  async acknowledge(position: Position): Promise<void> {
    const parts = parsePosition(position);
    if (parts.source !== this.name) {
      throw new StrataError('E_POSITION', 'invalid position: it belongs to another source', {
        details: { source: this.name },
      });
    }
    if (this.#acked === undefined || comparePositions(position, this.#acked) > 0) this.#acked = position;
    if (!this.#running || this.#stopping) return;
    if (!this.#snapshotDone) {
      const last = this.#snapshotLast;
      if (last === undefined || comparePositions(this.#acked, last) < 0) return;
      await this.#markSnapshotDone();
    }
    this.#tryConfirm();
  }

  /** Confirms the slot past every transaction at the front whose last change is acknowledged. */
  #tryConfirm(): void {
    if (!this.#snapshotDone) return;
    let flush: bigint | undefined;
    while (this.#unconfirmed.length > 0) {
      const front = this.#unconfirmed[0]!;
      if (front.last !== null && (this.#acked === undefined || comparePositions(front.last, this.#acked) > 0))
        break;
      // The library reports lsn + 1 as flushed: just past the commit record's first byte.
      flush = front.commitLsn + 1n;
      this.#unconfirmed.shift();
    }
    if (flush !== undefined) this.#confirm(flush);
  }

  #confirm(flush: bigint): void {
    if (!this.#snapshotDone || flush <= this.#confirmedFlush) return;
    this.#confirmedFlush = flush;
    this.#stats.confirmedLsn = formatLsn(flush);
    this.#sendStatus();
  }

  /** Reports the confirmed position (also the walsender's proof that we are alive). */
  #sendStatus(): void {
    const session = this.#session;
    if (session === undefined || session.dead || this.#confirmedFlush === 0n) return;
    session.service.acknowledge(formatLsn(this.#confirmedFlush - 1n)).catch(() => undefined);
  }

  // -------------------------------------------------------------------------------------------
  // Heartbeats and lag

  #schedule(): void {
    if (this.#stopping) return;
    const every = Math.min(this.#s.heartbeatMs, STATUS_INTERVAL_MS);
    this.#timer = this.#s.clock.setTimeout(() => {
      void this.#tick().finally(() => this.#schedule());
    }, every);
  }

  async #tick(): Promise<void> {
    if (this.#ticking || this.#stopping) return;
    this.#ticking = true;
    try {
      const session = this.#session;
      if (session !== undefined && !session.dead && this.#snapshotDone) {
        // An idle slot: nothing unacknowledged and a keepalive that followed everything
        // received. Its LSN is where the next record starts, so flush exactly there.
        if (session.idleLsn !== undefined && this.#unconfirmed.length === 0) {
          this.#confirm(session.idleLsn);
          session.idleLsn = undefined;
        }
        this.#sendStatus();
      }
      const now = this.#s.clock.now();
      if (now - this.#lastHeartbeatAt < this.#s.heartbeatMs) return;
      this.#lastHeartbeatAt = now;
      const db = this.#driver;
      if (db === undefined) return;
      if (session !== undefined && !session.dead && this.#snapshotDone && this.#unconfirmed.length === 0) {
        // Writes WAL in the captured database, so a slot whose tables are idle while other
        // databases write still receives a keepalive past its position (Debezium's heartbeat query).
        await db
          .query(`select pg_logical_emit_message(false, 'strata_heartbeat', '')`)
          .catch((err: unknown) => {
            this.#report(err);
          });
      }
      await this.#checkLag(db);
    } catch (err) {
      if (!this.#stopping) this.#report(err);
    } finally {
      this.#ticking = false;
    }
  }

  async #checkLag(db: PostgresDriver): Promise<void> {
    const { rows } = await db.query<{ retained: string | null; lag: string | null }>(
      `select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::text as retained,
              pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text as lag
         from pg_replication_slots where slot_name = $1`,
      [this.slot],
    );
    const row = rows[0];
    if (row === undefined) return;
    const retained = row.retained === null ? 0 : Number(row.retained);
    this.#stats.retainedBytes = retained;
    this.#stats.lagBytes = row.lag === null ? undefined : Number(row.lag);
    if (retained > this.#s.lagBytes) {
      if (!this.#lagWarned) this.#warn('W_SLOT_LAG');
      this.#lagWarned = true;
    } else {
      this.#lagWarned = false;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Reporting

  #warn(code: PostgresCaptureWarning['code'], table?: string): void {
    const warning: PostgresCaptureWarning = {
      code,
      slot: this.slot,
      retainedBytes: this.#stats.retainedBytes ?? 0,
      ...(table === undefined ? {} : { table }),
    };
    if (this.#s.onWarning !== undefined) {
      try {
        this.#s.onWarning(warning);
      } catch {
        // A throwing listener must not stop the capture.
      }
      return;
    }
    const what =
      code === 'W_SLOT_LAG'
        ? `slot ${this.slot} retains ${warning.retainedBytes} bytes of WAL`
        : code === 'W_TRUNCATE'
          ? `table ${table} was truncated; truncation is not delivered`
          : `slot ${this.slot} was lost and created again with a new snapshot`;
    process.emitWarning(`postgres capture ${this.name}: ${what}`, { code: `STRATA_${code}` });
  }

  /** Reports a background failure; the callback's own errors are passed on as they are. */
  #report(err: unknown, fromCallback = false): void {
    const reported = fromCallback ? err : this.#mapError(err);
    this.#stats.lastErrorCode = isStrataError(reported)
      ? reported.code
      : reported instanceof Error
        ? reported.name
        : 'unknown';
    if (this.#s.onError !== undefined) {
      try {
        this.#s.onError(reported);
      } catch {
        // A throwing listener must not stop the capture.
      }
      return;
    }
    reportBackgroundError(`postgres capture ${this.name}`, reported);
  }

  #endpoint(): ConstructorParameters<typeof ConnectionError>[0] {
    return this.#driver?.endpoint ?? this.#spareDriver?.endpoint ?? { backend: 'postgres' };
  }

  #mapError(err: unknown): StrataError {
    const { backend: _backend, ...where } = this.#endpoint();
    return toPostgresError(err, where, { connectTimeoutMs: this.#s.connectTimeoutMs });
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}
