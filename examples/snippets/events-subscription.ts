import { type SqlDriver, sql } from 'strata';
import { applyIfNewer, createConsumer, createSqlCheckpointStore, migrateApplied } from 'strata/changes';
import type { EventStore, RecordedEvent } from 'strata/events';

/** Keeps a `balances` table from the accounts' events: a durable subscriber with a checkpoint. */
export async function balancesProjection(store: EventStore, db: SqlDriver) {
  await db.exec('create table if not exists balances (account text primary key, balance integer not null)');
  await migrateApplied(db);
  const checkpoints = createSqlCheckpointStore(db);
  await checkpoints.migrate();

  const consumer = createConsumer({
    name: 'balances',
    log: store.asChangeLog(), // the global log: every committed event, in order, never skipping one
    checkpoints,
    tables: ['account'], // stream types: the part of a stream name before the first `-`
    handle: (entry) =>
      db.transaction(async (tx) => {
        const event = entry.after as unknown as RecordedEvent; // entry.key is { stream }
        const amount = Number(event.data.amount ?? 0);
        const delta = event.type === 'Deposited' ? amount : event.type === 'Withdrawn' ? -amount : 0;
        // At-least-once delivery: applyIfNewer records the position with the write, so a redelivery is a no-op.
        await applyIfNewer(tx, 'balances', entry, async () => {
          await tx.query(sql`insert into balances (account, balance) values (${event.stream}, ${delta})
                             on conflict (account) do update set balance = balances.balance + ${delta}`);
        });
      }),
  });
  await consumer.start(); // catches up from its checkpoint, then is woken by each append
  return consumer; // consumer.drained(), consumer.stats(), consumer.stop()
}
