import type { SqlDriver } from 'strata';
import { createIdGenerator } from 'strata/sharding';

export async function postIds(db: SqlDriver) {
  // Leases the lowest free worker id (0..31) of the id space "posts" in a table of `db`;
  // every process that shares the id space must use the same database.
  const ids = await createIdGenerator({ allocate: { store: db, name: 'posts', leaseTtl: '30s' } });
  const first = ids.next(); // a number below 2^53: exact in JSON and in every SQL driver
  const more = ids.nextMany(1_000); // ascending, all greater than `first`
  return {
    first,
    more,
    parts: ids.decode(first), // { time, workerId, sequence }
    close: () => ids.close(), // releases the worker id
  };
}
