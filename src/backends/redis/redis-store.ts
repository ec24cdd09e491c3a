import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { withTimeout } from '../../core/async.js';
import { systemClock } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  ConnectionError,
  type Endpoint,
  type StrataError,
} from '../../core/errors.js';
import {
  checkEntries,
  checkKey,
  checkKeys,
  checkValue,
  type KeyValueEntry,
  type KeyValueSetOptions,
  type KeyValueStore,
  resolveTtl,
} from '../../core/kv.js';
import { toRedisError } from './redis-errors.js';

/** The parts of an ioredis pipeline strata calls. */
export interface RedisPipelineLike {
  set(key: string, value: string): RedisPipelineLike;
  set(key: string, value: string, unit: 'PX', milliseconds: number): RedisPipelineLike;
  exec(): Promise<[error: Error | null, result: unknown][] | null>;
}

/** The parts of an ioredis client strata calls, so a user can hand over their own. */
export interface RedisClientLike {
  /** Read for error messages only (host and port, never the password). */
  readonly options?: { host?: string | undefined; port?: number | undefined };
  get(key: string): Promise<string | null>;
  mget(keys: string[]): Promise<(string | null)[]>;
  set(key: string, value: string): Promise<unknown>;
  set(key: string, value: string, unit: 'PX', milliseconds: number): Promise<unknown>;
  set(key: string, value: string, condition: 'NX'): Promise<'OK' | null>;
  set(key: string, value: string, unit: 'PX', milliseconds: number, condition: 'NX'): Promise<'OK' | null>;
  evalsha(sha1: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
  eval(script: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
  unlink(...keys: string[]): Promise<number>;
  exists(key: string): Promise<number>;
  pttl(key: string): Promise<number>;
  scan(
    cursor: string,
    match: 'MATCH',
    pattern: string,
    count: 'COUNT',
    n: number,
  ): Promise<[cursor: string, keys: string[]]>;
  pipeline(): RedisPipelineLike;
  ping(): Promise<string>;
}

/** Options for `createRedisStore`. */
export interface RedisStoreOptions {
  /**
   * Server URL, `redis://[user:password@]host[:port][/db]` or `rediss://` for TLS (default the
   * `REDIS_URL` environment variable, else `redis://127.0.0.1:6379`). Not with `client`.
   */
  url?: string;
  /** An ioredis client the caller created and will close; strata never quits it. Not with `url`. */
  client?: RedisClientLike;
  /**
   * Namespace of this store's keys, required and non-empty. Keys are stored as
   * `${prefix}${key}` verbatim, so end the prefix with a separator (`'app:cache:'`): a prefix
   * that begins another (`app` and `app2`) shares that other store's keys.
   */
  prefix: string;
  /** Time to live of writes that give none (default: none). */
  defaultTtl?: Duration;
  /** How long a call waits for a connection to become ready (default 5s). */
  connectTimeout?: Duration;
  /** How long one command waits for its reply (default 2s). */
  commandTimeout?: Duration;
  /** Longest key accepted, in UTF-16 code units, not counting the prefix (default 1024). */
  maxKeyLength?: number;
  /** A label for messages, metrics and the dashboard (default `redis`). */
  name?: string;
}

/** A key-value store on Redis. */
export interface RedisStore extends KeyValueStore {
  /** The namespace every key is stored under. */
  readonly prefix: string;
  /** Longest key accepted, in UTF-16 code units. */
  readonly maxKeyLength: number;
  /** The ioredis client in use: the caller's, or the one the store opened. */
  readonly client: RedisClientLike;
  /**
   * Resolves once the server answers; rejects with `E_CONNECTION` within `connectTimeout` when it
   * cannot be reached. Optional: every call connects on demand.
   */
  connect(): Promise<void>;
}

const DEFAULT_URL = 'redis://127.0.0.1:6379';
const DEFAULT_MAX_KEY_LENGTH = 1024;
const SCAN_COUNT = 500;
/** Reconnect attempts after a lost connection; past them the next call starts a fresh connection. */
const RECONNECT_ATTEMPTS = 10;
const MAX_RECONNECT_DELAY_MS = 1_000;

const CLIENT_METHODS = [
  'get',
  'mget',
  'set',
  'evalsha',
  'eval',
  'unlink',
  'exists',
  'pttl',
  'scan',
  'pipeline',
  'ping',
] as const;

/** Deletes KEYS[1] only while its value is ARGV[1]; returns 1 when it did. */
const DELETE_IF_EQUALS_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`;
const DELETE_IF_EQUALS_SHA = createHash('sha1').update(DELETE_IF_EQUALS_SCRIPT).digest('hex');

/** Escapes Redis glob metacharacters, so the result as a MATCH pattern matches `text` literally. */
function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

/**
 * The host and port of a `redis://` or `rediss://` URL, for error messages; `E_CONFIG` naming `url`
 * when it is not one (never with the URL, which may hold a password).
 */
export function parseRedisUrl(url: unknown): { host: string; port: number } {
  if (typeof url !== 'string') {
    throw new ConfigError('url', 'must be a string such as redis://127.0.0.1:6379');
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // No cause: Node's URL error repeats the input, password included.
    throw new ConfigError('url', 'not a valid URL; expected redis://host:port');
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new ConfigError('url', 'must start with redis:// or rediss://');
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1';
  return { host, port: parsed.port === '' ? 6379 : Number(parsed.port) };
}

/**
 * Creates a key-value store on Redis through ioredis. With `url` the store opens (lazily, on the
 * first call) and owns its connection: every call fails within `connectTimeout` when the server
 * cannot be reached and within `commandTimeout` when it stops answering, and the store reconnects
 * by itself once the server is back. With `client` it uses the caller's connection and bounds
 * each command by `commandTimeout`. Throws `E_CONFIG` naming the option when an option is invalid.
 */
export function createRedisStore(options: RedisStoreOptions): RedisStore {
  const opts = (options ?? {}) as RedisStoreOptions;
  const prefix = opts.prefix;
  if (typeof prefix !== 'string' || prefix.length === 0) {
    throw new ConfigError('prefix', 'a non-empty string is required, such as "app:cache:"');
  }
  if (!(prefix as unknown as { isWellFormed(): boolean }).isWellFormed()) {
    throw new ConfigError('prefix', 'must be well-formed unicode');
  }
  const connectTimeoutMs = parseDuration(opts.connectTimeout ?? '5s', 'connectTimeout', { allowZero: false });
  const commandTimeoutMs = parseDuration(opts.commandTimeout ?? '2s', 'commandTimeout', { allowZero: false });
  const defaultTtlMs =
    opts.defaultTtl === undefined
      ? Number.POSITIVE_INFINITY
      : parseDuration(opts.defaultTtl, 'defaultTtl', { allowZero: false, allowInfinite: true });
  const maxKeyLength = opts.maxKeyLength ?? DEFAULT_MAX_KEY_LENGTH;
  if (!Number.isSafeInteger(maxKeyLength) || maxKeyLength < 1) {
    throw new ConfigError('maxKeyLength', 'must be a positive integer');
  }
  const name = opts.name ?? 'redis';
  if (typeof name !== 'string' || name.length === 0) {
    throw new ConfigError('name', 'must be a non-empty string');
  }
  const settings: Settings = { prefix, name, connectTimeoutMs, commandTimeoutMs, defaultTtlMs, maxKeyLength };

  if (opts.client !== undefined) {
    if (opts.url !== undefined) throw new ConfigError('url', 'give either url or client, not both');
    const client = opts.client;
    if (
      typeof client !== 'object' ||
      client === null ||
      CLIENT_METHODS.some(
        (method) => typeof (client as unknown as Record<string, unknown>)[method] !== 'function',
      )
    ) {
      throw new ConfigError('client', 'expected an ioredis client');
    }
    const endpoint: Endpoint = { backend: 'redis', host: client.options?.host, port: client.options?.port };
    return new RedisStoreImpl(settings, client, undefined, endpoint);
  }

  const url = opts.url ?? process.env.REDIS_URL ?? DEFAULT_URL;
  const { host, port } = parseRedisUrl(url);
  const own = new Redis(url, {
    lazyConnect: true,
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    // Fail calls while disconnected instead of queueing them, and never replay a command after a
    // reconnect: its caller has already been told it failed and may have written since.
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) =>
      attempt > RECONNECT_ATTEMPTS ? null : Math.min(100 * 2 ** (attempt - 1), MAX_RECONNECT_DELAY_MS),
  });
  return new RedisStoreImpl(settings, own, own, { backend: 'redis', host, port });
}

interface Settings {
  prefix: string;
  name: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  defaultTtlMs: number;
  maxKeyLength: number;
}

class RedisStoreImpl implements RedisStore {
  readonly name: string;
  readonly prefix: string;
  readonly maxKeyLength: number;
  readonly #settings: Settings;
  readonly #endpoint: Endpoint;
  /** The client the store opened, undefined when it uses the caller's. */
  readonly #own: Redis | undefined;
  #connecting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  /** The last connection error since the connection was last ready. */
  #lastError: unknown;

  constructor(
    settings: Settings,
    readonly client: RedisClientLike,
    own: Redis | undefined,
    endpoint: Endpoint,
  ) {
    this.#settings = settings;
    this.name = settings.name;
    this.prefix = settings.prefix;
    this.maxKeyLength = settings.maxKeyLength;
    this.#own = own;
    this.#endpoint = endpoint;
    // Failures reach callers through their calls; without a listener ioredis prints each one.
    own?.on('error', (err: unknown) => {
      this.#lastError = err;
    });
    own?.on('ready', () => {
      this.#lastError = undefined;
    });
  }

  #assertOpen(): void {
    if (this.#closing !== undefined) throw new ClosedError(this.name);
  }

  #key(key: unknown, path: ReadonlyArray<string | number> = ['key']): string {
    checkKey(key, this.maxKeyLength, path);
    return this.prefix + key;
  }

  #keys(keys: unknown): string[] {
    checkKeys(keys, this.maxKeyLength);
    return keys.map((key) => this.prefix + key);
  }

  #ttlMs(options: KeyValueSetOptions | undefined): number {
    return resolveTtl(options, this.#settings.defaultTtlMs);
  }

  /** Waits until the store's own connection is ready, starting it when idle; bounded by connectTimeout. */
  #ready(own: Redis): Promise<void> {
    if (own.status === 'ready') return Promise.resolve();
    // Reconnecting after a failed attempt: the server is down, so fail now rather than make
    // every call wait for the next attempt. After a clean close (an idle timeout), wait for it.
    if (own.status === 'reconnecting' && this.#lastError !== undefined) {
      return Promise.reject(this.#connectionError(this.#lastError));
    }
    if (this.#connecting !== undefined) return this.#connecting;
    const connecting = new Promise<void>((resolve, reject) => {
      const finish = (err?: StrataError) => {
        systemClock.clearTimeout(timer);
        own.off('ready', onReady);
        own.off('error', onError);
        own.off('end', onEnd);
        if (err === undefined) resolve();
        else reject(err);
      };
      const onReady = () => finish();
      const onError = (err: unknown) => finish(this.#connectionError(err));
      const onEnd = () => finish(new ConnectionError(this.#endpoint, 'connection closed'));
      const timer = systemClock.setTimeout(
        () =>
          finish(
            new ConnectionError(this.#endpoint, 'not connected within connectTimeout', {
              details: { timeoutMs: this.#settings.connectTimeoutMs },
            }),
          ),
        this.#settings.connectTimeoutMs,
      );
      own.once('ready', onReady);
      own.on('error', onError);
      own.once('end', onEnd);
      // 'wait': never connected (lazy); 'end': gave up reconnecting. Otherwise a connection or a
      // reconnect is already under way and its outcome arrives as an event.
      if (own.status === 'wait' || own.status === 'end') own.connect().catch(() => undefined);
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
      endpoint: this.#endpoint,
      operation: 'connect',
      timeoutMs: this.#settings.connectTimeoutMs,
      connecting: true,
    });
  }

  async #run<T>(operation: string, command: (client: RedisClientLike) => Promise<T>): Promise<T> {
    this.#assertOpen();
    try {
      if (this.#own !== undefined) {
        if (this.#own.status !== 'ready') await this.#ready(this.#own);
        // ioredis bounds each command by commandTimeout itself.
        return await command(this.#own);
      }
      return await withTimeout(command(this.client), this.#settings.commandTimeoutMs, `redis ${operation}`);
    } catch (err) {
      throw toRedisError(err, {
        endpoint: this.#endpoint,
        operation,
        timeoutMs: this.#settings.commandTimeoutMs,
      });
    }
  }

  async connect(): Promise<void> {
    this.#assertOpen();
    // A round trip, not the connection's status alone: right after the server dies the status
    // can still read 'ready' until the socket's close event arrives.
    await this.#run('ping', (c) => c.ping());
  }

  get(key: string): Promise<string | undefined> {
    let k: string;
    try {
      k = this.#key(key, ['key']);
      this.#assertOpen();
    } catch (err) {
      return Promise.reject(err);
    }
    const own = this.#own;
    // The hot path of every cache hit: one promise step on a ready connection of our own.
    if (own !== undefined && own.status === 'ready') {
      return own.get(k).then(
        (value) => value ?? undefined,
        (err: unknown) => {
          throw toRedisError(err, {
            endpoint: this.#endpoint,
            operation: 'get',
            timeoutMs: this.#settings.commandTimeoutMs,
          });
        },
      );
    }
    return this.#run('get', (c) => c.get(k)).then((value) => value ?? undefined);
  }

  async getMany(keys: readonly string[]): Promise<(string | undefined)[]> {
    const ks = this.#keys(keys);
    this.#assertOpen();
    if (ks.length === 0) return [];
    const values = await this.#run('mget', (c) => c.mget(ks));
    return values.map((value) => value ?? undefined);
  }

  async set(key: string, value: string, options?: KeyValueSetOptions): Promise<void> {
    const k = this.#key(key, ['key']);
    checkValue(value);
    const v = value;
    const ttl = this.#ttlMs(options);
    await this.#run('set', (c) => (Number.isFinite(ttl) ? c.set(k, v, 'PX', ttl) : c.set(k, v)));
  }

  async setMany(entries: readonly KeyValueEntry[]): Promise<void> {
    checkEntries(entries);
    // Check every entry before sending any, so bad input never leaves a partial write.
    const writes = entries.map((e, i) => {
      const key = this.#key(e.key, ['entries', i, 'key']);
      checkValue(e.value, ['entries', i, 'value']);
      return { key, value: e.value, ttl: this.#ttlMs(e) };
    });
    this.#assertOpen();
    if (writes.length === 0) return;
    await this.#run('set', async (c) => {
      const pipeline = c.pipeline();
      for (const w of writes) {
        if (Number.isFinite(w.ttl)) pipeline.set(w.key, w.value, 'PX', w.ttl);
        else pipeline.set(w.key, w.value);
      }
      const results = await pipeline.exec();
      if (results === null) throw new ConnectionError(this.#endpoint, 'pipeline aborted');
      const failed = results.find(([err]) => err !== null);
      if (failed !== undefined) throw failed[0];
    });
  }

  async setIfAbsent(key: string, value: string, options?: KeyValueSetOptions): Promise<boolean> {
    const k = this.#key(key, ['key']);
    checkValue(value);
    const v = value;
    const ttl = this.#ttlMs(options);
    const reply = await this.#run('set', (c) =>
      Number.isFinite(ttl) ? c.set(k, v, 'PX', ttl, 'NX') : c.set(k, v, 'NX'),
    );
    return reply === 'OK';
  }

  async deleteIfEquals(key: string, value: string): Promise<boolean> {
    const k = this.#key(key, ['key']);
    checkValue(value);
    const v = value;
    const removed = await this.#run('deleteIfEquals', async (c) => {
      try {
        return await c.evalsha(DELETE_IF_EQUALS_SHA, 1, k, v);
      } catch (err) {
        // The server does not have the script yet (first use, restart, SCRIPT FLUSH): EVAL loads it.
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
        return await c.eval(DELETE_IF_EQUALS_SCRIPT, 1, k, v);
      }
    });
    return removed === 1;
  }

  async delete(key: string): Promise<boolean> {
    const k = this.#key(key, ['key']);
    return (await this.#run('unlink', (c) => c.unlink(k))) > 0;
  }

  async deleteMany(keys: readonly string[]): Promise<number> {
    const ks = this.#keys(keys);
    this.#assertOpen();
    if (ks.length === 0) return 0;
    return this.#run('unlink', (c) => c.unlink(...ks));
  }

  async has(key: string): Promise<boolean> {
    const k = this.#key(key, ['key']);
    return (await this.#run('exists', (c) => c.exists(k))) > 0;
  }

  async ttl(key: string): Promise<number | undefined> {
    const k = this.#key(key, ['key']);
    const ms = await this.#run('pttl', (c) => c.pttl(k));
    if (ms === -2) return undefined;
    if (ms === -1) return Number.POSITIVE_INFINITY;
    return ms;
  }

  async clear(): Promise<void> {
    this.#assertOpen();
    const pattern = `${escapeGlob(this.prefix)}*`;
    let cursor = '0';
    do {
      const [next, keys] = await this.#run('scan', (c) =>
        c.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT),
      );
      if (keys.length > 0) await this.#run('unlink', (c) => c.unlink(...keys));
      cursor = next;
    } while (cursor !== '0');
  }

  close(): Promise<void> {
    this.#closing ??= this.#own === undefined ? Promise.resolve() : this.#quit(this.#own);
    return this.#closing;
  }

  async #quit(own: Redis): Promise<void> {
    if (own.status === 'ready') {
      try {
        await withTimeout(own.quit(), this.#settings.commandTimeoutMs, 'redis quit');
        return;
      } catch {
        // The server did not acknowledge QUIT in time; drop the connection instead.
      }
    }
    own.disconnect();
  }
}
