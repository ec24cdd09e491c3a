/**
 * CQRS on the event store: command handling in the decider style with retries on version
 * conflicts, SQL read models (projections) kept inline or by an async consumer, and rebuilds
 * into shadow tables swapped in without downtime.
 */

export type {
  CommandHandler,
  CommandHandlerOptions,
  CommandResult,
  DecidedEvent,
  Decider,
  HandleOptions,
} from './decider.js';
export { createCommandHandler } from './decider.js';
export type {
  Projection,
  ProjectionConsumer,
  ProjectionConsumerOptions,
  ProjectionDefinition,
  ProjectionStatus,
  ProjectionTableNames,
  ProjectionTables,
} from './projection.js';
export {
  applyProjectionEvents,
  createProjectionConsumer,
  defineProjection,
  migrateProjections,
  projectionConsumerName,
} from './projection.js';
export type { RebuildOptions, RebuildProgress, RebuildResult } from './rebuild.js';
export { rebuildProjection } from './rebuild.js';
