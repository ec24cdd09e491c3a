import { describe, expect, it } from 'vitest';
import { compileSql, sql } from '../../core/sql.js';
import { postgresDialect } from './postgres-dialect.js';
import { createPostgresDriver, type PgPoolLike, type PostgresDriverOptions } from './postgres-driver.js';

function configError(create: () => unknown): unknown {
  try {
    create();
  } catch (err) {
    return err;
  }
  return undefined;
}

const unusedPool: PgPoolLike = {
  connect: () => Promise.reject(new Error('not used')),
  end: () => Promise.resolve(),
};

describe('postgresDialect', () => {
  it('compiles $n placeholders and quotes schema-qualified identifiers', () => {
    const compiled = compileSql(
      sql`select * from ${sql.id('audit', 'order')} where a = ${1} and b = ${'x'}`,
      postgresDialect,
    );
    expect(compiled).toEqual({
      text: 'select * from "audit"."order" where a = $1 and b = $2',
      params: [1, 'x'],
    });
  });

  it('describes PostgreSQL capabilities', () => {
    expect(postgresDialect.capabilities).toMatchObject({
      returning: true,
      savepoints: true,
      transactionalDdl: true,
      upsert: true,
      listenNotify: true,
      skipLocked: true,
      jsonb: true,
      declarativePartitioning: true,
      logicalReplication: true,
      concurrentWriters: true,
      maxParameters: 65_535,
    });
    expect(postgresDialect.capabilities.isolationLevels).toEqual([
      'read uncommitted',
      'read committed',
      'repeatable read',
      'serializable',
    ]);
  });
});

describe('createPostgresDriver options', () => {
  const url = 'postgres://postgres@127.0.0.1:5432/postgres';

  it.each([
    [{ url, connectTimeout: '-1s' }, 'connectTimeout'],
    [{ url, connectTimeout: 0 }, 'connectTimeout'],
    [{ url, connectTimeout: '5 parsecs' }, 'connectTimeout'],
    [{ url, maxConnections: 0 }, 'maxConnections'],
    [{ url, maxConnections: 2.5 }, 'maxConnections'],
    [{ url, idleTimeout: '-5s' }, 'idleTimeout'],
    [{ url, statementTimeout: 'soon' }, 'statementTimeout'],
    [{ url, applicationName: 'x'.repeat(64) }, 'applicationName'],
    [{ url, name: '' }, 'name'],
    [{ url, onBackgroundError: 'log' as unknown as () => void }, 'onBackgroundError'],
    [{ url: 'mysql://root@127.0.0.1/db' }, 'url'],
    [{ url: '' }, 'url'],
    [{ pool: {} as PgPoolLike }, 'pool'],
    [{ pool: unusedPool, url }, 'url'],
    [{ pool: unusedPool, maxConnections: 3 }, 'maxConnections'],
    [{ pool: unusedPool, statementTimeout: '1s' }, 'statementTimeout'],
  ] as [PostgresDriverOptions, string][])('rejects %o with E_CONFIG naming %s', (options, option) => {
    expect(configError(() => createPostgresDriver(options))).toMatchObject({ code: 'E_CONFIG', option });
  });

  it('reports a malformed URL without echoing it, since it may hold a password', () => {
    for (const bad of [
      'postgres://user:supersecret@[::1',
      'not a url supersecret',
      'postgres://u:%zzsupersecret@h/db',
    ]) {
      const err = configError(() => createPostgresDriver(bad));
      expect(err).toMatchObject({ code: 'E_CONFIG', option: 'url' });
      expect((err as Error).message).not.toContain('supersecret');
      expect(JSON.stringify(err)).not.toContain('supersecret');
      expect((err as Error).cause).toBeUndefined();
    }
  });

  it('names the driver after the database and exposes the endpoint without the password', async () => {
    const db = createPostgresDriver('postgres://writer:supersecret@db.internal:6543/app');
    expect(db.name).toBe('postgres:app');
    expect(db.endpoint).toEqual({
      backend: 'postgres',
      host: 'db.internal',
      port: 6543,
      database: 'app',
      user: 'writer',
    });
    expect(JSON.stringify(db.endpoint)).not.toContain('supersecret');
    await db.close();
  });

  it('leaves a caller-supplied pool open on close and refuses calls afterwards', async () => {
    let ended = false;
    const db = createPostgresDriver({
      pool: {
        ...unusedPool,
        end: async () => {
          ended = true;
        },
      },
      name: 'mine',
    });
    await db.close();
    await db.close();
    expect(ended).toBe(false);
    await expect(db.query('select 1')).rejects.toMatchObject({ code: 'E_CLOSED' });
  });

  it('rejects an unknown isolation level with E_CONFIG', async () => {
    const db = createPostgresDriver({ pool: unusedPool });
    await expect(
      db.transaction(async () => 1, { isolation: 'snapshot' as 'serializable' }),
    ).rejects.toMatchObject({ code: 'E_CONFIG', option: 'isolation' });
    await db.close();
  });
});
