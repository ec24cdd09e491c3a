import { startSocialApp } from '../social/index.js';

/** Starts the reference app on a free port, creates a user twice and reads a missing one, then stops. */
export async function socialRoundTrip(dataDir: string): Promise<Record<string, unknown>> {
  const app = await startSocialApp({ port: 0, dataDir });
  try {
    const createUser = () =>
      fetch(`${app.url}/users`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ handle: 'ada', email: 'ada@example.com', name: 'Ada Lovelace' }),
      });
    const created = await createUser(); // 201 { id, handle, email, name, bio: '', createdAt, ... }
    const again = await createUser(); // 409 { code: 'E_CONFLICT', details: { field: 'email', ... } }
    const missing = await fetch(`${app.url}/users/424242`); // 404 { code: 'E_NOT_FOUND', ... }
    return {
      created: { status: created.status, body: await created.json() },
      again: { status: again.status, body: await again.json() },
      missing: { status: missing.status, body: await missing.json() },
    };
  } finally {
    await app.close();
  }
}
