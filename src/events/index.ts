/**
 * Event sourcing: the event-store contracts shared by every engine. The stores themselves come
 * from the engine modules (`createSqliteEventStore` in `strata/sqlite`, `createPostgresEventStore`
 * in `strata/postgres`).
 */

export type { EventStoreOptions, VersionConflictDetails } from './event-store.js';
export { defaultStreamType, isVersionConflict } from './event-store.js';
export type {
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
  Upcaster,
} from './types.js';
export { createUuidV7Generator, uuidv7, uuidv7Time } from './uuid-v7.js';
