import { sql } from 'strata';
import type { ShardRouter } from 'strata/sharding';

interface User {
  id: number;
  name: string;
  country: string;
}
interface Post {
  id: number;
  body: string;
  created_at: string;
}

export async function signUp(router: ShardRouter, user: User, firstPost: Post) {
  // One transaction on the user's shard: the user and the post (same key) commit together.
  await router.transaction(user.id, async (tx) => {
    await tx.query(
      sql`insert into users (id, name, country) values (${user.id}, ${user.name}, ${user.country})`,
    );
    await tx.query(sql`insert into posts (id, user_id, body, created_at)
                       values (${firstPost.id}, ${user.id}, ${firstPost.body}, ${firstPost.created_at})`);
  });
}

export async function profile(router: ShardRouter, userId: number) {
  // A point query runs on one shard, found from the key; the join with posts and the
  // reference table stays local to that shard.
  return router.query<{ name: string; country: string; posts: number }>(
    userId,
    sql`select users.name, countries.name as country, count(posts.id) as posts
          from users
          join countries on countries.code = users.country
          left join posts on posts.user_id = users.id
         where users.id = ${userId}
         group by users.id, users.name, countries.name`,
  );
}

export async function namesOf(router: ShardRouter, userIds: number[]) {
  // One query per shard instead of one per id.
  const byShard = await router.groupByShard(userIds);
  const answers = await Promise.all(
    [...byShard].map(([shard, ids]) =>
      router.shards
        .get(shard)!
        .query<{ id: number; name: string }>(sql`select id, name from users where id in (${sql.join(ids)})`),
    ),
  );
  return new Map(answers.flatMap((a) => a.rows.map((r) => [r.id, r.name] as const)));
}
