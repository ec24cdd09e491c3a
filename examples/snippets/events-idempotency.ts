import type { EventStore } from 'strata/events';

/**
 * Records a payment exactly once, however often the caller retries (a timeout, a redelivered
 * message): the event id comes from the request, not from the attempt.
 */
export async function recordPayment(store: EventStore, orderId: string, paymentId: string, amount: number) {
  const result = await store.append(
    `order-${orderId}`,
    [{ id: `payment-${paymentId}`, type: 'PaymentReceived', data: { amount } }],
    { expected: 'stream_exists' },
  );
  // On a retry: the same positions and version as the first time, and nothing written.
  return { alreadyAppended: result.alreadyAppended, positions: result.positions };
}
