import type { ActiveShardMap } from 'strata/sharding';
import { describe, expect, it } from 'vitest';
import { reshardProgress } from './shard-status.js';
import { Telemetry } from './telemetry.js';

function map(state: ActiveShardMap['state'], details?: Record<string, unknown>): ActiveShardMap {
  return {
    name: 'social',
    version: 2,
    strategy: { kind: 'hash', version: 2, shards: ['s0', 's1'], seed: 0 },
    createdAt: 0,
    state,
    details,
    revision: 3,
    updatedAt: 0,
  };
}

describe('reshardProgress', () => {
  it('is null while the map is stable, whatever the details say', () => {
    expect(reshardProgress(map('stable', { step: 'copy', percent: 40 }))).toBeNull();
  });

  it('reads the step and the percent the reshard engine records', () => {
    expect(reshardProgress(map('resharding', { step: 'copy', percent: 42.5 }))).toEqual({
      state: 'resharding',
      step: 'copy',
      percent: 42.5,
    });
    expect(reshardProgress(map('resharding', { phase: 'catch-up', progress: 0.25 }))).toEqual({
      state: 'resharding',
      step: 'catch-up',
      percent: 25,
    });
    expect(reshardProgress(map('resharding', { step: 'copy', copied: 30, total: 120 }))?.percent).toBe(25);
  });

  it('falls back to the state without a step, and clamps or drops a percent that is out of range or missing', () => {
    expect(reshardProgress(map('cutover'))).toEqual({ state: 'cutover', step: 'cutover', percent: null });
    expect(reshardProgress(map('resharding', { percent: 180 }))?.percent).toBe(100);
    expect(reshardProgress(map('resharding', { percent: -3 }))?.percent).toBe(0);
    expect(reshardProgress(map('resharding', { percent: 'half', copied: 5, total: 0 }))?.percent).toBeNull();
  });
});

describe('Telemetry.updateNode', () => {
  it('changes a node in place and tells subscribers only when something changed', () => {
    const telemetry = new Telemetry({ processMetrics: false });
    telemetry.setTopology({
      nodes: [
        { id: 'router', kind: 'router', label: 'shard router', engine: 'strata', detail: 'v1' },
        { id: 'shard-s0', kind: 'shard', label: 'shard s0', engine: 'sqlite' },
      ],
      edges: [{ from: 'router', to: 'shard-s0' }],
    });
    const events: string[] = [];
    telemetry.subscribe((event) => events.push(event));
    expect(telemetry.updateNode('router', { detail: 'v1' })).toBe(true);
    expect(events).toEqual([]);
    expect(telemetry.updateNode('router', { detail: 'resharding: copy 40%', status: 'degraded' })).toBe(true);
    expect(events).toEqual(['topology']);
    expect(telemetry.topology().nodes.map((n) => n.id)).toEqual(['router', 'shard-s0']);
    expect(telemetry.topology().nodes[0]).toMatchObject({
      detail: 'resharding: copy 40%',
      status: 'degraded',
    });
    expect(telemetry.topology().edges).toEqual([{ from: 'router', to: 'shard-s0' }]);
    expect(telemetry.updateNode('nope', { detail: 'x' })).toBe(false);
  });
});
