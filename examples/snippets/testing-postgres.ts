import type { SqlDriver } from 'strata';
import { createPostgresDriver, createPostgresTestDatabase } from 'strata/postgres';

/** Runs `fn` on a fresh database of its own, then drops it, so parallel spec files never share tables. */
export async function withScratchDatabase<T>(fn: (db: SqlDriver) => Promise<T>): Promise<T> {
  const database = await createPostgresTestDatabase({ prefix: 'myapp_test' }); // on DATABASE_URL / PG*
  const db = createPostgresDriver(database.url);
  try {
    return await fn(db);
  } finally {
    await db.close();
    await database.drop(); // WITH (FORCE): sessions still connected do not block it
  }
}
