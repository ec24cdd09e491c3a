/**
 * The shard-map store: strategies saved as numbered versions in a SQL table, one of them active
 * per name, with the state of a reshard in progress, so that every process routes the same way
 * and learns (by polling) when the map changes.
 *
 * Tables (created by `migrate()`): `<table>(name, version, definition, created_at)` holds every
 * version's JSON definition; `<table>_active(name, version, state, details, revision,
 * updated_at)` holds the version routers use, the reshard state and a revision that grows by one
 * on every change.
 */
import { type Clock, sleep, systemClock, type TimerHandle } from '../core/clock.js';
import { type Duration, parseDuration } from '../core/duration.js';
import { ConfigError, isStrataError, StrataError } from '../core/errors.js';
import { configIdentifier, reportBackgroundError, type SqlDriver, sql } from '../core/sql.js';
import { validateStrategy } from './strategies.js';
import type { ShardStrategy, TimeStrategy } from './types.js';

/** A strategy the store keeps: hash, range, directory or time. */
export type StoredShardStrategy = ShardStrategy | TimeStrategy;

/** Where a shard map is in a reshard: routing as usual, copying to a new map, or switching over. */
export type ShardMapState = 'stable' | 'resharding' | 'cutover';

/** One saved version of a shard map. */
export interface ShardMapVersion {
  /** The map's name (`users`, `posts`). */
  readonly name: string;
  /** 1 for the first version saved under the name, then 2, 3, ... */
  readonly version: number;
  /** The definition, deeply frozen, with `version` set to the stored version. */
  readonly strategy: StoredShardStrategy;
  /** When it was saved (epoch ms). */
  readonly createdAt: number;
}

/** The version of a shard map routers use, and its reshard state. */
export interface ActiveShardMap extends ShardMapVersion {
  /** Where the map is in a reshard (`stable` unless set). */
  readonly state: ShardMapState;
  /** Free-form JSON about the state (the target version of a reshard, progress), deeply frozen. */
  readonly details: Readonly<Record<string, unknown>> | undefined;
  /** Grows by one on every activation or state change; `watch` compares it. */
  readonly revision: number;
  /** When the version or the state last changed (epoch ms). */
  readonly updatedAt: number;
}

/** Options for `createShardMapStore`. */
export interface ShardMapStoreOptions {
  /** The versions table (default `strata_shard_maps`); the active table is `<table>_active`. */
  table?: string;
  /** Source of time for timestamps and watch timers (default the system clock). */
  clock?: Clock;
}

/** Options of `ShardMapStore.watch`. */
export interface ShardMapWatchOptions {
  /** How often to read the active map (default 1s). */
  pollInterval?: Duration;
  /**
   * The revision the caller already knows (from `active()`): a differing revision at the first
   * poll is reported. Without it the first poll only sets the baseline.
   */
  since?: number;
  /** Where failed polls and listener errors go (default: a process warning). */
  onError?: (err: unknown) => void;
}

/** Options of `ShardMapStore.activate`. */
export interface ActivateOptions {
  /** Set the state in the same step (default: the state is left as it is). */
  state?: ShardMapState;
  /** Details of that state (only with `state`; default none). */
  details?: Record<string, unknown>;
}

/** Versioned shard maps in a SQL database; see `createShardMapStore`. */
export interface ShardMapStore {
  /** The versions table's name. */
  readonly table: string;
  /** Creates the two tables if missing (idempotent). */
  migrate(): Promise<void>;
  /**
   * Saves `strategy` as the next version of `name` (1 for the first) and returns that version,
   * which replaces the strategy's own `version` field in the stored definition; the first
   * version of a name becomes active at once, later ones only through `activate`.
   * `E_CONFIG` for a bad name, a strategy that is not a plain object of a known `kind`, or one
   * whose JSON does not read back the same (dates, bigints, `NaN`, class instances, functions).
   */
  save(name: string, strategy: StoredShardStrategy): Promise<number>;
  /** One saved version, or undefined when there is none. */
  get(name: string, version: number): Promise<ShardMapVersion | undefined>;
  /** The active version with its state, or undefined when nothing was saved under `name`. */
  active(name: string): Promise<ActiveShardMap | undefined>;
  /** Every saved version of `name`, oldest first (empty when none). */
  history(name: string): Promise<ShardMapVersion[]>;
  /** Makes `version` the one routers use; `E_NOT_FOUND` when that version was never saved. */
  activate(name: string, version: number, options?: ActivateOptions): Promise<ActiveShardMap>;
  /** Records the reshard state (details replaced, or cleared when absent); `E_NOT_FOUND` for an unknown name. */
  setState(name: string, state: ShardMapState, details?: Record<string, unknown>): Promise<ActiveShardMap>;
  /** The names of all saved maps, sorted. */
  names(): Promise<string[]>;
  /**
   * Polls the active map of `name` and calls `listener` whenever its revision changes (another
   * process activated a version or changed the state). The timer does not hold the process open.
   * Returns a function that stops watching. `E_CONFIG` for a bad name or poll interval.
   */
  watch(
    name: string,
    listener: (map: ActiveShardMap) => void | Promise<void>,
    options?: ShardMapWatchOptions,
  ): () => void;
}

const MAP_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$/;
const KINDS: ReadonlySet<string> = new Set(['hash', 'range', 'directory', 'time']);
const STATES: ReadonlySet<string> = new Set(['stable', 'resharding', 'cutover']);
const SAVE_ATTEMPTS = 20;

function assertMapName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !MAP_NAME.test(name)) {
    throw new ConfigError(
      'name',
      'a shard map name is 1-128 letters, digits, underscores, dots, colons or dashes',
    );
  }
}

function assertState(state: unknown): asserts state is ShardMapState {
  if (typeof state !== 'string' || !STATES.has(state)) {
    throw new ConfigError('state', 'must be one of stable, resharding, cutover');
  }
}

function assertVersion(version: unknown): asserts version is number {
  if (!Number.isSafeInteger(version) || (version as number) < 1) {
    throw new ConfigError('version', 'must be a positive integer');
  }
}

/** Creates a shard-map store on `driver`; call `migrate()` once before use. `E_CONFIG` for a bad table name. */
export function createShardMapStore(driver: SqlDriver, options: ShardMapStoreOptions = {}): ShardMapStore {
  const table = configIdentifier(options.table ?? 'strata_shard_maps', 'table');
  const activeTable = configIdentifier(`${table}_active`, 'table');
  const clock = options.clock ?? systemClock;
  const maps = sql.id(table);
  const active = sql.id(activeTable);
  const bigint = driver.dialect.name === 'postgres' ? 'bigint' : 'integer';

  const readActive = async (name: string): Promise<ActiveShardMap | undefined> => {
    const { rows } = await driver.query<Record<string, unknown>>(
      sql`select a.name, a.version, a.state, a.details, a.revision, a.updated_at, m.definition, m.created_at
          from ${active} a join ${maps} m on m.name = a.name and m.version = a.version
          where a.name = ${name}`,
    );
    return rows[0] === undefined ? undefined : toActive(rows[0]);
  };

  async function createTables(): Promise<void> {
    await driver.query(
      sql`create table if not exists ${maps} (
        name text not null,
        version integer not null,
        definition text not null,
        created_at ${sql.raw(bigint)} not null,
        primary key (name, version)
      )`,
    );
    await driver.query(
      sql`create table if not exists ${active} (
        name text primary key,
        version integer not null,
        state text not null,
        details text,
        revision ${sql.raw(bigint)} not null,
        updated_at ${sql.raw(bigint)} not null
      )`,
    );
  }

  /** The active map from an updated active row (`returning *`) and its version's definition. */
  async function afterUpdate(rows: Record<string, unknown>[], name: string, version?: number) {
    const row = rows[0];
    if (row === undefined) throw notFound(name, version);
    const { rows: defs } = await driver.query<Record<string, unknown>>(
      sql`select definition, created_at from ${maps} where name = ${name} and version = ${row.version}`,
    );
    if (defs[0] === undefined) throw notFound(name, version);
    return toActive({ ...row, ...defs[0] });
  }

  return {
    table,

    async migrate() {
      try {
        await createTables();
      } catch {
        // Two processes creating the tables at once: PostgreSQL fails one of them on its catalog
        // (42710 or 23505) once the other commits; by then the tables exist and a retry passes.
        await createTables();
      }
    },

    async save(name, strategy) {
      assertMapName(name);
      const definition = encodeStrategy(strategy);
      const now = clock.now();
      // Single statements, no transaction held across awaits. The active row goes first and
      // points at version 1: reads join it to the versions, so it shows nothing until version 1
      // exists, and a save that dies in between leaves a consistent store.
      for (let attempt = 1; ; attempt++) {
        try {
          await driver.query(
            sql`insert into ${active} (name, version, state, details, revision, updated_at)
                values (${name}, ${1}, ${'stable'}, ${null}, ${1}, ${now})
                on conflict (name) do nothing`,
          );
          // The next version in one statement; two writers that compute the same one collide on
          // the primary key (PostgreSQL) or on a stale snapshot (SQLite), and the loser retries.
          const { rows } = await driver.query<{ version: number | string }>(
            sql`insert into ${maps} (name, version, definition, created_at)
                select cast(${name} as text), coalesce(max(version), 0) + 1, cast(${definition} as text),
                       cast(${now} as ${sql.raw(bigint)})
                from ${maps} where name = ${name}
                returning version`,
          );
          return Number(rows[0]!.version);
        } catch (err) {
          const retryable = isStrataError(err, 'E_CONSTRAINT') || isStrataError(err, 'E_SERIALIZATION');
          if (!retryable || attempt >= SAVE_ATTEMPTS) throw err;
          await sleep(Math.floor(Math.random() * 5 * attempt), { clock: systemClock });
        }
      }
    },

    async get(name, version) {
      assertMapName(name);
      assertVersion(version);
      const { rows } = await driver.query<Record<string, unknown>>(
        sql`select name, version, definition, created_at from ${maps} where name = ${name} and version = ${version}`,
      );
      return rows[0] === undefined ? undefined : toVersion(rows[0]);
    },

    active(name) {
      try {
        assertMapName(name);
      } catch (err) {
        return Promise.reject(err);
      }
      return readActive(name);
    },

    async history(name) {
      assertMapName(name);
      const { rows } = await driver.query<Record<string, unknown>>(
        sql`select name, version, definition, created_at from ${maps} where name = ${name} order by version`,
      );
      return rows.map(toVersion);
    },

    async activate(name, version, options = {}) {
      assertMapName(name);
      assertVersion(version);
      const change = stateChange(options.state, options.details, options.state !== undefined);
      const { rows } = await driver.query<Record<string, unknown>>(
        sql`update ${active} set version = ${version}, revision = revision + 1, updated_at = ${clock.now()}
            ${change === undefined ? sql.empty : sql`, state = ${change.state}, details = ${change.details}`}
            where name = ${name}
              and exists (select 1 from ${maps} m where m.name = ${name} and m.version = ${version})
            returning name, version, state, details, revision, updated_at`,
      );
      return afterUpdate(rows, name, version);
    },

    async setState(name, state, details) {
      assertMapName(name);
      const change = stateChange(state, details, true)!;
      const { rows } = await driver.query<Record<string, unknown>>(
        sql`update ${active} set state = ${change.state}, details = ${change.details},
              revision = revision + 1, updated_at = ${clock.now()}
            where name = ${name}
            returning name, version, state, details, revision, updated_at`,
      );
      return afterUpdate(rows, name);
    },

    async names() {
      const { rows } = await driver.query<{ name: string }>(
        sql`select distinct name from ${maps} order by name`,
      );
      return rows.map((r) => String(r.name));
    },

    watch(name, listener, options = {}) {
      assertMapName(name);
      if (typeof listener !== 'function') throw new ConfigError('listener', 'must be a function');
      const intervalMs = parseDuration(options.pollInterval ?? '1s', 'pollInterval', { allowZero: false });
      if (options.since !== undefined && !Number.isSafeInteger(options.since)) {
        throw new ConfigError('since', 'must be an integer revision');
      }
      const onError = options.onError ?? ((err: unknown) => reportBackgroundError('shard map watch', err));
      let known = options.since;
      let stopped = false;
      let timer: TimerHandle | undefined;
      const poll = async () => {
        try {
          const current = await readActive(name);
          const revision = current?.revision ?? 0;
          if (known === undefined) known = revision;
          else if (current !== undefined && revision !== known && !stopped) {
            known = revision;
            await listener(current);
          }
        } catch (err) {
          if (!stopped) onError(err);
        }
        if (!stopped) timer = clock.setTimeout(() => void poll(), intervalMs);
      };
      void poll();
      return () => {
        stopped = true;
        if (timer !== undefined) clock.clearTimeout(timer);
      };
    },
  };
}

function notFound(name: string, version: number | undefined): StrataError {
  return new StrataError(
    'E_NOT_FOUND',
    version === undefined
      ? `no shard map named "${name}" was saved`
      : `shard map "${name}" has no such saved version`,
    { details: { name, ...(version === undefined ? {} : { version }) } },
  );
}

function stateChange(
  state: unknown,
  details: unknown,
  wanted: boolean,
): { state: ShardMapState; details: string | null } | undefined {
  if (!wanted) {
    if (details !== undefined) throw new ConfigError('details', 'can only be given together with state');
    return undefined;
  }
  assertState(state);
  if (details === undefined) return { state, details: null };
  if (!isPlainObject(details)) throw new ConfigError('details', 'must be a plain object');
  return { state, details: encodeJson(details, 'details') };
}

function toActive(row: Record<string, unknown>): ActiveShardMap {
  return Object.freeze({
    ...toVersion(row),
    state: String(row.state) as ShardMapState,
    details:
      row.details === null || row.details === undefined
        ? undefined
        : (deepFreeze(JSON.parse(String(row.details))) as Record<string, unknown>),
    revision: Number(row.revision),
    updatedAt: Number(row.updated_at),
  });
}

function toVersion(row: Record<string, unknown>): ShardMapVersion {
  const version = Number(row.version);
  const { kind, version: _ignored, ...rest } = JSON.parse(String(row.definition)) as Record<string, unknown>;
  return Object.freeze({
    name: String(row.name),
    version,
    strategy: deepFreeze({ kind, version, ...rest }) as StoredShardStrategy,
    createdAt: Number(row.created_at),
  });
}

/** The JSON stored for a strategy: everything but `version`, which the store assigns. */
function encodeStrategy(strategy: unknown): string {
  if (!isPlainObject(strategy)) throw new ConfigError('strategy', 'must be a plain object with a kind');
  if (typeof strategy.kind !== 'string' || !KINDS.has(strategy.kind)) {
    throw new ConfigError('strategy.kind', 'must be one of hash, range, directory, time');
  }
  // A broken definition is refused here, not when a router loads it.
  validateStrategy(strategy, 'strategy');
  const { version: _assigned, ...definition } = strategy;
  return encodeJson(definition, 'strategy');
}

/** `JSON.stringify(value)`, refusing a value that does not read back the same. */
function encodeJson(value: Record<string, unknown>, option: string): string {
  let text: string;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new ConfigError(option, 'cannot be written as JSON (a bigint or a cycle)', { cause: err });
  }
  const path = differsFromJson(value, JSON.parse(text) as unknown, []);
  if (path !== undefined) {
    throw new ConfigError(
      option,
      'does not survive a JSON round trip; use plain objects, arrays, strings, finite numbers, booleans and null',
      {
        details: { path: path.join('.') },
      },
    );
  }
  return text;
}

/** The path of the first place where `copy` (read back from JSON) differs from `original`. */
function differsFromJson(
  original: unknown,
  copy: unknown,
  path: Array<string | number>,
): Array<string | number> | undefined {
  if (original === null || typeof original !== 'object') {
    return original === copy && !Object.is(original, -0) ? undefined : path;
  }
  if (Array.isArray(original)) {
    if (!Array.isArray(copy) || copy.length !== original.length) return path;
    for (let i = 0; i < original.length; i++) {
      const at = differsFromJson(original[i], copy[i], [...path, i]);
      if (at !== undefined) return at;
    }
    return undefined;
  }
  if (!isPlainObject(original) || Object.getOwnPropertySymbols(original).length > 0) return path;
  if (copy === null || typeof copy !== 'object' || Array.isArray(copy)) return path;
  const copied = copy as Record<string, unknown>;
  let defined = 0;
  for (const [key, value] of Object.entries(original)) {
    // An absent optional field (`fallback: undefined`) reads back as a missing key: same meaning.
    if (value === undefined) continue;
    defined++;
    if (!Object.hasOwn(copied, key)) return [...path, key];
    const at = differsFromJson(value, copied[key], [...path, key]);
    if (at !== undefined) return at;
  }
  return Object.keys(copied).length === defined ? undefined : path;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}
