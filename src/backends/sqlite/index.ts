/** SQLite on better-sqlite3: the embedded default engine. */

export type { SqliteChangeLog, SqliteChangeLogOptions } from './sqlite-change-log.js';
export { createSqliteChangeLog } from './sqlite-change-log.js';
export type {
  OutboxMessage,
  SqliteChangeCapture,
  SqliteChangeCaptureOptions,
} from './sqlite-change-source.js';
export { createSqliteChangeCapture } from './sqlite-change-source.js';
export { sqliteDialect } from './sqlite-dialect.js';
export type {
  SqliteDatabaseLike,
  SqliteDriver,
  SqliteDriverOptions,
  SqliteStatementLike,
} from './sqlite-driver.js';
export { createSqliteDriver } from './sqlite-driver.js';
export { toSqliteError } from './sqlite-errors.js';
export type { SqliteEventStoreOptions } from './sqlite-event-store.js';
export { createSqliteEventStore } from './sqlite-event-store.js';
export type {
  ChangeLogPositionOptions,
  SqliteReplica,
  SqliteReplicaOptions,
  SqliteReplicaStatus,
} from './sqlite-replica.js';
export { changeLogPosition, createSqliteReplica } from './sqlite-replica.js';
export type { SqliteWriteBehindQueue, SqliteWriteBehindQueueOptions } from './sqlite-write-behind-queue.js';
export { createSqliteWriteBehindQueue } from './sqlite-write-behind-queue.js';
