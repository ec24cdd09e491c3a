import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { services, tempDir, uniqueName } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import {
  createPostgresTestDatabase,
  type PostgresTestDatabase,
} from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { isStrataError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { FakeClock } from '../testing/fake-clock.js';
import {
  createTimePartitioning,
  type ExpiredPartition,
  inspectTimePartitioning,
  type TimePartitioningOptions,
} from './partitions.js';

const MARCH_15 = Date.UTC(2026, 2, 15, 12);

/** One engine the shared tests run on: a store, the table DDL, and how to see where rows live. */
interface Engine {
  name: 'sqlite' | 'postgres';
  driver: () => SqlDriver;
  /** Column definitions with `created_at` as the engine's epoch-ms column. */
  epochColumns: string;
  /** Rows per partition table, read from the engine itself (not through `status`). */
  rowsByTable(table: string): Promise<Record<string, number>>;
  /** Names of partitions (or period tables) that exist, sorted. */
  partitions(table: string): Promise<string[]>;
  /** Plain tables whose name starts with `prefix`, sorted. */
  tablesLike(prefix: string): Promise<string[]>;
}

async function expectCode(promise: Promise<unknown>, code: string, option?: string): Promise<void> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isStrataError(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
  if (option !== undefined) expect((err as { option?: string }).option).toBe(option);
}

function sharedSuite(engine: Engine): void {
  let db: SqlDriver;
  beforeAll(() => {
    db = engine.driver();
  });

  function partitioning(table: string, clock: FakeClock, extra: Partial<TimePartitioningOptions> = {}) {
    return createTimePartitioning(db, { table, column: 'created_at', period: 'month', clock, ...extra });
  }

  it('premakes the current period and `premake` ahead, and maintain is idempotent', async () => {
    const table = uniqueName('pre');
    const clock = new FakeClock(MARCH_15);
    const parts = partitioning(table, clock, { premake: 2 });
    const first = await parts.migrate(engine.epochColumns);
    const expected = [`${table}_p2026_03`, `${table}_p2026_04`, `${table}_p2026_05`];
    expect(first.created).toEqual(expected);
    expect(await engine.partitions(table)).toEqual(expected);

    const again = await parts.maintain();
    expect(again).toMatchObject({
      created: [],
      movedFromDefault: 0,
      detached: [],
      dropped: [],
      handedOff: [],
    });
    expect(await engine.partitions(table)).toEqual(expected);

    await clock.advance(31 * 86_400_000);
    const next = await parts.maintain();
    expect(next.created).toEqual([`${table}_p2026_06`]);
  });

  it('routes rows to the partition of their timestamp and reads them all through the table', async () => {
    const table = uniqueName('route');
    const parts = partitioning(table, new FakeClock(MARCH_15), { premake: 1 });
    await parts.migrate(engine.epochColumns);
    const written = await parts.insertMany([
      { id: 1, created_at: new Date('2026-03-01T00:00:00Z'), body: 'a' },
      { id: 2, created_at: Date.parse('2026-03-31T23:59:59.999Z'), body: 'b' },
      { id: 3, created_at: '2026-04-01T00:00:00Z', body: 'c' },
    ]);
    expect(written.map((w) => w.table)).toEqual([
      `${table}_p2026_03`,
      `${table}_p2026_03`,
      `${table}_p2026_04`,
    ]);
    expect(await engine.rowsByTable(table)).toEqual({ [`${table}_p2026_03`]: 2, [`${table}_p2026_04`]: 1 });
    const { rows } = await db.query<{ id: number; created_at: unknown }>(
      sql`select id, created_at from ${sql.id(table)} order by id`,
    );
    expect(rows.map((r) => r.id)).toEqual([1, 2, 3]);
    expect(Number(rows[1]!.created_at)).toBe(Date.parse('2026-03-31T23:59:59.999Z'));
    expect(parts.partitionOf('2026-04-30T10:00:00Z')).toBe(`${table}_p2026_04`);
  });

  it('status counts the rows of every partition', async () => {
    const table = uniqueName('stat');
    const parts = partitioning(table, new FakeClock(MARCH_15), { premake: 1 });
    await parts.migrate(engine.epochColumns);
    await parts.insertMany([
      { id: 1, created_at: Date.UTC(2026, 2, 2) },
      { id: 2, created_at: Date.UTC(2026, 2, 3) },
      { id: 3, created_at: Date.UTC(2026, 3, 3) },
    ]);
    const status = (await parts.status()).filter((s) => s.kind === 'partition');
    expect(status.map((s) => [s.name, s.rows])).toEqual([
      [`${table}_p2026_03`, 2],
      [`${table}_p2026_04`, 1],
    ]);
    expect(status[0]!.from).toEqual(new Date('2026-03-01T00:00:00Z'));
    expect(status[0]!.to).toEqual(new Date('2026-04-01T00:00:00Z'));
    expect(status[0]!.bytes).toBeGreaterThan(0);
    expect(status.every((s) => s.expired === false)).toBe(true);
  });

  it('drops exactly the partitions whose period ended before the retention window', async () => {
    const table = uniqueName('drop');
    const clock = new FakeClock(Date.UTC(2026, 0, 10));
    const parts = partitioning(table, clock, { premake: 0, retention: { keep: 2, onExpire: 'drop' } });
    await parts.migrate(engine.epochColumns);
    for (let month = 0; month < 6; month++) {
      await parts.tableFor(Date.UTC(2026, month, 1));
      await parts.insert({ id: month, created_at: Date.UTC(2026, month, 5) });
    }
    await clock.advance(Date.UTC(2026, 5, 20) - clock.now());
    const plan = await parts.maintain({ dryRun: true });
    expect(plan.dropped).toEqual([`${table}_p2026_01`, `${table}_p2026_02`, `${table}_p2026_03`]);
    expect(await engine.partitions(table)).toHaveLength(6);

    const report = await parts.maintain();
    expect(report.dropped).toEqual([`${table}_p2026_01`, `${table}_p2026_02`, `${table}_p2026_03`]);
    expect(report.detached).toEqual([]);
    expect(await engine.partitions(table)).toEqual([
      `${table}_p2026_04`,
      `${table}_p2026_05`,
      `${table}_p2026_06`,
    ]);
    const { rows } = await db.query<{ n: number }>(sql`select count(*) as n from ${sql.id(table)}`);
    expect(Number(rows[0]!.n)).toBe(3);
    expect((await parts.maintain()).dropped).toEqual([]);
  });

  it('detaches expired partitions by default and keeps them as <partition>_detached', async () => {
    const table = uniqueName('det');
    const clock = new FakeClock(Date.UTC(2026, 0, 10));
    const parts = partitioning(table, clock, { premake: 0, retention: { keep: 0 } });
    await parts.migrate(engine.epochColumns);
    await parts.insert({ id: 1, created_at: Date.UTC(2026, 0, 5) });
    await clock.advance(Date.UTC(2026, 1, 2) - clock.now());
    const report = await parts.maintain();
    expect(report.detached).toEqual([`${table}_p2026_01`]);
    expect(report.dropped).toEqual([]);
    expect(await engine.partitions(table)).toEqual([`${table}_p2026_02`]);
    expect(await engine.tablesLike(`${table}_p2026_01`)).toEqual([`${table}_p2026_01_detached`]);
    const { rows } = await db.query<{ n: number }>(
      sql`select count(*) as n from ${sql.id(`${table}_p2026_01_detached`)}`,
    );
    expect(Number(rows[0]!.n)).toBe(1);
    const status = await parts.status();
    expect(status.find((s) => s.kind === 'detached')).toMatchObject({
      name: `${table}_p2026_01_detached`,
      rows: 1,
    });
  });

  it('hands expired partitions to a callback with their rows, then drops them', async () => {
    const table = uniqueName('arch');
    const clock = new FakeClock(Date.UTC(2026, 0, 10));
    const archived: Array<{ partition: ExpiredPartition; ids: number[] }> = [];
    const parts = partitioning(table, clock, {
      premake: 0,
      retention: {
        keep: 1,
        onExpire: async (partition) => {
          const { rows } = await db.query<{ id: number }>(
            sql`select id from ${sql.id(partition.schema, partition.table)} order by id`,
          );
          archived.push({ partition, ids: rows.map((r) => Number(r.id)) });
        },
      },
    });
    await parts.migrate(engine.epochColumns);
    await parts.insertMany([
      { id: 1, created_at: Date.UTC(2026, 0, 5) },
      { id: 2, created_at: Date.UTC(2026, 1, 5) },
      { id: 3, created_at: Date.UTC(2026, 2, 5) },
    ]);
    await clock.advance(Date.UTC(2026, 2, 20) - clock.now());
    const report = await parts.maintain();
    expect(archived).toHaveLength(1);
    expect(archived[0]!.ids).toEqual([1]);
    expect(archived[0]!.partition).toMatchObject({
      partition: `${table}_p2026_01`,
      table: `${table}_p2026_01_detached`,
      from: new Date('2026-01-01T00:00:00Z'),
      to: new Date('2026-02-01T00:00:00Z'),
    });
    expect(report.handedOff).toEqual([`${table}_p2026_01_detached`]);
    expect(report.dropped).toEqual([`${table}_p2026_01`]);
    expect(await engine.tablesLike(`${table}_p2026_01`)).toEqual([]);
    expect(await engine.partitions(table)).toEqual([`${table}_p2026_02`, `${table}_p2026_03`]);
  });

  it('keeps the detached table when the callback fails and hands it off on the next run', async () => {
    const table = uniqueName('retry');
    const clock = new FakeClock(Date.UTC(2026, 0, 10));
    let fail = true;
    const seen: string[] = [];
    const parts = partitioning(table, clock, {
      premake: 0,
      retention: {
        keep: 0,
        onExpire: async (p) => {
          seen.push(p.table);
          if (fail) throw new Error('archive unavailable');
        },
      },
    });
    await parts.migrate(engine.epochColumns);
    await parts.insert({ id: 1, created_at: Date.UTC(2026, 0, 5) });
    await clock.advance(Date.UTC(2026, 1, 2) - clock.now());
    await expect(parts.maintain()).rejects.toThrow('archive unavailable');
    expect(await engine.tablesLike(`${table}_p2026_01`)).toEqual([`${table}_p2026_01_detached`]);
    fail = false;
    const report = await parts.maintain();
    expect(report.handedOff).toEqual([`${table}_p2026_01_detached`]);
    expect(seen).toEqual([`${table}_p2026_01_detached`, `${table}_p2026_01_detached`]);
    expect(await engine.tablesLike(`${table}_p2026_01`)).toEqual([]);
  });

  it('partitions by day and by year with the matching names', async () => {
    const day = uniqueName('day');
    const days = createTimePartitioning(db, {
      table: day,
      column: 'created_at',
      period: 'day',
      premake: 1,
      clock: new FakeClock(Date.UTC(2026, 1, 28, 23)),
    });
    expect((await days.migrate(engine.epochColumns)).created).toEqual([
      `${day}_p2026_02_28`,
      `${day}_p2026_03_01`,
    ]);
    const year = uniqueName('year');
    const years = createTimePartitioning(db, {
      table: year,
      column: 'created_at',
      period: 'year',
      premake: 1,
      clock: new FakeClock(MARCH_15),
    });
    expect((await years.migrate(engine.epochColumns)).created).toEqual([`${year}_p2026`, `${year}_p2027`]);
    expect((await years.insert({ id: 1, created_at: Date.UTC(2027, 11, 31, 23) })).table).toBe(
      `${year}_p2027`,
    );
  });

  it('refuses a period or column that disagrees with the existing table', async () => {
    const table = uniqueName('mism');
    await partitioning(table, new FakeClock(MARCH_15)).migrate(engine.epochColumns);
    await expectCode(
      createTimePartitioning(db, {
        table,
        column: 'created_at',
        period: 'day',
        clock: new FakeClock(MARCH_15),
      }).maintain(),
      'E_CONFIG',
      'period',
    );
    await expectCode(
      createTimePartitioning(db, { table, column: 'id', period: 'month' }).maintain(),
      'E_CONFIG',
      'column',
    );
  });

  it('says E_NOT_FOUND before migrate and E_CONFLICT over a plain table', async () => {
    const missing = partitioning(uniqueName('none'), new FakeClock(MARCH_15));
    await expectCode(missing.maintain(), 'E_NOT_FOUND');
    await expectCode(missing.status(), 'E_NOT_FOUND');
    const plain = uniqueName('plain');
    await db.query(sql`create table ${sql.id(plain)} (id integer, created_at bigint)`);
    await expectCode(partitioning(plain, new FakeClock(MARCH_15)).migrate(engine.epochColumns), 'E_CONFLICT');
  });

  it('rejects rows without a valid timestamp with E_SHARD_KEY naming table and column', async () => {
    const table = uniqueName('bad');
    const parts = partitioning(table, new FakeClock(MARCH_15));
    await parts.migrate(engine.epochColumns);
    for (const created_at of [undefined, null, 'yesterday', Number.NaN, {}]) {
      const err = await parts.insert({ id: 1, created_at }).catch((e: unknown) => e);
      expect(isStrataError(err, 'E_SHARD_KEY')).toBe(true);
      expect((err as { table?: string }).table).toBe(table);
      expect((err as { column?: string }).column).toBe('created_at');
    }
    expect(await engine.rowsByTable(table)).toEqual({});
  });

  it('describes the table through inspectTimePartitioning', async () => {
    const table = uniqueName('insp');
    await partitioning(table, new FakeClock(MARCH_15)).migrate(engine.epochColumns);
    expect(await inspectTimePartitioning(db, { table })).toEqual({
      column: 'created_at',
      columnType: 'epoch_ms',
      period: 'month',
      mode: engine.name === 'postgres' ? 'native' : 'tables',
    });
    expect(await inspectTimePartitioning(db, { table: uniqueName('nothing') })).toBeUndefined();
  });
}

describe('time partitioning on SQLite', () => {
  const dir = tempDir('strata-partitions-');
  const file = join(dir.path, 'parts.db');
  let db: SqlDriver;
  const engine: Engine = {
    name: 'sqlite',
    driver: () => db,
    epochColumns: 'id integer not null, created_at integer not null, body text',
    async rowsByTable(table) {
      const out: Record<string, number> = {};
      for (const name of await this.partitions(table)) {
        const { rows } = await db.query<{ n: number }>(sql`select count(*) as n from ${sql.id(name)}`);
        if (Number(rows[0]!.n) > 0) out[name] = Number(rows[0]!.n);
      }
      return out;
    },
    async partitions(table) {
      const { rows } = await db.query<{ name: string }>(
        sql`select name from sqlite_master where type = 'table' and name glob ${`${table}_p[0-9]*`}
            and name not like '%_detached' order by name`,
      );
      return rows.map((r) => r.name);
    },
    async tablesLike(prefix) {
      const { rows } = await db.query<{ name: string }>(
        sql`select name from sqlite_master where type = 'table' and substr(name, 1, ${prefix.length}) = ${prefix} order by name`,
      );
      return rows.map((r) => r.name);
    },
  };

  beforeAll(() => {
    db = createSqliteDriver(file);
  });
  afterAll(async () => {
    await db?.close();
    rmSync(dir.path, { recursive: true, force: true });
  });

  sharedSuite(engine);

  it('stores ISO-8601 text in a TEXT column and routes it the same way', async () => {
    const table = uniqueName('iso');
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      clock: new FakeClock(MARCH_15),
    });
    await parts.migrate({
      columns: 'id integer primary key, created_at text not null',
      indexes: [{ columns: ['created_at'] }],
    });
    expect((await parts.insert({ id: 1, created_at: new Date('2026-05-02T10:00:00+02:00') })).table).toBe(
      `${table}_p2026_05`,
    );
    expect((await parts.insert({ id: 2, created_at: '2026-04-30 23:30:00-01:00' })).table).toBe(
      `${table}_p2026_05`,
    );
    const { rows } = await db.query<{ created_at: string }>(
      sql`select created_at from ${sql.id(table)} order by id`,
    );
    expect(rows.map((r) => r.created_at)).toEqual(['2026-05-02T08:00:00.000Z', '2026-05-01T00:30:00.000Z']);
    const { rows: indexes } = await db.query<{ name: string }>(
      sql`select name from pragma_index_list(${`${table}_p2026_05`}) where origin = 'c'`,
    );
    expect(indexes).toHaveLength(1);
    expect((await inspectTimePartitioning(db, { table }))?.columnType).toBe('iso_text');
  });

  it('creates a period table on demand for a far-future row and the view includes it', async () => {
    const table = uniqueName('far');
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      clock: new FakeClock(MARCH_15),
    });
    await parts.migrate(engine.epochColumns);
    expect((await parts.insert({ id: 9, created_at: Date.UTC(2031, 6, 4) })).table).toBe(`${table}_p2031_07`);
    expect(await parts.tableFor('2031-07-30')).toBe(`${table}_p2031_07`);
    const { rows } = await db.query<{ id: number }>(sql`select id from ${sql.id(table)}`);
    expect(rows.map((r) => r.id)).toEqual([9]);
    expect((await parts.maintain()).created).toEqual([]);
  });

  it('builds the view over more period tables than one compound SELECT allows', async () => {
    const table = uniqueName('many');
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'day',
      premake: 600,
      clock: new FakeClock(MARCH_15),
    });
    const report = await parts.migrate(engine.epochColumns);
    expect(report.created).toHaveLength(601);
    await parts.insert({ id: 1, created_at: Date.UTC(2027, 8, 1) });
    const { rows } = await db.query<{ n: number }>(sql`select count(*) as n from ${sql.id(table)}`);
    expect(Number(rows[0]!.n)).toBe(1);
  });
});

describe.skipIf(!services.postgres)('time partitioning on PostgreSQL', () => {
  let testDb: PostgresTestDatabase;
  let db: SqlDriver;
  const engine: Engine = {
    name: 'postgres',
    driver: () => db,
    epochColumns: 'id bigint not null, created_at bigint not null, body text',
    async rowsByTable(table) {
      const { rows } = await db.query<{ part: string; n: number }>(
        sql`select tableoid::regclass::text as part, count(*)::int as n from ${sql.id(table)} group by 1`,
      );
      return Object.fromEntries(rows.map((r) => [r.part, r.n]));
    },
    async partitions(table) {
      const { rows } = await db.query<{ name: string }>(
        sql`select c.relname::text as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
            where i.inhparent = ${table}::regclass and pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
            order by 1`,
      );
      return rows.map((r) => r.name);
    },
    async tablesLike(prefix) {
      const { rows } = await db.query<{ name: string }>(
        sql`select relname::text as name from pg_class where relkind = 'r' and not relispartition
            and left(relname, ${prefix.length}) = ${prefix} order by 1`,
      );
      return rows.map((r) => r.name);
    },
  };

  beforeAll(async () => {
    testDb = await createPostgresTestDatabase({ prefix: 'strata_partitions' });
    db = createPostgresDriver(testDb.url);
  });
  afterAll(async () => {
    await db?.close();
    await testDb?.drop();
  });

  sharedSuite(engine);

  const tsColumns =
    'id bigint generated always as identity, created_at timestamptz not null, body text, primary key (id, created_at)';

  async function partitionOfRow(table: string, id: number): Promise<string> {
    const { rows } = await db.query<{ part: string }>(
      sql`select tableoid::regclass::text as part from ${sql.id(table)} where id = ${id}`,
    );
    return rows[0]!.part;
  }

  it('creates a range-partitioned parent with a default partition on a timestamptz column', async () => {
    const table = uniqueName('ts');
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      premake: 1,
      clock: new FakeClock(MARCH_15),
    });
    await parts.migrate({ columns: tsColumns, indexes: [{ columns: ['body'] }] });
    const { rows } = await db.query<{ name: string; bound: string }>(
      sql`select c.relname::text as name, pg_get_expr(c.relpartbound, c.oid) as bound
          from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = ${table}::regclass order by 1`,
    );
    expect(rows.map((r) => r.name)).toEqual([`${table}_default`, `${table}_p2026_03`, `${table}_p2026_04`]);
    expect(rows[0]!.bound).toBe('DEFAULT');
    const { rows: key } = await db.query<{ def: string }>(
      sql`select pg_get_partkeydef(${table}::regclass) as def`,
    );
    expect(key[0]!.def).toBe('RANGE (created_at)');
    await db.query(
      sql`insert into ${sql.id(table)} (created_at, body) values (${new Date('2026-04-30T23:59:59Z')}, 'x')`,
    );
    expect(await partitionOfRow(table, 1)).toBe(`${table}_p2026_04`);
    const { rows: idx } = await db.query(
      sql`select 1 from pg_indexes where tablename = ${`${table}_p2026_04`} and indexdef like '%(body)%'`,
    );
    expect(idx).toHaveLength(1);
  });

  it('moves a far-future row out of the default partition, keeping its identity, and empties the default', async () => {
    const table = uniqueName('mv');
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      premake: 1,
      clock: new FakeClock(MARCH_15),
    });
    await parts.migrate(tsColumns);
    expect((await parts.insert({ created_at: new Date('2031-07-04T10:00:00Z'), body: 'future' })).table).toBe(
      `${table}_default`,
    );
    await parts.insert({ created_at: new Date('2031-07-05T10:00:00Z'), body: 'future 2' });
    await parts.insert({ created_at: new Date('2026-03-20T10:00:00Z'), body: 'now' });
    const before = await parts.status();
    expect(before.find((s) => s.kind === 'default')?.rows).toBe(2);

    const plan = await parts.maintain({ dryRun: true });
    expect(plan).toMatchObject({ dryRun: true, created: [`${table}_p2031_07`], movedFromDefault: 2 });
    expect(await partitionOfRow(table, 1)).toBe(`${table}_default`);

    const report = await parts.maintain();
    expect(report.created).toEqual([`${table}_p2031_07`]);
    expect(report.movedFromDefault).toBe(2);
    expect(report.leftInDefault).toBe(0);
    expect(await partitionOfRow(table, 1)).toBe(`${table}_p2031_07`);
    expect(await partitionOfRow(table, 2)).toBe(`${table}_p2031_07`);
    expect(await partitionOfRow(table, 3)).toBe(`${table}_p2026_03`);
    const { rows } = await db.query<{ body: string }>(sql`select body from ${sql.id(table)} where id = 1`);
    expect(rows[0]!.body).toBe('future');
    const after = await parts.status();
    expect(after.find((s) => s.kind === 'default')?.rows).toBe(0);
    expect(after.find((s) => s.name === `${table}_p2031_07`)?.rows).toBe(2);
    expect((await parts.maintain()).movedFromDefault).toBe(0);
  });

  it('moves default rows of a bigint epoch-ms column and leaves rows without a timestamp there', async () => {
    const table = uniqueName('ep');
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'day',
      premake: 0,
      clock: new FakeClock(MARCH_15),
    });
    await parts.migrate('id bigint, created_at bigint, body text');
    await db.query(
      sql`insert into ${sql.id(table)} (id, created_at) values
          (1, ${Date.UTC(2026, 2, 20, 5)}), (2, ${Date.UTC(2026, 2, 20, 23)}), (3, null), (4, ${Date.UTC(2026, 2, 14, 1)})`,
    );
    const report = await parts.maintain();
    expect(report.created).toEqual([`${table}_p2026_03_14`, `${table}_p2026_03_20`]);
    expect(report.movedFromDefault).toBe(3);
    expect(report.leftInDefault).toBe(1);
    expect(await engine.rowsByTable(table)).toEqual({
      [`${table}_default`]: 1,
      [`${table}_p2026_03_14`]: 1,
      [`${table}_p2026_03_20`]: 2,
    });
  });

  it('premakes a partition whose rows already sit in the default partition', async () => {
    const table = uniqueName('pm');
    const clock = new FakeClock(MARCH_15);
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      premake: 0,
      clock,
    });
    await parts.migrate(tsColumns);
    await parts.insert({ created_at: '2026-04-10T00:00:00Z' });
    expect(await partitionOfRow(table, 1)).toBe(`${table}_default`);
    expect(await parts.tableFor('2026-04-11')).toBe(`${table}_p2026_04`);
    expect(await partitionOfRow(table, 1)).toBe(`${table}_p2026_04`);
  });

  it('runs concurrent maintain calls without errors or duplicate work', async () => {
    const table = uniqueName('conc');
    const clock = new FakeClock(MARCH_15);
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      premake: 0,
      clock,
    });
    await parts.migrate(tsColumns);
    await parts.insert({ created_at: '2030-01-10T00:00:00Z' });
    await parts.insert({ created_at: '2030-02-10T00:00:00Z' });
    const other = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      premake: 4,
      clock,
    });
    const reports = await Promise.all([parts.maintain(), other.maintain(), parts.maintain()]);
    const created = reports.flatMap((r) => r.created).sort();
    expect(created).toEqual(
      [
        `${table}_p2026_04`,
        `${table}_p2026_05`,
        `${table}_p2026_06`,
        `${table}_p2026_07`,
        `${table}_p2030_01`,
        `${table}_p2030_02`,
      ].sort(),
    );
    expect(reports.reduce((n, r) => n + r.movedFromDefault, 0)).toBe(2);
    expect((await parts.status()).find((s) => s.kind === 'default')?.rows).toBe(0);
  });

  it('fails with E_TIMEOUT instead of queueing behind a transaction that holds the table', async () => {
    const table = uniqueName('lock');
    const clock = new FakeClock(MARCH_15);
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      premake: 0,
      clock,
      lockTimeout: '200ms',
    });
    await parts.migrate(tsColumns);
    await clock.advance(31 * 86_400_000);
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    let locked!: () => void;
    const lockTaken = new Promise<void>((r) => {
      locked = r;
    });
    const holder = db.transaction(async (tx) => {
      await tx.query(sql`select count(*) from ${sql.id(table)}`);
      locked();
      await held;
    });
    await lockTaken;
    try {
      const err = await parts.maintain().catch((e: unknown) => e);
      expect(isStrataError(err, 'E_TIMEOUT')).toBe(true);
      expect((err as Error).message).toContain(table);
    } finally {
      release();
      await holder;
    }
    expect((await parts.maintain()).created).toEqual([`${table}_p2026_04`]);
  });

  it('re-expires a late row of a detached period, and refuses to overwrite the kept detached table', async () => {
    const table = uniqueName('late');
    const clock = new FakeClock(Date.UTC(2026, 0, 10));
    const parts = createTimePartitioning(db, {
      table,
      column: 'created_at',
      period: 'month',
      premake: 0,
      clock,
      retention: { keep: 0 },
    });
    await parts.migrate(tsColumns);
    await parts.insert({ created_at: '2026-01-05T00:00:00Z' });
    await clock.advance(Date.UTC(2026, 1, 2) - clock.now());
    expect((await parts.maintain()).detached).toEqual([`${table}_p2026_01`]);
    await parts.insert({ created_at: '2026-01-06T00:00:00Z' });
    await clock.advance(Date.UTC(2026, 2, 2) - clock.now());
    await expectCode(parts.maintain(), 'E_CONFLICT');
    expect(await engine.partitions(table)).toEqual([
      `${table}_p2026_01`,
      `${table}_p2026_02`,
      `${table}_p2026_03`,
    ]);
    expect(await engine.rowsByTable(table)).toEqual({ [`${table}_p2026_01`]: 1 });
    await db.query(sql`drop table ${sql.id(`${table}_p2026_01_detached`)}`);
    expect((await parts.maintain()).detached).toEqual([`${table}_p2026_01`, `${table}_p2026_02`]);
  });

  it('refuses a partition key of another type and a table with a non-partition of the same name', async () => {
    const table = uniqueName('txt');
    await db.query(sql`create table ${sql.id(table)} (created_at text) partition by range (created_at)`);
    await expectCode(
      createTimePartitioning(db, { table, column: 'created_at', period: 'month' }).maintain(),
      'E_CONFIG',
      'column',
    );
    const clash = uniqueName('clash');
    const clock = new FakeClock(MARCH_15);
    await db.query(sql`create table ${sql.id(`${clash}_p2026_04`)} (x int)`);
    const parts = createTimePartitioning(db, {
      table: clash,
      column: 'created_at',
      period: 'month',
      premake: 1,
      clock,
    });
    await expectCode(parts.migrate(tsColumns), 'E_CONFLICT');
  });
});
