import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPostgresDriver } from '../../src/backends/postgres/postgres-driver.js';
import { createPostgresEventStore } from '../../src/backends/postgres/postgres-event-store.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../../src/backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../../src/backends/sqlite/sqlite-driver.js';
import { createSqliteEventStore } from '../../src/backends/sqlite/sqlite-event-store.js';
import { isStrataError } from '../../src/core/errors.js';
import { services, tempDir } from '../../test/helpers.js';
import { withdraw } from './events-expected-version.js';
import { recordPayment } from './events-idempotency.js';
import { postgresOrders } from './events-postgres.js';
import { quickstart } from './events-quickstart.js';
import { renamedPeople } from './events-schemas.js';
import { cartWithSnapshots } from './events-snapshots.js';
import { streamLifecycle } from './events-streams.js';
import { balancesProjection } from './events-subscription.js';

const dir = tempDir('strata-snippets-events-');
afterAll(() => dir.remove());

function sqliteStore(name: string) {
  const driver = createSqliteDriver(join(dir.path, `${name}.db`));
  const store = createSqliteEventStore({ driver });
  return {
    driver,
    store,
    close: async () => {
      await store.close();
      await driver.close();
    },
  };
}

describe('event store snippets', () => {
  it('quickstart appends, reads a stream both ways and the global log', async () => {
    const r = await quickstart(join(dir.path, 'quickstart.db'));
    expect(r.version).toBe(3);
    expect(r.positions).toHaveLength(2);
    expect(r.history.map((e) => [e.version, e.type])).toEqual([
      [1, 'Opened'],
      [2, 'Deposited'],
      [3, 'Withdrawn'],
    ]);
    expect(r.newestFirst.map((e) => e.version)).toEqual([3]);
    expect(r.everything.map((e) => e.position)).toEqual([r.history[0]!.position, ...r.positions]);
  });

  it('withdraw decides on the loaded state and retries a version conflict', async () => {
    const { store, close } = sqliteStore('withdraw');
    await store.append('account-1', [
      { type: 'Opened', data: {} },
      { type: 'Deposited', data: { amount: 100 } },
    ]);
    expect(await withdraw(store, 'account-1', 60)).toEqual({ ok: true, balance: 40 });
    expect(await withdraw(store, 'account-1', 60)).toEqual({ ok: false, balance: 40 });
    expect(await withdraw(store, 'account-2', 1)).toEqual({ ok: false, balance: 0 });

    // Two withdrawals racing on one balance: the loser's append conflicts, it reloads and refuses.
    const results = await Promise.all([withdraw(store, 'account-1', 30), withdraw(store, 'account-1', 30)]);
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    const events = await store.readStream('account-1');
    expect(events.filter((e) => e.type === 'Withdrawn')).toHaveLength(2);

    // Out of attempts, the conflict reaches the caller with its details (a deposit sneaks in first).
    let appends = 0;
    const racing = new Proxy(store, {
      get(target, prop) {
        if (prop !== 'append') {
          const value = Reflect.get(target, prop, target);
          return typeof value === 'function' ? value.bind(target) : value;
        }
        return async (...args: Parameters<typeof store.append>) => {
          if (appends++ === 0) await target.append('account-1', [{ type: 'Deposited', data: { amount: 1 } }]);
          return target.append(...args);
        };
      },
    });
    const err = await withdraw(racing, 'account-1', 5, 1).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_VERSION_CONFLICT')).toBe(true);
    expect((err as { details: unknown }).details).toEqual({ stream: 'account-1', expected: 4, actual: 5 });
    await close();
  });

  it('recordPayment writes once however often it is retried', async () => {
    const { store, close } = sqliteStore('payments');
    await store.append('order-9', [{ type: 'Placed', data: {} }]);
    const first = await recordPayment(store, '9', 'p-1', 25);
    const retry = await recordPayment(store, '9', 'p-1', 25);
    expect(first.alreadyAppended).toBe(false);
    expect(retry).toEqual({ alreadyAppended: true, positions: first.positions });
    expect(await store.readStream('order-9')).toHaveLength(2);
    // The same payment id with another amount is not a retry.
    const err = await recordPayment(store, '9', 'p-1', 26).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_DUPLICATE_EVENT')).toBe(true);
    // No order stream: 'stream_exists' refuses.
    const missing = await recordPayment(store, '10', 'p-2', 5).catch((e: unknown) => e);
    expect(isStrataError(missing, 'E_VERSION_CONFLICT')).toBe(true);
    await close();
  });

  it('the balances projection follows the log once per event, across a restart', async () => {
    const { store, driver, close } = sqliteStore('balances');
    await store.append('account-1', [
      { type: 'Opened', data: {} },
      { type: 'Deposited', data: { amount: 100 } },
    ]);
    await store.append('other-1', [{ type: 'Deposited', data: { amount: 1000 } }]);
    let consumer = await balancesProjection(store, driver);
    await store.append('account-2', [{ type: 'Deposited', data: { amount: 5 } }]);
    await store.append('account-1', [{ type: 'Withdrawn', data: { amount: 30 } }]);
    await consumer.drained();
    await consumer.stop();
    // Restarted: resumes from its checkpoint, nothing applied twice.
    consumer = await balancesProjection(store, driver);
    await store.append('account-2', [{ type: 'Deposited', data: { amount: 1 } }]);
    await consumer.drained();
    await consumer.stop();
    const { rows } = await driver.query('select account, balance from balances order by account');
    expect(rows).toEqual([
      { account: 'account-1', balance: 70 },
      { account: 'account-2', balance: 6 },
    ]);
    await close();
  });

  it('schemas validate and upcast', async () => {
    expect(await renamedPeople(join(dir.path, 'people.db'))).toEqual([
      { stream: 'person-1', schemaVersion: 2, data: { first: 'Grace', last: 'Hopper' } },
      { stream: 'person-2', schemaVersion: 2, data: { first: 'Ada', last: 'Lovelace' } },
    ]);
    const driver = createSqliteDriver(join(dir.path, 'people.db'));
    const store = createSqliteEventStore({ driver });
    // Stored as version 2 after the upcast (this store has no types registered: raw reads).
    expect((await store.readStream('person-2'))[0]).toMatchObject({
      schemaVersion: 2,
      data: { first: 'Ada', last: 'Lovelace' },
    });
    await store.close();
    await driver.close();
  });

  it('snapshots: saved by policy, then loads start from them', async () => {
    const { first, second } = await cartWithSnapshots(join(dir.path, 'carts.db'));
    expect(first).toMatchObject({ version: 250, snapshotVersion: undefined, snapshotSaved: true });
    expect(first.state.items).toEqual({ 'sku-0': 50, 'sku-1': 50, 'sku-2': 50, 'sku-3': 50, 'sku-4': 50 });
    expect(second).toMatchObject({ version: 251, snapshotVersion: 250, snapshotSaved: false });
    expect(second.state.items['sku-0']).toBe(49);
  });

  it('stream metadata and soft delete apply to stream reads only', async () => {
    const { store, close } = sqliteStore('streams');
    const r = await streamLifecycle(store);
    expect(r.newest.map((e) => e.version)).toEqual([8, 9, 10]);
    expect(r.truncated.map((e) => e.version)).toEqual([9, 10]);
    expect(r.afterDelete).toEqual([]);
    expect(r.info).toEqual({
      stream: 'sensor-1',
      version: 10,
      deleted: true,
      metadata: { truncateBefore: 9 },
    });
    expect(r.recreated.map((e) => [e.version, e.data.celsius])).toEqual([[11, 5]]);
    expect(await store.readAll(0, 100)).toHaveLength(11);
    await close();
  });

  describe.skipIf(!services.postgres)('on PostgreSQL', () => {
    let db: PostgresTestDatabase;
    beforeAll(async () => {
      db = await createPostgresTestDatabase({ prefix: 'strata_snippets_events' });
    });
    afterAll(async () => {
      await db?.drop();
    });

    it('appends in the caller transaction and across streams atomically', async () => {
      const { log, blocked } = await postgresOrders(db.url);
      expect(log.map((e) => [e.stream, e.type])).toEqual([
        ['order-1', 'Placed'],
        ['stock-sku1', 'Reserved'],
        ['order-2', 'Placed'],
      ]);
      expect(blocked).toBeUndefined();
      const driver = createPostgresDriver({ url: db.url, maxConnections: 2 });
      const store = createPostgresEventStore({ driver, tablePrefix: 'shop' });
      // A failed transaction takes its events with it.
      const err = await driver
        .transaction(async (tx) => {
          await store.append('order-3', [{ type: 'Placed', data: {} }], { executor: tx });
          throw new Error('payment declined');
        })
        .catch((e: unknown) => e);
      expect((err as Error).message).toBe('payment declined');
      expect(await store.streamInfo('order-3')).toBeUndefined();
      const { rows } = await driver.query('select id, total from order_totals');
      expect(rows).toEqual([{ id: 'order-1', total: 42 }]);
      // appendMany is all or nothing: one conflicting stream and neither is written.
      const conflict = await store
        .appendMany([
          { stream: 'stock-sku1', expected: 'any', events: [{ type: 'Reserved', data: {} }] },
          { stream: 'order-2', expected: 'no_stream', events: [{ type: 'Placed', data: {} }] },
        ])
        .catch((e: unknown) => e);
      expect(isStrataError(conflict, 'E_VERSION_CONFLICT')).toBe(true);
      expect((await store.streamInfo('stock-sku1'))?.version).toBe(1);
      await store.close();
      await driver.close();
    });

    it('the balances projection runs on PostgreSQL too', async () => {
      const driver = createPostgresDriver({ url: db.url, maxConnections: 4 });
      const store = createPostgresEventStore({ driver, tablePrefix: 'bank' });
      await store.append('account-1', [{ type: 'Deposited', data: { amount: 10 } }]);
      const consumer = await balancesProjection(store, driver);
      await store.append('account-1', [{ type: 'Withdrawn', data: { amount: 4 } }]);
      await consumer.drained();
      await consumer.stop();
      const { rows } = await driver.query('select account, balance from balances');
      expect(rows).toEqual([{ account: 'account-1', balance: 6 }]);
      await store.close();
      await driver.close();
    });
  });
});
