import { describe, expect, it } from 'vitest';
import { isStrataError } from '../core/errors.js';
import { clusterIdFrom, createTokenCodec, parseToken, randomTokenSecret, type TokenError } from './tokens.js';

const secret = 'a secret of at least sixteen bytes';
const codec = createTokenCodec({ clusterId: 'social', secret });

function refusal(fn: () => unknown): TokenError {
  try {
    fn();
  } catch (err) {
    expect(isStrataError(err, 'E_TOKEN')).toBe(true);
    return err as TokenError;
  }
  throw new Error('expected E_TOKEN');
}

describe('consistency tokens', () => {
  it('round-trips positions across the 64-bit range as short URL-safe strings', () => {
    for (const position of [0n, 1n, 0xe2bb2288n, (22n << 32n) | 0xb374d848n, (1n << 64n) - 1n]) {
      const token = codec.encode(position);
      expect(token).toMatch(/^[A-Za-z0-9_.-]+$/);
      expect(encodeURIComponent(token)).toBe(token);
      expect(token.length).toBeLessThanOrEqual('social'.length + 1 + 16 + 1 + 22);
      expect(codec.decode(token)).toBe(position);
    }
    expect(codec.encode(0xe2bb2288n).startsWith('social.e2bb2288.')).toBe(true);
  });

  it('is accepted by another codec of the same cluster and secret (another process)', () => {
    const other = createTokenCodec({ clusterId: 'social', secret: Buffer.from(secret) });
    expect(other.decode(codec.encode(42n))).toBe(42n);
    expect(parseToken(codec.encode(42n), { clusterId: 'social', secret })).toEqual({
      clusterId: 'social',
      position: 42n,
    });
  });

  it('refuses malformed tokens with E_TOKEN (malformed), never a crash', () => {
    const samples: unknown[] = [
      undefined,
      null,
      42,
      {},
      '',
      'social',
      'social.ff',
      'social.ff.x.y',
      'social..AAAAAAAAAAAAAAAAAAAAAA',
      'social.FF.AAAAAAAAAAAAAAAAAAAAAA',
      'social.12345678901234567.AAAAAAAAAAAAAAAAAAAAAA',
      'social.ff.AAAA',
      'social.ff.AAAAAAAAAAAAAAAAAAAAA+',
      'soc ial.ff.AAAAAAAAAAAAAAAAAAAAAA',
      'x'.repeat(10_000),
      `${'a'.repeat(65)}.ff.AAAAAAAAAAAAAAAAAAAAAA`,
    ];
    for (const sample of samples) expect(refusal(() => codec.decode(sample)).problem).toBe('malformed');
  });

  it('refuses a token whose position or signature was changed (forged)', () => {
    const token = codec.encode(1000n);
    const [id, hex, mac] = token.split('.') as [string, string, string];
    const raised = `${id}.${(BigInt(`0x${hex}`) + 1n).toString(16)}.${mac}`;
    const err = refusal(() => codec.decode(raised));
    expect(err.problem).toBe('forged');
    expect(err.message).not.toContain(hex);
    const flipped = `${id}.${hex}.${mac[0] === 'A' ? 'B' : 'A'}${mac.slice(1)}`;
    expect(refusal(() => codec.decode(flipped)).problem).toBe('forged');
    const otherSecret = createTokenCodec({ clusterId: 'social', secret: randomTokenSecret() });
    expect(refusal(() => otherSecret.decode(token)).problem).toBe('forged');
  });

  it('refuses a token of another cluster, even one signed with the same secret', () => {
    const billing = createTokenCodec({ clusterId: 'billing', secret });
    const err = refusal(() => codec.decode(billing.encode(5n)));
    expect(err.problem).toBe('other-cluster');
    expect(err.toJSON().details).toEqual({ problem: 'other-cluster' });
  });

  it('checks the cluster id and secret when the codec is made (E_CONFIG naming the option)', () => {
    const option = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        expect(isStrataError(err, 'E_CONFIG')).toBe(true);
        return (err as { option: string }).option;
      }
      throw new Error('expected E_CONFIG');
    };
    expect(option(() => createTokenCodec({ clusterId: 'a.b', secret }))).toBe('clusterId');
    expect(option(() => createTokenCodec({ clusterId: '', secret }))).toBe('clusterId');
    expect(option(() => createTokenCodec({ clusterId: 'ok', secret: 'short' }))).toBe('tokenSecret');
    expect(option(() => createTokenCodec({ clusterId: 'ok', secret: 42 as unknown as string }))).toBe(
      'tokenSecret',
    );
  });

  it('refuses to encode positions outside the unsigned 64-bit range (E_POSITION)', () => {
    for (const bad of [-1n, 1n << 64n]) {
      expect(() => codec.encode(bad)).toThrow(expect.objectContaining({ code: 'E_POSITION' }));
    }
  });

  it('makes URL-safe cluster ids from driver names', () => {
    expect(clusterIdFrom('postgres:social')).toBe('postgres-social');
    expect(clusterIdFrom('')).toBe('cluster');
    expect(clusterIdFrom('x'.repeat(100))).toHaveLength(64);
  });
});
