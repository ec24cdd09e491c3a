/**
 * What every SQL event store shares, whatever the engine: argument checks, the registry of event
 * types (validation on append, upcasting on read), expected versions, idempotent appends,
 * stream metadata, snapshots, and the view of the global log as a change log. The engine parts
 * (DDL, stream locks, how positions are handed out and how far readers may safely read, how
 * other processes are woken) sit behind `EventStoreEngine`, implemented in the backend folders.
 */
import {
  type ChangeLog,
  type AppendResult as ChangeLogAppendResult,
  type LogEntry,
  makePosition,
  type Position,
  stableJson,
} from '../core/changes.js';
import { type Clock, systemClock } from '../core/clock.js';
import {
  ClosedError,
  ConfigError,
  isStrataError,
  StrataError,
  ValidationError,
  type ValidationIssue,
} from '../core/errors.js';
import {
  configIdentifier,
  reportBackgroundError,
  type SqlDriver,
  type SqlExecutor,
  type SqlFragment,
  type SqlTransaction,
  sql,
} from '../core/sql.js';
import { assertStandardSchema, validate } from '../core/validation.js';
import type {
  AppendResult,
  EventStore,
  EventTypeDefinition,
  ExpectedVersion,
  LoadAggregateOptions,
  LoadedAggregate,
  NewEvent,
  ReadStreamOptions,
  RecordedEvent,
  Snapshot,
  SnapshotInput,
  SnapshotOptions,
  StreamAppend,
  StreamInfo,
  StreamMetadata,
} from './types.js';
import { uuidv7 } from './uuid-v7.js';

// ---------------------------------------------------------------------------------------------
// Options and errors

/** Options every event store takes, whatever its engine. */
export interface EventStoreOptions {
  /** The store's name: the source of its change-log positions and a label (default `<tablePrefix>_events`). */
  name?: string;
  /** Prefix of the tables (default `strata`: `strata_events`, `strata_streams`, `strata_snapshots`). */
  tablePrefix?: string;
  /** Event types with their schema and upcasters; unregistered types are stored unvalidated. */
  types?: readonly EventTypeDefinition[];
  /** Snapshot policy and table. */
  snapshots?: SnapshotOptions;
  /** The source of event times, retention ages and polling (default the system clock). */
  clock?: Clock;
  /** A stream's type, for snapshot policies and the change-log view (default: the part before the first `-`). */
  streamType?: (stream: string) => string;
}

/** The `details` of an `E_VERSION_CONFLICT` error. */
export interface VersionConflictDetails {
  stream: string;
  expected: ExpectedVersion;
  /** The stream's version when the append was refused (0: no events). */
  actual: number;
}

/** Builds the `E_VERSION_CONFLICT` error; the message names the stream (an identifier, not a secret). */
export function versionConflictError(stream: string, expected: ExpectedVersion, actual: number): StrataError {
  return new StrataError('E_VERSION_CONFLICT', `stream "${stream}" is not at the expected version`, {
    details: { stream, expected, actual } satisfies VersionConflictDetails,
  });
}

/** True when `err` is an `E_VERSION_CONFLICT` error; its `details` carry stream, expected and actual. */
export function isVersionConflict(
  err: unknown,
): err is StrataError & { details: Readonly<VersionConflictDetails> } {
  return isStrataError(err, 'E_VERSION_CONFLICT');
}

function streamDeletedError(stream: string): StrataError {
  return new StrataError(
    'E_STREAM_DELETED',
    `stream "${stream}" is deleted; append with the expected version "no_stream" to recreate it`,
    { details: { stream } },
  );
}

function duplicateEventError(stream: string, id: string | undefined, cause?: unknown): StrataError {
  return new StrataError(
    'E_DUPLICATE_EVENT',
    `an event id of the append to stream "${stream}" is already stored with another stream or payload`,
    { details: id === undefined ? { stream } : { stream, id }, ...(cause === undefined ? {} : { cause }) },
  );
}

function badArgument(path: Array<string | number>, message: string, subject: string): ValidationError {
  return new ValidationError([{ path, message }], { subject });
}

/** The default stream type: the part of the name before the first `-` (`account-42` is `account`). */
export function defaultStreamType(stream: string): string {
  const dash = stream.indexOf('-');
  return dash > 0 ? stream.slice(0, dash) : stream;
}

// ---------------------------------------------------------------------------------------------
// Event types: validation and upcasting

/** A registered type, validated once. */
interface TypeEntry {
  type: string;
  version: number;
  schema: EventTypeDefinition['schema'];
  upcasters: ReadonlyMap<number, (data: Record<string, unknown>) => Record<string, unknown>>;
}

/** Validates and indexes `types`; `E_CONFIG` naming `types[i]...` for a bad definition. */
function registerTypes(types: readonly EventTypeDefinition[] | undefined): Map<string, TypeEntry> {
  const registry = new Map<string, TypeEntry>();
  if (types === undefined) return registry;
  if (!Array.isArray(types)) throw new ConfigError('types', 'expected an array of event type definitions');
  types.forEach((def, i) => {
    const at = `types[${i}]`;
    if (typeof def !== 'object' || def === null) throw new ConfigError(at, 'expected a definition object');
    if (typeof def.type !== 'string' || def.type.length === 0) {
      throw new ConfigError(`${at}.type`, 'must be a non-empty string');
    }
    if (registry.has(def.type)) throw new ConfigError(`${at}.type`, 'is registered twice');
    if (!Number.isSafeInteger(def.version) || def.version < 1) {
      throw new ConfigError(`${at}.version`, 'must be an integer of at least 1');
    }
    if (def.schema !== undefined) assertStandardSchema(def.schema, `${at}.schema`);
    const upcasters = new Map<number, (data: Record<string, unknown>) => Record<string, unknown>>();
    if (def.upcasters !== undefined) {
      if (typeof def.upcasters !== 'object' || def.upcasters === null) {
        throw new ConfigError(`${at}.upcasters`, 'expected an object of version to function');
      }
      for (const [key, fn] of Object.entries(def.upcasters)) {
        const from = Number(key);
        if (!Number.isSafeInteger(from) || from < 1 || from >= def.version) {
          throw new ConfigError(`${at}.upcasters`, 'keys must be versions from 1 to the current version - 1');
        }
        if (typeof fn !== 'function') throw new ConfigError(`${at}.upcasters`, 'values must be functions');
        upcasters.set(from, fn as (data: Record<string, unknown>) => Record<string, unknown>);
      }
    }
    registry.set(def.type, { type: def.type, version: def.version, schema: def.schema, upcasters });
  });
  return registry;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Turns `data` of `fromVersion` into the type's current version, one upcaster at a time.
 * `E_UPCAST` when a step is missing, throws or returns something that is not an object.
 */
function upcast(
  entry: TypeEntry,
  fromVersion: number,
  data: Record<string, unknown>,
): Record<string, unknown> {
  let current = data;
  for (let v = fromVersion; v < entry.version; v++) {
    const step = entry.upcasters.get(v);
    const fail = (problem: string, cause?: unknown) =>
      new StrataError('E_UPCAST', `event type "${entry.type}": ${problem}`, {
        details: { type: entry.type, fromVersion: v, toVersion: v + 1 },
        ...(cause === undefined ? {} : { cause }),
      });
    if (step === undefined) throw fail(`no upcaster from version ${v} to ${v + 1}`);
    let next: unknown;
    try {
      next = step(current);
    } catch (err) {
      throw fail(`the upcaster from version ${v} failed`, err);
    }
    if (!isPlainObject(next)) throw fail(`the upcaster from version ${v} did not return an object`);
    current = next;
  }
  return current;
}

// ---------------------------------------------------------------------------------------------
// The engine seam

/** The table names of one store. */
export interface EventTables {
  /** The validated prefix. */
  prefix: string;
  events: string;
  streams: string;
  snapshots: string;
}

/** A stream's row as the store keeps it. */
export interface StreamRow {
  version: number;
  /** Events at or below this version belong to a deleted incarnation and are never read. */
  startVersion: number;
  deleted: boolean;
  metadata: StreamMetadata;
}

/** One event row to insert, with its JSON already encoded. */
export interface EventRowInput {
  stream: string;
  version: number;
  id: string;
  type: string;
  category: string;
  data: string;
  metadata: string;
  schemaVersion: number;
  time: number;
}

/** A stream's state after an append. */
export interface StreamWrite {
  stream: string;
  version: number;
  startVersion: number;
}

/** One event of a direct append, with its JSON already encoded. */
export interface DirectEvent {
  id: string;
  /** True when the caller gave the id: it may already be stored (an idempotent retry). */
  given: boolean;
  type: string;
  data: string;
  metadata: string;
  schemaVersion: number;
}

/** One stream's part of a direct append. */
export interface DirectStreamAppend {
  stream: string;
  expected: ExpectedVersion;
  category: string;
  events: readonly DirectEvent[];
}

/** One `append` or `appendMany` call: all of its streams or none. */
export interface DirectUnit {
  appends: readonly DirectStreamAppend[];
  /** The event time (epoch ms, the store's clock). */
  time: number;
}

/** How a direct append ended. */
export type DirectOutcome =
  | { status: 'appended'; results: Array<{ version: number; positions: number[] }> }
  | { status: 'conflict'; index: number; actual: number }
  | { status: 'deleted'; index: number }
  | { status: 'fallback' };

/**
 * What an engine provides to the shared store. Every method that takes a transaction runs inside
 * the append's transaction; the rest use the driver.
 */
export interface EventStoreEngine {
  readonly driver: SqlDriver;
  /** A JSON parameter for generic statements (`jsonb` on PostgreSQL, text on SQLite). */
  json(text: string): SqlFragment;
  /** Extra column selected as `tx` (the writing transaction, where the engine names it), or undefined. */
  readonly txColumn: string | undefined;
  /** Creates the tables and whatever else the engine needs, idempotently, in `tx`. */
  migrate(tx: SqlTransaction): Promise<void>;
  /**
   * Locks the streams (given sorted, so two appends never deadlock) until the transaction ends and
   * returns the rows of those that exist. An engine whose readers need it also reserves the
   * transaction's place in the global order here, before any position is handed out.
   */
  lockStreams(tx: SqlTransaction, streams: readonly string[]): Promise<Map<string, StreamRow>>;
  /**
   * Inserts `rows` (positions handed out in row order), stores the streams' new versions and
   * marks them not deleted; returns the positions.
   */
  write(
    tx: SqlTransaction,
    rows: readonly EventRowInput[],
    streams: readonly StreamWrite[],
    now: number,
  ): Promise<number[]>;
  /**
   * The highest position readers may read up to now, such that every committed event at or below it
   * is visible and no event that will still commit lies below it. Undefined when every committed
   * position is always readable (an engine that commits one writer at a time).
   */
  readBound(): Promise<number | undefined>;
  /** The newest committed position readers may read (at or below the read bound), 0 when empty. */
  head(): Promise<number>;
  /** Starts waking `wake` when other connections or processes append; returns a function that stops it. */
  watch(wake: () => void): () => void;
  /**
   * Optional: appends one call's streams in a transaction of the engine's own, outside any caller
   * transaction, checking expected versions and deleted streams and looking for given ids the way
   * the transactional path does. The engine may commit several concurrent calls on distinct
   * streams together, but each call succeeds or fails on its own and a failed call writes nothing.
   * `fallback`: the call wrote nothing and must take the transactional path (a given id is
   * already stored, or the engine could not decide it alone).
   */
  appendDirect?(unit: DirectUnit): Promise<DirectOutcome>;
  /** Called after each commit of an append made through this store (to tell other processes). */
  appended(): void;
  /** Releases what the engine opened itself; the driver stays open. */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// The store

interface PreparedEvent {
  id: string;
  /** True when the caller gave the id (only those can be retried idempotently). */
  givenId: boolean;
  type: string;
  data: Record<string, unknown>;
  metadata: Record<string, unknown>;
  /** `data` and `metadata` encoded once, when checked. */
  dataJson: string;
  metadataJson: string;
  schemaVersion: number;
}

interface PreparedAppend {
  stream: string;
  expected: ExpectedVersion;
  events: PreparedEvent[];
}

interface StoredEventRow {
  position: number;
  stream: string;
  version: number;
  id: string;
  type: string;
  data: unknown;
  metadata: unknown;
  schema_version: number;
  time: number;
  tx?: string | null;
}

const MAX_STREAM_LENGTH = 1000;
const MAX_ID_LENGTH = 200;
const MAX_READ_LIMIT = 10_000;
const ID_CHUNK = 1000;

function checkStreamName(stream: unknown, path: Array<string | number>, subject: string): string {
  if (typeof stream !== 'string' || stream.length === 0 || stream.length > MAX_STREAM_LENGTH) {
    throw badArgument(path, `expected a stream name of 1-${MAX_STREAM_LENGTH} characters`, subject);
  }
  return stream;
}

function checkExpected(expected: unknown, path: Array<string | number>, subject: string): ExpectedVersion {
  if (expected === 'no_stream' || expected === 'stream_exists' || expected === 'any') return expected;
  if (typeof expected === 'number' && Number.isSafeInteger(expected) && expected >= 0) return expected;
  throw badArgument(
    path,
    'expected a version (a non-negative integer), "no_stream", "stream_exists" or "any"',
    subject,
  );
}

function decodeJson(value: unknown, what: string): unknown {
  if (typeof value !== 'string') return value;
  try {
    return JSON.parse(value);
  } catch (err) {
    throw new StrataError('E_CORRUPT', `a stored ${what} could not be decoded`, { cause: err });
  }
}

function encodeJson(value: unknown, path: Array<string | number>, subject: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    throw badArgument(path, 'must be JSON-serializable (no bigints, no cycles)', subject);
  }
  if (text === undefined) throw badArgument(path, 'must be JSON-serializable', subject);
  return text;
}

function toMetadata(value: unknown): StreamMetadata {
  const decoded = decodeJson(value, 'stream metadata');
  return isPlainObject(decoded) ? (decoded as StreamMetadata) : {};
}

function checkMetadata(metadata: unknown): StreamMetadata {
  const subject = 'stream metadata';
  if (!isPlainObject(metadata)) throw badArgument([], 'expected an object', subject);
  const issues: ValidationIssue[] = [];
  const m = metadata as StreamMetadata;
  const positive = (key: 'maxAgeMs' | 'maxCount') => {
    const v = m[key];
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 1)) {
      issues.push({ path: [key], message: 'expected a positive integer' });
    }
  };
  positive('maxAgeMs');
  positive('maxCount');
  if (m.truncateBefore !== undefined && (!Number.isSafeInteger(m.truncateBefore) || m.truncateBefore < 0)) {
    issues.push({ path: ['truncateBefore'], message: 'expected a non-negative integer' });
  }
  if (m.custom !== undefined && !isPlainObject(m.custom)) {
    issues.push({ path: ['custom'], message: 'expected an object' });
  }
  for (const key of Object.keys(m)) {
    if (!['maxAgeMs', 'maxCount', 'truncateBefore', 'custom'].includes(key)) {
      issues.push({ path: [key], message: 'unknown metadata field' });
    }
  }
  if (issues.length > 0) throw new ValidationError(issues, { subject });
  const out: StreamMetadata = {};
  if (m.maxAgeMs !== undefined) out.maxAgeMs = m.maxAgeMs;
  if (m.maxCount !== undefined) out.maxCount = m.maxCount;
  if (m.truncateBefore !== undefined) out.truncateBefore = m.truncateBefore;
  if (m.custom !== undefined) out.custom = m.custom;
  return out;
}

/** Resolves the shared options: table names, name, registry, clock. Throws `E_CONFIG` naming the option. */
export function resolveEventStoreOptions(options: EventStoreOptions): {
  tables: EventTables;
  name: string;
  clock: Clock;
  streamType: (stream: string) => string;
  snapshotPolicy: ((streamType: string) => number | undefined) | undefined;
  registry: Map<string, TypeEntry>;
} {
  const prefix = configIdentifier(options.tablePrefix ?? 'strata', 'tablePrefix');
  // The longest derived name is `<prefix>_events_position_seq`; keep it within 63 characters.
  if (prefix.length > 40) throw new ConfigError('tablePrefix', 'must be at most 40 characters');
  const snapshotTable =
    options.snapshots?.table === undefined
      ? `${prefix}_snapshots`
      : configIdentifier(options.snapshots.table, 'snapshots.table');
  const name = options.name ?? `${prefix}_events`;
  if (typeof name !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    throw new ConfigError('name', 'a store name is 1-64 letters, digits, underscores, dots or dashes');
  }
  if (options.clock !== undefined && typeof options.clock?.now !== 'function') {
    throw new ConfigError('clock', 'expected a Clock');
  }
  if (options.streamType !== undefined && typeof options.streamType !== 'function') {
    throw new ConfigError('streamType', 'expected a function');
  }
  const policy = options.snapshots?.policy;
  if (policy !== undefined && typeof policy !== 'function') {
    throw new ConfigError('snapshots.policy', 'expected a function of the stream type');
  }
  return {
    tables: { prefix, events: `${prefix}_events`, streams: `${prefix}_streams`, snapshots: snapshotTable },
    name,
    clock: options.clock ?? systemClock,
    streamType: options.streamType ?? defaultStreamType,
    snapshotPolicy: policy,
    registry: registerTypes(options.types),
  };
}

/**
 * The event store on a SQL engine. Engines plug in through `EventStoreEngine`; backends may
 * extend the class with engine-specific diagnostics.
 */
export class SqlEventStore implements EventStore {
  readonly name: string;
  protected readonly engine: EventStoreEngine;
  protected readonly tables: EventTables;
  protected readonly clock: Clock;
  readonly #driver: SqlDriver;
  readonly #registry: Map<string, TypeEntry>;
  readonly #streamType: (stream: string) => string;
  readonly #policy: ((streamType: string) => number | undefined) | undefined;
  readonly #listeners = new Set<() => void>();
  #stopWatching: (() => void) | undefined;
  #wakeScheduled = false;
  #ready: Promise<void> | undefined;
  #closed = false;
  #changeLog: ChangeLog | undefined;

  constructor(engine: EventStoreEngine, options: EventStoreOptions) {
    const resolved = resolveEventStoreOptions(options);
    this.engine = engine;
    this.#driver = engine.driver;
    this.tables = resolved.tables;
    this.name = resolved.name;
    this.clock = resolved.clock;
    this.#registry = resolved.registry;
    this.#streamType = resolved.streamType;
    this.#policy = resolved.snapshotPolicy;
  }

  protected assertOpen(): void {
    if (this.#closed) throw new ClosedError(`event store ${this.name}`);
  }

  /** The stream type (category) of `stream`, as snapshot policies and the change-log view see it. */
  streamType(stream: string): string {
    return this.#streamType(stream);
  }

  migrate(): Promise<void> {
    this.assertOpen();
    this.#ready ??= this.#driver
      .transaction((tx) => this.engine.migrate(tx))
      .catch((err: unknown) => {
        this.#ready = undefined;
        throw err;
      });
    return this.#ready;
  }

  // -------------------------------------------------------------------------------------------
  // Appending

  async append(
    stream: string,
    events: NewEvent[],
    options: { expected?: ExpectedVersion; executor?: SqlExecutor } = {},
  ): Promise<AppendResult> {
    const [result] = await this.#appendAll(
      [{ stream, expected: options.expected ?? 'any', events }],
      options.executor,
      'append arguments',
      false,
    );
    return result!;
  }

  appendMany(appends: StreamAppend[], options: { executor?: SqlExecutor } = {}): Promise<AppendResult[]> {
    return this.#appendAll(appends, options.executor, 'appendMany arguments', true);
  }

  async #appendAll(
    appends: readonly StreamAppend[],
    executor: SqlExecutor | undefined,
    subject: string,
    many: boolean,
  ): Promise<AppendResult[]> {
    this.assertOpen();
    const prepared = await this.#prepare(appends, subject, many);
    await this.migrate();
    if (executor === undefined && this.engine.appendDirect !== undefined && prepared.length > 0) {
      const direct = await this.#appendDirect(prepared);
      if (direct !== undefined) return direct;
    }
    const run = (tx: SqlTransaction) => this.#appendIn(tx, prepared);
    const ex = executor ?? this.#driver;
    try {
      // Our own transaction retries a deadlock or busy file as a whole; a caller's is theirs to retry.
      return await (executor === undefined ? ex.transaction(run, { retry: true }) : ex.transaction(run));
    } catch (err) {
      // Two appends racing with one event id on different streams: the unique index decides.
      if (isStrataError(err, 'E_CONSTRAINT') && this.#isIdViolation(err)) {
        throw duplicateEventError(prepared[0]?.stream ?? '', undefined, err);
      }
      throw err;
    }
  }

  /** The engine's own transaction in one round trip; undefined when the transactional path must decide. */
  async #appendDirect(prepared: readonly PreparedAppend[]): Promise<AppendResult[] | undefined> {
    const outcome = await this.engine.appendDirect!({
      time: this.clock.now(),
      appends: prepared.map((a) => ({
        stream: a.stream,
        expected: a.expected,
        category: this.#streamType(a.stream),
        events: a.events.map((e) => ({
          id: e.id,
          given: e.givenId,
          type: e.type,
          data: e.dataJson,
          metadata: e.metadataJson,
          schemaVersion: e.schemaVersion,
        })),
      })),
    });
    switch (outcome.status) {
      case 'appended': {
        if (prepared.some((a) => a.events.length > 0)) this.#afterAppend();
        return outcome.results.map((r) => ({ ...r, alreadyAppended: false }));
      }
      case 'conflict': {
        const a = prepared[outcome.index]!;
        throw versionConflictError(a.stream, a.expected, outcome.actual);
      }
      case 'deleted':
        throw streamDeletedError(prepared[outcome.index]!.stream);
      default:
        return undefined;
    }
  }

  #isIdViolation(err: StrataError): boolean {
    const d = err.details as { constraint?: unknown; table?: unknown; column?: unknown };
    return (
      d.constraint === `${this.tables.events}_id_unique` ||
      (d.table === this.tables.events && d.column === 'id')
    );
  }

  /** Checks the arguments and validates every event against its type; nothing is written on failure. */
  async #prepare(
    appends: readonly StreamAppend[],
    subject: string,
    many: boolean,
  ): Promise<PreparedAppend[]> {
    if (!Array.isArray(appends)) throw badArgument([], 'expected an array of stream appends', subject);
    const issues: ValidationIssue[] = [];
    const seenStreams = new Set<string>();
    const seenIds = new Set<string>();
    const out: PreparedAppend[] = [];
    for (let i = 0; i < appends.length; i++) {
      const a = appends[i];
      const base: Array<string | number> = many ? [i] : [];
      if (typeof a !== 'object' || a === null) throw badArgument(base, 'expected a stream append', subject);
      const stream = checkStreamName(a.stream, [...base, 'stream'], subject);
      if (seenStreams.has(stream)) throw badArgument([...base, 'stream'], 'a stream appears twice', subject);
      seenStreams.add(stream);
      const expected = checkExpected(a.expected, [...base, 'expected'], subject);
      if (!Array.isArray(a.events))
        throw badArgument([...base, 'events'], 'expected an array of events', subject);
      const events: PreparedEvent[] = [];
      for (let j = 0; j < a.events.length; j++) {
        const path = many ? [i, 'events', j] : [j];
        const event = await this.#prepareEvent(a.events[j], path, issues);
        if (event === undefined) continue;
        if (seenIds.has(event.id)) {
          issues.push({ path: [...path, 'id'], message: 'the same event id appears twice in this append' });
        }
        seenIds.add(event.id);
        events.push(event);
      }
      out.push({ stream, expected, events });
    }
    if (issues.length > 0) throw new ValidationError(issues, { subject: 'events' });
    return out;
  }

  async #prepareEvent(
    event: NewEvent | undefined,
    path: Array<string | number>,
    issues: ValidationIssue[],
  ): Promise<PreparedEvent | undefined> {
    if (typeof event !== 'object' || event === null) {
      issues.push({ path, message: 'expected an event object' });
      return undefined;
    }
    const before = issues.length;
    if (typeof event.type !== 'string' || event.type.length === 0 || event.type.length > MAX_ID_LENGTH) {
      issues.push({ path: [...path, 'type'], message: `expected a type of 1-${MAX_ID_LENGTH} characters` });
    }
    if (!isPlainObject(event.data)) issues.push({ path: [...path, 'data'], message: 'expected an object' });
    if (event.metadata !== undefined && !isPlainObject(event.metadata)) {
      issues.push({ path: [...path, 'metadata'], message: 'expected an object' });
    }
    if (
      event.id !== undefined &&
      (typeof event.id !== 'string' || event.id.length === 0 || event.id.length > MAX_ID_LENGTH)
    ) {
      issues.push({ path: [...path, 'id'], message: `expected an id of 1-${MAX_ID_LENGTH} characters` });
    }
    if (
      event.schemaVersion !== undefined &&
      (!Number.isSafeInteger(event.schemaVersion) || event.schemaVersion < 1)
    ) {
      issues.push({ path: [...path, 'schemaVersion'], message: 'expected an integer of at least 1' });
    }
    if (issues.length > before) return undefined;
    const entry = this.#registry.get(event.type);
    let data = event.data;
    let schemaVersion = event.schemaVersion ?? entry?.version ?? 1;
    if (entry !== undefined) {
      if (schemaVersion > entry.version) {
        issues.push({ path: [...path, 'schemaVersion'], message: 'newer than the registered version' });
        return undefined;
      }
      if (schemaVersion < entry.version) {
        data = upcast(entry, schemaVersion, data);
        schemaVersion = entry.version;
      }
      if (entry.schema !== undefined) {
        try {
          const output = await validate(entry.schema, data);
          if (!isPlainObject(output)) {
            issues.push({ path: [...path, 'data'], message: 'the schema did not produce an object' });
            return undefined;
          }
          data = output;
        } catch (err) {
          if (!isStrataError(err, 'E_VALIDATION')) throw err;
          for (const issue of (err as ValidationError).issues) {
            issues.push({ path: [...path, 'data', ...issue.path], message: issue.message });
          }
          return undefined;
        }
      }
    }
    const given = event.id !== undefined;
    const metadata = event.metadata ?? {};
    return {
      id: event.id ?? uuidv7(),
      givenId: given,
      type: event.type,
      data,
      metadata,
      dataJson: encodeJson(data, [...path, 'data'], 'events'),
      metadataJson: encodeJson(metadata, [...path, 'metadata'], 'events'),
      schemaVersion,
    };
  }

  async #appendIn(tx: SqlTransaction, appends: readonly PreparedAppend[]): Promise<AppendResult[]> {
    const streams = appends.map((a) => a.stream).sort();
    const rows = await this.engine.lockStreams(tx, streams);
    const givenIds = appends.flatMap((a) => a.events.filter((e) => e.givenId).map((e) => e.id));
    // Looked up after the locks: an identical append that committed meanwhile is seen here.
    const existing =
      givenIds.length === 0 ? new Map<string, StoredEventRow>() : await this.#eventsById(tx, givenIds);
    const now = this.clock.now();
    const inserts: EventRowInput[] = [];
    const writes: StreamWrite[] = [];
    const results: Array<AppendResult | { pending: number; version: number }> = [];
    for (const a of appends) {
      const found = a.events.filter((e) => e.givenId && existing.has(e.id));
      if (found.length > 0) {
        results.push(this.#alreadyAppended(a, existing));
        continue;
      }
      const row = rows.get(a.stream);
      const version = row?.version ?? 0;
      let startVersion = row?.startVersion ?? 0;
      if (row?.deleted) {
        if (a.expected !== 'no_stream') throw streamDeletedError(a.stream);
        startVersion = version;
      } else if (
        (a.expected === 'no_stream' && version !== 0) ||
        (a.expected === 'stream_exists' && version === 0) ||
        (typeof a.expected === 'number' && a.expected !== version)
      ) {
        throw versionConflictError(a.stream, a.expected, version);
      }
      const category = this.#streamType(a.stream);
      a.events.forEach((e, i) => {
        inserts.push({
          stream: a.stream,
          version: version + i + 1,
          id: e.id,
          type: e.type,
          category,
          data: e.dataJson,
          metadata: e.metadataJson,
          schemaVersion: e.schemaVersion,
          time: now,
        });
      });
      if (a.events.length > 0 || row?.deleted) {
        writes.push({ stream: a.stream, version: version + a.events.length, startVersion });
      }
      results.push({ pending: a.events.length, version: version + a.events.length });
    }
    const positions =
      inserts.length === 0 && writes.length === 0 ? [] : await this.engine.write(tx, inserts, writes, now);
    if (inserts.length > 0) tx.afterCommit(() => this.#afterAppend());
    let next = 0;
    return results.map((r) => {
      if (!('pending' in r)) return r;
      const mine = positions.slice(next, next + r.pending);
      next += r.pending;
      return { version: r.version, positions: mine, alreadyAppended: false };
    });
  }

  /** A retried append: every event must be stored in this stream, in order, with the same payload. */
  #alreadyAppended(a: PreparedAppend, existing: Map<string, StoredEventRow>): AppendResult {
    let previous = 0;
    const positions: number[] = [];
    for (const e of a.events) {
      const stored = existing.get(e.id);
      if (
        stored === undefined ||
        stored.stream !== a.stream ||
        stored.version <= previous ||
        stored.type !== e.type ||
        stored.schema_version !== e.schemaVersion ||
        stableJson(decodeJson(stored.data, 'event')) !== stableJson(e.data) ||
        stableJson(decodeJson(stored.metadata, 'event')) !== stableJson(e.metadata)
      ) {
        throw duplicateEventError(a.stream, e.id);
      }
      previous = stored.version;
      positions.push(stored.position);
    }
    return { version: previous, positions, alreadyAppended: true };
  }

  async #eventsById(ex: SqlExecutor, ids: readonly string[]): Promise<Map<string, StoredEventRow>> {
    const found = new Map<string, StoredEventRow>();
    for (let i = 0; i < ids.length; i += ID_CHUNK) {
      const chunk = ids.slice(i, i + ID_CHUNK);
      const { rows } = await ex.query<StoredEventRow>(
        sql`select ${this.#columns()} from ${sql.id(this.tables.events)} where id in (${sql.join(chunk)})`,
      );
      for (const row of rows) found.set(row.id, row);
    }
    return found;
  }

  #afterAppend(): void {
    if (this.#closed) return;
    this.#wake();
    try {
      this.engine.appended();
    } catch (err) {
      reportBackgroundError(`${this.name} append notification`, err);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  #columns(): SqlFragment {
    const tx = this.engine.txColumn === undefined ? sql.empty : sql.raw(`, ${this.engine.txColumn} as tx`);
    return sql`position, stream, version, id, type, data, metadata, schema_version, time${tx}`;
  }

  #toEvent(row: StoredEventRow): RecordedEvent {
    let data = decodeJson(row.data, 'event') as Record<string, unknown>;
    let schemaVersion = row.schema_version;
    const entry = this.#registry.get(row.type);
    if (entry !== undefined && schemaVersion < entry.version) {
      data = upcast(entry, schemaVersion, data);
      schemaVersion = entry.version;
    }
    return {
      id: row.id,
      stream: row.stream,
      type: row.type,
      data,
      metadata: (decodeJson(row.metadata, 'event') as Record<string, unknown>) ?? {},
      schemaVersion,
      version: row.version,
      position: row.position,
      time: row.time,
    };
  }

  /** The stream's row, or undefined when it was never written. */
  protected async streamRow(stream: string): Promise<StreamRow | undefined> {
    const { rows } = await this.#driver.query<{
      version: number;
      start_version: number;
      deleted: boolean | number;
      metadata: unknown;
    }>(
      sql`select version, start_version, deleted, metadata from ${sql.id(this.tables.streams)} where stream = ${stream}`,
    );
    const row = rows[0];
    if (row === undefined) return undefined;
    return {
      version: row.version,
      startVersion: row.start_version,
      deleted: Boolean(row.deleted),
      metadata: toMetadata(row.metadata),
    };
  }

  async readStream(stream: string, options: ReadStreamOptions = {}): Promise<RecordedEvent[]> {
    this.assertOpen();
    const subject = 'readStream arguments';
    checkStreamName(stream, ['stream'], subject);
    if (typeof options !== 'object' || options === null) throw badArgument([], 'expected options', subject);
    const { from, limit } = options;
    const direction = options.direction ?? 'forwards';
    if (direction !== 'forwards' && direction !== 'backwards') {
      throw badArgument(['direction'], 'expected "forwards" or "backwards"', subject);
    }
    if (from !== undefined && (!Number.isSafeInteger(from) || from < 0)) {
      throw badArgument(['from'], 'expected a non-negative integer', subject);
    }
    if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 1)) {
      throw badArgument(['limit'], 'expected a positive integer', subject);
    }
    await this.migrate();
    const row = await this.streamRow(stream);
    if (row === undefined || row.deleted) return [];
    const m = row.metadata;
    let lowest = row.startVersion + 1;
    if (m.truncateBefore !== undefined) lowest = Math.max(lowest, m.truncateBefore);
    if (m.maxCount !== undefined) lowest = Math.max(lowest, row.version - m.maxCount + 1);
    const minTime = m.maxAgeMs === undefined ? undefined : this.clock.now() - m.maxAgeMs;
    const age = minTime === undefined ? sql.empty : sql` and time >= ${minTime}`;
    const table = sql.id(this.tables.events);
    const take = limit === undefined ? sql.empty : sql` limit ${limit}`;
    let statement: SqlFragment;
    if (direction === 'forwards') {
      statement = sql`select ${this.#columns()} from ${table}
        where stream = ${stream} and version >= ${Math.max(lowest, from ?? 0)}${age}
        order by version${take}`;
    } else {
      const highest = from ?? Number.MAX_SAFE_INTEGER;
      statement = sql`select ${this.#columns()} from ${table}
        where stream = ${stream} and version >= ${lowest} and version <= ${highest}${age}
        order by version desc${take}`;
    }
    const { rows } = await this.#driver.query<StoredEventRow>(statement);
    return rows.map((r) => this.#toEvent(r));
  }

  async readAll(
    after: number,
    limit: number,
    options: { types?: readonly string[] } = {},
  ): Promise<RecordedEvent[]> {
    const rows = await this.#readAllRows(after, limit, options.types, undefined, 'readAll arguments');
    return rows.map((r) => this.#toEvent(r));
  }

  async #readAllRows(
    after: number,
    limit: number,
    types: readonly string[] | undefined,
    categories: readonly string[] | undefined,
    subject: string,
  ): Promise<StoredEventRow[]> {
    this.assertOpen();
    if (!Number.isSafeInteger(after) || after < 0) {
      throw badArgument(['after'], 'expected a non-negative integer', subject);
    }
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_READ_LIMIT) {
      throw badArgument(['limit'], `expected an integer from 1 to ${MAX_READ_LIMIT}`, subject);
    }
    for (const [list, path] of [
      [types, 'types'],
      [categories, 'tables'],
    ] as const) {
      if (list !== undefined && (!Array.isArray(list) || list.some((t) => typeof t !== 'string'))) {
        throw badArgument([path], 'expected an array of strings', subject);
      }
    }
    await this.migrate();
    if (types?.length === 0 || categories?.length === 0) return [];
    // The bound comes first: everything committed at or below it is visible to the next statement.
    const bound = await this.engine.readBound();
    if (bound !== undefined && bound <= after) return [];
    const upTo = bound === undefined ? sql.empty : sql` and position <= ${bound}`;
    const byType = types === undefined ? sql.empty : sql` and type in (${sql.join([...new Set(types)])})`;
    const byCategory =
      categories === undefined ? sql.empty : sql` and category in (${sql.join([...new Set(categories)])})`;
    const { rows } = await this.#driver.query<StoredEventRow>(
      sql`select ${this.#columns()} from ${sql.id(this.tables.events)}
          where position > ${after}${upTo}${byType}${byCategory} order by position limit ${limit}`,
    );
    return rows;
  }

  async head(): Promise<number> {
    this.assertOpen();
    await this.migrate();
    return this.engine.head();
  }

  // -------------------------------------------------------------------------------------------
  // Streams

  async streamInfo(stream: string): Promise<StreamInfo | undefined> {
    this.assertOpen();
    checkStreamName(stream, ['stream'], 'streamInfo arguments');
    await this.migrate();
    const row = await this.streamRow(stream);
    if (row === undefined) return undefined;
    return { stream, version: row.version, deleted: row.deleted, metadata: row.metadata };
  }

  async setMetadata(stream: string, metadata: StreamMetadata): Promise<void> {
    this.assertOpen();
    checkStreamName(stream, ['stream'], 'setMetadata arguments');
    const clean = checkMetadata(metadata);
    await this.migrate();
    const t = sql.id(this.tables.streams);
    await this.#driver.query(
      sql`insert into ${t} (stream, metadata, updated_at) values (${stream}, ${this.engine.json(JSON.stringify(clean))}, ${this.clock.now()})
          on conflict (stream) do update set metadata = excluded.metadata, updated_at = excluded.updated_at`,
    );
  }

  async deleteStream(stream: string): Promise<void> {
    this.assertOpen();
    checkStreamName(stream, ['stream'], 'deleteStream arguments');
    await this.migrate();
    await this.#driver.query(
      sql`update ${sql.id(this.tables.streams)} set deleted = ${true}, updated_at = ${this.clock.now()}
          where stream = ${stream}`,
    );
  }

  // -------------------------------------------------------------------------------------------
  // Snapshots

  async saveSnapshot<S>(stream: string, snapshot: SnapshotInput<S>): Promise<void> {
    this.assertOpen();
    const subject = 'saveSnapshot arguments';
    checkStreamName(stream, ['stream'], subject);
    if (typeof snapshot !== 'object' || snapshot === null)
      throw badArgument([], 'expected a snapshot', subject);
    if (!Number.isSafeInteger(snapshot.version) || snapshot.version < 0) {
      throw badArgument(['version'], 'expected a non-negative integer', subject);
    }
    if (!Number.isSafeInteger(snapshot.stateVersion) || snapshot.stateVersion < 1) {
      throw badArgument(['stateVersion'], 'expected an integer of at least 1', subject);
    }
    const state = encodeJson(snapshot.state, ['state'], subject);
    await this.migrate();
    const t = sql.id(this.tables.snapshots);
    await this.#driver.query(
      sql`insert into ${t} (stream, state_version, version, state, time)
          values (${stream}, ${snapshot.stateVersion}, ${snapshot.version}, ${this.engine.json(state)}, ${this.clock.now()})
          on conflict (stream, state_version) do update
            set version = excluded.version, state = excluded.state, time = excluded.time
            where excluded.version >= ${t}.version`,
    );
  }

  async loadSnapshot<S>(stream: string, stateVersion: number): Promise<Snapshot<S> | undefined> {
    this.assertOpen();
    const subject = 'loadSnapshot arguments';
    checkStreamName(stream, ['stream'], subject);
    if (!Number.isSafeInteger(stateVersion) || stateVersion < 1) {
      throw badArgument(['stateVersion'], 'expected an integer of at least 1', subject);
    }
    await this.migrate();
    const { rows } = await this.#driver.query<{ version: number; state: unknown; time: number }>(
      sql`select version, state, time from ${sql.id(this.tables.snapshots)}
          where stream = ${stream} and state_version = ${stateVersion}`,
    );
    const row = rows[0];
    if (row === undefined) return undefined;
    return {
      stream,
      version: row.version,
      stateVersion,
      state: decodeJson(row.state, 'snapshot') as S,
      time: row.time,
    };
  }

  async loadAggregate<S>(stream: string, options: LoadAggregateOptions<S>): Promise<LoadedAggregate<S>> {
    this.assertOpen();
    const subject = 'loadAggregate arguments';
    checkStreamName(stream, ['stream'], subject);
    if (typeof options?.evolve !== 'function') throw badArgument(['evolve'], 'expected a function', subject);
    const stateVersion = options.stateVersion ?? 1;
    if (!Number.isSafeInteger(stateVersion) || stateVersion < 1) {
      throw badArgument(['stateVersion'], 'expected an integer of at least 1', subject);
    }
    const initial = (): S =>
      typeof options.initialState === 'function' ? (options.initialState as () => S)() : options.initialState;
    await this.migrate();
    const row = await this.streamRow(stream);
    if (row === undefined || row.deleted) {
      return {
        state: initial(),
        version: row?.version ?? 0,
        snapshotVersion: undefined,
        snapshotSaved: false,
        deleted: row?.deleted ?? false,
      };
    }
    let state = initial();
    let from = 1;
    let snapshotVersion: number | undefined;
    const snapshot = await this.loadSnapshot<S>(stream, stateVersion);
    // A snapshot of a deleted incarnation, or beyond the stream, is not this stream's state.
    if (snapshot !== undefined && snapshot.version <= row.version && snapshot.version >= row.startVersion) {
      state = snapshot.state;
      from = snapshot.version + 1;
      snapshotVersion = snapshot.version;
    }
    let version = Math.max(row.version, snapshotVersion ?? 0);
    for (;;) {
      const page = await this.readStream(stream, { from, limit: 1000 });
      for (const event of page) state = options.evolve(state, event);
      const last = page.at(-1);
      if (last !== undefined) version = Math.max(version, last.version);
      if (page.length < 1000 || last === undefined) break;
      from = last.version + 1;
    }
    let snapshotSaved = false;
    const every = this.#policy?.(this.#streamType(stream));
    if (every !== undefined && Number.isSafeInteger(every) && every > 0) {
      const since = snapshotVersion ?? row.startVersion;
      if (version - since >= every) {
        try {
          await this.saveSnapshot(stream, { version, stateVersion, state });
          snapshotSaved = true;
        } catch (err) {
          // A snapshot is an optimisation: failing to save one never fails the load.
          reportBackgroundError(`${this.name} snapshot`, err);
        }
      }
    }
    return { state, version, snapshotVersion, snapshotSaved, deleted: false };
  }

  // -------------------------------------------------------------------------------------------
  // Watching and the change-log view

  watch(listener: () => void): () => void {
    this.assertOpen();
    if (typeof listener !== 'function') throw new ConfigError('listener', 'expected a function');
    const entry = () => listener();
    this.#listeners.add(entry);
    if (this.#listeners.size === 1) this.#stopWatching = this.engine.watch(() => this.#wake());
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      this.#listeners.delete(entry);
      if (this.#listeners.size === 0) {
        this.#stopWatching?.();
        this.#stopWatching = undefined;
      }
    };
  }

  /** Calls every listener once for a burst of wake-ups, after the current task. */
  #wake(): void {
    if (this.#wakeScheduled || this.#listeners.size === 0) return;
    this.#wakeScheduled = true;
    setImmediate(() => {
      this.#wakeScheduled = false;
      if (this.#closed) return;
      for (const listener of this.#listeners) {
        try {
          listener();
        } catch (err) {
          reportBackgroundError(`${this.name} watcher`, err);
        }
      }
    });
  }

  asChangeLog(): ChangeLog {
    this.#changeLog ??= this.#createChangeLog();
    return this.#changeLog;
  }

  #createChangeLog(): ChangeLog {
    const source = this.name;
    const toEntry = (row: StoredEventRow): LogEntry => {
      const event = this.#toEvent(row);
      return {
        source,
        table: this.#streamType(event.stream),
        op: 'insert',
        key: { stream: event.stream },
        before: null,
        after: { ...event } as unknown as Record<string, unknown>,
        position: makePosition(source, BigInt(event.position)),
        txId: row.tx ?? null,
        commitTime: event.time,
        offset: event.position,
      };
    };
    return Object.freeze({
      name: source,
      append: async (): Promise<ChangeLogAppendResult> => {
        throw new StrataError(
          'E_UNSUPPORTED',
          `the change-log view of event store ${source} is read-only; append events through the store`,
        );
      },
      read: async (after: number, limit: number, options: { tables?: readonly string[] } = {}) => {
        const rows = await this.#readAllRows(after, limit, undefined, options.tables, 'read arguments');
        return rows.map(toEntry);
      },
      head: () => this.head(),
      lastPosition: async (name: string): Promise<Position | undefined> => {
        if (name !== source) return undefined;
        const head = await this.head();
        return head === 0 ? undefined : makePosition(source, BigInt(head));
      },
      watch: (listener: () => void) => this.watch(listener),
      // The view borrows the store: closing it leaves the store (and other views) running.
      close: async () => undefined,
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listeners.clear();
    this.#stopWatching?.();
    this.#stopWatching = undefined;
    await this.engine.close();
  }
}
