/**
 * The contracts of `strata/events`: events, streams, expected versions, the event store, and
 * how the store's global log plugs into the change-log consumer runtime.
 */
import type { ChangeLog } from '../core/changes.js';
import type { SqlExecutor } from '../core/sql.js';

/** An event to append: a type, a JSON payload, optional metadata and an id for idempotency. */
export interface NewEvent<T extends string = string, D = Record<string, unknown>> {
  /** Unique id (default: a time-ordered UUIDv7). A retried append with the same id is "already appended". */
  id?: string;
  type: T;
  data: D;
  /** Metadata (correlation, causation, user); not validated by the event's schema. */
  metadata?: Record<string, unknown>;
  /** Schema version of `data` (default: the registered current version, else 1). */
  schemaVersion?: number;
}

/** A stored event. */
export interface RecordedEvent<T extends string = string, D = Record<string, unknown>> {
  id: string;
  stream: string;
  type: T;
  data: D;
  metadata: Record<string, unknown>;
  schemaVersion: number;
  /** Position within its stream: 1, 2, 3, ... */
  version: number;
  /** Position in the store's global log: increasing, never reused, with gaps allowed. */
  position: number;
  /** When it was appended (epoch ms, the store's clock). */
  time: number;
}

/**
 * What the stream must look like for an append to go ahead: exactly `n` events (its version),
 * `'no_stream'` (does not exist), `'stream_exists'` (exists, any version), `'any'` (no check).
 */
export type ExpectedVersion = number | 'no_stream' | 'stream_exists' | 'any';

/** The outcome of an append. */
export interface AppendResult {
  /** The stream's version after the append. */
  version: number;
  /** Global positions of the appended (or already appended) events. */
  positions: number[];
  /** True when every event was already in the stream with the same id and payload (an idempotent retry). */
  alreadyAppended: boolean;
}

/** One stream's part of an atomic multi-stream append. */
export interface StreamAppend {
  stream: string;
  expected: ExpectedVersion;
  events: NewEvent[];
}

/** Options of a stream read. */
export interface ReadStreamOptions {
  /** Start at this version (forwards: from, inclusive; backwards: from, inclusive; default first/last). */
  from?: number;
  /** Read direction (default forwards). */
  direction?: 'forwards' | 'backwards';
  /** Most events (default all). */
  limit?: number;
}

/** Stream metadata: retention and truncation, applied on read. */
export interface StreamMetadata {
  /** Events older than this are not returned (ms). */
  maxAgeMs?: number;
  /** Only the newest `maxCount` events are returned. */
  maxCount?: number;
  /** Events with a version below this are not returned. */
  truncateBefore?: number;
  /** Custom metadata. */
  custom?: Record<string, unknown>;
}

/** A stream's state. */
export interface StreamInfo {
  stream: string;
  version: number;
  deleted: boolean;
  metadata: StreamMetadata;
}

/**
 * An event store. Errors: `E_VERSION_CONFLICT` (with `stream`, `expected`, `actual`),
 * `E_DUPLICATE_EVENT` (an id reused with another payload), `E_VALIDATION` (schema or bad
 * arguments), `E_STREAM_DELETED`, `E_UPCAST` (an old event cannot be upcast), `E_CONFIG`, and the
 * driver's errors. Stream names appear in error messages: they are identifiers, not secrets.
 */
export interface EventStore {
  readonly name: string;
  /** Creates the tables (idempotent). */
  migrate(): Promise<void>;
  /** Appends to one stream if it is at the expected version. */
  append(
    stream: string,
    events: NewEvent[],
    options?: { expected?: ExpectedVersion; executor?: SqlExecutor },
  ): Promise<AppendResult>;
  /** Appends to several streams in one transaction: all or none. */
  appendMany(appends: StreamAppend[], options?: { executor?: SqlExecutor }): Promise<AppendResult[]>;
  /** Events of one stream (after metadata filters and upcasting). */
  readStream(stream: string, options?: ReadStreamOptions): Promise<RecordedEvent[]>;
  /**
   * Events of all streams after global `position`, in global order, never skipping a committed
   * one (soft-deleted streams included: the global log is the full history).
   */
  readAll(after: number, limit: number, options?: { types?: readonly string[] }): Promise<RecordedEvent[]>;
  /** The highest position readers may safely read up to now. */
  head(): Promise<number>;
  streamInfo(stream: string): Promise<StreamInfo | undefined>;
  setMetadata(stream: string, metadata: StreamMetadata): Promise<void>;
  /** Soft delete: reads return nothing, appends fail with E_STREAM_DELETED (unless `expected: 'no_stream'` recreates it). */
  deleteStream(stream: string): Promise<void>;
  /** Wakes the listener when events may have been appended (LISTEN/NOTIFY on PostgreSQL, in process on SQLite). */
  watch(listener: () => void): () => void;
  /** The store's global log as a change log, so the consumer runtime can subscribe to it. */
  asChangeLog(): ChangeLog;
  /** Saves an aggregate's state at a stream version (kept only if newer than the saved one of that state version). */
  saveSnapshot<S>(stream: string, snapshot: SnapshotInput<S>): Promise<void>;
  /** The stream's snapshot of exactly `stateVersion`, or undefined: a snapshot of another state version is ignored. */
  loadSnapshot<S>(stream: string, stateVersion: number): Promise<Snapshot<S> | undefined>;
  /**
   * Folds a stream into a state: the snapshot of `stateVersion` (if any), then the events after it;
   * saves a new snapshot when the store's policy for the stream's type says so.
   */
  loadAggregate<S>(stream: string, options: LoadAggregateOptions<S>): Promise<LoadedAggregate<S>>;
  /** Stops watchers and releases the store's own connections; the driver stays open. Safe to call twice. */
  close(): Promise<void>;
}

/** What `saveSnapshot` stores. */
export interface SnapshotInput<S = unknown> {
  /** The stream version the state includes every event up to. */
  version: number;
  /** The version of the state's shape; bump it whenever `evolve` or the state type changes. */
  stateVersion: number;
  /** A JSON-serializable state. */
  state: S;
}

/** A saved aggregate state. */
export interface Snapshot<S = unknown> extends SnapshotInput<S> {
  stream: string;
  /** When it was saved (epoch ms, the store's clock). */
  time: number;
}

/** Snapshot settings of a store. */
export interface SnapshotOptions {
  /** Events between snapshots for a stream type (see `streamType`); undefined: never for that type. */
  policy?: (streamType: string) => number | undefined;
  /** The snapshots table (default `<tablePrefix>_snapshots`). */
  table?: string;
}

/** Options of `loadAggregate`. */
export interface LoadAggregateOptions<S> {
  /** The state before any event; a function is called for a fresh state each load. */
  initialState: S | (() => S);
  /** Applies one event to the state. */
  evolve: (state: S, event: RecordedEvent) => S;
  /** The state's shape version (default 1); snapshots of other versions are ignored. */
  stateVersion?: number;
}

/** The outcome of `loadAggregate`. */
export interface LoadedAggregate<S> {
  state: S;
  /** The stream's version the state reflects: append the next events with it as the expected version. */
  version: number;
  /** The version of the snapshot the load started from, if one was used. */
  snapshotVersion: number | undefined;
  /** True when this load saved a new snapshot. */
  snapshotSaved: boolean;
  /** True when the stream is soft-deleted (the state is the initial one). */
  deleted: boolean;
}

/** Turns an older schema version of an event's data into the next one. */
export type Upcaster = (data: Record<string, unknown>) => Record<string, unknown>;

/** How events of a type are validated and upcast. */
export interface EventTypeDefinition {
  type: string;
  /** The current schema version (events are stored with it). */
  version: number;
  /** A Standard Schema (Zod, Valibot, ...) validating `data` on append. */
  schema?: import('../core/validation.js').StandardSchemaV1;
  /** `upcasters[v]` turns data of version v into version v + 1. */
  upcasters?: Record<number, Upcaster>;
}
