import { isStrataError } from 'strata';
import { createSqliteDriver } from 'strata/sqlite';

/** Opens a SQLite file and shows the one call the single connection cannot serve. */
export async function sqliteSingleConnection(
  file: string,
): Promise<{ journalMode: unknown; mistake: string }> {
  const db = createSqliteDriver({ filename: file, busyTimeout: '10s', synchronous: 'normal' });
  try {
    const { rows } = await db.query<{ journal_mode: string }>('pragma journal_mode'); // 'wal'
    let mistake = 'none';
    await db.transaction(async (tx) => {
      await tx.query('select 1'); // right: the handle passed to the callback
      try {
        await db.query('select 1'); // wrong: would wait for the connection this transaction holds
      } catch (err) {
        if (!isStrataError(err, 'E_TRANSACTION')) throw err;
        mistake = err.code;
      }
    });
    return { journalMode: rows[0]?.journal_mode, mistake };
  } finally {
    await db.close();
  }
}
