import { createSqliteDriver, createSqliteEventStore } from 'strata/sqlite';

export async function quickstart(file: string) {
  const driver = createSqliteDriver(file);
  const store = createSqliteEventStore({ driver }); // tables strata_events, strata_streams, strata_snapshots
  await store.migrate(); // optional: the first call creates the tables

  // A stream is one entity's history; its name's prefix before `-` is its type ("account").
  await store.append('account-42', [{ type: 'Opened', data: { owner: 'ada' } }], { expected: 'no_stream' });
  const { version, positions } = await store.append('account-42', [
    { type: 'Deposited', data: { amount: 100 } },
    { type: 'Withdrawn', data: { amount: 30 } },
  ]);

  const history = await store.readStream('account-42'); // versions 1, 2, 3
  const newestFirst = await store.readStream('account-42', { direction: 'backwards', limit: 1 });
  const everything = await store.readAll(0, 100); // every stream, in global order

  await store.close();
  await driver.close();
  return { version, positions, history, newestFirst, everything };
}
