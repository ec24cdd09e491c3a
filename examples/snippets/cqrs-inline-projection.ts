import { type SqlDriver, sql } from 'strata';
import { createCommandHandler, defineProjection } from 'strata/cqrs';
import type { EventStore } from 'strata/events';
import { account } from './cqrs-decider.js';

/** Balances per account, read with plain SQL. */
export const balances = defineProjection({
  name: 'balances', // its positions table: balances__positions
  tables: { balances: 'account_balances' }, // logical name -> table
  handles: ['Opened', 'Deposited', 'Withdrawn'],
  // Name tables through `t` and indexes through `names`: a rebuild runs this DDL for its shadow tables.
  schema: (t, names) => [
    sql`create table if not exists ${t.balances} (
      account text primary key, owner text not null, balance integer not null)`,
    sql`create index if not exists ${sql.id(`${names.balances}_by_owner`)} on ${t.balances} (owner)`,
  ],
  // `tx` is the transaction the event is applied in: use it, never the driver.
  async apply(tx, event, t) {
    const data = event.data as { owner?: string; amount?: number };
    if (event.type === 'Opened') {
      await tx.query(
        sql`insert into ${t.balances} (account, owner, balance) values (${event.stream}, ${data.owner}, 0)`,
      );
      return;
    }
    const delta = event.type === 'Deposited' ? Number(data.amount) : -Number(data.amount);
    await tx.query(
      sql`update ${t.balances} set balance = balance + ${delta} where account = ${event.stream}`,
    );
  },
});

/** One account per owner, enforced by a unique key in the same transaction as the append. */
export const owners = defineProjection({
  name: 'owners',
  tables: { owners: 'account_owners' },
  handles: ['Opened'],
  schema: (t) => sql`create table if not exists ${t.owners} (owner text primary key, account text not null)`,
  async apply(tx, event, t) {
    await tx.query(
      sql`insert into ${t.owners} (owner, account) values (${event.data.owner}, ${event.stream})`,
    );
  },
});

export async function inlineBalances(store: EventStore, driver: SqlDriver) {
  const accounts = createCommandHandler({
    store,
    decider: account,
    driver, // the event store's own driver: the append and the projections share its transaction
    projections: [balances, owners], // tables created on first use (or migrateProjections)
  });
  await accounts.handle('account-1', { type: 'open', owner: 'ada' });
  await accounts.handle('account-1', { type: 'deposit', amount: 100 });
  await accounts.handle('account-1', { type: 'withdraw', amount: 30 });

  // The owners projection refuses a second account for ada (E_CONSTRAINT): the Opened event and
  // the balances row roll back with it.
  const duplicate = await accounts
    .handle('account-2', { type: 'open', owner: 'ada' })
    .catch((err: unknown) => err);

  // Read your own write: the row is committed when `handle` returns.
  const { rows } = await driver.query(sql`select account, owner, balance from account_balances`);
  return { rows, duplicate, account2: await store.streamInfo('account-2') };
}
