/**
 * Fuzzes the social API with fast-check: random JSON, wrong types, huge strings, unicode,
 * missing fields and unknown ids, on every route. Every answer must be a success or a 4xx JSON
 * error, never a 500, and the server must keep serving.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { createSocialApp, type SocialApp } from './app.js';

const RUNS = Number(process.env.STRATA_FUZZ_RUNS ?? 2_000);

const methods = fc.constantFrom('GET', 'POST', 'PATCH', 'PUT', 'DELETE') as fc.Arbitrary<
  'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE'
>;

/**
 * Ids of the seeded users and posts, filled in `beforeAll` (users first, then posts). Ids are
 * snowflake ids, so small integers never name a row: the generators draw known ids instead,
 * about half of which name a row of the entity the route is about (as 1..60 did with
 * database-generated ids), the rest small integers that name nothing.
 */
const seededUsers: number[] = [];
const seededPosts: number[] = [];
const knownId = (i: number) => [...seededUsers, ...seededPosts][i] ?? i + 1;

const idSegment = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 59 }).map((i) => String(knownId(i))) },
  { weight: 1, arbitrary: fc.integer({ min: 1_000_000, max: 2 ** 31 }).map(String) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '0',
      '-1',
      '1.5',
      '1e3',
      '0x10',
      '99999999999999999999999',
      'NaN',
      '%00',
      '%2e%2e',
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map(encodeURIComponent) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }).map(encodeURIComponent) },
);

const queryString = fc.oneof(
  fc.constant(''),
  fc
    .record(
      {
        limit: fc.oneof(fc.integer({ min: -5, max: 500 }).map(String), fc.string({ maxLength: 8 })),
        cursor: idSegment,
        other: fc.string({ maxLength: 10 }),
      },
      { requiredKeys: [] },
    )
    .map((q) => `?${new URLSearchParams(q as Record<string, string>).toString()}`),
);

const hugeString = fc.integer({ min: 1_000, max: 120_000 }).map((n) => 'x'.repeat(n));
const value = fc.oneof(
  fc.string({ maxLength: 50 }),
  fc.string({ unit: 'grapheme', maxLength: 50 }),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 }),
  hugeString,
);

const validUser = fc.record(
  {
    handle: fc.stringMatching(/^[a-z0-9_]{3,12}$/),
    email: fc.emailAddress(),
    name: fc.string({ minLength: 1, maxLength: 20 }).filter((s) => s.trim().length > 0),
    bio: fc.string({ unit: 'grapheme', maxLength: 40 }),
  },
  { requiredKeys: ['handle', 'email', 'name'] },
);
const randomUser = fc.record({ handle: value, email: value, name: value, bio: value }, { requiredKeys: [] });
const validText = fc
  .string({ unit: 'grapheme', minLength: 1, maxLength: 60 })
  .filter((s) => s.trim().length > 0);
const validPost = fc.record({ body: validText });
const validComment = fc.record({
  userId: fc.integer({ min: 0, max: 39 }).map((i) => seededUsers[i] ?? i + 1),
  body: validText,
});
const randomBody = fc.oneof(
  fc.record({ body: value, userId: value }, { requiredKeys: [] }),
  fc.jsonValue(),
  fc.anything(),
);

/** A raw payload: JSON of a body, sometimes broken JSON or another content type. */
type Payload = { text: string; type: string } | undefined;
const json = (b: fc.Arbitrary<unknown>): fc.Arbitrary<Payload> =>
  b.map((v) => ({ text: safeStringify(v), type: 'application/json' }));
const broken: fc.Arbitrary<Payload> = fc.oneof(
  fc.string({ maxLength: 80 }).map((s) => ({ text: `{${s}`, type: 'application/json' })),
  fc.string({ maxLength: 80 }).map((s) => ({ text: s, type: 'text/plain' })),
  fc.constant(undefined),
);
const bodyFor = (valid: fc.Arbitrary<unknown>, random: fc.Arbitrary<unknown>) =>
  fc.oneof(
    { weight: 5, arbitrary: json(valid) },
    { weight: 3, arbitrary: json(random) },
    { weight: 1, arbitrary: broken },
  );

type Method = 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
/** The route's own method most of the time, any method sometimes. */
const methodFor = (...own: Method[]) =>
  fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...own) }, { weight: 1, arbitrary: methods });

const request: fc.Arbitrary<{ method: Method; url: string; payload: Payload }> = fc.oneof(
  fc.record({
    method: methodFor('POST'),
    url: fc.constant('/users'),
    payload: bodyFor(validUser, randomUser),
  }),
  fc.record({
    method: methodFor('GET'),
    url: idSegment.map((a) => `/users/${a}`),
    payload: fc.constant(undefined),
  }),
  fc.record({
    method: methodFor('PATCH'),
    url: idSegment.map((a) => `/users/${a}`),
    payload: bodyFor(
      validUser.map(({ handle: _h, ...rest }) => rest),
      randomUser,
    ),
  }),
  fc.record({
    method: methodFor('POST'),
    url: idSegment.map((a) => `/users/${a}/posts`),
    payload: bodyFor(validPost, randomBody),
  }),
  fc.record({
    method: methodFor('GET'),
    url: fc.tuple(idSegment, queryString).map(([a, q]) => `/users/${a}/posts${q}`),
    payload: fc.constant(undefined),
  }),
  fc.record({
    method: methodFor('GET'),
    url: fc.tuple(idSegment, queryString).map(([a, q]) => `/users/${a}/feed${q}`),
    payload: fc.constant(undefined),
  }),
  fc.record({
    method: methodFor('GET'),
    url: idSegment.map((a) => `/posts/${a}`),
    payload: fc.constant(undefined),
  }),
  fc.record({
    method: methodFor('POST'),
    url: idSegment.map((a) => `/posts/${a}/comments`),
    payload: bodyFor(validComment, randomBody),
  }),
  fc.record({
    method: methodFor('GET'),
    url: fc.tuple(idSegment, queryString).map(([a, q]) => `/posts/${a}/comments${q}`),
    payload: fc.constant(undefined),
  }),
  fc.record({
    method: methodFor('PUT', 'DELETE'),
    url: fc.tuple(idSegment, idSegment).map(([a, b]) => `/posts/${a}/likes/${b}`),
    payload: fc.constant(undefined),
  }),
  fc.record({
    method: methodFor('PUT', 'DELETE'),
    url: fc.tuple(idSegment, idSegment).map(([a, b]) => `/users/${a}/following/${b}`),
    payload: fc.constant(undefined),
  }),
  fc.record({
    method: methods,
    url: fc.string({ maxLength: 60 }).map((s) => `/${encodeURIComponent(s)}`),
    payload: fc.oneof(json(randomBody), broken),
  }),
);

function safeStringify(v: unknown): string {
  try {
    return JSON.stringify(v) ?? 'null';
  } catch {
    return '{}';
  }
}

describe('social API under fuzzing', () => {
  const dir = tempDir('strata-fuzz-');
  let app: SocialApp;
  const statuses = new Map<number, number>();

  beforeAll(async () => {
    app = await createSocialApp({ dataDir: dir.path });
    // Some real rows so that a share of the random ids exist.
    for (let i = 1; i <= 30; i++) {
      const res = await app.server.inject({
        method: 'POST',
        url: '/users',
        payload: { handle: `seed_${i}`, email: `seed${i}@example.com`, name: `Seed ${i}` },
      });
      const id = res.json().id as number;
      const post = await app.server.inject({
        method: 'POST',
        url: `/users/${id}/posts`,
        payload: { body: `hello from ${i}` },
      });
      seededUsers.push(id);
      seededPosts.push(post.json().id as number);
    }
  });

  afterAll(async () => {
    await app.close();
    dir.remove();
    const summary = [...statuses.entries()].sort(([a], [b]) => a - b).map(([s, n]) => `${s}: ${n}`);
    console.log(`fuzz: ${RUNS} requests, statuses { ${summary.join(', ')} }`);
  });

  it(`answers ${RUNS} random requests with a success or a 4xx JSON error, never a 500`, async () => {
    await fc.assert(
      fc.asyncProperty(request, async ({ method, url, payload: p }) => {
        const res = await app.server.inject({
          method,
          url,
          ...(p === undefined ? {} : { payload: p.text, headers: { 'content-type': p.type } }),
        });
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        expect(res.statusCode, `${method} ${url} -> ${res.body.slice(0, 200)}`).toBeLessThan(500);
        if (res.statusCode >= 400) {
          const json = res.json();
          expect(typeof json.code).toBe('string');
          expect(json.code).toMatch(/^E_/);
          expect(typeof json.message).toBe('string');
          expect(typeof json.details).toBe('object');
        }
      }),
      { numRuns: RUNS },
    );
    const health = await app.server.inject({ method: 'GET', url: '/health' });
    expect(health.statusCode).toBe(200);
    const total = [...statuses.values()].reduce((a, b) => a + b, 0);
    const ok = [...statuses.entries()].filter(([s]) => s < 300).reduce((a, [, n]) => a + n, 0);
    // The generators must reach real successes too, or the fuzz only ever tests the validators.
    expect(ok).toBeGreaterThan(total * 0.02);
  });
});
