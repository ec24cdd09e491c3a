import type { SqlDriver } from 'strata';
import { sql } from 'strata';
import { createWriteBehind } from 'strata/cache';
import { createSqliteWriteBehindQueue } from 'strata/sqlite';

export function viewCounters(db: SqlDriver, queueFile: string) {
  const queue = createSqliteWriteBehindQueue({ filename: queueFile }); // survives kill -9
  const counts = createWriteBehind<number>({
    queue,
    flushEvery: '1s',
    maxBatch: 500,
    // Last writer wins per key; `version` grows, so a batch written twice changes nothing.
    writeBatch: (items) =>
      db.transaction(async (tx) => {
        for (const { key, value, version } of items) {
          await tx.query(sql`insert into views (page, n, version) values (${key}, ${value ?? 0}, ${version})
                             on conflict (page) do update set n = excluded.n, version = excluded.version
                             where views.version < excluded.version`);
        }
      }),
  });
  return {
    // Acknowledged once queued durably; the database sees it within a second, in a batch.
    view: async (page: string) => counts.set(page, (counts.get(page)?.value ?? 0) + 1),
    pending: (page: string) => counts.get(page)?.value,
    close: async () => {
      await counts.close(); // drains what is queued
      await queue.close();
    },
  };
}
