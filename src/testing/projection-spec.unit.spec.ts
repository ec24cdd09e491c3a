import { AssertionError } from 'node:assert/strict';
import { describe, expect, it } from 'vitest';
import { StrataError } from '../core/errors.js';
import { sql } from '../core/sql.js';
import { defineProjection } from '../cqrs/projection.js';
import { projectionSpec } from './projection-spec.js';

const balances = defineProjection({
  name: 'spec_balances',
  tables: { balances: 'spec_account_balances' },
  handles: ['Opened', 'Deposited', 'Frozen'],
  schema: (t, names) => [
    sql`create table if not exists ${t.balances} (account text primary key, owner text not null, balance integer not null)`,
    sql`create index if not exists ${sql.id(`${names.balances}_by_owner`)} on ${t.balances} (owner)`,
  ],
  async apply(ex, event, t) {
    if (event.type === 'Opened') {
      await ex.query(
        sql`insert into ${t.balances} (account, owner, balance) values (${event.stream}, ${event.data.owner}, 0)`,
      );
    } else if (event.type === 'Deposited') {
      await ex.query(
        sql`update ${t.balances} set balance = balance + ${event.data.amount} where account = ${event.stream}`,
      );
    } else {
      throw new StrataError('E_FROZEN', 'frozen accounts are not projected');
    }
  },
});

describe('projectionSpec', () => {
  it('applies the given and when events and compares rows in any order', async () => {
    await projectionSpec(balances)
      .given([
        { stream: 'account-1', type: 'Opened', data: { owner: 'ann' } },
        { stream: 'account-2', type: 'Opened', data: { owner: 'bob' } },
        { stream: 'account-1', type: 'Ignored', data: {} },
      ])
      .when([
        { stream: 'account-1', type: 'Deposited', data: { amount: 5 } },
        { stream: 'account-1', type: 'Deposited', data: { amount: 2 } },
      ])
      .thenRows('balances', [
        { account: 'account-2', owner: 'bob', balance: 0 },
        { account: 'account-1', owner: 'ann', balance: 7 },
      ]);
  });

  it('fails with an AssertionError when the rows differ', async () => {
    await expect(
      projectionSpec(balances)
        .given([{ stream: 'account-1', type: 'Opened', data: { owner: 'ann' } }])
        .thenRows('balances', [{ account: 'account-1', owner: 'ann', balance: 1 }]),
    ).rejects.toBeInstanceOf(AssertionError);
  });

  it('then gives queries against the real database', async () => {
    await projectionSpec(balances)
      .given([{ stream: 'account-9', type: 'Opened', data: { owner: 'cy' } }])
      .then(async ({ query, rows }) => {
        expect(await rows('balances')).toHaveLength(1);
        const [row] = await query<{ n: number }>(
          sql`select count(*) as n from ${sql.id('spec_account_balances')}`,
        );
        expect(row?.n).toBe(1);
        await expect(rows('nope')).rejects.toMatchObject({ code: 'E_CONFIG' });
      });
  });

  it('thenThrows matches the error a projection throws, and fails when none is thrown', async () => {
    const frozen = projectionSpec(balances).given([
      { stream: 'account-1', type: 'Opened', data: { owner: 'ann' } },
      { stream: 'account-1', type: 'Frozen', data: {} },
    ]);
    await frozen.thenThrows('E_FROZEN');
    await expect(frozen.thenThrows('E_OTHER')).rejects.toBeInstanceOf(AssertionError);
    await expect(projectionSpec(balances).given([]).thenThrows('E_FROZEN')).rejects.toBeInstanceOf(
      AssertionError,
    );
  });

  it('refuses something that is not a projection with E_CONFIG', () => {
    expect(() => projectionSpec({ name: 'x' } as never)).toThrow(
      expect.objectContaining({ code: 'E_CONFIG' }),
    );
  });
});

describe('projectionSpec awaited by mistake', () => {
  it('rejects with E_CONFIG instead of passing without asserting', async () => {
    const awaited = async () => {
      await projectionSpec(balances).given([{ stream: 'account-1', type: 'Opened', data: { owner: 'ann' } }]);
    };
    await expect(awaited()).rejects.toMatchObject({ code: 'E_CONFIG', option: 'then' });
  });
});
