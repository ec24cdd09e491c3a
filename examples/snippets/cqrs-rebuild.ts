import { type SqlDriver, sql } from 'strata';
import { defineProjection, type RebuildProgress, rebuildProjection } from 'strata/cqrs';
import type { EventStore } from 'strata/events';

/** Version 2 of the balances projection: same name and tables, a new `deposits` column. */
export const balancesV2 = defineProjection({
  name: 'balances',
  tables: { balances: 'account_balances' },
  handles: ['Opened', 'Deposited', 'Withdrawn'],
  schema: (t, names) => [
    sql`create table if not exists ${t.balances} (
      account text primary key, owner text not null, balance integer not null,
      deposits integer not null default 0)`, // a default: version 1 writers still fit the new table
    sql`create index if not exists ${sql.id(`${names.balances}_by_owner`)} on ${t.balances} (owner)`,
  ],
  async apply(tx, event, t) {
    const data = event.data as { owner?: string; amount?: number };
    if (event.type === 'Opened') {
      await tx.query(
        sql`insert into ${t.balances} (account, owner, balance) values (${event.stream}, ${data.owner}, 0)`,
      );
    } else if (event.type === 'Deposited') {
      await tx.query(sql`update ${t.balances} set balance = balance + ${Number(data.amount)},
                         deposits = deposits + 1 where account = ${event.stream}`);
    } else {
      await tx.query(
        sql`update ${t.balances} set balance = balance - ${Number(data.amount)} where account = ${event.stream}`,
      );
    }
  },
});

export async function rebuildBalances(store: EventStore, driver: SqlDriver) {
  const progress: RebuildProgress[] = [];
  // Replays the whole log into account_balances__rebuild (and balances__positions__rebuild) in
  // batches, catches up with the head, then swaps them in within one transaction.
  const result = await rebuildProjection({
    projection: balancesV2,
    store,
    driver, // the read model's database: with inline writers, the store's own driver
    batchSize: 500, // the default; at most 10 000
    onProgress: (p) => {
      progress.push(p); // after each batch ('replay') and before each swap attempt ('swap')
    },
  });
  // result: { projection: 'balances', position, applied, resumedFrom, swapAttempts }
  const { rows } = await driver.query(sql`select account, balance, deposits from account_balances`);
  return { result, progress, rows };
}
