import type { EventStore, RecordedEvent } from 'strata/events';
import { isVersionConflict } from 'strata/events';

interface Account {
  open: boolean;
  balance: number;
}

const evolve = (state: Account, event: RecordedEvent): Account => {
  switch (event.type) {
    case 'Opened':
      return { open: true, balance: 0 };
    case 'Deposited':
      return { ...state, balance: state.balance + Number(event.data.amount) };
    case 'Withdrawn':
      return { ...state, balance: state.balance - Number(event.data.amount) };
    default:
      return state;
  }
};

/** Withdraws if the balance allows it; decided on the state it read, appended only if still current. */
export async function withdraw(store: EventStore, account: string, amount: number, attempts = 3) {
  for (let attempt = 1; ; attempt++) {
    const { state, version } = await store.loadAggregate(account, {
      initialState: { open: false, balance: 0 },
      evolve,
    });
    if (!state.open || state.balance < amount) return { ok: false as const, balance: state.balance };
    try {
      // Someone else appended since the load? Then the balance we checked is stale: E_VERSION_CONFLICT.
      await store.append(account, [{ type: 'Withdrawn', data: { amount } }], { expected: version });
      return { ok: true as const, balance: state.balance - amount };
    } catch (err) {
      if (!isVersionConflict(err) || attempt === attempts) throw err;
      // err.details: { stream, expected, actual }. Load again and decide again.
    }
  }
}
