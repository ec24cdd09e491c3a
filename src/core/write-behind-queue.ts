/**
 * The write-behind queue role: where a write-behind engine keeps every acknowledged write until
 * the store has it, so that a crash loses nothing. Implemented in memory (for tests and for
 * handing a queue from one engine to the next in one process), in a SQLite file and on a Redis
 * Stream.
 *
 * A queue serves one engine at a time. The engine appends records in ascending version order and
 * acknowledges a version once every record up to it is in the store (or superseded by a newer
 * record of the same key that is).
 */
import { StrataError, ValidationError, type ValidationIssue } from './errors.js';

/** One queued write: the serialized value, or `null` for a delete. */
export interface WriteBehindRecord {
  readonly key: string;
  readonly value: string | null;
  /** The write's version: a positive safe integer, greater than every earlier record's. */
  readonly version: number;
}

/**
 * Durable storage for a write-behind engine's queued writes. Every method rejects with
 * `E_CLOSED` after `close()`; backends report an unreachable engine as `E_CONNECTION` or
 * `E_TIMEOUT`.
 */
export interface WriteBehindQueue {
  /** A label for messages, metrics and the dashboard. */
  readonly name: string;
  /**
   * Stores `records` (all or none of them) and resolves once they would survive a crash of this
   * process. Rejects with `E_CONFLICT`, storing nothing, when the first version is not above
   * every version this queue has seen, and with `E_VALIDATION` for malformed records.
   */
  append(records: readonly WriteBehindRecord[]): Promise<void>;
  /**
   * The records not yet acknowledged, in version order. A queue may leave out a record when a
   * newer record of the same key is returned, since only the newest of a key is ever written.
   */
  load(): Promise<WriteBehindRecord[]>;
  /** The highest version ever appended, acknowledged or not (0 for a new queue). */
  lastVersion(): Promise<number>;
  /** Forgets every record whose version is at most `upToVersion`; `lastVersion()` does not move. */
  acknowledge(upToVersion: number): Promise<void>;
  /** Releases the queue's connection; safe to call twice. A caller's own connection is left open. */
  close(): Promise<void>;
}

/**
 * Checks the argument of `append`: an array of records with string keys, string or null values
 * and ascending positive safe-integer versions. Throws `E_VALIDATION` listing every problem.
 */
export function checkWriteBehindRecords(records: unknown): asserts records is readonly WriteBehindRecord[] {
  if (!Array.isArray(records)) {
    throw new ValidationError([{ path: [], message: 'expected an array of records' }], {
      subject: 'records',
    });
  }
  const issues: ValidationIssue[] = [];
  let previous = 0;
  records.forEach((record: unknown, i) => {
    if (typeof record !== 'object' || record === null) {
      issues.push({ path: [i], message: 'expected a record' });
      return;
    }
    const { key, value, version } = record as Record<string, unknown>;
    if (typeof key !== 'string') issues.push({ path: [i, 'key'], message: 'must be a string' });
    if (value !== null && typeof value !== 'string') {
      issues.push({ path: [i, 'value'], message: 'must be a string or null' });
    }
    if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 1) {
      issues.push({ path: [i, 'version'], message: 'must be a positive safe integer' });
    } else {
      if (version <= previous)
        issues.push({ path: [i, 'version'], message: 'must be above the previous one' });
      previous = version;
    }
  });
  if (issues.length > 0) throw new ValidationError(issues, { subject: 'records' });
}

/** Checks the argument of `acknowledge`: a non-negative safe integer; `E_VALIDATION` otherwise. */
export function checkAcknowledgedVersion(upToVersion: unknown): asserts upToVersion is number {
  if (typeof upToVersion !== 'number' || !Number.isSafeInteger(upToVersion) || upToVersion < 0) {
    throw new ValidationError([{ path: ['upToVersion'], message: 'must be a non-negative safe integer' }], {
      subject: 'acknowledge arguments',
    });
  }
}

/** The error of an append whose first version is not above the queue's last one. */
export function versionConflict(queue: string, lastVersion: number): StrataError {
  return new StrataError(
    'E_CONFLICT',
    `${queue}: appended versions must be above the last one; is another engine using this queue?`,
    { details: { queue, lastVersion } },
  );
}
