import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { projections } from '../../test/fixtures/cli-projections.js';
import { runCliInProcess, services, tempDir } from '../../test/helpers.js';
import { createPostgresDriver } from '../backends/postgres/postgres-driver.js';
import { createPostgresEventStore } from '../backends/postgres/postgres-event-store.js';
import { createPostgresTestDatabase } from '../backends/postgres/postgres-test-database.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { createSqliteEventStore } from '../backends/sqlite/sqlite-event-store.js';
import { createProjectionConsumer } from '../cqrs/projection.js';
import type { EventStore } from '../events/types.js';

const cli = (args: string[]) => runCliInProcess(args);

const cleanups: Array<() => unknown> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function seed(store: EventStore): Promise<void> {
  await store.append('account-1', [
    { type: 'registered', data: { email: 'a@example.com' } },
    { type: 'email_changed', data: { email: 'b@example.com' } },
  ]);
  await store.append('account-2', [{ type: 'registered', data: { email: 'c@example.com' } }]);
  await store.append('account-1', [{ type: 'suspended', data: { reason: 'spam' } }]);
}

function tailCases(storeSpec: () => string) {
  it('prints the global log from the beginning in order, as JSON', async () => {
    const result = await cli([
      'events',
      'tail',
      '--store',
      storeSpec(),
      '--from',
      'beginning',
      '--limit',
      '4',
      '--json',
    ]);
    expect(result.code).toBe(0);
    const events = result.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    expect(events.map((e) => `${e.stream}@${e.version}:${e.type}`)).toEqual([
      'account-1@1:registered',
      'account-1@2:email_changed',
      'account-2@1:registered',
      'account-1@3:suspended',
    ]);
    for (let i = 1; i < events.length; i++)
      expect(events[i].position).toBeGreaterThan(events[i - 1].position);
  });

  it('filters by type and by stream, and starts after a position', async () => {
    const byType = await cli([
      'events',
      'tail',
      '--store',
      storeSpec(),
      '--from',
      'beginning',
      '--type',
      'registered',
      '--limit',
      '2',
      '--json',
    ]);
    expect(
      byType.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).stream),
    ).toEqual(['account-1', 'account-2']);
    const all = await cli([
      'events',
      'tail',
      '--store',
      storeSpec(),
      '--from',
      'beginning',
      '--limit',
      '4',
      '--json',
    ]);
    const second = JSON.parse(all.stdout.trim().split('\n')[1]!).position as number;
    const after = await cli([
      'events',
      'tail',
      '--store',
      storeSpec(),
      '--from',
      String(second),
      '--stream',
      'account-1',
      '--limit',
      '1',
    ]);
    expect(after.code).toBe(0);
    expect(after.stdout).toContain('account-1@3');
    expect(after.stdout).toContain('suspended');
  });

  it('rejects a bad --from with one line and exit 2', async () => {
    const result = await cli(['events', 'tail', '--store', storeSpec(), '--from', '-3', '--limit', '1']);
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain('from');
  });
}

describe('strata events tail on SQLite', () => {
  const dir = tempDir('strata-cli-events-');
  cleanups.push(() => dir.remove());
  const file = join(dir.path, 'events.db');
  let ready: Promise<void> | undefined;
  const spec = () => `sqlite:${file}`;
  it('sets up a store with events', async () => {
    ready ??= (async () => {
      const driver = createSqliteDriver(file);
      const store = createSqliteEventStore({ driver });
      await seed(store);
      await store.close();
      await driver.close();
    })();
    await ready;
  });
  tailCases(spec);

  it('names a missing SQLite file in one line, exit 2', async () => {
    const result = await cli([
      'events',
      'tail',
      '--store',
      `sqlite:${join(dir.path, 'nope.db')}`,
      '--limit',
      '1',
    ]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('nope.db');
  });
});

describe.skipIf(!services.postgres)('strata events tail on PostgreSQL', () => {
  let url = '';
  it('sets up a store with events', async () => {
    const db = await createPostgresTestDatabase({ prefix: 'strata_cli_events' });
    cleanups.push(() => db.drop());
    url = db.url;
    const driver = createPostgresDriver(db.url);
    const store = createPostgresEventStore({ driver });
    await seed(store);
    await store.close();
    await driver.close();
  });
  tailCases(() => url);
});

describe('strata projections status and rebuild on SQLite', () => {
  const dir = tempDir('strata-cli-projections-');
  cleanups.push(() => dir.remove());
  const file = join(dir.path, 'events.db');
  const spec = `sqlite:${file}`;
  const module = new URL('../../test/fixtures/cli-projections.ts', import.meta.url).pathname;

  it('shows each projection with its checkpoint and lag, and rebuilds one with the same rows', async () => {
    const driver = createSqliteDriver(file);
    cleanups.push(() => driver.close());
    const store = createSqliteEventStore({ driver });
    cleanups.push(() => store.close());
    await seed(store);
    const consumer = createProjectionConsumer({ projection: projections[0]!, store, driver });
    await consumer.start();
    await consumer.drained();
    await consumer.stop();

    const caughtUp = await cli(['projections', 'status', '--store', spec, '--json']);
    expect(caughtUp.code).toBe(0);
    const first = JSON.parse(caughtUp.stdout) as {
      head: number;
      projections: Array<Record<string, unknown>>;
    };
    expect(first.projections).toEqual([
      expect.objectContaining({ projection: 'account_emails', position: first.head, lag: 0 }),
    ]);

    await store.append('account-2', [{ type: 'email_changed', data: { email: 'd@example.com' } }]);
    const behind = await cli(['projections', 'status', '--store', spec]);
    expect(behind.code).toBe(0);
    expect(behind.stdout).toMatch(/account_emails\s+\d+\s+1\s/);

    const rebuilt = await cli([
      'projections',
      'rebuild',
      'account_emails',
      '--store',
      spec,
      '--module',
      module,
    ]);
    expect(rebuilt.stderr).toBe('');
    expect(rebuilt.code).toBe(0);
    expect(rebuilt.stdout).toContain('rebuilt account_emails');
    const rows = await driver.query<{ stream: string; email: string }>(
      'select stream, email from account_emails order by stream',
    );
    expect(rows.rows).toEqual([
      { stream: 'account-1', email: 'b@example.com' },
      { stream: 'account-2', email: 'd@example.com' },
    ]);
    // The swap moved the consumer's checkpoint to the rebuilt position: no lag left.
    const after = JSON.parse((await cli(['projections', 'status', '--store', spec, '--json'])).stdout) as {
      projections: Array<{ lag: number }>;
    };
    expect(after.projections[0]!.lag).toBe(0);
  });

  it('names an unknown projection and a bad batch size in one line, exit 2', async () => {
    const unknown = await cli(['projections', 'rebuild', 'nope', '--store', spec, '--module', module]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('account_emails');
    expect(unknown.stderr.trim().split('\n')).toHaveLength(1);
    const batch = await cli([
      'projections',
      'rebuild',
      'account_emails',
      '--store',
      spec,
      '--module',
      module,
      '--batch-size',
      '0',
    ]);
    expect(batch.code).toBe(2);
    expect(batch.stderr).toContain('batch-size');
  });
});
