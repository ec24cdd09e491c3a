import { deepStrictEqual } from 'node:assert/strict';
import { sql } from 'strata';
import { deciderSpec, projectionSpec } from 'strata/testing';
import { account } from './cqrs-decider.js';
import { balances } from './cqrs-inline-projection.js';

/** Given past events, when a command, then these events, this error or this state. No database. */
export async function accountSpecs() {
  const opened = { type: 'Opened', data: { owner: 'ada' } } as const;
  const spec = deciderSpec(account);

  await spec
    .given([])
    .when({ type: 'open', owner: 'ada' })
    .then([{ type: 'Opened', data: { owner: 'ada' } }]);
  await spec.given([opened]).when({ type: 'open', owner: 'ada' }).then([]); // nothing to do
  await spec
    .given([opened, { type: 'Deposited', data: { amount: 20 } }])
    .when({ type: 'withdraw', amount: 50 })
    .thenThrows('E_INSUFFICIENT_FUNDS'); // an error code, or a predicate (err) => boolean
  await spec
    .given([opened])
    .when({ type: 'deposit', amount: 20 })
    .thenState({ open: true, owner: 'ada', balance: 20 }); // after the decided events
}

/** Given events, when more events, then these rows: on SQLite in memory, through the real apply. */
export async function balancesSpecs() {
  await projectionSpec(balances)
    .given([
      { stream: 'account-1', type: 'Opened', data: { owner: 'ada' } },
      { stream: 'account-1', type: 'Deposited', data: { amount: 100 } },
      { stream: 'account-2', type: 'Opened', data: { owner: 'bob' } },
    ])
    .when([{ stream: 'account-1', type: 'Withdrawn', data: { amount: 30 } }])
    .thenRows('balances', [
      // the logical table name; rows in any order
      { account: 'account-1', owner: 'ada', balance: 70 },
      { account: 'account-2', owner: 'bob', balance: 0 },
    ]);

  // Or any assertion on the database after the events.
  await projectionSpec(balances)
    .given([{ stream: 'account-9', type: 'Opened', data: { owner: 'cy' } }])
    .then(async ({ query }) => {
      const rows = await query(sql`select account from account_balances where owner = ${'cy'}`);
      deepStrictEqual(rows, [{ account: 'account-9' }]);
    });
}
