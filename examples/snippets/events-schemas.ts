import type { EventTypeDefinition } from 'strata/events';
import { createSqliteDriver, createSqliteEventStore } from 'strata/sqlite';
import { z } from 'zod';

// Version 1 stored `{ name: 'Ada Lovelace' }`; version 2 splits it. Old events stay as written.
const renamed: EventTypeDefinition = {
  type: 'Renamed',
  version: 2,
  schema: z.object({ first: z.string().min(1), last: z.string() }), // any Standard Schema
  upcasters: {
    1: (data) => {
      const [first = '', ...rest] = String(data.name).split(' ');
      return { first, last: rest.join(' ') };
    },
  },
};

export async function renamedPeople(file: string) {
  const driver = createSqliteDriver(file);
  const store = createSqliteEventStore({ driver, types: [renamed] });
  // Validated on append (E_VALIDATION with the issue paths; nothing written), stored as version 2.
  await store.append('person-1', [{ type: 'Renamed', data: { first: 'Grace', last: 'Hopper' } }]);
  // An old writer still sending version 1: upcast, validated, then stored as version 2.
  await store.append('person-2', [{ type: 'Renamed', data: { name: 'Ada Lovelace' }, schemaVersion: 1 }]);
  const people = await store.readAll(0, 10); // events stored as version 1 are upcast on read too
  await store.close();
  await driver.close();
  return people.map((e) => ({ stream: e.stream, schemaVersion: e.schemaVersion, data: e.data }));
}
