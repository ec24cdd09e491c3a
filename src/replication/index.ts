/**
 * Read replicas: a primary and its replicas behind one handle, with strong, eventual,
 * read-your-writes (session tokens) and bounded-staleness reads, health and lag monitoring,
 * balancing and transparent retry of reads on another replica.
 */
export type { PositionProvider, PrimaryPosition, ReplicaPosition } from '../core/positions.js';
export type { BalancePolicy } from './balance.js';
export { createBalancer } from './balance.js';
export type { HealthChange, ReplicaState } from './health.js';
export type {
  Consistency,
  ReadFunction,
  ReadInfo,
  ReadOptions,
  ReplicaOptions,
  ReplicaSet,
  ReplicaSetOptions,
  ReplicaSetStats,
  ReplicaStats,
  StatementReadOptions,
  Written,
} from './replica-set.js';
export { createReplicaSet } from './replica-set.js';
export type { ParsedToken, TokenCodec, TokenCodecOptions, TokenProblem } from './tokens.js';
export {
  clusterIdFrom,
  createTokenCodec,
  isClusterId,
  parseToken,
  randomTokenSecret,
  TokenError,
} from './tokens.js';
