/**
 * Given/When/Then for deciders, with no database: given past events, when a command is decided,
 * then these events (or this error). Works with any test runner: a failed expectation throws
 * node's `AssertionError`.
 *
 * ```ts
 * await deciderSpec(account).given([opened]).when(deposit(10)).then([{ type: 'Deposited', data: { amount: 10 } }]);
 * await deciderSpec(account).given([]).when(deposit(10)).thenThrows('E_ACCOUNT_CLOSED');
 * ```
 */
import { AssertionError, deepStrictEqual } from 'node:assert/strict';
import { ConfigError } from '../core/errors.js';
import type { DecidedEvent, Decider } from '../cqrs/decider.js';

/** What a thrown error must match: its `code`, or a predicate returning true. */
export type ErrorExpectation = string | ((err: unknown) => boolean);

/** The "then" step of a decider spec. */
export interface DeciderThen<State, Event extends DecidedEvent> {
  /**
   * Asserts that `decide` returns exactly `expected`, in order. Each event is compared on `type`
   * and `data`, and on `id` and `metadata` only when the expected event has them.
   */
  then(expected: readonly Event[]): Promise<void>;
  /** Asserts that `decide` throws an error matching `expected` (a code or a predicate). */
  thenThrows(expected: ErrorExpectation): Promise<void>;
  /** Asserts the state after the decided events (with `deepStrictEqual`). */
  thenState(expected: State): Promise<void>;
}

/** The "when" step of a decider spec. */
export interface DeciderWhen<State, Command, Event extends DecidedEvent> {
  when(command: Command): DeciderThen<State, Event>;
}

/** The "given" step of a decider spec. */
export interface DeciderSpec<State, Command, Event extends DecidedEvent> {
  /** The stream's past events, folded with `evolve` from `initialState`. */
  given(events: readonly Event[]): DeciderWhen<State, Command, Event>;
}

function describeError(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return `an error with code ${code}`;
  return err instanceof Error ? `a ${err.name}` : 'a non-error value';
}

/** Starts a spec for `decider`. Throws `E_CONFIG` when it is not a decider. */
export function deciderSpec<State, Command, Event extends DecidedEvent>(
  decider: Decider<State, Command, Event>,
): DeciderSpec<State, Command, Event> {
  for (const fn of ['decide', 'evolve', 'initialState'] as const) {
    if (typeof decider?.[fn] !== 'function') throw new ConfigError(`decider.${fn}`, 'expected a function');
  }
  return {
    given(past) {
      if (!Array.isArray(past)) throw new ConfigError('given', 'expected an array of events');
      return {
        when(command) {
          const run = async (): Promise<{ state: State; events: readonly Event[] }> => {
            let state = decider.initialState();
            for (const e of past) state = decider.evolve(state, e);
            const events: unknown = await decider.decide(command, state);
            if (!Array.isArray(events)) {
              throw new AssertionError({
                message: 'decide did not return an array of events',
                actual: events,
              });
            }
            return { state, events: events as readonly Event[] };
          };
          return {
            // biome-ignore lint/suspicious/noThenProperty: `then` is the Given/When/Then step users call.
            async then(expected, ...thenable: unknown[]) {
              if (!Array.isArray(expected)) {
                // Awaiting the spec before `then` calls this as a thenable: fail instead of hanging.
                const error = new ConfigError(
                  'then',
                  'expected an array of events; call then() instead of awaiting when()',
                );
                const reject = thenable[0];
                if (typeof reject !== 'function') throw error;
                (reject as (err: unknown) => void)(error);
                return;
              }
              const { events } = await run();
              const actual = events.map((e, i) => {
                const want = expected[i] as Partial<DecidedEvent> | undefined;
                return {
                  type: e.type,
                  data: e.data,
                  ...(want?.id === undefined ? {} : { id: e.id }),
                  ...(want?.metadata === undefined ? {} : { metadata: e.metadata }),
                };
              });
              const wanted = expected.map((e) => ({
                type: e.type,
                data: e.data,
                ...(e.id === undefined ? {} : { id: e.id }),
                ...(e.metadata === undefined ? {} : { metadata: e.metadata }),
              }));
              deepStrictEqual(actual, wanted, 'decide returned other events than expected');
            },
            async thenThrows(expected) {
              if (typeof expected !== 'string' && typeof expected !== 'function') {
                throw new ConfigError('thenThrows', 'expected an error code or a predicate');
              }
              let thrown: { err: unknown } | undefined;
              try {
                await run();
              } catch (err) {
                thrown = { err };
              }
              if (thrown === undefined) {
                throw new AssertionError({ message: 'decide was expected to throw but returned events' });
              }
              const matches =
                typeof expected === 'string'
                  ? (thrown.err as { code?: unknown } | null)?.code === expected
                  : expected(thrown.err) === true;
              if (!matches) {
                const want = typeof expected === 'string' ? `code ${expected}` : 'the predicate';
                throw new AssertionError({
                  message: `decide threw ${describeError(thrown.err)}, which does not match ${want}`,
                  actual: thrown.err,
                });
              }
            },
            async thenState(expected) {
              const { state, events } = await run();
              let after = state;
              for (const e of events) after = decider.evolve(after, e);
              deepStrictEqual(after, expected, 'the state after the decided events differs');
            },
          };
        },
      };
    },
  };
}
