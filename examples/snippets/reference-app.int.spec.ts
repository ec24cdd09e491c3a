import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { socialRoundTrip } from './social-app.js';

const dir = tempDir('strata-snippets-social-');
afterAll(() => dir.remove());

describe('reference app snippets', () => {
  it('social-app: creates a user, answers 409 for the duplicate and 404 for a missing user', async () => {
    const result = await socialRoundTrip(dir.path);
    expect(result).toMatchObject({
      created: {
        status: 201,
        body: { handle: 'ada', email: 'ada@example.com', name: 'Ada Lovelace', bio: '' },
      },
      again: { status: 409, body: { code: 'E_CONFLICT', details: { entity: 'user', field: 'email' } } },
      missing: { status: 404, body: { code: 'E_NOT_FOUND', details: { entity: 'user', id: 424242 } } },
    });
  });
});
