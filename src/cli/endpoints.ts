/**
 * Where CLI commands find the engines: a store is `sqlite:<file>` (or a path ending in .db) or a
 * `postgres://` URL; a change log is `sqlite:<file>`, `nats://host:port#stream` or
 * `redis://host:port#prefix`. Defaults follow `strata start`: `DATABASE_URL` else
 * `<data-dir>/social.db`, `NATS_URL` else `<data-dir>/changes.db`.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { ChangeLog } from '../core/changes.js';
import { ConfigError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';

/** What `--database`/`--from`/`--to` name when not given. */
export function defaultStore(dataDir: string, env: NodeJS.ProcessEnv): string {
  return env.DATABASE_URL ?? `sqlite:${resolve(dataDir, 'social.db')}`;
}

/**
 * What `--log` names when not given: the reference app's log, found through its database
 * (`DATABASE_URL`, else `<data-dir>/social.db`); `E_CONFIG` (option `log`) when there is none.
 */
export async function defaultLog(dataDir: string, env: NodeJS.ProcessEnv): Promise<string> {
  const { appLogSpec } = await import('../../examples/social/changes.js');
  const spec = await appLogSpec({
    dataDir: resolve(dataDir),
    databaseUrl: env.DATABASE_URL,
    natsUrl: env.NATS_URL,
  });
  if (spec === undefined) {
    throw new ConfigError('log', `no app has run with data directory ${resolve(dataDir)}; pass --log`);
  }
  return spec;
}

function sqliteFile(spec: string, option: string, mustExist = true): string {
  const file = spec.startsWith('sqlite:') ? spec.slice('sqlite:'.length) : spec;
  if (mustExist && !existsSync(file)) throw new ConfigError(option, `no SQLite file at ${resolve(file)}`);
  return file;
}

/** Opens a store for reading and writing; `E_CONFIG` naming `option` for an unknown form. */
export async function openStore(spec: string, option: string): Promise<SqlDriver> {
  if (/^postgres(ql)?:\/\//.test(spec)) {
    const { createPostgresDriver } = await import('../backends/postgres/postgres-driver.js');
    const driver = createPostgresDriver({ url: spec, maxConnections: 4 });
    await driver.ping();
    return driver;
  }
  if (spec.startsWith('sqlite:') || /\.(db|sqlite|sqlite3)$/.test(spec)) {
    const { createSqliteDriver } = await import('../backends/sqlite/sqlite-driver.js');
    return createSqliteDriver(sqliteFile(spec, option));
  }
  throw new ConfigError(option, 'use sqlite:<file> or a postgres:// URL');
}

/**
 * Opens a change log; `E_CONFIG` naming `option` for an unknown form, a missing stream name, or
 * (unless `create`) a SQLite file that does not exist.
 */
export async function openLog(spec: string, option = 'log', create = false): Promise<ChangeLog> {
  if (spec.startsWith('sqlite:') || /\.(db|sqlite|sqlite3)$/.test(spec)) {
    const { createSqliteChangeLog } = await import('../backends/sqlite/sqlite-change-log.js');
    return createSqliteChangeLog({ filename: sqliteFile(spec, option, !create) });
  }
  const [url, name] = spec.split('#');
  if (spec.startsWith('nats://')) {
    if (!name)
      throw new ConfigError(option, 'name the stream after #, as in nats://127.0.0.1:4222#social_changes');
    const { createNatsChangeLog } = await import('../backends/nats/nats-change-log.js');
    return createNatsChangeLog({ url: url!, name });
  }
  if (spec.startsWith('redis://') || spec.startsWith('rediss://')) {
    if (!name)
      throw new ConfigError(option, 'name the key prefix after #, as in redis://127.0.0.1:6379#social:');
    const { createRedisChangeLog } = await import('../backends/redis/redis-change-log.js');
    return createRedisChangeLog({ url: url!, prefix: name });
  }
  throw new ConfigError(option, 'use sqlite:<file>, nats://host:port#stream or redis://host:port#prefix');
}

/** The data directory's files, for messages. */
export function dataFile(dataDir: string, name: string): string {
  return join(resolve(dataDir), name);
}
