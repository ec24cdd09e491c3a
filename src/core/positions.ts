/**
 * The position role of a replica set: how an engine tells where its primary is after a write and
 * how far each replica has applied. PostgreSQL answers with WAL positions (LSNs, in bytes), the
 * embedded SQLite replicas with the outbox sequence of the change log (in changes). Positions are
 * unsigned 64-bit integers that grow in commit order, so a replica at or past a write's position
 * has applied that write.
 */
import type { SqlExecutor } from './sql.js';

/** What the primary reports about itself. */
export interface PrimaryPosition {
  /** The newest position the primary has (PostgreSQL `pg_current_wal_lsn()`). */
  position: bigint;
  /** The identity of the cluster (PostgreSQL's system identifier), when the engine has one. */
  identity?: string | undefined;
}

/** What a replica reports about itself. */
export interface ReplicaPosition {
  /** The position it has applied up to; undefined when the server is not a replica. */
  position: bigint | undefined;
  /** The position it has received, when the engine tells receiving apart from applying. */
  received?: bigint | undefined;
  /**
   * An upper bound of its staleness computed by the replica itself (PostgreSQL:
   * `now() - pg_last_xact_replay_timestamp()`), in milliseconds, when the engine has one.
   */
  behindMs?: number | undefined;
  /** The identity of the cluster it replicates, when the engine has one. */
  identity?: string | undefined;
}

/**
 * Reads positions from a primary and its replicas. Every method runs one short statement and
 * rejects with the driver's error (`E_CONNECTION`, `E_QUERY`, ...) when it cannot.
 */
export interface PositionProvider {
  /** A short name for messages and the CLI (`postgres-wal`, `change-log`). */
  readonly kind: string;
  /** What a difference of positions counts: WAL bytes or changes. */
  readonly unit: 'bytes' | 'changes';
  /**
   * The primary's position right after a write committed: at or after the write's commit, so a
   * replica at this position has the write.
   */
  afterWrite(primary: SqlExecutor): Promise<bigint>;
  /** The primary's newest position and identity, for lag. */
  primary(primary: SqlExecutor): Promise<PrimaryPosition>;
  /** A replica's applied position, staleness bound and identity. */
  replica(replica: SqlExecutor): Promise<ReplicaPosition>;
  /** A position as people read it (`16/B374D848` for an LSN, a sequence number otherwise). */
  format(position: bigint): string;
  /** The inverse of `format`; `E_POSITION` for text that is not a position of this kind. */
  parse(text: string): bigint;
}
