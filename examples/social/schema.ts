/**
 * The social app's tables. Times are epoch milliseconds (bigint); ids are global snowflake ids
 * (time-ordered, so `id` order is creation order on every shard and across shards).
 *
 * The meta database holds what is global: the index tables that make emails and handles unique
 * across shards and find a post's author (`user_emails`, `user_handles`, `post_owners`), and the
 * `user_stats` counters the change log maintains. Every shard holds the full sharded schema:
 * users (by `id`), posts (by `user_id`, time-partitioned by month), comments and likes (with
 * their post, by `post_user_id`) and follows (by `follower_id`). Foreign keys are kept where
 * both rows live on the same shard (a post's author, a follower) and dropped where they cannot
 * hold (the other user of a comment, like or follow; a post behind a partitioned table).
 */
import { type SqlDriver, sql } from 'strata';
import type { TimePartitioning } from 'strata/sharding';

/** Creates the meta tables if they do not exist. */
export async function migrateMeta(meta: SqlDriver): Promise<void> {
  await meta.transaction(async (tx) => {
    await tx.query(
      sql`create table if not exists user_emails (
        email text primary key,
        user_id bigint not null,
        created_at bigint not null
      )`,
    );
    await tx.query(
      sql`create table if not exists user_handles (
        handle text primary key,
        user_id bigint not null,
        created_at bigint not null
      )`,
    );
    await tx.query(
      sql`create table if not exists post_owners (
        post_id bigint primary key,
        user_id bigint not null
      )`,
    );
    await tx.query(
      sql`create table if not exists user_stats (
        user_id bigint primary key,
        posts integer not null default 0,
        comments integer not null default 0,
        likes_received integer not null default 0,
        followers integer not null default 0
      )`,
    );
  });
}

/** The column definitions of the time-partitioned `posts` table on a shard of `dialect`. */
export function postsDefinition(dialect: 'sqlite' | 'postgres'): string {
  // PostgreSQL requires the partition key in every unique constraint of a partitioned table.
  return dialect === 'postgres'
    ? `id bigint not null,
       user_id bigint not null references users(id),
       body text not null,
       like_count integer not null default 0,
       comment_count integer not null default 0,
       created_at bigint not null,
       primary key (id, created_at)`
    : `id integer primary key,
       user_id bigint not null references users(id),
       body text not null,
       like_count integer not null default 0,
       comment_count integer not null default 0,
       created_at integer not null`;
}

/**
 * Creates a shard's tables if they do not exist: users, comments, likes and follows as plain
 * tables, posts through `posts` (its time partitioning), which also premakes the partitions.
 */
export async function migrateShard(shard: SqlDriver, posts: TimePartitioning): Promise<void> {
  const id = shard.dialect.name === 'postgres' ? 'id bigint primary key' : 'id integer primary key';
  await shard.transaction(async (tx) => {
    await tx.exec(`
      create table if not exists users (
        ${id},
        handle text not null unique,
        email text not null unique,
        name text not null,
        bio text not null default '',
        created_at bigint not null,
        updated_at bigint not null
      );
      create table if not exists comments (
        ${id},
        post_id bigint not null,
        post_user_id bigint not null,
        user_id bigint not null,
        body text not null,
        created_at bigint not null
      );
      create index if not exists comments_post_id_idx on comments (post_id, id);
      create table if not exists likes (
        post_id bigint not null,
        post_user_id bigint not null,
        user_id bigint not null,
        created_at bigint not null,
        primary key (post_id, user_id)
      );
      create table if not exists follows (
        follower_id bigint not null references users(id),
        followee_id bigint not null,
        created_at bigint not null,
        primary key (follower_id, followee_id)
      );
      create index if not exists follows_followee_idx on follows (followee_id);
    `);
  });
  await posts.migrate({
    columns: postsDefinition(shard.dialect.name === 'postgres' ? 'postgres' : 'sqlite'),
    indexes: [{ columns: ['user_id', 'id'] }],
  });
}
