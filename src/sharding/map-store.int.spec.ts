import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { services, tempDir, uniqueName } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { isStrataError, type StrataError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import { type ActiveShardMap, createShardMapStore, type StoredShardStrategy } from './map-store.js';
import type { HashStrategy, RangeStrategy } from './types.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Two independent connections to one database, as two processes would have. */
const engines = [
  {
    name: 'sqlite',
    enabled: true,
    open: async (): Promise<[SqlDriver, SqlDriver]> => {
      const dir = tempDir('strata-shard-maps-');
      const file = join(dir.path, 'maps.db');
      const a = createSqliteDriver(file);
      const b = createSqliteDriver(file);
      cleanups.push(
        dir.remove,
        () => a.close(),
        () => b.close(),
      );
      return [a, b];
    },
  },
  {
    name: 'postgres',
    enabled: services.postgres,
    open: async (): Promise<[SqlDriver, SqlDriver]> => {
      const database = await createPostgresTestDatabase({ prefix: 'shard_maps' });
      const a = createPostgresDriver(database.url);
      const b = createPostgresDriver(database.url);
      cleanups.push(
        () => database.drop(),
        () => a.close(),
        () => b.close(),
      );
      return [a, b];
    },
  },
];

const hash2: HashStrategy = { kind: 'hash', version: 1, shards: ['s0', 's1'], seed: 0 };
const hash4: HashStrategy = { kind: 'hash', version: 1, shards: ['s0', 's1', 's2', 's3'], seed: 0 };
const range: RangeStrategy = {
  kind: 'range',
  version: 7,
  keyType: 'number',
  ranges: [
    { shard: 's0', to: 1000 },
    { shard: 's1', from: 1000 },
  ],
  shards: ['s0', 's1'],
};

async function rejected(promise: Promise<unknown>): Promise<StrataError> {
  try {
    await promise;
  } catch (err) {
    if (isStrataError(err)) return err;
    throw err;
  }
  throw new Error('expected a strata error');
}

function caught(fn: () => unknown): StrataError {
  try {
    fn();
  } catch (err) {
    if (isStrataError(err)) return err;
    throw err;
  }
  throw new Error('expected a strata error');
}

describe.each(engines)('shard map store on $name', (engine) => {
  it.skipIf(!engine.enabled)(
    'saves numbered versions, activates the first, and activates later ones on demand',
    async () => {
      const [db] = await engine.open();
      const store = createShardMapStore(db, { table: uniqueName('maps') });
      await store.migrate();
      await store.migrate();
      const name = 'users';
      expect(await store.active(name)).toBeUndefined();
      expect(await store.history(name)).toEqual([]);

      expect(await store.save(name, hash2)).toBe(1);
      expect(await store.save(name, hash4)).toBe(2);
      expect(await store.save('posts', range)).toBe(1);

      const first = (await store.active(name))!;
      expect(first).toMatchObject({ name, version: 1, state: 'stable', details: undefined, revision: 1 });
      expect(first.strategy).toEqual(hash2);
      expect(Object.isFrozen(first.strategy)).toBe(true);
      expect(Object.isFrozen((first.strategy as HashStrategy).shards)).toBe(true);

      // The stored definition carries the version the store gave it.
      const posts = (await store.active('posts'))!;
      expect(posts.strategy).toEqual({ ...range, version: 1 });
      expect(Object.isFrozen((posts.strategy as RangeStrategy).ranges[0])).toBe(true);

      const history = await store.history(name);
      expect(history.map((v) => [v.version, (v.strategy as HashStrategy).shards.length])).toEqual([
        [1, 2],
        [2, 4],
      ]);
      expect((await store.get(name, 2))?.strategy).toEqual({ ...hash4, version: 2 });
      expect(await store.get(name, 3)).toBeUndefined();

      const activated = await store.activate(name, 2);
      expect(activated).toMatchObject({ version: 2, state: 'stable', revision: 2 });
      expect((await store.active(name))?.strategy).toEqual({ ...hash4, version: 2 });
      expect(await store.names()).toEqual(['posts', 'users']);

      const missing = await rejected(store.activate(name, 9));
      expect(missing.code).toBe('E_NOT_FOUND');
      expect(missing.details).toMatchObject({ name, version: 9 });
      expect((await store.active(name))?.version).toBe(2);
      expect((await rejected(store.setState('nobody', 'resharding'))).code).toBe('E_NOT_FOUND');
    },
  );

  it.skipIf(!engine.enabled)('records the reshard state with its details, and clears them', async () => {
    const [db] = await engine.open();
    const store = createShardMapStore(db, { table: uniqueName('maps') });
    await store.migrate();
    await store.save('users', hash2);
    await store.save('users', hash4);
    const resharding = await store.setState('users', 'resharding', { target: 2, copied: { s0: 10 } });
    expect(resharding).toMatchObject({
      version: 1,
      state: 'resharding',
      details: { target: 2, copied: { s0: 10 } },
    });
    expect(Object.isFrozen(resharding.details)).toBe(true);
    const cutover = await store.setState('users', 'cutover', { target: 2 });
    expect(cutover.revision).toBe(resharding.revision + 1);
    // Cutover: switch the version and end the reshard in one step.
    const done = await store.activate('users', 2, { state: 'stable' });
    expect(done).toMatchObject({ version: 2, state: 'stable', details: undefined });
    expect(done.updatedAt).toBeGreaterThanOrEqual(cutover.updatedAt);
  });

  it.skipIf(!engine.enabled)('gives concurrent saves from two connections distinct versions', async () => {
    const [a, b] = await engine.open();
    const table = uniqueName('maps');
    const storeA = createShardMapStore(a, { table });
    const storeB = createShardMapStore(b, { table });
    await storeA.migrate();
    await storeB.migrate();
    const saves = Array.from({ length: 20 }, (_, i) =>
      (i % 2 ? storeA : storeB).save('users', { ...hash2, seed: i }),
    );
    const versions = await Promise.all(saves);
    expect([...versions].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    const history = await storeB.history('users');
    expect(history.map((v) => v.version)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    // Each version holds the definition its own save sent.
    for (const [i, version] of versions.entries()) {
      expect((await storeA.get('users', version))?.strategy).toMatchObject({ seed: i });
    }
    expect((await storeA.active('users'))?.revision).toBe(1);
  });

  it.skipIf(!engine.enabled)('lets a watcher see a change made through another connection', async () => {
    const [a, b] = await engine.open();
    const table = uniqueName('maps');
    const writer = createShardMapStore(a, { table });
    const reader = createShardMapStore(b, { table });
    await writer.migrate();
    await writer.save('users', hash2);
    await writer.save('users', hash4);
    const current = (await reader.active('users'))!;

    const seen: ActiveShardMap[] = [];
    let wake: () => void = () => undefined;
    const errors: unknown[] = [];
    const stop = reader.watch(
      'users',
      (map) => {
        seen.push(map);
        wake();
      },
      { pollInterval: '20ms', since: current.revision, onError: (err) => errors.push(err) },
    );
    cleanups.push(stop);
    const change = (n: number) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the watcher saw no change within 10s')), 10_000);
        wake = () => {
          if (seen.length >= n) {
            clearTimeout(timer);
            resolve();
          }
        };
      });

    const first = change(1);
    await writer.setState('users', 'resharding', { target: 2 });
    await first;
    expect(seen[0]).toMatchObject({ version: 1, state: 'resharding', details: { target: 2 } });

    const second = change(2);
    await writer.activate('users', 2, { state: 'stable' });
    await second;
    expect(seen[1]).toMatchObject({ version: 2, state: 'stable' });
    expect(seen[1]!.strategy).toEqual({ ...hash4, version: 2 });
    stop();
    expect(errors).toEqual([]);
  });

  it.skipIf(!engine.enabled)('refuses bad names, states, versions and strategies with E_CONFIG', async () => {
    const [db] = await engine.open();
    const store = createShardMapStore(db, { table: uniqueName('maps') });
    await store.migrate();
    for (const name of ['', 'has space', 'x'.repeat(129), 42 as unknown as string, "o'hara"]) {
      const err = await rejected(store.save(name, hash2));
      expect([err.code, err.details.option]).toEqual(['E_CONFIG', 'name']);
      expect((await rejected(store.active(name))).code).toBe('E_CONFIG');
      expect((await rejected(store.history(name))).code).toBe('E_CONFIG');
      expect(caught(() => store.watch(name, () => undefined)).code).toBe('E_CONFIG');
    }
    const bad: Array<[string, unknown]> = [
      ['strategy', null],
      ['strategy', [hash2]],
      ['strategy.kind', { ...hash2, kind: 'modulo' }],
      ['strategy.seed', { ...hash2, seed: 10n }],
      ['strategy.seed', { ...hash2, seed: Number.NaN }],
      ['strategy.ranges[0].to', { ...range, ranges: [{ shard: 's0', to: new Date(0) }] }],
      ['strategy.shards', { ...hash2, shards: new Set(['s0']) }],
      ['strategy.shards[1]', { ...hash2, shards: ['s0', undefined] }],
      ['strategy', { ...hash2, route: () => 's0' }],
      // Well-formed JSON, but not a strategy a router could use.
      ['strategy.shards', { ...hash2, shards: [] }],
      ['strategy.seed', { ...hash2, seed: -5 }],
      [
        'strategy.ranges[1].from',
        {
          ...range,
          ranges: [
            { shard: 's0', to: 10 },
            { shard: 's1', from: 20 },
          ],
        },
      ],
    ];
    for (const [option, strategy] of bad) {
      const err = await rejected(store.save('users', strategy as StoredShardStrategy));
      expect([err.code, err.details.option]).toEqual(['E_CONFIG', option]);
    }
    expect(await store.history('users')).toEqual([]);

    // An absent optional field is fine: it reads back absent.
    expect(
      await store.save('tenants', {
        kind: 'directory',
        version: 1,
        table: 'tenant_shards',
        fallback: undefined,
        shards: ['s0', 's1'],
        cacheTtlMs: 1000,
      }),
    ).toBe(1);
    expect((await store.active('tenants'))?.strategy).toEqual({
      kind: 'directory',
      version: 1,
      table: 'tenant_shards',
      shards: ['s0', 's1'],
      cacheTtlMs: 1000,
    });

    await store.save('users', hash2);
    expect((await rejected(store.setState('users', 'paused' as never))).details.option).toBe('state');
    expect((await rejected(store.setState('users', 'stable', { at: new Date() }))).details.option).toBe(
      'details',
    );
    expect((await rejected(store.activate('users', 0))).details.option).toBe('version');
    expect((await rejected(store.activate('users', 1, { details: { a: 1 } }))).details.option).toBe(
      'details',
    );
    expect(caught(() => store.watch('users', () => undefined, { pollInterval: 0 })).details.option).toBe(
      'pollInterval',
    );
    expect(caught(() => createShardMapStore(db, { table: 'bad-name' })).details.option).toBe('table');
    expect(caught(() => createShardMapStore(db, { table: 'x'.repeat(60) })).details.option).toBe('table');
  });
});
