/**
 * PostgreSQL streaming replication for replica sets: positions are WAL LSNs (the primary's
 * `pg_current_wal_lsn()`, a standby's `pg_last_wal_replay_lsn()`), and the helpers tests use to
 * put real lag on a standby (pausing replay, delaying it with `recovery_min_apply_delay`).
 */
import { type Duration, parseDuration } from '../../core/duration.js';
import { StrataError } from '../../core/errors.js';
import type { PositionProvider, PrimaryPosition, ReplicaPosition } from '../../core/positions.js';
import type { SqlExecutor } from '../../core/sql.js';
import { formatLsn, parseLsn } from './postgres-lsn.js';

// With synchronous_commit off a commit returns before its record is written, so only the insert
// position is sure to be past it; otherwise the write position is, and it never points past a
// page header that a standby would only pass with the next record.
const AFTER_WRITE = `select (case when current_setting('synchronous_commit') = 'off'
  then pg_current_wal_insert_lsn() else pg_current_wal_lsn() end)::text as lsn`;

const PRIMARY = `select pg_current_wal_lsn()::text as lsn,
  (select system_identifier from pg_control_system())::text as identity`;

const REPLICA = `select pg_is_in_recovery() as recovery, pg_last_wal_replay_lsn()::text as lsn,
  (extract(epoch from (clock_timestamp() - pg_last_xact_replay_timestamp())) * 1000)::float8 as behind_ms,
  (select system_identifier from pg_control_system())::text as identity`;

function lsnOf(value: unknown, what: string): bigint {
  if (typeof value !== 'string') {
    throw new StrataError('E_POSITION', `postgres: ${what} returned no WAL position`);
  }
  return parseLsn(value);
}

/**
 * The position provider of PostgreSQL streaming replicas: a write's token is the primary's WAL
 * position after its commit, a replica's position its replay LSN, lag is counted in WAL bytes, and
 * replicas whose system identifier differs from the primary's are refused. Assumes
 * `synchronous_commit` is not switched off per session by the writer (server-wide `off` is handled).
 */
export function postgresWalPosition(): PositionProvider {
  return Object.freeze({
    kind: 'postgres-wal',
    unit: 'bytes' as const,
    async afterWrite(primary: SqlExecutor): Promise<bigint> {
      const result = await primary.query<{ lsn: string | null }>(AFTER_WRITE);
      return lsnOf(result.rows[0]?.lsn, 'the primary');
    },
    async primary(primary: SqlExecutor): Promise<PrimaryPosition> {
      const result = await primary.query<{ lsn: string | null; identity: string | null }>(PRIMARY);
      const row = result.rows[0];
      return { position: lsnOf(row?.lsn, 'the primary'), identity: row?.identity ?? undefined };
    },
    async replica(replica: SqlExecutor): Promise<ReplicaPosition> {
      const result = await replica.query<{
        recovery: boolean;
        lsn: string | null;
        behind_ms: number | null;
        identity: string | null;
      }>(REPLICA);
      const row = result.rows[0];
      if (row === undefined || row.recovery !== true || row.lsn === null) return { position: undefined };
      return {
        position: parseLsn(row.lsn),
        behindMs: row.behind_ms === null ? undefined : Math.max(0, row.behind_ms),
        identity: row.identity ?? undefined,
      };
    },
    format: formatLsn,
    parse: parseLsn,
  });
}

/**
 * Pauses WAL replay on a standby (`pg_wal_replay_pause()`; superuser or granted), so it serves
 * reads while falling behind; resolves once replay is paused. For tests: always `resumeReplay` in
 * a `finally`, the standby is shared. `E_QUERY` when the server is not a standby.
 */
export async function pauseReplay(replica: SqlExecutor): Promise<void> {
  await replica.query('select pg_wal_replay_pause()');
  for (let i = 0; i < 500; i++) {
    const state = await replica.query<{ state: string }>('select pg_get_wal_replay_pause_state() as state');
    if (state.rows[0]?.state === 'paused') return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new StrataError('E_TIMEOUT', 'postgres: the standby did not pause replay within 5 s');
}

/** Resumes WAL replay paused by `pauseReplay` (a no-op when it is not paused). */
export async function resumeReplay(replica: SqlExecutor): Promise<void> {
  await replica.query('select pg_wal_replay_resume()');
}

/**
 * Delays replay on a standby by `delay` (`recovery_min_apply_delay` through `ALTER SYSTEM` and a
 * configuration reload; superuser), or removes the delay when `delay` is 0 or null; resolves once
 * the setting is in force. For tests: reset it in a `finally`, the standby is shared. `E_CONFIG`
 * naming `delay` for an invalid duration.
 */
export async function setReplayDelay(replica: SqlExecutor, delay: Duration | null): Promise<void> {
  const ms = delay === null ? 0 : parseDuration(delay, 'delay');
  if (ms === 0) await replica.query('alter system reset recovery_min_apply_delay');
  else await replica.query(`alter system set recovery_min_apply_delay = '${ms}ms'`);
  await replica.query('select pg_reload_conf()');
  // The reload is asynchronous: wait until new sessions see the setting.
  for (let i = 0; i < 500; i++) {
    const shown = await replica.query<{ ms: number }>(
      "select setting::int as ms from pg_settings where name = 'recovery_min_apply_delay'",
    );
    if (shown.rows[0]?.ms === ms) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new StrataError('E_TIMEOUT', 'postgres: the standby did not apply the replay delay within 5 s');
}

/**
 * Runs `fn` with replay on every standby of `replicas` delayed by `lag` (a duration) or paused
 * (`'paused'`), and always undoes it afterwards, even when `fn` or the setup throws; resolves or
 * rejects as `fn` does. For tests on shared standbys.
 */
export async function withReplayLag<T>(
  replicas: readonly SqlExecutor[],
  lag: Duration | 'paused',
  fn: () => Promise<T>,
): Promise<T> {
  try {
    for (const replica of replicas) {
      if (lag === 'paused') await pauseReplay(replica);
      else await setReplayDelay(replica, lag);
    }
    return await fn();
  } finally {
    for (const replica of replicas) {
      if (lag === 'paused') await resumeReplay(replica);
      else await setReplayDelay(replica, null);
    }
  }
}
