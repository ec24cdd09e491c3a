/**
 * The reshard part of the sharding benchmark: rows resharded from 2 to 4 shards while a writer
 * keeps inserting and updating; reports the duration, the longest write pause and what the
 * reconcile found.
 */
import type { BenchRow } from './harness.js';

export interface ReshardBenchResult {
  rows: BenchRow[];
  notes: string[];
}

export async function reshardUnderLoad(_options: { quick: boolean }): Promise<ReshardBenchResult> {
  return {
    rows: [],
    notes: ['Reshard under load: not measured yet (the resharding engine is not in this build).'],
  };
}
