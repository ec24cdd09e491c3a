import { isStrataError, sql } from 'strata';
import { createSqliteDriver } from 'strata/sqlite';

export async function quickstart(file: string, email: string): Promise<Record<string, unknown>> {
  const db = createSqliteDriver(file);
  await db.exec('create table if not exists users (id integer primary key, email text unique not null)');
  await db.transaction(async (tx) => {
    await tx.query(sql`insert into users (email) values (${email})`);
  });
  try {
    await db.query(sql`insert into users (email) values (${email})`);
    return {};
  } catch (err) {
    if (!isStrataError(err, 'E_CONSTRAINT')) throw err;
    return { ...err.details }; // { backend: 'sqlite', constraintKind: 'unique', table: 'users', column: 'email', ... }
  } finally {
    await db.close();
  }
}
