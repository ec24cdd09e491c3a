import { describe, expect, it } from 'vitest';
import { isStrataError } from '../../core/errors.js';
import { createPostgresChangeCapture, type PostgresChangeCaptureOptions } from './postgres-change-source.js';

const base: PostgresChangeCaptureOptions = {
  url: 'postgres://postgres@127.0.0.1:1/none',
  source: 'app',
  tables: ['users'],
};

function configError(options: unknown): { option?: string; message: string } {
  try {
    createPostgresChangeCapture(options as PostgresChangeCaptureOptions);
  } catch (err) {
    expect(isStrataError(err, 'E_CONFIG')).toBe(true);
    return err as { option?: string; message: string };
  }
  throw new Error('expected E_CONFIG');
}

describe('postgres change capture options', () => {
  it('derives slot and publication names from the source', () => {
    const capture = createPostgresChangeCapture({ ...base, source: 'Social.EU-1' });
    expect(capture.name).toBe('Social.EU-1');
    expect(capture.slot).toBe('strata_social_eu_1');
    expect(capture.publication).toBe('strata_social_eu_1');
    expect(capture.stats()).toMatchObject({
      status: 'idle',
      snapshot: { state: 'pending', tables: 1 },
      confirmedLsn: undefined,
    });
  });

  it('accepts schema-qualified tables and explicit names', () => {
    const capture = createPostgresChangeCapture({
      ...base,
      tables: ['public.users', 'audit.events'],
      slot: 'my_slot',
      publication: 'my_pub',
      snapshot: false,
    });
    expect(capture.slot).toBe('my_slot');
    expect(capture.publication).toBe('my_pub');
    expect(capture.stats().snapshot.state).toBe('off');
  });

  it.each([
    [{ ...base, source: 'bad name' }, 'source'],
    [{ ...base, source: undefined }, 'source'],
    [{ ...base, tables: [] }, 'tables'],
    [{ ...base, tables: 'users' }, 'tables'],
    [{ ...base, tables: ['users; drop table x'] }, 'tables'],
    [{ ...base, tables: ['a.b.c'] }, 'tables'],
    [{ ...base, tables: ['users', 'users'] }, 'tables'],
    [{ ...base, tables: [42] }, 'tables'],
    [{ ...base, slot: 'Upper' }, 'slot'],
    [{ ...base, slot: 'x'.repeat(64) }, 'slot'],
    [{ ...base, source: 'a'.repeat(60) }, 'slot'],
    [{ ...base, publication: 'no-dash' }, 'publication'],
    [{ ...base, heartbeat: 0 }, 'heartbeat'],
    [{ ...base, heartbeat: '5 parsecs' }, 'heartbeat'],
    [{ ...base, connectTimeout: -1 }, 'connectTimeout'],
    [{ ...base, lagWarning: { bytes: 0 } }, 'lagWarning.bytes'],
    [{ ...base, batchSize: 0 }, 'batchSize'],
    [{ ...base, batchSize: 1.5 }, 'batchSize'],
    [{ ...base, snapshot: 'yes' }, 'snapshot'],
    [{ ...base, replicaIdentityFull: 1 }, 'replicaIdentityFull'],
    [{ ...base, onWarning: 'log' }, 'onWarning'],
    [{ ...base, onError: {} }, 'onError'],
    [{ ...base, url: 'mysql://x' }, 'url'],
    [{ ...base, backoff: { factor: 0 } }, 'backoff.factor'],
  ])('rejects %j naming the option', (options, option) => {
    expect(configError(options).option).toBe(option);
  });

  it('names a bad table without echoing other input', () => {
    const err = configError({ ...base, tables: ['users', 'users'] });
    expect(err.message).toContain('"users"');
    const url = configError({ ...base, url: 'postgres://u:secret@[bad' });
    expect(url.message).not.toContain('secret');
  });

  it('refuses a position of another source', async () => {
    const capture = createPostgresChangeCapture(base);
    const err = await capture
      .acknowledge('other@0000000000000001.00000000' as never)
      .catch((e: unknown) => e);
    expect(isStrataError(err, 'E_POSITION')).toBe(true);
    await capture.stop();
  });
});
