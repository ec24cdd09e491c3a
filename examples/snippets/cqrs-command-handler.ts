import { createCommandHandler } from 'strata/cqrs';
import { createSqliteDriver, createSqliteEventStore } from 'strata/sqlite';
import { account } from './cqrs-decider.js';

export async function bankCommands(file: string) {
  const driver = createSqliteDriver(file);
  const store = createSqliteEventStore({ driver });
  const accounts = createCommandHandler({
    store,
    decider: account,
    // On E_VERSION_CONFLICT: load again, decide again on the fresh state, append again.
    retry: { attempts: 5, initialDelay: '5ms' }, // default 3 attempts, 10ms doubling to 1s
  });

  await accounts.handle('account-1', { type: 'open', owner: 'ada' });
  const deposited = await accounts.handle(
    'account-1',
    { type: 'deposit', amount: 100 },
    { metadata: { user: 'ada' } }, // merged into every decided event's metadata
  );
  // deposited.state: { open: true, owner: 'ada', balance: 100 }; deposited.nextExpectedVersion: 2

  // Two deposits racing on one stream: the one that loses the append decides again and goes through.
  await Promise.all([
    accounts.handle('account-1', { type: 'deposit', amount: 5 }),
    accounts.handle('account-1', { type: 'deposit', amount: 5 }),
  ]);

  // The version a client saw (an If-Match header): checked once, never retried.
  const stale = await accounts
    .handle('account-1', { type: 'withdraw', amount: 10 }, { expected: 2 })
    .catch((err: unknown) => err); // E_VERSION_CONFLICT, details { stream, expected: 2, actual: 4 }

  // The request's id as the event id: a retried request is stored once.
  const withdrawal = { type: 'withdraw', amount: 30 } as const;
  const first = await accounts.handle('account-1', withdrawal, { eventIds: ['withdrawal-7'] });
  const retried = await accounts.handle('account-1', withdrawal, { eventIds: ['withdrawal-7'] });
  // retried.alreadyAppended: true, nothing appended; retried.state.balance: 80 as after `first`

  const refused = await accounts
    .handle('account-1', { type: 'withdraw', amount: 1_000 })
    .catch((err: unknown) => err); // E_INSUFFICIENT_FUNDS from decide: nothing appended

  const history = await store.readStream('account-1');
  await store.close();
  await driver.close();
  return { deposited, stale, first, retried, refused, history };
}
