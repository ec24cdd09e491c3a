/**
 * The message-bus role: best-effort fan-out of small messages between processes (Redis pub/sub,
 * NATS core), used to keep in-process caches in sync. Delivery is at most once and may be lost
 * while a subscriber is disconnected, so subscribers are told about disconnects and must treat
 * them as "something may have been missed".
 */

/** What a subscriber is told besides messages. */
export interface BusSubscriptionEvents {
  /** The connection dropped: messages may be lost until `onReconnect`. */
  onDisconnect?: () => void;
  /** The connection is back; messages published meanwhile were not delivered. */
  onReconnect?: () => void;
}

/** A subscription; `unsubscribe` stops delivery. */
export interface BusSubscription {
  unsubscribe(): Promise<void>;
}

/** A publish/subscribe bus. */
export interface MessageBus {
  /** A label for messages, metrics and the dashboard (`redis-bus`, `nats-bus`). */
  readonly name: string;
  /** Sends `message` to every current subscriber of `channel` (including this process's own). */
  publish(channel: string, message: string): Promise<void>;
  /** Calls `handler` with each message on `channel` until unsubscribed. */
  subscribe(
    channel: string,
    handler: (message: string) => void,
    events?: BusSubscriptionEvents,
  ): Promise<BusSubscription>;
  /** Closes the bus's own connections; safe to call twice. */
  close(): Promise<void>;
}
