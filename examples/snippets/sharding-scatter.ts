import { sql } from 'strata';
import type { ShardRouter } from 'strata/sharding';

export async function latestPosts(router: ShardRouter, limit: number) {
  // Every shard returns its own newest `limit` posts in the same order; the router merges
  // the sorted lists and keeps the first `limit`.
  const { rows } = await router.scatter<{ id: number; user_id: number; created_at: string }>(
    sql`select id, user_id, created_at from posts order by created_at desc, id desc limit ${limit}`,
    {
      orderBy: [
        { column: 'created_at', desc: true },
        { column: 'id', desc: true },
      ],
      limit,
    },
  );
  return rows;
}

export async function likeStats(router: ShardRouter) {
  // Each shard returns partial aggregates; the router merges them into one row. An average
  // is sum / count over all shards, never an average of the shards' averages.
  const { rows } = await router.scatter<{ posts: number; likes: number; top: number; avg_likes: number }>(
    'select count(*) as posts, sum(likes) as likes, max(likes) as top from posts',
    {
      aggregate: {
        count: ['posts'],
        sum: ['likes'],
        max: ['top'],
        avg: [{ column: 'avg_likes', sum: 'likes', count: 'posts' }],
      },
    },
  );
  return rows[0]!;
}

export async function postsPerCountry(router: ShardRouter) {
  // Grouped on every shard (the join is local thanks to co-location), merged per group.
  const { rows } = await router.scatter<{ country: string; posts: number }>(
    `select users.country, count(*) as posts from posts join users on users.id = posts.user_id
      group by users.country`,
    { aggregate: { groupBy: ['country'], count: ['posts'] }, orderBy: [{ column: 'country' }] },
  );
  return rows;
}

export async function postCountBestEffort(router: ShardRouter) {
  // A dashboard figure: answer with the shards that answered within 500 ms, and say which did not.
  const result = await router.scatter<{ n: number }>('select count(*) as n from posts', {
    aggregate: { count: ['n'] },
    partial: 'partial',
    timeout: '500ms',
  });
  return { posts: result.rows[0]!.n, missing: result.failures.map((f) => f.shard) };
}
