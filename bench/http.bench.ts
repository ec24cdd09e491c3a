/**
 * HTTP: autocannon against the reference app on the embedded default (SQLite + memory tier)
 * beside a bare Fastify route returning a constant, each server in its own process, measured
 * in interleaved rounds in one run.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { cpus } from 'node:os';
import { createInterface } from 'node:readline';
import autocannon from 'autocannon';
import { type Benchmark, type BenchRow, withRatios } from './harness.js';

interface Target {
  url: string;
  users: number;
  /** The seeded user ids (snowflake ids: not consecutive). */
  ids?: number[];
}

async function startTarget(kind: 'social' | 'bare'): Promise<{ target: Target; child: ChildProcess }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', new URL('./servers/http-target.ts', import.meta.url).pathname, kind],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const lines = createInterface({ input: child.stdout! });
  const target = await new Promise<Target>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${kind} server exited with ${code}`)));
    lines.once('line', (line) => resolve(JSON.parse(line) as Target));
  });
  return { target, child };
}

interface Case {
  name: string;
  baseline?: boolean;
  target: Target;
  path: (userId: number) => string;
}

async function load(
  c: Case,
  seconds: number,
): Promise<{ rps: number; p50: number; p99: number; errors: number }> {
  let n = 0;
  const ids = c.target.ids ?? [1];
  const result = await autocannon({
    url: c.target.url,
    connections: 32,
    pipelining: 1,
    duration: seconds,
    requests: [
      {
        method: 'GET',
        setupRequest: (req) => {
          // Spread reads over all seeded users, the same sequence for every case.
          n = (n + 7919) % ids.length;
          return { ...req, path: c.path(ids[n]!) };
        },
      },
    ],
  });
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.non2xx,
  };
}

const bench: Benchmark = {
  name: 'http',
  title:
    'http: the reference app (SQLite + memory tier) beside a bare Fastify route, autocannon, 32 connections',
  async run(options) {
    const rounds = options.samples ?? 3;
    const seconds = options.sampleMs !== undefined && options.sampleMs < 300 ? 2 : 5;
    const social = await startTarget('social');
    const bare = await startTarget('bare');
    try {
      const cases: Case[] = [
        { name: 'bare fastify constant', baseline: true, target: bare.target, path: () => '/bare' },
        { name: 'GET /users/:id', target: social.target, path: (id) => `/users/${id}` },
        {
          name: 'GET /users/:id/feed (first page, TTL cached)',
          target: social.target,
          path: (id) => `/users/${id}/feed`,
        },
        {
          name: 'GET /users/:id/feed?cursor (live query)',
          target: social.target,
          path: (id) => `/users/${id}/feed?cursor=${Number.MAX_SAFE_INTEGER}`,
        },
      ];
      const samples = new Map<Case, Awaited<ReturnType<typeof load>>[]>(cases.map((c) => [c, []]));
      for (const c of cases) await load(c, 1); // warm-up
      for (let r = 0; r < rounds; r++) for (const c of cases) samples.get(c)!.push(await load(c, seconds));
      const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
      const rows: BenchRow[] = cases.map((c) => {
        const s = samples.get(c)!;
        return {
          group: 'http GET',
          name: c.name,
          baseline: c.baseline === true,
          opsPerSec: med(s.map((x) => x.rps)),
          p50Us: med(s.map((x) => x.p50)) * 1000,
          p99Us: med(s.map((x) => x.p99)) * 1000,
          ratio: 1,
          extra: { errors: s.reduce((a, x) => a + x.errors, 0) },
        };
      });
      return {
        name: 'http',
        title: bench.title,
        rows: withRatios(rows),
        notes: [
          `${rounds} interleaved rounds of ${seconds}s per case; medians. Servers run in their own processes; autocannon in the bench process; ${cpus().length} cores shared by load generator and server.`,
          `${social.target.users} seeded users, 20 follows and 5 posts each.`,
          ...rows
            .filter((r) => Number(r.extra?.errors) > 0)
            .map(
              (r) =>
                `WARNING: ${r.name} answered ${r.extra?.errors} requests with an error or a non-2xx status`,
            ),
        ],
      };
    } finally {
      social.child.kill();
      bare.child.kill();
    }
  },
};

export default bench;
