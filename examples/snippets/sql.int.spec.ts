import { createServer } from 'node:net';
import { join } from 'node:path';
import type { SqlDriver } from 'strata';
import { createPostgresDriver, createPostgresTestDatabase, type PostgresTestDatabase } from 'strata/postgres';
import { createSqliteDriver } from 'strata/sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { services, tempDir } from '../../test/helpers.js';
import { postgresNumbers, unreachablePostgres } from './sql-postgres.js';
import { sqliteSingleConnection } from './sql-sqlite.js';
import { compiledForPostgres, searchUsers } from './sql-template.js';
import { createAccounts, transfer } from './sql-transactions.js';

const dir = tempDir('strata-snippets-sql-');
afterAll(() => dir.remove());

/** A loopback port that was free a moment ago. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The same snippet bodies on every engine. */
function describeOnEngine(name: string, enabled: boolean, open: () => Promise<SqlDriver>): void {
  describe.skipIf(!enabled)(`sql snippets on ${name}`, () => {
    let db: SqlDriver;
    beforeAll(async () => {
      db = await open();
      await db.exec(
        'create table users (id integer primary key, email text not null, created_at bigint not null)',
      );
      await createAccounts(db);
    });
    afterAll(async () => {
      await db?.close();
    });

    it('sql-template: filters, sorts and binds values', async () => {
      await db.query(
        `insert into users (id, email, created_at) values (1, 'ada@example.com', 10), (2, 'grace@example.com', 20), (3, 'alan@example.com', 30)`,
      );
      expect(await searchUsers(db, {})).toEqual([
        { id: 1, email: 'ada@example.com' },
        { id: 3, email: 'alan@example.com' },
        { id: 2, email: 'grace@example.com' },
      ]);
      expect(
        await searchUsers(db, {
          emails: ['ada@example.com', 'grace@example.com'],
          since: 15,
          sort: 'created_at',
        }),
      ).toEqual([{ id: 2, email: 'grace@example.com' }]);
      expect(await searchUsers(db, { sort: 'created_at', newestFirst: true })).toEqual([
        { id: 3, email: 'alan@example.com' },
        { id: 2, email: 'grace@example.com' },
        { id: 1, email: 'ada@example.com' },
      ]);
      expect(await searchUsers(db, { emails: [`x' or '1'='1`] })).toEqual([]);
    });

    it('sql-transactions: commits, keeps the transfer when the memo is refused, rolls back an overdraft', async () => {
      await db.query('insert into accounts (id, balance) values (1, 100), (2, 0)');
      const committed: string[] = [];
      expect(
        await transfer(db, { from: 1, to: 2, amount: 30, memo: 'rent' }, () => committed.push('rent')),
      ).toBe(70);
      const longMemo = 'x'.repeat(41);
      expect(
        await transfer(db, { from: 1, to: 2, amount: 20, memo: longMemo }, () => committed.push('long')),
      ).toBe(50);
      const overdraft = await transfer(db, { from: 2, to: 1, amount: 999, memo: 'no' }, () =>
        committed.push('overdraft'),
      ).catch((e: unknown) => e);
      expect(overdraft).toMatchObject({ code: 'E_CONSTRAINT', constraintKind: 'check' });
      expect(committed).toEqual(['rent', 'long']);
      const balances = await db.query<{ id: number; balance: number }>(
        'select id, balance from accounts order by id',
      );
      expect(balances.rows).toEqual([
        { id: 1, balance: 50 },
        { id: 2, balance: 50 },
      ]);
      expect((await db.query('select body from memos')).rows).toEqual([{ body: 'rent' }]);
    });
  });
}

describeOnEngine('sqlite', true, async () => createSqliteDriver(join(dir.path, 'engine.db')));

let pgDatabase: PostgresTestDatabase | undefined;
afterAll(async () => {
  await pgDatabase?.drop();
});
describeOnEngine('postgres', services.postgres, async () => {
  pgDatabase = await createPostgresTestDatabase({ prefix: 'strata_snippets_sql' });
  return createPostgresDriver(pgDatabase.url);
});

describe('sql snippets, engine specific', () => {
  it('sql-template: compiles for PostgreSQL as documented', () => {
    expect(compiledForPostgres()).toEqual({
      text: 'select id, email from "users" where email in ($1, $2) and created_at >= $3 order by "email" asc',
      params: ['ada@example.com', 'grace@example.com', 1_700_000],
    });
  });

  it('sql-sqlite: WAL mode, and E_TRANSACTION for the driver called inside its own transaction', async () => {
    expect(await sqliteSingleConnection(join(dir.path, 'single.db'))).toEqual({
      journalMode: 'wal',
      mistake: 'E_TRANSACTION',
    });
  });

  it('sql-postgres: an unreachable server is E_CONNECTION naming where, without the password', async () => {
    const port = await freePort();
    const details = await unreachablePostgres(port);
    expect(details).toMatchObject({
      backend: 'postgres',
      host: '127.0.0.1',
      port,
      database: 'shop',
      user: 'app',
      reason: 'connection refused',
    });
    expect(JSON.stringify(details)).not.toContain('secret');
  });

  describe.skipIf(!services.postgres)('on PostgreSQL', () => {
    let database: PostgresTestDatabase;
    beforeAll(async () => {
      database = await createPostgresTestDatabase({ prefix: 'strata_snippets_pg' });
    });
    afterAll(async () => {
      await database?.drop();
    });

    it('sql-postgres: int8 as number or BigInt, numeric as string', async () => {
      expect(await postgresNumbers(database.url)).toEqual({ n: 1, big: 9007199254740993n, price: '1.10' });
    });
  });
});
