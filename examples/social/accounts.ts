/**
 * A user's account lifecycle, event-sourced: the stream `account-<userId>` records that the
 * account was registered, changed its email, was suspended or reinstated. The shard's `users`
 * row stays the profile record (handle, name, bio, the current email); the stream is the
 * lifecycle, and the decider below is the only writer of it.
 *
 * The `accounts` projection keeps each account's status and email in the meta database. It is
 * inline: applied in the transaction that appends the events, so "is this user suspended?" is
 * answered from a table that is never behind the stream.
 *
 * Order of writes: the shard row first, the stream second (`sync`). A `registered` event
 * therefore never exists without its user. A failure between the two leaves a user without (or
 * with a stale) account stream for a moment: `sync` compares the stream with the row and appends
 * what is missing, so the next touch of the account (its creation's compensation, an email
 * change, a suspension, a history read after any of those) repairs it. Users created before the
 * app kept account streams are adopted the same way.
 */
import { type SqlDriver, type SqlExecutor, StrataError, sql } from 'strata';
import {
  type CommandHandler,
  createCommandHandler,
  type Decider,
  defineProjection,
  migrateProjections,
} from 'strata/cqrs';
import type { EventStore, EventTypeDefinition, RecordedEvent } from 'strata/events';
import { z } from 'zod';

/** The stream of `userId`'s account. */
export const accountStream = (userId: number) => `account-${userId}`;

const userId = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const email = z.email().max(254);

/** The account events with their schemas (validated by the store on append). */
export const accountEventTypes: readonly EventTypeDefinition[] = [
  {
    type: 'registered',
    version: 1,
    schema: z.strictObject({ userId, handle: z.string().min(1).max(30), email }),
  },
  { type: 'email_changed', version: 1, schema: z.strictObject({ userId, from: email, to: email }) },
  { type: 'suspended', version: 1, schema: z.strictObject({ userId, reason: z.string().max(200) }) },
  { type: 'reinstated', version: 1, schema: z.strictObject({ userId }) },
];

export type AccountEvent =
  | { type: 'registered'; data: { userId: number; handle: string; email: string } }
  | { type: 'email_changed'; data: { userId: number; from: string; to: string } }
  | { type: 'suspended'; data: { userId: number; reason: string } }
  | { type: 'reinstated'; data: { userId: number } };

export type AccountCommand =
  | { type: 'register'; userId: number; handle: string; email: string }
  | { type: 'changeEmail'; email: string }
  | { type: 'suspend'; reason: string }
  | { type: 'reinstate' };

export type AccountStatus = 'unregistered' | 'active' | 'suspended';

export interface AccountState {
  status: AccountStatus;
  userId: number | undefined;
  email: string | undefined;
}

/**
 * `E_ACCOUNT_STATE` (409): the command does not apply to the account as it is now (suspending a
 * suspended account, reinstating an active one). Details: `userId`, `status`, `command`.
 */
function stateError(state: AccountState, command: AccountCommand['type']): StrataError {
  return new StrataError('E_ACCOUNT_STATE', `the account is ${state.status}: ${command} does not apply`, {
    details: { userId: state.userId ?? null, status: state.status, command },
  });
}

/** The account decider: pure rules, no I/O. Registering twice and setting the same email are no-ops. */
export const accountDecider: Decider<AccountState, AccountCommand, AccountEvent> = {
  initialState: () => ({ status: 'unregistered', userId: undefined, email: undefined }),
  evolve(state, event) {
    switch (event.type) {
      case 'registered':
        return { status: 'active', userId: event.data.userId, email: event.data.email };
      case 'email_changed':
        return { ...state, email: event.data.to };
      case 'suspended':
        return { ...state, status: 'suspended' };
      case 'reinstated':
        return { ...state, status: 'active' };
      default:
        return state;
    }
  },
  decide(command, state) {
    if (command.type === 'register') {
      if (state.status !== 'unregistered') return [];
      const { userId, handle, email } = command;
      return [{ type: 'registered', data: { userId, handle, email } }];
    }
    if (state.status === 'unregistered' || state.userId === undefined) throw stateError(state, command.type);
    const id = state.userId;
    switch (command.type) {
      case 'changeEmail':
        return command.email === state.email
          ? []
          : [{ type: 'email_changed', data: { userId: id, from: state.email!, to: command.email } }];
      case 'suspend':
        if (state.status === 'suspended') throw stateError(state, command.type);
        return [{ type: 'suspended', data: { userId: id, reason: command.reason } }];
      case 'reinstate':
        if (state.status !== 'suspended') throw stateError(state, command.type);
        return [{ type: 'reinstated', data: { userId: id } }];
    }
  },
};

/** The `accounts` read model: status and email per user, kept inline with the stream. */
export const accountsProjection = defineProjection({
  name: 'accounts',
  tables: { accounts: 'accounts' },
  handles: ['registered', 'email_changed', 'suspended', 'reinstated'],
  streamTypes: ['account'],
  schema: (t) => sql`create table if not exists ${t.accounts} (
    user_id bigint primary key,
    handle text not null,
    email text not null,
    status text not null,
    reason text,
    version integer not null,
    updated_at bigint not null
  )`,
  async apply(ex: SqlExecutor, event: RecordedEvent, t) {
    const d = event.data as Record<string, unknown>;
    const at = sql`version = ${event.version}, updated_at = ${event.time}`;
    switch (event.type) {
      case 'registered':
        await ex.query(
          sql`insert into ${t.accounts} (user_id, handle, email, status, version, updated_at)
              values (${d.userId}, ${d.handle}, ${d.email}, 'active', ${event.version}, ${event.time})
              on conflict (user_id) do nothing`,
        );
        return;
      case 'email_changed':
        await ex.query(sql`update ${t.accounts} set email = ${d.to}, ${at} where user_id = ${d.userId}`);
        return;
      case 'suspended':
        await ex.query(
          sql`update ${t.accounts} set status = 'suspended', reason = ${d.reason}, ${at} where user_id = ${d.userId}`,
        );
        return;
      case 'reinstated':
        await ex.query(
          sql`update ${t.accounts} set status = 'active', reason = null, ${at} where user_id = ${d.userId}`,
        );
        return;
    }
  },
});

/** The profile fields `sync` compares the stream with. */
export interface AccountProfile {
  id: number;
  handle: string;
  email: string;
}

/** One event of an account's history, as `GET /users/:id/history` returns it. */
export interface AccountHistoryEntry {
  type: string;
  version: number;
  position: number;
  time: number;
  data: Record<string, unknown>;
}

/** What the rest of the app does with accounts. */
export class Accounts {
  readonly handler: CommandHandler<AccountState, AccountCommand>;

  constructor(
    readonly store: EventStore,
    private readonly meta: SqlDriver,
  ) {
    this.handler = createCommandHandler({
      store,
      decider: accountDecider,
      projections: [accountsProjection],
      driver: meta,
    });
  }

  /** Creates the event store's tables and the `accounts` table (idempotent). */
  async migrate(): Promise<void> {
    await this.store.migrate();
    await migrateProjections(this.meta, [accountsProjection]);
  }

  /**
   * Brings the stream in line with the profile row: registers an account that has no stream
   * (with an event id derived from the user id, so a retry is "already appended"), and records
   * an email the stream does not know yet. Idempotent.
   */
  async sync(user: AccountProfile): Promise<AccountState> {
    const stream = accountStream(user.id);
    const registered = await this.handler.handle(
      stream,
      { type: 'register', userId: user.id, handle: user.handle, email: user.email },
      { eventIds: [`account-${user.id}-registered`] },
    );
    if (registered.state.email === user.email) return registered.state;
    return (await this.handler.handle(stream, { type: 'changeEmail', email: user.email })).state;
  }

  /** Suspends the account; `E_ACCOUNT_STATE` when it is suspended already. */
  async suspend(user: AccountProfile, reason: string): Promise<{ status: AccountStatus; version: number }> {
    await this.sync(user);
    const result = await this.handler.handle(accountStream(user.id), { type: 'suspend', reason });
    return { status: result.state.status, version: result.nextExpectedVersion };
  }

  /** Reinstates a suspended account; `E_ACCOUNT_STATE` when it is active. */
  async reinstate(user: AccountProfile): Promise<{ status: AccountStatus; version: number }> {
    await this.sync(user);
    const result = await this.handler.handle(accountStream(user.id), { type: 'reinstate' });
    return { status: result.state.status, version: result.nextExpectedVersion };
  }

  /** The account's events, oldest first. */
  async history(userId: number): Promise<AccountHistoryEntry[]> {
    const events = await this.store.readStream(accountStream(userId));
    return events.map((e) => ({
      type: e.type,
      version: e.version,
      position: e.position,
      time: e.time,
      data: e.data,
    }));
  }

  /** The account's status from the inline projection (`active` for a user without a stream). */
  async status(userId: number): Promise<AccountStatus> {
    const { rows } = await this.meta.query<{ status: string }>(
      sql`select status from ${sql.id(accountsProjection.tables.accounts)} where user_id = ${userId}`,
    );
    return rows[0]?.status === 'suspended' ? 'suspended' : 'active';
  }

  /** `E_ACCOUNT_SUSPENDED` (403, details `userId`) when the account may not write now. */
  async assertActive(userId: number): Promise<void> {
    if ((await this.status(userId)) === 'suspended') {
      throw new StrataError('E_ACCOUNT_SUSPENDED', 'the account is suspended', { details: { userId } });
    }
  }
}
