/**
 * The message bus on Redis pub/sub. Messages go out on a publisher connection (the bus's own, or
 * the caller's client) and arrive on a dedicated subscriber connection the bus always opens
 * itself, since a connection in subscriber mode can run no other command.
 *
 * Redis pub/sub keeps nothing: a message reaches the subscribers connected at that moment, so a
 * subscriber whose connection drops misses what is published until it is back. The bus reports
 * such a gap to every subscription (`onDisconnect`, then `onReconnect` once the connection is back
 * and its channels are subscribed again), so that a cache can drop what it may have missed.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { withTimeout } from '../../core/async.js';
import type { BusSubscription, BusSubscriptionEvents, MessageBus } from '../../core/bus.js';
import { systemClock } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  ConnectionError,
  type Endpoint,
  type StrataError,
  ValidationError,
} from '../../core/errors.js';
import { toRedisError } from './redis-errors.js';
import { parseRedisUrl } from './redis-store.js';

/** The parts of an ioredis client the bus calls, so a user can hand over their own. */
export interface RedisBusClientLike {
  /** Read for error messages only (host and port, never the password). */
  readonly options?: { host?: string | undefined; port?: number | undefined };
  publish(channel: string, message: string): Promise<number>;
  /** A new connection with the same server and credentials (ioredis `duplicate`), for subscribing. */
  duplicate(override?: Partial<RedisOptions>): Redis;
}

/** Options for `createRedisBus`. */
export interface RedisBusOptions {
  /**
   * Server URL, `redis://[user:password@]host[:port][/db]` or `rediss://` for TLS (default the
   * `REDIS_URL` environment variable, else `redis://127.0.0.1:6379`). Not with `client`.
   */
  url?: string;
  /**
   * An ioredis client the caller created and will close: the bus publishes on it and subscribes
   * on a duplicate of it, which the bus closes. Not with `url`.
   */
  client?: RedisBusClientLike;
  /**
   * Prepended verbatim to every channel (default ''). Redis pub/sub channels are shared by every
   * database of a server, so give each application its own prefix, ending in a separator (`app:bus:`).
   */
  channelPrefix?: string;
  /** How long a call waits for a connection to become ready (default 5s). */
  connectTimeout?: Duration;
  /** How long a publish, subscribe or unsubscribe waits for the server's reply (default 2s). */
  commandTimeout?: Duration;
  /** A label for messages, metrics and the dashboard (default `redis-bus`). */
  name?: string;
  /** Called with whatever a handler or an event callback throws or rejects with (default: ignored). */
  onError?: (error: unknown) => void;
}

/** A message bus on Redis pub/sub. */
export interface RedisBus extends MessageBus {
  /** The prefix of every Redis channel of this bus. */
  readonly channelPrefix: string;
  /** The Redis channel that carries `channel`: `${channelPrefix}${channel}`; `E_VALIDATION` when invalid. */
  channelOf(channel: string): string;
}

const DEFAULT_URL = 'redis://127.0.0.1:6379';
/** Reconnect attempts of the publisher after a lost connection; past them the next publish starts afresh. */
const PUBLISHER_RECONNECT_ATTEMPTS = 10;
const MAX_RECONNECT_DELAY_MS = 1_000;

/** One subscribe call: its handler, its events, and whether it was told about a disconnect. */
interface Entry {
  readonly handler: (message: string) => void;
  readonly events: BusSubscriptionEvents | undefined;
  /** False once unsubscribed (or the bus closed): no more messages or events. */
  active: boolean;
  /** True once the server confirmed the subscription; events go to live entries only. */
  live: boolean;
  /** True between the `onDisconnect` and the `onReconnect` this entry was sent. */
  down: boolean;
}

function isWellFormed(text: string): boolean {
  return (text as unknown as { isWellFormed(): boolean }).isWellFormed();
}

function invalid(path: string, message: string): ValidationError {
  return new ValidationError([{ path: [path], message }], { subject: path });
}

function checkChannel(channel: unknown): asserts channel is string {
  if (typeof channel !== 'string') throw invalid('channel', 'must be a string');
  if (channel.length === 0) throw invalid('channel', 'must not be empty');
  if (!isWellFormed(channel)) throw invalid('channel', 'must be well-formed unicode (no lone surrogates)');
}

function checkMessage(message: unknown): asserts message is string {
  if (typeof message !== 'string') throw invalid('message', 'must be a string');
  if (!isWellFormed(message)) throw invalid('message', 'must be well-formed unicode (no lone surrogates)');
}

function checkSubscriber(handler: unknown, events: unknown): void {
  if (typeof handler !== 'function') throw invalid('handler', 'must be a function');
  if (events === undefined) return;
  if (typeof events !== 'object' || events === null) throw invalid('events', 'must be an object');
  for (const key of ['onDisconnect', 'onReconnect'] as const) {
    const value = (events as Record<string, unknown>)[key];
    if (value !== undefined && typeof value !== 'function')
      throw invalid('events', `${key} must be a function`);
  }
}

/**
 * Creates a message bus on Redis pub/sub through ioredis. Connections open on first use: a
 * publish fails within `connectTimeout` (`E_CONNECTION`) when the server cannot be reached and
 * within `commandTimeout` (`E_TIMEOUT`) when it stops answering, and never waits for a reconnect;
 * the subscriber connection reconnects by itself for as long as the bus is open. Throws
 * `E_CONFIG` naming the option when an option is invalid.
 */
export function createRedisBus(options: RedisBusOptions = {}): RedisBus {
  const opts = (options ?? {}) as RedisBusOptions;
  const channelPrefix = opts.channelPrefix ?? '';
  if (typeof channelPrefix !== 'string' || !isWellFormed(channelPrefix)) {
    throw new ConfigError('channelPrefix', 'must be a well-formed string such as "app:bus:"');
  }
  const connectTimeoutMs = parseDuration(opts.connectTimeout ?? '5s', 'connectTimeout', { allowZero: false });
  const commandTimeoutMs = parseDuration(opts.commandTimeout ?? '2s', 'commandTimeout', { allowZero: false });
  const name = opts.name ?? 'redis-bus';
  if (typeof name !== 'string' || name.length === 0)
    throw new ConfigError('name', 'must be a non-empty string');
  if (opts.onError !== undefined && typeof opts.onError !== 'function') {
    throw new ConfigError('onError', 'must be a function');
  }
  const settings: Settings = {
    name,
    channelPrefix,
    connectTimeoutMs,
    commandTimeoutMs,
    onError: opts.onError,
  };
  const subscriberOptions: Partial<RedisOptions> = {
    lazyConnect: true,
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    // Subscribing while the server is away fails at once; channels subscribed before a drop are
    // subscribed again by ioredis as soon as it reconnects (autoResubscribe), which it retries forever.
    enableOfflineQueue: false,
    autoResubscribe: true,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) =>
      Math.min(100 * 2 ** Math.min(attempt - 1, 10), MAX_RECONNECT_DELAY_MS),
  };

  if (opts.client !== undefined) {
    if (opts.url !== undefined) throw new ConfigError('url', 'give either url or client, not both');
    const client = opts.client as Partial<RedisBusClientLike> | null;
    if (
      typeof client !== 'object' ||
      client === null ||
      typeof client.publish !== 'function' ||
      typeof client.duplicate !== 'function'
    ) {
      throw new ConfigError('client', 'expected an ioredis client');
    }
    const endpoint: Endpoint = { backend: 'redis', host: client.options?.host, port: client.options?.port };
    const subscriber = new OwnConnection(client.duplicate(subscriberOptions), endpoint, connectTimeoutMs);
    return new RedisBusImpl(settings, opts.client, undefined, subscriber, endpoint);
  }

  const url = opts.url ?? process.env.REDIS_URL ?? DEFAULT_URL;
  const { host, port } = parseRedisUrl(url);
  const endpoint: Endpoint = { backend: 'redis', host, port };
  const publisher = new Redis(url, {
    lazyConnect: true,
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    // Fail publishes while disconnected instead of queueing them, and never replay one after a
    // reconnect: its caller has already been told it failed.
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) =>
      attempt > PUBLISHER_RECONNECT_ATTEMPTS
        ? null
        : Math.min(100 * 2 ** (attempt - 1), MAX_RECONNECT_DELAY_MS),
  });
  const own = new OwnConnection(publisher, endpoint, connectTimeoutMs);
  const subscriber = new OwnConnection(new Redis(url, subscriberOptions), endpoint, connectTimeoutMs);
  return new RedisBusImpl(settings, publisher, own, subscriber, endpoint);
}

interface Settings {
  name: string;
  channelPrefix: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  onError: ((error: unknown) => void) | undefined;
}

/** A connection the bus opened: waits for it to be ready, bounded, and fails fast while the server is down. */
class OwnConnection {
  #connecting: Promise<void> | undefined;
  /** The last connection error since the connection was last ready. */
  #lastError: unknown;

  constructor(
    readonly redis: Redis,
    private readonly endpoint: Endpoint,
    private readonly connectTimeoutMs: number,
  ) {
    // Failures reach callers through their calls; without a listener ioredis prints each one.
    redis.on('error', (err: unknown) => {
      this.#lastError = err;
    });
    redis.on('ready', () => {
      this.#lastError = undefined;
    });
  }

  /** Resolves once the connection is ready, starting it when idle; `E_CONNECTION` within connectTimeout. */
  ready(): Promise<void> {
    const redis = this.redis;
    if (redis.status === 'ready') return Promise.resolve();
    // Reconnecting after a failed attempt: the server is down, so fail now rather than make every
    // call wait for the next attempt.
    if (redis.status === 'reconnecting' && this.#lastError !== undefined) {
      return Promise.reject(this.#connectionError(this.#lastError));
    }
    if (this.#connecting !== undefined) return this.#connecting;
    const connecting = new Promise<void>((resolve, reject) => {
      const finish = (err?: StrataError) => {
        systemClock.clearTimeout(timer);
        redis.off('ready', onReady);
        redis.off('error', onError);
        redis.off('end', onEnd);
        if (err === undefined) resolve();
        else reject(err);
      };
      const onReady = () => finish();
      const onError = (err: unknown) => finish(this.#connectionError(err));
      const onEnd = () => finish(new ConnectionError(this.endpoint, 'connection closed'));
      const timer = systemClock.setTimeout(
        () =>
          finish(
            new ConnectionError(this.endpoint, 'not connected within connectTimeout', {
              details: { timeoutMs: this.connectTimeoutMs },
            }),
          ),
        this.connectTimeoutMs,
      );
      redis.once('ready', onReady);
      redis.on('error', onError);
      redis.once('end', onEnd);
      // 'wait': never connected (lazy); 'end': gave up reconnecting. Otherwise a connection or a
      // reconnect is already under way and its outcome arrives as an event.
      if (redis.status === 'wait' || redis.status === 'end') redis.connect().catch(() => undefined);
    });
    this.#connecting = connecting;
    const clear = () => {
      if (this.#connecting === connecting) this.#connecting = undefined;
    };
    connecting.then(clear, clear);
    return connecting;
  }

  #connectionError(err: unknown): StrataError {
    return toRedisError(err, {
      endpoint: this.endpoint,
      operation: 'connect',
      timeoutMs: this.connectTimeoutMs,
      connecting: true,
    });
  }

  async quit(timeoutMs: number): Promise<void> {
    if (this.redis.status === 'ready') {
      try {
        await withTimeout(this.redis.quit(), timeoutMs, 'redis quit');
        return;
      } catch {
        // The server did not acknowledge QUIT in time; drop the connection instead.
      }
    }
    this.redis.disconnect();
  }
}

class RedisBusImpl implements RedisBus {
  readonly name: string;
  readonly channelPrefix: string;
  readonly #settings: Settings;
  readonly #endpoint: Endpoint;
  readonly #publisher: RedisBusClientLike;
  /** The publisher connection the bus opened, undefined when it publishes on the caller's client. */
  readonly #ownPublisher: OwnConnection | undefined;
  readonly #subscriber: OwnConnection;
  /** Live subscriptions by Redis channel. */
  readonly #channels = new Map<string, Set<Entry>>();
  /** Channels left subscribed on the server because an UNSUBSCRIBE could not be sent. */
  readonly #orphans = new Set<string>();
  #closing: Promise<void> | undefined;

  constructor(
    settings: Settings,
    publisher: RedisBusClientLike,
    ownPublisher: OwnConnection | undefined,
    subscriber: OwnConnection,
    endpoint: Endpoint,
  ) {
    this.#settings = settings;
    this.name = settings.name;
    this.channelPrefix = settings.channelPrefix;
    this.#publisher = publisher;
    this.#ownPublisher = ownPublisher;
    this.#subscriber = subscriber;
    this.#endpoint = endpoint;
    const redis = subscriber.redis;
    redis.on('message', (channel: string, message: string) => this.#dispatch(channel, message));
    // 'close' comes first when a connection drops; 'reconnecting' and 'end' cover the other paths.
    for (const event of ['close', 'reconnecting', 'end']) redis.on(event, () => this.#disconnected());
    redis.on('ready', () => void this.#reconnected());
  }

  channelOf(channel: string): string {
    checkChannel(channel);
    return this.channelPrefix + channel;
  }

  #assertOpen(): void {
    if (this.#closing !== undefined) throw new ClosedError(this.name);
  }

  #report(err: unknown): void {
    try {
      this.#settings.onError?.(err);
    } catch {
      // A failing error callback has nowhere left to report to.
    }
  }

  /** Calls `fn`, routing what it throws or rejects with to `onError` so delivery carries on. */
  #safely(fn: (() => unknown) | undefined): void {
    if (fn === undefined) return;
    try {
      const result = fn() as { then?: unknown } | undefined;
      if (typeof result?.then === 'function') {
        (result as Promise<unknown>).then(undefined, (err: unknown) => this.#report(err));
      }
    } catch (err) {
      this.#report(err);
    }
  }

  #dispatch(channel: string, message: string): void {
    const entries = this.#channels.get(channel);
    if (entries === undefined) return;
    for (const entry of [...entries]) {
      if (entry.active) this.#safely(() => entry.handler(message));
    }
  }

  *#live(): Iterable<Entry> {
    for (const entries of this.#channels.values()) {
      for (const entry of entries) if (entry.active && entry.live) yield entry;
    }
  }

  #disconnected(): void {
    for (const entry of [...this.#live()]) {
      if (entry.down) continue;
      entry.down = true;
      this.#safely(entry.events?.onDisconnect);
    }
  }

  async #reconnected(): Promise<void> {
    const redis = this.#subscriber.redis;
    try {
      // ioredis sent the SUBSCRIBEs of the old connection before 'ready'; a PING answered after
      // them proves the server has processed them.
      await redis.ping();
    } catch {
      // Dropped again: the next 'ready' tries again.
      return;
    }
    if (this.#closing !== undefined || redis.status !== 'ready') return;
    for (const channel of [...this.#orphans]) {
      if (this.#channels.has(channel)) {
        this.#orphans.delete(channel);
        continue;
      }
      redis.unsubscribe(channel).then(
        () => this.#orphans.delete(channel),
        () => undefined,
      );
    }
    for (const entry of [...this.#live()]) {
      if (!entry.down) continue;
      entry.down = false;
      this.#safely(entry.events?.onReconnect);
    }
  }

  async publish(channel: string, message: string): Promise<void> {
    const target = this.channelOf(channel);
    checkMessage(message);
    this.#assertOpen();
    try {
      if (this.#ownPublisher !== undefined) {
        if (this.#ownPublisher.redis.status !== 'ready') await this.#ownPublisher.ready();
        // ioredis bounds each command by commandTimeout itself.
        await this.#ownPublisher.redis.publish(target, message);
        return;
      }
      await withTimeout(
        this.#publisher.publish(target, message),
        this.#settings.commandTimeoutMs,
        'redis publish',
      );
    } catch (err) {
      throw this.#error(err, 'publish');
    }
  }

  async subscribe(
    channel: string,
    handler: (message: string) => void,
    events?: BusSubscriptionEvents,
  ): Promise<BusSubscription> {
    const target = this.channelOf(channel);
    checkSubscriber(handler, events);
    this.#assertOpen();
    const entry: Entry = { handler, events, active: true, live: false, down: false };
    // Registered before SUBSCRIBE is sent, so a concurrent unsubscribe of the channel's last other
    // entry does not send an UNSUBSCRIBE that would land after ours.
    let entries = this.#channels.get(target);
    if (entries === undefined) {
      entries = new Set();
      this.#channels.set(target, entries);
    }
    entries.add(entry);
    this.#orphans.delete(target);
    try {
      const redis = this.#subscriber.redis;
      if (redis.status !== 'ready') await this.#subscriber.ready();
      await redis.subscribe(target);
    } catch (err) {
      await this.#remove(target, entry);
      throw this.#error(err, 'subscribe');
    }
    entry.live = true;
    return { unsubscribe: () => this.#remove(target, entry) };
  }

  /** Stops delivery to `entry`; when it was the channel's last, unsubscribes the channel (best effort). */
  async #remove(channel: string, entry: Entry): Promise<void> {
    if (!entry.active) return;
    entry.active = false;
    const entries = this.#channels.get(channel);
    if (entries === undefined) return;
    entries.delete(entry);
    if (entries.size > 0) return;
    this.#channels.delete(channel);
    if (this.#closing !== undefined) return;
    try {
      await this.#subscriber.redis.unsubscribe(channel);
    } catch {
      // Not sent (the connection is away): ioredis would subscribe it again on reconnect, so the
      // next reconnect unsubscribes it. Its messages meanwhile reach no handler.
      this.#orphans.add(channel);
    }
  }

  #error(err: unknown, operation: string): StrataError {
    return toRedisError(err, {
      endpoint: this.#endpoint,
      operation,
      timeoutMs: this.#settings.commandTimeoutMs,
    });
  }

  close(): Promise<void> {
    if (this.#closing === undefined) {
      for (const entries of this.#channels.values()) for (const entry of entries) entry.active = false;
      this.#channels.clear();
      this.#orphans.clear();
      const timeoutMs = this.#settings.commandTimeoutMs;
      this.#closing = Promise.all([
        this.#subscriber.quit(timeoutMs),
        this.#ownPublisher?.quit(timeoutMs),
      ]).then(() => undefined);
    }
    return this.#closing;
  }
}
