import { sql } from 'strata';
import {
  applyIfNewer,
  createConsumer,
  createRelay,
  createSqlCheckpointStore,
  migrateApplied,
} from 'strata/changes';
import { createSqliteChangeCapture, createSqliteChangeLog, createSqliteDriver } from 'strata/sqlite';

export async function changesPipeline(dir: string): Promise<Array<{ user_id: number; posts: number }>> {
  const app = createSqliteDriver(`${dir}/app.db`);
  await app.exec(
    'create table if not exists posts (id integer primary key, user_id integer not null, body text)',
  );
  await app.exec(
    'create table if not exists post_counts (user_id integer primary key, posts integer not null)',
  );
  await migrateApplied(app);

  // Capture: triggers write every change into an outbox table, in the writer's own transaction.
  const capture = createSqliteChangeCapture(app, { source: 'app', tables: ['posts'] });
  await capture.install();
  // The log, and a relay that acknowledges outbox rows only once the log accepted them.
  const log = createSqliteChangeLog({ filename: `${dir}/changes.db` });
  const relay = createRelay({ source: capture, log });
  await relay.start();

  // A consumer with a durable checkpoint keeps a derived table; applyIfNewer makes it idempotent.
  const checkpoints = createSqlCheckpointStore(app);
  await checkpoints.migrate();
  const counts = createConsumer({
    name: 'post-counts',
    log,
    checkpoints,
    handle: (change) =>
      app.transaction((tx) =>
        applyIfNewer(tx, 'post-counts', change, async () => {
          const delta = change.op === 'insert' ? 1 : change.op === 'delete' ? -1 : 0;
          const userId = (change.after ?? change.before)?.user_id;
          await tx.query(sql`insert into post_counts (user_id, posts) values (${userId}, ${delta})
                             on conflict (user_id) do update set posts = post_counts.posts + ${delta}`);
        }).then(() => undefined),
      ),
  });
  await counts.start();

  await app.query(
    sql`insert into posts (user_id, body) values (${1}, ${'hello'}), (${1}, ${'again'}), (${2}, ${'hi'})`,
  );
  await counts.drained(3);

  await counts.stop();
  await relay.stop();
  await log.close();
  const { rows } = await app.query<{ user_id: number; posts: number }>(
    'select user_id, posts from post_counts order by user_id',
  );
  await app.close();
  return rows;
}
