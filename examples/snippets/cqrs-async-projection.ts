import { type SqlDriver, sql } from 'strata';
import { createCommandHandler, createProjectionConsumer, defineProjection } from 'strata/cqrs';
import type { EventStore } from 'strata/events';
import { account } from './cqrs-decider.js';

/** Totals per owner: two tables, kept by a consumer of the global log. */
export const ownerTotals = defineProjection({
  name: 'owner_totals',
  tables: { accounts: 'owner_totals_accounts', totals: 'owner_totals' },
  handles: ['Opened', 'Deposited', 'Withdrawn'],
  streamTypes: ['account'], // only streams named account-...
  schema: (t) => [
    sql`create table if not exists ${t.accounts} (account text primary key, owner text not null)`,
    sql`create table if not exists ${t.totals} (
      owner text primary key, accounts integer not null, total integer not null)`,
  ],
  async apply(tx, event, t) {
    if (event.type === 'Opened') {
      const owner = String(event.data.owner);
      await tx.query(sql`insert into ${t.accounts} (account, owner) values (${event.stream}, ${owner})`);
      await tx.query(sql`insert into ${t.totals} (owner, accounts, total) values (${owner}, 1, 0)
                         on conflict (owner) do update set accounts = ${t.totals}.accounts + 1`);
      return;
    }
    // Events of one stream arrive in order: the account's Opened has been applied already.
    const amount = Number(event.data.amount);
    const delta = event.type === 'Deposited' ? amount : -amount;
    await tx.query(sql`update ${t.totals} set total = total + ${delta}
                       where owner = (select owner from ${t.accounts} where account = ${event.stream})`);
  },
});

export async function asyncOwnerTotals(store: EventStore, readModel: SqlDriver) {
  const accounts = createCommandHandler({ store, decider: account }); // no inline projections
  const projection = createProjectionConsumer({
    projection: ownerTotals,
    store, // follows store.asChangeLog()
    driver: readModel, // the read model's database, and its checkpoint's (strata_checkpoints)
    // The consumer runtime's options: batchSize, concurrency, retry, lease, pollInterval, onError...
    batchSize: 200,
    pollInterval: '500ms',
  });
  await projection.start(); // creates the tables, catches up from its checkpoint, then follows

  await accounts.handle('account-1', { type: 'open', owner: 'ada' });
  await accounts.handle('account-1', { type: 'deposit', amount: 100 });
  await accounts.handle('account-2', { type: 'open', owner: 'ada' });
  await accounts.handle('account-2', { type: 'deposit', amount: 20 });
  await accounts.handle('account-3', { type: 'open', owner: 'bob' });

  await projection.drained(); // every event up to the head as of now is applied (tests, scripts)
  const status = projection.status(); // { position, head, lag, lagSeconds, deadLetters, state, ... }
  const { rows } = await readModel.query(sql`select owner, accounts, total from owner_totals order by owner`);
  await projection.stop(); // finishes running batches and saves the checkpoint
  return { rows, status };
}
