import { AssertionError } from 'node:assert/strict';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPostgresDriver } from '../../src/backends/postgres/postgres-driver.js';
import { createPostgresEventStore } from '../../src/backends/postgres/postgres-event-store.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../../src/backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../../src/backends/sqlite/sqlite-driver.js';
import { createSqliteEventStore } from '../../src/backends/sqlite/sqlite-event-store.js';
import { isStrataError } from '../../src/core/errors.js';
import { type SqlDriver, sql } from '../../src/core/sql.js';
import { createCommandHandler } from '../../src/cqrs/decider.js';
import { createProjectionConsumer } from '../../src/cqrs/projection.js';
import { deciderSpec } from '../../src/testing/decider-spec.js';
import { projectionSpec } from '../../src/testing/projection-spec.js';
import { services, tempDir } from '../../test/helpers.js';
import { asyncOwnerTotals, ownerTotals } from './cqrs-async-projection.js';
import { bankCommands } from './cqrs-command-handler.js';
import { account } from './cqrs-decider.js';
import { balances, inlineBalances } from './cqrs-inline-projection.js';
import { rebuildBalances } from './cqrs-rebuild.js';
import { accountSpecs, balancesSpecs } from './cqrs-testing.js';

const dir = tempDir('strata-snippets-cqrs-');
afterAll(() => dir.remove());

function sqlite(name: string) {
  const driver = createSqliteDriver(join(dir.path, `${name}.db`));
  const store = createSqliteEventStore({ driver });
  return {
    driver,
    store,
    close: async () => {
      await store.close();
      await driver.close();
    },
  };
}

async function all(driver: SqlDriver, statement: ReturnType<typeof sql>) {
  return (await driver.query(statement)).rows;
}

describe('cqrs snippets', () => {
  it('bankCommands: decides, retries a racing append, refuses a stale version, stores a retried request once', async () => {
    const r = await bankCommands(join(dir.path, 'bank.db'));
    expect(r.deposited).toMatchObject({
      nextExpectedVersion: 2,
      state: { open: true, owner: 'ada', balance: 100 },
      alreadyAppended: false,
      attempts: 1,
    });
    expect(isStrataError(r.stale, 'E_VERSION_CONFLICT')).toBe(true);
    expect((r.stale as { details: unknown }).details).toEqual({
      stream: 'account-1',
      expected: 2,
      actual: 4,
    });
    expect(r.first).toMatchObject({ alreadyAppended: false, nextExpectedVersion: 5, state: { balance: 80 } });
    expect(r.retried).toMatchObject({
      alreadyAppended: true,
      nextExpectedVersion: 5,
      state: { balance: 80 },
    });
    expect(isStrataError(r.refused, 'E_INSUFFICIENT_FUNDS')).toBe(true);
    expect(r.history.map((e) => [e.version, e.type, e.data.amount])).toEqual([
      [1, 'Opened', undefined],
      [2, 'Deposited', 100],
      [3, 'Deposited', 5],
      [4, 'Deposited', 5],
      [5, 'Withdrawn', 30],
    ]);
    expect(r.history[1]?.metadata).toEqual({ user: 'ada' });
    expect(r.history[4]?.id).toBe('withdrawal-7');
  });

  it('inlineBalances: rows commit with the append, and a failing projection rolls the append back', async () => {
    const { driver, store, close } = sqlite('inline');
    const r = await inlineBalances(store, driver);
    expect(r.rows).toEqual([{ account: 'account-1', owner: 'ada', balance: 70 }]);
    expect(isStrataError(r.duplicate, 'E_CONSTRAINT')).toBe(true);
    expect(r.account2).toBeUndefined();
    expect(await all(driver, sql`select owner, account from account_owners`)).toEqual([
      { owner: 'ada', account: 'account-1' },
    ]);
    // Per-stream positions recorded in the same transaction as the rows.
    const [position] = await all(driver, sql`select stream, position from balances__positions`);
    expect(position).toEqual({ stream: 'account-1', position: await store.head() });
    await close();
  });

  it('asyncOwnerTotals: follows the log, only account streams; a replay from the beginning changes nothing', async () => {
    const { driver, store, close } = sqlite('async');
    // Another stream type: filtered out by streamTypes (it would count a third account for ada).
    await store.append('savings-1', [{ type: 'Opened', data: { owner: 'ada' } }]);
    const r = await asyncOwnerTotals(store, driver);
    const expected = [
      { owner: 'ada', accounts: 2, total: 120 },
      { owner: 'bob', accounts: 1, total: 0 },
    ];
    expect(r.rows).toEqual(expected);
    expect(r.status).toMatchObject({
      projection: 'owner_totals',
      consumer: 'projection.owner_totals',
      deadLetters: 0,
      lastErrorCode: undefined,
    });
    expect(r.status.head).toBe(await store.head());

    // A second consumer from position 0 redelivers every event: the positions table skips them.
    const replay = createProjectionConsumer({
      projection: ownerTotals,
      store,
      driver,
      consumer: 'owner-totals-replay',
      lease: false,
    });
    await replay.start();
    await replay.drained();
    await replay.stop();
    const rows = await all(driver, sql`select owner, accounts, total from owner_totals order by owner`);
    expect(rows).toEqual(expected);
    expect(await all(driver, sql`select stream from owner_totals__positions order by stream`)).toEqual([
      { stream: 'account-1' },
      { stream: 'account-2' },
      { stream: 'account-3' },
    ]);
    await close();
  });

  it('rebuildBalances: brings the new column to every row, and version 1 writers keep working after the swap', async () => {
    const { driver, store, close } = sqlite('rebuild');
    await inlineBalances(store, driver);
    const v1 = createCommandHandler({ store, decider: account, driver, projections: [balances] });
    for (let i = 0; i < 3; i++) {
      await v1.handle(`account-r${i}`, { type: 'open', owner: `owner-${i}` });
      await v1.handle(`account-r${i}`, { type: 'deposit', amount: 10 });
    }
    const { result, progress, rows } = await rebuildBalances(store, driver);
    const handled = (await store.readAll(0, 1000)).length;
    expect(result).toMatchObject({
      projection: 'balances',
      position: await store.head(),
      applied: handled,
      resumedFrom: 0,
      swapAttempts: 1,
    });
    expect(progress.map((p) => p.phase)).toEqual(['replay', 'swap']);
    expect(rows).toEqual(
      expect.arrayContaining([
        { account: 'account-1', balance: 70, deposits: 1 },
        { account: 'account-r2', balance: 10, deposits: 1 },
      ]),
    );
    expect(rows).toHaveLength(4);
    // The shadow tables are gone; the old code's inline writes land in the new table.
    const shadow = await all(driver, sql`select name from sqlite_master where name like ${'%__rebuild%'}`);
    expect(shadow).toEqual([]);
    await v1.handle('account-r0', { type: 'deposit', amount: 5 });
    const [r0] = await all(
      driver,
      sql`select balance, deposits from account_balances where account = ${'account-r0'}`,
    );
    expect(r0).toEqual({ balance: 15, deposits: 1 });
    // A second rebuild counts that deposit too.
    const again = await rebuildBalances(store, driver);
    expect(again.rows).toContainEqual({ account: 'account-r0', balance: 15, deposits: 2 });
    await close();
  });

  it('the Given/When/Then specs pass, and fail when the code is wrong', async () => {
    await accountSpecs();
    await balancesSpecs();
    const opened = { type: 'Opened', data: { owner: 'ada' } } as const;
    await expect(
      deciderSpec(account)
        .given([opened])
        .when({ type: 'deposit', amount: 20 })
        .then([{ type: 'Deposited', data: { amount: 21 } }]),
    ).rejects.toBeInstanceOf(AssertionError);
    await expect(
      deciderSpec(account)
        .given([opened])
        .when({ type: 'deposit', amount: 20 })
        .thenThrows('E_INVALID_AMOUNT'),
    ).rejects.toBeInstanceOf(AssertionError);
    await expect(
      projectionSpec(balances)
        .given([{ stream: 'account-1', type: 'Opened', data: { owner: 'ada' } }])
        .thenRows('balances', [{ account: 'account-1', owner: 'ada', balance: 1 }]),
    ).rejects.toBeInstanceOf(AssertionError);
  });

  describe.skipIf(!services.postgres)('on PostgreSQL', () => {
    let db: PostgresTestDatabase;
    beforeAll(async () => {
      db = await createPostgresTestDatabase({ prefix: 'strata_snippets_cqrs' });
    });
    afterAll(async () => {
      await db?.drop();
    });

    it('the inline, async and rebuild snippets run unchanged on PostgreSQL; the rebuild backfills what the inline projection missed', async () => {
      const driver = createPostgresDriver({ url: db.url, maxConnections: 6 });
      const store = createPostgresEventStore({ driver, tablePrefix: 'bank' });
      const inline = await inlineBalances(store, driver);
      expect(inline.rows).toEqual([{ account: 'account-1', owner: 'ada', balance: 70 }]);
      expect(isStrataError(inline.duplicate, 'E_CONSTRAINT')).toBe(true);
      expect(inline.account2).toBeUndefined();

      const totals = await asyncOwnerTotals(store, driver);
      // account-1 (ada) came from the inline snippet with 70, the async snippet's open of it decided
      // nothing; then 100 and 20 more for ada's accounts, none for bob's.
      expect(totals.rows).toEqual([
        { owner: 'ada', accounts: 2, total: 190 },
        { owner: 'bob', accounts: 1, total: 0 },
      ]);

      const rebuilt = await rebuildBalances(store, driver);
      expect(rebuilt.result).toMatchObject({ projection: 'balances', resumedFrom: 0, swapAttempts: 1 });
      expect(rebuilt.rows).toContainEqual({ account: 'account-1', balance: 170, deposits: 2 });
      // The async snippet appended without the inline projection: the rebuild brings those in too.
      expect(rebuilt.rows).toHaveLength(3);
      expect(rebuilt.rows).toContainEqual({ account: 'account-2', balance: 20, deposits: 1 });
      const indexes = await all(
        driver,
        sql`select indexname from pg_indexes where tablename = ${'account_balances'} order by indexname`,
      );
      expect(indexes).toEqual([
        { indexname: 'account_balances_by_owner' },
        { indexname: 'account_balances_pkey' },
      ]);
      await store.close();
      await driver.close();
    });
  });
});
