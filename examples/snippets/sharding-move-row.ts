import type { ShardRouter } from 'strata/sharding';

interface Post {
  id: number;
  user_id: number;
  body: string;
  likes: number;
  created_at: string;
}

export async function transferPost(router: ShardRouter, post: Post, newOwner: number) {
  // posts are placed by user_id: a new owner may live on another shard. moveRow inserts the
  // whole new row there and deletes the old one (or updates in place on the same shard).
  await router.moveRow('posts', post.user_id, { ...post, user_id: newOwner });
}

export async function atStartup(router: ShardRouter) {
  // Finishes moves a crashed process left half-done (journaled on the old shard).
  return router.recoverMoves(); // { completed, dropped }
}
