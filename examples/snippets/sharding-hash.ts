import { hashStrategy, placeSync } from 'strata/sharding';

export function hashPlacement() {
  const four = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
  // Growing: append the new shard, never insert or reorder.
  const five = hashStrategy({ shards: ['s0', 's1', 's2', 's3', 's4'], version: 2 });

  // 42, '42' and 42n are one key: they always land on the same shard.
  const oneKey = new Set([placeSync(four, 42), placeSync(four, '42'), placeSync(four, 42n)]);

  let moved = 0;
  let movedBetweenOldShards = 0;
  for (let id = 1; id <= 100_000; id++) {
    const before = placeSync(four, id);
    const after = placeSync(five, id);
    if (before === after) continue;
    moved++; // about 1/5 of the keys
    if (after !== 's4') movedBetweenOldShards++; // never: every moved key goes to the new shard
  }
  return { oneKey: oneKey.size, moved, movedBetweenOldShards };
}
