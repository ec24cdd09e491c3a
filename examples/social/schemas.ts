/**
 * Request schemas of the social API. Any Standard Schema library works with strata's
 * `validate`; the app uses Zod.
 */
import { z } from 'zod';

/** Page sizes are bounded so one request cannot ask for a whole table. */
export const MAX_PAGE_SIZE = 100;
export const DEFAULT_PAGE_SIZE = 20;

// Ids are snowflake ids: exact JavaScript integers of up to 16 digits.
const id = z
  .string()
  .regex(/^[1-9][0-9]{0,15}$/, 'must be a positive integer id')
  .refine((s) => Number(s) <= Number.MAX_SAFE_INTEGER, 'must be a positive integer id')
  .transform(Number);

export const idParams = z.strictObject({ id });
export const postLikeParams = z.strictObject({ id, userId: id });
export const followParams = z.strictObject({ id, targetId: id });

export const pageQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(MAX_PAGE_SIZE).default(DEFAULT_PAGE_SIZE),
  cursor: id.optional(),
});

const text = (max: number) =>
  z
    .string()
    .max(max)
    .refine((s) => s.trim().length > 0, 'must not be blank');

export const createUserBody = z.strictObject({
  handle: z
    .string()
    .min(3)
    .max(30)
    .regex(/^[A-Za-z0-9_]+$/, 'letters, digits and underscores only'),
  email: z.email().max(254),
  name: text(100),
  bio: z.string().max(500).optional(),
});

export const updateUserBody = z
  .strictObject({
    name: text(100).optional(),
    bio: z.string().max(500).optional(),
    email: z.email().max(254).optional(),
  })
  .refine((b) => b.name !== undefined || b.bio !== undefined || b.email !== undefined, 'nothing to update');

export const createPostBody = z.strictObject({ body: text(2_000) });

export const createCommentBody = z.strictObject({
  userId: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  body: text(1_000),
});

/** `POST /users/:id/suspend`: an optional reason, kept in the `suspended` event. */
export const suspendBody = z.strictObject({ reason: z.string().max(200).default('') });
