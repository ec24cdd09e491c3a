/**
 * Given/When/Then for projections on a real SQLite database in memory: the events are appended
 * to an event store (so they carry real streams, versions and positions), applied through the
 * projection the way the runtime applies them, and the rows are there to assert. Works with any
 * test runner: a failed expectation throws node's `AssertionError`.
 *
 * ```ts
 * await projectionSpec(balances)
 *   .given([{ stream: 'account-1', type: 'Deposited', data: { amount: 5 } }])
 *   .when([{ stream: 'account-1', type: 'Withdrawn', data: { amount: 2 } }])
 *   .thenRows('balances', [{ account: 'account-1', balance: 3 }]);
 * ```
 */
import { AssertionError, deepStrictEqual } from 'node:assert/strict';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { createSqliteEventStore } from '../backends/sqlite/sqlite-event-store.js';
import { stableJson } from '../core/changes.js';
import { ConfigError } from '../core/errors.js';
import type { Row, SqlDriver, SqlFragment } from '../core/sql.js';
import { sql } from '../core/sql.js';
import {
  applyProjectionEvents,
  assertProjection,
  migrateProjections,
  type Projection,
} from '../cqrs/projection.js';
import type { NewEvent } from '../events/types.js';
import type { ErrorExpectation } from './decider-spec.js';

/** An event of a projection spec: a new event and its stream (default `spec-1`). */
export type SpecEvent = NewEvent & { stream?: string };

/** What a `then` assertion gets: the database after the events. */
export interface ProjectionSpecContext {
  driver: SqlDriver;
  /** Runs a statement and returns its rows. */
  query<R = Row>(statement: SqlFragment): Promise<R[]>;
  /** Every row of the table with the logical name `table`. */
  rows<R = Row>(table: string): Promise<R[]>;
}

/** The "then" step of a projection spec. */
export interface ProjectionThen {
  /** Runs `assert` against the database after the events. */
  then(assert: (context: ProjectionSpecContext) => void | Promise<void>): Promise<void>;
  /** Asserts that the table with the logical name `table` holds exactly `expected`, in any order. */
  thenRows(table: string, expected: readonly Row[]): Promise<void>;
  /** Asserts that applying the events throws an error matching `expected` (a code or a predicate). */
  thenThrows(expected: ErrorExpectation): Promise<void>;
}

/** The "when" step: more events (applied after the given ones), or straight to "then". */
export interface ProjectionWhen extends ProjectionThen {
  when(events: readonly SpecEvent[]): ProjectionThen;
}

/** The "given" step of a projection spec. */
export interface ProjectionSpec {
  given(events: readonly SpecEvent[]): ProjectionWhen;
}

const sortRows = (rows: readonly Row[]): Row[] =>
  [...rows].sort((a, b) => (stableJson(a) < stableJson(b) ? -1 : stableJson(a) > stableJson(b) ? 1 : 0));

/** Starts a spec for `projection`. Throws `E_CONFIG` when it is not a projection. */
export function projectionSpec(projection: Projection): ProjectionSpec {
  assertProjection(projection, 'projection');

  async function run<T>(events: readonly SpecEvent[], then: (context: ProjectionSpecContext) => Promise<T>) {
    const driver = createSqliteDriver(':memory:');
    const store = createSqliteEventStore({ driver });
    try {
      for (const { stream, ...event } of events) {
        await store.append(stream ?? 'spec-1', [event]);
      }
      const recorded = events.length === 0 ? [] : await store.readAll(0, Math.max(events.length, 1));
      await migrateProjections(driver, [projection]);
      await driver.transaction((tx) => applyProjectionEvents(tx, projection, recorded));
      const context: ProjectionSpecContext = {
        driver,
        async query<R = Row>(statement: SqlFragment) {
          return (await driver.query<R>(statement)).rows;
        },
        async rows<R = Row>(table: string) {
          const physical = (projection.tables as Record<string, string>)[table];
          if (physical === undefined) throw new ConfigError('table', 'not a table of this projection');
          return (await driver.query<R>(sql`select * from ${sql.id(physical)}`)).rows;
        },
      };
      return await then(context);
    } finally {
      await store.close();
      await driver.close();
    }
  }

  const thenSteps = (events: readonly SpecEvent[]): ProjectionThen => ({
    // biome-ignore lint/suspicious/noThenProperty: `then` is the Given/When/Then step users call.
    then(assert, ...thenable: unknown[]) {
      // Awaiting the spec before `then` calls this as a thenable (resolve, reject): fail loudly
      // instead of passing without asserting anything.
      const reject = thenable[0];
      if (typeof reject === 'function') {
        (reject as (err: unknown) => void)(
          new ConfigError('then', 'call then(assert) instead of awaiting given() or when()'),
        );
        return Promise.resolve();
      }
      return run(events, async (context) => assert(context));
    },
    thenRows: (table, expected) =>
      run(events, async (context) => {
        const actual = await context.rows(table);
        deepStrictEqual(sortRows(actual), sortRows(expected), `the rows of ${table} differ`);
      }),
    async thenThrows(expected) {
      if (typeof expected !== 'string' && typeof expected !== 'function') {
        throw new ConfigError('thenThrows', 'expected an error code or a predicate');
      }
      let thrown: { err: unknown } | undefined;
      try {
        await run(events, async () => undefined);
      } catch (err) {
        thrown = { err };
      }
      if (thrown === undefined) throw new AssertionError({ message: 'the projection was expected to throw' });
      const ok =
        typeof expected === 'string'
          ? (thrown.err as { code?: unknown } | null)?.code === expected
          : expected(thrown.err) === true;
      if (!ok) {
        throw new AssertionError({
          message: 'the projection threw an error that does not match',
          actual: thrown.err,
        });
      }
    },
  });

  return {
    given(given) {
      if (!Array.isArray(given)) throw new ConfigError('given', 'expected an array of events');
      return {
        ...thenSteps(given),
        when(more) {
          if (!Array.isArray(more)) throw new ConfigError('when', 'expected an array of events');
          return thenSteps([...given, ...more]);
        },
      };
    },
  };
}
