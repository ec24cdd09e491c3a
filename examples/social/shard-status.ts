/**
 * What the dashboard and `/api/status` show about sharding: the shard map (strategy, version,
 * shards), rows per shard and their balance, and the progress of a reshard, read from the state
 * the reshard engine records in the shard-map store (`details.step`, `details.percent`).
 *
 * Figures are read synchronously once per tick, so a background refresh (every 2s, unref'd)
 * counts the rows of each shard and the figures read its last snapshot.
 */
import { isStrataError } from 'strata';
import type { ActiveShardMap, ShardId } from 'strata/sharding';
import type { SocialRepository, TableCounts } from './repository.js';
import type { SocialStores } from './stores.js';
import type { Telemetry, TopologyEdge, TopologyNode } from './telemetry.js';

const REFRESH_MS = 2_000;

/** Where a reshard is, as the dashboard shows it. */
export interface ReshardProgress {
  /** The shard map's state: `stable`, `resharding` or `cutover`. */
  state: ActiveShardMap['state'];
  /** The reshard's current step (`copy`, `catch-up`, `verify`, ...), or the state when none is recorded. */
  step: string | null;
  /** Progress of the step, 0..100, when recorded. */
  percent: number | null;
}

/** The shard map as `/api/status` reports it. */
export interface ShardMapSummary {
  name: string;
  version: number;
  strategy: ActiveShardMap['strategy'];
  shards: readonly ShardId[];
}

/** The `shards` part of `/api/status`. */
export interface ShardStatus {
  map: ShardMapSummary;
  rows: Record<ShardId, TableCounts>;
  state: ActiveShardMap['state'];
  reshard: ReshardProgress | null;
  /** True when the active map names shards this process has not opened: restart to route by it. */
  restartRequired: boolean;
}

const finite = (v: unknown): number | undefined =>
  typeof v === 'number' && Number.isFinite(v) ? v : undefined;

/**
 * The progress of a reshard from the active map's state and details: `step` (or `phase`) names
 * the step; `percent` (0..100), `progress` (0..1) or `copied` / `total` give how far it is.
 * Returns null while the map is stable.
 */
export function reshardProgress(map: ActiveShardMap): ReshardProgress | null {
  if (map.state === 'stable') return null;
  const d = (map.details ?? {}) as Record<string, unknown>;
  const named = typeof d.step === 'string' ? d.step : typeof d.phase === 'string' ? d.phase : null;
  let percent = finite(d.percent);
  if (percent === undefined && finite(d.progress) !== undefined) percent = finite(d.progress)! * 100;
  const copied = finite(d.copied);
  const total = finite(d.total);
  if (percent === undefined && copied !== undefined && total !== undefined && total > 0) {
    percent = (copied / total) * 100;
  }
  return {
    state: map.state,
    step: named ?? map.state,
    percent: percent === undefined ? null : Math.min(100, Math.max(0, percent)),
  };
}

function describeMap(map: ActiveShardMap): string {
  const kind = map.strategy.kind;
  const shards = 'shards' in map.strategy ? map.strategy.shards.length : 0;
  return `${kind} by user id · map v${map.version} · ${shards} shards`;
}

function describeRows(counts: TableCounts | undefined): string {
  if (counts === undefined) return 'rows: counting…';
  return `${counts.users} users · ${counts.posts} posts`;
}

function routerDetail(stores: SocialStores): string {
  const map = stores.map();
  const progress = reshardProgress(map);
  if (progress === null) return describeMap(map);
  const pct = progress.percent === null ? '' : ` ${Math.round(progress.percent)}%`;
  return `${progress.state}: ${progress.step}${pct} · v${map.version}`;
}

/** The topology of the router and the shards: nodes and the edges from the API. */
export function shardTopology(stores: SocialStores): { nodes: TopologyNode[]; edges: TopologyEdge[] } {
  const nodes: TopologyNode[] = [
    {
      id: 'router',
      kind: 'router',
      label: 'shard router',
      engine: 'strata',
      detail: routerDetail(stores),
      status: 'ok',
    },
  ];
  const edges: TopologyEdge[] = [];
  for (const shard of stores.shardList) {
    nodes.push({
      id: `shard-${shard.id}`,
      kind: 'shard',
      label: `shard ${shard.id}`,
      engine: stores.engine,
      detail: describeRows(undefined),
    });
    edges.push({ from: 'router', to: `shard-${shard.id}`, label: 'by user id' });
  }
  return { nodes, edges };
}

/** The figures and live topology details of the shards; `stop()` ends the background refresh. */
export interface ShardTelemetry {
  /** The last row counts per shard (empty until the first refresh). */
  rows(): Record<ShardId, TableCounts>;
  /** The `shards` part of `/api/status`, with fresh row counts. */
  status(): Promise<ShardStatus>;
  stop(): Promise<void>;
}

/** Registers the shard figures on `telemetry` and starts refreshing rows and the map's state. */
export function startShardTelemetry(
  stores: SocialStores,
  repo: SocialRepository,
  telemetry: Telemetry,
): ShardTelemetry {
  let rows: Record<ShardId, TableCounts> = {};
  const refresh = async () => {
    try {
      rows = await repo.countsByShard();
    } catch (err) {
      // A closed or unreachable shard: keep the last counts; the router node says so.
      telemetry.updateNode('router', { status: isStrataError(err, 'E_CLOSED') ? 'down' : 'degraded' });
      return;
    }
    const progress = reshardProgress(stores.map());
    telemetry.updateNode('router', {
      detail: routerDetail(stores),
      status: stores.restartRequired() || progress !== null ? 'degraded' : 'ok',
    });
    for (const shard of stores.shardList) {
      telemetry.updateNode(`shard-${shard.id}`, { detail: describeRows(rows[shard.id]) });
    }
  };
  let running: Promise<void> | undefined = refresh();
  const timer = setInterval(() => {
    running ??= refresh().finally(() => {
      running = undefined;
    });
  }, REFRESH_MS);
  timer.unref();
  void running.finally(() => {
    running = undefined;
  });

  const placed = (c: TableCounts) => c.users + c.posts;
  telemetry.addFigure({
    id: 'shard_rows',
    panel: 'Rows per shard',
    unit: 'rows',
    help: 'Users and posts on each shard: the rows the shard key (the user id) places.',
    read: () => Object.fromEntries(Object.entries(rows).map(([id, c]) => [id, placed(c)])),
  });
  telemetry.addFigure({
    id: 'shard_balance',
    panel: 'Shard balance',
    unit: 'factor',
    help: 'Rows on the fullest shard over the mean rows per shard (1× is perfectly even).',
    read: (): Record<string, number> => {
      const counts = Object.values(rows).map(placed);
      const total = counts.reduce((a, b) => a + b, 0);
      if (counts.length === 0 || total === 0) return {};
      return { skew: Math.max(...counts) / (total / counts.length) };
    },
  });
  telemetry.addFigure({
    id: 'reshard_progress',
    panel: 'Reshard progress',
    unit: 'ratio',
    help: 'How far the running reshard step is, as the reshard engine records it; the shard router box names the step (empty while the map is stable).',
    read: (): Record<string, number> => {
      const progress = reshardProgress(stores.map());
      if (progress === null || progress.percent === null) return {};
      return { progress: progress.percent / 100 };
    },
  });

  return {
    rows: () => rows,
    async status() {
      const map = stores.map();
      const fresh = await repo.countsByShard();
      rows = fresh;
      return {
        map: {
          name: map.name,
          version: map.version,
          strategy: map.strategy,
          shards: 'shards' in map.strategy ? map.strategy.shards : [],
        },
        rows: fresh,
        state: map.state,
        reshard: reshardProgress(map),
        restartRequired: stores.restartRequired(),
      };
    },
    async stop() {
      clearInterval(timer);
      await running;
      for (const id of ['shard_rows', 'shard_balance', 'reshard_progress']) telemetry.removeFigure(id);
    },
  };
}
