import { isStrataError, sql } from 'strata';
import { createPostgresDriver } from 'strata/postgres';

/** Reads counts and large integers: int8 is a number when exact, a BigInt beyond; numeric stays a string. */
export async function postgresNumbers(url: string): Promise<Record<string, unknown>> {
  const db = createPostgresDriver({
    url,
    maxConnections: 5,
    connectTimeout: '2s',
    statementTimeout: '5s',
    applicationName: 'billing',
  });
  try {
    await db.ping();
    const { rows } = await db.query(
      sql`select count(*) as n, ${'9007199254740993'}::int8 as big, ${'1.10'}::numeric as price`,
    );
    return rows[0]!; // { n: 1, big: 9007199254740993n, price: '1.10' }
  } finally {
    await db.close();
  }
}

/** What an unreachable server looks like: `E_CONNECTION` with where, never a password. */
export async function unreachablePostgres(port: number): Promise<Record<string, unknown>> {
  const db = createPostgresDriver({
    url: `postgres://app:secret@127.0.0.1:${port}/shop`,
    connectTimeout: '1s',
  });
  try {
    await db.query('select 1');
    return {};
  } catch (err) {
    if (!isStrataError(err, 'E_CONNECTION')) throw err;
    // backend 'postgres', host '127.0.0.1', port, database 'shop', user 'app', reason 'connection refused'
    return { ...err.details };
  } finally {
    await db.close();
  }
}
