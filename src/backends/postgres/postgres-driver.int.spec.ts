import { createServer, type Server, type Socket } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { services, uniqueName } from '../../../test/helpers.js';
import { isStrataError } from '../../core/errors.js';
import { type SqlTransaction, sql } from '../../core/sql.js';
import { describeSqlDriverConformance } from '../../testing/sql-driver-conformance.js';
import { createPostgresDriver, type PostgresDriver } from './postgres-driver.js';
import { createPostgresTestDatabase, type PostgresTestDatabase } from './postgres-test-database.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Polls `condition` every few milliseconds; fails after `timeoutMs` instead of waiting forever. */
async function until(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
  });
}

describe.skipIf(!services.postgres)('postgres driver', () => {
  let testDb: PostgresTestDatabase;
  let db: PostgresDriver;

  beforeAll(async () => {
    testDb = await createPostgresTestDatabase({ prefix: 'strata_pg_driver' });
    db = createPostgresDriver(testDb.url);
  });

  afterAll(async () => {
    await db?.close();
    await testDb?.drop();
  });

  describeSqlDriverConformance('postgres', () => createPostgresDriver(testDb.url));

  describe('connection faults', () => {
    it('reports a closed port as E_CONNECTION naming host and port', async () => {
      const probe = createServer();
      const port = await listen(probe);
      await new Promise((r) => probe.close(r));
      const dead = createPostgresDriver({
        url: `postgres://postgres@127.0.0.1:${port}/postgres`,
        connectTimeout: '1s',
      });
      const err = await dead.query('select 1').catch((e: unknown) => e);
      await dead.close();
      expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
      expect(err).toMatchObject({ host: '127.0.0.1', port, details: { reason: 'connection refused' } });
      expect((err as Error).message).toContain(`127.0.0.1:${port}`);
    });

    it('gives up on a server that accepts but never answers, within the connect timeout', async () => {
      const sockets: Socket[] = [];
      const blackhole = createServer((socket) => {
        sockets.push(socket);
      });
      const port = await listen(blackhole);
      const stuck = createPostgresDriver({
        url: `postgres://postgres@127.0.0.1:${port}/postgres`,
        connectTimeout: '1s',
      });
      try {
        const queried = await stuck.query('select 1').catch((e: unknown) => e);
        expect(queried).toMatchObject({
          code: 'E_CONNECTION',
          details: { reason: 'timed out after 1000 ms' },
        });
        const pinged = await stuck.ping().catch((e: unknown) => e);
        expect(pinged).toMatchObject({ code: 'E_CONNECTION', port });
        const tx = await stuck.transaction(async () => 1).catch((e: unknown) => e);
        expect(tx).toMatchObject({ code: 'E_CONNECTION' });
      } finally {
        await stuck.close();
        for (const socket of sockets) socket.destroy();
        await new Promise((r) => blackhole.close(r));
      }
    }, 20_000);

    it('reports a missing database without revealing the password', async () => {
      const url = new URL(testDb.url);
      url.password = 'supersecret';
      url.pathname = `/${uniqueName('strata_missing')}`;
      const missing = createPostgresDriver(url.toString());
      const err = await missing.query('select 1').catch((e: unknown) => e);
      const pinged = await missing.ping().catch((e: unknown) => e);
      await missing.close();
      expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
      expect(err).toMatchObject({ details: { reason: 'database does not exist', sqlState: '3D000' } });
      expect(pinged).toMatchObject({ code: 'E_CONNECTION' });
      for (const e of [err, pinged]) {
        expect((e as Error).message).not.toContain('supersecret');
        expect(JSON.stringify((e as { details: unknown }).details)).not.toContain('supersecret');
        expect(JSON.stringify(e)).not.toContain('supersecret');
      }
    });

    it('survives an idle pooled connection being terminated, and reports it in the background', async () => {
      const reported = deferred();
      const background: unknown[] = [];
      const victim = createPostgresDriver({
        url: testDb.url,
        onBackgroundError: (err) => {
          background.push(err);
          reported.resolve();
        },
      });
      const before = await victim.query<{ pid: number }>('select pg_backend_pid() as pid');
      const pid = before.rows[0]!.pid;
      await db.query(sql`select pg_terminate_backend(${pid}, 5000)`);
      await reported.promise;
      expect(background[0]).toMatchObject({ code: 'E_CONNECTION' });
      const after = await victim.query<{ pid: number }>('select pg_backend_pid() as pid');
      expect(after.rows[0]!.pid).not.toBe(pid);
      await victim.close();
    });

    it('fails a transaction whose connection is terminated mid-way and never reuses that connection', async () => {
      const single = createPostgresDriver({ url: testDb.url, maxConnections: 1 });
      let pid = 0;
      const err = await single
        .transaction(async (tx) => {
          pid = (await tx.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
          await db.query(sql`select pg_terminate_backend(${pid}, 5000)`);
          await tx.query('select 1');
        })
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONNECTION')).toBe(true);
      const next = await single.query<{ pid: number }>('select pg_backend_pid() as pid');
      expect(next.rows[0]!.pid).not.toBe(pid);
      await single.close();
    });

    it('answers a wait for a pooled connection past the connect timeout with E_TIMEOUT, not a hang', async () => {
      const single = createPostgresDriver({ url: testDb.url, maxConnections: 1, connectTimeout: '300ms' });
      const err = await single
        .transaction(async () => {
          await single.query('select 1');
        })
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_TIMEOUT')).toBe(true);
      await single.close();
    });
  });

  describe('transactions', () => {
    beforeAll(async () => {
      await db.exec(`
        create table counter (id integer primary key, n integer not null);
        create table pair (id integer primary key, n integer not null);
        create table notes (id integer primary key, body text not null);
      `);
    });

    async function racingIncrements(retry: boolean) {
      await db.query(sql`delete from counter`);
      await db.query(sql`insert into counter (id, n) values (${1}, ${0})`);
      const readA = deferred();
      const readB = deferred();
      // Each reads, waits until the other has read too, then writes what it read plus one.
      const body = (mine: typeof readA, other: typeof readA) => async (tx: SqlTransaction) => {
        const { rows } = await tx.query<{ n: number }>(sql`select n from counter where id = ${1}`);
        mine.resolve();
        await other.promise;
        await tx.query(sql`update counter set n = ${rows[0]!.n + 1} where id = ${1}`);
      };
      const options = { isolation: 'serializable' as const, ...(retry ? { retry: true } : {}) };
      const results = await Promise.allSettled([
        db.transaction(body(readA, readB), options),
        db.transaction(body(readB, readA), options),
      ]);
      const { rows } = await db.query<{ n: number }>(sql`select n from counter where id = ${1}`);
      return { results, n: rows[0]!.n };
    }

    it('reports a real serialization failure as E_SERIALIZATION (40001) without retry', async () => {
      const { results, n } = await racingIncrements(false);
      const rejected = results.filter((r) => r.status === 'rejected');
      expect(rejected).toHaveLength(1);
      expect((rejected[0] as PromiseRejectedResult).reason).toMatchObject({
        code: 'E_SERIALIZATION',
        sqlState: '40001',
      });
      expect(n).toBe(1);
    });

    it('retries the losing serializable transaction when asked, so both increments land', async () => {
      const { results, n } = await racingIncrements(true);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
      expect(n).toBe(2);
    });

    async function crossingLocks(retry: boolean) {
      await db.query(sql`delete from pair`);
      await db.query(sql`insert into pair (id, n) values (${1}, ${0}), (${2}, ${0})`);
      const lockedA = deferred();
      const lockedB = deferred();
      const body =
        (first: number, second: number, mine: typeof lockedA, other: typeof lockedA) =>
        async (tx: SqlTransaction) => {
          await tx.query(sql`update pair set n = n + 1 where id = ${first}`);
          mine.resolve();
          await other.promise;
          await tx.query(sql`update pair set n = n + 1 where id = ${second}`);
        };
      const options = retry ? { retry: true } : {};
      const results = await Promise.allSettled([
        db.transaction(body(1, 2, lockedA, lockedB), options),
        db.transaction(body(2, 1, lockedB, lockedA), options),
      ]);
      const { rows } = await db.query<{ n: number }>(sql`select n from pair order by id`);
      return { results, counts: rows.map((r) => r.n) };
    }

    it('reports a real deadlock as E_SERIALIZATION (40P01) without retry', async () => {
      const { results, counts } = await crossingLocks(false);
      const rejected = results.filter((r) => r.status === 'rejected');
      expect(rejected).toHaveLength(1);
      expect((rejected[0] as PromiseRejectedResult).reason).toMatchObject({
        code: 'E_SERIALIZATION',
        sqlState: '40P01',
      });
      expect(counts).toEqual([1, 1]);
    });

    it('retries the deadlock victim when asked, so both transactions complete', async () => {
      const { results, counts } = await crossingLocks(true);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
      expect(counts).toEqual([2, 2]);
    });

    it('applies the isolation level and read-only mode', async () => {
      const level = await db.transaction(
        async (tx) =>
          (await tx.query<{ transaction_isolation: string }>('show transaction_isolation')).rows[0],
        { isolation: 'repeatable read' },
      );
      expect(level).toEqual({ transaction_isolation: 'repeatable read' });
      const err = await db
        .transaction(async (tx) => tx.query(sql`insert into notes (id, body) values (${1}, ${'x'})`), {
          readOnly: true,
        })
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_QUERY', sqlState: '25006' });
    });

    it('refuses to report success when PostgreSQL rolled the transaction back at COMMIT', async () => {
      const err = await db
        .transaction(async (tx) => {
          await tx.query(sql`insert into notes (id, body) values (${10}, ${'kept?'})`);
          await tx.query('selec 1').catch(() => undefined);
        })
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_TRANSACTION')).toBe(true);
      expect((await db.query(sql`select id from notes where id = ${10}`)).rowCount).toBe(0);
    });

    it('rolls back a savepoint whose failed statement was swallowed, keeping the outer transaction usable', async () => {
      await db.transaction(async (tx) => {
        const inner = await tx
          .transaction(async (sp) => {
            await sp.query(sql`insert into notes (id, body) values (${20}, ${'inner'})`);
            await sp.query('selec 1').catch(() => undefined);
          })
          .catch((e: unknown) => e);
        expect(inner).toMatchObject({ code: 'E_QUERY', sqlState: '25P02' });
        await tx.query(sql`insert into notes (id, body) values (${21}, ${'outer'})`);
      });
      const { rows } = await db.query<{ id: number }>(sql`select id from notes where id in (${20}, ${21})`);
      expect(rows).toEqual([{ id: 21 }]);
    });

    it('serialises concurrent nested transactions on one handle and drops hooks of rolled-back savepoints', async () => {
      const calls: string[] = [];
      await db.transaction(async (tx) => {
        await Promise.all([
          tx.transaction(async (sp) => {
            sp.afterCommit(() => {
              calls.push('first');
            });
            await sp.query(sql`insert into notes (id, body) values (${30}, ${'a'})`);
          }),
          tx.transaction(async (sp) => {
            sp.afterCommit(() => {
              calls.push('second');
            });
            await sp.query(sql`insert into notes (id, body) values (${31}, ${'b'})`);
          }),
          tx
            .transaction(async (sp) => {
              sp.afterCommit(() => {
                calls.push('rolled back');
              });
              throw new Error('undo');
            })
            .catch(() => undefined),
        ]);
      });
      expect(calls).toEqual(['first', 'second']);
      expect((await db.query(sql`select id from notes where id in (${30}, ${31})`)).rowCount).toBe(2);
    });

    it('fails fast when an outer handle is used inside its own savepoint', async () => {
      const err = await db
        .transaction(async (tx) => tx.transaction(async () => tx.transaction(async () => 1)))
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_TRANSACTION')).toBe(true);
    });

    it('lets the driver itself be used inside a transaction (another pooled connection)', async () => {
      const seen = await db.transaction(async (tx) => {
        await tx.query(sql`insert into notes (id, body) values (${40}, ${'uncommitted'})`);
        return (await db.query(sql`select id from notes where id = ${40}`)).rowCount;
      });
      expect(seen).toBe(0);
    });

    it('makes a second transaction wait for the only connection, then run', async () => {
      const single = createPostgresDriver({ url: testDb.url, maxConnections: 1, connectTimeout: '10s' });
      const gate = deferred();
      const order: string[] = [];
      const first = single.transaction(async (tx) => {
        order.push('first start');
        await tx.query('select 1');
        await gate.promise;
        order.push('first end');
      });
      await until(() => order.includes('first start'));
      const second = single.transaction(async (tx) => {
        order.push('second start');
        await tx.query('select 1');
      });
      await until(() => (single.pool as unknown as pg.Pool).waitingCount === 1);
      expect(order).toEqual(['first start']);
      gate.resolve();
      await Promise.all([first, second]);
      expect(order).toEqual(['first start', 'first end', 'second start']);
      await single.close();
    });
  });

  describe('statements', () => {
    it('quotes schema-qualified identifiers and stores hostile values verbatim', async () => {
      await db.exec(
        'create schema inj; create table inj.items (id integer primary key, v text); create table x (id integer)',
      );
      const hostile = `'); drop table x; --`;
      await db.query(
        sql`insert into ${sql.id('inj', 'items')} (${sql.id('id')}, ${sql.id('v')}) values (${1}, ${hostile})`,
      );
      const { rows } = await db.query<{ v: string }>(
        sql`select v from ${sql.id('inj', 'items')} where v = ${hostile}`,
      );
      expect(rows).toEqual([{ v: hostile }]);
      expect((await db.query(sql`select count(*) as n from ${sql.id('x')}`)).rows).toEqual([{ n: 0 }]);
      for (const bad of ['items"; drop table x; --', 'inj.items', 'x y', '"x"']) {
        expect(() => sql.id('inj', bad)).toThrow(expect.objectContaining({ code: 'E_IDENTIFIER' }));
      }
    });

    it('parses int8 as a number when safe and as a BigInt beyond 2^53 - 1', async () => {
      const { rows } = await db.query<{ n: unknown; big: unknown; arr: unknown; neg: unknown }>(
        `select count(*) as n, 9007199254740993::int8 as big, array[1, 9007199254740993, null]::int8[] as arr,
                (-9007199254740991)::int8 as neg`,
      );
      expect(rows[0]).toEqual({
        n: 1,
        big: 9007199254740993n,
        arr: [1, 9007199254740993n, null],
        neg: -9007199254740991,
      });
      expect(typeof rows[0]!.n).toBe('number');
      expect(pg.types.getTypeParser(20, 'text')('1')).toBe('1');
    });

    it('rejects several statements in one query but runs them through exec', async () => {
      const err = await db.query('select 1; select 2').catch((e: unknown) => e);
      expect(isStrataError(err, 'E_QUERY')).toBe(true);
      await db.exec(
        'create table script_a (id integer); insert into script_a values (1); insert into script_a values (2)',
      );
      expect((await db.query('select id from script_a')).rowCount).toBe(2);
    });

    it('reports statements past statementTimeout as E_TIMEOUT', async () => {
      const hurried = createPostgresDriver({ url: testDb.url, statementTimeout: '100ms' });
      const err = await hurried.query('select pg_sleep(5)').catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_TIMEOUT', timeoutMs: 100 });
      await hurried.close();
    });

    it('sets the application name', async () => {
      const named = createPostgresDriver({ url: testDb.url, applicationName: 'strata_spec' });
      const { rows } = await named.query<{ application_name: string }>(
        'select application_name from pg_stat_activity where pid = pg_backend_pid()',
      );
      expect(rows).toEqual([{ application_name: 'strata_spec' }]);
      await named.close();
    });

    it('uses a caller-supplied pool without ending it', async () => {
      const pool = new pg.Pool({ connectionString: testDb.url, max: 2 });
      const mine = createPostgresDriver({ pool });
      expect((await mine.query('select count(*) as n')).rows).toEqual([{ n: 1 }]);
      await mine.transaction(async (tx) => {
        await tx.query('select 1');
      });
      await mine.close();
      await expect(mine.query('select 1')).rejects.toMatchObject({ code: 'E_CLOSED' });
      expect((await pool.query<{ ok: number }>('select 1 as ok')).rows).toEqual([{ ok: 1 }]);
      await pool.end();
    });
  });

  describe('createPostgresTestDatabase', () => {
    it('creates a fresh database and drops it, twice safely', async () => {
      const scratch = await createPostgresTestDatabase({ prefix: 'strata_scratch' });
      const exists = () => db.query(sql`select 1 from pg_database where datname = ${scratch.name}`);
      expect((await exists()).rowCount).toBe(1);
      const inside = createPostgresDriver({ url: scratch.url, onBackgroundError: () => undefined });
      await inside.ping();
      // Dropped WITH (FORCE): a session still connected does not block it.
      await scratch.drop();
      await scratch.drop();
      expect((await exists()).rowCount).toBe(0);
      await inside.close();
    });

    it('rejects a hostile prefix with E_CONFIG', async () => {
      await expect(
        createPostgresTestDatabase({ prefix: 'x"; drop database postgres; --' }),
      ).rejects.toMatchObject({
        code: 'E_CONFIG',
        option: 'prefix',
      });
    });
  });
});
