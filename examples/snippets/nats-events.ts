import { isStrataError } from 'strata';
import { connectNats } from 'strata/nats';

/**
 * Keeps the events of orders in a JetStream stream: a retried publish with the same message id
 * is stored once, a publish that expects a stale last sequence is refused, and the events of one
 * order are read back in sequence order.
 */
export async function orderEvents(
  url: string,
  stream: string,
  root: string,
): Promise<Record<string, unknown>> {
  const nats = await connectNats({ url, requestTimeout: '2s' });
  try {
    await nats.ensureStream({ name: stream, subjects: [`${root}.>`], maxAge: '7d', duplicateWindow: '10m' });
    const placed = await nats.publish(`${root}.42`, '{"type":"placed"}', { msgId: 'order-42-placed' });
    const retried = await nats.publish(`${root}.42`, '{"type":"placed"}', { msgId: 'order-42-placed' });
    // placed: { stream, sequence: 1, duplicate: false }; retried: { stream, sequence: 1, duplicate: true }
    await nats.publish(`${root}.42`, '{"type":"paid"}', { expectedLastSubjectSequence: placed.sequence });
    let conflict: Record<string, unknown> = {};
    try {
      // Written by someone who has not seen "paid": the last sequence of the subject is now 2, not 1.
      await nats.publish(`${root}.42`, '{"type":"cancelled"}', {
        expectedLastSubjectSequence: placed.sequence,
      });
    } catch (err) {
      if (!isStrataError(err, 'E_CONFLICT')) throw err;
      conflict = { ...err.details }; // { expected: 1, actual: 2, jsErrCode: 10071, subject, ... }
    }
    const events = await nats.readFrom(stream, { startSequence: 1, subject: `${root}.42` });
    const history = events.map((m) => `${m.sequence}:${new TextDecoder().decode(m.data)}`);
    return { placed, retried, conflict, history };
  } finally {
    await nats.close();
  }
}
