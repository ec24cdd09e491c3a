import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { quickstart } from './sql-quickstart.js';

const dir = tempDir('strata-snippets-');
afterAll(() => dir.remove());

describe('documentation snippets', () => {
  it('sql-quickstart reports a duplicate as E_CONSTRAINT with table and column', async () => {
    const details = await quickstart(join(dir.path, 'app.db'), 'ada@example.com');
    expect(details).toMatchObject({
      backend: 'sqlite',
      constraintKind: 'unique',
      table: 'users',
      column: 'email',
    });
  });
});
