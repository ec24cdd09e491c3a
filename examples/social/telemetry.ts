/**
 * What the dashboard and `/metrics` show: request figures per route, latency percentiles, error
 * rate, the topology of the running system, and per-pattern figures that each pattern registers
 * (cache hit ratio, consumer lag, replica lag, shard balance ...).
 *
 * One tick per second turns the raw request records of the last second into a `Tick`, kept in
 * a bounded history and pushed to subscribers (the dashboard's Server-Sent Events stream).
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** A box in the topology diagram. */
export interface TopologyNode {
  id: string;
  kind: 'api' | 'router' | 'store' | 'shard' | 'cache' | 'log' | 'consumer' | 'replica' | 'archive' | 'view';
  label: string;
  /** The engine behind it: `sqlite`, `postgres`, `memory`, `redis`, `nats` ... */
  engine: string;
  /** One line shown under the label (a file, a host:port, a size). */
  detail?: string;
  status?: 'ok' | 'degraded' | 'down';
}

/** An arrow in the topology diagram. */
export interface TopologyEdge {
  from: string;
  to: string;
  label?: string;
}

/** The topology of the running system. */
export interface Topology {
  nodes: TopologyNode[];
  edges: TopologyEdge[];
}

/**
 * A figure a pattern contributes: one chart panel on the dashboard (`panel`), one or more series
 * (the keys `read` returns), and a Prometheus gauge per series.
 */
export interface Figure {
  /** Stable id, also the Prometheus metric name suffix (`cache_hit_ratio`). */
  id: string;
  /** Panel title on the dashboard. */
  panel: string;
  /** Unit for axis labels: `ratio` (0..1), `ms`, `s`, `count`, `ops/s`, `rows`, `factor` (1.2×). */
  unit: 'ratio' | 'ms' | 's' | 'count' | 'ops/s' | 'rows' | 'factor';
  help: string;
  /** Current values by series name; called once per tick. */
  read: () => Record<string, number>;
}

/** The description of a figure sent to the dashboard (without its reader). */
export type FigureInfo = Omit<Figure, 'read'>;

/** One second of figures. */
export interface Tick {
  /** End of the second, epoch ms. */
  t: number;
  /** Requests per second by route pattern (`GET /users/:id`). */
  rps: Record<string, number>;
  /** Latency over all routes in this second, ms (null when there were no requests). */
  p50: number | null;
  p99: number | null;
  /** Share of responses in this second with status >= 500, and with 400..499. */
  errorRate: number;
  clientErrorRate: number;
  /** Figure values by figure id, then series. */
  figures: Record<string, Record<string, number>>;
}

/** Options for `createTelemetry`. */
export interface TelemetryOptions {
  /** Ticks kept for a dashboard that connects late (default 300: five minutes). */
  historySize?: number;
  /** Latency samples kept per second for percentiles (default 5000). */
  maxSamplesPerTick?: number;
  /** Collect Node.js process metrics into /metrics (default true). */
  processMetrics?: boolean;
}

type Listener = (event: 'tick' | 'topology' | 'figures', data: unknown) => void;

/** Collects request figures, topology and pattern figures for the dashboard and Prometheus. */
export class Telemetry {
  /** The Prometheus registry behind `/metrics`. */
  readonly registry = new Registry();
  readonly #requests: Counter<'route' | 'method' | 'status'>;
  readonly #duration: Histogram<'route' | 'method'>;
  readonly #figureGauge: Gauge<'figure' | 'series'>;
  readonly #historySize: number;
  readonly #maxSamples: number;
  readonly #history: Tick[] = [];
  readonly #figures = new Map<string, Figure>();
  readonly #listeners = new Set<Listener>();
  #topology: Topology = { nodes: [], edges: [] };
  #counts = new Map<string, number>();
  #samples: number[] = [];
  #total = 0;
  #serverErrors = 0;
  #clientErrors = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: TelemetryOptions = {}) {
    this.#historySize = options.historySize ?? 300;
    this.#maxSamples = options.maxSamplesPerTick ?? 5_000;
    if (options.processMetrics !== false)
      collectDefaultMetrics({ register: this.registry, prefix: 'strata_' });
    this.#requests = new Counter({
      name: 'strata_http_requests_total',
      help: 'HTTP requests by route pattern, method and status code.',
      labelNames: ['route', 'method', 'status'],
      registers: [this.registry],
    });
    this.#duration = new Histogram({
      name: 'strata_http_request_duration_seconds',
      help: 'HTTP request duration by route pattern and method.',
      labelNames: ['route', 'method'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.registry],
    });
    this.#figureGauge = new Gauge({
      name: 'strata_figure',
      help: 'Per-pattern figures shown on the dashboard (cache hit ratio, consumer lag, ...), by figure and series.',
      labelNames: ['figure', 'series'],
      registers: [this.registry],
      collect: () => {
        for (const [id, figure] of this.#figures) {
          for (const [series, value] of Object.entries(safeRead(figure))) {
            this.#figureGauge.set({ figure: id, series }, value);
          }
        }
      },
    });
  }

  /** Records one finished request. `route` is the pattern (`/users/:id`), not the raw URL. */
  recordRequest(method: string, route: string, status: number, durationMs: number): void {
    const key = `${method} ${route}`;
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
    this.#total++;
    if (status >= 500) this.#serverErrors++;
    else if (status >= 400) this.#clientErrors++;
    if (this.#samples.length < this.#maxSamples) this.#samples.push(durationMs);
    else {
      // Reservoir sampling keeps percentiles unbiased under heavy load.
      const j = Math.floor(Math.random() * this.#total);
      if (j < this.#maxSamples) this.#samples[j] = durationMs;
    }
    this.#requests.inc({ route, method, status: String(status) });
    this.#duration.observe({ route, method }, durationMs / 1000);
  }

  /** Adds or replaces a pattern figure; the dashboard gets a panel for it. */
  addFigure(figure: Figure): void {
    this.#figures.set(figure.id, figure);
    this.#emit('figures', this.figures());
  }

  /** Removes a figure (when its pattern is closed). */
  removeFigure(id: string): void {
    if (this.#figures.delete(id)) this.#emit('figures', this.figures());
  }

  /** The registered figures' descriptions. */
  figures(): FigureInfo[] {
    return [...this.#figures.values()].map(({ read: _read, ...info }) => info);
  }

  /** Replaces the topology and tells subscribers. */
  setTopology(topology: Topology): void {
    this.#topology = { nodes: [...topology.nodes], edges: [...topology.edges] };
    this.#emit('topology', this.#topology);
  }

  /** Adds a node (and edges) to the topology, replacing a node with the same id. */
  addToTopology(node: TopologyNode, edges: TopologyEdge[] = []): void {
    const nodes = this.#topology.nodes.filter((n) => n.id !== node.id);
    this.setTopology({ nodes: [...nodes, node], edges: [...this.#topology.edges, ...edges] });
  }

  /**
   * Changes fields of the node `id` in place (its position and edges stay); tells subscribers
   * only when something changed. Returns false when there is no such node.
   */
  updateNode(id: string, fields: Partial<Omit<TopologyNode, 'id'>>): boolean {
    const index = this.#topology.nodes.findIndex((n) => n.id === id);
    if (index < 0) return false;
    const node = this.#topology.nodes[index]!;
    const next = { ...node, ...fields, id };
    const changed = (Object.keys(next) as Array<keyof TopologyNode>).some((k) => next[k] !== node[k]);
    if (!changed) return true;
    const nodes = [...this.#topology.nodes];
    nodes[index] = next;
    this.setTopology({ nodes, edges: this.#topology.edges });
    return true;
  }

  /** The current topology. */
  topology(): Topology {
    return this.#topology;
  }

  /** The kept ticks, oldest first. */
  history(): Tick[] {
    return [...this.#history];
  }

  /** The newest tick, if any. */
  latest(): Tick | undefined {
    return this.#history.at(-1);
  }

  /** Calls `listener` on every tick, topology change and figure change; returns an unsubscribe. */
  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Starts the one-second tick (idempotent). */
  start(intervalMs = 1_000): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.tick(), intervalMs);
    this.#timer.unref();
  }

  /** Stops ticking and drops subscribers. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#listeners.clear();
  }

  /** Closes the current second: computes its tick, stores it and pushes it (also used by tests). */
  tick(now = Date.now()): Tick {
    const sorted = Float64Array.from(this.#samples).sort();
    const pct = (p: number) =>
      sorted.length === 0
        ? null
        : round(sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!);
    const figures: Record<string, Record<string, number>> = {};
    for (const [id, figure] of this.#figures) figures[id] = safeRead(figure);
    const tick: Tick = {
      t: now,
      rps: Object.fromEntries(this.#counts),
      p50: pct(0.5),
      p99: pct(0.99),
      errorRate: this.#total === 0 ? 0 : this.#serverErrors / this.#total,
      clientErrorRate: this.#total === 0 ? 0 : this.#clientErrors / this.#total,
      figures,
    };
    this.#counts = new Map();
    this.#samples = [];
    this.#total = 0;
    this.#serverErrors = 0;
    this.#clientErrors = 0;
    this.#history.push(tick);
    if (this.#history.length > this.#historySize) this.#history.shift();
    this.#emit('tick', tick);
    return tick;
  }

  #emit(event: 'tick' | 'topology' | 'figures', data: unknown): void {
    for (const listener of this.#listeners) {
      try {
        listener(event, data);
      } catch {
        // A broken subscriber (a closed SSE socket) must not stop the others.
      }
    }
  }
}

function safeRead(figure: Figure): Record<string, number> {
  try {
    const values = figure.read();
    return Object.fromEntries(Object.entries(values).filter(([, v]) => Number.isFinite(v)));
  } catch {
    return {};
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
