/**
 * Command handling in the decider style: the state of a stream is the fold of its events
 * (`evolve` from `initialState`), a command is turned into new events by `decide`, and the events
 * are appended with the version the state was read at. When another writer got there first the
 * store refuses with `E_VERSION_CONFLICT`; the handler then reloads, decides again on the fresh
 * state and retries, a bounded number of times.
 */

import { backoffDelay, type RetryOptions, type RetryPolicy, retryPolicy } from '../core/async.js';
import { type Clock, sleep, systemClock } from '../core/clock.js';
import { ConfigError, StrataError, ValidationError } from '../core/errors.js';
import type { SqlDriver, SqlExecutor } from '../core/sql.js';
import { isVersionConflict, versionConflictError } from '../events/event-store.js';
import type { EventStore, ExpectedVersion, NewEvent, RecordedEvent } from '../events/types.js';
import { uuidv7 } from '../events/uuid-v7.js';
import {
  applyProjectionEvents,
  assertProjection,
  lockProjections,
  migrateProjections,
  type Projection,
  projectionTarget,
} from './projection.js';

/** An event as `decide` returns it: a type and a JSON payload, optionally an id and metadata. */
export interface DecidedEvent<T extends string = string, D = Record<string, unknown>> {
  type: T;
  data: D;
  id?: string;
  metadata?: Record<string, unknown>;
}

/**
 * The business logic of one kind of stream, free of I/O: `decide` turns a command and the
 * current state into new events (an empty array: nothing to do; a thrown error: refused),
 * `evolve` folds one event into the state, `initialState` gives the state before any event.
 */
export interface Decider<State, Command, Event extends DecidedEvent = DecidedEvent> {
  /** New events for `command` in `state`; may be async (to consult a read model, say). */
  decide(command: Command, state: State): readonly Event[] | Promise<readonly Event[]>;
  /** The state after `event`. Called with stored events, which carry more fields than `Event`. */
  evolve(state: State, event: Event): State;
  /** A fresh state before any event. */
  initialState: () => State;
  /**
   * The version of the state's shape for snapshots (default 1); bump it when `evolve` or the
   * state changes. Snapshots are taken by the store's snapshot policy (see `loadAggregate`).
   */
  stateVersion?: number;
}

/** Options for `createCommandHandler`. */
export interface CommandHandlerOptions<State, Command, Event extends DecidedEvent> {
  store: EventStore;
  decider: Decider<State, Command, Event>;
  /**
   * Retries on `E_VERSION_CONFLICT` (default 3 attempts in all, backoff from 10ms doubling to
   * 1s with jitter); `false` for a single attempt.
   */
  retry?: RetryOptions | false;
  /** Projections applied in the append's transaction; needs `driver`. */
  projections?: readonly Projection[];
  /** The event store's own driver (required with `projections`): the transaction is opened on it. */
  driver?: SqlDriver;
  /** The source of backoff delays and of the `time` inline projections see (default the system clock). */
  clock?: Clock;
}

/** Options of one `handle` call. */
export interface HandleOptions {
  /**
   * The version the caller saw (an `If-Match`, say). The command is refused with
   * `E_VERSION_CONFLICT` unless the stream is still there; it is never retried, since a fresh
   * decision would no longer be the one the caller asked for.
   */
  expected?: ExpectedVersion;
  /**
   * Ids for the decided events, in order (events with their own `id` keep it). A repeated command
   * whose decision is the same is then answered "already appended" instead of appending twice;
   * a different decision under the same ids fails with `E_DUPLICATE_EVENT`.
   */
  eventIds?: readonly string[];
  /** Metadata merged into every decided event's metadata (correlation, causation, user). */
  metadata?: Record<string, unknown>;
}

/** The outcome of a handled command. */
export interface CommandResult<State> {
  /** The appended events (empty when the decision was to do nothing). */
  events: RecordedEvent[];
  /** The stream's version after the command: the expected version for the next one. */
  nextExpectedVersion: number;
  /** The state after the new events. */
  state: State;
  /** True when the events were already stored (a repeated command with the same `eventIds`). */
  alreadyAppended: boolean;
  /** Attempts it took (1 without a conflict). */
  attempts: number;
}

/** Handles commands for one decider. */
export interface CommandHandler<State, Command> {
  /**
   * Loads `stream`, decides, and appends (applying inline projections in the same transaction).
   * Errors: `E_VERSION_CONFLICT` once the retries are spent (its `details` carry `stream`,
   * `expected`, `actual`) or at once with `options.expected`; `E_DECIDER` when `decide` does not
   * return an array of events; `E_VALIDATION` for a bad argument or event; whatever `decide`
   * or a projection throws, unchanged (nothing is appended then).
   */
  handle(stream: string, command: Command, options?: HandleOptions): Promise<CommandResult<State>>;
}

/** Builds the `E_DECIDER` error: `decide` broke its contract (`problem` says how). */
function deciderError(stream: string, problem: string, details: Record<string, unknown> = {}): StrataError {
  return new StrataError('E_DECIDER', `decide for stream "${stream}" ${problem}`, {
    details: { stream, ...details },
  });
}

/**
 * Creates a command handler. Throws `E_CONFIG` naming the option when the store, decider, retry
 * settings or projections are invalid (projections without `driver` included).
 */
export function createCommandHandler<State, Command, Event extends DecidedEvent = DecidedEvent>(
  options: CommandHandlerOptions<State, Command, Event>,
): CommandHandler<State, Command> {
  if (typeof options !== 'object' || options === null) throw new ConfigError('options', 'expected an object');
  const { store, decider } = options;
  if (
    typeof store !== 'object' ||
    store === null ||
    typeof store.append !== 'function' ||
    typeof store.loadAggregate !== 'function'
  ) {
    throw new ConfigError('store', 'expected an event store');
  }
  if (typeof decider !== 'object' || decider === null) throw new ConfigError('decider', 'expected an object');
  for (const fn of ['decide', 'evolve', 'initialState'] as const) {
    if (typeof decider[fn] !== 'function') throw new ConfigError(`decider.${fn}`, 'expected a function');
  }
  const stateVersion = decider.stateVersion ?? 1;
  if (!Number.isSafeInteger(stateVersion) || stateVersion < 1) {
    throw new ConfigError('decider.stateVersion', 'must be an integer of at least 1');
  }
  const policy: RetryPolicy =
    options.retry === false ? retryPolicy({ attempts: 1 }) : retryPolicy(options.retry ?? {}, 'retry');
  const projections = options.projections ?? [];
  if (!Array.isArray(projections)) throw new ConfigError('projections', 'expected an array of projections');
  projections.forEach((p, i) => {
    assertProjection(p, `projections[${i}]`);
  });
  if (new Set(projections.map((p) => p.name)).size !== projections.length) {
    throw new ConfigError('projections', 'a projection appears twice');
  }
  const driver = options.driver;
  if (driver !== undefined && typeof driver.transaction !== 'function') {
    throw new ConfigError('driver', 'expected a SqlDriver');
  }
  if (projections.length > 0 && driver === undefined) {
    throw new ConfigError('driver', 'inline projections need the event store driver');
  }
  const clock = options.clock ?? systemClock;
  if (typeof clock.now !== 'function') throw new ConfigError('clock', 'expected a Clock');
  const targets = projections.map((p) => ({ projection: p, target: projectionTarget(p) }));
  const evolve = decider.evolve as unknown as (state: State, event: RecordedEvent) => State;
  let ready: Promise<void> | undefined;

  // Creating tables inside the append's transaction would wait on ourselves (SQLite): do it first.
  const prepare = (): Promise<void> => {
    ready ??= (async () => {
      await store.migrate();
      if (driver !== undefined && projections.length > 0) await migrateProjections(driver, projections);
    })().catch((err: unknown) => {
      ready = undefined;
      throw err;
    });
    return ready;
  };

  async function attempt(
    stream: string,
    command: Command,
    options: HandleOptions,
  ): Promise<Omit<CommandResult<State>, 'attempts'>> {
    const loaded = await store.loadAggregate<State>(stream, {
      initialState: () => decider.initialState(),
      evolve,
      stateVersion,
    });
    const expected = options.expected;
    if (typeof expected === 'number' && expected !== loaded.version) {
      throw versionConflictError(stream, expected, loaded.version);
    }
    const decided: unknown = await decider.decide(command, loaded.state);
    if (!Array.isArray(decided)) {
      throw deciderError(stream, 'must return an array of events', {
        received: decided === null ? 'null' : typeof decided,
      });
    }
    const events = toNewEvents(stream, decided, options);
    if (events.length === 0) {
      return { events: [], nextExpectedVersion: loaded.version, state: loaded.state, alreadyAppended: false };
    }
    // A deleted stream loads as the initial state; appending as to a new stream recreates it.
    const fresh = loaded.version === 0 || loaded.deleted;
    const appendExpected: ExpectedVersion =
      expected === undefined || typeof expected === 'number'
        ? fresh
          ? 'no_stream'
          : loaded.version
        : expected;
    const run = async (executor?: SqlExecutor) => {
      const result = await store.append(
        stream,
        events,
        executor === undefined ? { expected: appendExpected } : { expected: appendExpected, executor },
      );
      const recorded = toRecorded(stream, events, result.version, result.positions, clock.now());
      return { result, recorded };
    };
    let outcome: Awaited<ReturnType<typeof run>>;
    if (driver === undefined || targets.length === 0) {
      outcome = await run();
    } else {
      outcome = await driver.transaction(
        async (tx) => {
          await lockProjections(tx, projections, 'shared');
          const out = await run(tx);
          if (!out.result.alreadyAppended) {
            for (const { projection, target } of targets) {
              await applyProjectionEvents(tx, projection, out.recorded, target);
            }
          }
          return out;
        },
        { retry: true },
      );
    }
    let state = loaded.state;
    // A repeated command: the stored events are already part of the loaded state.
    if (!outcome.result.alreadyAppended) for (const e of outcome.recorded) state = evolve(state, e);
    return {
      events: outcome.recorded,
      nextExpectedVersion: outcome.result.alreadyAppended ? loaded.version : outcome.result.version,
      state,
      alreadyAppended: outcome.result.alreadyAppended,
    };
  }

  return Object.freeze({
    async handle(stream: string, command: Command, handleOptions: HandleOptions = {}) {
      if (typeof stream !== 'string' || stream.length === 0) {
        throw new ValidationError([{ path: ['stream'], message: 'expected a non-empty stream name' }], {
          subject: 'handle arguments',
        });
      }
      checkHandleOptions(handleOptions);
      await prepare();
      // The caller's own expectation failed: deciding again would not make it hold.
      const attempts = handleOptions.expected === undefined ? policy.attempts : 1;
      for (let n = 1; ; n++) {
        try {
          return { ...(await attempt(stream, command, handleOptions)), attempts: n };
        } catch (err) {
          if (!isVersionConflict(err) || n >= attempts) throw err;
          await sleep(backoffDelay(policy, n), { clock });
        }
      }
    },
  });
}

function checkHandleOptions(options: HandleOptions): void {
  const subject = 'handle options';
  if (typeof options !== 'object' || options === null) {
    throw new ValidationError([{ path: [], message: 'expected an object' }], { subject });
  }
  const { eventIds, metadata } = options;
  if (
    eventIds !== undefined &&
    (!Array.isArray(eventIds) || eventIds.some((id) => typeof id !== 'string' || id.length === 0))
  ) {
    throw new ValidationError([{ path: ['eventIds'], message: 'expected an array of non-empty strings' }], {
      subject,
    });
  }
  if (
    metadata !== undefined &&
    (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata))
  ) {
    throw new ValidationError([{ path: ['metadata'], message: 'expected an object' }], { subject });
  }
}

/** Checks the decided events' shape and adds ids and metadata; `E_DECIDER` for a non-event. */
function toNewEvents(stream: string, decided: readonly unknown[], options: HandleOptions): NewEvent[] {
  const ids = options.eventIds;
  if (ids !== undefined && decided.length > ids.length) {
    throw deciderError(stream, 'returned more events than eventIds were given', {
      events: decided.length,
      eventIds: ids.length,
    });
  }
  return decided.map((value, i) => {
    const e = value as Partial<DecidedEvent> | null;
    if (typeof e !== 'object' || e === null || typeof e.type !== 'string') {
      throw deciderError(stream, 'returned something that is not an event', { index: i });
    }
    const metadata =
      options.metadata === undefined && e.metadata === undefined
        ? undefined
        : { ...options.metadata, ...e.metadata };
    // Ids are ours, not the store's, so that inline projections see the stored ids.
    const id = e.id ?? ids?.[i] ?? uuidv7();
    return {
      type: e.type,
      data: e.data as Record<string, unknown>,
      id,
      ...(metadata === undefined ? {} : { metadata }),
    };
  });
}

/**
 * The appended events as stored events, for `evolve` and inline projections. They are built from
 * what was decided: `time` is the handler's clock and `data` is before any schema transform.
 */
function toRecorded(
  stream: string,
  events: readonly NewEvent[],
  version: number,
  positions: readonly number[],
  now: number,
): RecordedEvent[] {
  const first = version - events.length + 1;
  return events.map((e, i) => ({
    id: e.id!,
    stream,
    type: e.type,
    data: e.data,
    metadata: e.metadata ?? {},
    schemaVersion: e.schemaVersion ?? 1,
    version: first + i,
    position: positions[i] ?? 0,
    time: now,
  }));
}
