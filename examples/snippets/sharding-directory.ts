import type { SqlDriver } from 'strata';
import { createShardRouter, directoryStrategy, hashStrategy } from 'strata/sharding';

export async function tenantRouter(directoryStore: SqlDriver, shards: Record<string, SqlDriver>) {
  const router = createShardRouter({
    shards, // s0, s1, s2
    strategy: directoryStrategy({
      shards: ['s0', 's1', 's2'],
      table: 'tenant_shards',
      fallback: hashStrategy({ shards: ['s0', 's1'] }), // tenants without an entry
      cacheTtl: '30s', // other processes see a changed entry within 30 s
    }),
    directory: directoryStore, // where the tenant -> shard table lives
    tables: { invoices: { key: 'tenant' } },
  });
  await router.directory!.migrate();
  // A large tenant gets a shard of its own; small ones share s0 and s1 by hash.
  await router.directory!.assign('acme', 's2');
  return router;
}
