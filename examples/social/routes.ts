/**
 * The social HTTP API. Every body, parameter and query string is validated through strata's
 * Standard Schema `validate` before it reaches the repository.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isStrataError, type StandardSchemaV1, StrataError, validate } from 'strata';
import type { Cache, LoaderContext, WriteBehind } from 'strata/cache';
import type { Accounts } from './accounts.js';
import { feedKey, postKey, userKey } from './caching.js';
import {
  CLEAR_SESSION_COOKIE,
  parseSessionCookie,
  planRead,
  type ReadPlan,
  readCookie,
  sessionCookie,
  TOKEN_COOKIE,
} from './read-session.js';
import type { SocialReplicas } from './replicas.js';
import type { Page, Post, SocialRepository, User } from './repository.js';
import {
  createCommentBody,
  createPostBody,
  createUserBody,
  followParams,
  idParams,
  pageQuery,
  postLikeParams,
  suspendBody,
  updateUserBody,
} from './schemas.js';

export interface RouteDeps {
  repo: SocialRepository;
  /** Cache-aside for profiles, post pages and first feed pages (invalidated by the change log). */
  cache: Cache;
  /** Like counts written behind; pending counts are what readers see until they are written. */
  likeCounts: WriteBehind<number>;
  /**
   * The shards' read replicas: reads of a user's own data are read-your-writes through the
   * `strata_token` cookie, other users' data eventual (default: every read on the primary).
   */
  replicas?: SocialReplicas | undefined;
  /** The account lifecycle on the event store (suspend, reinstate, history). */
  accounts: Accounts;
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
  const replicas = deps.replicas?.enabled ? deps.replicas : undefined;
  const router = repo.stores.router;

  /**
   * How a read of `userId`'s data runs for this request: session for the cookie owner's own
   * data, eventual for anyone else's; a refused cookie is counted and cleared, and its read goes
   * to the primary.
   */
  const plan = async (req: FastifyRequest, reply: FastifyReply, userId: number): Promise<ReadPlan> => {
    if (replicas === undefined) return { consistency: 'strong', refused: false, own: false };
    const value = readCookie(req.headers.cookie, TOKEN_COOKIE);
    const cookie = value === undefined ? undefined : parseSessionCookie(value);
    const shard = cookie?.userId === String(userId) ? await router.shardOf(userId) : undefined;
    const result = planRead(value, userId, (token) => shard !== undefined && replicas.accepts(shard, token));
    if (result.refused) {
      replicas.countBadToken();
      void reply.header('set-cookie', CLEAR_SESSION_COOKIE);
    }
    return result;
  };

  /**
   * After a write by `userId`: the cookie gets the token of the user's shard now, so the user's
   * next reads of their own data see the write. A token that cannot be had leaves the cookie as
   * it is: the write stands, only the next read may be a moment stale.
   */
  const issue = async (reply: FastifyReply, userId: number): Promise<void> => {
    if (replicas === undefined) return;
    try {
      const token = await replicas.token(await router.shardOf(userId));
      void reply.header('set-cookie', sessionCookie(userId, token));
    } catch {
      // See above.
    }
  };

  const withPendingLikes = (post: Post): Post => {
    const pending = likeCounts.get(String(post.id));
    return pending?.value === undefined ? post : { ...post, likeCount: pending.value };
  };

  app.get('/health', async () => ({ ok: true }));

  app.post('/users', async (req, reply) => {
    const input = await body(createUserBody, req);
    const user = await repo.createUser(input);
    await issue(reply, user.id);
    return reply.code(201).send(user);
  });

  // A user's own data after a write (a valid cookie) is read live, past the cache, which the
  // change log invalidates only a moment after the write.
  app.get('/users/:id', async (req, reply) => {
    const { id } = await params(idParams, req);
    const read = await plan(req, reply, id);
    if (read.own || read.refused) return repo.getUser(id, read.consistency);
    return cached<User>(cache, userKey(id), () => repo.getUser(id, read.consistency), 'user', id);
  });

  app.patch('/users/:id', async (req, reply) => {
    const { id } = await params(idParams, req);
    const patch = await body(updateUserBody, req);
    const user = await repo.updateUser(id, patch);
    await issue(reply, id);
    return user;
  });

  app.post('/users/:id/posts', async (req, reply) => {
    const { id } = await params(idParams, req);
    const input = await body(createPostBody, req);
    const post = await repo.createPost(id, input.body);
    await issue(reply, id);
    return reply.code(201).send(post);
  });

  app.get('/users/:id/posts', async (req, reply) => {
    const { id } = await params(idParams, req);
    const page = await query(pageQuery, req);
    return repo.listPosts(id, page, (await plan(req, reply, id)).consistency);
  });

  app.get('/posts/:id', async (req) => {
    const { id } = await params(idParams, req);
    return withPendingLikes(await cached<Post>(cache, postKey(id), () => repo.getPost(id), 'post', id));
  });

  app.post('/posts/:id/comments', async (req, reply) => {
    const { id } = await params(idParams, req);
    const input = await body(createCommentBody, req);
    const comment = await repo.addComment(id, input.userId, input.body);
    await issue(reply, input.userId);
    return reply.code(201).send(comment);
  });

  app.get('/posts/:id/comments', async (req) => {
    const { id } = await params(idParams, req);
    return repo.listComments(id, await query(pageQuery, req));
  });

  app.put('/posts/:id/likes/:userId', async (req, reply) => {
    const { id, userId } = await params(postLikeParams, req);
    const result = await repo.like(id, userId, true);
    if (result.liked) await likeCounts.set(String(id), result.likeCount);
    await issue(reply, userId);
    return result;
  });

  app.delete('/posts/:id/likes/:userId', async (req, reply) => {
    const { id, userId } = await params(postLikeParams, req);
    const result = await repo.unlike(id, userId, true);
    if (result.unliked) await likeCounts.set(String(id), result.likeCount);
    await issue(reply, userId);
    return result;
  });

  app.put('/users/:id/following/:targetId', async (req, reply) => {
    const { id, targetId } = await params(followParams, req);
    const result = await repo.follow(id, targetId);
    await issue(reply, id);
    return result;
  });

  app.delete('/users/:id/following/:targetId', async (req, reply) => {
    const { id, targetId } = await params(followParams, req);
    const result = await repo.unfollow(id, targetId);
    await issue(reply, id);
    return result;
  });

  // The account lifecycle: commands decided on the account's event stream. The user row is read
  // from the primary: a command must not be decided on a replica's older copy.
  app.post('/users/:id/suspend', async (req) => {
    const { id } = await params(idParams, req);
    // The body is optional: no body is no reason.
    const { reason } = await validate(suspendBody, req.body ?? {}, { subject: 'request body' });
    const user = await repo.getUser(id);
    return { userId: id, ...(await deps.accounts.suspend(user, reason)) };
  });

  app.post('/users/:id/reinstate', async (req) => {
    const { id } = await params(idParams, req);
    const user = await repo.getUser(id);
    return { userId: id, ...(await deps.accounts.reinstate(user)) };
  });

  app.get('/users/:id/history', async (req) => {
    const { id } = await params(idParams, req);
    await repo.getUser(id);
    const events = await deps.accounts.history(id);
    return {
      userId: id,
      status: await deps.accounts.status(id),
      version: events.at(-1)?.version ?? 0,
      events,
    };
  });

  app.get('/users/:id/stats', async (req) => {
    const { id } = await params(idParams, req);
    return repo.stats(id);
  });

  app.get('/users/:id/feed', async (req, reply) => {
    const { id } = await params(idParams, req);
    const page = await query(pageQuery, req);
    const read = await plan(req, reply, id);
    // The first page at the default size is cached (cache-aside, invalidated by the
    // feed-invalidation consumer once the feed projection has applied a change); other pages and
    // sizes, and a user's own feed after a write of theirs, are read from the projection live.
    if (page.cursor !== undefined || page.limit !== CACHED_FEED_LIMIT || read.own || read.refused) {
      return repo.feed(id, page, read.consistency);
    }
    const feed = await cached<Page<Post>>(
      cache,
      feedKey(id),
      () => repo.feed(id, page, read.consistency),
      'user',
      id,
    );
    return { ...feed, items: feed.items.map(withPendingLikes) };
  });
}
