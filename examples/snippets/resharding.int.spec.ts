import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createSqliteDriver } from '../../src/backends/sqlite/sqlite-driver.js';
import { sql } from '../../src/core/sql.js';
import { createShardMapStore } from '../../src/sharding/map-store.js';
import { hashStrategy, placeSync } from '../../src/sharding/strategies.js';
import { tempDir } from '../../test/helpers.js';
import { splitUnderWrites } from './resharding.js';

const dir = tempDir('strata-snippets-resharding-');
const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  dir.remove();
});

describe('resharding snippet', () => {
  it('splits 2 SQLite shards into 4 under writes: every row once, on its new shard, with its last value', async () => {
    const seedUsers = 600;
    const { plan, status, written, router, close } = await splitUnderWrites(dir.path, seedUsers);
    cleanups.push(close);

    expect(plan.sources).toEqual(['s0', 's1']);
    expect(plan.rows).toBeGreaterThanOrEqual(seedUsers);
    expect(plan.moving).toBeGreaterThan(0);
    expect(plan.moves.every((m) => m.table === 'users' && ['s2', 's3'].includes(m.target))).toBe(true);

    expect(status.step).toBe('done');
    expect(status.targets).toEqual(['s0', 's1', 's2', 's3']);
    expect(status.rowsCopied).toBeGreaterThan(0);
    expect(status.longestPauseMs).toBeDefined();
    // The writer kept going while the reshard ran.
    expect(written.users).toBeGreaterThan(seedUsers);
    expect(written.visits).toBeGreaterThan(0);

    const to = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
    const seen = new Map<number, { shard: string; name: string; visits: number }>();
    let duplicates = 0;
    let misplaced = 0;
    for (const [shard, driver] of router.shards) {
      const { rows } = await driver.query<{ id: number; name: string; visits: number }>(
        'select id, name, visits from users',
      );
      expect(rows.length).toBeGreaterThan(0);
      for (const row of rows) {
        if (seen.has(row.id)) duplicates++;
        if (placeSync(to, row.id) !== shard) misplaced++;
        seen.set(row.id, { shard, name: row.name, visits: row.visits });
      }
    }
    expect(duplicates).toBe(0);
    expect(misplaced).toBe(0);
    expect(seen.size).toBe(written.users);
    for (let id = 1; id <= written.users; id++) expect(seen.get(id)?.name).toBe(`user ${id}`);
    const totalVisits = [...seen.values()].reduce((sum, r) => sum + r.visits, 0);
    expect(totalVisits).toBe(written.visits);

    // The returned router routes by the new map over four shards.
    expect([...router.shards.keys()]).toEqual(['s0', 's1', 's2', 's3']);
    const last = written.users;
    expect(await router.query(last, sql`select name from users where id = ${last}`)).toEqual([
      { name: `user ${last}` },
    ]);

    // The new map is active and stable; nothing of the reshard is left on the shards or on disk.
    const config = createSqliteDriver(join(dir.path, 'config.db'));
    cleanups.push(() => config.close());
    const active = await createShardMapStore(config).active('users');
    expect(active?.version).toBe(status.toVersion);
    expect(active?.state).toBe('stable');
    for (const driver of router.shards.values()) {
      const { rows } = await driver.query(
        sql`select name from sqlite_schema where name like ${'_strata_r%'}`,
      );
      expect(rows).toEqual([]);
    }
    expect(readdirSync(dir.path).filter((f) => f.startsWith('reshard-'))).toEqual([]);
  });
});
