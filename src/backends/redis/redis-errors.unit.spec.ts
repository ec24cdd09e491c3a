import { inspect } from 'node:util';
import { ReplyError } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { ClosedError, isStrataError } from '../../core/errors.js';
import { type RedisErrorContext, toRedisError } from './redis-errors.js';

const context: RedisErrorContext = {
  endpoint: { backend: 'redis', host: '10.0.0.7', port: 6380 },
  operation: 'get',
  timeoutMs: 2_000,
};

function networkError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code, syscall: 'connect' });
}

function replyError(message: string, command?: { name: string; args: string[] }): Error {
  const err = new (ReplyError as new (message: string) => Error)(message);
  if (command !== undefined) Object.assign(err, { command });
  return err;
}

describe('toRedisError', () => {
  it.each([
    ['ECONNREFUSED', 'connection refused'],
    ['ECONNRESET', 'connection reset by the server'],
    ['ETIMEDOUT', 'connection timed out'],
    ['ENOTFOUND', 'host not found'],
    ['EHOSTUNREACH', 'host unreachable'],
  ])('maps %s to E_CONNECTION naming host and port', (code, reason) => {
    const cause = networkError(code, `connect ${code} 10.0.0.7:6380`);
    const err = toRedisError(cause, context);
    expect(err).toMatchObject({
      code: 'E_CONNECTION',
      backend: 'redis',
      host: '10.0.0.7',
      port: 6380,
      details: { reason, operation: 'get' },
    });
    expect(err.message).toBe(`cannot connect to redis at 10.0.0.7:6380: ${reason}`);
    expect(err.cause).toBe(cause);
  });

  it('maps an AggregateError of refused addresses to E_CONNECTION', () => {
    const aggregate = Object.assign(
      new AggregateError([networkError('ECONNREFUSED', 'refused')], 'all failed'),
      {
        code: undefined,
      },
    );
    expect(toRedisError(aggregate, context)).toMatchObject({ code: 'E_CONNECTION' });
  });

  it('maps closed connections and exhausted retries to E_CONNECTION', () => {
    const retries = new Error('Reached the max retries per request limit (which is 0).');
    Object.defineProperty(retries, 'name', { value: 'MaxRetriesPerRequestError' });
    for (const cause of [
      new Error('Connection is closed.'),
      new Error("Stream isn't writeable and enableOfflineQueue options is false"),
      new Error('Command aborted due to connection close'),
      retries,
    ]) {
      expect(toRedisError(cause, context), cause.message).toMatchObject({ code: 'E_CONNECTION' });
    }
  });

  it("maps ioredis' 'Command timed out' to E_TIMEOUT, or E_CONNECTION while connecting", () => {
    const timedOut = new Error('Command timed out');
    expect(toRedisError(timedOut, context)).toMatchObject({
      code: 'E_TIMEOUT',
      operation: 'redis get',
      timeoutMs: 2_000,
      details: { host: '10.0.0.7', port: 6380 },
    });
    expect(toRedisError(timedOut, { ...context, connecting: true })).toMatchObject({
      code: 'E_CONNECTION',
      details: { reason: 'the server did not answer in time' },
    });
  });

  it('maps NOAUTH and WRONGPASS to E_CONNECTION "authentication failed", dropping the password', () => {
    const wrongpass = replyError('WRONGPASS invalid username-password pair or user is disabled.', {
      name: 'auth',
      args: ['alice', 'hunter2-secret'],
    });
    const noauth = replyError('NOAUTH Authentication required.', { name: 'info', args: [] });
    const handshake = new Error('Ready check failed: NOAUTH Authentication required.');
    for (const cause of [wrongpass, noauth, handshake]) {
      const err = toRedisError(cause, context);
      expect(err).toMatchObject({ code: 'E_CONNECTION', details: { reason: 'authentication failed' } });
      expect(inspect(err, { depth: 5 })).not.toContain('hunter2-secret');
    }
    const hello = replyError('WRONGPASS invalid', {
      name: 'HELLO',
      args: ['3', 'AUTH', 'bob', 'hunter2-secret'],
    });
    const err = toRedisError(hello, context);
    expect(inspect(err, { depth: 5 })).not.toContain('hunter2-secret');
    expect((err.cause as Error).message).toBe('WRONGPASS invalid');
  });

  it('maps other server replies to E_QUERY with the reply code, never the message', () => {
    const cases: [string, string][] = [
      ['WRONGTYPE Operation against a key holding the wrong kind of value', 'WRONGTYPE'],
      ["READONLY You can't write against a read only replica.", 'READONLY'],
      ["OOM command not allowed when used memory > 'maxmemory'.", 'OOM'],
      ["ERR unknown command 'secret-value', with args beginning with:", 'ERR'],
    ];
    for (const [message, reply] of cases) {
      const cause = replyError(message, { name: 'set', args: ['k', 'secret-value'] });
      const err = toRedisError(cause, { ...context, operation: 'set' });
      expect(err).toMatchObject({ code: 'E_QUERY', details: { backend: 'redis', reply, operation: 'set' } });
      expect(err.message).toBe(`redis: set failed with ${reply}`);
      expect(err.message).not.toContain('secret-value');
      expect(JSON.stringify(err)).not.toContain('secret-value');
      expect(err.cause).toBe(cause);
    }
  });

  it('maps LOADING to E_CONNECTION and anything unknown to E_QUERY', () => {
    expect(toRedisError(replyError('LOADING Redis is loading the dataset in memory'), context)).toMatchObject(
      {
        code: 'E_CONNECTION',
      },
    );
    for (const odd of [new Error('something odd'), 'a string', undefined, 42]) {
      const err = toRedisError(odd, context);
      expect(isStrataError(err, 'E_QUERY')).toBe(true);
      expect(err.message).toBe('redis: get failed');
    }
  });

  it('passes strata errors through unchanged', () => {
    const closed = new ClosedError('redis');
    expect(toRedisError(closed, context)).toBe(closed);
  });
});
