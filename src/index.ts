/**
 * strata: the data-management patterns of large distributed systems for Node.js.
 * This entry point holds the shared kernel (errors, durations, clock, SQL and key-value roles,
 * schema validation); engines and patterns live in their own subpath exports.
 */

export type { RetryOptions, RetryPolicy } from './core/async.js';
export { backoffDelay, Mutex, retry, retryPolicy, withTimeout } from './core/async.js';
export type { BusSubscription, BusSubscriptionEvents, MessageBus } from './core/bus.js';
export type { Clock, TimerHandle } from './core/clock.js';
export { sleep, systemClock } from './core/clock.js';
export type { Duration, DurationUnit, ParseDurationOptions } from './core/duration.js';
export { formatDuration, parseDuration, parseOptionalDuration } from './core/duration.js';
export type {
  ConstraintKind,
  Endpoint,
  QueryErrorFields,
  StrataErrorCode,
  StrataErrorOptions,
  ValidationIssue,
} from './core/errors.js';
export {
  ClosedError,
  ConfigError,
  ConnectionError,
  IdentifierError,
  isStrataError,
  QueryError,
  StrataError,
  TimeoutError,
  ValidationError,
} from './core/errors.js';
export type { KeyValueEntry, KeyValueSetOptions, KeyValueStore } from './core/kv.js';
export {
  checkEntries,
  checkKey,
  checkKeys,
  checkValue,
  DEFAULT_MAX_KEY_LENGTH,
  resolveTtl,
} from './core/kv.js';
export type {
  CompiledSql,
  DialectCapabilities,
  IsolationLevel,
  QueryResult,
  Row,
  SqlDialect,
  SqlDriver,
  SqlExecutor,
  SqlFragment,
  SqlTransaction,
  TransactionOptions,
} from './core/sql.js';
export {
  assertIdentifier,
  compileSql,
  configIdentifier,
  defaultCapabilities,
  isSqlFragment,
  MAX_IDENTIFIER_LENGTH,
  quoteIdentifierStandard,
  sql,
} from './core/sql.js';
export type { InferInput, InferOutput, StandardSchemaV1, ValidateOptions } from './core/validation.js';
export { assertStandardSchema, isStandardSchema, validate, validateSync } from './core/validation.js';
export type { WriteBehindQueue, WriteBehindRecord } from './core/write-behind-queue.js';
export {
  checkAcknowledgedVersion,
  checkWriteBehindRecords,
  versionConflict,
} from './core/write-behind-queue.js';
