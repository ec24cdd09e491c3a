import { connectNats } from 'strata/nats';
import { afterAll, describe, expect, it } from 'vitest';
import { env, services, uniqueName } from '../../test/helpers.js';
import { orderEvents } from './nats-events.js';

describe.skipIf(!services.nats)('nats snippets', () => {
  const stream = uniqueName('strata_snippets_orders');
  const root = `${stream}.orders`;

  afterAll(async () => {
    const nats = await connectNats(env.natsUrl);
    await nats.deleteStream(stream);
    await nats.close();
  });

  it('nats-events: deduplicates a retried publish, refuses a stale expectation, replays in order', async () => {
    const result = await orderEvents(env.natsUrl, stream, root);
    expect(result).toMatchObject({
      placed: { stream, sequence: 1, duplicate: false },
      retried: { stream, sequence: 1, duplicate: true },
      conflict: { expected: 1, actual: 2, jsErrCode: 10071, subject: `${root}.42` },
      history: ['1:{"type":"placed"}', '2:{"type":"paid"}'],
    });
  });
});
