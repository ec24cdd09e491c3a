// The social app's live dashboard: a topology diagram and uPlot charts fed by the server's
// Server-Sent Events stream (/dashboard/events). Plain browser JavaScript, no build step.

const uPlot = globalThis.uPlot;

/** Seconds of history the charts show. */
const WINDOW_SECONDS = 300;
/** Without a message for this long the stream counts as stalled. */
const STALE_MS = 5_000;
const CHART_HEIGHT = 190;
const SVG_NS = 'http://www.w3.org/2000/svg';

/** Series colours; past the end they repeat with a dashed line, so no two series look alike. */
const PALETTE = [
  '#3b6fd4',
  '#e8590c',
  '#2f9e44',
  '#c2255c',
  '#7048e8',
  '#0c8599',
  '#d9a400',
  '#8d5a3b',
  '#e64980',
  '#5f3dc4',
  '#74b816',
  '#495057',
];
const DASHES = [undefined, [6, 3], [2, 3]];
/** The shortest span the time axis shows, so a young app's first points are not stretched. */
const MIN_SPAN_SECONDS = 60;

const KINDS = {
  api: {
    color: '#3b5bdb',
    tint: '#edf2ff',
    column: 0,
    plural: 'API',
    about: 'the HTTP API that clients call',
  },
  router: {
    color: '#5f3dc4',
    tint: '#f3f0ff',
    column: 0,
    plural: 'routers',
    about: 'places each key on its shard by the shard map',
  },
  cache: {
    color: '#d9480f',
    tint: '#fff4e6',
    column: 1,
    plural: 'caches',
    about: 'fast copies of data; may be briefly stale',
  },
  store: {
    color: '#2b8a3e',
    tint: '#ebfbee',
    column: 1,
    plural: 'stores',
    about: 'where the data lives (source of truth)',
  },
  shard: {
    color: '#5c940d',
    tint: '#f4fce3',
    column: 1,
    plural: 'shards',
    about: 'one slice of a partitioned store',
  },
  log: { color: '#862e9c', tint: '#f8f0fc', column: 1, plural: 'logs', about: 'ordered log of every change' },
  replica: {
    color: '#0b7285',
    tint: '#e3fafc',
    column: 2,
    plural: 'replicas',
    about: 'read-only copy of a store',
  },
  consumer: {
    color: '#1864ab',
    tint: '#e7f5ff',
    column: 2,
    plural: 'consumers',
    about: 'follows the change log and updates something',
  },
  view: {
    color: '#a61e4d',
    tint: '#fff0f6',
    column: 3,
    plural: 'views',
    about: 'query result kept up to date',
  },
  archive: {
    color: '#495057',
    tint: '#f1f3f5',
    column: 3,
    plural: 'archives',
    about: 'cold storage for old data',
  },
};
const KIND_ORDER = Object.keys(KINDS);
const COLUMNS = 4;
const STATUS_COLORS = { ok: '#2f9e44', degraded: '#f08c00', down: '#e03131' };

const state = {
  /** Ticks inside the window, oldest first. */
  ticks: [],
  topology: { nodes: [], edges: [] },
  figures: [],
  startedAt: null,
  /** Server clock minus browser clock, ms. */
  skew: 0,
  status: 'connecting',
  lastMessageAt: 0,
};

// ---------------------------------------------------------------------------------------------
// Formatting

function compact(v) {
  const abs = Math.abs(v);
  if (abs >= 1e6) return `${trimNumber(v / 1e6)}M`;
  if (abs >= 1e3) return `${trimNumber(v / 1e3)}k`;
  return trimNumber(v);
}

function trimNumber(v) {
  const abs = Math.abs(v);
  if (abs === 0) return '0';
  if (abs >= 100) return String(Math.round(v));
  if (abs >= 10) return String(Math.round(v * 10) / 10);
  if (abs >= 1) return String(Math.round(v * 100) / 100);
  return String(Number(v.toPrecision(2)));
}

/** Formats a value of a figure unit for a label or an axis. */
function formatValue(unit, v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  switch (unit) {
    case 'ratio':
      return `${trimNumber(v * 100)}%`;
    case 'ms':
      return `${trimNumber(v)} ms`;
    case 's':
      return `${trimNumber(v)} s`;
    case 'factor':
      return `${trimNumber(v)}×`;
    case 'ops/s':
    case 'req/s':
      return `${compact(v)}/s`;
    default:
      return compact(v);
  }
}

const clockFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hour12: false });

/** An axis label for a time in seconds: `14:05` on whole minutes, `:30` in between. */
function formatClock(seconds) {
  const date = new Date(seconds * 1000);
  const s = date.getSeconds();
  return s === 0 ? clockFormat.format(date) : `:${String(s).padStart(2, '0')}`;
}

function formatUptime(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(sec).padStart(2, '0')}s`;
  return `${sec}s`;
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------------------------------------
// Panels: what each chart shows

/** Routes sorted by path then method, so colours stay put across reconnects. */
function routeNames(ticks) {
  const names = new Set();
  for (const tick of ticks) for (const route of Object.keys(tick.rps)) names.add(route);
  const key = (route) => {
    const space = route.indexOf(' ');
    return `${route.slice(space + 1)} ${route.slice(0, space)}`;
  };
  return [...names].sort((a, b) => key(a).localeCompare(key(b)));
}

const FIXED_PANELS = [
  {
    id: 'rps',
    title: 'Requests per second',
    help: 'How many HTTP requests the API answered each second, one line per route.',
    unit: 'req/s',
    wide: true,
    emptyText: 'No requests yet: the chart fills in as soon as the API serves traffic.',
    series: (ticks) => routeNames(ticks).map((name) => ({ name, value: (t) => t.rps[name] ?? 0 })),
    range: (_u, _min, max) => [0, niceMax(max, 1)],
    summary: (tick) => `${formatValue('req/s', sum(Object.values(tick.rps)))} in total`,
  },
  {
    id: 'latency',
    title: 'Latency',
    help: 'How long requests took: half finish faster than p50, 99 in 100 faster than p99.',
    unit: 'ms',
    emptyText: 'No requests yet: latency appears once the API serves traffic.',
    series: () => [
      { name: 'p50', value: (t) => t.p50, color: '#3b6fd4' },
      { name: 'p99', value: (t) => t.p99, color: '#e8590c' },
    ],
    range: (_u, _min, max) => [0, niceMax(max, 1)],
    summary: (tick) =>
      tick.p50 === null
        ? 'no requests in the last second'
        : `p50 ${formatValue('ms', tick.p50)} · p99 ${formatValue('ms', tick.p99)}`,
  },
  {
    id: 'errors',
    title: 'Error rate',
    help: 'Share of responses that failed: 5xx are server faults, 4xx are requests the API rejected.',
    unit: 'ratio',
    emptyText: 'Waiting for the first second of data…',
    series: () => [
      { name: '5xx server errors', value: (t) => t.errorRate, color: '#e03131' },
      { name: '4xx rejected requests', value: (t) => t.clientErrorRate, color: '#f08c00' },
    ],
    range: (_u, _min, max) => [0, Math.max(0.05, (max ?? 0) * 1.2)],
    summary: (tick) =>
      `5xx ${formatValue('ratio', tick.errorRate)} · 4xx ${formatValue('ratio', tick.clientErrorRate)}`,
  },
];

function sum(values) {
  return values.reduce((a, b) => a + b, 0);
}

function niceMax(max, floor) {
  if (max === null || max === undefined || !Number.isFinite(max) || max <= 0) return floor;
  return max * 1.15;
}

/** One panel per distinct `panel` title of the registered figures, in registration order. */
function figurePanels(figures) {
  const groups = new Map();
  for (const figure of figures) {
    if (!groups.has(figure.panel)) groups.set(figure.panel, []);
    groups.get(figure.panel).push(figure);
  }
  return [...groups].map(([title, members]) => {
    const unit = members[0].unit;
    const helps = [...new Set(members.map((f) => f.help))];
    return {
      id: `figure:${title}`,
      title,
      help: helps.join(' '),
      unit,
      emptyText: 'Waiting for the first values…',
      series: (ticks) => {
        const found = [];
        for (const figure of members) {
          const keys = new Set();
          for (const tick of ticks) {
            for (const key of Object.keys(tick.figures?.[figure.id] ?? {})) keys.add(key);
          }
          for (const key of [...keys].sort()) found.push({ figure: figure.id, key });
        }
        // Series are named by their key; only a key that two figures share gets the figure id too.
        const count = new Map();
        for (const { key } of found) count.set(key, (count.get(key) ?? 0) + 1);
        return found.map(({ figure, key }) => ({
          name: count.get(key) > 1 ? `${key} (${figure})` : key,
          value: (t) => t.figures?.[figure]?.[key] ?? null,
        }));
      },
      range: unit === 'ratio' ? () => [0, 1] : (_u, _min, max) => [0, niceMax(max, 1)],
      summary: (tick, series) => {
        const parts = series.slice(0, 3).map((s) => `${s.name} ${formatValue(unit, s.value(tick))}`);
        if (series.length > 3) parts.push(`+${series.length - 3} more`);
        return parts.join(' · ');
      },
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Charts

class Chart {
  constructor(def, container) {
    this.def = def;
    this.points = 0;
    this.plot = null;
    this.names = [];
    this.root = el('section', { class: `card panel${def.wide ? ' wide' : ''}`, 'data-panel': def.id });
    const head = el('div', { class: 'card-head' });
    const titleRow = el('div', { class: 'title-row' });
    this.summaryEl = el('span', { class: 'now' }, '');
    titleRow.append(el('h2', {}, def.title), this.summaryEl);
    head.append(titleRow, el('p', { class: 'help' }, def.help));
    this.body = el('div', { class: 'chart' });
    this.emptyEl = el('div', { class: 'empty-state' }, 'Waiting for the first second of data…');
    this.body.append(this.emptyEl);
    this.root.append(head, this.body);
    container.append(this.root);
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.body);
  }

  width() {
    return Math.max(240, Math.floor(this.body.clientWidth));
  }

  resize() {
    if (this.plot !== null && this.plot.width !== this.width()) {
      this.plot.setSize({ width: this.width(), height: CHART_HEIGHT });
    }
  }

  update(ticks) {
    const series = this.def.series(ticks);
    const names = series.map((s) => s.name);
    const data = [ticks.map((t) => t.t / 1000), ...series.map((s) => ticks.map((t) => s.value(t)))];
    if (this.plot === null || names.join('\n') !== this.names.join('\n')) this.build(series, data);
    else this.plot.setData(data);
    this.names = names;
    this.points = ticks.length;

    const hasValues = data.slice(1).some((column) => column.some((v) => v !== null && v !== undefined));
    this.emptyEl.textContent =
      ticks.length === 0 ? 'Waiting for the first second of data…' : this.def.emptyText;
    this.emptyEl.hidden = hasValues;
    const last = ticks.at(-1);
    this.summaryEl.textContent = last === undefined ? '' : `now: ${this.def.summary(last, series)}`;
  }

  build(series, data) {
    this.plot?.destroy();
    const unit = this.def.unit;
    const opts = {
      width: this.width(),
      height: CHART_HEIGHT,
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: {
          time: true,
          // The window grows from the first point to five minutes, then rolls.
          range: (_u, min, max) => {
            const end = max ?? (Date.now() + state.skew) / 1000;
            const start = Math.min(min ?? end, end - MIN_SPAN_SECONDS);
            return [Math.max(start, end - WINDOW_SECONDS), end];
          },
        },
        y: { range: this.def.range },
      },
      axes: [
        {
          stroke: '#5b6573',
          space: 70,
          incrs: [10, 15, 30, 60, 120, 300],
          grid: { stroke: '#eef0f3' },
          ticks: { stroke: '#e3e6ea' },
          values: (_u, splits) => splits.map(formatClock),
        },
        {
          stroke: '#5b6573',
          size: 64,
          grid: { stroke: '#eef0f3' },
          ticks: { stroke: '#e3e6ea' },
          values: (_u, splits) => splits.map((v) => formatValue(unit, v)),
        },
      ],
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.name,
          stroke: s.color ?? PALETTE[i % PALETTE.length],
          dash: DASHES[Math.floor(i / PALETTE.length) % DASHES.length],
          width: 1.75,
          points: { show: false },
          spanGaps: false,
          value: (_u, v) => formatValue(unit, v),
        })),
      ],
    };
    this.plot = new uPlot(opts, data, this.body);
  }

  destroy() {
    this.resizer.disconnect();
    this.plot?.destroy();
    this.root.remove();
  }
}

const charts = new Map();

/** Creates, keeps or removes chart panels so they match the fixed panels plus the figures. */
function syncPanels() {
  const container = document.getElementById('panels');
  const defs = [...FIXED_PANELS, ...figurePanels(state.figures)];
  const wanted = new Set(defs.map((d) => d.id));
  for (const [id, chart] of charts) {
    if (!wanted.has(id)) {
      chart.destroy();
      charts.delete(id);
    }
  }
  for (const def of defs) {
    const existing = charts.get(def.id);
    if (existing === undefined) charts.set(def.id, new Chart(def, container));
    else {
      existing.def = def;
      existing.plot?.destroy();
      existing.plot = null;
      container.append(existing.root);
    }
  }
  renderCharts();
}

function renderCharts() {
  for (const chart of charts.values()) chart.update(state.ticks);
}

// ---------------------------------------------------------------------------------------------
// Topology

const NODE_W = 220;
const NODE_H = 62;
const ROW_GAP = 18;
const COL_GAP = 150;
const SUB_GAP = 28;
const MAX_ROWS = 8;
const PAD = 16;
const HEADER = 26;
/** Room right of the last column for arrows between boxes stacked in one column. */
const LOOP_ROOM = 64;

function joinWords(words) {
  return words.length < 2 ? words.join('') : `${words.slice(0, -1).join(', ')} and ${words.at(-1)}`;
}

/**
 * Columns by kind, left to right in the direction data flows: the API; caches, stores, shards
 * and logs; replicas and consumers; views and archives. A column taller than MAX_ROWS wraps
 * into several sub-columns.
 */
function layout(nodes) {
  const columns = Array.from({ length: COLUMNS }, () => []);
  const sorted = [...nodes].sort(
    (a, b) => KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind) || nodes.indexOf(a) - nodes.indexOf(b),
  );
  for (const node of sorted) columns[KINDS[node.kind]?.column ?? 1].push(node);
  const rowsOf = (column) => Math.min(MAX_ROWS, column.length);
  const tallest = Math.max(1, ...columns.map(rowsOf));
  const height = HEADER + tallest * NODE_H + (tallest - 1) * ROW_GAP + 2 * PAD;
  const positions = new Map();
  const headers = [];
  let x = PAD;
  for (const column of columns) {
    if (column.length === 0) continue;
    const subColumns = Math.ceil(column.length / MAX_ROWS);
    const rows = rowsOf(column);
    const columnWidth = subColumns * NODE_W + (subColumns - 1) * SUB_GAP;
    const kinds = [...new Set(column.map((n) => n.kind))];
    headers.push({ x: x + columnWidth / 2, text: joinWords(kinds.map((k) => KINDS[k]?.plural ?? k)) });
    column.forEach((node, i) => {
      const sub = Math.floor(i / rows);
      const row = i % rows;
      const inThisSub = Math.min(rows, column.length - sub * rows);
      const top = PAD + HEADER + ((tallest - inThisSub) * (NODE_H + ROW_GAP)) / 2;
      positions.set(node.id, { x: x + sub * (NODE_W + SUB_GAP), y: top + row * (NODE_H + ROW_GAP) });
    });
    x += columnWidth + COL_GAP;
  }
  return { positions, headers, width: x - COL_GAP + PAD, height };
}

function bezierAt(points, t) {
  const [x0, y0, x1, y1, x2, y2, x3, y3] = points;
  const u = 1 - t;
  const a = u * u * u;
  const b = 3 * u * u * t;
  const c = 3 * u * t * t;
  const d = t * t * t;
  return { x: a * x0 + b * x1 + c * x2 + d * x3, y: a * y0 + b * y1 + c * y2 + d * y3 };
}

/** The arrow from box `a` to box `b`, and where its label goes (in the gap just before `b`). */
function edgePath(a, b) {
  const ay = a.y + NODE_H / 2;
  const by = b.y + NODE_H / 2;
  let points;
  let labelX;
  if (b.x > a.x) {
    const d = (b.x - (a.x + NODE_W)) / 2;
    points = [a.x + NODE_W, ay, a.x + NODE_W + d, ay, b.x - d, by, b.x, by];
    labelX = b.x - Math.min(COL_GAP, b.x - a.x - NODE_W) / 2;
  } else if (b.x < a.x) {
    const d = (a.x - (b.x + NODE_W)) / 2;
    points = [a.x, ay, a.x - d, ay, b.x + NODE_W + d, by, b.x + NODE_W, by];
    labelX = b.x + NODE_W + Math.min(COL_GAP, a.x - b.x - NODE_W) / 2;
  } else {
    const bulge = 40 + Math.min(Math.abs(by - ay) / 8, LOOP_ROOM - 40);
    points = [a.x + NODE_W, ay, a.x + NODE_W + bulge, ay, a.x + NODE_W + bulge, by, a.x + NODE_W, by];
    labelX = undefined;
  }
  let label = bezierAt(points, 0.5);
  if (labelX !== undefined) {
    for (let i = 0; i <= 40; i++) {
      const p = bezierAt(points, i / 40);
      if (Math.abs(p.x - labelX) < Math.abs(label.x - labelX)) label = p;
    }
  }
  const [x0, y0, x1, y1, x2, y2, x3, y3] = points;
  return { d: `M${x0},${y0} C${x1},${y1} ${x2},${y2} ${x3},${y3}`, label };
}

function ellipsize(text, maxChars) {
  if (text.length <= maxChars) return text;
  // Paths keep their end (the file name), everything else its start.
  return text.includes('/')
    ? `…${text.slice(text.length - maxChars + 1)}`
    : `${text.slice(0, maxChars - 1)}…`;
}

function renderTopology() {
  const host = document.getElementById('topology');
  const { nodes, edges } = state.topology;
  host.replaceChildren();
  if (nodes.length === 0) {
    host.append(el('p', { class: 'empty' }, 'Waiting for the server to describe its components…'));
    renderLegend([]);
    return;
  }
  const { positions, headers, height, ...box } = layout(nodes);
  const loops = edges.some((e) => e.from !== e.to && positions.get(e.from)?.x === positions.get(e.to)?.x);
  const width = box.width + (loops ? LOOP_ROOM : 0);
  const root = svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: 'img',
    'aria-label': `Topology: ${nodes.map((n) => n.label).join(', ')}`,
  });
  root.style.maxWidth = `${width}px`;
  const defs = svg('defs');
  const marker = svg('marker', {
    id: 'arrow',
    viewBox: '0 0 10 10',
    refX: 9,
    refY: 5,
    markerWidth: 7,
    markerHeight: 7,
    orient: 'auto-start-reverse',
  });
  marker.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#7b8491' }));
  defs.append(marker);
  root.append(defs);

  for (const header of headers) {
    root.append(
      svg('text', { x: header.x, y: PAD + 10, class: 'column-title', 'text-anchor': 'middle' }, header.text),
    );
  }

  const edgeLayer = svg('g', { class: 'edges' });
  const labelLayer = svg('g', { class: 'edge-labels' });
  for (const edge of edges) {
    const a = positions.get(edge.from);
    const b = positions.get(edge.to);
    if (a === undefined || b === undefined) continue;
    const { d, label } = edgePath(a, b);
    const path = svg('path', {
      d,
      class: 'edge',
      'marker-end': 'url(#arrow)',
      'data-from': edge.from,
      'data-to': edge.to,
    });
    edgeLayer.append(path);
    if (edge.label) {
      labelLayer.append(
        svg(
          'text',
          { x: label.x, y: label.y - 5, class: 'edge-label', 'text-anchor': 'middle' },
          ellipsize(edge.label, 24),
        ),
      );
    }
  }
  root.append(edgeLayer);

  for (const node of nodes) {
    const p = positions.get(node.id);
    const kind = KINDS[node.kind] ?? KINDS.archive;
    const g = svg('g', {
      class: 'node',
      transform: `translate(${p.x},${p.y})`,
      'data-id': node.id,
      'data-kind': node.kind,
    });
    const detail = [node.engine, node.detail].filter(Boolean).join(' · ');
    g.append(svg('title', {}, `${node.label} (${node.kind})\n${detail}`));
    g.append(
      svg('rect', {
        width: NODE_W,
        height: NODE_H,
        rx: 8,
        fill: kind.tint,
        stroke: kind.color,
        'stroke-width': 1.5,
      }),
    );
    g.append(svg('text', { x: 12, y: 17, class: 'node-kind', fill: kind.color }, node.kind.toUpperCase()));
    g.append(svg('text', { x: 12, y: 36, class: 'node-label' }, ellipsize(node.label, 26)));
    const shownDetail = node.detail
      ? `${node.engine} · ${ellipsize(node.detail, Math.max(8, 31 - node.engine.length))}`
      : ellipsize(node.engine, 34);
    g.append(svg('text', { x: 12, y: 53, class: 'node-detail' }, shownDetail));
    if (node.status) {
      g.append(
        svg('circle', {
          cx: NODE_W - 14,
          cy: 14,
          r: 5,
          fill: STATUS_COLORS[node.status] ?? '#868e96',
          class: `node-status status-${node.status}`,
        }),
      );
    }
    root.append(g);
  }
  root.append(labelLayer);
  host.append(root);
  renderLegend(nodes);
}

function renderLegend(nodes) {
  const legend = document.getElementById('legend');
  const present = new Set(nodes.map((n) => n.kind));
  legend.replaceChildren(
    ...KIND_ORDER.filter((k) => present.has(k)).map((k) => {
      const item = el('li');
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = KINDS[k].tint;
      swatch.style.borderColor = KINDS[k].color;
      item.append(swatch, el('strong', {}, k), document.createTextNode(` ${KINDS[k].about}`));
      return item;
    }),
  );
  const engines = [...new Set(nodes.map((n) => n.engine).filter(Boolean))];
  document.getElementById('engines').textContent = engines.length === 0 ? '–' : engines.join(' · ');
}

// ---------------------------------------------------------------------------------------------
// Read replicas: a table of each replica from the newest tick's replica figures

const STATE_TEXT = { ok: 'in rotation', degraded: 'lagging', down: 'down' };

/** The rows of the replicas table, from a tick's figures and the topology's replica boxes. */
function replicaRows(tick) {
  const figures = tick?.figures ?? {};
  const share = figures.replica_read_share ?? {};
  const lagChanges = figures.replica_lag_changes;
  const lag = lagChanges ?? figures.replica_lag_bytes ?? {};
  const lagUnit = lagChanges !== undefined ? 'changes' : 'bytes';
  const seconds = figures.replica_lag_seconds ?? {};
  const fallbacks = figures.replica_session_fallbacks ?? {};
  return Object.keys(share)
    .sort()
    .map((id) => {
      const [shard, name] = id.split('/');
      const node = state.topology.nodes.find((n) => n.id === `replica-${shard}-${name}`);
      const status = node?.status ?? 'ok';
      return {
        id,
        status,
        lag: lag[id] === undefined ? '–' : lagUnit === 'changes' ? compact(lag[id]) : `${compact(lag[id])} B`,
        seconds: formatValue('s', seconds[id]),
        share: formatValue('ratio', share[id]),
        fallbacks: fallbacks[shard] === undefined ? '–' : compact(fallbacks[shard]),
        badTokens: fallbacks['bad tokens'],
      };
    });
}

function renderReplicas() {
  const card = document.getElementById('replicas');
  const rows = replicaRows(state.ticks.at(-1));
  card.hidden = rows.length === 0;
  if (rows.length === 0) return;
  const body = document.getElementById('replicas-rows');
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = el('tr', { 'data-replica': r.id });
      const stateCell = el(
        'td',
        { class: 'state', 'data-state': r.status },
        STATE_TEXT[r.status] ?? r.status,
      );
      tr.append(
        el('th', { scope: 'row' }, r.id),
        stateCell,
        el('td', { class: 'num' }, r.lag),
        el('td', { class: 'num' }, r.seconds),
        el('td', { class: 'num' }, r.share),
        el('td', { class: 'num' }, r.fallbacks),
      );
      return tr;
    }),
  );
  const bad = rows[0].badTokens;
  document.getElementById('replicas-now').textContent =
    `${rows.length} replica${rows.length === 1 ? '' : 's'}${bad === undefined ? '' : ` · ${compact(bad)} refused token cookies`}`;
}

// ---------------------------------------------------------------------------------------------
// Event store: its head and a table of the projections from the newest tick's figures

const PROJECTION_STATE_TEXT = { ok: 'running', degraded: 'behind or failing', down: 'stopped' };

/** The event store's head and the projections table rows, from a tick's figures and the topology. */
function eventStoreView(tick) {
  const figures = tick?.figures ?? {};
  const head = figures.event_store_head?.head;
  const positions = figures.projection_position ?? {};
  const lag = figures.projection_lag_events ?? {};
  const seconds = figures.projection_lag_seconds ?? {};
  const rows = Object.keys(positions)
    .sort()
    .map((name) => {
      const node = state.topology.nodes.find((n) => n.id === `projection-${name}`);
      const inline = (node?.detail ?? '').startsWith('inline');
      const status = inline ? 'ok' : (node?.status ?? 'ok');
      return {
        name,
        mode: inline ? 'inline' : 'async',
        status,
        state: inline ? 'in the append' : (PROJECTION_STATE_TEXT[status] ?? status),
        position: positions[name] === undefined ? '–' : compact(positions[name]),
        lag: lag[name] === undefined ? '–' : compact(lag[name]),
        seconds: formatValue('s', seconds[name]),
      };
    });
  return { head, rows };
}

function renderEventStore() {
  const card = document.getElementById('events');
  const view = eventStoreView(state.ticks.at(-1));
  card.hidden = view.head === undefined && view.rows.length === 0;
  if (card.hidden) return;
  document.getElementById('events-rows').replaceChildren(
    ...view.rows.map((r) => {
      const tr = el('tr', { 'data-projection': r.name });
      tr.append(
        el('th', { scope: 'row' }, r.name),
        el('td', {}, r.mode),
        el('td', { class: 'state', 'data-state': r.status }, r.state),
        el('td', { class: 'num' }, r.position),
        el('td', { class: 'num' }, r.lag),
        el('td', { class: 'num' }, r.seconds),
      );
      return tr;
    }),
  );
  document.getElementById('events-now').textContent =
    `head ${view.head === undefined ? '–' : compact(view.head)} · ${view.rows.length} projection${view.rows.length === 1 ? '' : 's'}`;
}

// ---------------------------------------------------------------------------------------------
// Header: connection status and uptime

const STATUS_TEXT = {
  connecting: 'connecting…',
  live: 'live',
  stalled: 'no updates',
  reconnecting: 'reconnecting…',
  disconnected: 'disconnected',
};

function setStatus(status) {
  state.status = status;
  const box = document.getElementById('status');
  box.dataset.state = status;
  let text = STATUS_TEXT[status];
  if (status === 'stalled') text = `no updates for ${Math.round((Date.now() - state.lastMessageAt) / 1000)}s`;
  document.getElementById('status-text').textContent = text;
}

function everySecond() {
  if (state.startedAt !== null) {
    document.getElementById('uptime').textContent = formatUptime(Date.now() + state.skew - state.startedAt);
  }
  if (
    (state.status === 'live' || state.status === 'stalled') &&
    Date.now() - state.lastMessageAt > STALE_MS
  ) {
    setStatus('stalled');
  }
}

// ---------------------------------------------------------------------------------------------
// The event stream

function trimWindow() {
  const last = state.ticks.at(-1);
  if (last === undefined) return;
  const from = last.t - WINDOW_SECONDS * 1000;
  let drop = 0;
  while (drop < state.ticks.length && state.ticks[drop].t < from) drop++;
  if (drop > 0) state.ticks.splice(0, drop);
}

function received() {
  state.lastMessageAt = Date.now();
  if (state.status !== 'live') setStatus('live');
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return undefined;
  }
}

let source = null;

function connect() {
  source = new EventSource('/dashboard/events');
  source.addEventListener('open', () => received());
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (for example after an HTTP error); try again ourselves.
      setStatus('disconnected');
      setTimeout(connect, 5_000);
    } else {
      setStatus('reconnecting');
    }
  });
  source.addEventListener('hello', (event) => {
    const hello = parse(event);
    if (hello === undefined) return;
    received();
    state.skew = hello.now - Date.now();
    state.startedAt = hello.startedAt;
    state.topology = hello.topology;
    state.figures = hello.figures;
    state.ticks = [...hello.history];
    trimWindow();
    renderTopology();
    syncPanels();
    renderReplicas();
    renderEventStore();
    everySecond();
  });
  source.addEventListener('tick', (event) => {
    const tick = parse(event);
    if (tick === undefined) return;
    received();
    state.ticks.push(tick);
    trimWindow();
    renderCharts();
    renderReplicas();
    renderEventStore();
  });
  source.addEventListener('topology', (event) => {
    const topology = parse(event);
    if (topology === undefined) return;
    received();
    state.topology = topology;
    renderTopology();
    renderReplicas();
    renderEventStore();
  });
  source.addEventListener('figures', (event) => {
    const figures = parse(event);
    if (figures === undefined) return;
    received();
    state.figures = figures;
    syncPanels();
  });
}

/** A read-only window into the page for end-to-end tests and curious users in the console. */
window.__strataDashboard = {
  points: () => Object.fromEntries([...charts].map(([id, chart]) => [id, chart.points])),
  series: () => Object.fromEntries([...charts].map(([id, chart]) => [id, [...chart.names]])),
  status: () => state.status,
  nodes: () => state.topology.nodes.map((n) => n.id),
  replicas: () => replicaRows(state.ticks.at(-1)),
  eventStore: () => eventStoreView(state.ticks.at(-1)),
};

syncPanels();
renderTopology();
setInterval(everySecond, 1000);
connect();
