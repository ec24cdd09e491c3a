import { sql } from 'strata';
import { createPostgresDriver, createPostgresEventStore } from 'strata/postgres';

export async function postgresOrders(url: string) {
  const driver = createPostgresDriver({ url, maxConnections: 10 });
  const store = createPostgresEventStore({
    driver,
    tablePrefix: 'shop', // shop_events, shop_streams, shop_snapshots
    longTransactionWarning: '5s', // an append left open this long holds readers of the global log back
    onWarning: (w) => console.warn(w.code, { pid: w.pid, position: w.position }),
  });
  await store.migrate();
  await driver.exec('create table if not exists order_totals (id text primary key, total integer not null)');

  // Events and your own rows in one transaction: both commit, or neither does.
  await driver.transaction(async (tx) => {
    await store.append('order-1', [{ type: 'Placed', data: { total: 42 } }], {
      expected: 'no_stream',
      executor: tx,
    });
    await tx.query(sql`insert into order_totals (id, total) values (${'order-1'}, ${42})`);
  });

  // Several streams in one atomic append, each with its own expected version.
  await store.appendMany([
    {
      stream: 'stock-sku1',
      expected: 'any',
      events: [{ type: 'Reserved', data: { order: 'order-2', n: 1 } }],
    },
    { stream: 'order-2', expected: 'no_stream', events: [{ type: 'Placed', data: { total: 7 } }] },
  ]);

  const log = await store.readAll(0, 100); // order-1, stock-sku1, order-2: commit order, no gaps skipped
  const blocked = await store.blockedBy(); // undefined, or the open append holding readers back

  await store.close();
  await driver.close();
  return { log, blocked };
}
