import type { Duration } from 'strata';
import { sql } from 'strata';
import type { ReplicaSet } from 'strata/replication';

/** A timeline that may be a little old, but never older than `bound`. */
export async function recentNotes(set: ReplicaSet, author: string, bound: Duration = '2s') {
  return set.read(
    async (db, info) => ({
      servedBy: info.node, // a replica whose staleness is within the bound, else `primary`
      notes: (
        await db.query<{ id: number; body: string }>(
          sql`select id, body from notes where author = ${author} order by id desc limit 20`,
        )
      ).rows,
    }),
    { consistency: { maxLag: bound } },
  );
}
