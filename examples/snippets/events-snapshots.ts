import type { RecordedEvent } from 'strata/events';
import { createSqliteDriver, createSqliteEventStore } from 'strata/sqlite';

interface Cart {
  items: Record<string, number>;
}

const evolve = (cart: Cart, event: RecordedEvent): Cart => {
  const sku = String(event.data.sku);
  const n = (cart.items[sku] ?? 0) + (event.type === 'ItemAdded' ? 1 : -1);
  const items = { ...cart.items, [sku]: n };
  if (n <= 0) delete items[sku];
  return { items };
};

export async function cartWithSnapshots(file: string) {
  const driver = createSqliteDriver(file);
  const store = createSqliteEventStore({
    driver,
    // Carts get a snapshot once 100 events have piled up since the last one; other types never.
    snapshots: { policy: (streamType) => (streamType === 'cart' ? 100 : undefined) },
  });
  const events = Array.from({ length: 250 }, (_, i) => ({
    type: 'ItemAdded',
    data: { sku: `sku-${i % 5}` },
  }));
  await store.append('cart-7', events);

  // stateVersion: bump it whenever Cart or evolve changes; snapshots of other versions are ignored.
  const load = () =>
    store.loadAggregate<Cart>('cart-7', { initialState: () => ({ items: {} }), evolve, stateVersion: 1 });
  const first = await load(); // folds 250 events, saves a snapshot at version 250
  await store.append('cart-7', [{ type: 'ItemRemoved', data: { sku: 'sku-0' } }], {
    expected: first.version,
  });
  const second = await load(); // starts from the snapshot: folds 1 event
  await store.close();
  await driver.close();
  return { first, second };
}
