import { describe, expect, it } from 'vitest';
import {
  ClosedError,
  ConfigError,
  ConnectionError,
  isStrataError,
  QueryError,
  StrataError,
  TimeoutError,
  ValidationError,
} from './errors.js';

describe('strata errors', () => {
  it('carry a stable code, structured details and the cause', () => {
    const cause = new Error('ECONNREFUSED');
    const err = new ConnectionError(
      { backend: 'postgres', host: '127.0.0.1', port: 5999, database: 'app' },
      'connection refused',
      {
        cause,
      },
    );
    expect(err.code).toBe('E_CONNECTION');
    expect(err.message).toBe('cannot connect to postgres at 127.0.0.1:5999: connection refused');
    expect(err.details).toEqual({
      backend: 'postgres',
      host: '127.0.0.1',
      port: 5999,
      database: 'app',
      reason: 'connection refused',
    });
    expect(err.cause).toBe(cause);
    expect(err).toBeInstanceOf(StrataError);
    expect(Object.isFrozen(err.details)).toBe(true);
  });

  it('name the option in configuration errors', () => {
    const err = new ConfigError('ttl', 'duration must not be negative');
    expect(err).toMatchObject({ code: 'E_CONFIG', option: 'ttl', details: { option: 'ttl' } });
    expect(err.message).toContain('"ttl"');
  });

  it('list every validation issue with its path', () => {
    const err = new ValidationError(
      [
        { path: ['user', 'email'], message: 'Invalid email' },
        { path: ['age'], message: 'Too small' },
      ],
      { subject: 'request body' },
    );
    expect(err.code).toBe('E_VALIDATION');
    expect(err.message).toBe('request body failed validation with 2 issues');
    expect(err.issues).toHaveLength(2);
  });

  it('keep SQL fields on query errors and mark only serialization failures retryable', () => {
    const unique = new QueryError('E_CONSTRAINT', {
      backend: 'postgres',
      sqlState: '23505',
      constraint: 'users_email_key',
      constraintKind: 'unique',
      table: 'users',
      column: undefined,
    });
    expect(unique.message).toBe(
      'postgres: unique constraint "users_email_key" violated on table "users" (23505)',
    );
    expect(unique.details).not.toHaveProperty('column');
    expect(unique.retryable).toBe(false);
    expect(new QueryError('E_SERIALIZATION', { backend: 'postgres', sqlState: '40001' }).retryable).toBe(
      true,
    );
  });

  it('serialize to JSON as code, message and details only', () => {
    const err = new TimeoutError('redis GET', 250, { cause: new Error('secret-in-cause') });
    const json = JSON.parse(JSON.stringify(err));
    expect(json).toEqual({
      code: 'E_TIMEOUT',
      message: 'redis GET timed out after 250 ms',
      details: { operation: 'redis GET', timeoutMs: 250 },
    });
  });

  it('are recognised by code, not by class', () => {
    expect(isStrataError(new ClosedError('pool'))).toBe(true);
    expect(isStrataError(new ClosedError('pool'), 'E_CLOSED')).toBe(true);
    expect(isStrataError(new ClosedError('pool'), 'E_CONFIG')).toBe(false);
    // A copy of strata loaded twice still yields errors this guard recognises.
    const foreign = Object.assign(new Error('x'), { code: 'E_TIMEOUT', details: {} });
    expect(isStrataError(foreign, 'E_TIMEOUT')).toBe(true);
    expect(isStrataError(Object.assign(new Error('x'), { code: 'ECONNREFUSED', details: {} }))).toBe(false);
    expect(isStrataError({ code: 'E_TIMEOUT', details: {} })).toBe(false);
    expect(isStrataError(null)).toBe(false);
    expect(isStrataError('E_TIMEOUT')).toBe(false);
  });
});
