/** The social reference application, as a module: build it, start it, drive it. */

export type {
  AccountCommand,
  AccountEvent,
  AccountHistoryEntry,
  AccountProfile,
  AccountState,
  AccountStatus,
} from './accounts.js';
export {
  Accounts,
  accountDecider,
  accountEventTypes,
  accountStream,
  accountsProjection,
} from './accounts.js';
export type { RunningSocialApp, SocialApp, SocialAppOptions } from './app.js';
export { createSocialApp, startSocialApp } from './app.js';
export type { Pipeline, PipelineOptions } from './changes.js';
export { appLogSpec, CAPTURED_TABLES, databaseIdentity, startPipeline } from './changes.js';
export type {
  EventSourcing,
  EventSourcingOptions,
  EventsStatus,
  ProjectionReport,
} from './event-sourcing.js';
export {
  EVENT_CONSUMERS_PREFIX,
  EVENT_STORE_PREFIX,
  openSocialEventStore,
  socialProjections,
  startEventSourcing,
} from './event-sourcing.js';
export {
  appendFeedEvents,
  BACKFILL_POSTS,
  behindProjection,
  createFeedBridge,
  createFeedInvalidation,
  feedEventOf,
  feedEventTypes,
  feedProjection,
  feedStream,
} from './feed.js';
export type { AccountHooks, Comment, Page, PageRequest, Post, TableCounts, User } from './repository.js';
export { SocialRepository, sumCounts } from './repository.js';
export { migrateMeta, migrateShard, postsDefinition } from './schema.js';
export type { ReshardProgress, ShardMapSummary, ShardStatus, ShardTelemetry } from './shard-status.js';
export { reshardProgress, shardTopology, startShardTelemetry } from './shard-status.js';
export type {
  BurstOptions,
  OperationMix,
  OperationName,
  RouteReport,
  SimulationOptions,
  SimulationProgress,
  SimulationReport,
  ZipfSampler,
} from './simulator.js';
export {
  createMixPicker,
  createZipfSampler,
  DEFAULT_MIX,
  isLoopbackUrl,
  seededRandom,
  simulate,
} from './simulator.js';
export type { SocialShard, SocialStores, SocialStoresOptions } from './stores.js';
export {
  DEFAULT_SHARDS,
  dropShardDatabases,
  MAX_SHARDS,
  openStores,
  SHARD_MAP_NAME,
  socialTables,
} from './stores.js';
export type { Figure, FigureInfo, Tick, Topology, TopologyEdge, TopologyNode } from './telemetry.js';
export { Telemetry } from './telemetry.js';
