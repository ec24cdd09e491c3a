/**
 * The social app's data access over sharded stores: users, posts, comments, likes, follows and
 * the feed. Missing rows are `E_NOT_FOUND`, duplicates `E_CONFLICT` naming the field.
 *
 * Placement: a user and everything of theirs (posts, the likes and comments of their posts, the
 * users they follow) live on the user's shard. Global facts live in index tables in the meta
 * database: `user_emails` and `user_handles` keep emails and handles unique across shards, and
 * `post_owners` finds a post's author (hence its shard) from the post id alone. An index row is
 * written before the shard row and removed again when the shard write fails (compensation); a
 * row a crash left behind without its user is reclaimed once it is older than a grace period.
 */
import {
  isStrataError,
  type QueryError,
  type SqlDriver,
  type SqlExecutor,
  type SqlFragment,
  StrataError,
  sql,
  ValidationError,
} from 'strata';
import type { ShardHandle, ShardId } from 'strata/sharding';
import { feedItems } from './feed.js';
import type { SocialStores } from './stores.js';

export interface User {
  id: number;
  handle: string;
  email: string;
  name: string;
  bio: string;
  createdAt: number;
  updatedAt: number;
}

export interface Post {
  id: number;
  userId: number;
  body: string;
  likeCount: number;
  commentCount: number;
  createdAt: number;
}

export interface Comment {
  id: number;
  postId: number;
  userId: number;
  body: string;
  createdAt: number;
}

/** A page of results, newest first; pass `nextCursor` back to get the next page. */
export interface Page<T> {
  items: T[];
  nextCursor: number | null;
}

/** Keyset pagination: ids below `cursor`, newest first, `limit` items. */
export interface PageRequest {
  limit: number;
  cursor?: number | undefined;
}

/**
 * How fresh a read must be: `strong` reads the shard's primary; `eventual` and `{ session: token }`
 * (read-your-writes) may be served by a replica of the shard (see `replicas.ts`).
 */
export type ReadConsistency = 'strong' | 'eventual' | { readonly session: string };

/** Routes reads of a shard to its replicas; without one, every read goes to the primary. */
export interface ShardReads {
  /** Runs `fn` on the node of `shard` that `consistency` chooses. */
  read<T>(shard: ShardId, consistency: ReadConsistency, fn: (db: SqlExecutor) => Promise<T>): Promise<T>;
}

/**
 * The account lifecycle as the repository sees it (`Accounts` in `accounts.ts`): the stream is
 * brought in line with a user row after each write of it, and writes by suspended users refused.
 */
export interface AccountHooks {
  /** Records what the stream does not know of `user` yet (registration, a new email). */
  sync(user: User): Promise<unknown>;
  /** `E_ACCOUNT_SUSPENDED` when `userId` may not post or comment now. */
  assertActive(userId: number): Promise<void>;
}

/** Row counts of the sharded tables. */
export type TableCounts = Record<'users' | 'posts' | 'comments' | 'likes' | 'follows', number>;

type Entity = 'user' | 'post';
type UniqueField = 'email' | 'handle';

/** How long an index row may exist without its user before another user may take its value. */
const ORPHAN_GRACE_MS = 30_000;
/** Keys per `in (...)` list, well under every engine's parameter limit. */
const IN_CHUNK = 500;

const INDEX_TABLE: Record<UniqueField, { table: SqlFragment; column: SqlFragment }> = {
  email: { table: sql.id('user_emails'), column: sql.id('email') },
  handle: { table: sql.id('user_handles'), column: sql.id('handle') },
};

function notFound(entity: Entity, id: number): StrataError {
  return new StrataError('E_NOT_FOUND', `${entity} not found`, { details: { entity, id } });
}

function conflict(field: UniqueField | 'unknown', cause: unknown): StrataError {
  return new StrataError('E_CONFLICT', `a user with this ${field} already exists`, {
    cause,
    details: { entity: 'user', field },
  });
}

const USER_COLUMNS = sql`id, handle, email, name, bio, created_at, updated_at`;
const POST_COLUMNS = sql`id, user_id, body, like_count, comment_count, created_at`;
const COMMENT_COLUMNS = sql`id, post_id, user_id, body, created_at`;

function toUser(r: Record<string, unknown>): User {
  return {
    id: Number(r.id),
    handle: String(r.handle),
    email: String(r.email),
    name: String(r.name),
    bio: String(r.bio),
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
  };
}

function toPost(r: Record<string, unknown>): Post {
  return {
    id: Number(r.id),
    userId: Number(r.user_id),
    body: String(r.body),
    likeCount: Number(r.like_count),
    commentCount: Number(r.comment_count),
    createdAt: Number(r.created_at),
  };
}

function toComment(r: Record<string, unknown>): Comment {
  return {
    id: Number(r.id),
    postId: Number(r.post_id),
    userId: Number(r.user_id),
    body: String(r.body),
    createdAt: Number(r.created_at),
  };
}

function page<T extends { id: number }>(rows: T[], limit: number): Page<T> {
  const items = rows.slice(0, limit);
  return { items, nextCursor: rows.length > limit ? items[items.length - 1]!.id : null };
}

function before(cursor: number | undefined) {
  return cursor === undefined ? sql`` : sql`and id < ${cursor}`;
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** The unique field a unique violation is about: by the index or users column it names. */
function uniqueField(err: unknown): UniqueField | 'unknown' | undefined {
  if (!isStrataError(err, 'E_CONSTRAINT')) return undefined;
  const q = err as QueryError;
  if (q.constraintKind !== 'unique') return undefined;
  const where = `${q.table ?? ''} ${q.column ?? ''} ${q.constraint ?? ''}`;
  return where.includes('email') ? 'email' : where.includes('handle') ? 'handle' : 'unknown';
}

/** Turns a unique violation on users (or their index tables) into `E_CONFLICT` naming the field. */
function userConflict(err: unknown): unknown {
  const field = uniqueField(err);
  return field === undefined ? err : conflict(field, err);
}

/** Data access for the social app over its sharded stores. */
export class SocialRepository {
  /** Where reads that name a consistency other than `strong` go (set by the app once its replicas run). */
  reads: ShardReads | undefined;
  /** The account lifecycle (set by the app once its event store is open). */
  accounts: AccountHooks | undefined;

  constructor(
    readonly stores: SocialStores,
    private readonly now: () => number = Date.now,
  ) {}

  /** Runs a read on shard `shard`: on its primary when `strong` or without replicas, else routed. */
  #readShard<T>(
    shard: ShardId,
    consistency: ReadConsistency,
    fn: (db: SqlExecutor) => Promise<T>,
  ): Promise<T> {
    if (consistency === 'strong' || this.reads === undefined) {
      return fn(this.stores.router.shards.get(shard)!);
    }
    return this.reads.read(shard, consistency, fn);
  }

  get #meta(): SqlDriver {
    return this.stores.meta;
  }

  /** The shard of `userId`'s data. */
  #shard(userId: number): Promise<ShardHandle> {
    return this.stores.router.forKey(userId);
  }

  /** Runs a write on the shard of `userId` through the router's write gate (a reshard's cutover pauses it). */
  #write<T>(userId: number, fn: (shard: ShardHandle) => Promise<T>): Promise<T> {
    return this.stores.router.withWrite(async () => fn(await this.#shard(userId)));
  }

  /** When a post was created: the time inside its id, which is also its partition key. */
  #postTime(postId: number): number {
    return this.stores.ids.decode(postId).time.getTime();
  }

  async #requireUser(ex: SqlExecutor, id: number): Promise<void> {
    const { rowCount } = await ex.query(sql`select 1 from users where id = ${id}`);
    if (rowCount === 0) throw notFound('user', id);
  }

  async #requireUserAnywhere(id: number): Promise<void> {
    await this.#requireUser((await this.#shard(id)).driver, id);
  }

  async #requirePost(ex: SqlExecutor, id: number): Promise<void> {
    const { rowCount } = await ex.query(
      sql`select 1 from posts where id = ${id} and created_at = ${this.#postTime(id)}`,
    );
    if (rowCount === 0) throw notFound('post', id);
  }

  /** The author of post `postId`, from the `post_owners` index; `E_NOT_FOUND` when there is none. */
  async #postOwner(postId: number): Promise<number> {
    const { rows } = await this.#meta.query<{ user_id: unknown }>(
      sql`select user_id from post_owners where post_id = ${postId}`,
    );
    if (rows.length === 0) throw notFound('post', postId);
    return Number(rows[0]!.user_id);
  }

  /** Reserves each `values[field]` for `userId` in the index tables, all or none; `E_CONFLICT` naming the taken field. */
  async #claim(userId: number, values: Partial<Record<UniqueField, string>>): Promise<void> {
    const now = this.now();
    const entries = Object.entries(values) as Array<[UniqueField, string]>;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#meta.transaction(async (tx) => {
          for (const [field, value] of entries) {
            const { table, column } = INDEX_TABLE[field];
            await tx.query(
              sql`insert into ${table} (${column}, user_id, created_at) values (${value}, ${userId}, ${now})`,
            );
          }
        });
        return;
      } catch (err) {
        const field = uniqueField(err);
        if (field === undefined) throw err;
        if (field !== 'unknown' && attempt === 1 && (await this.#reclaimOrphan(field, values[field]!))) {
          continue;
        }
        throw conflict(field, err);
      }
    }
  }

  /**
   * Removes the index row of `value` when its user does not hold that value (a crash between
   * the index write and the shard write, or a failed compensation) and the row is older than the
   * grace period, so a create still in flight keeps its claim; true when the value is free now.
   */
  async #reclaimOrphan(field: UniqueField, value: string): Promise<boolean> {
    const { table, column } = INDEX_TABLE[field];
    const { rows } = await this.#meta.query<{ user_id: unknown; created_at: unknown }>(
      sql`select user_id, created_at from ${table} where ${column} = ${value}`,
    );
    const row = rows[0];
    if (row === undefined) return true;
    if (this.now() - Number(row.created_at) < ORPHAN_GRACE_MS) return false;
    const holder = Number(row.user_id);
    const shard = await this.#shard(holder);
    const { rowCount } = await shard.driver.query(
      sql`select 1 from users where id = ${holder} and ${column} = ${value}`,
    );
    if (rowCount > 0) return false;
    await this.#meta.query(sql`delete from ${table} where ${column} = ${value} and user_id = ${holder}`);
    return true;
  }

  /** Gives the index rows of `values` held by `userId` back (compensation; best effort). */
  async #release(userId: number, values: Partial<Record<UniqueField, string>>): Promise<void> {
    for (const [field, value] of Object.entries(values) as Array<[UniqueField, string]>) {
      const { table, column } = INDEX_TABLE[field];
      await this.#meta
        .query(sql`delete from ${table} where ${column} = ${value} and user_id = ${userId}`)
        .catch(() => undefined);
    }
  }

  /**
   * Creates a user; `E_CONFLICT` when the email or handle is taken on any shard. The user row
   * is written first, then the account's `registered` event: when the append fails, the row and
   * the claims are removed again (compensation), so no user is left without an account stream
   * and no `registered` event without a user, but for a crash or an append that committed and
   * reported a failure (see `accounts.ts`).
   */
  async createUser(input: {
    handle: string;
    email: string;
    name: string;
    bio?: string | undefined;
  }): Promise<User> {
    const id = this.stores.ids.next();
    const now = this.now();
    const keys = { email: input.email, handle: input.handle };
    await this.#claim(id, keys);
    let user: User;
    try {
      user = await this.#write(id, async ({ driver }) => {
        const { rows } = await driver.query(
          sql`insert into users (id, handle, email, name, bio, created_at, updated_at)
              values (${id}, ${input.handle}, ${input.email}, ${input.name}, ${input.bio ?? ''}, ${now}, ${now})
              returning ${USER_COLUMNS}`,
        );
        return toUser(rows[0]!);
      });
    } catch (err) {
      await this.#release(id, keys);
      throw userConflict(err);
    }
    if (this.accounts !== undefined) {
      try {
        await this.accounts.sync(user);
      } catch (err) {
        await this.#write(id, ({ driver }) => driver.query(sql`delete from users where id = ${id}`)).catch(
          () => undefined,
        );
        await this.#release(id, keys);
        throw err;
      }
    }
    return user;
  }

  /** The user with `id`, read at `consistency` (default `strong`); `E_NOT_FOUND` when there is none. */
  async getUser(id: number, consistency: ReadConsistency = 'strong'): Promise<User> {
    const { id: shard } = await this.#shard(id);
    return this.#readShard(shard, consistency, async (db) => {
      const { rows } = await db.query(sql`select ${USER_COLUMNS} from users where id = ${id}`);
      if (rows.length === 0) throw notFound('user', id);
      return toUser(rows[0]!);
    });
  }

  /** Changes the given fields of a user; `E_NOT_FOUND`, or `E_CONFLICT` for an email taken on any shard. */
  async updateUser(
    id: number,
    patch: { name?: string | undefined; bio?: string | undefined; email?: string | undefined },
  ): Promise<User> {
    const sets = [sql`updated_at = ${this.now()}`];
    if (patch.name !== undefined) sets.push(sql`name = ${patch.name}`);
    if (patch.bio !== undefined) sets.push(sql`bio = ${patch.bio}`);
    if (patch.email !== undefined) sets.push(sql`email = ${patch.email}`);
    const update = async (driver: SqlExecutor) => {
      const { rows } = await driver.query(
        sql`update users set ${sql.join(sets)} where id = ${id} returning ${USER_COLUMNS}`,
      );
      if (rows.length === 0) throw notFound('user', id);
      return toUser(rows[0]!);
    };
    const email = patch.email;
    if (email === undefined) return this.#write(id, ({ driver }) => update(driver));
    const { rows } = await (await this.#shard(id)).driver.query<{ email: string }>(
      sql`select email from users where id = ${id}`,
    );
    if (rows.length === 0) throw notFound('user', id);
    const previous = String(rows[0]!.email);
    if (previous === email) return this.#write(id, ({ driver }) => update(driver));
    await this.#claim(id, { email });
    let user: User;
    try {
      user = await this.#write(id, ({ driver }) => update(driver));
    } catch (err) {
      await this.#release(id, { email });
      throw userConflict(err);
    }
    // The old address is free once the row no longer holds it; a failure here leaves an orphan
    // index row, which a later claim of that address reclaims.
    await this.#release(id, { email: previous });
    // The account stream records the change after the row holds it; should the append fail, the
    // next sync of the account (a retried PATCH, a suspension) records it.
    await this.accounts?.sync(user);
    return user;
  }

  /**
   * Publishes a post by `userId`; `E_NOT_FOUND` when the user does not exist, `E_ACCOUNT_SUSPENDED`
   * while the account is suspended.
   */
  async createPost(userId: number, body: string): Promise<Post> {
    await this.#requireUserAnywhere(userId);
    await this.accounts?.assertActive(userId);
    const id = this.stores.ids.next();
    const createdAt = this.#postTime(id);
    await this.#meta.query(sql`insert into post_owners (post_id, user_id) values (${id}, ${userId})`);
    try {
      return await this.#write(userId, async (shard) => {
        const table = await this.stores.preparePostTable(shard.id, createdAt);
        return shard.driver.transaction(async (tx) => {
          await this.#requireUser(tx, userId);
          const { rows } = await tx.query(
            sql`insert into ${sql.id(table)} (id, user_id, body, created_at)
                values (${id}, ${userId}, ${body}, ${createdAt})
                returning ${POST_COLUMNS}`,
          );
          return toPost(rows[0]!);
        });
      });
    } catch (err) {
      await this.#meta.query(sql`delete from post_owners where post_id = ${id}`).catch(() => undefined);
      throw err;
    }
  }

  /** The post with `id`; `E_NOT_FOUND` when there is none. */
  async getPost(id: number): Promise<Post> {
    const owner = await this.#postOwner(id);
    const { driver } = await this.#shard(owner);
    const { rows } = await driver.query(
      sql`select ${POST_COLUMNS} from posts where id = ${id} and created_at = ${this.#postTime(id)}`,
    );
    if (rows.length === 0) throw notFound('post', id);
    return toPost(rows[0]!);
  }

  /**
   * A user's posts, newest first, read at `consistency` (default `strong`); `E_NOT_FOUND` when the
   * user does not exist.
   */
  async listPosts(
    userId: number,
    req: PageRequest,
    consistency: ReadConsistency = 'strong',
  ): Promise<Page<Post>> {
    const { id: shard } = await this.#shard(userId);
    return this.#readShard(shard, consistency, async (db) => {
      await this.#requireUser(db, userId);
      const { rows } = await db.query(
        sql`select ${POST_COLUMNS} from posts where user_id = ${userId} ${before(req.cursor)}
            order by id desc limit ${req.limit + 1}`,
      );
      return page(rows.map(toPost), req.limit);
    });
  }

  /**
   * Adds a comment; `E_NOT_FOUND` when the post or the user does not exist, `E_ACCOUNT_SUSPENDED`
   * while the commenter's account is suspended.
   */
  async addComment(postId: number, userId: number, body: string): Promise<Comment> {
    const owner = await this.#postOwner(postId);
    await this.#requireUserAnywhere(userId);
    await this.accounts?.assertActive(userId);
    const id = this.stores.ids.next();
    const postTime = this.#postTime(postId);
    return this.#write(owner, ({ driver }) =>
      driver.transaction(async (tx) => {
        await this.#requirePost(tx, postId);
        const { rows } = await tx.query(
          sql`insert into comments (id, post_id, post_user_id, user_id, body, created_at)
              values (${id}, ${postId}, ${owner}, ${userId}, ${body}, ${this.now()})
              returning ${COMMENT_COLUMNS}`,
        );
        await tx.query(
          sql`update ${sql.id(this.stores.postTable(postTime))} set comment_count = comment_count + 1
              where id = ${postId} and created_at = ${postTime}`,
        );
        return toComment(rows[0]!);
      }),
    );
  }

  /** A post's comments, newest first; `E_NOT_FOUND` when the post does not exist. */
  async listComments(postId: number, req: PageRequest): Promise<Page<Comment>> {
    const { driver } = await this.#shard(await this.#postOwner(postId));
    await this.#requirePost(driver, postId);
    const { rows } = await driver.query(
      sql`select ${COMMENT_COLUMNS} from comments where post_id = ${postId} ${before(req.cursor)}
          order by id desc limit ${req.limit + 1}`,
    );
    return page(rows.map(toComment), req.limit);
  }

  /**
   * Likes a post (idempotent); returns whether this call added the like and the post's like
   * count after it. With `deferCounts`, the `posts.like_count` column is not updated here: the
   * caller writes it behind (the likes table stays the source of truth).
   */
  async like(
    postId: number,
    userId: number,
    deferCounts = false,
  ): Promise<{ liked: boolean; likeCount: number }> {
    const owner = await this.#postOwner(postId);
    await this.#requireUserAnywhere(userId);
    return this.#write(owner, ({ driver }) =>
      driver.transaction(async (tx) => {
        await this.#requirePost(tx, postId);
        const inserted = await tx.query(
          sql`insert into likes (post_id, post_user_id, user_id, created_at)
              values (${postId}, ${owner}, ${userId}, ${this.now()})
              on conflict do nothing`,
        );
        return {
          liked: inserted.rowCount === 1,
          likeCount: await this.#likeCount(tx, postId, inserted.rowCount === 1 && !deferCounts, 1),
        };
      }),
    );
  }

  /** Removes a like (idempotent); returns whether this call removed it and the count after it. */
  async unlike(
    postId: number,
    userId: number,
    deferCounts = false,
  ): Promise<{ unliked: boolean; likeCount: number }> {
    const owner = await this.#postOwner(postId);
    return this.#write(owner, ({ driver }) =>
      driver.transaction(async (tx) => {
        await this.#requirePost(tx, postId);
        const deleted = await tx.query(
          sql`delete from likes where post_id = ${postId} and user_id = ${userId}`,
        );
        return {
          unliked: deleted.rowCount === 1,
          likeCount: await this.#likeCount(tx, postId, deleted.rowCount === 1 && !deferCounts, -1),
        };
      }),
    );
  }

  /** Updates the stored counter now (when not deferred) and returns the count. */
  async #likeCount(tx: SqlExecutor, postId: number, update: boolean, by: number): Promise<number> {
    if (update) {
      const postTime = this.#postTime(postId);
      await tx.query(
        sql`update ${sql.id(this.stores.postTable(postTime))} set like_count = like_count + ${by}
            where id = ${postId} and created_at = ${postTime}`,
      );
    }
    const { rows } = await tx.query(sql`select count(*) as n from likes where post_id = ${postId}`);
    return Number(rows[0]!.n);
  }

  /**
   * Sets `posts.like_count` of each post to its number of likes, one transaction per shard (the
   * like-counter write-behind's batch); posts that no longer exist are skipped.
   */
  async recountLikes(postIds: readonly number[]): Promise<void> {
    const owners = new Map<number, number>();
    for (const chunk of chunks([...new Set(postIds)], IN_CHUNK)) {
      const { rows } = await this.#meta.query<{ post_id: unknown; user_id: unknown }>(
        sql`select post_id, user_id from post_owners where post_id in (${sql.join(chunk)})`,
      );
      for (const r of rows) owners.set(Number(r.post_id), Number(r.user_id));
    }
    const byShard = new Map<ShardId, number[]>();
    for (const [postId, userId] of owners) {
      const shard = await this.stores.router.shardOf(userId);
      byShard.set(shard, [...(byShard.get(shard) ?? []), postId]);
    }
    await this.stores.router.withWrite(async () => {
      for (const [shard, posts] of byShard) {
        await this.stores.router.shards.get(shard)!.transaction(async (tx) => {
          for (const postId of posts) {
            const postTime = this.#postTime(postId);
            await tx.query(
              sql`update ${sql.id(this.stores.postTable(postTime))}
                  set like_count = (select count(*) from likes where post_id = ${postId})
                  where id = ${postId} and created_at = ${postTime}`,
            );
          }
        });
      }
    });
  }

  /** `followerId` follows `followeeId` (idempotent); following oneself is `E_VALIDATION`. */
  async follow(followerId: number, followeeId: number): Promise<{ followed: boolean }> {
    if (followerId === followeeId) {
      throw new ValidationError([{ path: ['targetId'], message: 'a user cannot follow themselves' }], {
        subject: 'follow',
      });
    }
    await this.#requireUserAnywhere(followerId);
    await this.#requireUserAnywhere(followeeId);
    return this.#write(followerId, ({ driver }) =>
      driver.transaction(async (tx) => {
        await this.#requireUser(tx, followerId);
        const { rowCount } = await tx.query(
          sql`insert into follows (follower_id, followee_id, created_at) values (${followerId}, ${followeeId}, ${this.now()})
              on conflict do nothing`,
        );
        return { followed: rowCount === 1 };
      }),
    );
  }

  /** Stops following (idempotent). */
  async unfollow(followerId: number, followeeId: number): Promise<{ unfollowed: boolean }> {
    return this.#write(followerId, async ({ driver }) => {
      await this.#requireUser(driver, followerId);
      const { rowCount } = await driver.query(
        sql`delete from follows where follower_id = ${followerId} and followee_id = ${followeeId}`,
      );
      return { unfollowed: rowCount === 1 };
    });
  }

  /**
   * The feed of `userId`: posts of the users they follow, newest first, from the `feed`
   * projection's `feed_items` (eventually consistent: a post appears once the projection has
   * applied it); `E_NOT_FOUND` when the user does not exist. The reader is checked on their
   * shard at `consistency` (default `strong`); the posts themselves (other users' data, with
   * their current like and comment counts) are read from their authors' shards, `eventual`
   * unless `consistency` is `strong`, and from the primary when a replica does not have them yet.
   */
  async feed(userId: number, req: PageRequest, consistency: ReadConsistency = 'strong'): Promise<Page<Post>> {
    const { id: own } = await this.#shard(userId);
    await this.#readShard(own, consistency, (db) => this.#requireUser(db, userId));
    const items = await feedItems(this.#meta, userId, req.limit + 1, req.cursor);
    if (items.length === 0) return { items: [], nextCursor: null };
    const others: ReadConsistency = consistency === 'strong' ? 'strong' : 'eventual';
    const found = await this.#postsById(items, others);
    if (others !== 'strong' && found.size < items.length) {
      const missing = items.filter((i) => !found.has(i.postId));
      for (const [postId, post] of await this.#postsById(missing, 'strong')) found.set(postId, post);
    }
    const page = items.slice(0, req.limit);
    // A post the shards do not have (never committed) is left out of the page.
    const posts = page.map((i) => found.get(i.postId)).filter((p): p is Post => p !== undefined);
    return { items: posts, nextCursor: items.length > req.limit ? page.at(-1)!.postId : null };
  }

  /** The posts of `items` by id, one query per shard and chunk, at `consistency`. */
  async #postsById(
    items: ReadonlyArray<{ postId: number; authorId: number }>,
    consistency: ReadConsistency,
  ): Promise<Map<number, Post>> {
    const byAuthor = new Map<number, number[]>();
    for (const i of items) byAuthor.set(i.authorId, [...(byAuthor.get(i.authorId) ?? []), i.postId]);
    const groups = await this.stores.router.groupByShard([...byAuthor.keys()]);
    const queries: Array<Promise<Post[]>> = [];
    for (const [shard, authors] of groups) {
      const ids = authors.flatMap((a) => byAuthor.get(a) ?? []);
      for (const chunk of chunks(ids, IN_CHUNK)) {
        queries.push(
          this.#readShard(shard, consistency, (db) =>
            db
              .query(sql`select ${POST_COLUMNS} from posts where id in (${sql.join(chunk)})`)
              .then((r) => r.rows.map(toPost)),
          ),
        );
      }
    }
    const out = new Map<number, Post>();
    for (const list of await Promise.all(queries)) for (const p of list) out.set(p.id, p);
    return out;
  }

  /**
   * A user's counters, derived from the change log by the `user-stats` consumer: eventually
   * consistent, a moment behind the writes; `E_NOT_FOUND` when the user does not exist.
   */
  async stats(
    userId: number,
  ): Promise<{ userId: number; posts: number; comments: number; likesReceived: number; followers: number }> {
    await this.#requireUserAnywhere(userId);
    const { rows } = await this.#meta.query<Record<string, unknown>>(
      sql`select posts, comments, likes_received, followers from user_stats where user_id = ${userId}`,
    );
    const r = rows[0] ?? {};
    return {
      userId,
      posts: Number(r.posts ?? 0),
      comments: Number(r.comments ?? 0),
      likesReceived: Number(r.likes_received ?? 0),
      followers: Number(r.followers ?? 0),
    };
  }

  /** Row counts per table on each shard, in shard-map order. */
  async countsByShard(): Promise<Record<ShardId, TableCounts>> {
    const entries = await Promise.all(
      [...this.stores.router.shards].map(async ([id, driver]) => {
        const { rows } = await driver.query(
          sql`select (select count(*) from users) as users, (select count(*) from posts) as posts,
                     (select count(*) from comments) as comments, (select count(*) from likes) as likes,
                     (select count(*) from follows) as follows`,
        );
        const r = rows[0] ?? {};
        const counts: TableCounts = {
          users: Number(r.users ?? 0),
          posts: Number(r.posts ?? 0),
          comments: Number(r.comments ?? 0),
          likes: Number(r.likes ?? 0),
          follows: Number(r.follows ?? 0),
        };
        return [id, counts] as const;
      }),
    );
    return Object.fromEntries(entries);
  }

  /** Row counts per table over all shards, for the dashboard and `strata status`. */
  async counts(): Promise<TableCounts> {
    return sumCounts(Object.values(await this.countsByShard()));
  }
}

/** The per-table sums of several shards' counts. */
export function sumCounts(perShard: readonly TableCounts[]): TableCounts {
  const total: TableCounts = { users: 0, posts: 0, comments: 0, likes: 0, follows: 0 };
  for (const counts of perShard) {
    for (const key of Object.keys(total) as Array<keyof TableCounts>) total[key] += counts[key];
  }
  return total;
}
