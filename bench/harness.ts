/**
 * The benchmark harness: every benchmark runs strata beside the peer a user would pick instead,
 * in the same process and run, and reports medians and ratios, never a lone absolute figure.
 */
import { performance } from 'node:perf_hooks';

/** One measured case: a name, the library it exercises, and the operation. */
export interface BenchCase {
  /** Row label, e.g. `strata memory getOrSet hit`. */
  name: string;
  /** Which group the case belongs to; ratios are computed against the group's baseline. */
  group: string;
  /** True for the row other rows in the group are compared against (the peer or the floor). */
  baseline?: boolean;
  /** One operation. Async operations are awaited. */
  run: () => unknown | Promise<unknown>;
  /** Operations run concurrently per batch (default 1: sequential, latency-style). */
  concurrency?: number;
}

/** Options for `measureCases`. */
export interface MeasureOptions {
  /** Samples per case; the median is reported (default 5). */
  samples?: number;
  /** Minimum time per sample in ms (default 300). */
  sampleMs?: number;
  /** Warm-up time per case in ms (default 200). */
  warmupMs?: number;
}

/** The measured figures of one case. */
export interface BenchRow {
  group: string;
  name: string;
  baseline: boolean;
  /** Median operations per second over the samples. */
  opsPerSec: number;
  /** Latency percentiles of single operations, in microseconds. */
  p50Us: number;
  p99Us: number;
  /** opsPerSec / the group baseline's opsPerSec (1 for the baseline itself). */
  ratio: number;
  /** Free-form extra figures a benchmark wants in the table (e.g. `{ found: '100/100' }`). */
  extra?: Record<string, string | number>;
}

/** The result of one benchmark: its rows and any notes (targets met, environment). */
export interface BenchResult {
  name: string;
  title: string;
  rows: BenchRow[];
  notes: string[];
}

/** A benchmark module's default export. */
export interface Benchmark {
  name: string;
  title: string;
  /** Runs the benchmark; return rows (use `measureCases`) and notes. Throw to report failure. */
  run(options: MeasureOptions): Promise<BenchResult>;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 0 ? (sorted[mid - 1]! + sorted[mid]!) / 2 : sorted[mid]!;
}

/** The `p`-th percentile (0..100) of `values`, nearest-rank. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = Float64Array.from(values).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

async function runFor(
  c: BenchCase,
  ms: number,
  latencies: number[] | undefined,
): Promise<{ ops: number; elapsed: number }> {
  const concurrency = c.concurrency ?? 1;
  const start = performance.now();
  let ops = 0;
  let now = start;
  while (now - start < ms) {
    if (concurrency === 1) {
      const t0 = performance.now();
      const r = c.run();
      if (r instanceof Promise) await r;
      now = performance.now();
      latencies?.push((now - t0) * 1000);
      ops++;
    } else {
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          const s = performance.now();
          await c.run();
          latencies?.push((performance.now() - s) * 1000);
        }),
      );
      now = performance.now();
      void t0;
      ops += concurrency;
    }
  }
  return { ops, elapsed: now - start };
}

/**
 * Measures every case with interleaved samples (case A sample 1, case B sample 1, ..., so that
 * machine noise hits all cases alike) and returns rows with medians and ratios per group.
 */
export async function measureCases(cases: BenchCase[], options: MeasureOptions = {}): Promise<BenchRow[]> {
  const samples = options.samples ?? 5;
  const sampleMs = options.sampleMs ?? 300;
  const warmupMs = options.warmupMs ?? 200;
  const throughput = new Map<BenchCase, number[]>();
  const latencies = new Map<BenchCase, number[]>();
  for (const c of cases) {
    await runFor(c, warmupMs, undefined);
    throughput.set(c, []);
    latencies.set(c, []);
  }
  for (let s = 0; s < samples; s++) {
    for (const c of cases) {
      const { ops, elapsed } = await runFor(c, sampleMs, latencies.get(c));
      throughput.get(c)!.push((ops / elapsed) * 1000);
    }
  }
  const rows: BenchRow[] = cases.map((c) => {
    const lat = latencies.get(c)!;
    return {
      group: c.group,
      name: c.name,
      baseline: c.baseline === true,
      opsPerSec: median(throughput.get(c)!),
      p50Us: percentile(lat, 50),
      p99Us: percentile(lat, 99),
      ratio: 1,
    };
  });
  return withRatios(rows);
}

/** Fills `ratio` of each row against its group's baseline row. */
export function withRatios(rows: BenchRow[]): BenchRow[] {
  for (const row of rows) {
    const base = rows.find((r) => r.group === row.group && r.baseline);
    row.ratio = base === undefined || base.opsPerSec === 0 ? Number.NaN : row.opsPerSec / base.opsPerSec;
  }
  return rows;
}

function fmtNum(n: number): string {
  if (!Number.isFinite(n)) return '-';
  if (n >= 100) return Math.round(n).toLocaleString('en-US');
  return n.toFixed(n >= 10 ? 1 : 2);
}

function fmtUs(us: number): string {
  if (!Number.isFinite(us)) return '-';
  if (us >= 1000) return `${(us / 1000).toFixed(us >= 10_000 ? 0 : 2)}ms`;
  return `${us.toFixed(us >= 100 ? 0 : 1)}µs`;
}

/** Renders a result as a Markdown table (pasteable into notes and docs). */
export function formatResult(result: BenchResult): string {
  const extraKeys = [...new Set(result.rows.flatMap((r) => Object.keys(r.extra ?? {})))];
  const header = ['group', 'case', 'ops/s (median)', 'p50', 'p99', 'ratio', ...extraKeys];
  const lines = result.rows.map((r) => [
    r.group,
    r.baseline ? `${r.name} (baseline)` : r.name,
    fmtNum(r.opsPerSec),
    fmtUs(r.p50Us),
    fmtUs(r.p99Us),
    Number.isFinite(r.ratio) ? `${r.ratio.toFixed(2)}x` : '-',
    ...extraKeys.map((k) => String(r.extra?.[k] ?? '')),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const row = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [
    `### ${result.title}`,
    '',
    row(header),
    `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`,
    ...lines.map(row),
    ...(result.notes.length > 0 ? ['', ...result.notes.map((n) => `- ${n}`)] : []),
  ].join('\n');
}
