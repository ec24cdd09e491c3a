/**
 * Change data capture, the change log and its consumers: the spine every derived view uses.
 * Capture and logs live in the engine modules (`strata/sqlite`, `strata/postgres`,
 * `strata/nats`, `strata/redis`); this module holds what is the same for all of them.
 */

export type {
  AppendResult,
  Change,
  ChangeLog,
  ChangeOperation,
  ChangeSource,
  Checkpoint,
  CheckpointStore,
  DeadLetter,
  Lease,
  LogEntry,
  Position,
  PositionParts,
  ReadOptions,
} from '../core/changes.js';
export {
  assertSourceName,
  changeKey,
  comparePositions,
  deserializeChange,
  isPosition,
  makePosition,
  parsePosition,
  positionSource,
  serializeChange,
  stableJson,
} from '../core/changes.js';
export type { AppliedTableOptions } from './apply-if-newer.js';
export { applyIfNewer, migrateApplied } from './apply-if-newer.js';
export type { Consumer, ConsumerContext, ConsumerOptions, ConsumerStats } from './consumer.js';
export { createConsumer } from './consumer.js';
export type {
  ReconcileDifference,
  ReconcileFilterValue,
  ReconcileKey,
  ReconcileMismatches,
  ReconcileOptions,
  ReconcileProgress,
  ReconcileReport,
  ReconcileSide,
  ReconcileTable,
  RepairOptions,
  RepairPlan,
  RepairResult,
} from './reconcile.js';
export { planRepair, reconcile, repair } from './reconcile.js';
export type { Relay, RelayOptions, RelayStats } from './relay.js';
export { createRelay } from './relay.js';
export type { SqlCheckpointStore, SqlCheckpointStoreOptions } from './sql-checkpoint-store.js';
export { assertConsumerName, createSqlCheckpointStore } from './sql-checkpoint-store.js';
