import { isStrataError } from 'strata';
import type { ShardError } from 'strata/sharding';

/** Maps sharding errors to HTTP answers; the messages hold no values, so they are safe to return. */
export function httpStatusOf(err: unknown): { status: number; body: unknown } {
  if (isStrataError(err, 'E_SHARD_KEY')) {
    // A missing, null or wrong-typed shard key: the request is wrong.
    return { status: 400, body: err.toJSON() };
  }
  if (isStrataError(err, 'E_SHARD')) {
    // Some shards failed a scatter or broadcast; `shards` and `failures` say which and how.
    const { shards, failures } = err as ShardError;
    return { status: 503, body: { code: err.code, shards, failures } };
  }
  if (isStrataError(err, 'E_CONFIG')) return { status: 500, body: { code: err.code } }; // a bug: unknown table
  throw err;
}
