/**
 * The social HTTP API. Every body, parameter and query string is validated through strata's
 * Standard Schema `validate` before it reaches the repository.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { isStrataError, type StandardSchemaV1, StrataError, validate } from 'strata';
import type { Cache, LoaderContext, WriteBehind } from 'strata/cache';
import { feedKey, postKey, userKey } from './caching.js';
import type { Page, Post, SocialRepository, User } from './repository.js';
import {
  createCommentBody,
  createPostBody,
  createUserBody,
  followParams,
  idParams,
  pageQuery,
  postLikeParams,
  updateUserBody,
} from './schemas.js';

export interface RouteDeps {
  repo: SocialRepository;
  /** Cache-aside for profiles, post pages and first feed pages (invalidated by the change log). */
  cache: Cache;
  /** Like counts written behind; pending counts are what readers see until they are written. */
  likeCounts: WriteBehind<number>;
}

/** Page size whose first page is cached (other sizes and later pages are always live). */
export const CACHED_FEED_LIMIT = 20;

const params = <S extends StandardSchemaV1>(schema: S, req: FastifyRequest) =>
  validate(schema, req.params, { subject: 'path parameters' });
const query = <S extends StandardSchemaV1>(schema: S, req: FastifyRequest) =>
  validate(schema, req.query ?? {}, { subject: 'query string' });
const body = <S extends StandardSchemaV1>(schema: S, req: FastifyRequest) =>
  validate(schema, req.body, { subject: 'request body' });

/**
 * Cache-aside with the database as the fallback: a missing row is cached as "not found"
 * briefly; if the cache itself fails (closed, misconfigured), the database answers.
 */
async function cached<T>(
  cache: Cache,
  key: string,
  load: () => Promise<T>,
  entity: 'user' | 'post',
  id: number,
): Promise<T> {
  let value: T | undefined;
  try {
    value = await cache.getOrSet(key, async (ctx: LoaderContext) => {
      try {
        return await load();
      } catch (err) {
        if (isStrataError(err, 'E_NOT_FOUND')) return ctx.notFound() as T;
        throw err;
      }
    });
  } catch (err) {
    if (isStrataError(err, 'E_NOT_FOUND') || isStrataError(err, 'E_VALIDATION')) throw err;
    return load();
  }
  if (value === undefined)
    throw new StrataError('E_NOT_FOUND', `${entity} not found`, { details: { entity, id } });
  return value;
}

/** Registers the API routes on `app`. */
export function registerRoutes(app: FastifyInstance, deps: RouteDeps): void {
  const { repo, cache, likeCounts } = deps;
  const withPendingLikes = (post: Post): Post => {
    const pending = likeCounts.get(String(post.id));
    return pending?.value === undefined ? post : { ...post, likeCount: pending.value };
  };

  app.get('/health', async () => ({ ok: true }));

  app.post('/users', async (req, reply) => {
    const input = await body(createUserBody, req);
    const user = await repo.createUser(input);
    return reply.code(201).send(user);
  });

  app.get('/users/:id', async (req) => {
    const { id } = await params(idParams, req);
    return cached<User>(cache, userKey(id), () => repo.getUser(id), 'user', id);
  });

  app.patch('/users/:id', async (req) => {
    const { id } = await params(idParams, req);
    const patch = await body(updateUserBody, req);
    return repo.updateUser(id, patch);
  });

  app.post('/users/:id/posts', async (req, reply) => {
    const { id } = await params(idParams, req);
    const input = await body(createPostBody, req);
    return reply.code(201).send(await repo.createPost(id, input.body));
  });

  app.get('/users/:id/posts', async (req) => {
    const { id } = await params(idParams, req);
    return repo.listPosts(id, await query(pageQuery, req));
  });

  app.get('/posts/:id', async (req) => {
    const { id } = await params(idParams, req);
    return withPendingLikes(await cached<Post>(cache, postKey(id), () => repo.getPost(id), 'post', id));
  });

  app.post('/posts/:id/comments', async (req, reply) => {
    const { id } = await params(idParams, req);
    const input = await body(createCommentBody, req);
    return reply.code(201).send(await repo.addComment(id, input.userId, input.body));
  });

  app.get('/posts/:id/comments', async (req) => {
    const { id } = await params(idParams, req);
    return repo.listComments(id, await query(pageQuery, req));
  });

  app.put('/posts/:id/likes/:userId', async (req) => {
    const { id, userId } = await params(postLikeParams, req);
    const result = await repo.like(id, userId, true);
    if (result.liked) await likeCounts.set(String(id), result.likeCount);
    return result;
  });

  app.delete('/posts/:id/likes/:userId', async (req) => {
    const { id, userId } = await params(postLikeParams, req);
    const result = await repo.unlike(id, userId, true);
    if (result.unliked) await likeCounts.set(String(id), result.likeCount);
    return result;
  });

  app.put('/users/:id/following/:targetId', async (req) => {
    const { id, targetId } = await params(followParams, req);
    return repo.follow(id, targetId);
  });

  app.delete('/users/:id/following/:targetId', async (req) => {
    const { id, targetId } = await params(followParams, req);
    return repo.unfollow(id, targetId);
  });

  app.get('/users/:id/stats', async (req) => {
    const { id } = await params(idParams, req);
    return repo.stats(id);
  });

  app.get('/users/:id/feed', async (req) => {
    const { id } = await params(idParams, req);
    const page = await query(pageQuery, req);
    // The first page at the default size is cached (cache-aside, invalidated by the change
    // log's feed-invalidation consumer); other pages and sizes are read live.
    if (page.cursor !== undefined || page.limit !== CACHED_FEED_LIMIT) return repo.feed(id, page);
    const feed = await cached<Page<Post>>(cache, feedKey(id), () => repo.feed(id, page), 'user', id);
    return { ...feed, items: feed.items.map(withPendingLikes) };
  });
}
