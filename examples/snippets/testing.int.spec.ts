import { sql } from 'strata';
import { createPostgresDriver } from 'strata/postgres';
import { describe, expect, it } from 'vitest';
import { env, services } from '../../test/helpers.js';
import { withScratchDatabase } from './testing-postgres.js';

describe.skipIf(!services.postgres)('testing snippets on PostgreSQL', () => {
  it('testing-postgres: runs on a fresh database and drops it afterwards', async () => {
    const name = await withScratchDatabase(async (db) => {
      await db.exec('create table t (id integer primary key)');
      const { rows } = await db.query<{ name: string }>('select current_database() as name');
      return rows[0]!.name;
    });
    expect(name).toMatch(/^myapp_test_/);
    const admin = createPostgresDriver(env.postgresUrl);
    const { rowCount } = await admin.query(sql`select 1 from pg_database where datname = ${name}`);
    await admin.close();
    expect(rowCount).toBe(0);
  });
});
