import { type Clock, type SqlDriver, sql, systemClock } from 'strata';
import { createTimePartitioning, type ExpiredPartition } from 'strata/sharding';

export async function postsByMonth(db: SqlDriver, clock: Clock = systemClock) {
  await db.query(
    'create table if not exists posts_archive (id bigint, user_id bigint, created_at timestamptz, body text)',
  );
  // Gets each expired partition once it is detached; the table is dropped when this resolves.
  const archive = async (expired: ExpiredPartition) => {
    await db.query(sql`insert into posts_archive select id, user_id, created_at, body
                       from ${sql.id(expired.schema, expired.table)}`);
  };
  const posts = createTimePartitioning(db, {
    table: 'posts',
    column: 'created_at', // PostgreSQL: timestamptz, or bigint epoch ms
    period: 'month',
    premake: 3,
    retention: { keep: 24, onExpire: archive },
    lockTimeout: '2s', // a step that cannot get its lock in time fails with E_TIMEOUT
    clock,
  });
  // PARTITION BY RANGE (created_at), a DEFAULT partition, indexes on the parent; then maintain().
  const created = await posts.migrate({
    columns: `id bigint not null, user_id bigint not null, created_at timestamptz not null, body text,
              primary key (id, created_at)`,
    indexes: [{ columns: ['user_id', 'created_at'] }],
  });
  return {
    created: created.created,
    // Plain SQL: PostgreSQL puts the row in its partition, or in posts_default when none exists yet.
    write: (id: number, userId: number, at: Date, body: string) =>
      db.query(
        sql`insert into posts (id, user_id, created_at, body) values (${id}, ${userId}, ${at}, ${body})`,
      ),
    // Run hourly or daily (or `strata partitions maintain`): premake, move rows out of the
    // default partition, expire and archive old partitions.
    nightly: () => posts.maintain(),
    status: () => posts.status(),
  };
}
