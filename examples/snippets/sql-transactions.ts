import { isStrataError, type SqlDriver, sql } from 'strata';

/** The tables of the example, on SQLite or PostgreSQL. */
export async function createAccounts(db: SqlDriver): Promise<void> {
  await db.exec(`
    create table accounts (id integer primary key, balance integer not null check (balance >= 0));
    create table memos (account_id integer not null, body text not null check (length(body) <= 40));
  `);
}

/**
 * Moves `amount` from one account to another in a serializable transaction that is retried as a
 * whole on a serialization failure or deadlock. A memo that breaks its rule is dropped inside a
 * savepoint without losing the transfer; `onCommitted` runs only once the transfer is committed.
 * An overdraft rejects with `E_CONSTRAINT` and changes nothing.
 */
export async function transfer(
  db: SqlDriver,
  move: { from: number; to: number; amount: number; memo: string },
  onCommitted: () => void,
): Promise<number> {
  return db.transaction(
    async (tx) => {
      await tx.query(sql`update accounts set balance = balance - ${move.amount} where id = ${move.from}`);
      await tx.query(sql`update accounts set balance = balance + ${move.amount} where id = ${move.to}`);
      await tx
        .transaction(async (sp) => {
          await sp.query(sql`insert into memos (account_id, body) values (${move.from}, ${move.memo})`);
        })
        .catch((err: unknown) => {
          if (!isStrataError(err, 'E_CONSTRAINT')) throw err;
        });
      tx.afterCommit(onCommitted);
      const { rows } = await tx.query<{ balance: number }>(
        sql`select balance from accounts where id = ${move.from}`,
      );
      return rows[0]!.balance;
    },
    { isolation: 'serializable', retry: true },
  );
}
