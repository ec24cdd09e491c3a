import type { SqlDriver } from 'strata';
import { createShardRouter, hashStrategy } from 'strata/sharding';
import { createSqliteDriver } from 'strata/sqlite';

export async function openShards(dir: string) {
  // Four SQLite files here; in production one PostgreSQL database (or server) per shard.
  const ids = ['s0', 's1', 's2', 's3'];
  const shards: Record<string, SqlDriver> = {};
  for (const id of ids) shards[id] = createSqliteDriver(`${dir}/${id}.db`);
  const analytics = createSqliteDriver(`${dir}/analytics.db`);

  const router = createShardRouter({
    shards,
    strategy: hashStrategy({ shards: ids }),
    tables: {
      users: { key: 'id' },
      // Placed by the same key as users: a user's posts live on the user's shard.
      posts: { key: 'user_id', colocateWith: 'users', primaryKey: 'id' },
      // Small and read everywhere: a full copy on every shard, joined locally.
      countries: { reference: true },
      // Vertical partitioning: the whole table lives in its own store.
      page_views: { store: 'analytics' },
    },
    stores: { analytics },
    scatterTimeout: '2s',
  });

  // DDL and reference data go to every shard.
  await router.broadcast(
    'create table if not exists users (id integer primary key, name text, country text)',
  );
  await router.broadcast(
    `create table if not exists posts (id integer primary key, user_id integer not null, body text,
       likes integer not null default 0, created_at text not null)`,
  );
  await router.broadcast('create table if not exists countries (code text primary key, name text)');
  await router.broadcast(
    `insert into countries values ('de', 'Germany'), ('jp', 'Japan') on conflict (code) do nothing`,
  );
  await router.storeOf('page_views').exec('create table if not exists page_views (path text, at text)');

  return {
    router,
    close: async () => {
      for (const driver of [...Object.values(shards), analytics]) await driver.close();
    },
  };
}
