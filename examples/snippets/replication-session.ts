import { sql } from 'strata';
import { createRelay } from 'strata/changes';
import { createReplicaSet } from 'strata/replication';
import {
  changeLogPosition,
  createSqliteChangeCapture,
  createSqliteChangeLog,
  createSqliteDriver,
  createSqliteReplica,
} from 'strata/sqlite';

const SCHEMA =
  'create table if not exists notes (id integer primary key, author text not null, body text not null)';

export async function embeddedNotes(dir: string, tokenSecret: string) {
  // The primary, its outbox capture, the change log and the relay between them.
  const primary = createSqliteDriver(`${dir}/app.db`);
  await primary.exec(SCHEMA);
  const capture = createSqliteChangeCapture(primary, { source: 'app', tables: ['notes'] });
  const log = createSqliteChangeLog({ filename: `${dir}/changes.db` });
  const relay = createRelay({ source: capture, log });
  await relay.start();

  // Two replica files that apply the log in commit order.
  const files = ['replica1', 'replica2'].map((name) =>
    createSqliteReplica({ filename: `${dir}/${name}.db`, log, source: 'app', schema: SCHEMA }),
  );
  for (const file of files) await file.start();

  const set = createReplicaSet({
    primary,
    replicas: files.map((file, i) => ({ name: `replica${i + 1}`, driver: file.driver })),
    position: changeLogPosition(),
    clusterId: 'notes', // in every token; tokens of another cluster id are refused
    tokenSecret, // shared by every process that issues or accepts this cluster's tokens
  });

  return {
    set,
    /** POST /notes: the write runs on the primary; its token goes back to the client in a cookie. */
    async post(author: string, body: string) {
      const { value: id, token } = await set.transaction(async (tx) => {
        const { rows } = await tx.query<{ id: number }>(
          sql`insert into notes (author, body) values (${author}, ${body}) returning id`,
        );
        return rows[0]!.id;
      });
      return { id, setCookie: `rt=${token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=60` };
    },
    /** GET /notes: with the cookie, the author sees their own notes; without it, any replica serves. */
    async list(author: string, cookie?: string) {
      const token = /(?:^|;\s*)rt=([^;]+)/.exec(cookie ?? '')?.[1];
      return set.read(
        async (db, info) => ({
          servedBy: info.node, // a replica at or past the token, or `primary` after session.wait
          notes: (
            await db.query<{ id: number; body: string }>(
              sql`select id, body from notes where author = ${author} order by id`,
            )
          ).rows,
        }),
        { consistency: { session: token } }, // undefined token: eventual
      );
    },
    async close() {
      await set.close();
      for (const file of files) await file.close();
      await relay.stop();
      await log.close();
      await primary.close();
    },
    files,
  };
}
