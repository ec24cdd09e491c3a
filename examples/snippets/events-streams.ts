import type { EventStore } from 'strata/events';

/** Retention, truncation and soft delete: all applied on stream reads; the global log keeps everything. */
export async function streamLifecycle(store: EventStore) {
  const readings = Array.from({ length: 10 }, (_, i) => ({ type: 'Reading', data: { celsius: 20 + i } }));
  await store.append('sensor-1', readings);

  await store.setMetadata('sensor-1', { maxCount: 3, custom: { unit: 'celsius' } }); // newest 3 only
  const newest = await store.readStream('sensor-1'); // versions 8, 9, 10
  await store.setMetadata('sensor-1', { truncateBefore: 9 }); // replaces the metadata: versions 9, 10
  const truncated = await store.readStream('sensor-1');
  // Also { maxAgeMs: 86_400_000 }: events older than a day are not returned.

  await store.deleteStream('sensor-1'); // soft: reads are empty, appends fail with E_STREAM_DELETED
  const afterDelete = await store.readStream('sensor-1');
  const info = await store.streamInfo('sensor-1'); // { version: 10, deleted: true, metadata }
  // Recreate it: versions go on from 11, the old incarnation stays hidden from stream reads.
  await store.append('sensor-1', [{ type: 'Reading', data: { celsius: 5 } }], { expected: 'no_stream' });
  const recreated = await store.readStream('sensor-1');
  return { newest, truncated, afterDelete, info, recreated };
}
