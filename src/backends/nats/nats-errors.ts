import {
  ConfigError,
  ConnectionError,
  type Endpoint,
  isStrataError,
  StrataError,
  TimeoutError,
} from '../../core/errors.js';

/**
 * JetStream API error codes (`api_error.err_code`) that strata maps to its own codes; any other
 * code still reaches the caller as `details.jsErrCode`.
 */
export const JetStreamErrorCodes = Object.freeze({
  ConsumerNotFound: 10014,
  NoMessageFound: 10037,
  StreamInvalidConfig: 10052,
  StreamNameInUse: 10058,
  StreamNotFound: 10059,
  SubjectsOverlap: 10065,
  WrongLastSequence: 10071,
  ReplicasNotSupported: 10074,
  WrongLastSequenceUnknown: 10164,
});

/** What was being done when a NATS error happened, for the strata error built from it. */
export interface NatsErrorContext {
  /** The operation, used in timeout messages (`nats publish`). */
  operation?: string | undefined;
  /** True while the connection is being established: every failure is then `E_CONNECTION`. */
  connecting?: boolean | undefined;
  /** The server involved (never with credentials). */
  endpoint?: { host?: string | undefined; port?: number | undefined } | undefined;
  /** The bound that applied, for `E_TIMEOUT`. */
  timeoutMs?: number | undefined;
  /** The stream involved. */
  stream?: string | undefined;
  /** The subject involved. */
  subject?: string | undefined;
  /** The option a generic configuration refusal of JetStream is blamed on (default `config`). */
  option?: string | undefined;
  /** The expected last sequence of a conditional publish, reported on `E_CONFLICT`. */
  expected?: number | undefined;
}

/** The fields of a nats.js error that we read; nats.js errors are recognised by `name`. */
interface NatsErrorLike {
  name?: unknown;
  message?: unknown;
  code?: unknown;
  cause?: unknown;
  apiError?: unknown;
}

/** A JetStream API error as the server sends it. */
interface ApiErrorLike {
  code: number;
  err_code: number;
  description: string;
}

const WRONG_LAST_SEQUENCE = /wrong last sequence: (\d+)/;

/**
 * Converts an error thrown by nats.js (or by Node under it) into a strata error:
 * connection refused, DNS failures, handshake timeouts and authentication failures become
 * `E_CONNECTION` naming host and port (never credentials); request timeouts `E_TIMEOUT`;
 * JetStream API errors keep `jsErrCode` (`api_error.err_code`) and `jsStatus` in `details`, with
 * a wrong last sequence as `E_CONFLICT` (`expected`, `actual`), a missing stream or consumer as
 * `E_NOT_FOUND`, and a refused stream configuration as `E_CONFIG`. Strata errors pass through,
 * except that an `E_TIMEOUT` of `context.operation` gains the context's stream and server.
 */
export function toNatsError(err: unknown, context: NatsErrorContext = {}): StrataError {
  if (isStrataError(err)) {
    // A bare bound of this same operation (from withTimeout) gains the context's stream and server.
    if (err instanceof TimeoutError && err.operation === context.operation && err.cause === undefined) {
      return new TimeoutError(err.operation, err.timeoutMs, { details: streamDetails(context) });
    }
    return err;
  }
  const e = asErrorLike(err);
  const name = typeof e.name === 'string' ? e.name : '';
  const endpoint: Endpoint = { backend: 'nats', host: context.endpoint?.host, port: context.endpoint?.port };

  const api = apiErrorOf(err);
  if (api !== undefined) return fromApiError(api, err, context);

  if (context.connecting) return new ConnectionError(endpoint, connectReason(err), { cause: err });

  if (isTimeout(err)) {
    return new TimeoutError(context.operation ?? 'nats request', context.timeoutMs ?? 0, {
      cause: err,
      details: streamDetails(context),
    });
  }
  switch (name) {
    case 'AuthorizationError':
    case 'UserAuthenticationExpiredError':
      return new ConnectionError(endpoint, 'authentication failed', { cause: err });
    case 'ClosedConnectionError':
    case 'DrainingConnectionError':
      return new ConnectionError(endpoint, 'the connection is closed', { cause: err });
    case 'ConnectionError':
      return new ConnectionError(endpoint, connectReason(err), { cause: err });
    case 'PermissionViolationError':
      return new StrataError('E_PERMISSION', 'nats: permission denied for this subject', {
        cause: err,
        details: { backend: 'nats', ...streamDetails(context) },
      });
    case 'JetStreamNotEnabled':
      if (context.operation === 'nats publish') {
        return new StrataError('E_NOT_FOUND', 'nats: no stream stores this subject', {
          cause: err,
          details: { backend: 'nats', ...streamDetails(context) },
        });
      }
      return new ConnectionError(endpoint, 'JetStream is not enabled on the server', { cause: err });
    case 'InvalidSubjectError':
      return new ConfigError('subject', 'not a valid NATS subject', { cause: err });
    case 'InvalidNameError':
      return new ConfigError('stream', 'not a valid stream name', { cause: err });
    case 'InvalidArgumentError':
      return new ConfigError(context.option ?? 'options', 'rejected by the NATS client', { cause: err });
  }
  if (errnoOf(err) !== undefined) return new ConnectionError(endpoint, connectReason(err), { cause: err });
  return new StrataError('E_QUERY', 'nats: request failed', {
    cause: err,
    details: { backend: 'nats', ...streamDetails(context) },
  });
}

/** True when `err` is (or wraps) a JetStream API error with `jsErrCode` equal to `code`. */
export function hasJetStreamCode(err: unknown, code: number): boolean {
  if (isStrataError(err)) return err.details.jsErrCode === code;
  return apiErrorOf(err)?.err_code === code;
}

function fromApiError(api: ApiErrorLike, err: unknown, context: NatsErrorContext): StrataError {
  const details = { backend: 'nats', ...streamDetails(context), jsErrCode: api.err_code, jsStatus: api.code };
  const stream = context.stream === undefined ? '' : ` "${context.stream}"`;
  const theStream = context.stream === undefined ? 'the stream' : `stream "${context.stream}"`;
  switch (api.err_code) {
    case JetStreamErrorCodes.WrongLastSequence:
    case JetStreamErrorCodes.WrongLastSequenceUnknown: {
      const actual = WRONG_LAST_SEQUENCE.exec(api.description)?.[1];
      return new StrataError('E_CONFLICT', `nats: ${theStream} is not at the expected last sequence`, {
        cause: err,
        details: {
          ...details,
          ...(context.expected === undefined ? {} : { expected: context.expected }),
          ...(actual === undefined ? {} : { actual: Number(actual) }),
        },
      });
    }
    case JetStreamErrorCodes.StreamNotFound:
      return new StrataError('E_NOT_FOUND', `nats: stream${stream} not found`, { cause: err, details });
    case JetStreamErrorCodes.ConsumerNotFound:
      return new StrataError('E_NOT_FOUND', `nats: consumer on stream${stream} not found`, {
        cause: err,
        details,
      });
    case JetStreamErrorCodes.NoMessageFound:
      return new StrataError('E_NOT_FOUND', `nats: message not found in stream${stream}`, {
        cause: err,
        details,
      });
    case JetStreamErrorCodes.StreamNameInUse:
      return new StrataError(
        'E_CONFLICT',
        `nats: stream${stream} already exists with a different configuration`,
        { cause: err, details },
      );
    case JetStreamErrorCodes.SubjectsOverlap:
      return new ConfigError('subjects', 'overlap with the subjects of another stream', {
        cause: err,
        details,
      });
    case JetStreamErrorCodes.ReplicasNotSupported:
      return new ConfigError('replicas', 'more than one replica needs a clustered server', {
        cause: err,
        details,
      });
    case JetStreamErrorCodes.StreamInvalidConfig:
      return new ConfigError(context.option ?? 'config', 'JetStream refused the stream configuration', {
        cause: err,
        details,
      });
  }
  return new StrataError('E_QUERY', `nats: JetStream API error ${api.err_code}`, { cause: err, details });
}

function streamDetails(context: NatsErrorContext): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (context.stream !== undefined) out.stream = context.stream;
  if (context.subject !== undefined) out.subject = context.subject;
  if (context.endpoint?.host !== undefined) out.host = context.endpoint.host;
  if (context.endpoint?.port !== undefined) out.port = context.endpoint.port;
  return out;
}

function asErrorLike(err: unknown): NatsErrorLike {
  return typeof err === 'object' && err !== null ? (err as NatsErrorLike) : {};
}

/** The JetStream `api_error` carried by `err`, read structurally so any copy of nats.js works. */
function apiErrorOf(err: unknown): ApiErrorLike | undefined {
  const e = asErrorLike(err);
  if (typeof e.apiError !== 'function') return undefined;
  const api = (e.apiError as () => unknown).call(err) as Partial<ApiErrorLike> | undefined;
  if (api === undefined || typeof api.err_code !== 'number') return undefined;
  return {
    code: typeof api.code === 'number' ? api.code : 0,
    err_code: api.err_code,
    description: typeof api.description === 'string' ? api.description : '',
  };
}

/** Walks the `cause` chain (a few levels) and returns the first Node errno code, like `ECONNREFUSED`. */
function errnoOf(err: unknown): string | undefined {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && typeof current === 'object' && current !== null; depth++) {
    const code = (current as NatsErrorLike).code;
    if (typeof code === 'string' && /^E[A-Z_]+$/.test(code) && !code.startsWith('E_')) return code;
    current = (current as NatsErrorLike).cause;
  }
  return undefined;
}

function isTimeout(err: unknown): boolean {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && typeof current === 'object' && current !== null; depth++) {
    if ((current as NatsErrorLike).name === 'TimeoutError') return true;
    current = (current as NatsErrorLike).cause;
  }
  return errnoOf(err) === 'ETIMEDOUT';
}

function connectReason(err: unknown): string {
  const e = asErrorLike(err);
  if (e.name === 'AuthorizationError' || e.name === 'UserAuthenticationExpiredError') {
    return 'authentication failed';
  }
  if (isTimeout(err)) return 'no response from the server within connectTimeout';
  switch (errnoOf(err)) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NONAME':
      return 'host name not found';
    case 'ECONNRESET':
    case 'EPIPE':
      return 'the server closed the connection';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable';
  }
  if (e.message === 'connection refused') return 'connection refused';
  if (e.name === 'ClosedConnectionError' || e.name === 'DrainingConnectionError') {
    return 'the connection is closed';
  }
  if (e.name === 'JetStreamNotEnabled') return 'JetStream is not enabled on the server';
  if (e.name === 'ProtocolError') return 'the server did not speak the NATS protocol';
  return 'cannot reach the server';
}
