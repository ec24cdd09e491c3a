import {
  ConnectionError,
  type Endpoint,
  isStrataError,
  StrataError,
  TimeoutError,
} from '../../core/errors.js';

/** What was being done when a Redis call failed, for `toRedisError`. */
export interface RedisErrorContext {
  /** The server; never holds a password. */
  endpoint: Endpoint;
  /** The command or step that failed, such as `mget`, `scan` or `connect`. */
  operation: string;
  /** The bound that applied, in milliseconds, reported by `E_TIMEOUT`. */
  timeoutMs: number;
  /** True while connecting: a handshake the server never answers is then a connection failure. */
  connecting?: boolean;
}

/** The fields of ioredis and Node network errors that we read. */
interface RedisErrorLike {
  name?: unknown;
  code?: unknown;
  message?: unknown;
  errors?: unknown;
}

const NETWORK_REASONS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset by the server',
  EPIPE: 'connection reset by the server',
  ECONNABORTED: 'connection aborted',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host not found',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
};

/** ioredis messages that mean the connection is gone (see ioredis `utils.CONNECTION_CLOSED_ERROR_MSG`). */
const CLOSED_MESSAGES = [
  'Connection is closed.',
  "Stream isn't writeable",
  'Command aborted due to connection close',
];

// Redis replies start with an upper-case error code: "WRONGTYPE Operation against a key ...".
// ioredis wraps failed handshakes as "Ready check failed: NOAUTH Authentication required."
const REPLY_CODE = /^(?:Ready check failed: )?([A-Z][A-Z_]{2,})(?:\s|$)/;

/** Commands whose arguments carry credentials; ioredis attaches them to its reply errors. */
const SECRET_COMMANDS = new Set(['auth', 'hello', 'migrate']);

/** `err`, or a copy without the failed command's arguments when they may hold a password. */
function withoutSecrets(err: unknown): unknown {
  const command = (err as { command?: { name?: unknown } } | null)?.command;
  if (typeof command?.name !== 'string' || !SECRET_COMMANDS.has(command.name.toLowerCase())) return err;
  const copy = new Error((err as Error).message);
  copy.name = (err as Error).name;
  return copy;
}

function asErrorLike(err: unknown): RedisErrorLike {
  return typeof err === 'object' && err !== null ? (err as RedisErrorLike) : {};
}

function networkCode(e: RedisErrorLike): string | undefined {
  if (typeof e.code === 'string' && e.code in NETWORK_REASONS) return e.code;
  // Node reports a failed connection to every address of a host as an AggregateError.
  if (Array.isArray(e.errors)) {
    for (const inner of e.errors) {
      const code = asErrorLike(inner).code;
      if (typeof code === 'string' && code in NETWORK_REASONS) return code;
    }
  }
  return undefined;
}

/**
 * Converts an ioredis or network error into a strata error: unreachable servers, dropped
 * connections and exhausted retries become `E_CONNECTION`; `Command timed out` becomes
 * `E_TIMEOUT` (or `E_CONNECTION` while connecting); `NOAUTH` / `WRONGPASS` become `E_CONNECTION`
 * ("authentication failed"); any other server reply (`WRONGTYPE`, `READONLY`, `OOM`, ...) becomes
 * `E_QUERY` with the reply code in `details.reply`. The server's own message stays on `cause`
 * (stripped of the arguments of AUTH and HELLO, which carry the password); strata errors pass
 * through unchanged.
 */
export function toRedisError(err: unknown, context: RedisErrorContext): StrataError {
  if (isStrataError(err)) return err;
  const e = asErrorLike(err);
  const message = typeof e.message === 'string' ? e.message : '';
  const name = typeof e.name === 'string' ? e.name : '';
  const { endpoint, operation } = context;
  const cause = withoutSecrets(err);
  const connection = (reason: string) =>
    new ConnectionError(endpoint, reason, { cause, details: { operation } });

  const network = networkCode(e);
  if (network !== undefined) return connection(NETWORK_REASONS[network]!);
  if (name === 'MaxRetriesPerRequestError') return connection('connection lost before the reply arrived');
  if (CLOSED_MESSAGES.some((closed) => message.startsWith(closed))) return connection('connection closed');
  if (message === 'Command timed out' || message === 'Ready check failed: Command timed out') {
    if (context.connecting) return connection('the server did not answer in time');
    return new TimeoutError(`redis ${operation}`, context.timeoutMs, {
      cause,
      details: { backend: endpoint.backend, host: endpoint.host, port: endpoint.port },
    });
  }
  const reply = REPLY_CODE.exec(message)?.[1];
  if (reply === 'NOAUTH' || reply === 'WRONGPASS') return connection('authentication failed');
  if (reply === 'LOADING') return connection('the server is loading its dataset');
  if (reply !== undefined) {
    return new StrataError('E_QUERY', `redis: ${operation} failed with ${reply}`, {
      cause,
      details: { backend: endpoint.backend, host: endpoint.host, port: endpoint.port, operation, reply },
    });
  }
  return new StrataError('E_QUERY', `redis: ${operation} failed`, {
    cause,
    details: { backend: endpoint.backend, host: endpoint.host, port: endpoint.port, operation },
  });
}
