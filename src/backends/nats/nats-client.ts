import {
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
  type StreamInfo,
} from '@nats-io/jetstream';
import {
  connect,
  headers as createHeaders,
  type MsgHdrs,
  type NatsConnection,
} from '@nats-io/transport-node';
import { withTimeout } from '../../core/async.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  ConnectionError,
  type Endpoint,
  isStrataError,
} from '../../core/errors.js';
import { hasJetStreamCode, JetStreamErrorCodes, type NatsErrorContext, toNatsError } from './nats-errors.js';

/**
 * A NATS connection from nats.js v3 (`@nats-io/transport-node` or another v3 transport).
 * JetStream clients built on it use the whole connection, so this is the library's own type.
 */
export type NatsConnectionLike = NatsConnection;

/** Options for `connectNats`; a string is the `url`. */
export interface NatsClientOptions {
  /**
   * Server URL(s): `nats://host:port` or `tls://host:port`, several as an array or comma-separated.
   * Credentials may come in the URL (`nats://user:pass@host`, `nats://token@host`). Default:
   * `NATS_URL`, else `nats://127.0.0.1:4222`.
   */
  url?: string | readonly string[];
  /** A connection the caller opened and will close; `close()` leaves it open. Excludes `url`. */
  connection?: NatsConnectionLike;
  /** The client name the server shows in its monitoring pages (default `strata`). */
  name?: string;
  /** Bound on establishing the first connection, across all servers (default 5s). */
  connectTimeout?: Duration;
  /** Bound on each JetStream request, publish and stream call (default 5s). */
  requestTimeout?: Duration;
  /** Reconnect attempts per server after a connection is lost; -1 retries forever (default -1). */
  maxReconnectAttempts?: number;
  /** Delay between reconnect attempts to the same server (default 2s). */
  reconnectWait?: Duration;
}

/** How a stream keeps messages: until limits (`limits`), until acknowledged once, or while consumers exist. */
export type NatsRetention = 'limits' | 'workqueue' | 'interest';

/** The declared shape of a JetStream stream for `ensureStream`. Omitted limits mean unlimited. */
export interface NatsStreamConfig {
  /** Stream name: no whitespace, `.`, `*`, `>`, `/` or `\`. */
  name: string;
  /** Subjects the stream stores; `*` and `>` only as whole tokens, `>` only last. */
  subjects: readonly string[];
  /** Where messages live (default `file`); cannot change once the stream exists. */
  storage?: 'file' | 'memory';
  /** Oldest message age kept (default unlimited). */
  maxAge?: Duration;
  /** Largest total size in bytes (default unlimited). */
  maxBytes?: number;
  /** Largest number of messages (default unlimited). */
  maxMessages?: number;
  /** Window in which a repeated message id is dropped as a duplicate (default 2m, at most `maxAge`). */
  duplicateWindow?: Duration;
  /** Copies kept in a cluster (default 1). */
  replicas?: number;
  /** Retention policy (default `limits`). */
  retention?: NatsRetention;
}

/** Options for one `publish`. */
export interface NatsPublishOptions {
  /** Deduplication id (`Nats-Msg-Id`): a repeat within the duplicate window is stored once. */
  msgId?: string;
  /** Store only if the stream's last sequence is this (0: the stream is empty); else `E_CONFLICT`. */
  expectedLastSequence?: number;
  /** Store only if the last message on this subject has this sequence (0: none); else `E_CONFLICT`. */
  expectedLastSubjectSequence?: number;
  /** Message headers; a name may carry several values. */
  headers?: Readonly<Record<string, string | readonly string[]>>;
}

/** What JetStream answered to a publish. */
export interface NatsPublishResult {
  /** The stream that stored the message. */
  stream: string;
  /** Its sequence in the stream (for a duplicate: the sequence of the original). */
  sequence: number;
  /** True when the message id was seen within the duplicate window and nothing was stored. */
  duplicate: boolean;
}

/** Options for `readFrom`. */
export interface NatsReadOptions {
  /** First stream sequence to read (1 is the start of the stream). */
  startSequence: number;
  /** Only messages on this subject (wildcards allowed). */
  subject?: string;
  /** Most messages to return (default 256). */
  maxMessages?: number;
  /** Bound on the whole read (default: the client's `requestTimeout`). */
  timeout?: Duration;
}

/** One message read back from a stream. */
export interface NatsStoredMessage {
  subject: string;
  /** Stream sequence. */
  sequence: number;
  data: Uint8Array;
  /** Headers, each name with all its values (includes `Nats-Msg-Id` when one was given). */
  headers: Record<string, string[]>;
  /** When the stream stored the message. */
  time: Date;
}

/** A connection event: `disconnect`, `reconnecting`, `reconnect`, `error`, `close`, ... */
export interface NatsStatusEvent {
  type: string;
  /** The server involved, as `host:port`, for `disconnect` / `reconnect`. */
  server?: string;
}

/** A NATS connection with JetStream stream management, publishing and replay. */
export interface NatsClient {
  /** The underlying connection, for what strata does not wrap. */
  readonly connection: NatsConnectionLike;
  /** The JetStream client on `connection`. */
  readonly jetstream: JetStreamClient;
  /** The JetStream manager on `connection`. */
  readonly manager: JetStreamManager;
  /** True once `close()` was called. */
  readonly closed: boolean;
  /**
   * Creates the stream, or updates it when it exists with different subjects or limits; returns
   * its info and changes nothing when it already matches. Throws `E_CONFIG` naming the option
   * for an invalid config (before any request) or a change JetStream refuses (`storage`, ...).
   */
  ensureStream(config: NatsStreamConfig): Promise<StreamInfo>;
  /** The stream's info, or `undefined` when it does not exist. */
  streamInfo(name: string): Promise<StreamInfo | undefined>;
  /** Deletes the stream and its messages; true when it existed. */
  deleteStream(name: string): Promise<boolean>;
  /**
   * Publishes to JetStream and waits for the stream's acknowledgement. Throws `E_CONFLICT` (with
   * `expected` / `actual`) when an expected sequence does not match, `E_NOT_FOUND` when no stream
   * stores the subject, `E_TIMEOUT` after `requestTimeout`.
   */
  publish(
    subject: string,
    data: Uint8Array | string,
    options?: NatsPublishOptions,
  ): Promise<NatsPublishResult>;
  /**
   * Reads up to `maxMessages` messages of `stream` in sequence order, starting at `startSequence`,
   * and returns fewer when the stream (or the subject) has no more. The first message has a higher
   * sequence when earlier ones were removed by limits or do not match `subject`. Throws
   * `E_NOT_FOUND` for a missing stream and `E_TIMEOUT` when the read does not finish in `timeout`.
   */
  readFrom(stream: string, options: NatsReadOptions): Promise<NatsStoredMessage[]>;
  /** Connection events from now on, until the client or the iteration stops. */
  status(): AsyncIterable<NatsStatusEvent>;
  /** Drains and closes the connection strata opened (a caller's connection stays open); idempotent. */
  close(): Promise<void>;
}

const DEFAULT_URL = 'nats://127.0.0.1:4222';
const DEFAULT_PORT = 4222;
const STREAM_NAME_FORBIDDEN = /[\s.*>/\\]/;
const TOKEN_FORBIDDEN = /[\s*>]/;

/**
 * Connects to NATS, checks that JetStream is enabled, and returns a client. Throws `E_CONFIG`
 * naming the option for invalid options (before connecting) and `E_CONNECTION` naming host and
 * port (never credentials) when no server can be reached, authenticated or spoken to within
 * `connectTimeout`.
 */
export async function connectNats(options: NatsClientOptions | string = {}): Promise<NatsClient> {
  const opts: NatsClientOptions = typeof options === 'string' ? { url: options } : options;
  const connectMs = parseDuration(opts.connectTimeout ?? '5s', 'connectTimeout', { allowZero: false });
  const requestMs = parseDuration(opts.requestTimeout ?? '5s', 'requestTimeout', { allowZero: false });
  const reconnectWaitMs = parseDuration(opts.reconnectWait ?? '2s', 'reconnectWait');
  const maxReconnectAttempts = opts.maxReconnectAttempts ?? -1;
  if (!Number.isInteger(maxReconnectAttempts) || maxReconnectAttempts < -1) {
    throw new ConfigError('maxReconnectAttempts', 'must be an integer of at least -1 (-1 retries forever)');
  }
  const name = opts.name ?? 'strata';
  if (typeof name !== 'string' || name.length === 0)
    throw new ConfigError('name', 'must be a non-empty string');

  if (opts.connection !== undefined) {
    if (opts.url !== undefined) throw new ConfigError('url', 'cannot be combined with connection');
    if (typeof opts.connection !== 'object' || typeof opts.connection.drain !== 'function') {
      throw new ConfigError('connection', 'expected a nats.js v3 connection');
    }
    const nc = opts.connection;
    const endpoint = endpointOf(nc);
    const manager = await openManager(nc, requestMs, endpoint, false);
    return new NatsClientImpl(nc, manager, requestMs, false);
  }

  const target = parseServers(opts.url ?? process.env.NATS_URL ?? DEFAULT_URL);
  const first: Endpoint = {
    backend: 'nats',
    host: target.endpoints[0]?.host,
    port: target.endpoints[0]?.port,
  };
  const details = { servers: target.servers };
  const pending = connect({
    servers: target.servers,
    name,
    timeout: Math.max(1, Math.floor(connectMs / target.servers.length)),
    maxReconnectAttempts,
    reconnectTimeWait: reconnectWaitMs,
    waitOnFirstConnect: false,
    ...target.auth,
    ...(target.tls ? { tls: {} } : {}),
  });
  let nc: NatsConnection;
  try {
    nc = await withTimeout(pending, connectMs, 'nats connect', {
      // The handshake may still complete after we gave up; do not leak that connection.
      onTimeout: () => void pending.then((late) => late.close()).catch(() => undefined),
    });
  } catch (err) {
    if (isStrataError(err, 'E_TIMEOUT')) {
      throw new ConnectionError(first, 'no response from the server within connectTimeout', {
        cause: err,
        details,
      });
    }
    const mapped = toNatsError(err, { connecting: true, endpoint: first });
    if (mapped instanceof ConnectionError) {
      throw new ConnectionError(first, String(mapped.details.reason), { cause: err, details });
    }
    throw mapped;
  }
  const manager = await openManager(nc, requestMs, endpointOf(nc), true);
  return new NatsClientImpl(nc, manager, requestMs, true);
}

async function openManager(
  nc: NatsConnection,
  requestMs: number,
  endpoint: Endpoint,
  owned: boolean,
): Promise<JetStreamManager> {
  try {
    return await withTimeout(jetstreamManager(nc, { timeout: requestMs }), requestMs, 'nats JetStream check');
  } catch (err) {
    if (owned) await nc.close().catch(() => undefined);
    throw toNatsError(err, { connecting: true, endpoint });
  }
}

interface ServerTarget {
  servers: string[];
  endpoints: { host: string; port: number }[];
  auth: { user?: string; pass?: string; token?: string };
  tls: boolean;
}

/** Splits and validates server URLs; credentials move to options so they never reach a message. */
function parseServers(url: string | readonly string[]): ServerTarget {
  const entries = (typeof url === 'string' ? [url] : [...url]).flatMap((u) =>
    typeof u === 'string' ? u.split(',') : [u],
  );
  if (entries.length === 0) throw new ConfigError('url', 'at least one server URL is required');
  const target: ServerTarget = { servers: [], endpoints: [], auth: {}, tls: false };
  let credentials: string | undefined;
  for (const entry of entries) {
    if (typeof entry !== 'string' || entry.trim().length === 0) {
      throw new ConfigError('url', 'a server URL is empty or not a string');
    }
    const text = entry.trim();
    let parsed: URL;
    try {
      parsed = new URL(text.includes('://') ? text : `nats://${text}`);
    } catch {
      // No cause: the parser's error repeats the input, which may hold a password.
      throw new ConfigError('url', 'not a valid URL (expected nats://host:port)');
    }
    if (parsed.protocol !== 'nats:' && parsed.protocol !== 'tls:') {
      throw new ConfigError('url', 'the scheme must be nats:// or tls://');
    }
    const host = parsed.hostname.replace(/^\[|\]$/g, '');
    if (host.length === 0) throw new ConfigError('url', 'a server URL has no host');
    const port = parsed.port === '' ? DEFAULT_PORT : Number(parsed.port);
    if (parsed.protocol === 'tls:') target.tls = true;
    target.endpoints.push({ host, port });
    target.servers.push(host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);
    if (parsed.username === '' && parsed.password === '') continue;
    const key = `${parsed.username}\u0000${parsed.password}`;
    if (credentials !== undefined && credentials !== key) {
      throw new ConfigError('url', 'all servers must use the same credentials');
    }
    credentials = key;
    const user = safeDecode(parsed.username);
    target.auth = parsed.password === '' ? { token: user } : { user, pass: safeDecode(parsed.password) };
  }
  return target;
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new ConfigError('url', 'the credentials are not valid percent-encoding');
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
 * Throws `E_CONFIG` naming `option` unless `name` is a valid JetStream stream name: non-empty,
 * without whitespace, `.`, `*`, `>`, `/` or `\`.
 */
export function assertStreamName(name: unknown, option = 'name'): asserts name is string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new ConfigError(option, 'a stream name must be a non-empty string');
  }
  if (STREAM_NAME_FORBIDDEN.test(name)) {
    throw new ConfigError(option, 'a stream name must not contain whitespace, ".", "*", ">", "/" or "\\"');
  }
}

/**
 * Throws `E_CONFIG` naming `option` unless `subject` is a valid NATS subject: non-empty
 * dot-separated tokens without whitespace; with `wildcards`, `*` as a whole token and `>` as the
 * whole last token, else no wildcards at all.
 */
export function assertSubject(
  subject: unknown,
  option = 'subject',
  options: { wildcards?: boolean } = {},
): asserts subject is string {
  if (typeof subject !== 'string' || subject.length === 0) {
    throw new ConfigError(option, 'a subject must be a non-empty string');
  }
  const tokens = subject.split('.');
  tokens.forEach((token, i) => {
    if (token.length === 0) throw new ConfigError(option, 'a subject must not have empty tokens');
    const wildcard = token === '*' || (token === '>' && i === tokens.length - 1);
    if (wildcard && options.wildcards) return;
    if (wildcard) throw new ConfigError(option, 'wildcards are not allowed here');
    if (TOKEN_FORBIDDEN.test(token)) {
      throw new ConfigError(
        option,
        'a subject must not contain whitespace, and "*" or ">" only as whole tokens (">" last)',
      );
    }
  });
}

/** The stream settings strata manages, in the order a refused change is blamed on them. */
const MANAGED = [
  'storage',
  'retention',
  'replicas',
  'subjects',
  'maxAge',
  'maxBytes',
  'maxMessages',
  'duplicateWindow',
] as const;
type Managed = (typeof MANAGED)[number];

type DesiredStream = Pick<
  StreamConfig,
  | 'name'
  | 'subjects'
  | 'storage'
  | 'retention'
  | 'max_age'
  | 'max_bytes'
  | 'max_msgs'
  | 'duplicate_window'
  | 'num_replicas'
>;

const NANOS_PER_MS = 1_000_000;
const DEFAULT_DUPLICATE_WINDOW_MS = 120_000;

function toStreamConfig(config: NatsStreamConfig): DesiredStream {
  if (typeof config !== 'object' || config === null) throw new ConfigError('config', 'must be an object');
  assertStreamName(config.name, 'name');
  if (!Array.isArray(config.subjects) || config.subjects.length === 0) {
    throw new ConfigError('subjects', 'at least one subject is required');
  }
  for (const subject of config.subjects) assertSubject(subject, 'subjects', { wildcards: true });
  if (new Set(config.subjects).size !== config.subjects.length) {
    throw new ConfigError('subjects', 'must not repeat a subject');
  }
  const storage = config.storage ?? 'file';
  if (storage !== 'file' && storage !== 'memory') throw new ConfigError('storage', 'must be file or memory');
  const retention = config.retention ?? 'limits';
  if (!['limits', 'workqueue', 'interest'].includes(retention)) {
    throw new ConfigError('retention', 'must be limits, workqueue or interest');
  }
  const maxAgeMs = parseDuration(config.maxAge ?? 0, 'maxAge');
  const duplicateMs =
    config.duplicateWindow === undefined
      ? maxAgeMs > 0
        ? Math.min(DEFAULT_DUPLICATE_WINDOW_MS, maxAgeMs)
        : DEFAULT_DUPLICATE_WINDOW_MS
      : parseDuration(config.duplicateWindow, 'duplicateWindow', { allowZero: false });
  if (maxAgeMs > 0 && duplicateMs > maxAgeMs)
    throw new ConfigError('duplicateWindow', 'must not exceed maxAge');
  const replicas = config.replicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > 5) {
    throw new ConfigError('replicas', 'must be an integer from 1 to 5');
  }
  return {
    name: config.name,
    subjects: [...config.subjects],
    storage: storage === 'file' ? StorageType.File : StorageType.Memory,
    retention:
      retention === 'limits'
        ? RetentionPolicy.Limits
        : retention === 'workqueue'
          ? RetentionPolicy.Workqueue
          : RetentionPolicy.Interest,
    max_age: maxAgeMs * NANOS_PER_MS,
    max_bytes: positiveLimit(config.maxBytes, 'maxBytes'),
    max_msgs: positiveLimit(config.maxMessages, 'maxMessages'),
    duplicate_window: duplicateMs * NANOS_PER_MS,
    num_replicas: replicas,
  };
}

function positiveLimit(value: number | undefined, option: string): number {
  if (value === undefined) return -1;
  if (!Number.isSafeInteger(value) || value < 1) throw new ConfigError(option, 'must be a positive integer');
  return value;
}

/** The managed settings in which `current` differs from `desired`. */
function changedSettings(current: StreamConfig, desired: DesiredStream): Managed[] {
  const sameSubjects =
    current.subjects?.length === desired.subjects.length &&
    [...current.subjects].sort().join('\n') === [...desired.subjects].sort().join('\n');
  const differs: Record<Managed, boolean> = {
    storage: current.storage !== desired.storage,
    retention: current.retention !== desired.retention,
    replicas: (current.num_replicas || 1) !== desired.num_replicas,
    subjects: !sameSubjects,
    maxAge: current.max_age !== desired.max_age,
    maxBytes: current.max_bytes !== desired.max_bytes,
    maxMessages: current.max_msgs !== desired.max_msgs,
    duplicateWindow: current.duplicate_window !== desired.duplicate_window,
  };
  return MANAGED.filter((key) => differs[key]);
}

function integerAtLeast(value: unknown, option: string, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new ConfigError(
      option,
      min === 0 ? 'must be a non-negative integer' : 'must be a positive integer',
    );
  }
  return value;
}

function toHeaders(record: NatsPublishOptions['headers']): MsgHdrs | undefined {
  if (record === undefined) return undefined;
  if (typeof record !== 'object' || record === null) throw new ConfigError('headers', 'must be an object');
  const out = createHeaders();
  try {
    for (const [key, value] of Object.entries(record)) {
      const values = typeof value === 'string' ? [value] : value;
      if (!Array.isArray(values)) throw new ConfigError('headers', 'values must be strings or string arrays');
      for (const v of values) {
        if (typeof v !== 'string')
          throw new ConfigError('headers', 'values must be strings or string arrays');
        out.append(key, v);
      }
    }
  } catch (err) {
    if (isStrataError(err)) throw err;
    throw new ConfigError('headers', 'a header name or value is not valid', { cause: err });
  }
  return out;
}

function fromHeaders(hdrs: MsgHdrs | undefined): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  if (hdrs === undefined) return out;
  for (const [key, values] of hdrs) out[key] = [...values];
  return out;
}

function toStoredMessage(m: JsMsg): NatsStoredMessage {
  return {
    subject: m.subject,
    sequence: m.info.streamSequence,
    data: m.data,
    headers: fromHeaders(m.headers),
    time: m.time,
  };
}

class NatsClientImpl implements NatsClient {
  readonly jetstream: JetStreamClient;
  #closed = false;
  #closing: Promise<void> | undefined;

  constructor(
    readonly connection: NatsConnection,
    readonly manager: JetStreamManager,
    private readonly requestMs: number,
    private readonly owned: boolean,
  ) {
    this.jetstream = jetstream(connection, { timeout: requestMs });
  }

  get closed(): boolean {
    return this.#closed;
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError('nats client');
  }

  /** Runs one JetStream call under `requestTimeout` and converts its failure to a strata error. */
  async #call<T>(operation: string, fn: () => Promise<T>, context: NatsErrorContext = {}): Promise<T> {
    this.#assertOpen();
    const name = `nats ${operation}`;
    try {
      return await withTimeout(fn(), this.requestMs, name);
    } catch (err) {
      throw toNatsError(err, {
        operation: name,
        timeoutMs: this.requestMs,
        endpoint: endpointOf(this.connection),
        ...context,
      });
    }
  }

  async ensureStream(config: NatsStreamConfig): Promise<StreamInfo> {
    this.#assertOpen();
    const desired = toStreamConfig(config);
    const stream = desired.name;
    // Two processes may create the same stream at once; the loser sees "name in use" and compares again.
    for (let attempt = 1; ; attempt++) {
      const current = await this.streamInfo(stream);
      if (current === undefined) {
        try {
          return await this.#call('ensureStream', () => this.manager.streams.add({ ...desired }), { stream });
        } catch (err) {
          if (attempt < 3 && hasJetStreamCode(err, JetStreamErrorCodes.StreamNameInUse)) continue;
          throw err;
        }
      }
      const changed = changedSettings(current.config, desired);
      if (changed.length === 0) return current;
      if (changed.includes('storage')) {
        throw new ConfigError('storage', 'an existing stream cannot change its storage type', {
          details: { stream, changed },
        });
      }
      const { name: _name, ...update } = desired;
      return await this.#call('ensureStream', () => this.manager.streams.update(stream, update), {
        stream,
        option: changed[0],
      });
    }
  }

  async streamInfo(name: string): Promise<StreamInfo | undefined> {
    this.#assertOpen();
    assertStreamName(name, 'stream');
    try {
      return await this.#call('streamInfo', () => this.manager.streams.info(name), { stream: name });
    } catch (err) {
      if (hasJetStreamCode(err, JetStreamErrorCodes.StreamNotFound)) return undefined;
      throw err;
    }
  }

  async deleteStream(name: string): Promise<boolean> {
    this.#assertOpen();
    assertStreamName(name, 'stream');
    try {
      return await this.#call('deleteStream', () => this.manager.streams.delete(name), { stream: name });
    } catch (err) {
      if (hasJetStreamCode(err, JetStreamErrorCodes.StreamNotFound)) return false;
      throw err;
    }
  }

  async publish(
    subject: string,
    data: Uint8Array | string,
    options: NatsPublishOptions = {},
  ): Promise<NatsPublishResult> {
    this.#assertOpen();
    assertSubject(subject, 'subject');
    if (typeof data !== 'string' && !(data instanceof Uint8Array)) {
      throw new ConfigError('data', 'must be a Uint8Array or a string');
    }
    const { msgId, expectedLastSequence, expectedLastSubjectSequence } = options;
    if (msgId !== undefined && (typeof msgId !== 'string' || msgId.length === 0)) {
      throw new ConfigError('msgId', 'must be a non-empty string');
    }
    const expect: { lastSequence?: number; lastSubjectSequence?: number } = {};
    if (expectedLastSequence !== undefined) {
      expect.lastSequence = integerAtLeast(expectedLastSequence, 'expectedLastSequence', 0);
    }
    if (expectedLastSubjectSequence !== undefined) {
      expect.lastSubjectSequence = integerAtLeast(
        expectedLastSubjectSequence,
        'expectedLastSubjectSequence',
        0,
      );
    }
    const headers = toHeaders(options.headers);
    // With both expectations the server does not say which failed, so only one is reported.
    const expected =
      expectedLastSequence === undefined
        ? expectedLastSubjectSequence
        : expectedLastSubjectSequence === undefined
          ? expectedLastSequence
          : undefined;
    const ack = await this.#call(
      'publish',
      () =>
        this.jetstream.publish(subject, data, {
          timeout: this.requestMs,
          ...(msgId === undefined ? {} : { msgID: msgId }),
          ...(headers === undefined ? {} : { headers }),
          expect,
        }),
      { subject, expected },
    );
    return { stream: ack.stream, sequence: ack.seq, duplicate: ack.duplicate };
  }

  async readFrom(stream: string, options: NatsReadOptions): Promise<NatsStoredMessage[]> {
    this.#assertOpen();
    assertStreamName(stream, 'stream');
    if (typeof options !== 'object' || options === null) {
      throw new ConfigError('options', 'must be an object');
    }
    const startSequence = integerAtLeast(options.startSequence, 'startSequence', 1);
    if (options.subject !== undefined) assertSubject(options.subject, 'subject', { wildcards: true });
    const maxMessages = integerAtLeast(options.maxMessages ?? 256, 'maxMessages', 1);
    const timeoutMs =
      options.timeout === undefined
        ? this.requestMs
        : parseDuration(options.timeout, 'timeout', { allowZero: false });
    const operation = 'nats readFrom';
    const state: { stop?: () => void; done: boolean } = { done: false };
    try {
      return await withTimeout(
        this.#read(stream, startSequence, options.subject, maxMessages, timeoutMs, state),
        timeoutMs,
        operation,
        {
          onTimeout: () => {
            state.done = true;
            state.stop?.();
          },
        },
      );
    } catch (err) {
      throw toNatsError(err, {
        operation,
        timeoutMs,
        endpoint: endpointOf(this.connection),
        stream,
        subject: options.subject,
      });
    }
  }

  /**
   * Replays through an ordered consumer: an ephemeral, unacknowledged consumer that the server
   * feeds in flow-controlled batches and that the client recreates at the right sequence when it
   * sees a gap. Direct get would need one request per message (batch direct get needs
   * nats-server 2.11) and `allow_direct` on the stream.
   */
  async #read(
    stream: string,
    startSequence: number,
    subject: string | undefined,
    maxMessages: number,
    timeoutMs: number,
    state: { stop?: () => void; done: boolean },
  ): Promise<NatsStoredMessage[]> {
    const consumer = await this.jetstream.consumers.get(stream, {
      opt_start_seq: startSequence,
      ...(subject === undefined ? {} : { filter_subjects: subject }),
    });
    const out: NatsStoredMessage[] = [];
    try {
      const info = await consumer.info(true);
      if (info.num_pending === 0 || state.done) return out;
      const messages = await consumer.fetch({
        max_messages: Math.min(maxMessages, info.num_pending),
        expires: Math.max(1_000, timeoutMs),
      });
      state.stop = () => void messages.close().catch(() => undefined);
      for await (const m of messages) {
        out.push(toStoredMessage(m));
        // `pending` is what the consumer still has after this message: zero means the end.
        if (out.length >= maxMessages || m.info.pending === 0) break;
      }
      return out;
    } finally {
      consumer.delete().catch(() => undefined);
    }
  }

  status(): AsyncIterable<NatsStatusEvent> {
    this.#assertOpen();
    // Subscribe now, not at the first next(), so events between this call and the iteration are kept.
    const source = this.connection.status();
    return {
      async *[Symbol.asyncIterator]() {
        for await (const s of source) {
          yield 'server' in s && typeof s.server === 'string'
            ? { type: s.type, server: s.server }
            : { type: s.type };
        }
      },
    };
  }

  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#closed = true;
      this.#closing = this.#shutdown();
    }
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    const nc = this.connection;
    if (!this.owned || nc.isClosed()) return;
    try {
      // Draining waits for the server; a dead server must not hold close() forever.
      await withTimeout(nc.drain(), this.requestMs, 'nats drain');
    } catch {
      await nc.close().catch(() => undefined);
    }
  }
}
