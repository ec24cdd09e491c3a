import type { SqlDriver } from 'strata';
import {
  createShardMapStore,
  createShardRouter,
  type ShardStrategy,
  type TablePlacement,
} from 'strata/sharding';

/** A deploy step: saves a new version of the `users` map and makes it the one routers use. */
export async function publishShardMap(config: SqlDriver, strategy: ShardStrategy) {
  const maps = createShardMapStore(config);
  await maps.migrate();
  const version = await maps.save('users', strategy); // 1, 2, 3, ...; the first is active at once
  return maps.activate('users', version);
}

/** In every process: route by the active version, and follow the versions activated later. */
export async function routerFromShardMap(
  config: SqlDriver,
  shards: Record<string, SqlDriver>,
  tables: Record<string, TablePlacement>,
) {
  const maps = createShardMapStore(config);
  const active = await maps.active('users');
  if (active === undefined || active.strategy.kind === 'time') throw new Error('no shard map "users"');
  const router = createShardRouter({ shards, strategy: active.strategy, tables });
  const stop = maps.watch(
    'users',
    (map) => {
      // A strategy over other shards throws E_CONFIG here (to onError): that needs a new router.
      if (map.strategy.kind !== 'time') router.setStrategy(map.strategy);
    },
    { since: active.revision, pollInterval: '1s', onError: (err) => console.error(err) },
  );
  return { router, version: () => router.strategy.version, stop };
}
