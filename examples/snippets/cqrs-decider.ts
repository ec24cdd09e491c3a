import { StrataError } from 'strata';
import type { Decider } from 'strata/cqrs';

export type AccountCommand =
  | { type: 'open'; owner: string }
  | { type: 'deposit'; amount: number }
  | { type: 'withdraw'; amount: number };

export type AccountEvent =
  | { type: 'Opened'; data: { owner: string } }
  | { type: 'Deposited'; data: { amount: number } }
  | { type: 'Withdrawn'; data: { amount: number } };

export interface Account {
  open: boolean;
  owner: string;
  balance: number;
}

/** A bank account as a decider: three pure functions, no I/O, no framework types in the state. */
export const account: Decider<Account, AccountCommand, AccountEvent> = {
  initialState: () => ({ open: false, owner: '', balance: 0 }),

  evolve(state, event) {
    switch (event.type) {
      case 'Opened':
        return { ...state, open: true, owner: event.data.owner };
      case 'Deposited':
        return { ...state, balance: state.balance + event.data.amount };
      case 'Withdrawn':
        return { ...state, balance: state.balance - event.data.amount };
      default:
        return state; // a type this version does not know: ignore it
    }
  },

  decide(command, state) {
    if (command.type === 'open') {
      // Opening an open account is not an error: there is nothing to do (no events, no append).
      return state.open ? [] : [{ type: 'Opened', data: { owner: command.owner } }];
    }
    // A thrown error refuses the command: nothing is appended and the error reaches the caller.
    if (!state.open) throw new StrataError('E_ACCOUNT_NOT_OPEN', 'the account is not open');
    if (!(command.amount > 0)) throw new StrataError('E_INVALID_AMOUNT', 'the amount must be positive');
    if (command.type === 'deposit') return [{ type: 'Deposited', data: { amount: command.amount } }];
    if (command.amount > state.balance) {
      throw new StrataError('E_INSUFFICIENT_FUNDS', 'the balance does not cover the withdrawal');
    }
    return [{ type: 'Withdrawn', data: { amount: command.amount } }];
  },
};
