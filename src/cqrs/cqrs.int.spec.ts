import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { services, tempDir, uniqueName } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import { createPostgresEventStore } from '../backends/postgres/postgres-event-store.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { createSqliteEventStore } from '../backends/sqlite/sqlite-event-store.js';
import { createSqlCheckpointStore } from '../changes/sql-checkpoint-store.js';
import { isStrataError, StrataError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';
import type { EventStore, RecordedEvent } from '../events/types.js';
import { createCommandHandler, type Decider } from './decider.js';
import { createProjectionConsumer, defineProjection, type Projection } from './projection.js';
import { rebuildProjection } from './rebuild.js';

// ---------------------------------------------------------------------------------------------
// The domain: bank accounts

type AccountEvent =
  | { type: 'Opened'; data: { owner: string } }
  | { type: 'Deposited'; data: { amount: number; balanceAfter: number } }
  | { type: 'Withdrawn'; data: { amount: number; balanceAfter: number } };
type AccountCommand =
  | { type: 'open'; owner: string }
  | { type: 'deposit'; amount: number; gate?: () => Promise<void> }
  | { type: 'withdraw'; amount: number };
interface Account {
  open: boolean;
  balance: number;
}

const account: Decider<Account, AccountCommand, AccountEvent> = {
  initialState: () => ({ open: false, balance: 0 }),
  evolve(state, event) {
    switch (event.type) {
      case 'Opened':
        return { ...state, open: true };
      case 'Deposited':
        return { ...state, balance: state.balance + event.data.amount };
      case 'Withdrawn':
        return { ...state, balance: state.balance - event.data.amount };
    }
  },
  async decide(command, state) {
    if (command.type === 'open')
      return state.open ? [] : [{ type: 'Opened', data: { owner: command.owner } }];
    if (!state.open) throw new StrataError('E_ACCOUNT_CLOSED', 'the account is not open');
    if (command.type === 'deposit') {
      await command.gate?.();
      const balanceAfter = state.balance + command.amount;
      return [{ type: 'Deposited', data: { amount: command.amount, balanceAfter } }];
    }
    if (command.amount > state.balance) throw new StrataError('E_INSUFFICIENT_FUNDS', 'not enough money');
    return [
      { type: 'Withdrawn', data: { amount: command.amount, balanceAfter: state.balance - command.amount } },
    ];
  },
};

/** Each caller waits until `n` callers arrived; a caller passes only once (later calls go straight through). */
function barrier(n: number): () => () => Promise<void> {
  let arrived = 0;
  let release: () => void = () => undefined;
  const all = new Promise<void>((resolve) => {
    release = resolve;
  });
  return () => {
    let used = false;
    return async () => {
      if (used) return;
      used = true;
      if (++arrived >= n) release();
      await all;
    };
  };
}

let projections = 0;

/** A balances read model; `v2` adds a deposits counter (a new column a rebuild brings in). */
function balances(
  options: { name?: string; v2?: boolean; failOn?: string; streamTypes?: string[] } = {},
): Projection {
  const name = options.name ?? `bal_${process.pid}_${projections++}`;
  return defineProjection({
    name,
    ...(options.streamTypes === undefined ? {} : { streamTypes: options.streamTypes }),
    tables: { balances: `${name}_rows` },
    handles: ['Opened', 'Deposited', 'Withdrawn'],
    schema: (t, names) => [
      sql`create table if not exists ${t.balances} (
        account text primary key, owner text not null, balance integer not null
        ${options.v2 ? sql`, deposits integer not null default 0` : sql.empty})`,
      sql`create index if not exists ${sql.id(`${names.balances}_by_owner`)} on ${t.balances} (owner)`,
    ],
    async apply(ex, event, t) {
      if (event.type === options.failOn) throw new StrataError('E_TEST_PROJECTION', 'refused on purpose');
      const data = event.data as { owner?: string; amount?: number };
      if (event.type === 'Opened') {
        await ex.query(
          sql`insert into ${t.balances} (account, owner, balance) values (${event.stream}, ${data.owner}, ${0})`,
        );
      } else {
        const delta = event.type === 'Deposited' ? data.amount! : -data.amount!;
        const counted = options.v2 && event.type === 'Deposited' ? sql`, deposits = deposits + 1` : sql.empty;
        await ex.query(
          sql`update ${t.balances} set balance = balance + ${delta}${counted} where account = ${event.stream}`,
        );
      }
    },
  });
}

async function until(condition: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function rows(driver: SqlDriver, table: string): Promise<Array<Record<string, unknown>>> {
  const { rows: found } = await driver.query<Record<string, unknown>>(
    sql`select * from ${sql.id(table)} order by account`,
  );
  return found.map((r) =>
    Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'string' ? v : Number(v)])),
  );
}

async function count(driver: SqlDriver, table: string): Promise<number> {
  const { rows: found } = await driver.query<{ n: number | string }>(
    sql`select count(*) as n from ${sql.id(table)}`,
  );
  return Number(found[0]?.n);
}

async function indexNames(driver: SqlDriver, table: string): Promise<string[]> {
  const statement =
    driver.dialect.name === 'postgres'
      ? sql`select indexname as name from pg_indexes where tablename = ${table}`
      : sql`select name from sqlite_master where type = 'index' and tbl_name = ${table} and sql is not null`;
  return (await driver.query<{ name: string }>(statement)).rows.map((r) => r.name).sort();
}

// ---------------------------------------------------------------------------------------------
// One suite, every engine

interface Engine {
  driver: SqlDriver;
  store(): Promise<EventStore>;
}

function describeCqrs(name: string, setup: () => Promise<Engine & { close(): Promise<void> }>): void {
  describe(`cqrs on ${name}`, () => {
    let engine: Engine & { close(): Promise<void> };
    beforeAll(async () => {
      engine = await setup();
    });
    afterAll(async () => {
      await engine?.close();
    });

    it('handles commands: decides on the folded state, appends, returns the next expected version and state', async () => {
      const store = await engine.store();
      const handler = createCommandHandler({ store, decider: account });
      const opened = await handler.handle('account-1', { type: 'open', owner: 'ann' });
      expect(opened).toMatchObject({
        nextExpectedVersion: 1,
        state: { open: true, balance: 0 },
        attempts: 1,
      });
      expect(opened.events).toMatchObject([{ type: 'Opened', stream: 'account-1', version: 1 }]);
      const deposited = await handler.handle(
        'account-1',
        { type: 'deposit', amount: 10 },
        { metadata: { by: 'ann' } },
      );
      expect(deposited.nextExpectedVersion).toBe(2);
      expect(deposited.state).toEqual({ open: true, balance: 10 });
      // Nothing to decide: nothing appended.
      const again = await handler.handle('account-1', { type: 'open', owner: 'ann' });
      expect(again).toMatchObject({ events: [], nextExpectedVersion: 2 });
      const stored = await store.readStream('account-1');
      expect(stored.map((e) => e.type)).toEqual(['Opened', 'Deposited']);
      expect(stored[1]?.metadata).toEqual({ by: 'ann' });
      expect(stored[1]?.id).toBe(deposited.events[0]?.id);
      await expect(handler.handle('account-1', { type: 'withdraw', amount: 11 })).rejects.toMatchObject({
        code: 'E_INSUFFICIENT_FUNDS',
      });
      expect((await store.streamInfo('account-1'))?.version).toBe(2);
    });

    it('version-conflict race: two handlers on one stream both succeed by retrying, in order, on the fresh state', async () => {
      const store = await engine.store();
      const a = createCommandHandler({ store, decider: account, retry: { attempts: 3, initialDelay: 1 } });
      const b = createCommandHandler({ store, decider: account, retry: { attempts: 3, initialDelay: 1 } });
      await a.handle('account-r', { type: 'open', owner: 'ann' });
      const gate = barrier(2);
      // Both load version 1 and decide before either appends: one of them must conflict.
      const [ra, rb] = await Promise.all([
        a.handle('account-r', { type: 'deposit', amount: 10, gate: gate() }),
        b.handle('account-r', { type: 'deposit', amount: 20, gate: gate() }),
      ]);
      expect([ra.attempts, rb.attempts].sort()).toEqual([1, 2]);
      const events = (await store.readStream('account-r')).slice(1) as RecordedEvent[];
      expect(events.map((e) => e.version)).toEqual([2, 3]);
      const [first, second] = events.map((e) => e.data as { amount: number; balanceAfter: number });
      expect([first!.amount, second!.amount].sort()).toEqual([10, 20]);
      // The loser decided again on the state that includes the winner's deposit.
      expect(first!.balanceAfter).toBe(first!.amount);
      expect(second!.balanceAfter).toBe(30);
      expect(Math.max(ra.state.balance, rb.state.balance)).toBe(30);
    });

    it('version-conflict race with the attempts spent: the store error surfaces with its fields, nothing of the loser is stored', async () => {
      const store = await engine.store();
      const projection = balances();
      const options = {
        store,
        decider: account,
        retry: false as const,
        driver: engine.driver,
        projections: [projection],
      };
      const a = createCommandHandler(options);
      const b = createCommandHandler(options);
      await a.handle('account-x', { type: 'open', owner: 'ann' });
      const gate = barrier(2);
      const settled = await Promise.allSettled([
        a.handle('account-x', { type: 'deposit', amount: 10, gate: gate() }),
        b.handle('account-x', { type: 'deposit', amount: 20, gate: gate() }),
      ]);
      const rejected = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
      const fulfilled = settled.filter((s) => s.status === 'fulfilled');
      expect(fulfilled).toHaveLength(1);
      expect(rejected).toHaveLength(1);
      const err = rejected[0]!.reason as StrataError;
      expect(isStrataError(err, 'E_VERSION_CONFLICT')).toBe(true);
      expect(err.details).toEqual({ stream: 'account-x', expected: 1, actual: 2 });
      expect(err.message).not.toMatch(/10|20/);
      expect((await store.streamInfo('account-x'))?.version).toBe(2);
      // The loser's inline projection rolled back with its append.
      const [row] = await rows(engine.driver, projection.tables.balances!);
      expect(row?.balance).toBe((await store.readStream('account-x'))[1]!.data.amount);
    });

    it("a caller's expected version is checked once and never retried", async () => {
      const store = await engine.store();
      const handler = createCommandHandler({ store, decider: account });
      await handler.handle('account-e', { type: 'open', owner: 'ann' });
      await handler.handle('account-e', { type: 'deposit', amount: 1 });
      const stale = handler.handle('account-e', { type: 'deposit', amount: 1 }, { expected: 1 });
      await expect(stale).rejects.toMatchObject({
        code: 'E_VERSION_CONFLICT',
        details: { stream: 'account-e', expected: 1, actual: 2 },
      });
      const ok = await handler.handle('account-e', { type: 'deposit', amount: 1 }, { expected: 2 });
      expect(ok).toMatchObject({ nextExpectedVersion: 3, attempts: 1 });
    });

    it('eventIds make a repeated command idempotent', async () => {
      const store = await engine.store();
      const projection = balances();
      const handler = createCommandHandler({
        store,
        decider: account,
        driver: engine.driver,
        projections: [projection],
      });
      await handler.handle('account-i', { type: 'open', owner: 'ann' });
      // The second deposit is decided on balance 5 (balanceAfter 10): a different decision, refused.
      const first = await handler.handle(
        'account-i',
        { type: 'deposit', amount: 5 },
        { eventIds: ['cmd-1'] },
      );
      expect(first.alreadyAppended).toBe(false);
      await expect(
        handler.handle('account-i', { type: 'deposit', amount: 5 }, { eventIds: ['cmd-1'] }),
      ).rejects.toMatchObject({ code: 'E_DUPLICATE_EVENT' });
      // A decider that decides the same again is answered "already appended".
      const same = createCommandHandler({
        store,
        driver: engine.driver,
        projections: [projection],
        decider: {
          ...account,
          decide: async (): Promise<AccountEvent[]> => [
            { type: 'Deposited', data: { amount: 5, balanceAfter: 5 } },
          ],
        },
      });
      const repeat = await same.handle('account-i', { type: 'deposit', amount: 5 }, { eventIds: ['cmd-1'] });
      expect(repeat).toMatchObject({ alreadyAppended: true, nextExpectedVersion: 2 });
      expect((await store.readStream('account-i')).length).toBe(2);
      expect((await rows(engine.driver, projection.tables.balances!))[0]?.balance).toBe(5);
    });

    it('a decide that returns no array, or a non-event, fails with E_DECIDER and appends nothing', async () => {
      const store = await engine.store();
      const broken = createCommandHandler({
        store,
        decider: { ...account, decide: () => ({ type: 'Opened', data: {} }) as never },
      });
      const err = await broken.handle('account-d', { type: 'open', owner: 'x' }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_DECIDER', details: { stream: 'account-d', received: 'object' } });
      const notEvent = createCommandHandler({ store, decider: { ...account, decide: () => [42] as never } });
      await expect(notEvent.handle('account-d', { type: 'open', owner: 'x' })).rejects.toMatchObject({
        code: 'E_DECIDER',
        details: { index: 0 },
      });
      expect(await store.streamInfo('account-d')).toBeUndefined();
    });

    it('inline projections commit with the append, and roll back with it when a projection fails', async () => {
      const store = await engine.store();
      const good = balances();
      const bad = balances({ failOn: 'Withdrawn' });
      const handler = createCommandHandler({
        store,
        decider: account,
        driver: engine.driver,
        projections: [good, bad],
      });
      await handler.handle('account-p1', { type: 'open', owner: 'ann' });
      await handler.handle('account-p1', { type: 'deposit', amount: 7 });
      expect(await rows(engine.driver, good.tables.balances!)).toEqual([
        { account: 'account-p1', owner: 'ann', balance: 7 },
      ]);
      await expect(handler.handle('account-p1', { type: 'withdraw', amount: 2 })).rejects.toMatchObject({
        code: 'E_TEST_PROJECTION',
      });
      // The append and the first projection's write are gone with the failing one.
      expect((await store.streamInfo('account-p1'))?.version).toBe(2);
      expect(await rows(engine.driver, good.tables.balances!)).toEqual([
        { account: 'account-p1', owner: 'ann', balance: 7 },
      ]);
      expect(await rows(engine.driver, bad.tables.balances!)).toEqual([
        { account: 'account-p1', owner: 'ann', balance: 7 },
      ]);
    });

    it('an async projection reaches the same rows as the inline one, reports its position and lag, and skips redeliveries', async () => {
      const store = await engine.store();
      const inline = balances();
      const handler = createCommandHandler({
        store,
        decider: account,
        driver: engine.driver,
        projections: [inline],
      });
      for (let i = 0; i < 6; i++) {
        await handler.handle(`account-a${i}`, { type: 'open', owner: `o${i % 2}` });
        await handler.handle(`account-a${i}`, { type: 'deposit', amount: 10 + i });
        if (i % 2 === 0) await handler.handle(`account-a${i}`, { type: 'withdraw', amount: 3 });
      }
      await store.append('other-1', [{ type: 'Unrelated', data: {} }]);
      const asyncProjection = balances();
      const checkpoints = createSqlCheckpointStore(engine.driver, { tablePrefix: uniqueName('cp') });
      await checkpoints.migrate();
      const runner = createProjectionConsumer({
        projection: asyncProjection,
        store,
        driver: engine.driver,
        checkpoints,
        lease: false,
        pollInterval: '20ms',
      });
      await runner.start();
      await runner.drained();
      const expected = await rows(engine.driver, inline.tables.balances!);
      expect(expected).toHaveLength(6);
      expect(await rows(engine.driver, asyncProjection.tables.balances!)).toEqual(expected);
      const head = await store.head();
      await until(() => runner.status().position === head, 'the checkpoint to reach the head');
      expect(runner.status()).toMatchObject({
        projection: asyncProjection.name,
        position: head,
        lag: 0,
        state: 'running',
      });
      await runner.stop();
      // A second consumer from position 0 redelivers everything: the positions table skips it all.
      const again = createProjectionConsumer({
        projection: asyncProjection,
        store,
        driver: engine.driver,
        checkpoints,
        consumer: 'projection-replay',
        lease: false,
        pollInterval: '20ms',
      });
      await again.start();
      await again.drained();
      await again.stop();
      expect(await rows(engine.driver, asyncProjection.tables.balances!)).toEqual(expected);
    });

    it('rebuild: readers never see fewer rows while shadow tables fill and swap in; the new schema and indexes arrive', async () => {
      const store = await engine.store();
      const v1 = balances();
      const handler = createCommandHandler({
        store,
        decider: account,
        driver: engine.driver,
        projections: [v1],
      });
      for (let i = 0; i < 30; i++) {
        await handler.handle(`account-b${i}`, { type: 'open', owner: `o${i % 3}` });
        await handler.handle(`account-b${i}`, { type: 'deposit', amount: i });
      }
      const table = v1.tables.balances!;
      const before = await rows(engine.driver, table);
      expect(before).toHaveLength(30);
      let reads = 0;
      let lowest = Number.POSITIVE_INFINITY;
      let reading = true;
      const reader = (async () => {
        while (reading) {
          lowest = Math.min(lowest, await count(engine.driver, table));
          reads++;
          await new Promise((r) => setImmediate(r));
        }
      })();
      const v2 = balances({ name: v1.name, v2: true });
      const progress: string[] = [];
      const result = await rebuildProjection({
        projection: v2,
        store,
        driver: engine.driver,
        batchSize: 7,
        onProgress: async (p) => {
          progress.push(p.phase);
          // Let the reader read at least once more between batches (it reads live, never the shadow).
          const seen = reads;
          await until(() => reads > seen, 'a read between batches');
        },
      });
      reading = false;
      await reader;
      expect(progress.filter((p) => p === 'replay').length).toBeGreaterThan(5);
      expect(lowest).toBe(30);
      expect(result).toMatchObject({
        projection: v1.name,
        position: await store.head(),
        applied: 60,
        resumedFrom: 0,
        swapAttempts: 1,
      });
      const after = await rows(engine.driver, table);
      expect(after).toEqual(before.map((r) => ({ ...r, deposits: 1 })));
      expect(await indexNames(engine.driver, table)).toContain(`${table}_by_owner`);
      expect((await indexNames(engine.driver, table)).some((n) => n.includes('__rebuild'))).toBe(false);
      // Inline writes now land in the new table; a second rebuild finds its shadow names free.
      await handler.handle('account-b0', { type: 'deposit', amount: 100 });
      const again = await rebuildProjection({ projection: v2, store, driver: engine.driver, batchSize: 50 });
      expect(again.applied).toBe(61);
      const [b0] = await rows(engine.driver, table);
      expect(b0).toMatchObject({ account: 'account-b0', balance: 100, deposits: 2 });
    });

    it('rebuild: an inline write after the last catch-up makes the swap retry, and nothing is lost', async () => {
      const store = await engine.store();
      const projection = balances();
      const handler = createCommandHandler({
        store,
        decider: account,
        driver: engine.driver,
        projections: [projection],
      });
      for (let i = 0; i < 5; i++) {
        await handler.handle(`account-w${i}`, { type: 'open', owner: 'ann' });
        await handler.handle(`account-w${i}`, { type: 'deposit', amount: 1 });
      }
      let injected = 0;
      const result = await rebuildProjection({
        projection,
        store,
        driver: engine.driver,
        batchSize: 4,
        onProgress: async (p) => {
          // Between the catch-up and the swap: the live table moves ahead of the shadow.
          if (p.phase === 'swap' && injected++ === 0) {
            await handler.handle('account-w0', { type: 'deposit', amount: 50 });
          }
        },
      });
      // SQLite rolls the swap back and retries; PostgreSQL catches up inside the swap's transaction.
      expect(result.swapAttempts).toBe(engine.driver.dialect.name === 'postgres' ? 1 : 2);
      const table = projection.tables.balances!;
      const w0 = (await rows(engine.driver, table)).find((r) => r.account === 'account-w0');
      expect(w0?.balance).toBe(51);
      await handler.handle('account-w1', { type: 'deposit', amount: 5 });
      expect((await rows(engine.driver, table)).find((r) => r.account === 'account-w1')?.balance).toBe(6);
    });

    it('rebuild under concurrent inline writers: the swapped-in table equals a fold of every stored event', async () => {
      const store = await engine.store();
      const projection = balances();
      const handler = createCommandHandler({
        store,
        decider: account,
        driver: engine.driver,
        projections: [projection],
        retry: { attempts: 20, initialDelay: 1, maxDelay: 20 },
      });
      const accounts = Array.from({ length: 6 }, (_, i) => `account-k${i}`);
      for (const a of accounts) await handler.handle(a, { type: 'open', owner: 'ann' });
      let writing = true;
      let written = 0;
      const writers = accounts.slice(0, 3).map(async (a, w) => {
        while (writing || written < 10) {
          await handler.handle(accounts[(written + w) % accounts.length]!, { type: 'deposit', amount: 1 });
          written++;
          // Requests arrive from I/O: let other work (the rebuild) have its turns.
          await new Promise((r) => setImmediate(r));
        }
        return a;
      });
      let result: Awaited<ReturnType<typeof rebuildProjection>>;
      try {
        result = await rebuildProjection({ projection, store, driver: engine.driver, batchSize: 3 });
      } finally {
        writing = false;
        await Promise.allSettled(writers);
      }
      await Promise.all(writers);
      expect(result.position).toBeGreaterThan(0);
      const expected = await Promise.all(
        accounts.map(async (a) => ({
          account: a,
          owner: 'ann',
          balance: (await store.readStream(a)).filter((e) => e.type === 'Deposited').length,
        })),
      );
      expect(await rows(engine.driver, projection.tables.balances!)).toEqual(expected);
      expect(written).toBeGreaterThanOrEqual(10);
    });

    it('rebuild: an interrupted rebuild leaves the live table alone and resumes where it stopped', async () => {
      const store = await engine.store();
      const projection = balances();
      const handler = createCommandHandler({
        store,
        decider: account,
        driver: engine.driver,
        projections: [projection],
      });
      for (let i = 0; i < 10; i++) {
        await handler.handle(`account-s${i}`, { type: 'open', owner: 'ann' });
        await handler.handle(`account-s${i}`, { type: 'deposit', amount: 2 });
      }
      const table = projection.tables.balances!;
      const before = await rows(engine.driver, table);
      let batches = 0;
      await expect(
        rebuildProjection({
          projection,
          store,
          driver: engine.driver,
          batchSize: 4,
          onProgress: (p) => {
            if (p.phase === 'replay' && ++batches === 2) throw new Error('interrupted');
          },
        }),
      ).rejects.toThrow('interrupted');
      expect(await rows(engine.driver, table)).toEqual(before);
      const resumed = await rebuildProjection({ projection, store, driver: engine.driver, batchSize: 4 });
      expect(resumed.resumedFrom).toBeGreaterThan(0);
      expect(resumed.applied).toBe(20 - 8);
      expect(await rows(engine.driver, table)).toEqual(before);
      // restart: true replays from zero even though a resumable state could exist.
      const restarted = await rebuildProjection({ projection, store, driver: engine.driver, restart: true });
      expect(restarted).toMatchObject({ resumedFrom: 0, applied: 20 });
    });

    it('rebuild of a projection limited to some stream types rebuilds exactly what its consumer sees', async () => {
      const store = await engine.store();
      const projection = balances({ streamTypes: ['account'] });
      const handler = createCommandHandler({ store, decider: account });
      const tag = uniqueName('st');
      for (let i = 0; i < 3; i++) {
        await handler.handle(`account-${tag}${i}`, { type: 'open', owner: 'ann' });
        await handler.handle(`savings-${tag}${i}`, { type: 'open', owner: 'bob' });
      }
      const runner = createProjectionConsumer({
        projection,
        store,
        driver: engine.driver,
        lease: false,
        pollInterval: '20ms',
      });
      await runner.start();
      await runner.drained();
      await runner.stop();
      const table = projection.tables.balances!;
      const consumed = await rows(engine.driver, table);
      expect(consumed.map((r) => String(r.account).split('-')[0])).toEqual(['account', 'account', 'account']);
      await rebuildProjection({ projection, store, driver: engine.driver, batchSize: 2 });
      expect(await rows(engine.driver, table)).toEqual(consumed);
    });

    it('rebuild of an async projection moves its checkpoint, and the running consumer keeps the new table right', async () => {
      const store = await engine.store();
      const projection = balances();
      const handler = createCommandHandler({ store, decider: account });
      for (let i = 0; i < 4; i++) {
        await handler.handle(`account-c${i}`, { type: 'open', owner: 'ann' });
        await handler.handle(`account-c${i}`, { type: 'deposit', amount: 3 });
      }
      const checkpoints = createSqlCheckpointStore(engine.driver, { tablePrefix: uniqueName('cp') });
      await checkpoints.migrate();
      const runner = createProjectionConsumer({
        projection,
        store,
        driver: engine.driver,
        checkpoints,
        lease: false,
        pollInterval: '20ms',
      });
      await runner.start();
      await runner.drained();
      const result = await rebuildProjection({ projection, store, driver: engine.driver, checkpoints });
      expect((await checkpoints.load(runner.name))?.offset).toBeGreaterThanOrEqual(result.position);
      await handler.handle('account-c0', { type: 'deposit', amount: 10 });
      await runner.drained();
      await runner.stop();
      const table = projection.tables.balances!;
      const found = await rows(engine.driver, table);
      expect(found).toHaveLength(4);
      expect(found.find((r) => r.account === 'account-c0')?.balance).toBe(13);
      expect(found.filter((r) => r.account !== 'account-c0').every((r) => r.balance === 3)).toBe(true);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Engines

const dir = tempDir('strata-cqrs-');

/** An engine over `driver`: a fresh store (its own table prefix) per call, all closed at the end. */
function engineOn(
  driver: SqlDriver,
  open: (options: { driver: never; tablePrefix: string }) => EventStore,
  dispose: () => Promise<void> | void,
): Engine & { close(): Promise<void> } {
  const stores: EventStore[] = [];
  return {
    driver,
    async store() {
      const s = open({ driver: driver as never, tablePrefix: `es${stores.length}` });
      stores.push(s);
      await s.migrate();
      return s;
    },
    async close() {
      for (const s of stores) await s.close();
      await driver.close();
      await dispose();
    },
  };
}

describeCqrs('sqlite', async () =>
  engineOn(createSqliteDriver(join(dir.path, 'cqrs.db')), createSqliteEventStore, () => dir.remove()),
);

describe.skipIf(!services.postgres)('postgres', () => {
  describeCqrs('postgres', async () => {
    const testDb = await createPostgresTestDatabase({ prefix: 'strata_cqrs' });
    const driver = createPostgresDriver({ url: testDb.url, maxConnections: 12 });
    return engineOn(driver, createPostgresEventStore, () => testDb.drop());
  });
});

describe('cqrs bad input', () => {
  const driver = createSqliteDriver(':memory:');
  const store = createSqliteEventStore({ driver });
  afterAll(async () => {
    await store.close();
    await driver.close();
  });

  it('refuses invalid projection names and table identifiers with E_CONFIG naming the option', () => {
    const base = {
      name: 'ok',
      tables: { rows: 'ok_rows' },
      handles: ['A'],
      schema: () => sql`select 1`,
      apply: () => undefined,
    };
    const option = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        expect(isStrataError(err, 'E_CONFIG')).toBe(true);
        return (err as StrataError).details.option;
      }
      throw new Error('expected E_CONFIG');
    };
    expect(option(() => defineProjection({ ...base, name: 'bad-name' }))).toBe('name');
    expect(option(() => defineProjection({ ...base, name: 'x'.repeat(44) }))).toBe('name');
    expect(option(() => defineProjection({ ...base, tables: { rows: 'rows; drop table x' } }))).toBe(
      'tables.rows',
    );
    expect(option(() => defineProjection({ ...base, tables: { rows: 'ok_rows__rebuild' } }))).toBe(
      'tables.rows',
    );
    expect(option(() => defineProjection({ ...base, tables: { a: 'same', b: 'SAME' } }))).toBe('tables.b');
    expect(option(() => defineProjection({ ...base, tables: {} }))).toBe('tables');
    expect(option(() => defineProjection({ ...base, handles: [] }))).toBe('handles');
    expect(option(() => defineProjection({ ...base, apply: 'no' as never }))).toBe('apply');
    const p = defineProjection(base);
    expect(Object.isFrozen(p)).toBe(true);
    expect(option(() => createCommandHandler({ store, decider: account, projections: [p] }))).toBe('driver');
    expect(
      option(() =>
        createCommandHandler({ store, decider: account, projections: [{ ...p }] as never, driver }),
      ),
    ).toBe('projections[0]');
    expect(option(() => createCommandHandler({ store, decider: account, retry: { attempts: 0 } }))).toBe(
      'retry.attempts',
    );
    expect(
      option(() => createCommandHandler({ store, decider: { ...account, evolve: undefined as never } })),
    ).toBe('decider.evolve');
    expect(option(() => createCommandHandler({ store: {} as never, decider: account }))).toBe('store');
    expect(
      option(() => createProjectionConsumer({ projection: p, store, driver, consumer: 'bad name' })),
    ).toBe('consumer');
  });

  it('refuses bad handle arguments and rebuild options with typed errors', async () => {
    const handler = createCommandHandler({ store, decider: account });
    await expect(handler.handle('', { type: 'open', owner: 'x' })).rejects.toMatchObject({
      code: 'E_VALIDATION',
    });
    await expect(
      handler.handle('account-1', { type: 'open', owner: 'x' }, { eventIds: [''] }),
    ).rejects.toMatchObject({ code: 'E_VALIDATION' });
    const twoIds = createCommandHandler({
      store,
      decider: {
        ...account,
        decide: () =>
          [
            { type: 'A', data: {} },
            { type: 'B', data: {} },
          ] as never,
      },
    });
    await expect(
      twoIds.handle('account-2', { type: 'open', owner: 'x' }, { eventIds: ['one'] }),
    ).rejects.toMatchObject({
      code: 'E_DECIDER',
      details: { events: 2, eventIds: 1 },
    });
    const projection = balances();
    await expect(rebuildProjection({ projection, store, driver, batchSize: 0 })).rejects.toMatchObject({
      code: 'E_CONFIG',
      details: { option: 'batchSize' },
    });
    await expect(rebuildProjection({ projection, store, driver, tablePrefix: 'x y' })).rejects.toMatchObject({
      code: 'E_CONFIG',
      details: { option: 'tablePrefix' },
    });
  });
});
