/**
 * Test helpers for strata users and strata itself: the conformance suites every backend of a
 * role passes (run them against your own adapters), a fake clock, and the test environment.
 * Requires vitest.
 */

export type { MessageBusConformanceOptions, MessageBusFactory } from './bus-conformance.js';
export { describeMessageBusConformance } from './bus-conformance.js';
export type {
  ChangeLogConformanceOptions,
  ChangeLogFactory,
  ChangeLogFactoryOptions,
} from './change-log-conformance.js';
export { describeChangeLogConformance, sampleChange } from './change-log-conformance.js';
export type { ChaosChangeLog } from './chaos.js';
export { chaosChangeLog } from './chaos.js';
export type { DeciderSpec, DeciderThen, DeciderWhen, ErrorExpectation } from './decider-spec.js';
export { deciderSpec } from './decider-spec.js';
export type { ServiceName, TestEnvironment } from './environment.js';
export { canConnect, hostPort, probeServices, testEnvironment } from './environment.js';
export type {
  EventStoreConformanceOptions,
  EventStoreFactory,
  EventStoreFactoryOptions,
} from './event-store-conformance.js';
export { describeEventStoreConformance } from './event-store-conformance.js';
export { FakeClock, flushMicrotasks } from './fake-clock.js';
export type {
  KeyValueStoreConformanceOptions,
  KeyValueStoreFactory,
  KeyValueStoreFactoryOptions,
} from './kv-store-conformance.js';
export { describeKeyValueStoreConformance } from './kv-store-conformance.js';
export type { MemoryChangeLogOptions } from './memory-change-log.js';
export { createMemoryChangeLog } from './memory-change-log.js';
export type {
  ProjectionSpec,
  ProjectionSpecContext,
  ProjectionThen,
  ProjectionWhen,
  SpecEvent,
} from './projection-spec.js';
export { projectionSpec } from './projection-spec.js';
export type { SqlDriverConformanceOptions } from './sql-driver-conformance.js';
export { describeSqlDriverConformance } from './sql-driver-conformance.js';
