/**
 * Consistency tokens: a write's position, signed, as a short URL-safe string that can travel in a
 * cookie, a header or a queued job, and that a later read hands back to demand "at least this
 * position" (read-your-writes).
 *
 * Form: `<cluster id>.<position in hexadecimal>.<MAC>`, where the MAC is the first 16 bytes of
 * HMAC-SHA256 over the version, the cluster id and the position, in base64url; for example
 * `social.e2bb2288.hR0c5l2bQk6WmZ3XvJp1dA`. A token is only accepted by a replica set of the same
 * cluster id holding the same secret, so a client cannot forge a position (which would send its
 * reads to the primary, or pin them on a lagging replica).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { ConfigError, StrataError, type StrataErrorOptions } from '../core/errors.js';

/** Why a token was refused. */
export type TokenProblem = 'malformed' | 'forged' | 'other-cluster';

const PROBLEM_MESSAGES: Record<TokenProblem, string> = {
  malformed: 'invalid consistency token: not a token',
  forged: 'invalid consistency token: its signature does not match',
  'other-cluster': 'invalid consistency token: it belongs to another cluster',
};

/**
 * A consistency token was refused (`E_TOKEN`): malformed, signed with another secret, or issued
 * by another cluster; `problem` says which. The token itself is never in the message.
 */
export class TokenError extends StrataError {
  override readonly name = 'TokenError';
  /** Why the token was refused. */
  readonly problem: TokenProblem;

  constructor(problem: TokenProblem, options: StrataErrorOptions = {}) {
    super('E_TOKEN', PROBLEM_MESSAGES[problem], {
      ...options,
      details: { problem, ...(options.details ?? {}) },
    });
    this.problem = problem;
  }
}

/** The parts of a valid token. */
export interface ParsedToken {
  /** The cluster that issued it. */
  clusterId: string;
  /** The position it demands. */
  position: bigint;
}

/** What a token codec needs: the cluster's id and the shared secret. */
export interface TokenCodecOptions {
  /** The cluster's id (1-64 letters, digits, `_` or `-`); tokens of other ids are refused. */
  clusterId: string;
  /**
   * The HMAC secret, at least 16 bytes (a string counts its UTF-8 bytes). Every process that
   * issues or accepts the cluster's tokens must hold the same one.
   */
  secret: string | Uint8Array;
}

/** Encodes and checks the tokens of one cluster. */
export interface TokenCodec {
  /** The cluster id the codec issues and accepts. */
  readonly clusterId: string;
  /** The token for `position`; `E_POSITION` for a negative or wider than 64-bit position. */
  encode(position: bigint): string;
  /** The position a token demands; `E_TOKEN` for a malformed, forged or foreign token. */
  decode(token: unknown): bigint;
}

const CLUSTER_ID = /^[A-Za-z0-9_-]{1,64}$/;
const HEX = /^[0-9a-f]{1,16}$/;
const MAC = /^[A-Za-z0-9_-]{22}$/;
const MAC_BYTES = 16;
const MIN_SECRET_BYTES = 16;
const MAX_TOKEN_LENGTH = 64 + 1 + 16 + 1 + 22;
const MAX_POSITION = (1n << 64n) - 1n;

/** True when `id` is a valid cluster id (1-64 letters, digits, `_` or `-`). */
export function isClusterId(id: unknown): id is string {
  return typeof id === 'string' && CLUSTER_ID.test(id);
}

/** A cluster id made from any label (a driver's name): invalid characters become `-`, cut to 64. */
export function clusterIdFrom(label: string): string {
  const id = label.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 64);
  return id.length === 0 ? 'cluster' : id;
}

/** A fresh random secret of 32 bytes, for a replica set whose tokens never leave the process. */
export function randomTokenSecret(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

/**
 * Creates the token codec of a cluster. Throws `E_CONFIG` naming `clusterId` or `tokenSecret`
 * when one is invalid (the secret shorter than 16 bytes).
 */
export function createTokenCodec(options: TokenCodecOptions): TokenCodec {
  const { clusterId, secret } = options ?? ({} as TokenCodecOptions);
  if (!isClusterId(clusterId)) {
    throw new ConfigError('clusterId', 'must be 1-64 letters, digits, underscores or dashes');
  }
  let key: Buffer;
  if (typeof secret === 'string') key = Buffer.from(secret, 'utf8');
  else if (secret instanceof Uint8Array) key = Buffer.from(secret);
  else throw new ConfigError('tokenSecret', 'must be a string or bytes');
  if (key.length < MIN_SECRET_BYTES) {
    throw new ConfigError('tokenSecret', `must be at least ${MIN_SECRET_BYTES} bytes`);
  }
  const mac = (hex: string): Buffer =>
    createHmac('sha256', key).update(`strata-token:1:${clusterId}:${hex}`).digest().subarray(0, MAC_BYTES);

  return Object.freeze({
    clusterId,
    encode(position: bigint): string {
      if (typeof position !== 'bigint' || position < 0n || position > MAX_POSITION) {
        throw new StrataError(
          'E_POSITION',
          'invalid position: a token position is an unsigned 64-bit integer',
        );
      }
      const hex = position.toString(16);
      return `${clusterId}.${hex}.${mac(hex).toString('base64url')}`;
    },
    decode(token: unknown): bigint {
      if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH) throw new TokenError('malformed');
      const parts = token.split('.');
      if (parts.length !== 3) throw new TokenError('malformed');
      const [id, hex, signature] = parts as [string, string, string];
      if (!CLUSTER_ID.test(id) || !HEX.test(hex) || !MAC.test(signature)) throw new TokenError('malformed');
      if (id !== clusterId) throw new TokenError('other-cluster');
      const given = Buffer.from(signature, 'base64url');
      if (given.length !== MAC_BYTES || !timingSafeEqual(given, mac(hex))) throw new TokenError('forged');
      return BigInt(`0x${hex}`);
    },
  });
}

/**
 * Checks `token` against a cluster's id and secret and returns its parts; `E_TOKEN` when it is
 * malformed, forged or from another cluster, `E_CONFIG` for an invalid id or secret.
 */
export function parseToken(token: unknown, options: TokenCodecOptions): ParsedToken {
  const codec = createTokenCodec(options);
  return { clusterId: codec.clusterId, position: codec.decode(token) };
}
