import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { services, tempDir, uniqueName } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { isStrataError, type StrataError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { FakeClock } from '../testing/fake-clock.js';
import { createIdGenerator, type IdGenerator } from './ids.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

const T = Date.UTC(2026, 0, 1);

/** Two independent connections to one database, as two processes would have. */
const engines = [
  {
    name: 'sqlite',
    enabled: true,
    open: async (): Promise<[SqlDriver, SqlDriver]> => {
      const dir = tempDir('strata-ids-');
      const file = join(dir.path, 'ids.db');
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
      const database = await createPostgresTestDatabase({ prefix: 'ids' });
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

/** Polls `condition` every 10 ms for at most 10 s. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.each(engines)('id worker allocation on $name', (engine) => {
  it.skipIf(!engine.enabled)(
    'gives generators on two connections distinct worker ids, and their ids never collide',
    async () => {
      const [a, b] = await engine.open();
      const name = uniqueName('ids');
      const generators: IdGenerator[] = await Promise.all(
        [a, b, a, b, a, b].map((store) => createIdGenerator({ allocate: { store, name } })),
      );
      cleanups.push(() => Promise.all(generators.map((g) => g.close())).then(() => undefined));
      expect(generators.map((g) => g.workerId).sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5]);
      const seen = new Set<number>();
      for (let round = 0; round < 500; round++) for (const g of generators) seen.add(g.next());
      expect(seen.size).toBe(3_000);
      for (const g of generators) expect(g.leaseExpiresAt).toBeGreaterThan(Date.now());

      // Another id space leases independently.
      const other = await createIdGenerator({ allocate: { store: b, name: `${name}_other` } });
      expect(other.workerId).toBe(0);
      await other.close();
    },
  );

  it.skipIf(!engine.enabled)(
    'fails with E_EXHAUSTED naming the space and the maximum when every slot is leased',
    async () => {
      const [a, b] = await engine.open();
      const name = uniqueName('full');
      const generators = await Promise.all(
        Array.from({ length: 32 }, (_, i) => createIdGenerator({ allocate: { store: i % 2 ? a : b, name } })),
      );
      cleanups.push(() => Promise.all(generators.map((g) => g.close())).then(() => undefined));
      expect(new Set(generators.map((g) => g.workerId)).size).toBe(32);
      const err = await rejected(createIdGenerator({ allocate: { store: a, name } }));
      expect(err.code).toBe('E_EXHAUSTED');
      expect(err.details).toMatchObject({ name, maxWorkers: 32 });
      expect(err.message).toContain(name);
      expect(err.message).toContain('32');

      // Closing one frees its slot for the next generator, from the millisecond after its last id.
      const freed = generators[5]!;
      freed.next();
      await freed.close();
      const closedAt = Date.now();
      await until(() => Date.now() > closedAt + 1, 'the millisecond after the close');
      const next = await createIdGenerator({ allocate: { store: b, name } });
      expect(next.workerId).toBe(freed.workerId);
      await next.close();
    },
  );

  it.skipIf(!engine.enabled)(
    'hands a released slot to the next generator at once, which starts after the last id',
    async () => {
      const [a, b] = await engine.open();
      const name = uniqueName('reuse');
      // Both clocks stand in the same millisecond: the release and the next lease coincide.
      const first = await createIdGenerator({ allocate: { store: a, name }, clock: new FakeClock(T) });
      const issued = [first.next(), first.next(), first.next()];
      await first.close();
      const clock = new FakeClock(T);
      const second = await createIdGenerator({ allocate: { store: b, name }, clock });
      expect(second.workerId).toBe(first.workerId);
      // Its first id waits for the millisecond after the last one of the slot's previous holder.
      clock.set(T + 1);
      const next = second.next();
      expect(next).toBeGreaterThan(Math.max(...issued));
      expect(second.decode(next).time.getTime()).toBeGreaterThan(T);
      await second.close();
    },
  );

  it.skipIf(!engine.enabled)(
    "lets a new owner take a dead owner's slot after expiry, and fences the old one",
    async () => {
      const [a, b] = await engine.open();
      const name = uniqueName('expiry');
      const deadClock = new FakeClock(T);
      const errors: unknown[] = [];
      const dead = await createIdGenerator({
        allocate: { store: a, name, leaseTtl: '3s', onError: (err) => errors.push(err) },
        clock: deadClock,
      });
      expect(dead.workerId).toBe(0);
      const lastOfDead = dead.next();

      // Before the lease ends the slot is busy: a newcomer gets the next one.
      const early = await createIdGenerator({
        allocate: { store: b, name, leaseTtl: '3s' },
        clock: new FakeClock(T + 2_999),
      });
      expect(early.workerId).toBe(1);

      // The dead owner never renewed (its clock, and so its renewal timer, stood still).
      const laterClock = new FakeClock(T + 3_000);
      const successor = await createIdGenerator({
        allocate: { store: b, name, leaseTtl: '3s' },
        clock: laterClock,
      });
      expect(successor.workerId).toBe(0);
      const firstOfSuccessor = successor.next();
      expect(firstOfSuccessor).toBeGreaterThan(lastOfDead);
      expect(successor.decode(firstOfSuccessor).time.getTime()).toBeGreaterThanOrEqual(T + 3_000);

      // The old owner wakes up: its lease has lapsed, so it issues nothing ...
      deadClock.set(T + 3_000);
      expect(caught(() => dead.next()).code).toBe('E_FENCED');
      // ... and its renewal finds the slot taken, so it stays fenced even within a new ttl.
      await deadClock.advance(1_000);
      await until(() => errors.length > 0, 'the failed renewal');
      deadClock.set(T + 3_000);
      const fenced = caught(() => dead.next());
      expect(fenced.code).toBe('E_FENCED');
      expect(fenced.details).toMatchObject({ lost: true, workerId: 0 });
      expect(errors).toHaveLength(1);
      expect(isStrataError(errors[0], 'E_FENCED')).toBe(true);

      await dead.close();
      // The dead owner's close must not release a slot that is no longer its own.
      const { rows } = await a.query<{ owner: string | null }>(
        sql`select owner from strata_id_workers where name = ${name} and worker_id = ${0}`,
      );
      expect(rows[0]?.owner).not.toBeNull();
      await early.close();
      await successor.close();
    },
  );

  it.skipIf(!engine.enabled)(
    'renews its lease in the background and keeps issuing past the first expiry',
    async () => {
      const [a] = await engine.open();
      const name = uniqueName('renew');
      const clock = new FakeClock(T);
      const ids = await createIdGenerator({ allocate: { store: a, name, leaseTtl: '3s' }, clock });
      expect(ids.leaseExpiresAt).toBe(T + 3_000);
      for (let step = 1; step <= 6; step++) {
        await clock.advance(1_000);
        await until(() => ids.leaseExpiresAt! > clock.now() + 2_000, `renewal ${step}`);
        expect(() => ids.next()).not.toThrow();
      }
      expect(clock.now()).toBeGreaterThan(T + 3_000);
      await ids.close();
      const { rows } = await a.query<{ owner: string | null; expires_at: number | string }>(
        sql`select owner, expires_at from strata_id_workers where name = ${name}`,
      );
      expect(rows).toHaveLength(1);
      expect(rows[0]!.owner).toBeNull();
      expect(Number(rows[0]!.expires_at)).toBe(clock.now() + 1);
    },
  );

  it.skipIf(!engine.enabled)('keeps the bigint64 layout to its 1024 workers', async () => {
    const [a, b] = await engine.open();
    const name = uniqueName('big');
    const first = await createIdGenerator({ allocate: { store: a, name }, layout: 'bigint64' });
    const second = await createIdGenerator({ allocate: { store: b, name }, layout: 'bigint64' });
    expect([first.workerId, second.workerId].sort()).toEqual([0, 1]);
    expect(typeof first.next()).toBe('bigint');
    expect(first.next()).not.toBe(second.next());
    await first.close();
    await second.close();
  });
});
