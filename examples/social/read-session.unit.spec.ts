import { describe, expect, it } from 'vitest';
import {
  CLEAR_SESSION_COOKIE,
  parseSessionCookie,
  planRead,
  readCookie,
  sessionCookie,
  TOKEN_COOKIE,
} from './read-session.js';

const TOKEN = 'social-s0.2a.hR0c5l2bQk6WmZ3XvJp1dA';

describe('the session cookie', () => {
  it('reads the first plain value of a cookie among others, and nothing from a missing or huge header', () => {
    expect(readCookie(`a=1; ${TOKEN_COOKIE}=42.${TOKEN}; ${TOKEN_COOKIE}=7.x`, TOKEN_COOKIE)).toBe(
      `42.${TOKEN}`,
    );
    expect(readCookie(['a=1', `${TOKEN_COOKIE}="9.x"`], TOKEN_COOKIE)).toBe('9.x');
    expect(readCookie('strata_tokenX=1; novalue; =2', TOKEN_COOKIE)).toBeUndefined();
    expect(readCookie(undefined, TOKEN_COOKIE)).toBeUndefined();
    expect(readCookie(`${TOKEN_COOKIE}=${'9'.repeat(9_000)}`, TOKEN_COOKIE)).toBeUndefined();
  });

  it('round-trips a user id and token, and refuses anything else', () => {
    const header = sessionCookie(42, TOKEN);
    expect(header).toMatch(
      /^strata_token=42\.social-s0\.2a\.[A-Za-z0-9_-]{22}; Path=\/; Max-Age=\d+; HttpOnly; SameSite=Lax$/,
    );
    const value = readCookie(header.split(';')[0], TOKEN_COOKIE)!;
    expect(parseSessionCookie(value)).toEqual({ userId: '42', token: TOKEN });
    expect(parseSessionCookie(`007.${TOKEN}`)).toEqual({ userId: '7', token: TOKEN });
    for (const bad of [
      '',
      'garbage',
      `x.${TOKEN}`,
      `42.${TOKEN}.extra`,
      `42.social-s0.2A.${'a'.repeat(22)}`,
      '42.a.b.c',
    ]) {
      expect(parseSessionCookie(bad), bad).toBeUndefined();
    }
    expect(CLEAR_SESSION_COOKIE).toMatch(/^strata_token=; .*Max-Age=0/);
  });

  it("plans session reads of the cookie owner's data, eventual reads of anyone else's, and the primary for a refused cookie", () => {
    const yes = () => true;
    const no = () => false;
    expect(planRead(undefined, 42, yes)).toEqual({ consistency: 'eventual', refused: false, own: false });
    expect(planRead(`42.${TOKEN}`, 42, yes)).toEqual({
      consistency: { session: TOKEN },
      refused: false,
      own: true,
    });
    expect(planRead(`42.${TOKEN}`, 43, no)).toEqual({ consistency: 'eventual', refused: false, own: false });
    expect(planRead(`42.${TOKEN}`, 42, no)).toEqual({ consistency: 'strong', refused: true, own: false });
    expect(planRead('%00garbage', 42, yes)).toEqual({ consistency: 'strong', refused: true, own: false });
  });
});
