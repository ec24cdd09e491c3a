import { JetStreamApiError } from '@nats-io/jetstream';
import { jserrors } from '@nats-io/jetstream/internal';
import { errors } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { ConfigError, isStrataError, TimeoutError } from '../../core/errors.js';
import { assertStreamName, assertSubject, connectNats, type NatsConnectionLike } from './nats-client.js';
import { hasJetStreamCode, JetStreamErrorCodes, toNatsError } from './nats-errors.js';

function apiError(err_code: number, description: string, code = 400): JetStreamApiError {
  return new JetStreamApiError({ code, err_code, description });
}

function errno(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

const endpoint = { host: '127.0.0.1', port: 4222 };

describe('toNatsError', () => {
  it('turns a wrong last sequence into E_CONFLICT with expected, actual and the JetStream code', () => {
    const err = toNatsError(apiError(10071, 'wrong last sequence: 7'), {
      stream: 'orders',
      subject: 'orders.created',
      expected: 5,
    });
    expect(err.code).toBe('E_CONFLICT');
    expect(err.details).toMatchObject({
      stream: 'orders',
      subject: 'orders.created',
      expected: 5,
      actual: 7,
      jsErrCode: 10071,
      jsStatus: 400,
    });
    expect(err.message).toContain('"orders"');
    expect(err.cause).toBeInstanceOf(JetStreamApiError);
  });

  it('keeps the JetStream code on every API error', () => {
    const cases: [number, string, string][] = [
      [10059, 'stream not found', 'E_NOT_FOUND'],
      [10014, 'consumer not found', 'E_NOT_FOUND'],
      [10058, 'stream name already in use with a different configuration', 'E_CONFLICT'],
      [10065, 'subjects overlap with an existing stream', 'E_CONFIG'],
      [10074, 'replicas > 1 not supported in non-clustered mode', 'E_CONFIG'],
      [10052, 'stream configuration update can not change storage type', 'E_CONFIG'],
      [10999, 'something new', 'E_QUERY'],
    ];
    for (const [jsErrCode, description, code] of cases) {
      const err = toNatsError(apiError(jsErrCode, description), { stream: 's' });
      expect(err.code).toBe(code);
      expect(err.details.jsErrCode).toBe(jsErrCode);
      expect(err.message).not.toContain(description);
    }
    expect(toNatsError(jserrors.StreamNotFoundError.fromMessage('stream not found')).code).toBe(
      'E_NOT_FOUND',
    );
  });

  it('names the option a JetStream configuration refusal is blamed on', () => {
    const refused = apiError(10052, 'stream configuration update can not change retention policy', 500);
    expect(toNatsError(refused, { option: 'retention' })).toMatchObject({
      code: 'E_CONFIG',
      option: 'retention',
    });
    expect(toNatsError(refused)).toMatchObject({ code: 'E_CONFIG', option: 'config' });
    expect(toNatsError(apiError(10065, 'subjects overlap'))).toMatchObject({ option: 'subjects' });
    expect(toNatsError(apiError(10074, 'replicas'))).toMatchObject({ option: 'replicas' });
  });

  it('turns request timeouts into E_TIMEOUT with the operation and bound', () => {
    const direct = toNatsError(new errors.TimeoutError(), { operation: 'nats publish', timeoutMs: 1000 });
    expect(direct).toBeInstanceOf(TimeoutError);
    expect(direct).toMatchObject({ code: 'E_TIMEOUT', operation: 'nats publish', timeoutMs: 1000 });
    const wrapped = new errors.RequestError('timeout', { cause: new errors.TimeoutError() });
    expect(toNatsError(wrapped, { operation: 'nats streamInfo', timeoutMs: 5 }).code).toBe('E_TIMEOUT');
  });

  it('adds the context to a bare bound of the same operation and passes other strata errors through', () => {
    const bare = new TimeoutError('nats readFrom', 10);
    const enriched = toNatsError(bare, { operation: 'nats readFrom', stream: 'orders', endpoint });
    expect(enriched).toMatchObject({ code: 'E_TIMEOUT', details: { stream: 'orders', host: '127.0.0.1' } });
    const config = new ConfigError('name', 'bad');
    expect(toNatsError(config, { operation: 'nats publish' })).toBe(config);
    expect(toNatsError(bare, { operation: 'nats publish' })).toBe(bare);
  });

  it('reports connection failures as E_CONNECTION naming host and port', () => {
    const refused = new errors.ConnectionError('connection refused', {
      cause: errno('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:4222'),
    });
    const cases: [unknown, string][] = [
      [refused, 'connection refused'],
      [errno('ENOTFOUND', 'getaddrinfo ENOTFOUND nats.example'), 'host name not found'],
      [errno('EAI_AGAIN', 'getaddrinfo EAI_AGAIN nats.example'), 'host name not found'],
      [new errors.TimeoutError(), 'no response from the server within connectTimeout'],
      [new errors.AuthorizationError('Authorization Violation'), 'authentication failed'],
      [new errors.ClosedConnectionError(), 'the connection is closed'],
      [
        new jserrors.JetStreamNotEnabled('jetstream is not enabled'),
        'JetStream is not enabled on the server',
      ],
    ];
    for (const [cause, reason] of cases) {
      const err = toNatsError(cause, { connecting: true, endpoint });
      expect(err).toMatchObject({ code: 'E_CONNECTION', host: '127.0.0.1', port: 4222, details: { reason } });
      expect(err.message).toContain('127.0.0.1:4222');
    }
  });

  it('tells a publish to an unstored subject apart from JetStream being off', () => {
    const noResponders = new jserrors.JetStreamNotEnabled('jetstream is not enabled', {
      cause: new errors.RequestError("no responders: 'a.b'", { cause: new errors.NoRespondersError('a.b') }),
    });
    expect(toNatsError(noResponders, { operation: 'nats publish', subject: 'a.b' })).toMatchObject({
      code: 'E_NOT_FOUND',
      details: { subject: 'a.b' },
    });
    expect(toNatsError(noResponders, { operation: 'nats streamInfo' }).code).toBe('E_CONNECTION');
  });

  it('maps dropped connections, permissions and client-side rejections', () => {
    expect(toNatsError(new errors.ClosedConnectionError()).code).toBe('E_CONNECTION');
    expect(toNatsError(errno('ECONNRESET', 'read ECONNRESET')).code).toBe('E_CONNECTION');
    const denied = new errors.PermissionViolationError('Permissions Violation', 'publish', 'a.b');
    expect(toNatsError(denied).code).toBe('E_PERMISSION');
    expect(toNatsError(new errors.InvalidSubjectError('a b'))).toMatchObject({
      code: 'E_CONFIG',
      option: 'subject',
    });
    expect(toNatsError(new Error('weird')).code).toBe('E_QUERY');
    expect(toNatsError('not even an error').code).toBe('E_QUERY');
  });

  it('never copies the message of the original error into its own', () => {
    const leaky = new Error('password supersecret rejected');
    for (const context of [{}, { connecting: true, endpoint }]) {
      const err = toNatsError(leaky, context);
      expect(err.message).not.toContain('supersecret');
      expect(JSON.stringify(err)).not.toContain('supersecret');
      expect(err.cause).toBe(leaky);
    }
  });

  it('finds JetStream codes on raw and converted errors', () => {
    const raw = apiError(JetStreamErrorCodes.StreamNotFound, 'stream not found', 404);
    expect(hasJetStreamCode(raw, 10059)).toBe(true);
    expect(hasJetStreamCode(toNatsError(raw), 10059)).toBe(true);
    expect(hasJetStreamCode(raw, 10071)).toBe(false);
    expect(hasJetStreamCode(new Error('x'), 10059)).toBe(false);
  });
});

describe('nats configuration errors', () => {
  it('rejects invalid connection options with E_CONFIG naming the option, before connecting', async () => {
    const fake = { drain: async () => undefined } as unknown as NatsConnectionLike;
    const cases: [Parameters<typeof connectNats>[0], string][] = [
      [{ url: 'http://127.0.0.1:4222' }, 'url'],
      [{ url: '' }, 'url'],
      [{ url: [] }, 'url'],
      [{ url: 'nats://' }, 'url'],
      [{ url: ['nats://a:one@h1:4222', 'nats://a:two@h2:4222'] }, 'url'],
      [{ url: 'nats://127.0.0.1', connectTimeout: '-1s' }, 'connectTimeout'],
      [{ url: 'nats://127.0.0.1', connectTimeout: 0 }, 'connectTimeout'],
      [{ url: 'nats://127.0.0.1', requestTimeout: '5 parsecs' }, 'requestTimeout'],
      [{ url: 'nats://127.0.0.1', reconnectWait: 'soon' }, 'reconnectWait'],
      [{ url: 'nats://127.0.0.1', maxReconnectAttempts: -2 }, 'maxReconnectAttempts'],
      [{ url: 'nats://127.0.0.1', maxReconnectAttempts: 1.5 }, 'maxReconnectAttempts'],
      [{ url: 'nats://127.0.0.1', name: '' }, 'name'],
      [{ url: 'nats://127.0.0.1', connection: fake }, 'url'],
      [{ connection: {} as NatsConnectionLike }, 'connection'],
    ];
    for (const [options, option] of cases) {
      const err = await rejectionOf(connectNats(options));
      expect(err).toMatchObject({ code: 'E_CONFIG', option });
    }
  });

  it('keeps credentials of a malformed URL out of the error', async () => {
    const err = await rejectionOf(connectNats({ url: 'nats://user:supersecret@[bad host]:4222' }));
    expect(isStrataError(err, 'E_CONFIG')).toBe(true);
    expect(String((err as Error).message)).not.toContain('supersecret');
    expect(JSON.stringify(err)).not.toContain('supersecret');
    expect((err as Error).cause).toBeUndefined();
  });

  it('accepts only valid stream names', () => {
    for (const name of ['orders', 'ORDERS_v2', 'a-b', 'strata_123_abc']) assertStreamName(name);
    for (const name of ['', 'a.b', 'a b', 'a\tb', 'a*', 'a>', 'a/b', 'a\\b', 42]) {
      expect(thrown(() => assertStreamName(name, 'stream'))).toMatchObject({
        code: 'E_CONFIG',
        option: 'stream',
      });
    }
  });

  it('accepts wildcards only as whole tokens, and only where allowed', () => {
    for (const subject of ['a', 'a.b.c', 'orders-v2.created', 'a.*.c', 'a.>', '>', '*']) {
      assertSubject(subject, 'subjects', { wildcards: true });
    }
    for (const subject of ['a.b', 'orders.created']) assertSubject(subject);
    for (const subject of ['', 'a..b', '.a', 'a.', 'a b', 'a*', 'a.b*', 'a.>.b', '>.a', 'a>']) {
      expect(thrown(() => assertSubject(subject, 'subjects', { wildcards: true }))).toMatchObject({
        code: 'E_CONFIG',
        option: 'subjects',
      });
    }
    for (const subject of ['a.*', 'a.>']) {
      expect(thrown(() => assertSubject(subject))).toMatchObject({ code: 'E_CONFIG', option: 'subject' });
    }
  });
});
