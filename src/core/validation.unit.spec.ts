import * as v from 'valibot';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { isStrataError } from './errors.js';
import { assertStandardSchema, validate, validateSync } from './validation.js';

const zodUser = z.object({
  email: z.email(),
  age: z.number().int().min(13),
  tags: z.array(z.string().max(5)).default([]),
});
const valibotUser = v.object({
  email: v.pipe(v.string(), v.email()),
  age: v.pipe(v.number(), v.integer(), v.minValue(13)),
  tags: v.optional(v.array(v.pipe(v.string(), v.maxLength(5))), []),
});

describe.each([
  ['zod', zodUser],
  ['valibot', valibotUser],
])('validation through Standard Schema (%s)', (_lib, schema) => {
  it('returns the parsed output with defaults applied', async () => {
    await expect(validate(schema, { email: 'a@example.com', age: 20 })).resolves.toEqual({
      email: 'a@example.com',
      age: 20,
      tags: [],
    });
    expect(validateSync(schema, { email: 'a@example.com', age: 20, tags: ['x'] })).toEqual({
      email: 'a@example.com',
      age: 20,
      tags: ['x'],
    });
  });

  it('reports every issue with its path, and no value in the message', async () => {
    const err = await validate(
      schema,
      { email: 'not-an-email', age: 3, tags: ['ok', 'too-long'] },
      { subject: 'user' },
    ).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_VALIDATION')).toBe(true);
    const issues = (err as { issues: { path: (string | number)[] }[] }).issues;
    expect(issues.map((i) => i.path)).toEqual(expect.arrayContaining([['email'], ['age'], ['tags', 1]]));
    expect((err as Error).message).toBe('user failed validation with 3 issues');
    expect((err as Error).message).not.toContain('not-an-email');
  });

  it('reports a missing field and a wrong type', () => {
    let err: unknown;
    try {
      validateSync(schema, { age: 'twenty' });
    } catch (e) {
      err = e;
    }
    expect((err as { issues: { path: unknown[] }[] }).issues.map((i) => i.path)).toEqual(
      expect.arrayContaining([['email'], ['age']]),
    );
  });
});

describe('schema checks', () => {
  it('refuses something that is not a Standard Schema with E_CONFIG naming the option', () => {
    let err: unknown;
    try {
      assertStandardSchema({ parse() {} }, 'events.schema');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'E_CONFIG', option: 'events.schema' });
  });

  it('refuses an async schema in validateSync with E_CONFIG', () => {
    const asyncSchema = z.string().refine(async (s) => s.length > 1);
    let err: unknown;
    try {
      validateSync(asyncSchema, 'abc');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'E_CONFIG' });
  });
});
