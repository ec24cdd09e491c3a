import { setImmediate as yieldToIo } from 'node:timers/promises';
import { type SqlDriver, sql } from 'strata';
import {
  createReshard,
  createShardMapStore,
  createShardRouter,
  hashStrategy,
  type ShardRouter,
} from 'strata/sharding';
import { createSqliteDriver } from 'strata/sqlite';

/** Splits 2 SQLite shards into 4 while a writer keeps inserting and updating users. */
export async function splitUnderWrites(dir: string, seedUsers = 1_000) {
  const ids = ['s0', 's1', 's2', 's3'];
  const shards: Record<string, SqlDriver> = {};
  for (const id of ids) {
    shards[id] = createSqliteDriver(`${dir}/${id}.db`);
    // Every moved table must exist on the new shards before the reshard starts.
    await shards[id].exec(
      'create table if not exists users (id integer primary key, name text not null, visits integer not null)',
    );
  }
  // The shard maps and the reshard's durable state live in one database every process reaches.
  const config = createSqliteDriver(`${dir}/config.db`);
  const maps = createShardMapStore(config);
  await maps.migrate();
  const from = hashStrategy({ shards: ['s0', 's1'] });
  await maps.save('users', from); // version 1, active

  const tables = { users: { key: 'id' } };
  // A router serves a fixed set of shards: this one the two of the old map.
  const gate = createShardRouter({ shards: { s0: shards.s0!, s1: shards.s1! }, strategy: from, tables });
  let router: ShardRouter = gate;
  for (let id = 1; id <= seedUsers; id++) {
    await router.query(id, sql`insert into users (id, name, visits) values (${id}, ${`user ${id}`}, 0)`);
  }

  // The application: every write passes the gate (which the cutover pauses) and is routed by
  // whichever router is current when it gets through.
  let nextId = seedUsers + 1;
  let visits = 0;
  let writing = true;
  const writer = (async () => {
    while (writing) {
      const id = nextId++;
      await gate.withWrite(() =>
        router.query(id, sql`insert into users (id, name, visits) values (${id}, ${`user ${id}`}, 0)`),
      );
      const visitor = 1 + (id % seedUsers);
      await gate.withWrite(() =>
        router.query(visitor, sql`update users set visits = visits + 1 where id = ${visitor}`),
      );
      visits++;
      await yieldToIo(); // SQLite calls are synchronous: give the reshard its turn
    }
  })();

  const reshard = createReshard({
    name: 'users',
    mapStore: maps,
    to: hashStrategy({ shards: ids }),
    shards, // drivers of both maps' shards
    tables,
    state: config,
    workDir: dir, // the reshard's change log, removed when it is done
    router: gate, // its writes pause at the cutover
    // Called while writes are paused, once the new map is active: route over all four shards.
    onCutover: (strategy) => {
      router = createShardRouter({ shards, strategy, tables });
    },
  });
  const plan = await reshard.plan(); // rows that will move, per source and target; changes nothing
  const status = await reshard.run(); // capture, copy, catchup, verify, cutover, cleanup
  writing = false;
  await writer;

  return {
    plan, // plan.moving of plan.rows rows move, plan.moves per table, source and target
    status, // status.step === 'done', status.longestPauseMs: how long writes waited
    written: { users: nextId - 1, visits },
    router,
    close: async () => {
      for (const driver of [...Object.values(shards), config]) await driver.close();
    },
  };
}
