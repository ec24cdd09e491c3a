import { describe, expect, it } from 'vitest';
import { ConnectionError, isStrataError, QueryError, TimeoutError } from '../../core/errors.js';
import { toPostgresError } from './postgres-errors.js';

const endpoint = { host: 'db.internal', port: 6543, database: 'app', user: 'writer' };

/** An error shaped like pg-protocol's DatabaseError. */
function databaseError(code: string, message: string, fields: Record<string, string> = {}): Error {
  return Object.assign(new Error(message), { name: 'error', severity: 'ERROR', code, ...fields });
}

/** An error shaped like Node's system errors. */
function systemError(code: string, message = `connect ${code} 10.0.0.1:6543`): Error {
  return Object.assign(new Error(message), { code, errno: -1, syscall: 'connect' });
}

const secretValue = 'alice-secret@example.com';

describe('toPostgresError', () => {
  it.each([
    ['23505', 'unique'],
    ['23503', 'foreign_key'],
    ['23502', 'not_null'],
    ['23514', 'check'],
    ['23P01', 'exclusion'],
  ] as const)('maps SQLSTATE %s to E_CONSTRAINT of kind %s', (code, kind) => {
    const cause = databaseError(code, `violates constraint with value ${secretValue}`, {
      constraint: 'users_email_key',
      table: 'users',
      schema: 'public',
      detail: `Key (email)=(${secretValue}) already exists.`,
    });
    const err = toPostgresError(cause, endpoint);
    expect(err).toBeInstanceOf(QueryError);
    expect(err).toMatchObject({
      code: 'E_CONSTRAINT',
      backend: 'postgres',
      sqlState: code,
      constraintKind: kind,
      constraint: 'users_email_key',
      table: 'users',
      schema: 'public',
    });
    expect(err.cause).toBe(cause);
    expect(err.message).not.toContain(secretValue);
    expect(JSON.stringify(err)).not.toContain(secretValue);
  });

  it('takes the column of a unique violation from the key part of the detail, never the value', () => {
    const err = toPostgresError(
      databaseError('23505', 'duplicate key value violates unique constraint "users_email_key"', {
        constraint: 'users_email_key',
        table: 'users',
        detail: `Key (email)=(${secretValue}) already exists.`,
      }),
    );
    expect(err).toMatchObject({ column: 'email' });
    expect(err.message).toContain('column "email"');
    expect(JSON.stringify(err.details)).not.toContain(secretValue);
    const composite = toPostgresError(
      databaseError('23505', 'duplicate key', { detail: 'Key (a, b)=(1, 2) already exists.' }),
    );
    expect(composite).toMatchObject({ code: 'E_CONSTRAINT', column: undefined });
  });

  it('keeps the column the server reports for a not-null violation', () => {
    const err = toPostgresError(
      databaseError('23502', 'null value in column "email" of relation "users"', {
        table: 'users',
        column: 'email',
      }),
    );
    expect(err).toMatchObject({
      code: 'E_CONSTRAINT',
      constraintKind: 'not_null',
      table: 'users',
      column: 'email',
    });
  });

  it.each(['40001', '40P01'])('maps SQLSTATE %s to the retryable E_SERIALIZATION', (code) => {
    const err = toPostgresError(databaseError(code, 'could not serialize access'));
    expect(err).toMatchObject({ code: 'E_SERIALIZATION', sqlState: code, retryable: true });
  });

  it('reads the table of an undefined relation from the message, schema-qualified or not', () => {
    expect(toPostgresError(databaseError('42P01', 'relation "missing_table" does not exist'))).toMatchObject({
      code: 'E_QUERY',
      sqlState: '42P01',
      table: 'missing_table',
    });
    expect(toPostgresError(databaseError('42P01', 'relation "audit.events" does not exist'))).toMatchObject({
      schema: 'audit',
      table: 'events',
    });
    const odd = toPostgresError(databaseError('42P01', 'relation "a b; c" does not exist'));
    expect(odd).toMatchObject({ code: 'E_QUERY', table: undefined });
  });

  it('maps other server errors to E_QUERY without the server message', () => {
    const err = toPostgresError(
      databaseError('22P02', `invalid input syntax for type integer: "${secretValue}"`),
    );
    expect(err).toMatchObject({ code: 'E_QUERY', sqlState: '22P02' });
    expect(err.message).toBe('postgres: statement failed (22P02)');
  });

  it('treats a wrong parameter count (08P01) as a query error, not a lost connection', () => {
    const err = toPostgresError(databaseError('08P01', 'bind message supplies 2 parameters'));
    expect(err).toMatchObject({ code: 'E_QUERY', sqlState: '08P01' });
  });

  it.each([
    [systemError('ECONNREFUSED'), 'connection refused'],
    [systemError('ENOTFOUND'), 'host not found'],
    [systemError('EHOSTUNREACH'), 'host unreachable'],
    [systemError('ECONNRESET'), 'connection reset'],
    [systemError('ETIMEDOUT'), 'timed out after 1500 ms'],
    [new Error('timeout expired'), 'timed out after 1500 ms'],
    [new Error('Connection terminated due to connection timeout'), 'timed out after 1500 ms'],
    [new Error('Connection terminated unexpectedly'), 'connection lost'],
    [databaseError('28P01', 'password authentication failed for user "writer"'), 'authentication failed'],
    [databaseError('28000', 'no pg_hba.conf entry'), 'authentication failed'],
    [databaseError('3D000', 'database "app" does not exist'), 'database does not exist'],
    [
      databaseError('57P01', 'terminating connection due to administrator command'),
      'connection terminated by the server',
    ],
    [databaseError('57P03', 'the database system is starting up'), 'server not accepting connections'],
    [databaseError('08006', 'connection failure'), 'connection failure'],
  ])('maps %s to E_CONNECTION with a static reason', (cause, reason) => {
    const err = toPostgresError(cause, endpoint, { connectTimeoutMs: 1500 });
    expect(err).toBeInstanceOf(ConnectionError);
    expect(err.message).toContain('postgres at db.internal:6543');
    expect(err.message).toContain(reason);
    expect(err.details).toMatchObject({
      backend: 'postgres',
      host: 'db.internal',
      port: 6543,
      database: 'app',
    });
    expect(err.cause).toBe(cause);
  });

  it('recognises a refused dual-stack connect reported as an AggregateError', () => {
    const aggregate = new AggregateError(
      [systemError('ECONNREFUSED'), systemError('ECONNREFUSED')],
      'connect',
    );
    expect(toPostgresError(aggregate, endpoint).message).toContain('connection refused');
  });

  it('never puts a password into a connection error', () => {
    const withPassword = { ...endpoint, password: 'supersecret' } as typeof endpoint;
    const err = toPostgresError(systemError('ECONNREFUSED'), withPassword);
    expect(err.message).not.toContain('supersecret');
    expect(JSON.stringify(err.details)).not.toContain('supersecret');
  });

  it('reports a wait for a pooled connection past the bound as E_TIMEOUT', () => {
    const err = toPostgresError(new Error('timeout exceeded when trying to connect'), endpoint, {
      connectTimeoutMs: 250,
    });
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err).toMatchObject({ code: 'E_TIMEOUT', timeoutMs: 250 });
  });

  it('reports a statement cancelled by statement_timeout as E_TIMEOUT when the timeout is known', () => {
    const cause = databaseError('57014', 'canceling statement due to statement timeout');
    expect(toPostgresError(cause, endpoint, { statementTimeoutMs: 100 })).toMatchObject({
      code: 'E_TIMEOUT',
      timeoutMs: 100,
    });
    expect(toPostgresError(cause, endpoint)).toMatchObject({ code: 'E_QUERY', sqlState: '57014' });
  });

  it('reports use of an ended pool as E_CLOSED', () => {
    const err = toPostgresError(new Error('Cannot use a pool after calling end on the pool'));
    expect(isStrataError(err, 'E_CLOSED')).toBe(true);
  });

  it('passes strata errors through and maps unknown errors to E_QUERY', () => {
    const strata = new QueryError('E_SERIALIZATION', { backend: 'postgres' });
    expect(toPostgresError(strata)).toBe(strata);
    expect(toPostgresError(new TypeError('Converting circular structure to JSON'))).toMatchObject({
      code: 'E_QUERY',
      backend: 'postgres',
    });
    expect(toPostgresError('a string')).toMatchObject({ code: 'E_QUERY' });
  });
});
