/**
 * A traffic simulator for the social API: it seeds a population through the API itself, then
 * drives the API with an open-loop arrival process for a fixed time and reports what happened.
 *
 * - Arrivals are Poisson at `rate` requests per second; during a burst window the rate is
 *   multiplied by `burst.factor` (by default 4x for 2 s every 10 s).
 * - Users and posts are chosen by Zipf's law (s = 1.1): a few celebrities and hot posts get most
 *   of the traffic. User rank 1 is the first seeded user; post rank 1 is the newest post, so new
 *   posts are hot and old ones cool down.
 * - The operation mix is mostly reads (`DEFAULT_MIX`: 90% reads, 10% writes).
 * - In-flight requests are bounded by `concurrency`; an arrival that finds the bound reached is
 *   skipped and counted, never queued, so a slow server cannot make the simulator grow without
 *   bound (and the arrival process stays open-loop).
 * - Only loopback URLs are accepted: the simulator is a load generator and must never be
 *   pointed at someone else's server.
 */
import { randomBytes } from 'node:crypto';
import { isIPv4 } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as delay } from 'node:timers/promises';
import { ConfigError, ConnectionError, type Duration, parseDuration, StrataError } from 'strata';

/** The operations the simulator performs, each on one API route. */
export type OperationName =
  | 'feed'
  | 'getUser'
  | 'userPosts'
  | 'getPost'
  | 'comments'
  | 'like'
  | 'follow'
  | 'newPost'
  | 'comment';

/** Relative weights of the operations; they need not sum to 100. */
export type OperationMix = Readonly<Record<OperationName, number>>;

/**
 * The default mix, in percent: 40 feed, 20 get user, 15 a user's posts, 10 get post,
 * 5 list comments (90% reads); 5 like or unlike (70/30), 2 follow or unfollow (70/30),
 * 2 new post, 1 comment (10% writes).
 */
export const DEFAULT_MIX: OperationMix = Object.freeze({
  feed: 40,
  getUser: 20,
  userPosts: 15,
  getPost: 10,
  comments: 5,
  like: 5,
  follow: 2,
  newPost: 2,
  comment: 1,
});

/** The operations that only read. */
export const READ_OPERATIONS: ReadonlySet<OperationName> = new Set<OperationName>([
  'feed',
  'getUser',
  'userPosts',
  'getPost',
  'comments',
]);

/** The route pattern (as the app's telemetry names it) each operation hits. */
export const OPERATION_ROUTES: Readonly<Record<OperationName, readonly string[]>> = Object.freeze({
  feed: ['GET /users/:id/feed'],
  getUser: ['GET /users/:id'],
  userPosts: ['GET /users/:id/posts'],
  getPost: ['GET /posts/:id'],
  comments: ['GET /posts/:id/comments'],
  like: ['PUT /posts/:id/likes/:userId', 'DELETE /posts/:id/likes/:userId'],
  follow: ['PUT /users/:id/following/:targetId', 'DELETE /users/:id/following/:targetId'],
  newPost: ['POST /users/:id/posts'],
  comment: ['POST /posts/:id/comments'],
});

/** Periodic bursts: every `every`, the rate is multiplied by `factor` for `length`. */
export interface BurstOptions {
  /** Time between the starts of two bursts (default `10s`); the first starts after one period. */
  every?: Duration;
  /** Rate multiplier during a burst (default 4, at least 1). */
  factor?: number;
  /** How long a burst lasts (default `2s`, shorter than `every`). */
  length?: Duration;
}

/** A snapshot of a running simulation, passed to `onProgress` about once a second. */
export interface SimulationProgress {
  /** Requests sent so far. */
  sent: number;
  /** Responses with a 2xx status so far. */
  ok: number;
  /** Requests that got a non-2xx status, timed out or failed to connect so far. */
  failed: number;
  /** Arrivals dropped because `concurrency` requests were already in flight. */
  skipped: number;
  /** Time since the traffic started. */
  elapsedMs: number;
  /** The configured run time. */
  totalMs: number;
  /** Requests sent per second since the previous snapshot (over the whole run in the final one). */
  rps: number;
  /** 99th percentile latency of the responses since the previous snapshot (whole run in the final one; null when none). */
  p99Ms: number | null;
}

/** Seeding progress, passed to `onSeeding`. */
export interface SeedingProgress {
  done: number;
  total: number;
}

/** Options of `simulate`. */
export interface SimulationOptions {
  /** Base URL of the social API; must be loopback (127.0.0.0/8, ::1 or localhost), else `E_CONFIG` (`url`). */
  baseUrl: string;
  /** Mean arrival rate in requests per second outside bursts (default 50). */
  rate?: number;
  /** How long the traffic runs (default `30s`). */
  duration?: Duration;
  /** Size of the simulated population (default 200, 2..100000). */
  users?: number;
  /**
   * Seed of the pseudo-random generator (default 1): the same seed gives the same social graph,
   * operations, users and arrival times; which post ids are picked also depends on which new
   * posts the server had created by then.
   */
  seed?: number;
  /** Periodic bursts (default `{ every: '10s', factor: 4, length: '2s' }`); `false` turns them off. */
  burst?: BurstOptions | false;
  /** Most requests in flight at once (default 64); arrivals beyond it are skipped. */
  concurrency?: number;
  /** Per-request time limit (default `5s`); a request over it counts as a timeout failure. */
  timeout?: Duration;
  /** Zipf exponent for users and posts (default 1.1). */
  zipfExponent?: number;
  /** Operation weights (default `DEFAULT_MIX`). */
  mix?: Partial<Record<OperationName, number>>;
  /** Stops the run early; `simulate` then resolves with `aborted: true`. */
  signal?: AbortSignal;
  /** Called about once a second during the traffic phase, and once at the end with the run's totals. */
  onProgress?: (progress: SimulationProgress) => void;
  /** Called while the population is being created. */
  onSeeding?: (progress: SeedingProgress) => void;
}

/** Figures of one route. */
export interface RouteReport {
  sent: number;
  ok: number;
  failed: number;
  p50Ms: number | null;
  p99Ms: number | null;
}

/** What a simulation did. */
export interface SimulationReport {
  url: string;
  seed: number;
  /** Configured mean rate (requests per second, outside bursts). */
  rate: number;
  /** Configured run time. */
  durationMs: number;
  /** Time the traffic actually ran, until the last response. */
  elapsedMs: number;
  /** True when `signal` stopped the run before `duration`. */
  aborted: boolean;
  /** The simulated population; `reused` when an earlier run's population in this process was still there. */
  population: { users: number; posts: number; follows: number; reused: boolean };
  sent: number;
  ok: number;
  failed: number;
  /** Arrivals dropped because `concurrency` requests were in flight. */
  skipped: number;
  /** Requests cut short by `signal`; neither ok nor failed. */
  cancelled: number;
  reads: number;
  writes: number;
  /** Responses by HTTP status code. */
  byStatus: Record<string, number>;
  /** Failures without a status. */
  errors: { timeout: number; network: number };
  /** Figures by route pattern (`GET /users/:id/feed`). */
  byRoute: Record<string, RouteReport>;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  /** Requests sent per second over the run. */
  achievedRps: number;
}

interface Config {
  url: URL;
  rate: number;
  durationMs: number;
  users: number;
  seed: number;
  burst: { everyMs: number; factor: number; lengthMs: number } | undefined;
  concurrency: number;
  timeoutMs: number;
  zipfExponent: number;
  mix: OperationMix;
}

const MAX_USERS = 100_000;
const FOLLOWS_PER_USER = 8;
const SEED_CONCURRENCY = 16;
const PROGRESS_EVERY_MS = 1_000;

/**
 * True when `url` names a loopback host: 127.0.0.0/8, ::1 or localhost. Throws `E_CONFIG`
 * naming `option` when `url` is not an http(s) URL.
 */
export function isLoopbackUrl(url: string, option = 'url'): boolean {
  const parsed = parseHttpUrl(url, option);
  const host = parsed.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  if (host === '::1' || host === '0:0:0:0:0:0:0:1') return true;
  if (isIPv4(host)) return host.startsWith('127.');
  // IPv4-mapped IPv6 (`::ffff:127.0.0.1`), which URL normalises to hex groups.
  const mapped = /^::ffff:([0-9a-f]{1,4}):[0-9a-f]{1,4}$/.exec(host);
  return mapped !== null && Number.parseInt(mapped[1]!, 16) >> 8 === 127;
}

/** Parses `url` and checks it is loopback; returns the URL, or throws `E_CONFIG` naming `option`. */
export function loopbackUrl(url: string, option = 'url'): URL {
  if (!isLoopbackUrl(url, option)) {
    throw new ConfigError(
      option,
      'must be a loopback address (127.0.0.0/8, ::1 or localhost); traffic is never sent to another host',
    );
  }
  return parseHttpUrl(url, option);
}

function parseHttpUrl(url: string, option: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (err) {
    throw new ConfigError(option, 'is not a valid URL', { cause: err });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ConfigError(option, 'must be an http or https URL');
  }
  return parsed;
}

/**
 * A seeded pseudo-random generator (sfc32, seeded through splitmix32) returning numbers in
 * [0, 1); `seed` must be a 32-bit unsigned integer.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  const splitmix = () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = splitmix();
  let b = splitmix();
  let c = splitmix();
  let d = splitmix();
  return () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) >>> 0;
    return t / 4_294_967_296;
  };
}

/** Draws ranks 1..n with probability proportional to 1 / rank^s. */
export interface ZipfSampler {
  readonly n: number;
  readonly s: number;
  /** A rank in 1..n; rank 1 is the most likely. */
  sample(): number;
  /** The probability of `rank` (0 outside 1..n). */
  probability(rank: number): number;
}

/**
 * A Zipf sampler over ranks 1..n with exponent `s`, drawing from `random`: the CDF is computed
 * once and each draw is a binary search. `E_CONFIG` for n < 1 or a negative or non-finite s.
 */
export function createZipfSampler(n: number, s: number, random: () => number): ZipfSampler {
  if (!Number.isInteger(n) || n < 1) throw new ConfigError('zipf.n', 'must be a positive integer');
  if (!Number.isFinite(s) || s < 0)
    throw new ConfigError('zipfExponent', 'must be a finite number of at least 0');
  const cdf = new Float64Array(n);
  let total = 0;
  for (let rank = 1; rank <= n; rank++) {
    total += rank ** -s;
    cdf[rank - 1] = total;
  }
  for (let i = 0; i < n; i++) cdf[i] = cdf[i]! / total;
  cdf[n - 1] = 1;
  return {
    n,
    s,
    sample() {
      const u = random();
      let lo = 0;
      let hi = n - 1;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (cdf[mid]! < u) lo = mid + 1;
        else hi = mid;
      }
      return lo + 1;
    },
    probability(rank: number) {
      if (!Number.isInteger(rank) || rank < 1 || rank > n) return 0;
      return rank ** -s / total;
    },
  };
}

/**
 * Returns a function that picks an operation with probability proportional to its weight in
 * `mix` (missing operations weigh 0); `E_CONFIG` (`mix`) for a negative weight or a zero total.
 */
export function createMixPicker(
  mix: Partial<Record<OperationName, number>>,
  random: () => number,
): () => OperationName {
  const entries = Object.entries(mix).filter(([, weight]) => weight !== 0) as Array<[OperationName, number]>;
  for (const [name, weight] of entries) {
    if (!(name in DEFAULT_MIX)) throw new ConfigError('mix', 'names an unknown operation');
    if (!Number.isFinite(weight) || weight < 0)
      throw new ConfigError('mix', 'weights must be finite and not negative');
  }
  const total = entries.reduce((sum, [, weight]) => sum + weight, 0);
  if (total <= 0) throw new ConfigError('mix', 'at least one operation needs a positive weight');
  const cumulative: number[] = [];
  let running = 0;
  for (const [, weight] of entries) {
    running += weight / total;
    cumulative.push(running);
  }
  return () => {
    const u = random();
    const i = cumulative.findIndex((c) => u < c);
    return entries[i === -1 ? entries.length - 1 : i]![0];
  };
}

function positiveInteger(value: number, option: string, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(option, `must be an integer from ${min} to ${max}`);
  }
  return value;
}

function resolveConfig(options: SimulationOptions): Config {
  if (typeof options?.baseUrl !== 'string') throw new ConfigError('url', 'is required');
  const url = loopbackUrl(options.baseUrl, 'url');
  const rate = options.rate ?? 50;
  if (typeof rate !== 'number' || !Number.isFinite(rate) || rate <= 0 || rate > 100_000) {
    throw new ConfigError('rate', 'must be a number of requests per second above 0 and at most 100000');
  }
  const durationMs = parseDuration(options.duration ?? '30s', 'duration', { allowZero: false });
  const users = positiveInteger(options.users ?? 200, 'users', 2, MAX_USERS);
  const seed = positiveInteger(options.seed ?? 1, 'seed', 0, 0xffff_ffff);
  const concurrency = positiveInteger(options.concurrency ?? 64, 'concurrency', 1, 10_000);
  const timeoutMs = parseDuration(options.timeout ?? '5s', 'timeout', { allowZero: false });
  const zipfExponent = options.zipfExponent ?? 1.1;
  if (!Number.isFinite(zipfExponent) || zipfExponent < 0 || zipfExponent > 10) {
    throw new ConfigError('zipfExponent', 'must be a number from 0 to 10');
  }
  let burst: Config['burst'];
  if (options.burst !== false) {
    const b = options.burst ?? {};
    const everyMs = parseDuration(b.every ?? '10s', 'burst.every', { allowZero: false });
    const lengthMs = parseDuration(b.length ?? '2s', 'burst.length', { allowZero: false });
    const factor = b.factor ?? 4;
    if (!Number.isFinite(factor) || factor < 1 || factor > 100) {
      throw new ConfigError('burst.factor', 'must be a number from 1 to 100');
    }
    if (lengthMs >= everyMs) throw new ConfigError('burst.length', 'must be shorter than burst.every');
    burst = { everyMs, lengthMs, factor };
  }
  const mix = { ...(options.mix ?? DEFAULT_MIX) } as OperationMix;
  createMixPicker(mix, Math.random);
  return { url, rate, durationMs, users, seed, burst, concurrency, timeoutMs, zipfExponent, mix };
}

/** The rate multiplier at `elapsedMs` into the run: bursts start at every multiple of `every`. */
function burstFactor(burst: Config['burst'], elapsedMs: number): number {
  if (burst === undefined || elapsedMs < burst.everyMs) return 1;
  return elapsedMs % burst.everyMs < burst.lengthMs ? burst.factor : 1;
}

/**
 * Latency histogram with logarithmic buckets (2% wide, 10 µs to about 100 s): constant memory
 * at any rate, percentiles within 2%.
 */
class LatencyHistogram {
  static readonly #base = 0.01;
  static readonly #ratio = Math.log(1.02);
  readonly #buckets = new Uint32Array(820);
  count = 0;
  max = 0;

  record(ms: number): void {
    const index =
      ms <= LatencyHistogram.#base
        ? 0
        : Math.ceil(Math.log(ms / LatencyHistogram.#base) / LatencyHistogram.#ratio);
    this.#buckets[Math.min(index, this.#buckets.length - 1)]!++;
    this.count++;
    if (ms > this.max) this.max = ms;
  }

  percentile(p: number): number | null {
    if (this.count === 0) return null;
    const target = Math.max(1, Math.ceil(p * this.count));
    let seen = 0;
    for (let i = 0; i < this.#buckets.length; i++) {
      seen += this.#buckets[i]!;
      if (seen >= target) {
        const upper = LatencyHistogram.#base * Math.exp(i * LatencyHistogram.#ratio);
        return Math.round(Math.min(upper, this.max) * 1000) / 1000;
      }
    }
    return this.max;
  }
}

interface Outcome {
  status?: number;
  error?: 'timeout' | 'network' | 'cancelled';
  body?: unknown;
  ms: number;
}

/** Sends one request with a time limit; never throws. */
async function send(
  base: URL,
  method: string,
  path: string,
  payload: unknown,
  timeoutMs: number,
  stop: AbortSignal,
): Promise<Outcome> {
  const timeout = AbortSignal.timeout(timeoutMs);
  const started = performance.now();
  try {
    const res = await fetch(new URL(path, base), {
      method,
      headers: payload === undefined ? {} : { 'content-type': 'application/json' },
      body: payload === undefined ? null : JSON.stringify(payload),
      signal: AbortSignal.any([stop, timeout]),
    });
    const text = await res.text();
    const ms = performance.now() - started;
    let body: unknown;
    if (res.ok && text.length > 0) {
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
    }
    return { status: res.status, body, ms };
  } catch {
    const ms = performance.now() - started;
    if (stop.aborted) return { error: 'cancelled', ms };
    return { error: timeout.aborted ? 'timeout' : 'network', ms };
  }
}

const WORDS = [
  'data',
  'shard',
  'replica',
  'cache',
  'stream',
  'index',
  'view',
  'event',
  'log',
  'query',
  'latency',
  'coffee',
  'weekend',
  'deploy',
  'graph',
  'queue',
];

function text(random: () => number, words: number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[Math.floor(random() * WORDS.length)]!);
  return out.join(' ');
}

interface Population {
  users: number[];
  posts: number[];
  follows: number;
  /** Handle of `users[0]`, to recognise the population in the API. */
  firstHandle?: string;
}

// Populations created by earlier runs in this process, by API origin, seed and size; reused
// after checking that the first user still exists (the app may have been restarted on a fresh
// database). Handles carry a per-run random tag, so two runs never collide on a handle.
const populations = new Map<string, Population>();

async function expectOk(outcome: Outcome, what: string, host: string, port: number): Promise<unknown> {
  if (outcome.error === 'network' || outcome.error === 'timeout') {
    throw new ConnectionError({ backend: 'social API', host, port }, `the API did not answer while ${what}`);
  }
  if (outcome.error === 'cancelled') throw new StrataError('E_ABORTED', 'the simulation was stopped');
  if (outcome.status === undefined || outcome.status < 200 || outcome.status >= 300) {
    throw new StrataError(
      'E_SEED',
      `seeding the simulated population failed while ${what} (HTTP ${outcome.status})`,
      {
        details: { status: outcome.status },
      },
    );
  }
  return outcome.body;
}

/** Runs `task(i)` for i in 0..count-1 with at most `limit` at once; stops at the first failure. */
async function pool(count: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      await task(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
}

async function ensurePopulation(
  config: Config,
  random: () => number,
  stop: AbortSignal,
  onSeeding: SimulationOptions['onSeeding'],
): Promise<Population & { reused: boolean }> {
  const host = config.url.hostname;
  const port = Number(config.url.port || (config.url.protocol === 'https:' ? 443 : 80));
  const call = (method: string, path: string, payload?: unknown) =>
    send(config.url, method, path, payload, config.timeoutMs, stop);

  await expectOk(await call('GET', '/health'), 'checking /health', host, port);

  const key = `${config.url.origin}|${config.seed}|${config.users}`;
  const known = populations.get(key);
  if (known !== undefined) {
    const check = await call('GET', `/users/${known.users[0]}`);
    const handle = (check.body as { handle?: unknown } | undefined)?.handle;
    if (check.status === 200 && handle === known.firstHandle)
      return { ...known, users: [...known.users], posts: [...known.posts], reused: true };
    populations.delete(key);
  }

  const tag = randomBytes(3).toString('hex');
  const userIds = new Array<number>(config.users);
  const followPlan: Array<[number, number]> = [];
  const zipf = createZipfSampler(config.users, config.zipfExponent, random);
  for (let i = 0; i < config.users; i++) {
    const followees = new Set<number>();
    const want = Math.min(FOLLOWS_PER_USER, config.users - 1);
    for (let tries = 0; followees.size < want && tries < want * 20; tries++) {
      const target = zipf.sample() - 1;
      if (target !== i) followees.add(target);
    }
    for (const target of followees) followPlan.push([i, target]);
  }
  const postAuthors = Array.from({ length: config.users }, () => zipf.sample() - 1);
  const postBodies = postAuthors.map(() => text(random, 4 + Math.floor(random() * 12)));

  const total = config.users + followPlan.length + postAuthors.length;
  let done = 0;
  const tickSeeding = () => {
    done++;
    if (done % 50 === 0 || done === total) onSeeding?.({ done, total });
  };
  onSeeding?.({ done: 0, total });

  await pool(config.users, SEED_CONCURRENCY, async (i) => {
    const handle = `sim_${config.seed}_${tag}_${i}`;
    const created = (await expectOk(
      await call('POST', '/users', { handle, email: `${handle}@sim.strata.test`, name: `Sim user ${i}` }),
      'creating users',
      host,
      port,
    )) as { id: number };
    userIds[i] = created.id;
    tickSeeding();
  });
  await pool(followPlan.length, SEED_CONCURRENCY, async (i) => {
    const [from, to] = followPlan[i]!;
    await expectOk(
      await call('PUT', `/users/${userIds[from]}/following/${userIds[to]}`),
      'creating follows',
      host,
      port,
    );
    tickSeeding();
  });
  const postIds = new Array<number>(postAuthors.length);
  // Posts are created one by one so that their ids follow the order of the plan.
  for (let i = 0; i < postAuthors.length; i++) {
    const created = (await expectOk(
      await call('POST', `/users/${userIds[postAuthors[i]!]}/posts`, { body: postBodies[i] }),
      'creating posts',
      host,
      port,
    )) as { id: number };
    postIds[i] = created.id;
    tickSeeding();
  }
  const firstHandle = `sim_${config.seed}_${tag}_0`;
  const population = { users: userIds, posts: postIds, follows: followPlan.length, firstHandle };
  populations.set(key, population);
  return { users: [...userIds], posts: [...postIds], follows: followPlan.length, reused: false };
}

interface Request {
  operation: OperationName;
  route: string;
  method: string;
  path: string;
  payload?: unknown;
  /** For a new post: where to record its id. */
  addsPost?: boolean;
}

function planRequest(
  operation: OperationName,
  random: () => number,
  population: Population,
  userZipf: ZipfSampler,
  postZipf: ZipfSampler,
): Request {
  const user = () => population.users[userZipf.sample() - 1]!;
  // Post rank 1 is the newest post: recency is what makes a post hot.
  const post = () => {
    const rank = Math.min(postZipf.sample(), population.posts.length);
    return population.posts[population.posts.length - rank]!;
  };
  const r = (route: string, path: string, payload?: unknown): Request => {
    const [method] = route.split(' ');
    return { operation, route, method: method!, path, ...(payload === undefined ? {} : { payload }) };
  };
  switch (operation) {
    case 'feed':
      return r('GET /users/:id/feed', `/users/${user()}/feed`);
    case 'getUser':
      return r('GET /users/:id', `/users/${user()}`);
    case 'userPosts':
      return r('GET /users/:id/posts', `/users/${user()}/posts?limit=10`);
    case 'getPost':
      return r('GET /posts/:id', `/posts/${post()}`);
    case 'comments':
      return r('GET /posts/:id/comments', `/posts/${post()}/comments?limit=10`);
    case 'like': {
      const like = random() < 0.7;
      const route = like ? 'PUT /posts/:id/likes/:userId' : 'DELETE /posts/:id/likes/:userId';
      return r(route, `/posts/${post()}/likes/${user()}`);
    }
    case 'follow': {
      const from = user();
      let to = user();
      if (to === from) to = population.users[(population.users.indexOf(from) + 1) % population.users.length]!;
      const follow = random() < 0.7;
      const route = follow ? 'PUT /users/:id/following/:targetId' : 'DELETE /users/:id/following/:targetId';
      return r(route, `/users/${from}/following/${to}`);
    }
    case 'newPost':
      return {
        ...r('POST /users/:id/posts', `/users/${user()}/posts`, {
          body: text(random, 4 + Math.floor(random() * 20)),
        }),
        addsPost: true,
      };
    case 'comment':
      return r('POST /posts/:id/comments', `/posts/${post()}/comments`, {
        userId: user(),
        body: text(random, 2 + Math.floor(random() * 10)),
      });
  }
}

/**
 * Seeds a population through the API (or reuses this process's earlier one), then drives the
 * API at `baseUrl` for `duration` and resolves with a report; it stops by itself at `duration`
 * or when `signal` aborts. Rejects with `E_CONFIG` for invalid options (before any request),
 * `E_CONNECTION` when the API does not answer during seeding, and `E_SEED` when the API
 * refuses to seed. Failed requests during the traffic phase are counted, never thrown.
 */
export async function simulate(options: SimulationOptions): Promise<SimulationReport> {
  const config = resolveConfig(options);
  // Two streams, so that reusing a population does not shift the traffic's sequence.
  const seedingRandom = seededRandom(config.seed);
  const trafficRandom = seededRandom((config.seed ^ 0x5bd1e995) >>> 0);
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  if (options.signal?.aborted) stop.abort();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let population: Population & { reused: boolean };
    try {
      population = await ensurePopulation(config, seedingRandom, stop.signal, options.onSeeding);
    } catch (err) {
      if (stop.signal.aborted) return emptyReport(config, true);
      throw err;
    }
    return await drive(config, trafficRandom, population, stop.signal, options.onProgress);
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}

function emptyReport(config: Config, aborted: boolean): SimulationReport {
  return {
    url: config.url.origin,
    seed: config.seed,
    rate: config.rate,
    durationMs: config.durationMs,
    elapsedMs: 0,
    aborted,
    population: { users: 0, posts: 0, follows: 0, reused: false },
    sent: 0,
    ok: 0,
    failed: 0,
    skipped: 0,
    cancelled: 0,
    reads: 0,
    writes: 0,
    byStatus: {},
    errors: { timeout: 0, network: 0 },
    byRoute: {},
    p50Ms: null,
    p99Ms: null,
    maxMs: null,
    achievedRps: 0,
  };
}

async function drive(
  config: Config,
  random: () => number,
  population: Population & { reused: boolean },
  stop: AbortSignal,
  onProgress: SimulationOptions['onProgress'],
): Promise<SimulationReport> {
  const report = emptyReport(config, false);
  report.population = {
    users: population.users.length,
    posts: population.posts.length,
    follows: population.follows,
    reused: population.reused,
  };
  const pick = createMixPicker(config.mix, random);
  const userZipf = createZipfSampler(population.users.length, config.zipfExponent, random);
  const postZipf = createZipfSampler(Math.max(1, population.posts.length), config.zipfExponent, random);
  const all = new LatencyHistogram();
  const routes = new Map<string, { report: RouteReport; histogram: LatencyHistogram }>();
  let window = new LatencyHistogram();
  let windowSent = 0;
  const inFlight = new Set<Promise<void>>();

  const start = performance.now();
  const elapsed = () => performance.now() - start;
  let lastProgress = start;
  const progress = (final = false) => {
    const now = performance.now();
    const seconds = Math.max(0.001, (final ? now - start : now - lastProgress) / 1000);
    onProgress?.({
      sent: report.sent,
      ok: report.ok,
      failed: report.failed,
      skipped: report.skipped,
      elapsedMs: Math.min(Math.round(now - start), config.durationMs),
      totalMs: config.durationMs,
      rps: Math.round(((final ? report.sent : windowSent) / seconds) * 10) / 10,
      p99Ms: (final ? all : window).percentile(0.99),
    });
    lastProgress = now;
    window = new LatencyHistogram();
    windowSent = 0;
  };
  const progressTimer =
    onProgress === undefined ? undefined : setInterval(() => progress(), PROGRESS_EVERY_MS);
  progressTimer?.unref();

  const dispatch = () => {
    if (inFlight.size >= config.concurrency) {
      report.skipped++;
      return;
    }
    const request = planRequest(pick(), random, population, userZipf, postZipf);
    report.sent++;
    windowSent++;
    if (READ_OPERATIONS.has(request.operation)) report.reads++;
    else report.writes++;
    let route = routes.get(request.route);
    if (route === undefined) {
      route = {
        report: { sent: 0, ok: 0, failed: 0, p50Ms: null, p99Ms: null },
        histogram: new LatencyHistogram(),
      };
      routes.set(request.route, route);
    }
    const entry = route;
    entry.report.sent++;
    const task = send(config.url, request.method, request.path, request.payload, config.timeoutMs, stop).then(
      (outcome) => {
        if (outcome.error === 'cancelled') {
          report.cancelled++;
          return;
        }
        all.record(outcome.ms);
        window.record(outcome.ms);
        entry.histogram.record(outcome.ms);
        if (outcome.status !== undefined) {
          const key = String(outcome.status);
          report.byStatus[key] = (report.byStatus[key] ?? 0) + 1;
        } else if (outcome.error !== undefined) {
          report.errors[outcome.error]++;
        }
        if (outcome.status !== undefined && outcome.status >= 200 && outcome.status < 300) {
          report.ok++;
          entry.report.ok++;
          const id = (outcome.body as { id?: unknown } | undefined)?.id;
          if (request.addsPost && typeof id === 'number') population.posts.push(id);
        } else {
          report.failed++;
          entry.report.failed++;
        }
      },
    );
    inFlight.add(task);
    void task.finally(() => inFlight.delete(task));
  };

  const interArrival = (at: number) => {
    const lambda = (config.rate * burstFactor(config.burst, at)) / 1000;
    return -Math.log(1 - random()) / lambda;
  };

  let next = interArrival(0);
  try {
    while (!stop.aborted) {
      const now = elapsed();
      if (now >= config.durationMs) break;
      while (next <= now && next < config.durationMs) {
        dispatch();
        next += interArrival(next);
      }
      const wait = Math.min(next, config.durationMs) - elapsed();
      if (wait > 0) await delay(wait, undefined, { signal: stop }).catch(() => undefined);
    }
    await Promise.all([...inFlight]);
  } finally {
    if (progressTimer !== undefined) clearInterval(progressTimer);
  }
  report.elapsedMs = Math.round(elapsed());
  report.aborted = stop.aborted;
  progress(true);
  report.p50Ms = all.percentile(0.5);
  report.p99Ms = all.percentile(0.99);
  report.maxMs = all.count === 0 ? null : Math.round(all.max * 1000) / 1000;
  report.achievedRps =
    report.elapsedMs === 0 ? 0 : Math.round((report.sent / report.elapsedMs) * 10_000) / 10;
  for (const [name, { report: r, histogram }] of [...routes].sort(
    (a, b) => b[1].report.sent - a[1].report.sent,
  )) {
    report.byRoute[name] = { ...r, p50Ms: histogram.percentile(0.5), p99Ms: histogram.percentile(0.99) };
  }
  return report;
}
