import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createSqliteDriver } from '../../src/backends/sqlite/sqlite-driver.js';
import { tempDir } from '../../test/helpers.js';
import { changesPipeline } from './changes-pipeline.js';
import { verifyAndRepair } from './changes-reconcile.js';

const dir = tempDir('strata-snippets-changes-');
afterAll(() => dir.remove());

describe('change snippets', () => {
  it('changes-pipeline derives post counts from captured changes', async () => {
    expect(await changesPipeline(dir.path)).toEqual([
      { user_id: 1, posts: 2 },
      { user_id: 2, posts: 1 },
    ]);
  });

  it('changes-reconcile finds and repairs the differences of a copy', async () => {
    const primary = createSqliteDriver(join(dir.path, 'primary.db'));
    const copy = createSqliteDriver(join(dir.path, 'copy.db'));
    for (const db of [primary, copy]) {
      await db.exec('create table users (id integer primary key, email text not null)');
      await db.exec("insert into users values (1, 'a@x'), (2, 'b@x'), (3, 'c@x')");
    }
    await copy.exec("update users set email = 'changed' where id = 2; delete from users where id = 3");
    vi.spyOn(console, 'log').mockImplementation(() => undefined);
    expect(await verifyAndRepair(primary, copy)).toEqual({ clean: false, planned: 2, repaired: 2 });
    expect(await verifyAndRepair(primary, copy)).toEqual({ clean: true, repaired: 0 });
    await primary.close();
    await copy.close();
  });
});
