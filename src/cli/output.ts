/**
 * What the `strata` commands print: the one-line error form, numbers, tables, and the live
 * progress of long-running work (a progress bar on a terminal, periodic plain lines otherwise).
 */
import { SingleBar } from 'cli-progress';
import { isStrataError } from '../core/errors.js';

/** The streams and environment a command writes to and reads from. */
export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

/** The process's own streams and environment. */
export function processIo(): CliIo {
  return { stdout: process.stdout, stderr: process.stderr, env: process.env };
}

/** Exit code for invalid usage or options. */
export const EXIT_USAGE = 2;
/** Exit code for any other failure. */
export const EXIT_FAILURE = 1;

/**
 * The one line (`strata: <message>`) and exit code for a failure: 2 for `E_CONFIG`, 1 otherwise.
 * Under `STRATA_DEBUG=1` the stack and causes follow the line.
 */
export function describeFailure(
  err: unknown,
  env: NodeJS.ProcessEnv = {},
): { text: string; exitCode: number } {
  const message = err instanceof Error ? err.message : String(err);
  const line = `strata: ${message.replace(/\s*\n\s*/g, ' ').trim()}`;
  const exitCode = isStrataError(err, 'E_CONFIG') ? EXIT_USAGE : EXIT_FAILURE;
  if (env.STRATA_DEBUG !== '1') return { text: `${line}\n`, exitCode };
  const chain: string[] = [];
  for (let e: unknown = err; e instanceof Error; e = e.cause) chain.push(e.stack ?? String(e));
  return { text: `${line}\n${chain.join('\ncaused by: ')}\n`, exitCode };
}

/** A latency for people: `0.42ms`, `4.2ms`, `42ms`, `1.5s`; `-` for none. */
export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '-';
  if (ms < 1) return `${ms.toFixed(2)}ms`;
  if (ms < 10) return `${ms.toFixed(1)}ms`;
  if (ms < 1_000) return `${Math.round(ms)}ms`;
  return `${(ms / 1_000).toFixed(ms < 10_000 ? 2 : 1)}s`;
}

/** A rate with one decimal: `50.1`. */
export function formatRate(perSecond: number): string {
  return (Math.round(perSecond * 10) / 10).toFixed(1);
}

/** A share as a percentage with one decimal: `12.5%`. */
export function formatPercent(ratio: number): string {
  return `${(Math.round(ratio * 1_000) / 10).toFixed(1)}%`;
}

/** An elapsed time in seconds as `3d 4h`, `1h 2m`, `5m 3s` or `42s`. */
export function formatUptime(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3_600);
  const m = Math.floor((s % 3_600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

/**
 * A plain-text table: a header row, then one row per entry, columns padded to their widest cell;
 * columns listed in `right` are right-aligned (numbers). Each line ends with a newline.
 */
export function renderTable(
  headers: readonly string[],
  rows: ReadonlyArray<readonly string[]>,
  options: { right?: readonly number[]; indent?: string } = {},
): string {
  const right = new Set(options.right ?? []);
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    (options.indent ?? '') +
    widths
      .map((w, i) => {
        const cell = cells[i] ?? '';
        return right.has(i) ? cell.padStart(w) : cell.padEnd(w);
      })
      .join('  ')
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join('\n')}\n`;
}

/** Aligned `label  value` lines, each indented by two spaces. */
export function renderFields(fields: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...fields.map(([label]) => label.length));
  return fields.map(([label, value]) => `  ${label.padEnd(width)}  ${value}\n`).join('');
}

/** The figures a progress view shows; the simulator's progress has this shape. */
export interface ProgressFigures {
  sent: number;
  ok: number;
  failed: number;
  elapsedMs: number;
  totalMs: number;
  rps: number;
  p99Ms: number | null;
}

/** Live progress of a long-running command. */
export interface ProgressView {
  /** Shows seeding progress (`done` of `total` setup requests). */
  seeding(done: number, total: number): void;
  /** Shows traffic progress. */
  update(figures: ProgressFigures): void;
  /** Removes nothing, ends the live line so that later output starts on a fresh line. */
  stop(): void;
}

function trafficLine(f: ProgressFigures): string {
  return (
    `${formatClock(f.elapsedMs)}/${formatClock(f.totalMs)}  sent ${f.sent}  ${formatRate(f.rps)} req/s` +
    `  p99 ${formatMs(f.p99Ms)}  errors ${f.failed}`
  );
}

/** `m:ss` for progress lines. */
function formatClock(ms: number): string {
  const s = Math.floor(ms / 1_000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/**
 * A progress view on `stream`: a progress bar rewritten in place when `stream` is a terminal,
 * otherwise a line when each phase starts and then at most one plain line every `plainEveryMs`
 * (default 5 s); the caller prints the final figures.
 */
export function createProgressView(
  stream: CliIo['stdout'],
  options: { label?: string; plainEveryMs?: number; now?: () => number } = {},
): ProgressView {
  const label = options.label ?? 'simulate';
  const now = options.now ?? Date.now;
  if (stream.isTTY === true) return ttyProgress(stream, label);
  const plainEveryMs = options.plainEveryMs ?? 5_000;
  let phase: 'idle' | 'seeding' | 'traffic' = 'idle';
  let lastLine = 0;
  return {
    seeding(done, total) {
      if (phase === 'idle') {
        phase = 'seeding';
        stream.write(`${label}: seeding the population (${total} requests)\n`);
      }
      if (done === total) stream.write(`${label}: seeding done\n`);
    },
    update(figures) {
      const t = now();
      if (phase !== 'traffic' || t - lastLine >= plainEveryMs) {
        phase = 'traffic';
        lastLine = t;
        stream.write(`${label}: ${trafficLine(figures)}\n`);
      }
    },
    stop() {},
  };
}

function ttyProgress(stream: CliIo['stdout'], label: string): ProgressView {
  let bar: SingleBar | undefined;
  let phase: 'seeding' | 'traffic' | undefined;
  const begin = (next: 'seeding' | 'traffic', format: string, total: number, payload: object) => {
    bar?.stop();
    phase = next;
    bar = new SingleBar({
      format,
      stream,
      barsize: 24,
      hideCursor: true,
      clearOnComplete: false,
      fps: 5,
      barCompleteChar: '\u2588',
      barIncompleteChar: '\u2591',
    });
    bar.start(total, 0, payload);
  };
  return {
    seeding(done, total) {
      if (phase !== 'seeding') begin('seeding', `${label} seeding {bar} {value}/{total} requests`, total, {});
      bar?.update(done);
    },
    update(figures) {
      const payload = { line: trafficLine(figures) };
      if (phase !== 'traffic') begin('traffic', `${label} {bar} {line}`, figures.totalMs, payload);
      bar?.update(Math.min(figures.elapsedMs, figures.totalMs), payload);
    },
    stop() {
      bar?.stop();
      bar = undefined;
      phase = undefined;
    },
  };
}
