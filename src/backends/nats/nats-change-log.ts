/**
 * The change log on NATS JetStream: one stream per log, one subject per table
 * (`<subjectPrefix>.<table>`), and one message per run of consecutive changes of one table.
 *
 * A message holds up to `maxChangesPerMessage` changes (and never more than the server's max
 * payload) as a JSON array in the wire form every log shares (`serializeChange`). Offsets count
 * changes, not messages: the `Strata-Offset` header gives the offset of a message's first change
 * and `Strata-Count` how many it holds, so offsets stay dense (1, 2, 3, ...) while JetStream
 * stores and acknowledges a few hundred changes at once. A read finds the message holding an
 * offset from the messages this instance has seen (sequential readers never search), else by a
 * binary search over stream sequences, then streams the following messages through a pull
 * consumer that the next sequential read reuses.
 *
 * Such a read cursor keeps a pull outstanding between reads (while its bounded buffer has room),
 * so JetStream pushes each message into the buffer as soon as it is stored, and wakes the
 * watchers then. Only messages a consumer delivered are ever returned: a copy seen on core NATS
 * may belong to a conditional publish JetStream refused. A read takes what the buffer holds; when
 * that is fewer than asked, one consumer info tells which delivery covers every message stored
 * before the read began, so a short read is complete. Deliveries are numbered: a skipped number
 * (messages lost in transit), a deleted consumer or a lost pull makes the cursor continue on a new
 * consumer after the last message it received, so nothing is skipped or repeated.
 *
 * Each message also carries a `Strata-Positions` header listing the last position of every source
 * as of that message, and publishes are conditional on the stream's last sequence (and, within one
 * append, on the previous message's id). So the newest message always tells where the log ends and
 * where every source stands (`head`, `lastPosition`, the skip of re-appended changes, with no
 * limit in time), and concurrent appenders cannot interleave unseen: a conditional publish that
 * loses a race is refused, reloaded and retried. The message id (`Nats-Msg-Id`) is the run's last
 * position, its first offset and a digest of the message, so JetStream's duplicate window drops a
 * repeat of exactly that message. (JetStream checks the id before the expected sequence, so an id
 * naming only a position would let a different message pass as stored.) The positions header
 * grows by about 90 bytes per source, which suits logs fed by tens of databases.
 *
 * A message without `Strata-Offset` (written before changes were batched) reads as one change at
 * the offset of its stream sequence. When every message has aged out (`maxAge`) the log no longer
 * knows its last offset; the next append then continues above any offset the stream can have
 * held (its last sequence times 10,000), so offsets are never reused, but they jump once.
 *
 * Durability: JetStream acknowledges a publish once the message is in the stream's store, and an
 * append resolves only when every message of it was acknowledged. With file storage it survives a
 * restart or a kill of the server; an operating-system crash can lose the newest writes unless the
 * server syncs every write (`sync_interval: always`, nats-server 2.10+) or the stream has replicas
 * in a cluster. An append that fails part-way (timeout, lost connection) may have stored its first
 * messages: appending the same changes again stores only the rest.
 */
import { createHash } from 'node:crypto';
import {
  AckPolicy,
  type Consumer,
  type ConsumerConfig,
  type ConsumerInfo,
  type ConsumerMessages,
  DeliverPolicy,
  type JsMsg,
  type MsgRequest,
  type StoredMsg,
  type StreamInfo,
} from '@nats-io/jetstream';
import { headers as createHeaders, type MsgHdrs, type Subscription } from '@nats-io/transport-node';
import { Mutex, withTimeout } from '../../core/async.js';
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
import { sleep, systemClock, type TimerHandle } from '../../core/clock.js';
import { type Duration, parseDuration } from '../../core/duration.js';
import {
  ClosedError,
  ConfigError,
  isStrataError,
  StrataError,
  ValidationError,
  type ValidationIssue,
} from '../../core/errors.js';
import { assertStreamName, assertSubject, connectNats, type NatsClient } from './nats-client.js';
import { hasJetStreamCode, JetStreamErrorCodes, toNatsError } from './nats-errors.js';

/** Options for `createNatsChangeLog`. */
export interface NatsChangeLogOptions {
  /** The JetStream stream's name, also the log's name: no whitespace, `.`, `*`, `>`, `/` or `\`. */
  name: string;
  /** A client the caller connected and will close; `close()` leaves it open. Not with `url`. */
  client?: NatsClient;
  /**
   * Server URL(s) of a connection the log opens and closes itself (default `NATS_URL`, else
   * `nats://127.0.0.1:4222`). Not with `client`.
   */
  url?: string | readonly string[];
  /** Bound on the first connection the log opens itself (default 5s). */
  connectTimeout?: Duration;
  /** Delay between reconnect attempts of the log's own connection (default 2s). */
  reconnectWait?: Duration;
  /** Bound on each publish acknowledgement, stream request and read (default 5s). */
  requestTimeout?: Duration;
  /** Subject root: tables are published on `<subjectPrefix>.<table>` (default `name`). */
  subjectPrefix?: string;
  /**
   * Where the stream keeps messages (default `file`). `memory` loses the log when the server
   * restarts, so an append is then not durable when it resolves.
   */
  storage?: 'file' | 'memory';
  /**
   * Oldest message kept (default unlimited). Positions are remembered by the newest message, so
   * once every message has aged out the log no longer knows which positions it had.
   */
  maxAge?: Duration;
  /** Window in which JetStream drops a repeated message as a duplicate (default 2m, at most `maxAge`). */
  duplicateWindow?: Duration;
  /** How often `watch` also checks the stream's last sequence, to cover missed wake-ups (default 2s). */
  pollInterval?: Duration;
  /**
   * Most changes one JetStream message carries (default 500, 1 to 10,000); a message also stays
   * under the server's max payload. Larger messages append and read faster, up to a point.
   */
  maxChangesPerMessage?: number;
}

/** A change log on a JetStream stream. */
export interface NatsChangeLog extends ChangeLog {
  /** The stream holding the log. */
  readonly stream: string;
  /** The subject root: table `t` is published on `<subjectPrefix>.t`. */
  readonly subjectPrefix: string;
  /** The client in use: the caller's, or the one the log opened. */
  readonly client: NatsClient;
  /** The subject of `table`'s changes; `E_VALIDATION` when the table name cannot be part of a subject. */
  subjectOf(table: string): string;
}

/** The header on every message that lists the last position of every source, comma-separated. */
const POSITIONS_HEADER = 'Strata-Positions';
/** The header naming the offset of a message's first change. */
const OFFSET_HEADER = 'Strata-Offset';
/** The header counting a message's changes. */
const COUNT_HEADER = 'Strata-Count';
/** JetStream's `err_code` for a conditional publish whose expected last message id did not match. */
const WRONG_LAST_MSG_ID = 10070;
/** The upper bound of `maxChangesPerMessage`, also what an emptied stream's offsets continue above. */
const MAX_CHANGES_PER_MESSAGE = 10_000;
const DEFAULT_CHANGES_PER_MESSAGE = 500;
/** Publishes in flight at once within one append, each waiting for its acknowledgement. */
const PIPELINE_MESSAGES = 64;
/** Payload bytes in flight at once within one append. */
const PIPELINE_BYTES = 16 * 1024 * 1024;
/** Conflicts with other appenders one append tolerates before it gives up. */
const MAX_CONFLICTS = 32;
/** Bytes reserved for the headers strata adds to a message besides the positions. */
const HEADER_RESERVE = 512;
/** Most messages a read cursor asks the server for at once (and so holds in its buffer). */
const MAX_FLOW_MESSAGES = 64;
/** Messages a read cursor asks for before it has seen how large the log's messages are. */
const INITIAL_FLOW_MESSAGES = 16;
/** Payload bytes a read cursor aims to hold at most: its pulls ask for about this much. */
const FLOW_BYTES = 4 * 1024 * 1024;
/** How long one pull of a read cursor waits on the server for messages before it is renewed. */
const FLOW_EXPIRES_MS = 15_000;
/** Heartbeat interval of a waiting pull: two missed ones mean the pull is lost. */
const FLOW_HEARTBEAT_MS = 5_000;
/** Consumers one read creates at most when they fail or go away under it. */
const MAX_ATTACHES = 3;
/** Message spans (sequence -> offsets) remembered to find where a read starts. */
const SPAN_CACHE = 4096;
/** Idle read cursors kept for the next sequential read. */
const MAX_READERS = 4;
/** A read cursor idle longer than this is dropped (its consumer deleted, its buffer released). */
const READER_REUSE_MS = 30_000;
/** The server removes a read cursor's consumer after this long without a pull. */
const READER_INACTIVE_MS = 120_000;
/** How far past its position (in stream sequences) a read cursor is still reused. */
const READER_REUSE_GAP = 64;
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
const NANOS_PER_MS = 1_000_000;
const TOKEN_FORBIDDEN = /[\s*>]/;

/**
 * Opens a change log on the JetStream stream `name`, creating the stream (subjects
 * `<subjectPrefix>.>`, file storage) or updating its limits when it exists. An append resolves
 * once JetStream stored every message (durable across server restarts with file storage).
 * Rejects with `E_CONFIG` naming the option for invalid options (before any connection), and with
 * `E_CONNECTION` when the server cannot be reached.
 */
export async function createNatsChangeLog(options: NatsChangeLogOptions): Promise<NatsChangeLog> {
  const opts = (options ?? {}) as NatsChangeLogOptions;
  assertStreamName(opts.name, 'name');
  const prefix = opts.subjectPrefix ?? opts.name;
  assertSubject(prefix, 'subjectPrefix');
  const storage = opts.storage ?? 'file';
  if (storage !== 'file' && storage !== 'memory') throw new ConfigError('storage', 'must be file or memory');
  const maxAgeMs = parseDuration(opts.maxAge ?? 0, 'maxAge');
  const duplicateMs = parseDuration(opts.duplicateWindow ?? '2m', 'duplicateWindow', { allowZero: false });
  if (opts.duplicateWindow !== undefined && maxAgeMs > 0 && duplicateMs > maxAgeMs) {
    throw new ConfigError('duplicateWindow', 'must not exceed maxAge');
  }
  const pollMs = parseDuration(opts.pollInterval ?? '2s', 'pollInterval', { allowZero: false });
  const requestMs = parseDuration(opts.requestTimeout ?? '5s', 'requestTimeout', { allowZero: false });
  const perMessage = opts.maxChangesPerMessage ?? DEFAULT_CHANGES_PER_MESSAGE;
  if (
    typeof perMessage !== 'number' ||
    !Number.isInteger(perMessage) ||
    perMessage < 1 ||
    perMessage > MAX_CHANGES_PER_MESSAGE
  ) {
    throw new ConfigError('maxChangesPerMessage', 'must be an integer from 1 to 10000');
  }

  let client: NatsClient;
  let owned: boolean;
  if (opts.client !== undefined) {
    if (opts.url !== undefined) throw new ConfigError('url', 'give either url or client, not both');
    const c = opts.client as Partial<NatsClient> | null;
    if (typeof c !== 'object' || c === null || typeof c.ensureStream !== 'function' || !c.connection) {
      throw new ConfigError('client', 'expected a client from connectNats');
    }
    for (const option of ['connectTimeout', 'reconnectWait'] as const) {
      if (opts[option] !== undefined)
        throw new ConfigError(option, 'applies only to a connection the log opens');
    }
    client = opts.client;
    owned = false;
  } else {
    client = await connectNats({
      ...(opts.url === undefined ? {} : { url: opts.url }),
      name: `strata-change-log-${opts.name}`,
      requestTimeout: requestMs,
      ...(opts.connectTimeout === undefined ? {} : { connectTimeout: opts.connectTimeout }),
      ...(opts.reconnectWait === undefined ? {} : { reconnectWait: opts.reconnectWait }),
    });
    owned = true;
  }
  try {
    await client.ensureStream({
      name: opts.name,
      subjects: [`${prefix}.>`],
      storage,
      ...(maxAgeMs > 0 ? { maxAge: maxAgeMs } : {}),
      ...(opts.duplicateWindow === undefined && maxAgeMs > 0 ? {} : { duplicateWindow: duplicateMs }),
    });
  } catch (err) {
    if (owned) await client.close();
    throw err;
  }
  return new NatsChangeLogImpl({ client, owned, stream: opts.name, prefix, pollMs, requestMs, perMessage });
}

/** Where the log ends as this instance knows it: the newest message, the next offset, every source's last position. */
interface Tip {
  seq: number;
  nextOffset: number;
  positions: Map<string, string>;
}

/** The offsets a message holds: `count` changes from `offset`, stored at stream sequence `seq`. */
interface Span {
  seq: number;
  offset: number;
  count: number;
}

/** A change checked and encoded for publishing. */
interface Prepared {
  /** Its index in the batch given to `append`. */
  index: number;
  source: string;
  position: string;
  table: string;
  text: string;
  bytes: number;
}

/** The changes of one message to publish: a run of one table. */
interface Run {
  subject: string;
  changes: Prepared[];
  bytes: number;
}

/** A message a read cursor received and the caller has not fully taken yet. */
interface Fetched {
  subject: string;
  span: Span;
  data: Uint8Array;
  /** Decoded entries not handed out yet, when a read stopped inside this message. */
  rest?: LogEntry[];
}

/** One pull of a read cursor in progress. */
interface Flow {
  messages: ConsumerMessages | undefined;
}

/**
 * A read cursor, kept between sequential reads: a pull consumer whose pulls stay outstanding, so
 * the server pushes each message into the buffer as soon as the stream stored it. Only messages
 * a consumer delivered (so stored) ever enter the buffer.
 */
interface Reader {
  /** The subject filter, or undefined for every table. */
  filter: string | undefined;
  /** Received messages not fully taken yet, in stream order. */
  buffer: Fetched[];
  /** The stream sequence after the last message received: where a new consumer continues. */
  next: number;
  /** The consumer in use; undefined before the first read and after a fault (a read makes a new one). */
  consumer: Consumer | undefined;
  name: string | undefined;
  /** The consumer's delivery count so far: each delivery must be the next one. */
  delivered: number;
  /** Matching messages the server still had after the last delivery (or when the consumer was made). */
  pending: number;
  /** The pull in progress, if any. */
  flow: Flow | undefined;
  /** Reads waiting for a delivery or a fault. */
  waiters: Array<() => void>;
  usedAt: number;
  /** True while a read holds it (then it is out of the pool). */
  busy: boolean;
  dropped: boolean;
  /** The server handshake it was created under: a reconnect (perhaps to a restarted server) retires it. */
  server: unknown;
}

interface Settings {
  client: NatsClient;
  owned: boolean;
  stream: string;
  prefix: string;
  pollMs: number;
  requestMs: number;
  perMessage: number;
}

/** True when `table` is one or more dot-separated subject tokens without whitespace or wildcards. */
function isSubjectSuffix(table: unknown): table is string {
  return (
    typeof table === 'string' &&
    table.length > 0 &&
    table.split('.').every((token) => token.length > 0 && !TOKEN_FORBIDDEN.test(token))
  );
}

function parsePositions(header: MsgHdrs | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const token of header?.get(POSITIONS_HEADER).split(',') ?? []) {
    if (isPosition(token)) out.set(token.slice(0, token.indexOf('@')), token);
  }
  return out;
}

/** The offsets the message at `seq` holds; a message without offset headers is one change at its sequence. */
function spanOf(seq: number, header: MsgHdrs | undefined): Span {
  const offset = Number(header?.get(OFFSET_HEADER) || Number.NaN);
  const count = Number(header?.get(COUNT_HEADER) || Number.NaN);
  if (Number.isSafeInteger(offset) && offset >= 1 && Number.isSafeInteger(count) && count >= 1) {
    return { seq, offset, count };
  }
  return { seq, offset: seq, count: 1 };
}

function endOf(span: Span): number {
  return span.offset + span.count - 1;
}

/** The first offset after a stream whose messages are all gone: above any offset it can have held. */
function offsetAfterEmpty(lastSeq: number): number {
  return lastSeq === 0 ? 1 : lastSeq * MAX_CHANGES_PER_MESSAGE + 1;
}

function checkReadArguments(after: unknown, limit: unknown): void {
  if (typeof after !== 'number' || !Number.isSafeInteger(after) || after < 0) {
    throw new ConfigError('after', 'must be a non-negative integer offset');
  }
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1) {
    throw new ConfigError('limit', 'must be a positive integer');
  }
}

/**
 * True when plain `JSON.stringify` encodes `value` exactly as `serializeChange` does: no bigints,
 * byte arrays, Buffer-shaped objects or objects with their own `toJSON` (dates aside).
 */
function isPlainJson(value: unknown, depth = 0): boolean {
  if (value === null) return true;
  switch (typeof value) {
    case 'string':
    case 'number':
    case 'boolean':
    case 'undefined':
      return true;
    case 'object':
      break;
    default:
      return false;
  }
  if (depth > 32) return false;
  if (Array.isArray(value)) {
    for (const item of value) if (!isPlainJson(item, depth + 1)) return false;
    return true;
  }
  if (value instanceof Date) return true;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  const record = value as Record<string, unknown>;
  if (record.type === 'Buffer') return false;
  for (const key in record) if (!isPlainJson(record[key], depth + 1)) return false;
  return true;
}

/** The wire text of `change`: `serializeChange`, skipping its replacer when nothing needs it. */
function encodeChange(change: Change): string {
  return isPlainJson(change) ? JSON.stringify(change) : serializeChange(change);
}

function corrupt(stream: string, seq: number, cause?: unknown): StrataError {
  return new StrataError('E_CORRUPT', 'a stored change could not be decoded', {
    ...(cause === undefined ? {} : { cause }),
    details: { backend: 'nats', stream, sequence: seq },
  });
}

/** The entries of a message; `E_CORRUPT` when it does not hold the changes its headers announce. */
function decodeMessage(stream: string, message: Fetched): LogEntry[] {
  const { data, span } = message;
  const text = Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
  let parsed: unknown;
  try {
    // Only the codec's own markers need its reviver, which is several times slower than plain JSON.
    parsed = text.includes('"$b') ? deserializeChange(text) : JSON.parse(text);
  } catch (err) {
    throw corrupt(stream, span.seq, err);
  }
  const list = Array.isArray(parsed) ? parsed : [parsed];
  if (list.length !== span.count) throw corrupt(stream, span.seq);
  const entries = list as LogEntry[];
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i];
    if (typeof entry !== 'object' || entry === null) throw corrupt(stream, span.seq);
    entry.offset = span.offset + i;
  }
  return entries;
}

class NatsChangeLogImpl implements NatsChangeLog {
  readonly name: string;
  readonly stream: string;
  readonly subjectPrefix: string;
  readonly client: NatsClient;
  readonly #settings: Settings;
  readonly #mutex = new Mutex();
  /** Undefined until loaded, and again whenever an append could not tell where the stream ended. */
  #tip: Tip | undefined;
  /** Message spans by stream sequence, oldest first. */
  readonly #spans = new Map<number, Span>();
  /** Payload bytes per message, averaged over the messages read, to size the pulls of read cursors. */
  #messageBytesSeen: number | undefined;
  /** Idle read cursors, least recently used first. */
  #readers: Reader[] = [];
  /** Every read cursor not dropped yet, idle or held by a read. */
  readonly #live = new Set<Reader>();
  #sweepTimer: TimerHandle | undefined;
  #closing: Promise<void> | undefined;
  readonly #listeners = new Set<{ fn: () => void }>();
  #watching = false;
  #subscription: Subscription | undefined;
  /** Resolves once the subscription of the watchers is known to the server. */
  #subscribed: Promise<void> | undefined;
  #pollTimer: TimerHandle | undefined;
  #wakeQueued = false;
  #polledHead: number | undefined;

  constructor(settings: Settings) {
    this.#settings = settings;
    this.client = settings.client;
    this.name = settings.stream;
    this.stream = settings.stream;
    this.subjectPrefix = settings.prefix;
  }

  #assertOpen(): void {
    if (this.#closing !== undefined || this.client.closed) {
      throw new ClosedError('nats change log', { details: { stream: this.stream } });
    }
  }

  subjectOf(table: string): string {
    if (!isSubjectSuffix(table)) {
      throw new ValidationError([{ path: ['table'], message: 'not usable in a NATS subject' }], {
        subject: 'table',
      });
    }
    return `${this.subjectPrefix}.${table}`;
  }

  #endpoint(): { host?: string; port?: number } {
    const nc = this.client.connection;
    const server = nc.isClosed() ? '' : nc.getServer();
    const at = server.lastIndexOf(':');
    if (at <= 0) return {};
    return { host: server.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(server.slice(at + 1)) };
  }

  /** Runs one JetStream request under `requestTimeout`, with its failure as a strata error. */
  async #request<T>(
    operation: string,
    fn: () => Promise<T>,
    subject?: string,
    onTimeout?: () => void,
  ): Promise<T> {
    const name = `nats ${operation}`;
    try {
      return await withTimeout(fn(), this.#settings.requestMs, name, onTimeout ? { onTimeout } : {});
    } catch (err) {
      throw toNatsError(err, {
        operation: name,
        timeoutMs: this.#settings.requestMs,
        endpoint: this.#endpoint(),
        stream: this.stream,
        subject,
      });
    }
  }

  #maxPayload(): number {
    return this.client.connection.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
  }

  // -------------------------------------------------------------------------------------------
  // Appending

  /** Checks and encodes every change before anything is sent, so bad input never leaves a partial append. */
  #prepare(changes: readonly Change[]): Prepared[] {
    if (!Array.isArray(changes)) {
      throw new ValidationError([{ path: [], message: 'expected an array of changes' }], {
        subject: 'changes',
      });
    }
    const issues: ValidationIssue[] = [];
    const out: Prepared[] = [];
    changes.forEach((change: Change, index) => {
      if (typeof change !== 'object' || change === null) {
        issues.push({ path: [index], message: 'expected a change object' });
        return;
      }
      const position = change.position as unknown;
      if (!isPosition(position)) {
        issues.push({ path: [index, 'position'], message: 'not a position token' });
        return;
      }
      const source = position.slice(0, position.indexOf('@'));
      if (change.source !== source) {
        issues.push({ path: [index, 'source'], message: 'differs from the source of the position' });
      }
      if (!isSubjectSuffix(change.table)) {
        issues.push({
          path: [index, 'table'],
          message: 'not usable in a NATS subject: dot-separated tokens without whitespace, "*" or ">"',
        });
        return;
      }
      let text: string;
      try {
        text = encodeChange(change);
      } catch {
        issues.push({ path: [index], message: 'cannot be encoded' });
        return;
      }
      out.push({ index, source, position, table: change.table, text, bytes: Buffer.byteLength(text) });
    });
    if (issues.length > 0) {
      throw new ValidationError(issues, {
        subject: 'changes',
        details: { backend: 'nats', stream: this.stream },
      });
    }
    return out;
  }

  /** `E_VALIDATION` naming every change that cannot fit a message, given the headers it will carry. */
  #checkSizes(fresh: readonly Prepared[], headerBytes: number): void {
    const maxPayload = this.#maxPayload();
    const issues: ValidationIssue[] = [];
    for (const p of fresh) {
      if (p.bytes + 2 + headerBytes > maxPayload) {
        issues.push({ path: [p.index], message: "larger than the NATS server's max payload" });
      }
    }
    if (issues.length > 0) {
      throw new ValidationError(issues, {
        subject: 'changes',
        details: { backend: 'nats', stream: this.stream, maxPayload },
      });
    }
  }

  /** Cuts `fresh` into runs of one table, each within the change count and payload limits. */
  #runs(fresh: readonly Prepared[], headerBytes: number): Run[] {
    const budget = this.#maxPayload() - headerBytes;
    const runs: Run[] = [];
    let run: Run | undefined;
    let table = '';
    for (const p of fresh) {
      if (
        run !== undefined &&
        p.table === table &&
        run.changes.length < this.#settings.perMessage &&
        run.bytes + 1 + p.bytes <= budget
      ) {
        run.changes.push(p);
        run.bytes += 1 + p.bytes;
      } else {
        table = p.table;
        run = { subject: `${this.subjectPrefix}.${p.table}`, changes: [p], bytes: 2 + p.bytes };
        runs.push(run);
      }
    }
    return runs;
  }

  async append(changes: readonly Change[]): Promise<AppendResult> {
    this.#assertOpen();
    const prepared = this.#prepare(changes);
    if (prepared.length === 0) return { appended: 0, duplicates: 0, lastOffset: await this.head() };
    return this.#mutex.run(() => this.#append(prepared));
  }

  async #append(prepared: Prepared[]): Promise<AppendResult> {
    this.#assertOpen();
    let appended = 0;
    let duplicates = 0;
    let pending = prepared;
    let checked = false;
    let conflicts = 0;
    for (;;) {
      const tip = this.#tip ?? (await this.#loadTip());
      const positions = new Map(tip.positions);
      const fresh: Prepared[] = [];
      for (const p of pending) {
        const last = positions.get(p.source);
        // Tokens of one source compare as strings in position order.
        if (last !== undefined && p.position <= last) duplicates++;
        else {
          fresh.push(p);
          positions.set(p.source, p.position);
        }
      }
      if (fresh.length === 0) return { appended, duplicates, lastOffset: tip.nextOffset - 1 };
      let headerBytes = HEADER_RESERVE;
      for (const token of positions.values()) headerBytes += token.length + 1;
      if (!checked) {
        this.#checkSizes(fresh, headerBytes);
        checked = true;
      }
      const runs = this.#runs(fresh, headerBytes);
      let take = 0;
      let bytes = 0;
      while (take < runs.length && take < PIPELINE_MESSAGES && (take === 0 || bytes < PIPELINE_BYTES)) {
        bytes += runs[take]!.bytes;
        take++;
      }
      const outcome = await this.#publish(tip, runs.slice(0, take));
      appended += outcome.appended;
      duplicates += outcome.duplicates;
      if (outcome.error !== undefined) {
        this.#tip = undefined;
        throw outcome.error;
      }
      pending = [...outcome.unsent, ...runs.slice(take).flatMap((run) => run.changes)];
      if (pending.length === 0) {
        const lastOffset = this.#tip === undefined ? await this.head() : this.#tip.nextOffset - 1;
        return { appended, duplicates, lastOffset };
      }
      if (outcome.conflict) {
        conflicts++;
        if (conflicts >= MAX_CONFLICTS) {
          throw new StrataError('E_CONFLICT', 'nats: the change log stayed contended by other appenders', {
            details: { backend: 'nats', stream: this.stream, attempts: conflicts },
          });
        }
        // Lost a race: another appender stored first. Back off a little so racers spread out.
        await sleep(Math.floor(Math.random() * Math.min(50, 2 ** conflicts)));
      }
    }
  }

  /**
   * Publishes one message per run, pipelined: every publish is sent before the first
   * acknowledgement is awaited. Each is conditional on the message before it (its stream sequence,
   * and within the round also its message id), so a refused publish also refuses every later one,
   * and the headers of each stored message describe exactly what precedes it. A message id holds a
   * digest of the whole message, so a duplicate acknowledgement means this very message (same
   * offsets, same changes, same positions) is stored.
   */
  async #publish(
    tip: Tip,
    runs: Run[],
  ): Promise<{
    appended: number;
    duplicates: number;
    unsent: Prepared[];
    conflict: boolean;
    error?: unknown;
  }> {
    const js = this.client.jetstream;
    const positions = new Map(tip.positions);
    let offset = tip.nextOffset;
    let previousId = '';
    const spans: Span[] = [];
    const after: Map<string, string>[] = [];
    const sends = runs.map((run, i) => {
      for (const p of run.changes) positions.set(p.source, p.position);
      const count = run.changes.length;
      const positionsText = [...positions.values()].join(',');
      const payload = Buffer.from(`[${run.changes.map((p) => p.text).join(',')}]`);
      const digest = createHash('sha256')
        .update(`${run.subject}\n${offset}\n${positionsText}\n`)
        .update(payload)
        .digest('base64url')
        .slice(0, 22);
      const id = `${run.changes[count - 1]!.position}/${offset}/${digest}`;
      const headers = createHeaders();
      headers.set(OFFSET_HEADER, String(offset));
      headers.set(COUNT_HEADER, String(count));
      headers.set(POSITIONS_HEADER, positionsText);
      const expect =
        i === 0 ? { lastSequence: tip.seq } : { lastSequence: tip.seq + i, lastMsgID: previousId };
      previousId = id;
      spans.push({ seq: tip.seq + i + 1, offset, count });
      after.push(new Map(positions));
      offset += count;
      return this.#request(
        'publish',
        () =>
          js.publish(run.subject, payload, { msgID: id, expect, headers, timeout: this.#settings.requestMs }),
        run.subject,
      );
    });
    const results = await Promise.allSettled(sends);
    let appended = 0;
    let duplicates = 0;
    let conflict = false;
    let error: unknown;
    let intact = true;
    let stored: Tip | undefined;
    const unsent: Prepared[] = [];
    results.forEach((result, i) => {
      const run = runs[i]!;
      const span = spans[i]!;
      if (result.status === 'fulfilled') {
        if (result.value.duplicate) duplicates += run.changes.length;
        else appended += run.changes.length;
        if (result.value.seq !== span.seq) intact = false;
        if (intact) {
          stored = { seq: span.seq, nextOffset: span.offset + span.count, positions: after[i]! };
          this.#remember(span);
        }
        return;
      }
      intact = false;
      if (
        hasJetStreamCode(result.reason, JetStreamErrorCodes.WrongLastSequence) ||
        hasJetStreamCode(result.reason, JetStreamErrorCodes.WrongLastSequenceUnknown) ||
        hasJetStreamCode(result.reason, WRONG_LAST_MSG_ID)
      ) {
        conflict = true;
        unsent.push(...run.changes);
      } else {
        error ??= result.reason;
      }
    });
    // Every publish stored in order: this instance knows the stream's end. Otherwise reload it.
    this.#tip = intact ? stored : undefined;
    if (error !== undefined) return { appended, duplicates, unsent: [], conflict, error };
    return { appended, duplicates, unsent, conflict };
  }

  /** Reads the stream's newest message: its sequence, the next offset and the positions it carries. */
  async #loadTip(): Promise<Tip> {
    for (let attempt = 1; ; attempt++) {
      const last = await this.#lastMessage();
      if (last !== null) {
        const span = spanOf(last.seq, last.header);
        this.#remember(span);
        this.#tip = { seq: last.seq, nextOffset: endOf(span) + 1, positions: parsePositions(last.header) };
        return this.#tip;
      }
      // No message: the stream is empty, or everything in it aged out (its sequence still counts).
      const info = await this.#streamInfo();
      if (info.state.messages === 0 || attempt >= 3) {
        const seq = info.state.last_seq;
        this.#tip = { seq, nextOffset: offsetAfterEmpty(seq), positions: new Map() };
        return this.#tip;
      }
    }
  }

  #lastMessage(): Promise<StoredMsg | null> {
    return this.#request('getMessage', () =>
      this.client.manager.streams.getMessage(this.stream, { last_by_subj: `${this.subjectPrefix}.>` }),
    );
  }

  async #streamInfo(): Promise<StreamInfo> {
    const info = await this.client.streamInfo(this.stream);
    if (info === undefined) throw this.#notFound();
    return info;
  }

  #notFound(): StrataError {
    return new StrataError('E_NOT_FOUND', `nats: stream "${this.stream}" not found`, {
      details: { backend: 'nats', stream: this.stream },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Finding offsets

  /** Records which offsets the message at `span.seq` holds, forgetting the oldest when there are many. */
  #remember(span: Span): void {
    this.#spans.delete(span.seq);
    this.#spans.set(span.seq, span);
    if (this.#spans.size > SPAN_CACHE) {
      let drop = SPAN_CACHE / 4;
      for (const seq of this.#spans.keys()) {
        if (drop-- === 0) break;
        this.#spans.delete(seq);
      }
    }
  }

  /** The first message at or after stream sequence `seq`, as a span, or undefined when there is none. */
  async #probe(seq: number): Promise<Span | undefined> {
    // STREAM.MSG.GET takes next_by_subj since nats-server 2.9; nats.js types it for direct gets only.
    const query = { seq, next_by_subj: `${this.subjectPrefix}.>` } as unknown as MsgRequest;
    const message = await this.#request('getMessage', () =>
      this.client.manager.streams.getMessage(this.stream, query),
    );
    if (message === null) return undefined;
    const span = spanOf(message.seq, message.header);
    this.#remember(span);
    return span;
  }

  /**
   * A stream sequence to read from so that the first message delivered at or after it holding an
   * offset of at least `target` is the first such message in the stream: the sequence of the
   * message holding `target` when this instance has seen it, else found by binary search.
   */
  async #locate(target: number): Promise<number> {
    let below: Span | undefined;
    let above: Span | undefined;
    for (const span of this.#spans.values()) {
      if (span.offset <= target && target <= endOf(span)) return span.seq;
      if (endOf(span) < target) {
        if (below === undefined || span.seq > below.seq) below = span;
      } else if (above === undefined || span.seq < above.seq) above = span;
    }
    if (below === undefined && target === 1) return 1;
    // Every message holds at least one change: the one holding `target` is at most this far on.
    if (below !== undefined && target - endOf(below) <= 2) return below.seq + 1;
    const info = await this.#streamInfo();
    const { first_seq: first, last_seq: last, messages } = info.state;
    if (messages === 0) return last + 1;
    let lo = Math.max(first, below === undefined ? 1 : below.seq + 1);
    let hi = last + 1;
    if (above !== undefined) hi = Math.min(hi, above.seq);
    else if (lo <= last) {
      // Readers often ask past the end: one look at the newest message settles that.
      const newest = await this.#probe(last);
      if (newest === undefined || endOf(newest) < target) return last + 1;
      hi = newest.seq;
    }
    // A hint only: were sequences missing in between, reading from lower down is still correct.
    if (below !== undefined) hi = Math.min(hi, below.seq + (target - endOf(below)));
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      const span = await this.#probe(mid);
      if (span === undefined || span.seq >= hi) hi = mid;
      else if (endOf(span) < target) lo = span.seq + 1;
      else hi = mid;
    }
    return lo;
  }

  // -------------------------------------------------------------------------------------------
  // Reading

  async read(after: number, limit: number, options: ReadOptions = {}): Promise<LogEntry[]> {
    this.#assertOpen();
    checkReadArguments(after, limit);
    const tables = options?.tables;
    if (tables !== undefined && !Array.isArray(tables))
      throw new ConfigError('tables', 'must be an array of names');
    // A name that cannot be part of a subject was never appended: it matches nothing.
    const subjects = tables?.filter(isSubjectSuffix).map((t) => `${this.subjectPrefix}.${t}`);
    if (subjects !== undefined && subjects.length === 0) return [];
    // One table is filtered by the server; several by us (filter_subjects needs nats-server 2.10).
    const filter = subjects?.length === 1 ? subjects[0] : undefined;
    const wanted = subjects !== undefined && subjects.length > 1 ? new Set(subjects) : undefined;
    const start = await this.#locate(after + 1);
    const reader = this.#takeReader(filter, start) ?? this.#newReader(filter, start);
    try {
      const entries = await this.#readWith(reader, start, after, limit, wanted);
      this.#releaseReader(reader);
      return entries;
    } catch (err) {
      this.#dropReader(reader);
      throw err;
    }
  }

  /**
   * Takes entries from the cursor's buffer, waiting for its pull to deliver more while the server
   * holds more. A short result holds every matching entry stored before the read began: the
   * consumer's own count (at creation, or one info request) tells which delivery covers them.
   */
  async #readWith(
    reader: Reader,
    start: number,
    after: number,
    limit: number,
    wanted: Set<string> | undefined,
  ): Promise<LogEntry[]> {
    const out: LogEntry[] = [];
    let target = after + 1;
    /** The delivery count that covers every message stored before this read began, once known. */
    let needed: number | undefined;
    let attaches = 0;
    for (;;) {
      while (reader.buffer.length > 0 && out.length < limit) {
        const message = reader.buffer[0]!;
        if (
          message.span.seq < start ||
          endOf(message.span) < target ||
          (wanted !== undefined && !wanted.has(message.subject))
        ) {
          reader.buffer.shift();
          continue;
        }
        const entries = this.#entriesOf(message, target);
        const room = limit - out.length;
        if (entries.length <= room) {
          for (const entry of entries) out.push(entry);
          reader.buffer.shift();
        } else {
          for (let i = 0; i < room; i++) out.push(entries[i]!);
          message.rest = entries.slice(room);
        }
        target = out[out.length - 1]!.offset + 1;
      }
      if (out.length >= limit) break;
      const consumer = reader.consumer;
      if (consumer === undefined) {
        if (reader.dropped) throw new ClosedError('nats change log', { details: { stream: this.stream } });
        if (++attaches > MAX_ATTACHES) throw this.#lost();
        await this.#attach(reader);
        needed = reader.delivered + reader.pending;
        continue;
      }
      this.#pump(reader);
      if (needed === undefined && reader.pending === 0) {
        let info: ConsumerInfo;
        try {
          info = await this.#request('read', () => consumer.info());
        } catch (err) {
          if (['E_TIMEOUT', 'E_CONNECTION', 'E_CLOSED'].some((code) => isStrataError(err, code))) throw err;
          // The server removed the consumer: continue on a new one.
          if (reader.consumer === consumer) this.#detach(reader);
          continue;
        }
        if (reader.consumer === consumer) needed = info.delivered.consumer_seq + info.num_pending;
        continue;
      }
      if (needed !== undefined && reader.delivered >= needed) break;
      // Deliveries are due; a pull that brings none within the bound is lost: use a new consumer.
      if (!(await this.#delivery(reader)) && reader.consumer === consumer) this.#detach(reader);
    }
    return out;
  }

  /** The entries of `message` from offset `target` on, each handed out once. */
  #entriesOf(message: Fetched, target: number): LogEntry[] {
    const rest = message.rest;
    message.rest = undefined;
    if (rest !== undefined && rest.length > 0 && rest[0]!.offset <= target) {
      return rest.slice(target - rest[0]!.offset);
    }
    const entries = decodeMessage(this.stream, message);
    return target > message.span.offset ? entries.slice(target - message.span.offset) : entries;
  }

  /** `E_QUERY` for a read whose consumers kept failing under it. */
  #lost(): StrataError {
    return new StrataError('E_QUERY', 'nats: a read could not keep a consumer on the stream', {
      details: { backend: 'nats', stream: this.stream },
    });
  }

  /** An idle cursor of `filter` that can continue to read from `start`, taken out of the pool. */
  #takeReader(filter: string | undefined, start: number): Reader | undefined {
    const server = this.client.connection.info;
    for (let i = this.#readers.length - 1; i >= 0; i--) {
      const reader = this.#readers[i]!;
      if (reader.server !== server) {
        this.#readers.splice(i, 1);
        this.#dropReader(reader);
        continue;
      }
      if (reader.filter !== filter) continue;
      const first = reader.buffer[0]?.span.seq ?? reader.next;
      // Past its position only a little: what it delivers before `start` is skipped.
      if (start < first || start - reader.next > READER_REUSE_GAP) continue;
      this.#readers.splice(i, 1);
      reader.busy = true;
      return reader;
    }
    return undefined;
  }

  /** A cursor without a consumer yet: the read that holds it creates one from `start`. */
  #newReader(filter: string | undefined, start: number): Reader {
    const reader: Reader = {
      filter,
      buffer: [],
      next: start,
      consumer: undefined,
      name: undefined,
      delivered: 0,
      pending: 0,
      flow: undefined,
      waiters: [],
      usedAt: systemClock.now(),
      busy: true,
      dropped: false,
      server: this.client.connection.info,
    };
    this.#live.add(reader);
    return reader;
  }

  #releaseReader(reader: Reader): void {
    reader.busy = false;
    if (this.#closing !== undefined) {
      this.#dropReader(reader);
      return;
    }
    reader.usedAt = systemClock.now();
    this.#readers.push(reader);
    while (this.#readers.length > MAX_READERS) this.#dropReader(this.#readers.shift()!);
    this.#pump(reader);
    this.#scheduleSweep();
  }

  /** Drops pooled cursors idle too long, checking again while any is left. */
  #scheduleSweep(): void {
    if (this.#sweepTimer !== undefined) return;
    this.#sweepTimer = systemClock.setTimeout(() => {
      this.#sweepTimer = undefined;
      const now = systemClock.now();
      this.#readers = this.#readers.filter((r) => {
        if (now - r.usedAt <= READER_REUSE_MS) return true;
        this.#dropReader(r);
        return false;
      });
      if (this.#readers.length > 0) this.#scheduleSweep();
    }, READER_REUSE_MS);
  }

  #dropReader(reader: Reader): void {
    reader.dropped = true;
    this.#live.delete(reader);
    this.#detach(reader);
    reader.buffer = [];
  }

  /**
   * Gives up the cursor's consumer (its pull stops, the server deletes it) and keeps what it
   * received: a read continues on a new consumer from the sequence after the last message received.
   */
  #detach(reader: Reader): void {
    const { flow, name } = reader;
    reader.flow = undefined;
    reader.consumer = undefined;
    reader.name = undefined;
    reader.delivered = 0;
    reader.pending = 0;
    void flow?.messages?.close().catch(() => undefined);
    if (name !== undefined && !this.client.connection.isClosed()) {
      this.client.manager.consumers.delete(this.stream, name).catch(() => undefined);
    }
    this.#signal(reader);
  }

  /**
   * Gives the cursor a consumer from the sequence after its last message: ephemeral,
   * unacknowledged, in memory, removed by the server when not pulled from for a while. Its info
   * tells how many messages wait.
   */
  async #attach(reader: Reader): Promise<void> {
    const config: Partial<ConsumerConfig> = {
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: reader.next,
      inactive_threshold: READER_INACTIVE_MS * NANOS_PER_MS,
      mem_storage: true,
      num_replicas: 1,
      ...(reader.filter === undefined ? {} : { filter_subject: reader.filter }),
    };
    const info = await this.#request('read', () => this.client.manager.consumers.add(this.stream, config));
    if (reader.dropped || this.#closing !== undefined) {
      if (!this.client.connection.isClosed()) {
        this.client.manager.consumers.delete(this.stream, info.name).catch(() => undefined);
      }
      throw new ClosedError('nats change log', { details: { stream: this.stream } });
    }
    reader.consumer = this.client.jetstream.consumers.getConsumerFromInfo(info);
    reader.name = info.name;
    reader.server = this.client.connection.info;
    reader.delivered = info.delivered.consumer_seq;
    reader.pending = info.num_pending;
    this.#pump(reader);
  }

  /** Messages a cursor's pull asks for: enough to stay ahead of a reader, about `FLOW_BYTES` at most. */
  #flowCapacity(): number {
    const size = this.#messageBytesSeen;
    if (size === undefined) return INITIAL_FLOW_MESSAGES;
    return Math.max(2, Math.min(MAX_FLOW_MESSAGES, Math.floor(FLOW_BYTES / Math.max(1, size))));
  }

  /**
   * Keeps a pull outstanding while the cursor's buffer has room for half its capacity or more, so
   * the server pushes each stored message as soon as it is stored. A full buffer pulls nothing:
   * memory stays bounded whether or not anyone reads.
   */
  #pump(reader: Reader): void {
    const consumer = reader.consumer;
    if (consumer === undefined || reader.flow !== undefined || reader.dropped) return;
    if (this.#closing !== undefined || this.client.connection.isClosed()) return;
    const capacity = this.#flowCapacity();
    const room = capacity - reader.buffer.length;
    if (room < Math.ceil(capacity / 2)) return;
    const flow: Flow = { messages: undefined };
    reader.flow = flow;
    void this.#runFlow(reader, consumer, flow, room);
  }

  async #runFlow(reader: Reader, consumer: Consumer, flow: Flow, count: number): Promise<void> {
    let failed = false;
    try {
      const messages = await consumer.fetch({
        max_messages: count,
        expires: FLOW_EXPIRES_MS,
        idle_heartbeat: FLOW_HEARTBEAT_MS,
      });
      flow.messages = messages;
      if (reader.flow !== flow) {
        await messages.close();
        return;
      }
      for await (const m of messages) {
        if (reader.flow !== flow) break;
        if (!this.#receive(reader, m)) {
          failed = true;
          break;
        }
      }
    } catch {
      // The pull failed: the consumer is gone, heartbeats stopped or the connection closed.
      failed = true;
    }
    if (reader.flow !== flow) return;
    reader.flow = undefined;
    if (failed) this.#detach(reader);
    else {
      this.#pump(reader);
      this.#signal(reader);
    }
  }

  /**
   * Takes one delivery into the cursor's buffer and wakes the watchers: it is stored. Unacknowledged
   * deliveries are never repeated, so one that skips a delivery number means messages were lost in
   * transit: false, and the cursor continues on a new consumer after its last message.
   */
  #receive(reader: Reader, m: JsMsg): boolean {
    const info = m.info;
    if (info.deliverySequence !== reader.delivered + 1 || m.seq < reader.next) return false;
    reader.delivered = info.deliverySequence;
    reader.next = m.seq + 1;
    reader.pending = info.pending;
    const span = spanOf(m.seq, m.headers);
    this.#remember(span);
    const size = m.data.byteLength;
    const seen = this.#messageBytesSeen;
    this.#messageBytesSeen = seen === undefined ? size : seen * 0.75 + size * 0.25;
    reader.buffer.push({ subject: m.subject, span, data: m.data });
    this.#signal(reader);
    if (this.#listeners.size > 0) this.#wake();
    return true;
  }

  #signal(reader: Reader): void {
    const waiters = reader.waiters;
    if (waiters.length === 0) return;
    reader.waiters = [];
    for (const resolve of waiters) resolve();
  }

  /** Resolves true at the cursor's next delivery or fault, false when none came within `requestTimeout`. */
  #delivery(reader: Reader): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const timer = systemClock.setTimeout(() => {
        reader.waiters = reader.waiters.filter((w) => w !== done);
        resolve(false);
      }, this.#settings.requestMs);
      const done = () => {
        systemClock.clearTimeout(timer);
        resolve(true);
      };
      reader.waiters.push(done);
    });
  }

  async head(): Promise<number> {
    this.#assertOpen();
    const info = await this.#streamInfo();
    const lastSeq = info.state.last_seq;
    if (info.state.messages === 0) return offsetAfterEmpty(lastSeq) - 1;
    const known = this.#spans.get(lastSeq);
    if (known !== undefined) return endOf(known);
    const last = await this.#lastMessage();
    if (last === null) return offsetAfterEmpty(lastSeq) - 1;
    const span = spanOf(last.seq, last.header);
    this.#remember(span);
    return endOf(span);
  }

  async lastPosition(source: string): Promise<Position | undefined> {
    this.#assertOpen();
    assertSourceName(source);
    const last = await this.#lastMessage();
    return parsePositions(last?.header).get(source) as Position | undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Watching and closing

  watch(listener: () => void): () => void {
    this.#assertOpen();
    if (typeof listener !== 'function') throw new ConfigError('listener', 'must be a function');
    const entry = { fn: listener };
    this.#listeners.add(entry);
    if (!this.#watching) this.#startWatching();
    // Entries may have been appended before the subscription was in place: call once when it is.
    void this.#subscribed?.then(() => {
      if (this.#listeners.has(entry)) callSafely(entry.fn);
    });
    return () => {
      if (this.#listeners.delete(entry) && this.#listeners.size === 0) this.#stopWatching();
    };
  }

  /**
   * Listens to the stream's subjects on core NATS (every publish passes there, including those of
   * other processes) and polls the stream's last sequence as a fallback for messages missed while
   * disconnected. The subscription receives whole messages; it is one per log instance, however
   * many listeners watch.
   */
  #startWatching(): void {
    const nc = this.client.connection;
    try {
      this.#subscription = nc.subscribe(`${this.subjectPrefix}.>`, { callback: () => this.#wakeFromCore() });
      this.#subscribed = nc.flush().catch(() => undefined);
    } catch {
      // The connection is closed: polling is all that is left, and it reports nothing either.
      this.#subscribed = Promise.resolve();
    }
    this.#watching = true;
    this.#polledHead = undefined;
    const poll = async () => {
      try {
        const info = await this.#streamInfo();
        const last = info.state.last_seq;
        if (this.#polledHead !== undefined && last !== this.#polledHead) this.#wake();
        this.#polledHead = last;
      } catch {
        // The server is away; the next poll or the subscription will tell when it is back.
      }
      if (this.#watching) this.#pollTimer = systemClock.setTimeout(poll, this.#settings.pollMs);
    };
    this.#pollTimer = systemClock.setTimeout(poll, this.#settings.pollMs);
  }

  #stopWatching(): void {
    try {
      this.#subscription?.unsubscribe();
    } catch {
      // Already gone with its connection.
    }
    this.#watching = false;
    this.#subscription = undefined;
    this.#subscribed = undefined;
    if (this.#pollTimer !== undefined) systemClock.clearTimeout(this.#pollTimer);
    this.#pollTimer = undefined;
  }

  /**
   * Wakes the watchers for a message published on the stream's subjects, unless an unfiltered
   * cursor's pull is outstanding: it wakes them when the message is stored, so readers find it.
   */
  #wakeFromCore(): void {
    const server = this.client.connection.info;
    for (const reader of this.#live) {
      if (reader.filter === undefined && reader.flow !== undefined && reader.server === server) return;
    }
    this.#wake();
  }

  /** Calls the listeners once for a burst: the messages of one socket read wake them once. */
  #wake(): void {
    if (this.#wakeQueued) return;
    this.#wakeQueued = true;
    queueMicrotask(() => {
      this.#wakeQueued = false;
      for (const entry of [...this.#listeners]) callSafely(entry.fn);
    });
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    this.#listeners.clear();
    this.#stopWatching();
    // Let an append in progress finish before the connection goes.
    await this.#mutex.run(() => undefined);
    const names: string[] = [];
    for (const reader of this.#live) {
      if (reader.name !== undefined) names.push(reader.name);
      reader.name = undefined;
      this.#dropReader(reader);
    }
    this.#readers = [];
    if (this.#sweepTimer !== undefined) systemClock.clearTimeout(this.#sweepTimer);
    this.#sweepTimer = undefined;
    if (names.length > 0 && !this.client.connection.isClosed()) {
      // Best effort: the server removes a consumer nobody pulls from anyway.
      await withTimeout(
        Promise.allSettled(names.map((name) => this.client.manager.consumers.delete(this.stream, name))),
        this.#settings.requestMs,
        'nats close',
      ).catch(() => undefined);
    }
    if (this.#settings.owned) await this.client.close();
  }
}

function callSafely(fn: () => void): void {
  try {
    fn();
  } catch {
    // A failing listener must not stop the others; it learns about entries by reading anyway.
  }
}
