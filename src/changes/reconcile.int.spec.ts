import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { services, tempDir, uniqueName } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { type ReconcileOptions, type ReconcileReport, reconcile, repair } from './reconcile.js';

type Engine = 'sqlite' | 'postgres';

const dir = tempDir('strata-reconcile-');
const cleanups: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  dir.remove();
});

/** Two PostgreSQL databases (one per side), created once for this file. */
const pg: { a?: SqlDriver; b?: SqlDriver } = {};
beforeAll(async () => {
  if (!services.postgres) return;
  for (const side of ['a', 'b'] as const) {
    const database = await createPostgresTestDatabase({ prefix: `strata_reconcile_${side}` });
    const driver = createPostgresDriver(database.url);
    cleanups.push(async () => {
      await driver.close();
      await database.drop();
    });
    pg[side] = driver;
  }
});

const sqliteDrivers = new Map<string, SqlDriver>();
function open(engine: Engine, side: 'a' | 'b'): SqlDriver {
  if (engine === 'postgres') return pg[side]!;
  let driver = sqliteDrivers.get(side);
  if (driver === undefined) {
    driver = createSqliteDriver(join(dir.path, `${side}.db`));
    const opened = driver;
    cleanups.push(() => opened.close());
    sqliteDrivers.set(side, driver);
  }
  return driver;
}

/** Column types that hold the same logical values on each engine. */
const TYPES = {
  sqlite: { int8: 'integer', int: 'integer', text: 'text', real: 'real', bool: 'boolean', bytes: 'blob' },
  postgres: { int8: 'int8', int: 'int4', text: 'text', real: 'float8', bool: 'boolean', bytes: 'bytea' },
} as const;

async function insertRows(
  driver: SqlDriver,
  table: string,
  columns: string[],
  rows: unknown[][],
): Promise<void> {
  const per = Math.floor(900 / columns.length);
  await driver.transaction(async (tx) => {
    for (let i = 0; i < rows.length; i += per) {
      const values = rows.slice(i, i + per).map((r) => sql`(${sql.join(r)})`);
      await tx.query(
        sql`insert into ${sql.id(table)} (${sql.join(columns.map((c) => sql.id(c)))}) values ${sql.join(values)}`,
      );
    }
  });
}

const ITEM_COLUMNS = ['id', 'name', 'qty', 'price', 'active', 'data', 'big'];

async function createItems(engine: Engine, driver: SqlDriver, table: string): Promise<void> {
  const t = TYPES[engine];
  await driver.exec(
    `create table ${table} (id ${t.int8} primary key, name ${t.text}, qty ${t.int}, price ${t.real},
       active ${t.bool}, data ${t.bytes}, big ${t.int8})`,
  );
}

/** Item `id` as both stores hold it; ids have gaps (multiples of 7 plus a jitter). */
function item(n: number): unknown[] {
  const id = n * 7 + (n % 3);
  return [
    id,
    n % 11 === 0 ? null : `item ${n} — ünïcödé 🙂`,
    n % 100,
    n % 5 === 0 ? null : n * 0.25 + 0.1,
    n % 2 === 0,
    n % 4 === 0 ? null : Buffer.from([n & 0xff, 0, 255, (n >> 8) & 0xff]),
    n % 13 === 0 ? 9_007_199_254_740_993n + BigInt(n) : n * 1_000,
  ];
}

const PAIRS: Array<[Engine, Engine]> = [
  ['sqlite', 'sqlite'],
  ['postgres', 'postgres'],
  ['sqlite', 'postgres'],
  ['postgres', 'sqlite'],
];

const ids = (keys: Array<Record<string, unknown>>) => keys.map((k) => Number(k.id));
const enabled = (pair: [Engine, Engine]) => services.postgres || !pair.includes('postgres');

describe.each(PAIRS)('reconcile %s → %s', (sourceEngine, targetEngine) => {
  const run = it.skipIf(!enabled([sourceEngine, targetEngine]));

  async function pair(rows = 3_000) {
    const table = uniqueName('items');
    const source = open(sourceEngine, 'a');
    const target = open(targetEngine, 'b');
    await createItems(sourceEngine, source, table);
    await createItems(targetEngine, target, table);
    const data = Array.from({ length: rows }, (_, n) => item(n));
    await insertRows(source, table, ITEM_COLUMNS, data);
    await insertRows(target, table, ITEM_COLUMNS, data);
    const options: ReconcileOptions = {
      source: { driver: source, table },
      target: { driver: target, table },
      chunkSize: 500,
    };
    return { table, source, target, options };
  }

  /** Deletes, inserts and updates on `driver`; returns what reconcile must find from the other side. */
  async function inject(driver: SqlDriver, table: string) {
    const t = sql.id(table);
    const gone = [item(0), item(10), item(500), item(1_234), item(2_999)].map((r) => Number(r[0]));
    for (const id of gone) await driver.query(sql`delete from ${t} where id = ${id}`);
    // Before the first key, in a gap, between chunks and after the last key.
    const added = [-50, 1_235 * 7 + 5, 3_500, 1_000_000];
    await insertRows(
      driver,
      table,
      ITEM_COLUMNS,
      added.map((id) => [id, 'added', 1, 1.5, true, Buffer.from('x'), 1]),
    );
    const changes: Array<[number, string, unknown]> = [
      [item(3)[0] as number, 'name', 'renamed'],
      [item(777)[0] as number, 'price', 0.30000000000000004],
      [item(779)[0] as number, 'active', true],
      [item(1_001)[0] as number, 'data', Buffer.from([1, 2, 3])],
      [item(1_300)[0] as number, 'big', 9_007_199_254_740_993n + 1_301n],
      [item(2_500)[0] as number, 'qty', null],
    ];
    for (const [id, column, value] of changes) {
      await driver.query(sql`update ${t} set ${sql.id(column)} = ${value} where id = ${id}`);
    }
    return { gone, added, changed: changes.map(([id, column]) => ({ key: { id }, columns: [column] })) };
  }

  function expectFound(
    report: ReconcileReport,
    found: Awaited<ReturnType<typeof inject>>,
    side: 'target' | 'source',
  ) {
    const [missing, extra] = side === 'target' ? [found.gone, found.added] : [found.added, found.gone];
    expect(ids(report.mismatches.missing)).toEqual([...missing].sort((a, b) => a - b));
    expect(ids(report.mismatches.extra)).toEqual([...extra].sort((a, b) => a - b));
    expect(
      report.mismatches.different.map((d) => ({ key: { id: Number(d.key.id) }, columns: d.columns })),
    ).toEqual(found.changed);
    expect(report.clean).toBe(false);
    expect(report.truncated).toBe(false);
  }

  run(
    'finds exactly the injected differences, and a repair from the source makes the next reconcile clean',
    async () => {
      const { table, target, options } = await pair();
      const before = await reconcile(options);
      expect(before).toMatchObject({ clean: true, rowsSource: 3_000, rowsTarget: 3_000, chunks: 6 });
      expect(before.hashing).toBe(
        sourceEngine === 'postgres' && targetEngine === 'postgres' ? 'database' : 'node',
      );

      const found = await inject(target, table);
      const report = await reconcile({ ...options, plan: 'source' });
      expectFound(report, found, 'target');
      expect(report.plan).toMatchObject({ from: 'source', repairs: 'target', complete: true });
      expect(ids(report.plan!.insert)).toEqual(ids(report.mismatches.missing));
      expect(ids(report.plan!.delete)).toEqual(ids(report.mismatches.extra));

      const dry = await repair(report);
      expect(dry).toMatchObject({ dryRun: true, inserted: 0, updated: 0, deleted: 0, batches: 0 });
      expectFound(await reconcile(options), found, 'target');

      const applied = await repair(report, { dryRun: false, batchSize: 4 });
      expect(applied).toMatchObject({
        dryRun: false,
        inserted: 5,
        updated: 6,
        deleted: 4,
        unchanged: 0,
        batches: 4,
      });
      const after = await reconcile(options);
      expect(after.clean).toBe(true);
      expect(after.rowsTarget).toBe(3_000);

      const again = await repair(report, { dryRun: false });
      expect(again).toMatchObject({ inserted: 0, updated: 0, deleted: 0, unchanged: 15 });
    },
  );

  run('repairs the source from the target', async () => {
    const { table, source, options } = await pair(1_200);
    const found = await inject(source, table);
    const report = await reconcile(options);
    const gone = found.gone.filter((id) => id < 1_200 * 7);
    expect(ids(report.mismatches.extra)).toEqual([...gone].sort((a, b) => a - b));
    expect(ids(report.mismatches.missing)).toEqual([...found.added].sort((a, b) => a - b));
    const plan = (await repair(report, { from: 'target' })).plan;
    expect(plan).toMatchObject({ from: 'target', repairs: 'source', table });
    const applied = await repair(plan, { dryRun: false });
    expect(applied.inserted + applied.updated + applied.deleted).toBe(
      report.mismatches.missing.length + report.mismatches.extra.length + report.mismatches.different.length,
    );
    expect((await reconcile(options)).clean).toBe(true);
  });

  run('re-reads the authoritative row when applying, not the report', async () => {
    const { table, source, target, options } = await pair(100);
    const id = item(42)[0] as number;
    await target.query(sql`update ${sql.id(table)} set name = ${'stale'} where id = ${id}`);
    const report = await reconcile(options);
    expect(report.mismatches.different).toEqual([{ key: { id }, columns: ['name'] }]);
    await source.query(sql`update ${sql.id(table)} set name = ${'newest'}, qty = ${99} where id = ${id}`);
    await repair(report, { from: 'source', dryRun: false });
    const { rows } = await target.query<{ name: string; qty: number }>(
      sql`select name, qty from ${sql.id(table)} where id = ${id}`,
    );
    expect(rows).toEqual([{ name: 'newest', qty: 99 }]);
    expect((await reconcile(options)).clean).toBe(true);
  });

  run('lists everything when one side is empty', async () => {
    const table = uniqueName('empty');
    const source = open(sourceEngine, 'a');
    const target = open(targetEngine, 'b');
    await createItems(sourceEngine, source, table);
    await createItems(targetEngine, target, table);
    const options = { source: { driver: source, table }, target: { driver: target, table }, chunkSize: 50 };
    expect(await reconcile(options)).toMatchObject({ clean: true, chunks: 1, rowsSource: 0, rowsTarget: 0 });
    await insertRows(
      target,
      table,
      ITEM_COLUMNS,
      Array.from({ length: 120 }, (_, n) => item(n)),
    );
    const onlyTarget = await reconcile(options);
    expect(onlyTarget.mismatches.extra).toHaveLength(120);
    expect(ids(onlyTarget.mismatches.extra)).toEqual(Array.from({ length: 120 }, (_, n) => item(n)[0]));
    const swapped = await reconcile({ ...options, source: options.target, target: options.source });
    expect(swapped.mismatches.missing).toHaveLength(120);
    expect(swapped.chunks).toBe(3);
    await repair(onlyTarget, { from: 'target', dryRun: false });
    expect((await reconcile(options)).clean).toBe(true);
  });

  run('compares composite keys in the same order on both engines, discovering the primary key', async () => {
    const table = uniqueName('members');
    const source = open(sourceEngine, 'a');
    const target = open(targetEngine, 'b');
    // PostgreSQL text keys in an ICU collation sort 'a' < 'B'; SQLite sorts bytes ('B' < 'a').
    const collations = await Promise.all(
      [source, target].map(async (d) =>
        d.dialect.name === 'postgres' &&
        (await d.query(`select 1 from pg_collation where collname = 'und-x-icu'`)).rowCount > 0
          ? ' collate "und-x-icu"'
          : '',
      ),
    );
    for (const [i, driver] of [source, target].entries()) {
      await driver.exec(
        `create table ${table} (tenant text${collations[i]} not null, n integer not null, role text,
           primary key (tenant, n))`,
      );
    }
    const tenants = ['a', 'B', 'b', 'C', 'é', 'Z', 'zz', 'Ω', '🙂', 'a b', 'A'];
    const rows = tenants.flatMap((tenant) =>
      Array.from({ length: 30 }, (_, n) => [tenant, n, `role ${n % 3}`]),
    );
    await insertRows(source, table, ['tenant', 'n', 'role'], rows);
    await insertRows(target, table, ['tenant', 'n', 'role'], rows);
    const options = { source: { driver: source, table }, target: { driver: target, table }, chunkSize: 7 };
    const clean = await reconcile(options);
    expect(clean).toMatchObject({ clean: true, key: ['tenant', 'n'], columns: ['role'], rowsSource: 330 });
    await target.query(sql`delete from ${sql.id(table)} where tenant = ${'é'} and n = ${4}`);
    await target.query(
      sql`update ${sql.id(table)} set role = ${'admin'} where tenant = ${'B'} and n = ${29}`,
    );
    await insertRows(
      target,
      table,
      ['tenant', 'n', 'role'],
      [
        ['0', 1, 'x'],
        ['😀', 0, 'x'],
        ['b', 30, 'x'],
      ],
    );
    const report = await reconcile(options);
    expect(report.mismatches.missing).toEqual([{ tenant: 'é', n: 4 }]);
    expect(report.mismatches.different).toEqual([{ key: { tenant: 'B', n: 29 }, columns: ['role'] }]);
    expect(new Set(report.mismatches.extra.map((k) => `${k.tenant}/${k.n}`))).toEqual(
      new Set(['0/1', '😀/0', 'b/30']),
    );
    await repair(report, { from: 'source', dryRun: false });
    expect((await reconcile(options)).clean).toBe(true);
  });

  run('handles wide rows (100 KB values) and finds one changed character', async () => {
    const table = uniqueName('docs');
    const source = open(sourceEngine, 'a');
    const target = open(targetEngine, 'b');
    for (const [engine, driver] of [
      [sourceEngine, source],
      [targetEngine, target],
    ] as const) {
      await driver.exec(
        `create table ${table} (id ${TYPES[engine].int8} primary key, body ${TYPES[engine].text})`,
      );
    }
    const body = (n: number) => `${String(n).padStart(6, '0')}${'lorem ipsum dolor '.repeat(6_000)}`;
    for (let n = 0; n < 60; n += 10) {
      const rows = Array.from({ length: 10 }, (_, i) => [n + i, body(n + i)]);
      await insertRows(source, table, ['id', 'body'], rows);
      await insertRows(target, table, ['id', 'body'], rows);
    }
    const changed = `${body(33).slice(0, 50_000)}X${body(33).slice(50_001)}`;
    await target.query(sql`update ${sql.id(table)} set body = ${changed} where id = ${33}`);
    const report = await reconcile({ source: { driver: source, table }, target: { driver: target, table } });
    expect(report.mismatches).toEqual({
      missing: [],
      extra: [],
      different: [{ key: { id: 33 }, columns: ['body'] }],
    });
    await repair(report, { from: 'source', dryRun: false });
    expect(
      (await reconcile({ source: { driver: source, table }, target: { driver: target, table } })).clean,
    ).toBe(true);
  });

  run('stops at maxMismatches and says the report is truncated', async () => {
    const { table, target, options } = await pair(300);
    await target.exec(`delete from ${table} where id < 1000`);
    const report = await reconcile({ ...options, maxMismatches: 10, plan: 'source' });
    expect(report.mismatches.missing).toHaveLength(10);
    expect(report).toMatchObject({ truncated: true, clean: false, plan: { complete: false } });
  });
});

describe('reconcile across engines', () => {
  const run = it.skipIf(!services.postgres);

  run('treats the same logical values as equal on SQLite and PostgreSQL', async () => {
    const table = uniqueName('types');
    const lite = open('sqlite', 'a');
    const pgd = pg.a!;
    await lite.exec(
      `create table ${table} (id integer primary key, i integer, t text, r real, b boolean, bl blob, big integer,
         n text, j text, ts text)`,
    );
    await pgd.exec(
      `create table ${table} (id int8 primary key, i int4, t text, r float8, b boolean, bl bytea, big int8,
         n numeric(12, 4), j jsonb, ts timestamptz)`,
    );
    const columns = ['id', 'i', 't', 'r', 'b', 'bl', 'big', 'n', 'j', 'ts'];
    const when = new Date('2026-05-01T12:34:56.789Z');
    const rows = (numeric: string | number, json: unknown): unknown[][] => [
      [
        1,
        -5,
        'héllo wörld 🙂',
        0.1,
        true,
        Buffer.from([0, 1, 255]),
        9_223_372_036_854_775_807n,
        numeric,
        json,
        when,
      ],
      [2, null, '', -1e-7, false, Buffer.alloc(0), -9_007_199_254_740_993n, null, null, null],
      [3, 2_147_483_647, 'a\nb\tc "quoted"', 1e21, null, null, 0, 0, null, when],
    ];
    await insertRows(lite, table, columns, rows(12.5, '{"a":[1,2],"b":{"c":null}}'));
    await insertRows(pgd, table, columns, rows('12.5000', { b: { c: null }, a: [1, 2] }));
    // SQLite writes `text` for the numeric, JSON and date columns; decimal and JSON compare by value.
    await lite.query(
      sql`update ${sql.id(table)} set n = ${'12.5'}, ts = ${when.toISOString()} where id = ${1}`,
    );
    await lite.query(sql`update ${sql.id(table)} set n = ${'0'} where id = ${3}`);
    const options = { source: { driver: lite, table }, target: { driver: pgd, table } };
    const report = await reconcile(options);
    expect(report.mismatches).toEqual({ missing: [], extra: [], different: [] });

    await pgd.query(
      sql`update ${sql.id(table)} set big = big - 1, b = ${false}, j = ${'{"a":[1,3]}'} where id = ${1}`,
    );
    await pgd.query(sql`update ${sql.id(table)} set t = ${null}, bl = ${Buffer.from([0])} where id = ${2}`);
    const differing = await reconcile(options);
    expect(differing.mismatches.different).toEqual([
      { key: { id: 1 }, columns: ['b', 'big', 'j'] },
      { key: { id: 2 }, columns: ['t', 'bl'] },
    ]);
    await repair(differing, { from: 'source', dryRun: false });
    expect((await reconcile(options)).clean).toBe(true);
    const { rows: big } = await pgd.query<{ big: bigint }>(
      sql`select big from ${sql.id(table)} where id = ${1}`,
    );
    expect(big[0]?.big).toBe(9_223_372_036_854_775_807n);
  });

  run('hashes inside PostgreSQL and bisects to the changed rows, or in Node when asked', async () => {
    const table = uniqueName('pushdown');
    for (const driver of [pg.a!, pg.b!]) {
      await driver.exec(
        `create table ${table} (id int8 primary key, v text, w float8);
         insert into ${table} select g * 2, md5(g::text), g / 3.0 from generate_series(1, 20000) g`,
      );
    }
    await pg.b!.exec(
      `update ${table} set v = 'x' where id in (2468, 30000);
       delete from ${table} where id = 11112; insert into ${table} values (11113, 'new', 0)`,
    );
    const options = { source: { driver: pg.a!, table }, target: { driver: pg.b!, table }, chunkSize: 8_000 };
    const expected = {
      missing: [{ id: 11112 }],
      extra: [{ id: 11113 }],
      different: [
        { key: { id: 2468 }, columns: ['v'] },
        { key: { id: 30000 }, columns: ['v'] },
      ],
    };
    const inDatabase = await reconcile(options);
    expect(inDatabase.hashing).toBe('database');
    expect(inDatabase.mismatches).toEqual(expected);
    const inNode = await reconcile({ ...options, pushdown: false });
    expect(inNode.hashing).toBe('node');
    expect(inNode.mismatches).toEqual(expected);
  });

  run(
    'keeps memory bounded on 200,000 rows per side and finds every difference',
    async () => {
      const table = uniqueName('large');
      const lite = createSqliteDriver(join(dir.path, 'large.db'));
      cleanups.push(() => lite.close());
      const n = 200_000;
      await lite.exec(
        `create table ${table} (id integer primary key, name text, qty integer, price real);
       with recursive s(g) as (select 1 union all select g + 1 from s where g < ${n})
       insert into ${table} select g * 3, 'name ' || g, g % 97, g * 0.5 from s`,
      );
      await pg.b!.exec(
        `create table ${table} (id int8 primary key, name text, qty int4, price float8);
       insert into ${table} select g * 3, 'name ' || g, g % 97, g * 0.5 from generate_series(1, ${n}) g`,
      );
      const missing: number[] = [];
      const extra: number[] = [];
      const different: number[] = [];
      for (let i = 0; i < 30; i++) {
        const id = (1 + Math.floor(((i + 0.5) * n) / 30)) * 3;
        if (i % 3 === 0) missing.push(id);
        else if (i % 3 === 1) extra.push(id + 1);
        else different.push(id);
      }
      await pg.b!.exec(
        `delete from ${table} where id in (${missing.join(',')});
       insert into ${table} select id, 'extra', 0, 0 from unnest(array[${extra.join(',')}]::int8[]) id;
       update ${table} set qty = qty + 1 where id in (${different.join(',')});`,
      );
      const baseline = process.memoryUsage().heapUsed;
      let peak = 0;
      let samples = 0;
      const report = await reconcile({
        source: { driver: lite, table },
        target: { driver: pg.b!, table },
        onProgress: () => {
          samples++;
          peak = Math.max(peak, process.memoryUsage().heapUsed - baseline);
        },
      });
      expect(ids(report.mismatches.missing)).toEqual(missing);
      expect(ids(report.mismatches.extra)).toEqual(extra);
      expect(report.mismatches.different).toEqual(different.map((id) => ({ key: { id }, columns: ['qty'] })));
      expect(report.rowsSource).toBe(n);
      expect(samples).toBe(20);
      expect(peak).toBeLessThan(150 * 1024 * 1024);
    },
    180_000,
  );
});

describe('reconcile options on real tables', () => {
  it('filters rows with where, binding the values', async () => {
    const table = uniqueName('tenants');
    const a = open('sqlite', 'a');
    const b = open('sqlite', 'b');
    for (const driver of [a, b]) {
      await driver.exec(`create table ${table} (id integer primary key, tenant text, v integer)`);
      await insertRows(
        driver,
        table,
        ['id', 'tenant', 'v'],
        Array.from({ length: 40 }, (_, i) => [i, i % 2 ? 'odd' : "ev'en", i]),
      );
    }
    await b.exec(`update ${table} set v = -1 where id in (4, 5)`);
    const report = await reconcile({
      source: { driver: a, table },
      target: { driver: b, table },
      where: { tenant: "ev'en" },
      chunkSize: 3,
    });
    expect(report.mismatches.different).toEqual([{ key: { id: 4 }, columns: ['v'] }]);
    expect(report.rowsSource).toBe(20);
  });

  it('names what is wrong with E_CONFIG before reading any row', async () => {
    const a = open('sqlite', 'a');
    const b = open('sqlite', 'b');
    const table = uniqueName('cfg');
    await a.exec(`create table ${table} (id integer primary key, name text, extra text)`);
    await b.exec(`create table ${table} (id integer primary key, name text)`);
    await a.exec(`create table ${table}_nopk (name text)`);
    await b.exec(`create table ${table}_nopk (name text)`);
    let progressed = 0;
    const base = {
      source: { driver: a, table },
      target: { driver: b, table },
      onProgress: () => {
        progressed++;
      },
    };
    const cases: Array<[ReconcileOptions, string, string | undefined]> = [
      [{ ...base, source: { driver: a, table: 'no_such_table' } }, 'source.table', 'no_such_table'],
      [{ ...base, target: { driver: b, table: 'no_such_table' } }, 'target.table', 'no_such_table'],
      [{ ...base, target: { driver: b, table, schema: 'nowhere' } }, 'target.schema', 'nowhere'],
      [base, 'columns', 'extra'],
      [{ ...base, columns: ['name', 'nope'] }, 'columns', 'nope'],
      [{ ...base, key: ['name2'] }, 'key', 'name2'],
      [{ ...base, columns: ['name'], where: { nope: 1 } }, 'where', 'nope'],
      [
        {
          ...base,
          source: { driver: a, table: `${table}_nopk` },
          target: { driver: b, table: `${table}_nopk` },
        },
        'key',
        undefined,
      ],
      [{ ...base, source: { driver: a, table: 't; drop' } }, 'source.table', undefined],
    ];
    for (const [options, option, named] of cases) {
      const err = await reconcile(options).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_CONFIG', option });
      if (named !== undefined) expect((err as Error).message).toContain(named);
    }
    expect(progressed).toBe(0);
    expect((await reconcile({ ...base, columns: ['name'] })).clean).toBe(true);

    await a.exec(`create table ${table}_odd (id integer primary key, "first name" text, name text)`);
    await b.exec(`create table ${table}_odd (id integer primary key, "first name" text, name text)`);
    const odd = {
      source: { driver: a, table: `${table}_odd` },
      target: { driver: b, table: `${table}_odd` },
    };
    await expect(reconcile(odd)).rejects.toMatchObject({ code: 'E_CONFIG', option: 'columns' });
    expect((await reconcile({ ...odd, columns: ['name'] })).clean).toBe(true);
  });

  it.skipIf(!services.postgres)('names an unknown PostgreSQL table or schema', async () => {
    const table = uniqueName('known');
    for (const driver of [pg.a!, pg.b!]) await driver.exec(`create table ${table} (id int primary key)`);
    const unknownTable = await reconcile({
      source: { driver: pg.a!, table: 'no_such_table' },
      target: { driver: pg.b!, table },
    }).catch((e: unknown) => e);
    expect(unknownTable).toMatchObject({ code: 'E_CONFIG', option: 'source.table' });
    const unknownSchema = await reconcile({
      source: { driver: pg.a!, table },
      target: { driver: pg.b!, table, schema: 'nowhere' },
    }).catch((e: unknown) => e);
    expect(unknownSchema).toMatchObject({ code: 'E_CONFIG', option: 'target.table' });
    expect(
      (
        await reconcile({
          source: { driver: pg.a!, table, schema: 'public' },
          target: { driver: pg.b!, table },
        })
      ).clean,
    ).toBe(true);
  });

  it('stops with E_ABORTED when the signal fires', async () => {
    const { table } = { table: uniqueName('abort') };
    const a = open('sqlite', 'a');
    const b = open('sqlite', 'b');
    for (const driver of [a, b]) {
      await driver.exec(`create table ${table} (id integer primary key)`);
      await insertRows(
        driver,
        table,
        ['id'],
        Array.from({ length: 100 }, (_, i) => [i]),
      );
    }
    const controller = new AbortController();
    let chunks = 0;
    const err = await reconcile({
      source: { driver: a, table },
      target: { driver: b, table },
      chunkSize: 10,
      signal: controller.signal,
      onProgress: () => {
        if (++chunks === 3) controller.abort();
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_ABORTED' });
    expect(chunks).toBe(3);
  });
});
