/**
 * The message bus on core NATS publish/subscribe: channel `c` is the subject
 * `${subjectPrefix}${c}`. Core NATS keeps nothing: a message reaches the subscriptions the server
 * knows at that moment, so a connection that drops misses what is published until it is back. The
 * bus reports such a gap to every subscription (`onDisconnect`, then `onReconnect` once the
 * connection is back and the server has its subscriptions again), so that a cache can drop what
 * it may have missed.
 *
 * nats.js discards what was written to a connection that then drops, including everything
 * published while it reconnects, so the bus refuses a publish while it knows the connection is
 * down (`E_CONNECTION`) rather than resolve for a message that cannot arrive. A message published
 * in the moment between a drop and the client noticing it is lost like any message in flight.
 */
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { withTimeout } from '../../core/async.js';
import type { BusSubscription, BusSubscriptionEvents, MessageBus } from '../../core/bus.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  ConnectionError,
  type Endpoint,
  isStrataError,
  type StrataError,
  ValidationError,
} from '../../core/errors.js';
import { connectNats, type NatsClient } from './nats-client.js';
import { toNatsError } from './nats-errors.js';

/** Options for `createNatsBus`. */
export interface NatsBusOptions {
  /** A client from `connectNats` that the caller will close; `close()` leaves it open. Not with `url`. */
  client?: NatsClient;
  /**
   * Server URL(s) of a connection the bus opens and closes itself, as for `connectNats` (default
   * `NATS_URL`, else `nats://127.0.0.1:4222`). Not with `client`.
   */
  url?: string | readonly string[];
  /**
   * Prepended verbatim to every channel to make its subject (default ''); end it with a dot
   * (`app.bus.`) to give the bus a subject root of its own.
   */
  subjectPrefix?: string;
  /** Bound on the first connection the bus opens itself (default 5s). */
  connectTimeout?: Duration;
  /** Delay between reconnect attempts of the bus's own connection (default 2s). */
  reconnectWait?: Duration;
  /** Bound on the round trip that confirms a subscription and on `flush` (default 5s). */
  requestTimeout?: Duration;
  /** A label for messages, metrics and the dashboard, and the name of the bus's own connection (default `nats-bus`). */
  name?: string;
  /** Called with whatever a handler or an event callback throws or rejects with (default: ignored). */
  onError?: (error: unknown) => void;
}

/** A message bus on core NATS. */
export interface NatsBus extends MessageBus {
  /** The prefix of every subject of this bus. */
  readonly subjectPrefix: string;
  /** The client in use: the caller's, or the one the bus opened. */
  readonly client: NatsClient;
  /** The subject that carries `channel`: `${subjectPrefix}${channel}`; `E_VALIDATION` when not a valid subject. */
  subjectOf(channel: string): string;
  /**
   * Resolves once the server has received everything published before the call; rejects with
   * `E_CONNECTION` while disconnected and `E_TIMEOUT` after `requestTimeout`.
   */
  flush(): Promise<void>;
}

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
  subscription: Subscription | undefined;
}

const TOKEN_FORBIDDEN = /[\s\p{Cc}*>]/u;
const encoder = new TextEncoder();

function isWellFormed(text: string): boolean {
  return (text as unknown as { isWellFormed(): boolean }).isWellFormed();
}

function invalid(path: string, message: string): ValidationError {
  return new ValidationError([{ path: [path], message }], { subject: path });
}

/** What is wrong with `subject` as a literal NATS subject, or undefined when nothing is. */
function subjectProblem(subject: string): string | undefined {
  if (!isWellFormed(subject)) return 'must be well-formed unicode (no lone surrogates)';
  for (const token of subject.split('.')) {
    if (token.length === 0)
      return 'must not make a subject with an empty token (a leading, trailing or double dot)';
    if (TOKEN_FORBIDDEN.test(token)) return 'must not contain whitespace, control characters, "*" or ">"';
  }
  return undefined;
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

function endpointOf(nc: NatsConnection): Endpoint {
  const server = nc.isClosed() ? '' : nc.getServer();
  const at = server.lastIndexOf(':');
  if (at <= 0) return { backend: 'nats' };
  return {
    backend: 'nats',
    host: server.slice(0, at).replace(/^\[|\]$/g, ''),
    port: Number(server.slice(at + 1)),
  };
}

/**
 * Creates a message bus on core NATS, on the caller's `client` or on a connection of its own
 * (opened with `connectNats`, which requires JetStream on the server). Rejects with `E_CONFIG`
 * naming the option for invalid options (before connecting) and with `E_CONNECTION` when the
 * server cannot be reached within `connectTimeout`.
 */
export async function createNatsBus(options: NatsBusOptions = {}): Promise<NatsBus> {
  const opts = (options ?? {}) as NatsBusOptions;
  const subjectPrefix = opts.subjectPrefix ?? '';
  if (typeof subjectPrefix !== 'string')
    throw new ConfigError('subjectPrefix', 'must be a string such as "app.bus."');
  if (subjectPrefix.length > 0 && subjectProblem(`${subjectPrefix}x`) !== undefined) {
    throw new ConfigError(
      'subjectPrefix',
      'must be the start of a subject: dot-separated tokens without whitespace, "*" or ">"',
    );
  }
  const requestMs = parseDuration(opts.requestTimeout ?? '5s', 'requestTimeout', { allowZero: false });
  const name = opts.name ?? 'nats-bus';
  if (typeof name !== 'string' || name.length === 0)
    throw new ConfigError('name', 'must be a non-empty string');
  if (opts.onError !== undefined && typeof opts.onError !== 'function') {
    throw new ConfigError('onError', 'must be a function');
  }
  const settings: Settings = { name, subjectPrefix, requestMs, onError: opts.onError };

  if (opts.client !== undefined) {
    if (opts.url !== undefined) throw new ConfigError('url', 'give either url or client, not both');
    for (const option of ['connectTimeout', 'reconnectWait'] as const) {
      if (opts[option] !== undefined)
        throw new ConfigError(option, 'applies only to a connection the bus opens (url)');
    }
    const client = opts.client as Partial<NatsClient> | null;
    if (typeof client !== 'object' || client === null || typeof client.connection?.subscribe !== 'function') {
      throw new ConfigError('client', 'expected a client from connectNats');
    }
    if (client.closed === true || client.connection.isClosed()) {
      throw new ConfigError('client', 'the client is closed');
    }
    return new NatsBusImpl(settings, opts.client, false);
  }
  const client = await connectNats({
    ...(opts.url === undefined ? {} : { url: opts.url }),
    name,
    requestTimeout: requestMs,
    ...(opts.connectTimeout === undefined ? {} : { connectTimeout: opts.connectTimeout }),
    ...(opts.reconnectWait === undefined ? {} : { reconnectWait: opts.reconnectWait }),
  });
  return new NatsBusImpl(settings, client, true);
}

interface Settings {
  name: string;
  subjectPrefix: string;
  requestMs: number;
  onError: ((error: unknown) => void) | undefined;
}

class NatsBusImpl implements NatsBus {
  readonly name: string;
  readonly subjectPrefix: string;
  readonly #settings: Settings;
  readonly #owned: boolean;
  readonly #entries = new Set<Entry>();
  /** False from a `disconnect` status until the next `reconnect`. */
  #connected: boolean;
  #stopStatus: () => void;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(
    settings: Settings,
    readonly client: NatsClient,
    owned: boolean,
  ) {
    this.#settings = settings;
    this.name = settings.name;
    this.subjectPrefix = settings.subjectPrefix;
    this.#owned = owned;
    const nc = client.connection;
    this.#connected = !nc.isClosed();
    // Listening from creation on, so that no disconnect before the first subscription is missed.
    const status = nc.status();
    this.#stopStatus = () => (status as { stop?: () => void }).stop?.();
    void this.#watch(status);
  }

  async #watch(status: AsyncIterable<{ type: string }>): Promise<void> {
    try {
      for await (const s of status) {
        if (this.#closed) return;
        if (s.type === 'disconnect' || s.type === 'close') this.#disconnected();
        else if (s.type === 'reconnect') void this.#reconnected();
      }
    } catch {
      // The status stream failed: treated below like a closed connection.
    }
    if (!this.#closed) this.#disconnected();
  }

  subjectOf(channel: string): string {
    if (typeof channel !== 'string') throw invalid('channel', 'must be a string');
    if (channel.length === 0) throw invalid('channel', 'must not be empty');
    const subject = this.subjectPrefix + channel;
    const problem = subjectProblem(subject);
    if (problem !== undefined) throw invalid('channel', problem);
    return subject;
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError(this.name);
  }

  #report(err: unknown): void {
    try {
      this.#settings.onError?.(err);
    } catch {
      // A failing error callback has nowhere left to report to.
    }
  }

  /** Calls `fn`, routing what it throws or rejects with to `onError`; a throw would close nats.js's reader. */
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

  #disconnected(): void {
    this.#connected = false;
    for (const entry of [...this.#entries]) {
      if (!entry.live || entry.down) continue;
      entry.down = true;
      this.#safely(entry.events?.onDisconnect);
    }
  }

  async #reconnected(): Promise<void> {
    this.#connected = true;
    try {
      // nats.js sends the subscriptions again on reconnect; a flush answered after them proves the
      // server has them.
      await withTimeout(this.client.connection.flush(), this.#settings.requestMs, 'nats flush');
    } catch {
      // Dropped again: the next reconnect tries again.
      return;
    }
    if (this.#closed || !this.#connected) return;
    for (const entry of [...this.#entries]) {
      if (!entry.down) continue;
      entry.down = false;
      this.#safely(entry.events?.onReconnect);
    }
  }

  /** `E_CONNECTION` when the connection is known to be down, else nothing. */
  #down(nc: NatsConnection): StrataError | undefined {
    if (nc.isClosed()) return new ConnectionError(endpointOf(nc), 'the connection is closed');
    if (!this.#connected) return new ConnectionError(endpointOf(nc), 'disconnected from the server');
    return undefined;
  }

  #roundTripError(err: unknown, operation: string): StrataError {
    const nc = this.client.connection;
    if (isStrataError(err)) return err;
    // nats.js rejects pending flushes with a RequestError when the connection drops.
    if ((err as { name?: unknown } | null)?.name === 'RequestError' || !this.#connected) {
      return new ConnectionError(endpointOf(nc), 'disconnected from the server', { cause: err });
    }
    return toNatsError(err, { operation, endpoint: endpointOf(nc), timeoutMs: this.#settings.requestMs });
  }

  async publish(channel: string, message: string): Promise<void> {
    const subject = this.subjectOf(channel);
    checkMessage(message);
    this.#assertOpen();
    const nc = this.client.connection;
    const down = this.#down(nc);
    if (down !== undefined) throw down;
    const data = encoder.encode(message);
    const max = nc.info?.max_payload;
    if (max !== undefined && data.length > max) {
      throw invalid('message', "is larger than the server's max_payload");
    }
    try {
      nc.publish(subject, data);
    } catch (err) {
      throw toNatsError(err, { operation: 'nats bus publish', endpoint: endpointOf(nc), subject });
    }
  }

  async subscribe(
    channel: string,
    handler: (message: string) => void,
    events?: BusSubscriptionEvents,
  ): Promise<BusSubscription> {
    const subject = this.subjectOf(channel);
    checkSubscriber(handler, events);
    this.#assertOpen();
    const nc = this.client.connection;
    const down = this.#down(nc);
    if (down !== undefined) throw down;
    const entry: Entry = { handler, events, active: true, live: false, down: false, subscription: undefined };
    this.#entries.add(entry);
    try {
      entry.subscription = nc.subscribe(subject, {
        callback: (err: Error | null, msg: Msg) => {
          if (err !== null) {
            this.#report(toNatsError(err, { operation: 'nats bus subscribe', subject }));
            return;
          }
          if (entry.active) this.#safely(() => handler(msg.string()));
        },
      });
      await withTimeout(nc.flush(), this.#settings.requestMs, 'nats subscribe');
    } catch (err) {
      this.#remove(entry);
      throw this.#roundTripError(err, 'nats subscribe');
    }
    entry.live = true;
    return {
      unsubscribe: async () => this.#remove(entry),
    };
  }

  #remove(entry: Entry): void {
    if (!entry.active) return;
    entry.active = false;
    this.#entries.delete(entry);
    try {
      entry.subscription?.unsubscribe();
    } catch {
      // The connection is closed: the server has forgotten the subscription already.
    }
  }

  async flush(): Promise<void> {
    this.#assertOpen();
    const nc = this.client.connection;
    const down = this.#down(nc);
    if (down !== undefined) throw down;
    try {
      await withTimeout(nc.flush(), this.#settings.requestMs, 'nats flush');
    } catch (err) {
      throw this.#roundTripError(err, 'nats flush');
    }
  }

  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#closed = true;
      for (const entry of [...this.#entries]) this.#remove(entry);
      this.#stopStatus();
      this.#closing = this.#owned ? this.client.close() : Promise.resolve();
    }
    return this.#closing;
  }
}
