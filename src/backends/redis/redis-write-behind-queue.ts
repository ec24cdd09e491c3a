/**
 * A durable write-behind queue on a Redis Stream: one entry per queued write, with the explicit
 * id `<version>-0` and the fields `k` (the key) and `v` (the serialized value; absent for a
 * delete). One Lua script appends a group of writes; acknowledging trims the stream with
 * `XTRIM MINID`. The stream keeps its last id when it is trimmed empty, so versions keep growing
 * across restarts, and Redis refuses an id below it: an append of versions not above the last
 * one (a second engine on the same stream) fails with `E_CONFLICT` and stores nothing.
 *
 * Durability: Redis acknowledges a write once it is in memory. An acknowledged append survives a
 * Redis crash or restart only with the append-only file and `appendfsync always` (with
 * `everysec`, up to a second of appends can be lost; with no persistence, a restart empties the
 * queue). A crash of the application process loses nothing whatever the setting: the entries are
 * in the server.
 */
import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { withTimeout } from '../../core/async.js';
import { systemClock } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import { ClosedError, ConfigError, ConnectionError, type Endpoint, StrataError } from '../../core/errors.js';
import {
  checkAcknowledgedVersion,
  checkWriteBehindRecords,
  versionConflict,
  type WriteBehindQueue,
  type WriteBehindRecord,
} from '../../core/write-behind-queue.js';
import { toRedisError } from './redis-errors.js';

/** The parts of an ioredis client the queue calls, so a user can hand over their own. */
export interface RedisWriteBehindClientLike {
  /** Read for error messages only (host and port, never the password). */
  readonly options?: { host?: string | undefined; port?: number | undefined };
  evalsha(sha1: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
  eval(script: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
  xrange(
    key: string,
    start: string,
    end: string,
    count: 'COUNT',
    n: number,
  ): Promise<[id: string, fields: string[]][]>;
  xtrim(key: string, strategy: 'MINID', threshold: string): Promise<number>;
  xinfo(subcommand: 'STREAM', key: string): Promise<unknown>;
}

/** Options for `createRedisWriteBehindQueue`. */
export interface RedisWriteBehindQueueOptions {
  /**
   * Server URL, `redis://[user:password@]host[:port][/db]` or `rediss://` for TLS (default the
   * `REDIS_URL` environment variable, else `redis://127.0.0.1:6379`). Not with `client`.
   */
  url?: string;
  /** An ioredis client the caller created and will close; the queue never quits it. Not with `url`. */
  client?: RedisWriteBehindClientLike;
  /** The stream's key, required; one stream per engine (`'app:likes:write-behind'`). */
  key: string;
  /** How long a call waits for a connection to become ready (default 5s). */
  connectTimeout?: Duration;
  /** How long one command waits for its reply (default 2s). */
  commandTimeout?: Duration;
  /** A label for messages, metrics and the dashboard (default `redis-write-behind:<key>`). */
  name?: string;
}

/** A write-behind queue on a Redis Stream. */
export interface RedisWriteBehindQueue extends WriteBehindQueue {
  /** The stream's key. */
  readonly key: string;
  /** The ioredis client in use: the caller's, or the one the queue opened. */
  readonly client: RedisWriteBehindClientLike;
}

const DEFAULT_URL = 'redis://127.0.0.1:6379';
/** Reconnect attempts after a lost connection; past them the next call starts a fresh connection. */
const RECONNECT_ATTEMPTS = 10;
const MAX_RECONNECT_DELAY_MS = 1_000;
/** Most entries one XRANGE returns while loading. */
const READ_CHUNK = 1_000;
const CLIENT_METHODS = ['evalsha', 'eval', 'xrange', 'xtrim', 'xinfo'] as const;

/**
 * KEYS: the stream. ARGV: four per record: id, key, '1' or '0' (has a value), value. Returns 1,
 * or 0 when the first id is not above the stream's last one (nothing added). The ids ascend, so
 * only the first can be refused for its order.
 */
const APPEND_SCRIPT = `
for i = 1, #ARGV, 4 do
  local reply
  if ARGV[i + 2] == '1' then
    reply = redis.pcall('XADD', KEYS[1], ARGV[i], 'k', ARGV[i + 1], 'v', ARGV[i + 3])
  else
    reply = redis.pcall('XADD', KEYS[1], ARGV[i], 'k', ARGV[i + 1])
  end
  if type(reply) == 'table' and reply.err then
    if i == 1 and string.find(reply.err, 'equal or smaller', 1, true) then return 0 end
    return redis.error_reply(reply.err)
  end
end
return 1
`;
const APPEND_SHA = createHash('sha1').update(APPEND_SCRIPT).digest('hex');

function parseUrl(url: unknown): { host: string; port: number } {
  if (typeof url !== 'string')
    throw new ConfigError('url', 'must be a string such as redis://127.0.0.1:6379');
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
 * Creates a write-behind queue on a Redis Stream through ioredis. With `url` the queue opens
 * (lazily, on the first call) and owns its connection: every call fails within `connectTimeout`
 * when the server cannot be reached and within `commandTimeout` when it stops answering, and it
 * reconnects by itself once the server is back. With `client` it uses the caller's connection and
 * bounds each command by `commandTimeout`. Throws `E_CONFIG` naming the option when an option is
 * invalid.
 */
export function createRedisWriteBehindQueue(options: RedisWriteBehindQueueOptions): RedisWriteBehindQueue {
  const opts = (options ?? {}) as RedisWriteBehindQueueOptions;
  const key = opts.key;
  if (typeof key !== 'string' || key.length === 0) {
    throw new ConfigError('key', 'a non-empty string is required, such as "app:likes:write-behind"');
  }
  if (!(key as unknown as { isWellFormed(): boolean }).isWellFormed()) {
    throw new ConfigError('key', 'must be well-formed unicode');
  }
  const connectTimeoutMs = parseDuration(opts.connectTimeout ?? '5s', 'connectTimeout', { allowZero: false });
  const commandTimeoutMs = parseDuration(opts.commandTimeout ?? '2s', 'commandTimeout', { allowZero: false });
  const name = opts.name ?? `redis-write-behind:${key}`;
  if (typeof name !== 'string' || name.length === 0)
    throw new ConfigError('name', 'must be a non-empty string');
  const settings: Settings = { key, name, connectTimeoutMs, commandTimeoutMs };

  if (opts.client !== undefined) {
    if (opts.url !== undefined) throw new ConfigError('url', 'give either url or client, not both');
    const client = opts.client;
    if (
      typeof client !== 'object' ||
      client === null ||
      CLIENT_METHODS.some((m) => typeof (client as unknown as Record<string, unknown>)[m] !== 'function')
    ) {
      throw new ConfigError('client', 'expected an ioredis client');
    }
    const endpoint: Endpoint = { backend: 'redis', host: client.options?.host, port: client.options?.port };
    return new RedisWriteBehindQueueImpl(settings, client, undefined, endpoint);
  }

  const url = opts.url ?? process.env.REDIS_URL ?? DEFAULT_URL;
  const { host, port } = parseUrl(url);
  const own = new Redis(url, {
    lazyConnect: true,
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    // Fail calls while disconnected instead of queueing them, and never replay a command after a
    // reconnect: its caller has already been told it failed.
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) =>
      attempt > RECONNECT_ATTEMPTS ? null : Math.min(100 * 2 ** (attempt - 1), MAX_RECONNECT_DELAY_MS),
  });
  return new RedisWriteBehindQueueImpl(settings, own, own, { backend: 'redis', host, port });
}

interface Settings {
  key: string;
  name: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
}

function fieldOf(fields: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}

class RedisWriteBehindQueueImpl implements RedisWriteBehindQueue {
  readonly name: string;
  readonly key: string;
  readonly #settings: Settings;
  readonly #endpoint: Endpoint;
  /** The client the queue opened, undefined when it uses the caller's. */
  readonly #own: Redis | undefined;
  #connecting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  /** The last connection error since the connection was last ready. */
  #lastError: unknown;

  constructor(
    settings: Settings,
    readonly client: RedisWriteBehindClientLike,
    own: Redis | undefined,
    endpoint: Endpoint,
  ) {
    this.#settings = settings;
    this.name = settings.name;
    this.key = settings.key;
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
    if (this.#closing !== undefined) throw new ClosedError(this.name, { details: { key: this.key } });
  }

  /** Waits until the queue's own connection is ready, starting it when idle; bounded by connectTimeout. */
  #ready(own: Redis): Promise<void> {
    if (own.status === 'ready') return Promise.resolve();
    // Reconnecting after a failed attempt: the server is down, so fail now rather than make
    // every call wait for the next attempt.
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

  async #run<T>(operation: string, command: (client: RedisWriteBehindClientLike) => Promise<T>): Promise<T> {
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

  async append(records: readonly WriteBehindRecord[]): Promise<void> {
    this.#assertOpen();
    checkWriteBehindRecords(records);
    if (records.length === 0) return;
    const args: string[] = [];
    for (const { key, value, version } of records) {
      args.push(`${version}-0`, key, value === null ? '0' : '1', value ?? '');
    }
    const reply = await this.#run('append', async (c) => {
      try {
        return await c.evalsha(APPEND_SHA, 1, this.key, ...args);
      } catch (err) {
        // The server does not have the script yet (first use, restart, SCRIPT FLUSH): EVAL loads it.
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
        return await c.eval(APPEND_SCRIPT, 1, this.key, ...args);
      }
    });
    if (Number(reply) === 0) throw versionConflict(this.name, await this.lastVersion());
    if (Number(reply) !== 1) {
      throw new StrataError('E_QUERY', 'redis: append returned an unexpected reply', {
        details: { backend: 'redis', operation: 'append', key: this.key },
      });
    }
  }

  async load(): Promise<WriteBehindRecord[]> {
    this.#assertOpen();
    const out: WriteBehindRecord[] = [];
    let start = '-';
    for (;;) {
      const from = start;
      const entries = await this.#run('xrange', (c) => c.xrange(this.key, from, '+', 'COUNT', READ_CHUNK));
      for (const [id, fields] of entries) {
        const key = fieldOf(fields, 'k');
        if (key === undefined) {
          throw new StrataError('E_CORRUPT', 'a queued write has no key', {
            details: { backend: 'redis', stream: this.key, id },
          });
        }
        out.push({ key, value: fieldOf(fields, 'v') ?? null, version: Number.parseInt(id, 10) });
      }
      if (entries.length < READ_CHUNK) return out;
      start = `(${entries[entries.length - 1]![0]}`;
    }
  }

  async lastVersion(): Promise<number> {
    this.#assertOpen();
    let info: unknown;
    try {
      info = await this.#run('xinfo', (c) => c.xinfo('STREAM', this.key));
    } catch (err) {
      const cause = (err as { cause?: unknown }).cause;
      if (cause instanceof Error && /no such key/i.test(cause.message)) return 0;
      throw err;
    }
    const fields = Array.isArray(info) ? (info as unknown[]) : [];
    const index = fields.indexOf('last-generated-id');
    const id = index >= 0 ? fields[index + 1] : undefined;
    if (typeof id !== 'string') {
      throw new StrataError('E_QUERY', 'redis: XINFO STREAM returned an unexpected reply', {
        details: { backend: 'redis', operation: 'xinfo', key: this.key },
      });
    }
    return Number.parseInt(id, 10);
  }

  async acknowledge(upToVersion: number): Promise<void> {
    this.#assertOpen();
    checkAcknowledgedVersion(upToVersion);
    const threshold = `${upToVersion + 1}-0`;
    await this.#run('xtrim', (c) => c.xtrim(this.key, 'MINID', threshold));
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
