/**
 * The conformance suite of the SQL driver role. Every strata SQL backend runs it against its
 * real engine; run it against your own `SqlDriver` the same way:
 *
 * ```ts
 * describeSqlDriverConformance('my driver', async () => createMyDriver(url));
 * ```
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isStrataError } from '../core/errors.js';
import { type SqlDriver, sql } from '../core/sql.js';

/** Options for `describeSqlDriverConformance`. */
export interface SqlDriverConformanceOptions {
  /** Column type for binary data (default `bytea` on PostgreSQL, `blob` elsewhere). */
  bytesType?: string;
  /** Runs after the suite, with the driver (already closed by the suite's own close test). */
  teardown?: () => Promise<void> | void;
}

const INJECTION = `x'); DROP TABLE strata_victim; --`;

/**
 * Registers the SQL driver conformance tests. `create` is called once for the shared driver and
 * again for the close tests; each call must return a driver on the same database.
 */
export function describeSqlDriverConformance(
  label: string,
  create: () => Promise<SqlDriver> | SqlDriver,
  options: SqlDriverConformanceOptions = {},
): void {
  describe(`SqlDriver conformance: ${label}`, () => {
    let db: SqlDriver;
    const suffix = Math.random().toString(36).slice(2, 8);
    const t = (name: string) => sql.id(`conf_${name}_${suffix}`);

    beforeAll(async () => {
      db = await create();
      const bytes = options.bytesType ?? (db.dialect.name === 'postgres' ? 'bytea' : 'blob');
      await db.exec(`
        create table conf_items_${suffix} (
          id integer primary key,
          email text not null unique,
          qty integer not null default 0 check (qty >= 0),
          note text,
          payload ${bytes}
        );
        create table conf_parent_${suffix} (id integer primary key);
        create table conf_child_${suffix} (
          id integer primary key,
          parent_id integer not null references conf_parent_${suffix}(id)
        );
        create table conf_victim_${suffix} (id integer primary key);
        create table "conf_order_${suffix}" ("select" integer primary key, "from" text);
      `);
    });

    afterAll(async () => {
      if (db && !db.closed) {
        for (const name of ['child', 'parent', 'items', 'victim', 'order']) {
          await db.query(sql`drop table if exists ${t(name)}`);
        }
        await db.close();
      }
      await options.teardown?.();
    });

    it('runs statements with bound parameters and reports row counts', async () => {
      const inserted = await db.query(
        sql`insert into ${t('items')} (id, email, qty) values (${1}, ${'a@example.com'}, ${3}), (${2}, ${'b@example.com'}, ${5})`,
      );
      expect(inserted.rowCount).toBe(2);
      const { rows } = await db.query<{ id: number; email: string; qty: number }>(
        sql`select id, email, qty from ${t('items')} where qty >= ${3} order by id`,
      );
      expect(rows).toEqual([
        { id: 1, email: 'a@example.com', qty: 3 },
        { id: 2, email: 'b@example.com', qty: 5 },
      ]);
      const updated = await db.query(sql`update ${t('items')} set qty = qty + 1 where id = ${1}`);
      expect(updated.rowCount).toBe(1);
      const none = await db.query(sql`update ${t('items')} set qty = 0 where id = ${999}`);
      expect(none.rowCount).toBe(0);
    });

    it('accepts raw text with the dialect placeholders', async () => {
      const p = db.dialect.placeholder(1);
      const { rows } = await db.query<{ email: string }>(
        `select email from conf_items_${suffix} where id = ${p}`,
        [2],
      );
      expect(rows).toEqual([{ email: 'b@example.com' }]);
    });

    it('returns rows from INSERT ... RETURNING when the dialect supports it', async () => {
      if (!db.dialect.capabilities.returning) return;
      const { rows } = await db.query<{ id: number }>(
        sql`insert into ${t('items')} (id, email) values (${3}, ${'c@example.com'}) returning id`,
      );
      expect(rows).toEqual([{ id: 3 }]);
    });

    it('round-trips text, unicode, numbers, null and bytes', async () => {
      const bytes = new Uint8Array([0, 1, 2, 255]);
      // NUL is left out: PostgreSQL text cannot hold it; everything else must come back verbatim.
      const note = 'héllo \u{1F600} " \' \\ \n\t ∑ 中文';
      await db.query(
        sql`insert into ${t('items')} (id, email, qty, note, payload) values (${10}, ${'u@example.com'}, ${0}, ${note}, ${bytes})`,
      );
      const { rows } = await db.query<{ note: string; payload: Uint8Array; qty: number }>(
        sql`select note, payload, qty from ${t('items')} where id = ${10}`,
      );
      expect(rows[0]?.note).toBe(note);
      expect(new Uint8Array(rows[0]!.payload)).toEqual(bytes);
      const nulls = await db.query<{ note: unknown }>(sql`select note from ${t('items')} where id = ${1}`);
      expect(nulls.rows[0]?.note).toBeNull();
    });

    it('keeps values as parameters: an injection attempt is stored verbatim', async () => {
      await db.query(sql`insert into ${t('victim')} (id) values (${1})`);
      await db.query(sql`insert into ${t('items')} (id, email) values (${20}, ${INJECTION})`);
      const { rows } = await db.query<{ email: string }>(
        sql`select email from ${t('items')} where email = ${INJECTION}`,
      );
      expect(rows).toEqual([{ email: INJECTION }]);
      const victim = await db.query(sql`select id from ${t('victim')}`);
      expect(victim.rowCount).toBe(1);
    });

    it('validates identifiers and quotes reserved words', async () => {
      for (const bad of ['x; drop table y', 'a"b', '1abc', '', 'a'.repeat(64), 'tab le', "it's"]) {
        let caught: unknown;
        try {
          sql.id(bad);
        } catch (err) {
          caught = err;
        }
        expect(isStrataError(caught, 'E_IDENTIFIER')).toBe(true);
        expect((caught as Error).message).not.toContain(bad.length > 0 ? bad : '\u0000');
      }
      await db.query(
        sql`insert into ${sql.id(`conf_order_${suffix}`)} (${sql.id('select')}, ${sql.id('from')}) values (${1}, ${'x'})`,
      );
      const { rows } = await db.query<{ from: string }>(
        sql`select ${sql.id('from')} from ${sql.id(`conf_order_${suffix}`)} where ${sql.id('select')} = ${1}`,
      );
      expect(rows).toEqual([{ from: 'x' }]);
    });

    it('reports unique violations as E_CONSTRAINT with kind and table, without the value', async () => {
      const secret = 'secret-value-4711@example.com';
      await db.query(sql`insert into ${t('items')} (id, email) values (${30}, ${secret})`);
      const err = await db
        .query(sql`insert into ${t('items')} (id, email) values (${31}, ${secret})`)
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONSTRAINT')).toBe(true);
      expect(err).toMatchObject({ constraintKind: 'unique', table: `conf_items_${suffix}` });
      expect((err as Error).message).not.toContain(secret);
      expect(JSON.stringify((err as { details: unknown }).details)).not.toContain(secret);
      const pk = await db
        .query(sql`insert into ${t('items')} (id, email) values (${30}, ${'other-pk@example.com'})`)
        .catch((e: unknown) => e);
      expect(pk).toMatchObject({
        code: 'E_CONSTRAINT',
        constraintKind: 'unique',
        table: `conf_items_${suffix}`,
      });
    });

    it('reports not-null, check and foreign-key violations with their kinds', async () => {
      const notNull = await db
        .query(sql`insert into ${t('items')} (id, email) values (${40}, ${null})`)
        .catch((e) => e);
      expect(notNull).toMatchObject({ code: 'E_CONSTRAINT', constraintKind: 'not_null' });
      const check = await db
        .query(sql`insert into ${t('items')} (id, email, qty) values (${41}, ${'q@example.com'}, ${-1})`)
        .catch((e) => e);
      expect(check).toMatchObject({ code: 'E_CONSTRAINT', constraintKind: 'check' });
      const fk = await db
        .query(sql`insert into ${t('child')} (id, parent_id) values (${1}, ${12345})`)
        .catch((e) => e);
      expect(fk).toMatchObject({ code: 'E_CONSTRAINT', constraintKind: 'foreign_key' });
    });

    it('reports syntax errors and unknown tables as E_QUERY', async () => {
      const syntax = await db.query('selec 1').catch((e: unknown) => e);
      expect(isStrataError(syntax, 'E_QUERY')).toBe(true);
      const missing = await db
        .query(sql`select * from ${sql.id('conf_missing_table')}`)
        .catch((e: unknown) => e);
      expect(isStrataError(missing, 'E_QUERY')).toBe(true);
      expect(missing).toMatchObject({ table: 'conf_missing_table' });
    });

    it('commits a transaction and returns its result', async () => {
      const result = await db.transaction(async (tx) => {
        expect(tx.depth).toBe(1);
        await tx.query(sql`insert into ${t('items')} (id, email) values (${50}, ${'tx@example.com'})`);
        return 'done';
      });
      expect(result).toBe('done');
      const { rowCount } = await db.query(sql`select id from ${t('items')} where id = ${50}`);
      expect(rowCount).toBe(1);
    });

    it('rolls back a transaction whose callback throws, and rethrows the same error', async () => {
      const boom = new Error('boom');
      const err = await db
        .transaction(async (tx) => {
          await tx.query(sql`insert into ${t('items')} (id, email) values (${51}, ${'rb@example.com'})`);
          throw boom;
        })
        .catch((e: unknown) => e);
      expect(err).toBe(boom);
      const { rowCount } = await db.query(sql`select id from ${t('items')} where id = ${51}`);
      expect(rowCount).toBe(0);
    });

    it('rolls back a transaction after a failed statement', async () => {
      const err = await db
        .transaction(async (tx) => {
          await tx.query(sql`insert into ${t('items')} (id, email) values (${52}, ${'f1@example.com'})`);
          await tx.query(sql`insert into ${t('items')} (id, email) values (${52}, ${'f2@example.com'})`);
        })
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CONSTRAINT')).toBe(true);
      const { rowCount } = await db.query(sql`select id from ${t('items')} where id = ${52}`);
      expect(rowCount).toBe(0);
    });

    it('nests transactions as savepoints: an inner failure rolls back only the inner work', async () => {
      await db.transaction(async (tx) => {
        await tx.query(sql`insert into ${t('items')} (id, email) values (${60}, ${'outer@example.com'})`);
        const inner = await tx
          .transaction(async (sp) => {
            expect(sp.depth).toBe(2);
            await sp.query(sql`insert into ${t('items')} (id, email) values (${61}, ${'inner@example.com'})`);
            throw new Error('inner fails');
          })
          .catch((e: Error) => e.message);
        expect(inner).toBe('inner fails');
        await tx.transaction(async (sp) => {
          await sp.query(sql`insert into ${t('items')} (id, email) values (${62}, ${'inner2@example.com'})`);
          await sp.transaction(async (sp2) => {
            expect(sp2.depth).toBe(3);
            await sp2.query(
              sql`insert into ${t('items')} (id, email) values (${63}, ${'inner3@example.com'})`,
            );
          });
        });
      });
      const { rows } = await db.query<{ id: number }>(
        sql`select id from ${t('items')} where id between ${60} and ${63} order by id`,
      );
      expect(rows.map((r) => r.id)).toEqual([60, 62, 63]);
    });

    it('isolates concurrent transactions from each other', async () => {
      await db.query(
        sql`insert into ${t('items')} (id, email, qty) values (${70}, ${'counter@example.com'}, ${0})`,
      );
      await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          db
            .transaction(async (tx) => {
              await tx.query(sql`update ${t('items')} set qty = qty + 1 where id = ${70}`);
              if (i % 4 === 0) throw new Error('roll back this one');
            })
            .catch(() => undefined),
        ),
      );
      const { rows } = await db.query<{ qty: number }>(sql`select qty from ${t('items')} where id = ${70}`);
      expect(rows[0]?.qty).toBe(15);
    });

    it('runs afterCommit hooks after commit, and never after a rollback', async () => {
      const calls: string[] = [];
      await db.transaction(async (tx) => {
        tx.afterCommit(() => {
          calls.push('committed');
        });
        await tx.transaction(async (sp) => {
          sp.afterCommit(() => {
            calls.push('nested');
          });
        });
        calls.push('body');
      });
      await db
        .transaction(async (tx) => {
          tx.afterCommit(() => {
            calls.push('never');
          });
          throw new Error('rollback');
        })
        .catch(() => undefined);
      expect(calls).toEqual(['body', 'committed', 'nested']);
    });

    it('lets an afterCommit hook use the driver again', async () => {
      let seen: unknown;
      await db.transaction(async (tx) => {
        await tx.query(sql`insert into ${t('items')} (id, email) values (${80}, ${'hook@example.com'})`);
        tx.afterCommit(async () => {
          seen = (await db.query<{ id: number }>(sql`select id from ${t('items')} where id = ${80}`)).rows[0]
            ?.id;
        });
      });
      expect(seen).toBe(80);
    });

    it('drops afterCommit hooks of a savepoint that rolled back', async () => {
      const calls: string[] = [];
      await db.transaction(async (tx) => {
        await tx
          .transaction(async (sp) => {
            sp.afterCommit(() => {
              calls.push('rolled back savepoint');
            });
            throw new Error('undo this savepoint');
          })
          .catch(() => undefined);
        await tx.transaction(async (sp) => {
          sp.afterCommit(() => {
            calls.push('kept savepoint');
          });
        });
      });
      expect(calls).toEqual(['kept savepoint']);
    });

    it('fails fast with E_TRANSACTION when an outer handle opens a savepoint inside its own savepoint', async () => {
      const err = await db
        .transaction(async (tx) => {
          await tx.transaction(async () => {
            await tx.transaction(async () => undefined);
          });
        })
        .catch((e: unknown) => e);
      expect(isStrataError(err, 'E_TRANSACTION')).toBe(true);
    });

    it('refuses writes in a read-only transaction and rejects an unknown isolation level', async () => {
      const write = await db
        .transaction(
          async (tx) => {
            await tx.query(sql`insert into ${t('items')} (id, email) values (${81}, ${'ro@example.com'})`);
          },
          { readOnly: true },
        )
        .catch((e: unknown) => e);
      expect(isStrataError(write, 'E_QUERY')).toBe(true);
      expect((await db.query(sql`select id from ${t('items')} where id = ${81}`)).rowCount).toBe(0);
      const read = await db.transaction(async (tx) => (await tx.query(sql`select 1 as one`)).rows, {
        readOnly: true,
      });
      expect(read).toEqual([{ one: 1 }]);
      // The connection is writable again afterwards.
      await db.query(sql`insert into ${t('items')} (id, email) values (${82}, ${'rw@example.com'})`);
      const isolation = await db
        .transaction(async () => undefined, { isolation: 'snapshot' as 'serializable' })
        .catch((e: unknown) => e);
      expect(isolation).toMatchObject({ code: 'E_CONFIG', option: 'isolation' });
    });

    it('returns integers exactly: numbers when safe, BigInt beyond 2^53', async () => {
      const { rows } = await db.query<{ small: unknown; big: unknown }>(
        sql`select ${sql.raw('42')} as small, ${sql.raw('9007199254740993')} as big`,
      );
      expect(rows[0]?.small).toBe(42);
      expect(rows[0]?.big).toBe(9007199254740993n);
    });

    it('retries a transaction on E_SERIALIZATION only when asked', async () => {
      const conflict = () => Object.assign(new Error('conflict'), { code: 'E_SERIALIZATION', details: {} });
      let attempts = 0;
      const result = await db.transaction(
        async (tx) => {
          attempts++;
          await tx.query('select 1');
          if (attempts < 3) throw conflict();
          return attempts;
        },
        { retry: { attempts: 5, initialDelay: 1 } },
      );
      expect(result).toBe(3);
      let once = 0;
      const err = await db
        .transaction(async () => {
          once++;
          throw conflict();
        })
        .catch((e: unknown) => e);
      expect(once).toBe(1);
      expect(isStrataError(err, 'E_SERIALIZATION')).toBe(true);
    });

    it('refuses a transaction handle once its callback has settled', async () => {
      let leaked: { query: SqlDriver['query'] } | undefined;
      await db.transaction(async (tx) => {
        leaked = tx;
      });
      const err = await leaked!.query('select 1').catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CLOSED')).toBe(true);
    });

    it('runs multi-statement scripts with exec', async () => {
      await db.exec(
        `create table conf_script_${suffix} (id integer primary key); insert into conf_script_${suffix} (id) values (1); insert into conf_script_${suffix} (id) values (2);`,
      );
      const { rowCount } = await db.query(sql`select id from ${t('script')}`);
      expect(rowCount).toBe(2);
      await db.exec(`drop table conf_script_${suffix}`);
    });

    it('answers ping', async () => {
      await expect(db.ping()).resolves.toBeUndefined();
    });

    it('fails with E_CLOSED after close, and closing twice is safe', async () => {
      const other = await create();
      await other.close();
      await other.close();
      expect(other.closed).toBe(true);
      const err = await other.query('select 1').catch((e: unknown) => e);
      expect(isStrataError(err, 'E_CLOSED')).toBe(true);
      const txErr = await other.transaction(async () => 1).catch((e: unknown) => e);
      expect(isStrataError(txErr, 'E_CLOSED')).toBe(true);
    });
  });
}
