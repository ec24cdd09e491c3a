/**
 * A server for the http benchmark, in its own process so that load generation and serving do
 * not share a core: `social` (the reference app on the embedded default, seeded) or `bare`
 * (a Fastify route returning a constant). Prints one JSON line `{ url, users, ids }` when ready.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { startSocialApp } from '../../examples/social/index.js';

const kind = process.argv[2];
const USERS = 1_000;

if (kind === 'bare') {
  const app = Fastify({ logger: false });
  app.get('/bare', async () => ({ id: 1, handle: 'constant', name: 'Constant' }));
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  console.log(JSON.stringify({ url: `http://127.0.0.1:${port}`, users: 0 }));
} else if (kind === 'social') {
  const app = await startSocialApp({ port: 0, dataDir: mkdtempSync(join(tmpdir(), 'strata-bench-http-')) });
  const ids: number[] = [];
  for (let i = 0; i < USERS; i++) {
    const res = await app.server.inject({
      method: 'POST',
      url: '/users',
      payload: { handle: `bench_${i}`, email: `bench${i}@example.com`, name: `Bench ${i}` },
    });
    ids.push(res.json().id as number);
  }
  for (let i = 0; i < USERS; i++) {
    for (let k = 1; k <= 20; k++) {
      await app.repo.follow(ids[i]!, ids[(i + k * 37) % USERS]!);
    }
    for (let p = 0; p < 5; p++) await app.repo.createPost(ids[i]!, `post ${p} by ${i}`);
  }
  console.log(JSON.stringify({ url: app.url, users: USERS, ids }));
} else {
  console.error('usage: http-target.ts social|bare');
  process.exit(2);
}
