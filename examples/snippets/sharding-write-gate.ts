import { sql } from 'strata';
import type { ShardRouter } from 'strata/sharding';

export function gatedWrites(router: ShardRouter) {
  return {
    // Writes that a pause must hold go through withWrite.
    like: (userId: number, postId: number) =>
      router.withWrite(() =>
        router.query(userId, sql`update posts set likes = likes + 1 where id = ${postId}`),
      ),

    // Waits for writes in flight, holds new ones (each for up to maxWritePause), runs `work`,
    // then lets the held writes go.
    async whilePaused<T>(work: () => Promise<T>): Promise<T> {
      await router.pauseWrites();
      try {
        return await work();
      } finally {
        router.resumeWrites();
      }
    },
  };
}
