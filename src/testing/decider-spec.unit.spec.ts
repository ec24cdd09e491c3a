import { AssertionError } from 'node:assert/strict';
import { describe, expect, it } from 'vitest';
import { StrataError } from '../core/errors.js';
import type { Decider } from '../cqrs/decider.js';
import { deciderSpec } from './decider-spec.js';

type Event =
  | { type: 'Opened'; data: { owner: string } }
  | { type: 'Deposited'; data: { amount: number } }
  | { type: 'Withdrawn'; data: { amount: number } };
type Command =
  | { type: 'open'; owner: string }
  | { type: 'deposit'; amount: number }
  | { type: 'withdraw'; amount: number };
interface State {
  open: boolean;
  balance: number;
}

const account: Decider<State, Command, Event> = {
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
  decide(command, state) {
    if (command.type === 'open')
      return state.open ? [] : [{ type: 'Opened', data: { owner: command.owner } }];
    if (!state.open) throw new StrataError('E_ACCOUNT_CLOSED', 'the account is not open');
    if (command.type === 'deposit') return [{ type: 'Deposited', data: { amount: command.amount } }];
    if (command.amount > state.balance) throw new StrataError('E_INSUFFICIENT_FUNDS', 'not enough money');
    return [{ type: 'Withdrawn', data: { amount: command.amount } }];
  },
};

const opened: Event = { type: 'Opened', data: { owner: 'ann' } };

describe('deciderSpec', () => {
  it('passes when decide returns the expected events, folding the given ones first', async () => {
    await deciderSpec(account)
      .given([opened, { type: 'Deposited', data: { amount: 5 } }])
      .when({ type: 'withdraw', amount: 5 })
      .then([{ type: 'Withdrawn', data: { amount: 5 } }]);
    await deciderSpec(account).given([opened]).when({ type: 'open', owner: 'ann' }).then([]);
  });

  it('fails with an AssertionError when the events differ (type, data, count or order)', async () => {
    const spec = deciderSpec(account).given([opened]).when({ type: 'deposit', amount: 10 });
    await expect(spec.then([{ type: 'Deposited', data: { amount: 11 } }])).rejects.toBeInstanceOf(
      AssertionError,
    );
    await expect(spec.then([])).rejects.toBeInstanceOf(AssertionError);
    await expect(
      spec.then([
        { type: 'Deposited', data: { amount: 10 } },
        { type: 'Deposited', data: { amount: 10 } },
      ]),
    ).rejects.toBeInstanceOf(AssertionError);
  });

  it('compares metadata and ids only when the expected event has them', async () => {
    const tagged: Decider<State, Command, Event> = {
      ...account,
      decide: (c, s) =>
        (account.decide(c, s) as Event[]).map((e) => ({ ...e, id: 'e-1', metadata: { by: 'ann' } })),
    };
    const spec = deciderSpec(tagged).given([opened]).when({ type: 'deposit', amount: 1 });
    await spec.then([{ type: 'Deposited', data: { amount: 1 } }]);
    await spec.then([
      { type: 'Deposited', data: { amount: 1 }, id: 'e-1', metadata: { by: 'ann' } } as Event,
    ]);
    await expect(
      spec.then([{ type: 'Deposited', data: { amount: 1 }, metadata: { by: 'bob' } } as Event]),
    ).rejects.toBeInstanceOf(AssertionError);
  });

  it('thenThrows matches a code or a predicate, and fails on another error or no error', async () => {
    const overdraw = deciderSpec(account).given([opened]).when({ type: 'withdraw', amount: 1 });
    await overdraw.thenThrows('E_INSUFFICIENT_FUNDS');
    await overdraw.thenThrows((err) => err instanceof StrataError && err.details !== undefined);
    await expect(overdraw.thenThrows('E_ACCOUNT_CLOSED')).rejects.toBeInstanceOf(AssertionError);
    await expect(overdraw.thenThrows(() => false)).rejects.toBeInstanceOf(AssertionError);
    await deciderSpec(account).given([]).when({ type: 'deposit', amount: 1 }).thenThrows('E_ACCOUNT_CLOSED');
    await expect(
      deciderSpec(account)
        .given([opened])
        .when({ type: 'deposit', amount: 1 })
        .thenThrows('E_ACCOUNT_CLOSED'),
    ).rejects.toBeInstanceOf(AssertionError);
  });

  it('thenState checks the state after the decided events', async () => {
    const spec = deciderSpec(account).given([opened]).when({ type: 'deposit', amount: 7 });
    await spec.thenState({ open: true, balance: 7 });
    await expect(spec.thenState({ open: true, balance: 0 })).rejects.toBeInstanceOf(AssertionError);
  });

  it('supports async deciders and reports a decide that returns no array', async () => {
    const asyncDecider: Decider<State, Command, Event> = {
      ...account,
      decide: async (c, s) => account.decide(c, s),
    };
    await deciderSpec(asyncDecider)
      .given([opened])
      .when({ type: 'deposit', amount: 2 })
      .then([{ type: 'Deposited', data: { amount: 2 } }]);
    const broken = { ...account, decide: () => ({ type: 'Deposited', data: {} }) } as unknown as Decider<
      State,
      Command,
      Event
    >;
    await expect(deciderSpec(broken).given([]).when({ type: 'deposit', amount: 1 }).then([])).rejects.toThrow(
      'decide did not return an array of events',
    );
  });

  it('awaiting the spec before then() fails with E_CONFIG instead of hanging', async () => {
    const when = deciderSpec(account).given([opened]).when({ type: 'deposit', amount: 1 });
    await expect((async () => await (when as unknown as Promise<unknown>))()).rejects.toMatchObject({
      code: 'E_CONFIG',
    });
  });

  it('refuses something that is not a decider with E_CONFIG', () => {
    expect(() => deciderSpec({} as Decider<State, Command, Event>)).toThrow(
      expect.objectContaining({ code: 'E_CONFIG' }),
    );
  });
});
