import { ConfigError } from 'strata';
import { placeSync, rangeStrategy } from 'strata/sharding';

export function rangePlacement() {
  // Ranges are [from, to): contiguous, in order, open at both ends.
  const byId = rangeStrategy({
    keyType: 'number',
    ranges: [
      { shard: 'old', to: 1_000_000 },
      { shard: 'mid', from: 1_000_000, to: 2_000_000 },
      { shard: 'new', from: 2_000_000 }, // every later id, however large
    ],
  });
  const byTime = rangeStrategy({
    keyType: 'date', // bounds and keys: Date, ISO-8601 text or epoch ms, in UTC unless an offset is named
    ranges: [
      { shard: 'archive', to: '2025-01-01' },
      { shard: 'y2025', from: '2025-01-01', to: '2026-01-01' },
      { shard: 'current', from: '2026-01-01' },
    ],
  });

  let problem: string | undefined;
  try {
    rangeStrategy({
      keyType: 'number',
      ranges: [
        { shard: 'a', to: 100 },
        { shard: 'b', from: 200 }, // 100..199 would belong to no shard
      ],
    });
  } catch (err) {
    if (err instanceof ConfigError) problem = err.option; // 'ranges[1].from': "leaves a hole ..."
  }

  return {
    ids: [placeSync(byId, 999_999), placeSync(byId, 1_000_000), placeSync(byId, 2n ** 62n)],
    times: [placeSync(byTime, new Date('2024-12-31T23:59:59Z')), placeSync(byTime, '2025-06-01')],
    problem,
  };
}
