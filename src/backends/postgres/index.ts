/** PostgreSQL on node-postgres (pg): the production SQL engine. */

export type {
  PostgresCaptureStats,
  PostgresCaptureWarning,
  PostgresChangeCapture,
  PostgresChangeCaptureOptions,
  PostgresSnapshotProgress,
} from './postgres-change-source.js';
export { createPostgresChangeCapture } from './postgres-change-source.js';
export { postgresDialect } from './postgres-dialect.js';
export type {
  PgPoolClientLike,
  PgPoolLike,
  PgQueryConfig,
  PgQueryResultLike,
  PgTypeParsersLike,
  PostgresDriver,
  PostgresDriverOptions,
} from './postgres-driver.js';
export { createPostgresDriver } from './postgres-driver.js';
export type { PostgresEndpoint, PostgresErrorContext } from './postgres-errors.js';
export { toPostgresError } from './postgres-errors.js';
export type {
  BlockingTransaction,
  PostgresEventStore,
  PostgresEventStoreOptions,
  PostgresEventStoreWarning,
} from './postgres-event-store.js';
export { createPostgresEventStore } from './postgres-event-store.js';
export { compareLsns, formatLsn, isLsn, parseLsn } from './postgres-lsn.js';
export {
  pauseReplay,
  postgresWalPosition,
  resumeReplay,
  setReplayDelay,
  withReplayLag,
} from './postgres-replication.js';
export type { PostgresTestDatabase, PostgresTestDatabaseOptions } from './postgres-test-database.js';
export { createPostgresTestDatabase } from './postgres-test-database.js';
