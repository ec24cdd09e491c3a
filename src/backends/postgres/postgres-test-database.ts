import pg from 'pg';
import { ConfigError } from '../../core/errors.js';
import { configIdentifier, quoteIdentifierStandard } from '../../core/sql.js';
import { testEnvironment } from '../../testing/environment.js';
import { type PostgresEndpoint, toPostgresError } from './postgres-errors.js';

/** Options for `createPostgresTestDatabase`. */
export interface PostgresTestDatabaseOptions {
  /** A URL of the server, with a role that may create databases (default: the test environment's `postgresUrl`). */
  url?: string;
  /** The start of the database name (default `strata_test`); letters, digits and underscores. */
  prefix?: string;
}

/** A database created for one spec file. */
export interface PostgresTestDatabase {
  /** The URL of the new database (the server URL with its path replaced). */
  readonly url: string;
  /** The new database's name. */
  readonly name: string;
  /** Drops the database, disconnecting any session still on it; safe to call twice. */
  drop(): Promise<void>;
}

const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Creates a fresh, uniquely named database on the server at `url` (default: the test
 * environment's PostgreSQL) and returns its URL and a `drop()` that removes it `WITH (FORCE)`.
 * Use one per spec file so specs running in parallel never share tables. Throws `E_CONFIG` for a
 * bad prefix or URL and `E_CONNECTION` when the server cannot be reached.
 */
export async function createPostgresTestDatabase(
  options: PostgresTestDatabaseOptions = {},
): Promise<PostgresTestDatabase> {
  const serverUrl = options.url ?? testEnvironment().postgresUrl;
  const prefix = configIdentifier(options.prefix ?? 'strata_test', 'prefix');
  const name = `${prefix}_${process.pid}_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  configIdentifier(name, 'prefix');
  let url: URL;
  try {
    url = new URL(serverUrl);
  } catch {
    throw new ConfigError('url', 'not a valid URL; expected postgres://user@host:port/database');
  }
  const admin = { connectionString: serverUrl, connectionTimeoutMillis: CONNECT_TIMEOUT_MS };
  await onServer(admin, `create database ${quoteIdentifierStandard(name)}`);
  url.pathname = `/${name}`;
  let dropped: Promise<void> | undefined;
  return Object.freeze({
    url: url.toString(),
    name,
    drop(): Promise<void> {
      dropped ??= (async () => {
        // A logical replication slot pins its database: end its walsender, drop it, then the database.
        for (let attempt = 0; attempt < 20; attempt++) {
          const left = await onServer(
            admin,
            `select count(*) as n from (
               select pg_terminate_backend(active_pid) from pg_replication_slots
                 where database = ${quoteLiteral(name)} and active_pid is not null) t`,
          )
            .then(() =>
              onServer(
                admin,
                `select pg_drop_replication_slot(slot_name) from pg_replication_slots
                 where database = ${quoteLiteral(name)} and not active`,
              ),
            )
            .then(() =>
              onServer(
                admin,
                `select count(*)::int as n from pg_replication_slots where database = ${quoteLiteral(name)}`,
              ),
            );
          if (left === 0) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        await onServer(admin, `drop database if exists ${quoteIdentifierStandard(name)} with (force)`);
      })();
      return dropped;
    },
  });
}

/** A SQL string literal; only used with names this module generated. */
function quoteLiteral(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/** Runs one statement on the server; returns the `n` column of its first row, if any. */
async function onServer(config: pg.ClientConfig, statement: string): Promise<number | undefined> {
  const client = new pg.Client(config);
  const endpoint: PostgresEndpoint = {
    host: client.host,
    port: client.port,
    database: client.database,
    user: client.user,
  };
  const context = { connectTimeoutMs: CONNECT_TIMEOUT_MS };
  // A dropped connection after the statement is of no interest; without a listener it would crash.
  client.on('error', () => undefined);
  try {
    await client.connect();
    const result = await client.query<{ n?: number }>(statement);
    const n = result.rows[0]?.n;
    return n === undefined ? undefined : Number(n);
  } catch (err) {
    throw toPostgresError(err, endpoint, context);
  } finally {
    await client.end().catch(() => undefined);
  }
}
