import { describe, expect, it } from 'vitest';
import { createPostgresEventStore } from '../backends/postgres/postgres-event-store.js';
import { createSqliteEventStore } from '../backends/sqlite/sqlite-event-store.js';
import { isStrataError } from '../core/errors.js';
import type { StandardSchemaV1 } from '../core/validation.js';
import {
  defaultStreamType,
  type EventStoreOptions,
  isVersionConflict,
  resolveEventStoreOptions,
  versionConflictError,
} from './event-store.js';

const schema: StandardSchemaV1 = {
  '~standard': { version: 1, vendor: 'x', validate: (v: unknown) => ({ value: v }) },
};

function configError(options: EventStoreOptions): { option: string } {
  try {
    resolveEventStoreOptions(options);
  } catch (err) {
    if (isStrataError(err, 'E_CONFIG')) return err as unknown as { option: string };
    throw err;
  }
  throw new Error('expected E_CONFIG');
}

describe('event store options', () => {
  it('fills the defaults: table names from the prefix, the name from the events table', () => {
    const r = resolveEventStoreOptions({});
    expect(r.tables).toEqual({
      prefix: 'strata',
      events: 'strata_events',
      streams: 'strata_streams',
      snapshots: 'strata_snapshots',
    });
    expect(r.name).toBe('strata_events');
    expect(
      resolveEventStoreOptions({ tablePrefix: 'app', snapshots: { table: 'snaps' } }).tables,
    ).toMatchObject({
      events: 'app_events',
      snapshots: 'snaps',
    });
  });

  it('names the bad option at construction', () => {
    expect(configError({ tablePrefix: 'bad prefix' }).option).toBe('tablePrefix');
    expect(configError({ tablePrefix: 'x'.repeat(41) }).option).toBe('tablePrefix');
    expect(configError({ name: 'has space' }).option).toBe('name');
    expect(configError({ snapshots: { table: '1bad' } }).option).toBe('snapshots.table');
    expect(configError({ snapshots: { policy: 3 as unknown as () => number } }).option).toBe(
      'snapshots.policy',
    );
    expect(configError({ streamType: 'x' as unknown as () => string }).option).toBe('streamType');
    expect(configError({ types: {} as unknown as [] }).option).toBe('types');
    expect(configError({ types: [{ type: '', version: 1 }] }).option).toBe('types[0].type');
    expect(configError({ types: [{ type: 'A', version: 1.5 }] }).option).toBe('types[0].version');
    expect(
      configError({
        types: [
          { type: 'A', version: 1 },
          { type: 'A', version: 2 },
        ],
      }).option,
    ).toBe('types[1].type');
    expect(configError({ types: [{ type: 'A', version: 1, schema: {} as typeof schema }] }).option).toBe(
      'types[0].schema',
    );
    expect(configError({ types: [{ type: 'A', version: 2, upcasters: { 2: (d) => d } }] }).option).toBe(
      'types[0].upcasters',
    );
    expect(
      configError({ types: [{ type: 'A', version: 2, upcasters: { 1: 'no' as unknown as () => never } }] })
        .option,
    ).toBe('types[0].upcasters');
    expect(() =>
      resolveEventStoreOptions({
        types: [{ type: 'A', version: 3, schema, upcasters: { 1: (d) => d, 2: (d) => d } }],
      }),
    ).not.toThrow();
  });

  it('refuses drivers of the wrong engine before any I/O', () => {
    expect(() => createSqliteEventStore({ driver: {} as never })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'driver' }),
    );
    expect(() => createPostgresEventStore({ driver: {} as never })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG', option: 'driver' }),
    );
  });
});

describe('stream types and conflicts', () => {
  it('takes the part of a stream name before the first dash as its type', () => {
    expect(defaultStreamType('account-42')).toBe('account');
    expect(defaultStreamType('order-2026-01')).toBe('order');
    expect(defaultStreamType('singleton')).toBe('singleton');
    expect(defaultStreamType('-leading')).toBe('-leading');
  });

  it('builds a version conflict with stream, expected and actual, and recognises it by code', () => {
    const err = versionConflictError('account-42', 3, 5);
    expect(err.code).toBe('E_VERSION_CONFLICT');
    expect(err.details).toEqual({ stream: 'account-42', expected: 3, actual: 5 });
    expect(err.message).toBe('stream "account-42" is not at the expected version');
    expect(isVersionConflict(err)).toBe(true);
    expect(isVersionConflict(new Error('E_VERSION_CONFLICT'))).toBe(false);
  });
});
