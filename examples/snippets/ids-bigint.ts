import { createIdGenerator, decodeId } from 'strata/sharding';

export async function eventIds(workerId: number) {
  // A fixed worker id (0..1023), unique to this process by your own deployment, and the
  // bigint64 layout: 4,096 ids per millisecond per worker, for a signed 64-bit column.
  const ids = await createIdGenerator({ workerId, layout: 'bigint64', epoch: Date.UTC(2025, 0, 1) });
  const batch = ids.nextMany(10_000); // more than one millisecond's worth: next() waits for the next one
  const last = batch.at(-1)!;
  // Decoding needs the layout and the epoch the ids were made with.
  return { batch, parts: decodeId(last, { layout: 'bigint64', epoch: Date.UTC(2025, 0, 1) }) };
}
