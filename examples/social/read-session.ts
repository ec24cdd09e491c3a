/**
 * Read-your-writes across requests: after a write, the response sets the cookie `strata_token` to
 * `<user id>.<token>`, where the token (signed by the replica set, see `strata/replication`)
 * names the position of the user's shard after the write. A later read of that user's own data
 * (profile, feed, posts) passes the token as `{ session: token }`, so it is served by a replica
 * that has applied the write, or by the primary; reads of other users' data are `eventual`.
 *
 * A cookie that is not of that form, or whose token the shard's replica set refuses (forged,
 * from another process's secret, from another shard), is never an error: the read goes to the
 * primary (as strong as it gets), the refusal is counted, and the response clears the cookie.
 */
import type { ReadConsistency } from './repository.js';

/** The cookie carrying the session token. */
export const TOKEN_COOKIE = 'strata_token';
/** How long the browser keeps the cookie, in seconds (a day; an old token is merely useless). */
const MAX_AGE_SECONDS = 86_400;
/** A Cookie header longer than this is not looked at. */
const MAX_HEADER = 8_192;
/** `<user id>.<token>`: the token is `<cluster id>.<hex position>.<MAC>`, at most 104 characters. */
const VALUE = /^(\d{1,20})\.([A-Za-z0-9_-]{1,64}\.[0-9a-f]{1,16}\.[A-Za-z0-9_-]{22})$/;
const ATTRIBUTES = `Path=/; Max-Age=${MAX_AGE_SECONDS}; HttpOnly; SameSite=Lax`;

/** A parsed session cookie (not yet checked against a replica set). */
export interface SessionCookie {
  /** The user whose write issued the token, as decimal text. */
  userId: string;
  token: string;
}

/**
 * The first value of cookie `name` in a Cookie request header; undefined when there is none.
 * Only the plain `name=value` pairs of RFC 6265 are read; nothing is decoded.
 */
export function readCookie(header: string | string[] | undefined, name: string): string | undefined {
  const text = Array.isArray(header) ? header.join('; ') : header;
  if (typeof text !== 'string' || text.length === 0 || text.length > MAX_HEADER) return undefined;
  for (const part of text.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    let value = part.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    return value;
  }
  return undefined;
}

/** The user id and token of a cookie value; undefined when the value is not of that form. */
export function parseSessionCookie(value: string): SessionCookie | undefined {
  const match = VALUE.exec(value);
  if (match === null) return undefined;
  return { userId: String(BigInt(match[1]!)), token: match[2]! };
}

/** The `Set-Cookie` value that carries `token` of `userId`'s write. */
export function sessionCookie(userId: number, token: string): string {
  return `${TOKEN_COOKIE}=${userId}.${token}; ${ATTRIBUTES}`;
}

/** The `Set-Cookie` value that removes a refused cookie. */
export const CLEAR_SESSION_COOKIE = `${TOKEN_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax`;

/** How a read of one user's data runs, and whether the response clears a refused cookie. */
export interface ReadPlan {
  consistency: ReadConsistency;
  /** The cookie was refused: count it and clear it. */
  refused: boolean;
  /** The read is of the cookie owner's own data with a valid token. */
  own: boolean;
}

/**
 * The consistency of a read of `userId`'s data for a request whose `strata_token` cookie is
 * `value` (undefined: no cookie); `accepts` checks a token against the shard of `userId`.
 */
export function planRead(
  value: string | undefined,
  userId: number,
  accepts: (token: string) => boolean,
): ReadPlan {
  if (value === undefined || value === '') return { consistency: 'eventual', refused: false, own: false };
  const cookie = parseSessionCookie(value);
  if (cookie === undefined) return { consistency: 'strong', refused: true, own: false };
  if (cookie.userId !== String(userId)) return { consistency: 'eventual', refused: false, own: false };
  if (!accepts(cookie.token)) return { consistency: 'strong', refused: true, own: false };
  return { consistency: { session: cookie.token }, refused: false, own: true };
}
