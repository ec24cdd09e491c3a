import { createMemoryStore } from 'strata/memory';
import { FakeClock } from 'strata/testing';

/** Checks a 30-minute session expiry without waiting 30 minutes. */
export async function sessionExpiry(): Promise<{
  atStart: number | undefined;
  justBefore: string | undefined;
  after: string | undefined;
}> {
  const clock = new FakeClock(); // 2026-01-01T00:00:00Z until advanced
  const sessions = createMemoryStore({ defaultTtl: '30m', clock });
  await sessions.set('session:1', 'alice');
  const atStart = await sessions.ttl('session:1'); // exactly 1800000: time stands still
  await clock.advance(30 * 60_000 - 1);
  const justBefore = await sessions.get('session:1'); // 'alice'
  await clock.advance(1);
  const after = await sessions.get('session:1'); // undefined
  await sessions.close();
  return { atStart, justBefore, after };
}
