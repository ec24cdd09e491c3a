/**
 * One JSON error shape for every failure: `{ code, message, details }`, with the HTTP status
 * derived from the strata error code. Bad input is always a 4xx; only real faults are a 500,
 * and a 500 never carries the internal message.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { isStrataError } from 'strata';

/** The body of every error response. */
export interface ErrorBody {
  code: string;
  message: string;
  details: Record<string, unknown>;
}

const STATUS_BY_CODE: Record<string, number> = {
  E_VALIDATION: 400,
  E_NOT_FOUND: 404,
  E_CONFLICT: 409,
  // The account's lifecycle: a command that does not apply to its state, a write while suspended.
  E_ACCOUNT_STATE: 409,
  E_ACCOUNT_SUSPENDED: 403,
  // Another writer kept changing the account stream through every retry.
  E_VERSION_CONFLICT: 409,
  // A rule the database enforces that the API did not check first: still the client's conflict.
  E_CONSTRAINT: 409,
  // Transient contention: the same request may succeed when retried.
  E_SERIALIZATION: 503,
  E_TIMEOUT: 503,
  E_CONNECTION: 503,
  E_CLOSED: 503,
};

const FASTIFY_ERRORS: Record<string, { status: number; code: string; message: string }> = {
  FST_ERR_CTP_INVALID_JSON_BODY: {
    status: 400,
    code: 'E_MALFORMED_JSON',
    message: 'the request body is not valid JSON',
  },
  FST_ERR_CTP_EMPTY_JSON_BODY: {
    status: 400,
    code: 'E_MALFORMED_JSON',
    message: 'the request body is empty',
  },
  FST_ERR_CTP_BODY_TOO_LARGE: {
    status: 413,
    code: 'E_PAYLOAD_TOO_LARGE',
    message: 'the request body is too large',
  },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    status: 415,
    code: 'E_UNSUPPORTED_MEDIA_TYPE',
    message: 'send the request body as application/json',
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: {
    status: 400,
    code: 'E_BAD_REQUEST',
    message: 'the content length does not match the body',
  },
};

/** Maps any error to a status and a JSON body. */
export function toErrorResponse(err: unknown): { status: number; body: ErrorBody } {
  if (isStrataError(err)) {
    const status = STATUS_BY_CODE[err.code];
    if (status !== undefined) {
      return { status, body: { code: err.code, message: err.message, details: { ...err.details } } };
    }
  }
  const fastifyCode = (err as Partial<FastifyError>)?.code;
  const known = fastifyCode === undefined ? undefined : FASTIFY_ERRORS[fastifyCode];
  if (known !== undefined) {
    return { status: known.status, body: { code: known.code, message: known.message, details: {} } };
  }
  const statusCode = (err as Partial<FastifyError>)?.statusCode;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    return {
      status: statusCode,
      body: { code: 'E_BAD_REQUEST', message: 'the request is malformed', details: {} },
    };
  }
  return { status: 500, body: { code: 'E_INTERNAL', message: 'internal error', details: {} } };
}

/** Fastify error handler: logs real faults, answers with the JSON error shape. */
export function errorHandler(err: unknown, request: FastifyRequest, reply: FastifyReply): void {
  const { status, body } = toErrorResponse(err);
  if (status >= 500) logFault(err, request);
  if (body.code === 'E_SERIALIZATION') void reply.header('retry-after', '1');
  void reply.code(status).type('application/json').send(body);
}

/**
 * Server faults are always logged, with or without Fastify's request logger: one line naming the
 * route and the error's code (never its message, which may hold values), and the stack when
 * STRATA_DEBUG=1.
 */
function logFault(err: unknown, request: FastifyRequest): void {
  const route = request.routeOptions.url ?? 'unmatched';
  const code = isStrataError(err) ? err.code : err instanceof Error ? err.name : 'unknown';
  process.stderr.write(`strata social: ${request.method} ${route} failed (${code})\n`);
  if (process.env.STRATA_DEBUG === '1' && err instanceof Error) process.stderr.write(`${err.stack}\n`);
}

/** Fastify not-found handler: the JSON error shape, without echoing the path. */
export function notFoundHandler(_request: FastifyRequest, reply: FastifyReply): void {
  void reply
    .code(404)
    .send({ code: 'E_ROUTE_NOT_FOUND', message: 'no route matches this method and path', details: {} });
}
