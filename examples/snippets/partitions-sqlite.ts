import { type Clock, type SqlDriver, systemClock } from 'strata';
import { createTimePartitioning } from 'strata/sharding';

export async function eventsByMonth(db: SqlDriver, clock: Clock = systemClock) {
  const events = createTimePartitioning(db, {
    table: 'events',
    column: 'at', // SQLite: INTEGER epoch ms or ISO-8601 TEXT
    period: 'month',
    premake: 2, // this month and the next two exist ahead of time
    retention: { keep: 12, onExpire: 'drop' }, // this month and the 12 before it
    clock,
  });
  // Creates events_template and the view `events`, then runs maintain().
  await events.migrate({
    columns: 'id integer not null, at integer not null, kind text not null',
    indexes: [{ columns: ['kind'] }],
  });
  return {
    // Writes go to the period's table (events_p2026_03), created when missing.
    record: (id: number, at: Date, kind: string) => events.insert({ id, at, kind }),
    // Reads go through the view, a UNION ALL of the period tables.
    countByKind: async () =>
      (
        await db.query<{ kind: string; n: number }>(
          'select kind, count(*) as n from events group by kind order by kind',
        )
      ).rows,
    // Run daily (or `strata partitions maintain`): premake, expire, rebuild the view.
    nightly: () => events.maintain(),
    status: () => events.status(),
  };
}
