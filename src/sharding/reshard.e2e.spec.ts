/**
 * Resharding under kill -9: a reshard process (2 SQLite shards to 4) is stopped at a checkpoint
 * of each step, the test writes to the shards while it stands still (through the map that is
 * active), kills it with SIGKILL, and starts it again. Every restart resumes and finishes with the
 * same data as an uninterrupted run: the union of the shards equals the reference database, each
 * row is on the shard the new map places it, and nothing of the reshard is left behind.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { createSqliteDriver } from '../backends/sqlite/sqlite-driver.js';
import { reconcile } from '../changes/reconcile.js';
import { type SqlDriver, sql } from '../core/sql.js';
import { createShardMapStore } from './map-store.js';
import { hashStrategy, placeSync } from './strategies.js';
import type { ShardStrategy } from './types.js';

const root = new URL('../../', import.meta.url).pathname;
const children = new Set<ChildProcess>();
const removals: Array<() => void> = [];
afterAll(() => {
  for (const child of children) child.kill('SIGKILL');
  for (const remove of removals) remove();
});

const FROM = hashStrategy({ shards: ['s0', 's1'] });
const TO = hashStrategy({ shards: ['s0', 's1', 's2', 's3'] });
const SHARDS = ['s0', 's1', 's2', 's3'];
const FILES = [...SHARDS.map((s) => `${s}.db`), 'reference.db', 'state.db'];
const USERS = 300;
const DDL = [
  'create table users (id integer primary key, name text not null, score integer not null)',
  'create table posts (id integer primary key, user_id integer not null, body text not null, likes integer not null)',
];

interface Worker {
  child: ChildProcess;
  lines: string[];
  line(prefix: string): Promise<string>;
  exited: Promise<number | null>;
}

function startWorker(dir: string, stopAt?: string): Worker {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      join(root, 'test/fixtures/reshard-worker.ts'),
      dir,
      JSON.stringify(FROM),
      JSON.stringify(TO),
    ],
    {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, STRATA_RESHARD_STOP_AT: stopAt ?? '' },
    },
  );
  children.add(child);
  const lines: string[] = [];
  const waiting: Array<{ prefix: string; resolve: (line: string) => void }> = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    for (const w of [...waiting]) {
      if (line.startsWith(w.prefix)) {
        waiting.splice(waiting.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  return {
    child,
    lines,
    exited,
    line: (prefix) =>
      new Promise<string>((resolve, reject) => {
        const found = lines.find((l) => l.startsWith(prefix));
        if (found !== undefined) return resolve(found);
        waiting.push({ prefix, resolve });
        void exited.then((code) =>
          reject(new Error(`reshard worker exited with ${code}: ${lines.join(' | ')}`)),
        );
      }),
  };
}

async function kill9(worker: Worker): Promise<void> {
  worker.child.kill('SIGKILL');
  await worker.exited;
  children.delete(worker.child);
}

let template: string;

beforeAll(async () => {
  const dir = tempDir('strata-reshard-e2e-template-');
  removals.push(dir.remove);
  template = dir.path;
  const open = (f: string) => createSqliteDriver(join(template, f));
  const drivers = Object.fromEntries(FILES.map((f) => [f, open(f)]));
  for (const f of [...SHARDS.map((s) => `${s}.db`), 'reference.db'])
    for (const ddl of DDL) await drivers[f]!.exec(ddl);
  for (let id = 1; id <= USERS; id++) {
    const stmt = sql`insert into users (id, name, score) values (${id}, ${`user ${id}`}, ${(id * 37) % 1000})`;
    await drivers[`${placeSync(FROM, id)}.db`]!.query(stmt);
    await drivers['reference.db']!.query(stmt);
  }
  for (let id = 1; id <= USERS * 2; id++) {
    const user = ((id * 7) % USERS) + 1;
    const stmt = sql`insert into posts (id, user_id, body, likes) values (${id}, ${user}, ${`post ${id}`}, ${id % 13})`;
    await drivers[`${placeSync(FROM, user)}.db`]!.query(stmt);
    await drivers['reference.db']!.query(stmt);
  }
  const mapStore = createShardMapStore(drivers['state.db']!);
  await mapStore.migrate();
  await mapStore.save('users', FROM);
  for (const d of Object.values(drivers)) await d.close();
});

/** A fresh copy of the seeded files. */
function fresh(): string {
  const dir = tempDir('strata-reshard-e2e-');
  removals.push(dir.remove);
  for (const f of FILES) copyFileSync(join(template, f), join(dir.path, f));
  return dir.path;
}

/** The same 120 writes in every run: inserts, updates and deletes of users and posts. */
const WRITES: Array<{ key: number; statement: ReturnType<typeof sql> }> = (() => {
  const out: Array<{ key: number; statement: ReturnType<typeof sql> }> = [];
  let s = 12345;
  const next = () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s / 2 ** 32;
  };
  let nextUser = USERS + 1;
  let nextPost = USERS * 2 + 1;
  const owner = (post: number) => ((post * 7) % USERS) + 1;
  for (let i = 0; i < 120; i++) {
    const r = next();
    const user = 1 + Math.floor(next() * USERS);
    const post = 1 + Math.floor(next() * USERS * 2);
    if (r < 0.2) {
      const id = nextUser++;
      out.push({
        key: id,
        statement: sql`insert into users (id, name, score) values (${id}, ${`late ${id}`}, ${i})`,
      });
    } else if (r < 0.4) {
      const id = nextPost++;
      out.push({
        key: user,
        statement: sql`insert into posts (id, user_id, body, likes) values (${id}, ${user}, ${`late post ${id}`}, ${i})`,
      });
    } else if (r < 0.7) {
      out.push({
        key: user,
        statement: sql`update users set score = ${i * 1000}, name = ${`changed ${i}`} where id = ${user}`,
      });
    } else if (r < 0.9) {
      out.push({
        key: owner(post),
        statement: sql`update posts set likes = likes + ${i} where id = ${post}`,
      });
    } else {
      out.push({ key: owner(post), statement: sql`delete from posts where id = ${post}` });
    }
  }
  return out;
})();

/** Applies WRITES to the shards, routed by the active map, and to the reference. */
async function write(dir: string, strategy: ShardStrategy): Promise<void> {
  const drivers = new Map<string, SqlDriver>();
  const open = (f: string) => {
    let d = drivers.get(f);
    if (d === undefined) {
      d = createSqliteDriver(join(dir, f));
      drivers.set(f, d);
    }
    return d;
  };
  for (const w of WRITES) {
    await open(`${placeSync(strategy, w.key)}.db`).query(w.statement);
    await open('reference.db').query(w.statement);
  }
  for (const d of drivers.values()) await d.close();
}

async function activeMap(dir: string) {
  const state = createSqliteDriver(join(dir, 'state.db'));
  try {
    return await createShardMapStore(state).active('users');
  } finally {
    await state.close();
  }
}

/** The rows of every shard, sorted, as one text; and the checks against the reference. */
async function finalState(dir: string): Promise<{ digest: string; misplaced: number; clean: boolean }> {
  const union = createSqliteDriver(join(dir, 'union.db'));
  for (const ddl of DDL) await union.exec(ddl);
  const lines: string[] = [];
  let misplaced = 0;
  for (const shard of SHARDS) {
    const d = createSqliteDriver(join(dir, `${shard}.db`));
    for (const [table, key] of [
      ['users', 'id'],
      ['posts', 'user_id'],
    ] as const) {
      const { rows } = await d.query(sql`select * from ${sql.id(table)} order by 1`);
      for (const row of rows) {
        if (placeSync(TO, row[key]) !== shard) misplaced++;
        lines.push(`${table} ${JSON.stringify(row)}`);
        const columns = Object.keys(row);
        await union.query(
          sql`insert into ${sql.id(table)} (${sql.join(columns.map((c) => sql.id(c)))}) values (${sql.join(columns.map((c) => row[c]))})`,
        );
      }
    }
    await d.close();
  }
  const reference = createSqliteDriver(join(dir, 'reference.db'));
  let clean = true;
  for (const table of ['users', 'posts']) {
    const report = await reconcile({
      source: { driver: reference, table },
      target: { driver: union, table },
    });
    clean &&= report.clean;
  }
  await reference.close();
  await union.close();
  return { digest: lines.sort().join('\n'), misplaced, clean };
}

async function leftovers(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const shard of SHARDS) {
    const d = createSqliteDriver(join(dir, `${shard}.db`));
    const { rows } = await d.query<{ name: string }>(
      sql`select name from sqlite_schema where name like ${'_strata_r%'}`,
    );
    found.push(...rows.map((r) => `${shard}:${r.name}`));
    await d.close();
  }
  found.push(...readdirSync(dir).filter((f) => f.startsWith('reshard-')));
  return found;
}

let baseline: string | undefined;

async function uninterrupted(): Promise<string> {
  if (baseline === undefined) {
    const dir = fresh();
    const worker = startWorker(dir);
    await worker.line('done ');
    await worker.exited;
    children.delete(worker.child);
    await write(dir, TO);
    const result = await finalState(dir);
    expect(result.clean).toBe(true);
    expect(result.misplaced).toBe(0);
    baseline = result.digest;
  }
  return baseline;
}

const STOPS = [
  'capture:1',
  'copy:1',
  'copy:4',
  'catchup:1',
  'verify:1',
  'verify:4',
  'cutover:1',
  'cutover:2',
  'cutover:3',
  'cleanup:1',
  'cleanup:4',
];

describe('reshard under kill -9 at each step', () => {
  it('finishes uninterrupted with every row in place', async () => {
    const digest = await uninterrupted();
    expect(digest.split('\n').length).toBeGreaterThan(USERS * 3);
  });

  for (const stop of STOPS) {
    it(`resumes after SIGKILL at ${stop} and ends with the same data`, async () => {
      const expected = await uninterrupted();
      const dir = fresh();
      const first = startWorker(dir, stop);
      await first.line(`stopped ${stop}`);
      // The application keeps writing while the reshard stands still, except during a cutover
      // (writers pause while the map state is `cutover`): then it writes once the reshard is done.
      const map = await activeMap(dir);
      const writeNow = map?.state !== 'cutover';
      if (writeNow) await write(dir, map!.strategy as ShardStrategy);
      await kill9(first);
      const second = startWorker(dir);
      const done = await second.line('done ');
      expect(await second.exited).toBe(0);
      children.delete(second.child);
      const status = JSON.parse(done.slice('done '.length)) as { step: string; toVersion: number };
      expect(status.step).toBe('done');
      if (!writeNow) await write(dir, TO);
      const result = await finalState(dir);
      expect(result.misplaced).toBe(0);
      expect(result.clean).toBe(true);
      expect(result.digest).toBe(expected);
      expect(await leftovers(dir)).toEqual([]);
      const after = await activeMap(dir);
      expect(after?.version).toBe(status.toVersion);
      expect(after?.state).toBe('stable');
    });
  }
});
