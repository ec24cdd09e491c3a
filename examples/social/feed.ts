/**
 * The feed as a read model built by a projection.
 *
 * 1. The bridge (`feed-events`, a consumer of the change log) turns captured shard rows into
 *    domain events in the event store: a new `posts` row is `post_published` on the author's
 *    stream `feed-<authorId>`, a new or deleted `follows` row is `followed` / `unfollowed` on the
 *    follower's stream `feed-<followerId>`. Each event's id is derived from the change's position
 *    in its source, so a change the log delivers again is "already appended", never twice.
 * 2. The `feed` projection (an async consumer of the event store, `projection.feed`) keeps three
 *    tables in the meta database: `feed_posts` (every published post), `feed_followers` (who
 *    follows whom) and `feed_items` (one row per reader and post: fan-out on write). A post goes
 *    to the author's followers as the projection knows them; a follow backfills the followee's
 *    newest `BACKFILL_POSTS` posts; an unfollow removes the followee's posts from the reader's
 *    feed. Whichever of a follow and a post reaches the projection second adds the item, so the
 *    order in which the shards' changes reach the log does not matter.
 * 3. `feed-invalidation` (a consumer of the event store) drops cached first feed pages of the
 *    readers an event touched, but only once the projection has applied it: it reads the store
 *    through a gate that hides events past the projection's checkpoint, so a dropped page is
 *    never refilled from a read model that has not seen the change yet.
 */
import { isStrataError, type SqlDriver, type SqlExecutor, sql } from 'strata';
import type { Cache } from 'strata/cache';
import {
  type ChangeLog,
  type CheckpointStore,
  type Consumer,
  createConsumer,
  type LogEntry,
} from 'strata/changes';
import { defineProjection, projectionConsumerName } from 'strata/cqrs';
import type { EventStore, EventTypeDefinition, NewEvent, RecordedEvent } from 'strata/events';
import { z } from 'zod';
import { feedKey } from './caching.js';

/** Posts of a newly followed user that a follow copies into the reader's feed. */
export const BACKFILL_POSTS = 100;

/** The stream of the feed events `userId` caused (their posts and follows). */
export const feedStream = (userId: number) => `feed-${userId}`;

const id = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

/** The feed events with their schemas. */
export const feedEventTypes: readonly EventTypeDefinition[] = [
  {
    type: 'post_published',
    version: 1,
    schema: z.strictObject({ postId: id, authorId: id, createdAt: z.number().int().nonnegative() }),
  },
  { type: 'followed', version: 1, schema: z.strictObject({ followerId: id, followeeId: id }) },
  { type: 'unfollowed', version: 1, schema: z.strictObject({ followerId: id, followeeId: id }) },
];

/** The `feed` projection: fan-out on write into `feed_items`. */
export const feedProjection = defineProjection({
  name: 'feed',
  tables: { items: 'feed_items', followers: 'feed_followers', posts: 'feed_posts' },
  handles: ['post_published', 'followed', 'unfollowed'],
  streamTypes: ['feed'],
  schema: (t, names) => [
    sql`create table if not exists ${t.items} (
      reader_id bigint not null,
      post_id bigint not null,
      author_id bigint not null,
      created_at bigint not null,
      primary key (reader_id, post_id)
    )`,
    sql`create table if not exists ${t.followers} (
      followee_id bigint not null,
      follower_id bigint not null,
      primary key (followee_id, follower_id)
    )`,
    sql`create table if not exists ${t.posts} (
      post_id bigint primary key,
      author_id bigint not null,
      created_at bigint not null
    )`,
    sql`create index if not exists ${sql.id(`${names.posts}_by_author`)} on ${t.posts} (author_id, post_id)`,
  ],
  async apply(ex: SqlExecutor, event: RecordedEvent, t) {
    const d = event.data as Record<string, number>;
    switch (event.type) {
      case 'post_published': {
        await ex.query(
          sql`insert into ${t.posts} (post_id, author_id, created_at)
              values (${d.postId}, ${d.authorId}, ${d.createdAt}) on conflict (post_id) do nothing`,
        );
        await ex.query(
          sql`insert into ${t.items} (reader_id, post_id, author_id, created_at)
              select follower_id, ${d.postId}, ${d.authorId}, ${d.createdAt} from ${t.followers}
              where followee_id = ${d.authorId}
              on conflict (reader_id, post_id) do nothing`,
        );
        return;
      }
      case 'followed': {
        await ex.query(
          sql`insert into ${t.followers} (followee_id, follower_id) values (${d.followeeId}, ${d.followerId})
              on conflict (followee_id, follower_id) do nothing`,
        );
        await ex.query(
          sql`insert into ${t.items} (reader_id, post_id, author_id, created_at)
              select ${d.followerId}, post_id, author_id, created_at from ${t.posts}
              where author_id = ${d.followeeId} and post_id in (
                select post_id from ${t.posts} where author_id = ${d.followeeId}
                order by post_id desc limit ${BACKFILL_POSTS})
              on conflict (reader_id, post_id) do nothing`,
        );
        return;
      }
      case 'unfollowed': {
        await ex.query(
          sql`delete from ${t.followers} where followee_id = ${d.followeeId} and follower_id = ${d.followerId}`,
        );
        await ex.query(
          sql`delete from ${t.items} where reader_id = ${d.followerId} and author_id = ${d.followeeId}`,
        );
        return;
      }
    }
  },
});

/** The feed event a captured change stands for, or undefined for changes the feed ignores. */
export function feedEventOf(entry: LogEntry): { stream: string; event: NewEvent } | undefined {
  const row = (entry.op === 'delete' ? entry.before : entry.after) ?? {};
  // Derived from where the change sits in its source: a redelivered change gets the same id.
  const eventId = `change:${entry.position}`;
  if (entry.table === 'posts' && entry.op === 'insert') {
    const authorId = Number(row.user_id);
    return {
      stream: feedStream(authorId),
      event: {
        id: eventId,
        type: 'post_published',
        data: { postId: Number(row.id), authorId, createdAt: Number(row.created_at) },
      },
    };
  }
  if (entry.table === 'follows' && (entry.op === 'insert' || entry.op === 'delete')) {
    const followerId = Number(row.follower_id ?? entry.key.follower_id);
    const followeeId = Number(row.followee_id ?? entry.key.followee_id);
    return {
      stream: feedStream(followerId),
      event: {
        id: eventId,
        type: entry.op === 'insert' ? 'followed' : 'unfollowed',
        data: { followerId, followeeId },
      },
    };
  }
  return undefined;
}

/**
 * Appends the feed events of `entries` in order. A batch goes in with one multi-stream append;
 * when part of it is stored already (the log delivered it again with other batch boundaries),
 * the store refuses the whole append as a duplicate and the events go one by one, each either
 * appended or "already appended".
 */
export async function appendFeedEvents(store: EventStore, entries: readonly LogEntry[]): Promise<number> {
  const byStream = new Map<string, NewEvent[]>();
  let count = 0;
  for (const entry of entries) {
    const found = feedEventOf(entry);
    if (found === undefined) continue;
    const list = byStream.get(found.stream) ?? [];
    list.push(found.event);
    byStream.set(found.stream, list);
    count++;
  }
  if (count === 0) return 0;
  try {
    await store.appendMany([...byStream].map(([stream, events]) => ({ stream, expected: 'any', events })));
  } catch (err) {
    if (!isStrataError(err, 'E_DUPLICATE_EVENT')) throw err;
    for (const [stream, events] of byStream) {
      for (const event of events) await store.append(stream, [event], { expected: 'any' });
    }
  }
  return count;
}

/** The bridge from the change log into the event store. */
export function createFeedBridge(options: {
  log: ChangeLog;
  checkpoints: CheckpointStore;
  store: EventStore;
}): Consumer {
  return createConsumer({
    name: 'feed-events',
    log: options.log,
    checkpoints: options.checkpoints,
    tables: ['posts', 'follows'],
    batchSize: 200,
    pollInterval: '200ms',
    handleBatch: async (entries) => {
      await appendFeedEvents(options.store, entries);
    },
  });
}

/**
 * The event store's log as a consumer that must not run ahead of the feed projection sees it:
 * entries and the head stop at the projection's checkpoint.
 */
export function behindProjection(log: ChangeLog, checkpoints: CheckpointStore, consumer: string): ChangeLog {
  const applied = async () => (await checkpoints.load(consumer))?.offset ?? 0;
  return {
    get name() {
      return log.name;
    },
    append: (changes) => log.append(changes),
    async read(after, limit, options) {
      const cap = await applied();
      if (cap <= after) return [];
      const entries = await log.read(after, limit, options);
      return entries.filter((e) => e.offset <= cap);
    },
    head: async () => Math.min(await log.head(), await applied()),
    lastPosition: (source) => log.lastPosition(source),
    watch: (listener) => log.watch(listener),
    close: async () => undefined,
  };
}

/**
 * Drops the cached first feed pages of the readers the applied feed events touched. Its own
 * checkpoint goes to `checkpoints`; the projection's is read from `projectionCheckpoints`.
 */
export function createFeedInvalidation(options: {
  store: EventStore;
  meta: SqlDriver;
  checkpoints: CheckpointStore;
  projectionCheckpoints: CheckpointStore;
  cache: Cache;
}): Consumer {
  const followers = sql.id(feedProjection.tables.followers);
  return createConsumer({
    name: 'feed-invalidation',
    log: behindProjection(
      options.store.asChangeLog(),
      options.projectionCheckpoints,
      projectionConsumerName(feedProjection),
    ),
    checkpoints: options.checkpoints,
    tables: ['feed'],
    batchSize: 200,
    pollInterval: '200ms',
    handleBatch: async (entries) => {
      const readers = new Set<number>();
      const authors = new Set<number>();
      for (const e of entries) {
        const event = e.after as unknown as RecordedEvent | null;
        if (event === null) continue;
        const d = event.data as Record<string, number>;
        if (event.type === 'post_published') authors.add(Number(d.authorId));
        else if (event.type === 'followed' || event.type === 'unfollowed') readers.add(Number(d.followerId));
      }
      if (authors.size > 0) {
        const { rows } = await options.meta.query<{ follower_id: unknown }>(
          sql`select follower_id from ${followers} where followee_id in (${sql.join([...authors])})`,
        );
        for (const r of rows) readers.add(Number(r.follower_id));
      }
      if (readers.size > 0) await options.cache.deleteMany([...readers].map(feedKey));
    },
  });
}

/** One page of a reader's feed items, newest first: post ids and their authors. */
export async function feedItems(
  meta: SqlExecutor,
  readerId: number,
  limit: number,
  cursor: number | undefined,
): Promise<Array<{ postId: number; authorId: number }>> {
  const items = sql.id(feedProjection.tables.items);
  const { rows } = await meta.query<{ post_id: unknown; author_id: unknown }>(
    sql`select post_id, author_id from ${items}
        where reader_id = ${readerId} ${cursor === undefined ? sql.empty : sql`and post_id < ${cursor}`}
        order by post_id desc limit ${limit}`,
  );
  return rows.map((r) => ({ postId: Number(r.post_id), authorId: Number(r.author_id) }));
}
