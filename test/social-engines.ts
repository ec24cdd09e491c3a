/**
 * Storage for the reference app's integration specs, one per engine: a private data directory
 * on SQLite, or a private PostgreSQL database (the app creates its shard databases beside it)
 * plus a directory for the embedded change log. Each `open()` gives the app options pointing at
 * fresh storage and a cleanup that removes all of it.
 */

import type { SocialAppOptions } from '../examples/social/app.js';
import { dropShardDatabases } from '../examples/social/stores.js';
import { createPostgresTestDatabase } from '../src/backends/postgres/postgres-test-database.js';
import { services, tempDir } from './helpers.js';

export interface SocialTestEngine {
  name: 'sqlite' | 'postgres';
  enabled: boolean;
  open(): Promise<{ options: SocialAppOptions; cleanup: () => Promise<void> }>;
}

/**
 * The SQLite and PostgreSQL engines for a spec; `prefix` names its directories and database,
 * `postgres` adds options in PostgreSQL mode and decides whether that engine is enabled.
 */
export function socialTestEngines(
  prefix: string,
  postgres: { options?: Partial<SocialAppOptions>; enabled?: boolean } = {},
): SocialTestEngine[] {
  return [
    {
      name: 'sqlite',
      enabled: true,
      async open() {
        const dir = tempDir(`strata-${prefix}-`);
        return { options: { dataDir: dir.path, cacheTtl: '1h' }, cleanup: async () => dir.remove() };
      },
    },
    {
      name: 'postgres',
      enabled: postgres.enabled ?? services.postgres,
      async open() {
        const database = await createPostgresTestDatabase({ prefix });
        // The change log is still an embedded file in PostgreSQL mode: give it a private directory.
        const dir = tempDir(`strata-${prefix}-pg-`);
        return {
          options: { databaseUrl: database.url, dataDir: dir.path, cacheTtl: '1h', ...postgres.options },
          cleanup: async () => {
            // The shards are databases beside the meta database, created by the app.
            await dropShardDatabases(database.url);
            await database.drop();
            dir.remove();
          },
        };
      },
    },
  ];
}
