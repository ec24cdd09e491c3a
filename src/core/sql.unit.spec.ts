import { describe, expect, it } from 'vitest';
import { isStrataError } from './errors.js';
import {
  compileSql,
  configIdentifier,
  defaultCapabilities,
  nameHash32,
  quoteIdentifierStandard,
  type SqlDialect,
  sql,
} from './sql.js';

const pg: SqlDialect = {
  name: 'postgres',
  capabilities: defaultCapabilities,
  placeholder: (i) => `$${i}`,
  quoteIdentifier: quoteIdentifierStandard,
};
const lite: SqlDialect = { ...pg, name: 'sqlite', placeholder: () => '?' };

describe('the sql template', () => {
  it('turns values into parameters in order, per dialect', () => {
    const email = "x' or '1'='1";
    const q = sql`select * from ${sql.id('app', 'users')} where email = ${email} and age > ${18}`;
    expect(compileSql(q, pg)).toEqual({
      text: 'select * from "app"."users" where email = $1 and age > $2',
      params: [email, 18],
    });
    expect(compileSql(q, lite).text).toBe('select * from "app"."users" where email = ? and age > ?');
  });

  it('splices nested fragments and numbers parameters across them', () => {
    const where = sql`id = ${1}`;
    const cols = sql.join([sql.id('id'), sql.id('name')]);
    const q = sql`select ${cols} from t where ${where} and x in (${sql.join([2, 3, 4])}) ${sql.empty}`;
    expect(compileSql(q, pg)).toEqual({
      text: 'select "id", "name" from t where id = $1 and x in ($2, $3, $4) ',
      params: [1, 2, 3, 4],
    });
  });

  it('compiles one call site correctly whether a value is a parameter or a fragment', () => {
    const q = (v: unknown) => sql`select * from t where a = ${v} and b = ${2}`;
    expect(compileSql(q(1), pg)).toEqual({ text: 'select * from t where a = $1 and b = $2', params: [1, 2] });
    expect(compileSql(q(sql`lower(${'X'})`), pg)).toEqual({
      text: 'select * from t where a = lower($1) and b = $2',
      params: ['X', 2],
    });
    expect(compileSql(q(3), lite)).toEqual({ text: 'select * from t where a = ? and b = ?', params: [3, 2] });
    expect(compileSql(q(4), pg)).toEqual({ text: 'select * from t where a = $1 and b = $2', params: [4, 2] });
  });

  it('keeps raw text and explicit values apart', () => {
    const q = sql`select ${sql.raw('count(*)')} from t where a = ${sql.value(null)}`;
    expect(compileSql(q, pg)).toEqual({ text: 'select count(*) from t where a = $1', params: [null] });
  });

  it.each(['users; drop table x', 'a"b', '1st', '', 'x'.repeat(64), 'ünïcode', 'a b', 'a-b', 'a.b'])(
    'refuses the identifier %j without echoing it',
    (name) => {
      let err: unknown;
      try {
        sql.id(name);
      } catch (e) {
        err = e;
      }
      expect(isStrataError(err, 'E_IDENTIFIER')).toBe(true);
      if (name.length > 0) expect((err as Error).message).not.toContain(name);
    },
  );

  it('accepts identifiers at the length limit and reserved words (quoted)', () => {
    expect(compileSql(sql`${sql.id('x'.repeat(63))}`, pg).text).toBe(`"${'x'.repeat(63)}"`);
    expect(compileSql(sql`${sql.id('select')}`, pg).text).toBe('"select"');
  });

  it('reports a bad configured identifier as E_CONFIG naming the option', () => {
    let err: unknown;
    try {
      configIdentifier('t; drop', 'changes.table');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'E_CONFIG', option: 'changes.table' });
    expect(configIdentifier('posts', 'changes.table')).toBe('posts');
  });
});

describe('nameHash32', () => {
  it('is 32-bit FNV-1a: the published test vectors', () => {
    expect(nameHash32('')).toBe(0x811c9dc5);
    expect(nameHash32('a')).toBe(0xe40c292c);
    expect(nameHash32('foobar')).toBe(0xbf9cf968);
  });
});
