/** NATS JetStream on nats.js v3: connection, stream management, deduplicated publish and replay. */

export type { NatsBus, NatsBusOptions } from './nats-bus.js';
export { createNatsBus } from './nats-bus.js';
export type { NatsChangeLog, NatsChangeLogOptions } from './nats-change-log.js';
export { createNatsChangeLog } from './nats-change-log.js';
export type {
  NatsClient,
  NatsClientOptions,
  NatsConnectionLike,
  NatsPublishOptions,
  NatsPublishResult,
  NatsReadOptions,
  NatsRetention,
  NatsStatusEvent,
  NatsStoredMessage,
  NatsStreamConfig,
} from './nats-client.js';
export { assertStreamName, assertSubject, connectNats } from './nats-client.js';
export type { NatsErrorContext } from './nats-errors.js';
export { hasJetStreamCode, JetStreamErrorCodes, toNatsError } from './nats-errors.js';
