/**
 * The change log on a Redis Stream.
 *
 * Layout under the prefix `p`: the stream `plog`, whose entries have the explicit ids
 * `<offset>-1` and the fields `source`, `table`, `position` and `payload` (the shared codec's
 * text); the counter `poffset` (the newest offset); the hash `psources` (source to its last
 * position). Explicit ids put the offset in the id's milliseconds part, so offsets are plain
 * integers from 1, a read from an offset is one XRANGE, and an entry added with an automatic id
 * (a clock time, far above any offset) would be refused by the next append instead of going
 * unnoticed. One Lua script appends a whole batch atomically: it skips changes whose position is
 * not after their source's last one, adds the rest, and moves the counter and the hash with them.
 *
 * Durability: Redis acknowledges a write once it is in memory. An append survives a Redis crash
 * or restart only with the append-only file and `appendfsync always` (with `everysec`, up to a
 * second of appends can be lost); without persistence a restart empties the log and offsets start
 * again from 1. In a Redis Cluster, put a hash tag in the prefix (`{orders}:log:`) so the three
 * keys share a slot.
 */
import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { withTimeout } from '../../core/async.js';
import {
  type AppendResult,
  assertSourceName,
  type Change,
  type ChangeLog,
  deserializeChange,
  isPosition,
  type LogEntry,
  type Position,
  type ReadOptions,
  serializeChange,
} from '../../core/changes.js';
import { sleep, systemClock } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  ConnectionError,
  type Endpoint,
  StrataError,
  ValidationError,
  type ValidationIssue,
} from '../../core/errors.js';
import { toRedisError } from './redis-errors.js';

/** A connection of the caller's for watching: XREAD with BLOCK, through the generic `call`. */
export interface RedisBlockingClientLike {
  call(command: string, ...args: (string | number)[]): Promise<unknown>;
  on(event: 'error', listener: (err: unknown) => void): unknown;
  disconnect(): void;
}

/** The parts of an ioredis client the change log calls, so a user can hand over their own. */
export interface RedisChangeLogClientLike {
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
  get(key: string): Promise<string | null>;
  hget(key: string, field: string): Promise<string | null>;
  /**
   * A new connection with the same settings (ioredis `duplicate`), used for blocking reads while
   * watched; without it `watch` polls the counter every `pollInterval`.
   */
  duplicate?(override?: Record<string, unknown>): RedisBlockingClientLike;
}

/** Options for `createRedisChangeLog`. */
export interface RedisChangeLogOptions {
  /**
   * Server URL, `redis://[user:password@]host[:port][/db]` or `rediss://` for TLS (default the
   * `REDIS_URL` environment variable, else `redis://127.0.0.1:6379`). Not with `client`.
   */
  url?: string;
  /** An ioredis client the caller created and will close; the log never quits it. Not with `url`. */
  client?: RedisChangeLogClientLike;
  /**
   * Namespace of the log's keys, required and non-empty: `${prefix}log`, `${prefix}offset` and
   * `${prefix}sources`. End it with a separator (`'app:changes:'`).
   */
  prefix: string;
  /**
   * Keep about this many newest entries (XADD `MAXLEN ~`; default: all). Trimmed entries are gone
   * for readers, while the skip of re-appended positions still works (the hash keeps them).
   */
  maxLength?: number;
  /** How long a call waits for a connection to become ready (default 5s). */
  connectTimeout?: Duration;
  /** How long one command waits for its reply (default 2s). */
  commandTimeout?: Duration;
  /** How long one blocking read of `watch` waits, or, without one, how often it polls (default 5s). */
  pollInterval?: Duration;
  /** A label for messages, metrics and the dashboard (default the prefix). */
  name?: string;
}

/** A change log on a Redis Stream. */
export interface RedisChangeLog extends ChangeLog {
  /** The namespace of the log's keys. */
  readonly prefix: string;
  /** The stream key, `${prefix}log`. */
  readonly streamKey: string;
  /** The ioredis client in use: the caller's, or the one the log opened. */
  readonly client: RedisChangeLogClientLike;
}

const DEFAULT_URL = 'redis://127.0.0.1:6379';
/** Reconnect attempts after a lost connection; past them the next call starts a fresh connection. */
const RECONNECT_ATTEMPTS = 10;
const MAX_RECONNECT_DELAY_MS = 1_000;
/** Most entries one XRANGE returns. */
const READ_CHUNK = 1024;
/** Delay that gathers a burst of appends into one wake-up of the watchers. */
const WAKE_DELAY_MS = 10;
const CLIENT_METHODS = ['evalsha', 'eval', 'xrange', 'get', 'hget'] as const;

/**
 * KEYS: the stream, the sources hash, the offset counter. ARGV: the MAXLEN (0: none), then four
 * per change: source, table, position, payload. Each change is added, counted and recorded in
 * the hash before the next, so an error part-way leaves the three keys consistent. Positions are
 * compared byte by byte: Lua's `<` on strings follows the server's locale.
 */
const APPEND_SCRIPT = `
local maxlen = tonumber(ARGV[1])
local function newer(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local offset = tonumber(redis.call('GET', KEYS[3]) or '0')
local last = {}
local appended, duplicates = 0, 0
for i = 2, #ARGV, 4 do
  local source, tbl, position, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local prev = last[source]
  if prev == nil then
    prev = redis.call('HGET', KEYS[2], source) or ''
  end
  if prev ~= '' and not newer(position, prev) then
    duplicates = duplicates + 1
    last[source] = prev
  else
    local id = string.format('%d-1', offset + 1)
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, id,
        'source', source, 'table', tbl, 'position', position, 'payload', payload)
    else
      redis.call('XADD', KEYS[1], id, 'source', source, 'table', tbl, 'position', position, 'payload', payload)
    end
    offset = offset + 1
    redis.call('SET', KEYS[3], string.format('%d', offset))
    redis.call('HSET', KEYS[2], source, position)
    last[source] = position
    appended = appended + 1
  end
end
return { appended, duplicates, offset }
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
 * Creates a change log on a Redis Stream through ioredis. With `url` the log opens (lazily, on
 * the first call) and owns its connection: every call fails within `connectTimeout` when the
 * server cannot be reached and within `commandTimeout` when it stops answering, and the log
 * reconnects by itself once the server is back. With `client` it uses the caller's connection and
 * bounds each command by `commandTimeout`. Throws `E_CONFIG` naming the option when an option is
 * invalid.
 */
export function createRedisChangeLog(options: RedisChangeLogOptions): RedisChangeLog {
  const opts = (options ?? {}) as RedisChangeLogOptions;
  const prefix = opts.prefix;
  if (typeof prefix !== 'string' || prefix.length === 0) {
    throw new ConfigError('prefix', 'a non-empty string is required, such as "app:changes:"');
  }
  if (!(prefix as unknown as { isWellFormed(): boolean }).isWellFormed()) {
    throw new ConfigError('prefix', 'must be well-formed unicode');
  }
  const maxLength = opts.maxLength ?? 0;
  if (!Number.isSafeInteger(maxLength) || maxLength < 0 || (opts.maxLength !== undefined && maxLength < 1)) {
    throw new ConfigError('maxLength', 'must be a positive integer');
  }
  const connectTimeoutMs = parseDuration(opts.connectTimeout ?? '5s', 'connectTimeout', { allowZero: false });
  const commandTimeoutMs = parseDuration(opts.commandTimeout ?? '2s', 'commandTimeout', { allowZero: false });
  const pollMs = parseDuration(opts.pollInterval ?? '5s', 'pollInterval', { allowZero: false });
  const name = opts.name ?? prefix;
  if (typeof name !== 'string' || name.length === 0)
    throw new ConfigError('name', 'must be a non-empty string');
  const settings: Settings = { prefix, name, maxLength, connectTimeoutMs, commandTimeoutMs, pollMs };

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
    return new RedisChangeLogImpl(settings, client, undefined, endpoint);
  }

  const url = opts.url ?? process.env.REDIS_URL ?? DEFAULT_URL;
  const { host, port } = parseUrl(url);
  const own = new Redis(url, {
    lazyConnect: true,
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    // Fail calls while disconnected instead of queueing them, and never replay a command after a
    // reconnect: its caller has already been told it failed and may have appended since.
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) =>
      attempt > RECONNECT_ATTEMPTS ? null : Math.min(100 * 2 ** (attempt - 1), MAX_RECONNECT_DELAY_MS),
  });
  return new RedisChangeLogImpl(settings, own, own, { backend: 'redis', host, port });
}

interface Settings {
  prefix: string;
  name: string;
  maxLength: number;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  pollMs: number;
}

function checkReadArguments(after: unknown, limit: unknown): void {
  if (typeof after !== 'number' || !Number.isSafeInteger(after) || after < 0) {
    throw new ConfigError('after', 'must be a non-negative integer offset');
  }
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1) {
    throw new ConfigError('limit', 'must be a positive integer');
  }
}

/** The script's arguments for `changes`; `E_VALIDATION` listing every change that cannot be appended. */
function scriptArguments(changes: readonly Change[]): string[] {
  if (!Array.isArray(changes)) {
    throw new ValidationError([{ path: [], message: 'expected an array of changes' }], {
      subject: 'changes',
    });
  }
  const issues: ValidationIssue[] = [];
  const args: string[] = [];
  changes.forEach((change: Change, i) => {
    if (typeof change !== 'object' || change === null) {
      issues.push({ path: [i], message: 'expected a change object' });
      return;
    }
    const position = change.position as unknown;
    if (!isPosition(position)) {
      issues.push({ path: [i, 'position'], message: 'not a position token' });
      return;
    }
    const source = position.slice(0, position.indexOf('@'));
    if (change.source !== source) {
      issues.push({ path: [i, 'source'], message: 'differs from the source of the position' });
    }
    if (typeof change.table !== 'string' || change.table.length === 0) {
      issues.push({ path: [i, 'table'], message: 'must be a non-empty string' });
    }
    try {
      args.push(source, change.table, position, serializeChange(change));
    } catch {
      issues.push({ path: [i], message: 'cannot be encoded' });
    }
  });
  if (issues.length > 0) {
    throw new ValidationError(issues, { subject: 'changes', details: { backend: 'redis' } });
  }
  return args;
}

function fieldOf(fields: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
  return undefined;
}

class RedisChangeLogImpl implements RedisChangeLog {
  readonly name: string;
  readonly prefix: string;
  readonly streamKey: string;
  readonly #sourcesKey: string;
  readonly #offsetKey: string;
  readonly #settings: Settings;
  readonly #endpoint: Endpoint;
  /** The client the log opened, undefined when it uses the caller's. */
  readonly #own: Redis | undefined;
  #connecting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  /** The last connection error since the connection was last ready. */
  #lastError: unknown;
  readonly #listeners = new Set<{ fn: () => void }>();
  /** The running watch loop and its blocking connection, while anyone watches. */
  #watcher: { stop: () => void } | undefined;
  #wakeTimer: ReturnType<typeof systemClock.setTimeout> | undefined;

  constructor(
    settings: Settings,
    readonly client: RedisChangeLogClientLike,
    own: Redis | undefined,
    endpoint: Endpoint,
  ) {
    this.#settings = settings;
    this.name = settings.name;
    this.prefix = settings.prefix;
    this.streamKey = `${settings.prefix}log`;
    this.#sourcesKey = `${settings.prefix}sources`;
    this.#offsetKey = `${settings.prefix}offset`;
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
    if (this.#closing !== undefined)
      throw new ClosedError('redis change log', { details: { prefix: this.prefix } });
  }

  /** Waits until the log's own connection is ready, starting it when idle; bounded by connectTimeout. */
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

  async #run<T>(operation: string, command: (client: RedisChangeLogClientLike) => Promise<T>): Promise<T> {
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

  async append(changes: readonly Change[]): Promise<AppendResult> {
    this.#assertOpen();
    const args = scriptArguments(changes);
    if (args.length === 0) return { appended: 0, duplicates: 0, lastOffset: await this.head() };
    const keys = [this.streamKey, this.#sourcesKey, this.#offsetKey];
    const argv = [String(this.#settings.maxLength), ...args];
    const reply = await this.#run('append', async (c) => {
      try {
        return await c.evalsha(APPEND_SHA, keys.length, ...keys, ...argv);
      } catch (err) {
        // The server does not have the script yet (first use, restart, SCRIPT FLUSH): EVAL loads it.
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
        return await c.eval(APPEND_SCRIPT, keys.length, ...keys, ...argv);
      }
    });
    const [appended, duplicates, lastOffset] = (Array.isArray(reply) ? reply : []).map(Number);
    if (appended === undefined || duplicates === undefined || lastOffset === undefined) {
      throw new StrataError('E_QUERY', 'redis: append returned an unexpected reply', {
        details: { backend: 'redis', operation: 'append' },
      });
    }
    if (appended > 0) this.#wake();
    return { appended, duplicates, lastOffset };
  }

  async read(after: number, limit: number, options: ReadOptions = {}): Promise<LogEntry[]> {
    this.#assertOpen();
    checkReadArguments(after, limit);
    const tables = options?.tables;
    if (tables !== undefined && !Array.isArray(tables))
      throw new ConfigError('tables', 'must be an array of names');
    const wanted = tables === undefined ? undefined : new Set(tables);
    if (wanted?.size === 0) return [];
    const out: LogEntry[] = [];
    let start = after + 1;
    while (out.length < limit) {
      const count = wanted === undefined ? Math.min(limit - out.length, READ_CHUNK) : READ_CHUNK;
      const from = `${start}-0`;
      const entries = await this.#run('xrange', (c) => c.xrange(this.streamKey, from, '+', 'COUNT', count));
      for (const [id, fields] of entries) {
        if (wanted !== undefined && !wanted.has(fieldOf(fields, 'table') ?? '')) continue;
        const payload = fieldOf(fields, 'payload');
        if (payload === undefined) {
          throw new StrataError('E_CORRUPT', 'a stored change has no payload', {
            details: { backend: 'redis', stream: this.streamKey, id },
          });
        }
        out.push({ ...deserializeChange<Change>(payload), offset: Number.parseInt(id, 10) });
        if (out.length === limit) break;
      }
      if (entries.length < count) break;
      start = Number.parseInt(entries[entries.length - 1]![0], 10) + 1;
    }
    return out;
  }

  async head(): Promise<number> {
    const value = await this.#run('get', (c) => c.get(this.#offsetKey));
    return value === null ? 0 : Number(value);
  }

  async lastPosition(source: string): Promise<Position | undefined> {
    this.#assertOpen();
    assertSourceName(source);
    const value = await this.#run('hget', (c) => c.hget(this.#sourcesKey, source));
    return value === null ? undefined : (value as Position);
  }

  watch(listener: () => void): () => void {
    this.#assertOpen();
    if (typeof listener !== 'function') throw new ConfigError('listener', 'must be a function');
    const entry = { fn: listener };
    this.#listeners.add(entry);
    this.#watcher ??= this.#startWatching();
    return () => {
      if (this.#listeners.delete(entry) && this.#listeners.size === 0) {
        this.#watcher?.stop();
        this.#watcher = undefined;
      }
    };
  }

  /**
   * Watches on a connection of its own (blocking commands would hold up every other call on a
   * shared one): XREAD BLOCK waits for an entry after the newest offset seen, so an append of any
   * process wakes the watchers within a round trip, and a quiet log costs one command per
   * `pollInterval`. Without a way to open that connection, it polls the counter instead. The first
   * round wakes every listener once, since entries may have been appended before it started.
   */
  #startWatching(): { stop: () => void } {
    let stopped = false;
    const blocking = this.#blockingConnection();
    const loop = async () => {
      let seen: number | undefined;
      let failures = 0;
      while (!stopped) {
        try {
          const head = await this.head();
          if (seen === undefined || head !== seen) this.#wake();
          seen = head;
          failures = 0;
          if (blocking === undefined) await sleep(this.#settings.pollMs);
          else {
            await blocking.call(
              'XREAD',
              'COUNT',
              1,
              'BLOCK',
              this.#settings.pollMs,
              'STREAMS',
              this.streamKey,
              `${head}-1`,
            );
          }
        } catch {
          if (stopped) return;
          // The server is away (or the log closed): try again after a pause that grows to pollInterval.
          failures++;
          await sleep(Math.min(this.#settings.pollMs, 100 * 2 ** failures));
        }
      }
    };
    void loop();
    return {
      stop: () => {
        stopped = true;
        blocking?.disconnect();
      },
    };
  }

  #blockingConnection(): RedisBlockingClientLike | undefined {
    const overrides = {
      lazyConnect: false,
      // A blocking read waits up to pollInterval for its reply.
      commandTimeout: this.#settings.pollMs + this.#settings.commandTimeoutMs,
      enableOfflineQueue: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => Math.min(this.#settings.pollMs, MAX_RECONNECT_DELAY_MS),
    };
    const source = this.#own ?? this.client;
    if (typeof source.duplicate !== 'function') return undefined;
    const connection = source.duplicate(overrides);
    connection.on('error', () => undefined);
    return connection;
  }

  #wake(): void {
    if (this.#wakeTimer !== undefined || this.#listeners.size === 0) return;
    this.#wakeTimer = systemClock.setTimeout(() => {
      this.#wakeTimer = undefined;
      for (const entry of [...this.#listeners]) {
        try {
          entry.fn();
        } catch {
          // A failing listener must not stop the others; it learns about entries by reading anyway.
        }
      }
    }, WAKE_DELAY_MS);
  }

  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#listeners.clear();
      this.#watcher?.stop();
      this.#watcher = undefined;
      if (this.#wakeTimer !== undefined) systemClock.clearTimeout(this.#wakeTimer);
      this.#closing = this.#own === undefined ? Promise.resolve() : this.#quit(this.#own);
    }
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
