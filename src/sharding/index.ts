/**
 * Sharding and partitioning: hash, range, directory and time strategies, the shard router with
 * scatter-gather, global ids, versioned shard maps, time partitions, and online resharding.
 */
export { canonicalKey, hashKey, jumpHash, murmur3_32 } from './hashing.js';
export type {
  DecodedId,
  IdGenerator,
  IdGeneratorOptions,
  IdLayout,
  IdLayoutSpec,
  IdWorkerAllocation,
} from './ids.js';
export { createIdGenerator, DEFAULT_ID_EPOCH, decodeId, ID_LAYOUTS } from './ids.js';
export type {
  ActivateOptions,
  ActiveShardMap,
  ShardMapState,
  ShardMapStore,
  ShardMapStoreOptions,
  ShardMapVersion,
  ShardMapWatchOptions,
  StoredShardStrategy,
} from './map-store.js';
export { createShardMapStore } from './map-store.js';
export type {
  ExpireAction,
  ExpiredPartition,
  InsertResult,
  MaintainOptions,
  MaintainReport,
  PartitionIndexSpec,
  PartitionRetention,
  PartitionStatus,
  StatusOptions,
  TimeColumnType,
  TimePartitionDefinition,
  TimePartitioning,
  TimePartitioningInfo,
  TimePartitioningOptions,
  TimePeriod,
} from './partitions.js';
export {
  createTimePartitioning,
  inspectTimePartitioning,
} from './partitions.js';
export type {
  Reshard,
  ReshardMove,
  ReshardOptions,
  ReshardPlan,
  ReshardProgress,
  ReshardRouter,
  ReshardStatus,
  ReshardStep,
  ReshardTableOptions,
  ReshardVerifyCounts,
} from './reshard.js';
export { createReshard, readReshardStatus } from './reshard.js';
export type {
  PostgresReshardCaptureOptions,
  ReshardCapture,
  ReshardCaptureFactory,
  ReshardCaptureSpec,
  SqliteReshardCaptureOptions,
} from './reshard-capture.js';
export { postgresReshardCapture, sqliteReshardCapture } from './reshard-capture.js';
export type { ShardRouterOptions } from './router.js';
export { createShardRouter, ShardError } from './router.js';
export type {
  DirectoryOptions,
  DirectoryStrategyOptions,
  HashStrategyOptions,
  Period,
  RangeBound,
  RangeInput,
  RangeStrategyOptions,
  ShardKeySource,
  TimeStrategyOptions,
} from './strategies.js';
export {
  assertShardKey,
  compareCodePoints,
  createDirectory,
  directoryStrategy,
  hashStrategy,
  periodOf,
  placeSync,
  rangeStrategy,
  ShardKeyError,
  timeStrategy,
  validateStrategy,
} from './strategies.js';
export type {
  DirectoryStrategy,
  HashStrategy,
  KeyRange,
  OrderBy,
  RangeStrategy,
  ScatterAggregates,
  ScatterOptions,
  ScatterResult,
  ShardDirectory,
  ShardFailure,
  ShardHandle,
  ShardId,
  ShardKey,
  ShardRouter,
  ShardStrategy,
  TablePlacement,
  TimeStrategy,
} from './types.js';
