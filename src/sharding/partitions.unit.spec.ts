import { describe, expect, it } from 'vitest';
import { postgresDialect } from '../backends/postgres/postgres-dialect.js';
import { sqliteDialect } from '../backends/sqlite/sqlite-dialect.js';
import { isStrataError } from '../core/errors.js';
import type { SqlDialect, SqlDriver } from '../core/sql.js';
import { createTimePartitioning, type TimePartitioningOptions } from './partitions.js';
import { hashStrategy, timeStrategy } from './strategies.js';

/** A driver that records every call and answers none: construction and pure methods must not touch it. */
function silentDriver(dialect: SqlDialect): SqlDriver & { calls: string[] } {
  const calls: string[] = [];
  const refuse = (what: string) => () => {
    calls.push(what);
    return Promise.reject(new Error(`unexpected ${what}`));
  };
  return {
    dialect,
    name: 'silent',
    closed: false,
    calls,
    query: refuse('query'),
    exec: refuse('exec'),
    transaction: refuse('transaction'),
    ping: refuse('ping'),
    close: refuse('close'),
  } as unknown as SqlDriver & { calls: string[] };
}

const base: TimePartitioningOptions = { table: 'posts', column: 'created_at', period: 'month' };

function configError(fn: () => unknown): { option?: string; message: string } {
  try {
    fn();
  } catch (err) {
    expect(isStrataError(err, 'E_CONFIG'), String(err)).toBe(true);
    return err as { option?: string; message: string };
  }
  throw new Error('expected E_CONFIG');
}

describe('createTimePartitioning options', () => {
  const driver = silentDriver(postgresDialect);

  it.each([
    ['table', { table: 'bad-name' }],
    ['table', { table: '' }],
    ['table', { table: 'a'.repeat(43) }],
    ['column', { column: 'created at' }],
    ['schema', { schema: '1public' }],
    ['period', { period: 'week' }],
    ['period', { period: undefined }],
    ['period', { period: hashStrategy({ shards: ['a', 'b'] }) }],
    ['premake', { premake: -1 }],
    ['premake', { premake: 1.5 }],
    ['premake', { premake: 1_001 }],
    ['retention', { retention: 12 }],
    ['retention.keep', { retention: { keep: -1 } }],
    ['retention.keep', { retention: { keep: '12' } }],
    ['retention.onExpire', { retention: { keep: 1, onExpire: 'archive' } }],
    ['clock', { clock: { now: 5 } }],
    ['lockTimeout', { lockTimeout: 'soon' }],
    ['lockTimeout', { lockTimeout: 0 }],
  ])('rejects a bad %s with E_CONFIG naming it', (option, patch) => {
    const err = configError(() =>
      createTimePartitioning(driver, { ...base, ...(patch as Partial<TimePartitioningOptions>) }),
    );
    expect(err.option).toBe(option);
  });

  it('rejects something that is not a driver', () => {
    expect(configError(() => createTimePartitioning({} as SqlDriver, base)).option).toBe('driver');
  });

  it('never echoes a rejected value in the message', () => {
    const err = configError(() => createTimePartitioning(driver, { ...base, table: 'secret-table-name' }));
    expect(err.message).not.toContain('secret');
  });

  it('accepts a table name of 42 characters and runs no statement when created', () => {
    const recording = silentDriver(postgresDialect);
    createTimePartitioning(recording, {
      ...base,
      table: 'a'.repeat(42),
      retention: { keep: 3, onExpire: async () => {} },
    });
    expect(recording.calls).toEqual([]);
  });

  it('takes a time strategy and exposes it frozen', () => {
    const strategy = timeStrategy({ period: 'day', version: 2 });
    const parts = createTimePartitioning(driver, { ...base, period: strategy });
    expect(parts.strategy).toBe(strategy);
    expect(Object.isFrozen(parts.strategy)).toBe(true);
    expect(createTimePartitioning(driver, base).strategy).toEqual({
      kind: 'time',
      version: 1,
      period: 'month',
      zone: 'UTC',
    });
  });

  it('uses native partitions where the dialect has them and period tables elsewhere', () => {
    expect(createTimePartitioning(driver, base).mode).toBe('native');
    expect(createTimePartitioning(silentDriver(sqliteDialect), base).mode).toBe('tables');
  });

  it('rejects a bad definition before running any statement', async () => {
    const recording = silentDriver(sqliteDialect);
    const parts = createTimePartitioning(recording, base);
    for (const [definition, option] of [
      ['', 'columns'],
      [{ columns: 'id integer', indexes: 'created_at' }, 'indexes'],
      [{ columns: 'id integer', indexes: [{ columns: [] }] }, 'indexes[0].columns'],
      [{ columns: 'id integer', indexes: [{ columns: ['bad col'] }] }, 'indexes[0].columns'],
    ] as const) {
      const err = await parts.migrate(definition as never).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONFIG')).toBe(true);
      expect((err as { option?: string }).option).toBe(option);
    }
    expect(recording.calls).toEqual([]);
  });
});

describe('partitionOf and periodOf', () => {
  const driver = silentDriver(postgresDialect);
  const of = (period: 'day' | 'month' | 'year') => createTimePartitioning(driver, { ...base, period });

  it('names month partitions <table>_pYYYY_MM, in UTC', () => {
    const months = of('month');
    expect(months.partitionOf(new Date('2026-03-31T23:59:59.999Z'))).toBe('posts_p2026_03');
    expect(months.partitionOf('2026-04-01T00:00:00Z')).toBe('posts_p2026_04');
    expect(months.partitionOf('2026-04-01T01:00:00+02:00')).toBe('posts_p2026_03');
    expect(months.partitionOf(Date.UTC(2025, 11, 31, 12))).toBe('posts_p2025_12');
  });

  it('names day and year partitions, across leap days and year ends', () => {
    expect(of('day').partitionOf('2024-02-29T12:00:00Z')).toBe('posts_p2024_02_29');
    expect(of('day').partitionOf(Date.UTC(2025, 0, 1) - 1)).toBe('posts_p2024_12_31');
    expect(of('year').partitionOf('2026-12-31T23:59:59Z')).toBe('posts_p2026');
    expect(of('year').partitionOf('0050-06-01')).toBe('posts_p0050');
  });

  it('gives the period bounds: start inclusive, next start exclusive', () => {
    const period = of('month').periodOf('2024-02-10T08:00:00Z');
    expect(period.from.toISOString()).toBe('2024-02-01T00:00:00.000Z');
    expect(period.to.toISOString()).toBe('2024-03-01T00:00:00.000Z');
    const year = of('year').periodOf('0099-03-01');
    expect(year.from.toISOString()).toBe('0099-01-01T00:00:00.000Z');
    expect(year.to.toISOString()).toBe('0100-01-01T00:00:00.000Z');
  });

  it.each([[undefined], [null], ['yesterday'], [Number.NaN], [new Date('nope')], [{}], ['10000-01-01']])(
    'rejects %j with E_SHARD_KEY naming table and column',
    (value) => {
      let caught: unknown;
      try {
        of('month').partitionOf(value as never);
      } catch (err) {
        caught = err;
      }
      expect(isStrataError(caught, 'E_SHARD_KEY')).toBe(true);
      expect(caught).toMatchObject({ table: 'posts', column: 'created_at' });
    },
  );
});
