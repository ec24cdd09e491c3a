import { afterAll, describe, expect, it } from 'vitest';
import { services } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { makePosition } from '../core/changes.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { applyIfNewer, migrateApplied } from './apply-if-newer.js';

const cleanups: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

const engines = [
  { name: 'sqlite', enabled: true, open: async () => createSqliteDriver(':memory:') as SqlDriver },
  {
    name: 'postgres',
    enabled: services.postgres,
    open: async () => {
      const database = await createPostgresTestDatabase({ prefix: 'apply_if_newer' });
      const driver = createPostgresDriver(database.url);
      cleanups.push(() => database.drop());
      return driver as SqlDriver;
    },
  },
];

describe.each(engines)('applyIfNewer on $name', (engine) => {
  it.skipIf(!engine.enabled)(
    'applies each row change once, and never an older one after a newer',
    async () => {
      const db = await engine.open();
      cleanups.push(() => db.close());
      await migrateApplied(db);
      await db.exec('create table view_users (id integer primary key, name text not null)');
      const apply = (n: number, name: string) =>
        db.transaction((tx) =>
          applyIfNewer(
            tx,
            'users_view',
            { source: 'app', table: 'users', key: { id: 1 }, position: makePosition('app', BigInt(n)) },
            () =>
              tx
                .query(
                  sql`insert into view_users (id, name) values (${1}, ${name}) on conflict (id) do update set name = excluded.name`,
                )
                .then(() => undefined),
          ),
        );
      expect(await apply(10, 'first')).toBe(true);
      expect(await apply(10, 'first again')).toBe(false);
      expect(await apply(30, 'third')).toBe(true);
      expect(await apply(20, 'second, late')).toBe(false);
      const { rows } = await db.query<{ name: string }>('select name from view_users');
      expect(rows).toEqual([{ name: 'third' }]);
      // Another scope keeps its own positions.
      expect(
        await db.transaction((tx) =>
          applyIfNewer(
            tx,
            'other_view',
            { source: 'app', table: 'users', key: { id: 1 }, position: makePosition('app', 20n) },
            async () => undefined,
          ),
        ),
      ).toBe(true);
    },
  );

  it.skipIf(!engine.enabled)('records nothing when the apply fails inside the transaction', async () => {
    const db = await engine.open();
    cleanups.push(() => db.close());
    await migrateApplied(db);
    const change = { source: 'app', table: 't', key: { id: 5 }, position: makePosition('app', 5n) };
    await db
      .transaction((tx) =>
        applyIfNewer(tx, 's', change, async () => {
          throw new Error('write failed');
        }),
      )
      .catch(() => undefined);
    expect(await db.transaction((tx) => applyIfNewer(tx, 's', change, async () => undefined))).toBe(true);
  });
});
