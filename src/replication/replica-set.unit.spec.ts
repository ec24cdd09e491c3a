/**
 * The replica set's routing, waiting, health and figures with fake time and in-memory nodes: a
 * node answers with its own name and position, and can be taken down or made to fail reads.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ConnectionError, isStrataError, QueryError } from '../core/errors.js';
import type { PositionProvider, ReplicaPosition } from '../core/positions.js';
import {
  defaultCapabilities,
  type QueryResult,
  quoteIdentifierStandard,
  type SqlDialect,
  type SqlDriver,
  type SqlExecutor,
} from '../core/sql.js';
import { FakeClock, flushMicrotasks } from '../testing/fake-clock.js';
import type { HealthChange } from './health.js';
import { createReplicaSet, type ReplicaSet, type ReplicaSetOptions } from './replica-set.js';

const dialect: SqlDialect = {
  name: 'fake',
  capabilities: defaultCapabilities,
  placeholder: (i) => `$${i}`,
  quoteIdentifier: quoteIdentifierStandard,
};

/** An in-memory node: reads answer `{ node }`, writes move the primary's position. */
class FakeNode implements SqlDriver {
  readonly dialect = dialect;
  readonly closed = false;
  position = 0n;
  identity = 'cluster-1';
  down = false;
  /** Reads left that fail with this error. */
  failReads: { n: number; err: unknown } = { n: 0, err: undefined };
  queries = 0;

  constructor(readonly name: string) {}

  #check(): void {
    if (this.down)
      throw new ConnectionError({ backend: 'fake', host: this.name, port: 1 }, 'connection refused');
  }

  async query<R>(): Promise<QueryResult<R>> {
    this.#check();
    this.queries++;
    if (this.failReads.n > 0) {
      this.failReads.n--;
      throw this.failReads.err;
    }
    return { rows: [{ node: this.name } as R], rowCount: 1 };
  }

  async exec(): Promise<void> {
    this.#check();
  }

  async transaction<T>(fn: (tx: never) => Promise<T>): Promise<T> {
    this.#check();
    return fn({ ...this, depth: 1, afterCommit: () => undefined } as never);
  }

  async ping(): Promise<void> {
    this.#check();
  }

  async close(): Promise<void> {}
}

const notReplica = new Set<FakeNode>();

const provider: PositionProvider = {
  kind: 'fake',
  unit: 'bytes',
  async afterWrite(primary) {
    const node = primary as FakeNode;
    if (node.down) throw new ConnectionError({ backend: 'fake' }, 'connection refused');
    return node.position;
  },
  async primary(primary) {
    const node = primary as FakeNode;
    if (node.down) throw new ConnectionError({ backend: 'fake' }, 'connection refused');
    return { position: node.position, identity: node.identity };
  },
  async replica(replica: SqlExecutor): Promise<ReplicaPosition> {
    const node = replica as FakeNode;
    if (node.down) throw new ConnectionError({ backend: 'fake' }, 'connection refused');
    if (notReplica.has(node)) return { position: undefined };
    return { position: node.position, identity: node.identity };
  },
  format: (p) => p.toString(),
  parse: (t) => BigInt(t),
};

const secret = 'unit-test-secret-of-enough-bytes';
const sets: ReplicaSet[] = [];
afterEach(async () => {
  for (const s of sets.splice(0)) await s.close();
  notReplica.clear();
});

function setup(extra: Partial<ReplicaSetOptions> = {}, replicaCount = 2) {
  const clock = new FakeClock();
  const primary = new FakeNode('primary-db');
  const replicas = Array.from({ length: replicaCount }, (_, i) => new FakeNode(`r${i + 1}`));
  const changes: HealthChange[] = [];
  const set = createReplicaSet({
    primary,
    replicas: replicas.map((driver) => ({ name: driver.name, driver })),
    position: provider,
    clock,
    tokenSecret: secret,
    clusterId: 'unit',
    onHealthChange: (c) => changes.push(c),
    ...extra,
  });
  sets.push(set);
  return { clock, primary, replicas, set, changes };
}

async function servedBy(set: ReplicaSet, consistency?: Parameters<ReplicaSet['read']>[1]): Promise<string> {
  const result = await set.read<{ node: string }>('select node', consistency);
  return result.rows[0]!.node;
}

function configOption(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(isStrataError(err, 'E_CONFIG')).toBe(true);
    return (err as { option: string }).option;
  }
  throw new Error('expected E_CONFIG');
}

describe('replica set routing', () => {
  it('sends strong reads to the primary and eventual reads to the replicas in turn', async () => {
    const { set } = setup();
    await set.refresh();
    expect(await servedBy(set, { consistency: 'strong' })).toBe('primary-db');
    const nodes = [];
    for (let i = 0; i < 4; i++) nodes.push(await servedBy(set, { consistency: 'eventual' }));
    expect(nodes).toEqual(['r1', 'r2', 'r1', 'r2']);
    expect(await servedBy(set)).toBe('r1');
    const stats = set.stats();
    expect(stats.reads).toMatchObject({ total: 6, strong: 1, eventual: 5, session: 0, maxLag: 0 });
    expect(stats.primary.reads).toBe(1);
    expect(stats.replicas.map((r) => [r.name, r.reads, r.healthy])).toEqual([
      ['r1', 3, true],
      ['r2', 2, true],
    ]);
    expect(stats.replicas[0]!.share).toBeCloseTo(0.5);
  });

  it('passes the chosen executor and where it is to read callbacks', async () => {
    const { set, replicas } = setup();
    await set.refresh();
    const seen = await set.read(async (db, info) => ({ same: db === replicas[0], info }));
    expect(seen).toEqual({
      same: true,
      info: { node: 'r1', replica: true, consistency: 'eventual', waitedMs: 0, attempt: 1 },
    });
  });

  it('serves every read from the primary when there are no replicas', async () => {
    const { set } = setup({}, 0);
    const { token } = await set.write(async () => 1);
    expect(await servedBy(set, { consistency: 'eventual' })).toBe('primary-db');
    expect(await servedBy(set, { consistency: { session: token } })).toBe('primary-db');
    expect(await servedBy(set, { consistency: { maxLag: '1s' } })).toBe('primary-db');
    expect(set.stats().fallbacks).toEqual({ eventual: 1, session: 1, maxLag: 1 });
  });

  it('honours weights and least lag', async () => {
    const clock = new FakeClock();
    const primary = new FakeNode('p');
    const [a, b] = [new FakeNode('a'), new FakeNode('b')];
    const set = createReplicaSet({
      primary,
      replicas: [
        { name: 'a', driver: a, weight: 3 },
        { name: 'b', driver: b, weight: 1 },
      ],
      position: provider,
      balance: 'weighted',
      clock,
    });
    sets.push(set);
    await set.refresh();
    const counts: Record<string, number> = {};
    for (let i = 0; i < 40; i++) {
      const node = await servedBy(set);
      counts[node] = (counts[node] ?? 0) + 1;
    }
    expect(counts).toEqual({ a: 30, b: 10 });

    const lagging = setup({ balance: 'least-lag' });
    lagging.primary.position = 1_000n;
    lagging.replicas[0]!.position = 400n;
    lagging.replicas[1]!.position = 990n;
    await lagging.set.refresh();
    expect([await servedBy(lagging.set), await servedBy(lagging.set)]).toEqual(['r2', 'r2']);
  });
});

describe('writes and tokens', () => {
  it('returns the value and a token of the position after the write', async () => {
    const { set, primary } = setup();
    primary.position = 4242n;
    const written = await set.write(async (db) => (await db.query('insert')).rowCount);
    expect(written.value).toBe(1);
    expect(set.parseToken(written.token)).toBe(4242n);
    const tx = await set.transaction(async () => 'done');
    expect(tx.value).toBe('done');
    const q = await set.query('insert');
    expect(q.rowCount).toBe(1);
    expect(set.parseToken(q.token)).toBe(4242n);
    expect(set.stats().primary.writes).toBe(3);
    expect(set.parseToken(set.tokenFor('77'))).toBe(77n);
    expect(set.parseToken(await set.token())).toBe(4242n);
  });

  it('lets writes fail with the primary connection error, and keeps eventual reads on replicas', async () => {
    const { set, primary } = setup();
    await set.refresh();
    primary.down = true;
    const err = await set.write(async (db) => db.query('insert')).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
    expect((err as ConnectionError).host).toBe('primary-db');
    await set.refresh();
    expect(set.stats().replicas.every((r) => r.healthy)).toBe(true);
    expect(await servedBy(set)).toBe('r1');
    expect(await servedBy(set, { consistency: { maxLag: '5s' } })).toBe('r2');
  });

  it('says so with E_POSITION (committed) when the write committed but its position cannot be read', async () => {
    const failing: PositionProvider = {
      ...provider,
      afterWrite: async () => {
        throw new ConnectionError({ backend: 'fake' }, 'connection lost');
      },
    };
    const { set } = setup({ position: failing });
    const err = await set.write(async () => 1).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_POSITION')).toBe(true);
    expect((err as { details: { committed: boolean } }).details.committed).toBe(true);
  });

  it('refuses malformed, forged and foreign session tokens with E_TOKEN before reading', async () => {
    const { set, replicas } = setup();
    const { token } = await set.write(async () => 1);
    const other = setup({ clusterId: 'elsewhere' });
    const foreign = (await other.set.write(async () => 1)).token;
    const [id, hex, mac] = token.split('.');
    for (const [bad, problem] of [
      ['garbage', 'malformed'],
      [`${id}.${hex}f.${mac}`, 'forged'],
      [foreign, 'other-cluster'],
    ] as const) {
      const err = await set.read('select', { consistency: { session: bad } }).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_TOKEN')).toBe(true);
      expect((err as { problem: string }).problem).toBe(problem);
    }
    expect(replicas.every((r) => r.queries === 0)).toBe(true);
    // No token yet (a first visit): an eventual read.
    expect(await servedBy(set, { consistency: { session: undefined } })).toMatch(/^r/);
  });

  it('refuses an unknown consistency with E_CONFIG', async () => {
    const { set } = setup();
    const err = await set.read('select', { consistency: 'fresh' as 'strong' }).catch((e: unknown) => e);
    expect((err as { option?: string }).option).toBe('consistency');
    const lag = await set.read('select', { consistency: { maxLag: 'soon' } }).catch((e: unknown) => e);
    expect((lag as { option?: string }).option).toBe('consistency.maxLag');
  });
});

describe('session reads (read-your-writes)', () => {
  it('goes straight to a replica already at the token', async () => {
    const { set, primary, replicas } = setup();
    primary.position = 100n;
    replicas[1]!.position = 100n;
    replicas[0]!.position = 99n;
    const { token } = await set.write(async () => 1);
    await set.refresh();
    expect(await servedBy(set, { consistency: { session: token } })).toBe('r2');
    expect(set.stats().session).toMatchObject({ reads: 1, servedByReplicas: 1, fallbacks: 0, waited: 0 });
  });

  it('waits for the first replica to catch up, polling every pollEvery', async () => {
    const { set, primary, replicas, clock } = setup({ session: { wait: '500ms', pollEvery: '10ms' } });
    await set.refresh();
    primary.position = 200n;
    const { token } = await set.write(async () => 1);
    let info: { node: string; waitedMs: number } | undefined;
    const reading = set.read(
      async (_db, i) => {
        info = i;
      },
      { consistency: { session: token } },
    );
    await clock.advance(30);
    expect(info).toBeUndefined();
    replicas[1]!.position = 200n;
    await clock.advance(10);
    await reading;
    expect(info).toMatchObject({ node: 'r2', waitedMs: 40 });
    // Polls of r1 stop once nobody waits.
    const before = replicas[0]!.queries;
    await clock.advance(100);
    expect(replicas[0]!.queries).toBe(before);
    expect(set.stats().session).toMatchObject({ waited: 1, servedByReplicas: 1, waitP99Ms: 40 });
  });

  it('falls back to the primary after the wait and counts the fallback', async () => {
    const { set, primary, clock: c } = setup({ session: { wait: '200ms' } });
    await set.refresh();
    primary.position = 300n;
    const { token } = await set.write(async () => 1);
    const reading = servedBy(set, { consistency: { session: token } });
    let done = false;
    void reading.then(() => {
      done = true;
    });
    await c.advance(199);
    await flushMicrotasks();
    expect(done).toBe(false);
    await c.advance(1);
    expect(await reading).toBe('primary-db');
    expect(set.stats().session).toMatchObject({ reads: 1, servedByReplicas: 0, fallbacks: 1, waited: 1 });
    expect(set.stats().fallbacks.session).toBe(1);
  });

  it('shares one poll per replica among many waiting reads', async () => {
    const { set, primary, replicas, clock: c } = setup({ session: { wait: '1s', pollEvery: '10ms' } });
    await set.refresh();
    primary.position = 50n;
    const { token } = await set.write(async () => 1);
    const before = replicas.map((r) => r.queries);
    const reads = Array.from({ length: 100 }, () => servedBy(set, { consistency: { session: token } }));
    await c.advance(50);
    replicas[0]!.position = 50n;
    await c.advance(10);
    expect((await Promise.all(reads)).every((n) => n === 'r1')).toBe(true);
    // Not 100 reads × 6 polls: one poll per replica per 10ms (plus the reads themselves on r1).
    expect(replicas[1]!.queries - before[1]!).toBeLessThanOrEqual(7);
  });

  it('gives up waiting at once when every replica it waits on goes down', async () => {
    const { set, primary, replicas, clock: c } = setup({ session: { wait: '10s' }, health: { failures: 1 } });
    await set.refresh();
    primary.position = 10n;
    const { token } = await set.write(async () => 1);
    const reading = servedBy(set, { consistency: { session: token } });
    for (const r of replicas) r.down = true;
    await c.advance(20);
    expect(await reading).toBe('primary-db');
  });

  it('retries a failed read only on replicas that are at the token, then the primary', async () => {
    const { set, primary, replicas } = setup();
    primary.position = 10n;
    replicas[0]!.position = 10n;
    replicas[1]!.position = 5n;
    await set.refresh();
    const { token } = await set.write(async () => 1);
    replicas[0]!.failReads = { n: 1, err: new ConnectionError({ backend: 'fake' }, 'connection reset') };
    expect(await servedBy(set, { consistency: { session: token } })).toBe('primary-db');
    expect(replicas[1]!.queries).toBe(0);
    expect(set.stats().fallbacks.session).toBe(1);
  });
});

describe('bounded staleness', () => {
  it('uses only replicas whose lag plus the time since it was measured is within the bound', async () => {
    const { set, primary, replicas, clock: c } = setup({ health: { interval: '1s' } });
    primary.position = 100n;
    replicas[0]!.position = 100n;
    replicas[1]!.position = 100n;
    await set.refresh();
    primary.position = 200n;
    replicas[0]!.position = 200n;
    await set.refresh();
    await c.advance(1_000);
    // r1 is caught up; r2 has missed what the primary wrote after it was at 100, 1 s ago.
    const stats = set.stats();
    expect(stats.replicas.map((r) => [r.name, r.lag, r.lagSeconds])).toEqual([
      ['r1', 0, 0],
      ['r2', 100, 1],
    ]);
    expect(await servedBy(set, { consistency: { maxLag: '500ms' } })).toBe('r1');
    expect(await servedBy(set, { consistency: { maxLag: '500ms' } })).toBe('r1');
    expect(await servedBy(set, { consistency: { maxLag: '2s' } })).toMatch(/^r[12]$/);
    await c.advance(600);
    // 600 ms since r1 was measured: it no longer qualifies for 500ms until the next probe.
    expect(await servedBy(set, { consistency: { maxLag: '500ms' } })).toBe('primary-db');
    expect(set.stats().fallbacks.maxLag).toBe(1);
  });

  it('reports no lag for a replica of an idle primary that just wrote once, unlike the replay timestamp alone', async () => {
    const { set, primary, replicas, clock: c } = setup({ health: { interval: '1s' } });
    primary.position = 10n;
    for (const r of replicas) r.position = 10n;
    await set.refresh();
    await c.advance(3_600_000);
    primary.position = 11n;
    await set.refresh();
    expect(set.stats().replicas.map((r) => r.lagSeconds)).toEqual([0, 0]);
  });
});

describe('lag beyond the history', () => {
  it('reports a lower bound, marks the replica lagging, and keeps it from bounded reads', async () => {
    const { set, primary, replicas, clock: c } = setup({ health: { interval: '1s', maxLag: '10s' } });
    primary.position = 10n;
    for (const r of replicas) r.position = 10n;
    await set.refresh();
    for (let i = 0; i < 100; i++) {
      primary.position += 1n;
      replicas[1]!.position = primary.position;
      await c.advance(1_000);
    }
    const [stuck, current] = set.stats().replicas;
    expect(stuck!.state).toBe('lagging');
    expect(stuck!.lag).toBe(100);
    expect(stuck!.lagSeconds).toBeGreaterThanOrEqual(60);
    expect(current!.state).toBe('healthy');
    for (let i = 0; i < 3; i++) expect(await servedBy(set, { consistency: { maxLag: '5m' } })).toBe('r2');
  });
});

describe('health', () => {
  it('takes a replica out after `failures` failed probes and brings it back once it answers', async () => {
    const { set, replicas, clock: c, changes } = setup({ health: { interval: '250ms', failures: 3 } });
    await set.refresh();
    replicas[0]!.down = true;
    await c.advance(250);
    await c.advance(250);
    expect(set.stats().replicas[0]!.state).toBe('healthy');
    await c.advance(250);
    expect(set.stats().replicas[0]).toMatchObject({
      state: 'down',
      healthy: false,
      lastErrorCode: 'E_CONNECTION',
    });
    expect(changes.at(-1)).toEqual({ replica: 'r1', from: 'healthy', to: 'down', errorCode: 'E_CONNECTION' });
    for (let i = 0; i < 4; i++) expect(await servedBy(set)).toBe('r2');
    replicas[0]!.down = false;
    await c.advance(250);
    expect(set.stats().replicas[0]!.state).toBe('healthy');
    expect([await servedBy(set), await servedBy(set)].sort()).toEqual(['r1', 'r2']);
  });

  it('retries a read that fails on a replica elsewhere without the caller seeing it', async () => {
    const { set, replicas } = setup();
    await set.refresh();
    replicas[0]!.failReads = { n: 1, err: new ConnectionError({ backend: 'fake' }, 'connection reset') };
    let attempts = 0;
    const info = await set.read(async (db, i) => {
      attempts++;
      await db.query('select');
      return i;
    });
    expect(info).toMatchObject({ node: 'r2', attempt: 2 });
    expect(attempts).toBe(2);
    const stats = set.stats();
    expect(stats.reads.retries).toBe(1);
    expect(stats.replicas[0]).toMatchObject({ errors: 1, reads: 0, state: 'healthy' });
    for (const r of replicas) r.down = true;
    expect(await servedBy(set)).toBe('primary-db');
    expect(set.stats().fallbacks.eventual).toBe(1);
  });

  it('passes errors that are the read’s own (a bad statement) without retrying', async () => {
    const { set, replicas } = setup();
    await set.refresh();
    replicas[0]!.failReads = { n: 1, err: new QueryError('E_QUERY', { backend: 'fake', sqlState: '42601' }) };
    const err = await set.read('select').catch((e: unknown) => e);
    expect(isStrataError(err, 'E_QUERY')).toBe(true);
    expect(replicas[1]!.queries).toBe(0);
    expect(set.stats().replicas[0]!.errors).toBe(0);
  });

  it('takes out replicas lagging over maxLag and those that are not replicas of this primary', async () => {
    const { set, primary, replicas, clock: c } = setup({ health: { interval: '1s', maxLag: '5s' } }, 3);
    primary.position = 10n;
    for (const r of replicas) r.position = 10n;
    await set.refresh();
    primary.position = 20n;
    replicas[1]!.position = 20n;
    replicas[2]!.position = 20n;
    replicas[2]!.identity = 'another-cluster';
    for (let i = 0; i < 6; i++) await c.advance(1_000);
    const states = set.stats().replicas.map((r) => [r.state, r.lastErrorCode]);
    expect(states).toEqual([
      ['lagging', undefined],
      ['healthy', undefined],
      ['down', 'E_NOT_REPLICA'],
    ]);
    notReplica.add(replicas[1]!);
    await set.refresh();
    expect(set.stats().replicas[1]).toMatchObject({ state: 'down', lastErrorCode: 'E_NOT_REPLICA' });
    expect(await servedBy(set)).toBe('primary-db');
  });

  it('counts a failed primary probe without touching the replicas', async () => {
    const { set, primary } = setup({ health: { failures: 1 } });
    await set.refresh();
    primary.down = true;
    const stats = await set.refresh();
    expect(stats.primary).toMatchObject({ state: 'down', lastErrorCode: 'E_CONNECTION' });
    expect(stats.replicas.every((r) => r.state === 'healthy')).toBe(true);
  });

  it('stops probing on close and fails later calls with E_CLOSED', async () => {
    const { set, replicas, clock: c } = setup();
    await set.refresh();
    await set.close();
    await set.close();
    const before = replicas[0]!.queries;
    await c.advance(5_000);
    expect(replicas[0]!.queries).toBe(before);
    await expect(set.read('select')).rejects.toMatchObject({ code: 'E_CLOSED' });
    await expect(set.write(async () => 1)).rejects.toMatchObject({ code: 'E_CLOSED' });
  });
});

describe('configuration', () => {
  it('refuses invalid options with E_CONFIG naming the option', () => {
    const primary = new FakeNode('p');
    const r = new FakeNode('r');
    const base: ReplicaSetOptions = { primary, replicas: [{ name: 'r', driver: r }], position: provider };
    const make = (o: Partial<ReplicaSetOptions>) => () => createReplicaSet({ ...base, ...o });
    expect(configOption(make({ primary: undefined as unknown as SqlDriver }))).toBe('primary');
    expect(configOption(make({ replicas: 'r' as never }))).toBe('replicas');
    expect(configOption(make({ position: {} as PositionProvider }))).toBe('position');
    expect(configOption(make({ balance: 'random' as 'weighted' }))).toBe('balance');
    expect(configOption(make({ replicas: [{ name: 'primary', driver: r }] }))).toBe('replicas[0].name');
    expect(
      configOption(
        make({
          replicas: [
            { name: 'r', driver: r },
            { name: 'r', driver: new FakeNode('x') },
          ],
        }),
      ),
    ).toBe('replicas[1].name');
    expect(configOption(make({ replicas: [{ name: 'r', driver: r, weight: 0 }] }))).toBe(
      'replicas[0].weight',
    );
    expect(configOption(make({ replicas: [{ name: 'r', driver: primary }] }))).toBe('replicas[0].driver');
    expect(configOption(make({ health: { interval: '0ms' } }))).toBe('health.interval');
    expect(configOption(make({ health: { failures: 0 } }))).toBe('health.failures');
    expect(configOption(make({ session: { wait: '-1s' } }))).toBe('session.wait');
    expect(configOption(make({ session: { pollEvery: 'often' } }))).toBe('session.pollEvery');
    expect(configOption(make({ tokenSecret: 'short' }))).toBe('tokenSecret');
    expect(configOption(make({ clusterId: 'has space' }))).toBe('clusterId');
    expect(configOption(make({ defaultConsistency: 'fast' as 'strong' }))).toBe('defaultConsistency');
    expect(configOption(make({ defaultConsistency: { session: 'x' } as never }))).toBe('defaultConsistency');
    expect(configOption(make({ onHealthChange: 'log' as never }))).toBe('onHealthChange');
  });

  it('uses the default consistency for reads that name none', async () => {
    const { set } = setup({ defaultConsistency: 'strong' });
    await set.refresh();
    expect(await servedBy(set)).toBe('primary-db');
  });
});
