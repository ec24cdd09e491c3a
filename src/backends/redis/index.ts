/** Redis through ioredis: the production key-value store and cache tier. */

export type { RedisBus, RedisBusClientLike, RedisBusOptions } from './redis-bus.js';
export { createRedisBus } from './redis-bus.js';
export type {
  RedisBlockingClientLike,
  RedisChangeLog,
  RedisChangeLogClientLike,
  RedisChangeLogOptions,
} from './redis-change-log.js';
export { createRedisChangeLog } from './redis-change-log.js';
export type { RedisErrorContext } from './redis-errors.js';
export { toRedisError } from './redis-errors.js';
export type { RedisClientLike, RedisPipelineLike, RedisStore, RedisStoreOptions } from './redis-store.js';
export { createRedisStore } from './redis-store.js';
export type {
  RedisWriteBehindClientLike,
  RedisWriteBehindQueue,
  RedisWriteBehindQueueOptions,
} from './redis-write-behind-queue.js';
export { createRedisWriteBehindQueue } from './redis-write-behind-queue.js';
