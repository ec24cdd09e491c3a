import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isStrataError } from '../core/errors.js';
import type { SqlDriver } from '../core/sql.js';
import {
  type ChunkSummary,
  type CompareSettings,
  canonicalDecimal,
  compareStores,
  encodeTokens,
  type FetchedRow,
  type KeyRange,
  type KeyTuple,
  keyTuple,
  murmur128,
  normalizeValue,
  type ReconcileStore,
  reconcile,
  repair,
  SummaryBuilder,
  sameSummary,
  subtractSummary,
} from './reconcile.js';

describe('canonicalDecimal', () => {
  it.each([
    ['0', '0'],
    ['-0.000', '0'],
    ['+5', '5'],
    ['007', '7'],
    ['12.50', '12.5'],
    ['12.00', '12'],
    ['1e3', '1000'],
    ['1.5E-3', '0.0015'],
    ['-0.5', '-0.5'],
    ['.25', '0.25'],
    ['3.', '3'],
    ['123456789012345678901234567890', '123456789012345678901234567890'],
    ['NaN', 'NaN'],
    ['-Infinity', '-Infinity'],
    ['1e5000', '1e5001'],
  ])('%s → %s', (input, expected) => {
    expect(canonicalDecimal(input)).toBe(expected);
  });

  it.each(['', '.', 'abc', '1.2.3', '1e', '--1', '0x10'])('rejects %j', (input) => {
    expect(canonicalDecimal(input)).toBeUndefined();
  });

  it('spells every double the way String() spells it between 1e-6 and 1e21', () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e20, max: 1e20 }), (n) => {
        if (Math.abs(n) < 1e-6 && n !== 0) return;
        expect(canonicalDecimal(String(n))).toBe(String(Object.is(n, -0) ? 0 : n));
      }),
    );
  });
});

describe('normalizeValue', () => {
  it('gives the same token to the same logical value from SQLite and PostgreSQL', () => {
    const same: Array<[unknown, unknown, ('plain' | 'decimal' | 'json')?]> = [
      [5, 5n],
      [9007199254740993n, 9007199254740993n],
      [1, true],
      [0, false],
      [2.5, '2.50', 'decimal'],
      [1e21, '1000000000000000000000', 'decimal'],
      [1e-7, '0.0000001', 'decimal'],
      [0.1, '0.1', 'decimal'],
      [-0, 0],
      [null, undefined],
      ['2026-05-01T12:00:00.000Z', new Date('2026-05-01T12:00:00.000Z')],
      [Buffer.from([1, 2, 255]), new Uint8Array([1, 2, 255])],
      ['{"b":1,"a":[1,2]}', { a: [1, 2], b: 1 }, 'json'],
      ['5', 5, 'json'],
      ['héllo 🙂', 'héllo 🙂'],
    ];
    for (const [a, b, kind] of same) expect(normalizeValue(a, kind)).toBe(normalizeValue(b, kind));
  });

  it('keeps different values apart', () => {
    const different: Array<[unknown, unknown, ('plain' | 'decimal' | 'json')?]> = [
      [5, '5'],
      ['', null],
      [0, null],
      [1, 2],
      [9007199254740992, 9007199254740993n],
      ['a', 'a '],
      ['é', 'e\u0301'],
      [Buffer.from('ab'), 'ab'],
      [1.5, '1.5'],
      ['{"a":1}', '{"a":2}', 'json'],
      [0.1, 0.1000000000000001],
    ];
    for (const [a, b, kind] of different) expect(normalizeValue(a, kind)).not.toBe(normalizeValue(b, kind));
  });

  it('encodes token lists without ambiguity', () => {
    expect(encodeTokens(['s:a', 's:b'])).not.toBe(encodeTokens(['s:a1:s', ':b']));
    expect(encodeTokens([null, 's:'])).not.toBe(encodeTokens(['s:', null]));
    expect(encodeTokens([null])).not.toBe(encodeTokens(['s:-']));
  });
});

describe('murmur128 and chunk summaries', () => {
  it('is deterministic and spreads nearby inputs', () => {
    expect(murmur128('hello')).toEqual(murmur128('hello'));
    const seen = new Set<string>();
    for (let i = 0; i < 5_000; i++) seen.add(murmur128(`row ${i}`).join(','));
    expect(seen.size).toBe(5_000);
    // Every length of tail (0 to 7 code units past a block) reaches the digest.
    for (let n = 1; n < 20; n++)
      expect(murmur128('x'.repeat(n))).not.toEqual(murmur128(`${'x'.repeat(n - 1)}y`));
  });

  const rows = Array.from({ length: 300 }, (_, i) => ({
    key: keyTuple([i]),
    tokens: [normalizeValue(`v${i}`), normalizeValue(i * 1.5)],
  }));
  const summarize = (list: typeof rows): ChunkSummary => {
    const b = new SummaryBuilder(0);
    for (const r of list) b.add(r.key, r.tokens);
    return b.result();
  };

  it('does not depend on row order, and subtracts to the remaining half', () => {
    const whole = summarize(rows);
    expect(sameSummary(whole, summarize([...rows].reverse()))).toBe(true);
    const left = summarize(rows.slice(0, 123));
    const right = summarize(rows.slice(123));
    expect(sameSummary(subtractSummary(whole, left), right)).toBe(true);
    expect(sameSummary(whole, summarize(rows.slice(1)))).toBe(false);
  });

  it('sees a changed value, and a value moved between rows', () => {
    const whole = summarize(rows);
    const changed = rows.map((r, i) =>
      i === 7 ? { ...r, tokens: [normalizeValue('other'), r.tokens[1]!] } : r,
    );
    expect(sameSummary(whole, summarize(changed))).toBe(false);
    const swapped = rows.map((r, i) =>
      i === 1 ? { ...r, tokens: rows[2]!.tokens } : i === 2 ? { ...r, tokens: rows[1]!.tokens } : r,
    );
    expect(sameSummary(whole, summarize(swapped))).toBe(false);
  });

  it('keeps rows only up to the retain limit', () => {
    const b = new SummaryBuilder(10);
    for (const r of rows.slice(0, 10)) b.add(r.key, r.tokens);
    expect(b.result().rows).toHaveLength(10);
    b.add(rows[10]!.key, rows[10]!.tokens);
    expect(b.result().rows).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------
// compareStores over arrays

type Key = number | string;
interface MemRow {
  key: Key[];
  values: unknown[];
}

function compareKeys(a: readonly unknown[], b: readonly unknown[]): number {
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as Key;
    const y = b[i] as Key;
    if (x < y) return -1;
    if (x > y) return 1;
  }
  return 0;
}

/** A store on a sorted array; `inEngine` summaries stand in for database pushdown. */
class ArrayStore implements ReconcileStore {
  readonly rows: MemRow[];
  rowsRead = 0;
  summaries = 0;

  constructor(
    rows: MemRow[],
    readonly canPushdown = false,
  ) {
    this.rows = [...rows].sort((a, b) => compareKeys(a.key, b.key));
  }

  #in(range: KeyRange, after?: KeyTuple): MemRow[] {
    return this.rows.filter(
      (r) =>
        (range.lo === undefined || compareKeys(r.key, range.lo.values) >= 0) &&
        (range.hi === undefined || compareKeys(r.key, range.hi.values) < 0) &&
        (after === undefined || compareKeys(r.key, after.values) > 0),
    );
  }

  async count(): Promise<number> {
    return this.rows.length;
  }

  async keyAt(range: KeyRange, offset: number): Promise<KeyTuple | undefined> {
    const row = this.#in(range)[offset];
    return row === undefined ? undefined : keyTuple(row.key);
  }

  async summarize(range: KeyRange, retainLimit: number, inEngine: boolean): Promise<ChunkSummary> {
    this.summaries++;
    const rows = this.#in(range);
    if (!inEngine) this.rowsRead += rows.length;
    const b = new SummaryBuilder(inEngine ? 0 : retainLimit);
    for (const r of rows)
      b.add(
        keyTuple(r.key),
        r.values.map((v) => normalizeValue(v)),
      );
    return b.result();
  }

  async keys(range: KeyRange, after: KeyTuple | undefined, limit: number): Promise<KeyTuple[]> {
    return this.#in(range, after)
      .slice(0, limit)
      .map((r) => keyTuple(r.key));
  }

  async fetch(keys: readonly KeyTuple[]): Promise<Map<string, FetchedRow>> {
    const out = new Map<string, FetchedRow>();
    for (const k of keys) {
      const row = this.rows.find((r) => compareKeys(r.key, k.values) === 0);
      if (row !== undefined) {
        this.rowsRead++;
        const key = keyTuple(row.key);
        out.set(key.token, { key, values: row.values, tokens: row.values.map((v) => normalizeValue(v)) });
      }
    }
    return out;
  }
}

const settings = (over: Partial<CompareSettings> = {}): CompareSettings => ({
  chunkSize: 10,
  leafSize: 4,
  retainLimit: 20,
  maxMismatches: 1_000,
  columns: ['a', 'b'],
  ...over,
});

const keysOf = (list: KeyTuple[]) => list.map((k) => k.values);

describe('compareStores', () => {
  const base = (ids: number[]): MemRow[] => ids.map((id) => ({ key: [id], values: [`a${id}`, id] }));

  it('covers keys only on the target before the first and after the last source key, and in gaps', async () => {
    const source = new ArrayStore(base([10, 20, 30, 40, 50, 1000, 1001]));
    const target = new ArrayStore(base([1, 10, 20, 25, 30, 40, 50, 500, 1000, 1001, 5000]));
    const r = await compareStores(source, target, settings({ chunkSize: 2 }));
    expect(keysOf(r.extra)).toEqual([[1], [25], [500], [5000]]);
    expect(r.missing).toEqual([]);
    expect(r.different).toEqual([]);
    expect(r.chunks).toBe(4);
    expect(r.rowsSource).toBe(7);
    expect(r.rowsTarget).toBe(11);
  });

  it('handles an empty side, and two empty sides', async () => {
    const rows = base([3, 1, 2]);
    const a = await compareStores(new ArrayStore([]), new ArrayStore(rows), settings());
    expect(keysOf(a.extra)).toEqual([[1], [2], [3]]);
    const b = await compareStores(new ArrayStore(rows), new ArrayStore([]), settings());
    expect(keysOf(b.missing)).toEqual([[1], [2], [3]]);
    const c = await compareStores(new ArrayStore([]), new ArrayStore([]), settings());
    expect(c).toMatchObject({ chunks: 1, missing: [], extra: [], different: [], truncated: false });
  });

  it('names the differing columns, with composite keys', async () => {
    const rows: MemRow[] = [
      { key: ['a', 1], values: ['x', 1] },
      { key: ['a', 2], values: ['y', 2] },
      { key: ['b', 1], values: ['z', 3] },
    ];
    const changed = rows.map((r) => (r.key[1] === 2 ? { ...r, values: ['y', 20] } : r));
    changed[2] = { key: ['b', 1], values: ['zz', 30] };
    const r = await compareStores(new ArrayStore(rows), new ArrayStore(changed), settings());
    expect(r.different.map((d) => [d.key.values, d.columns])).toEqual([
      [['a', 2], ['b']],
      [
        ['b', 1],
        ['a', 'b'],
      ],
    ]);
  });

  it('narrows a large chunk by bisection, reading few rows', async () => {
    const ids = Array.from({ length: 10_000 }, (_, i) => i * 3);
    const source = new ArrayStore(base(ids), true);
    const targetRows = base(ids);
    targetRows[6_789] = { key: [6_789 * 3], values: ['changed', 6_789 * 3] };
    const target = new ArrayStore(targetRows, true);
    const r = await compareStores(
      source,
      target,
      settings({ chunkSize: 10_000, leafSize: 16, retainLimit: 100_000 }),
    );
    expect(r.hashing).toBe('database');
    expect(r.different.map((d) => [d.key.values, d.columns])).toEqual([[[6_789 * 3], ['a']]]);
    // One chunk of 10,000 rows: about log2(10,000 / 16) halvings, then one leaf read on each side.
    expect(source.summaries).toBeLessThan(25);
    expect(source.rowsRead).toBeLessThanOrEqual(17);
    expect(target.rowsRead).toBeLessThanOrEqual(17);
  });

  it('stops listing at maxMismatches and says so', async () => {
    const source = new ArrayStore(base(Array.from({ length: 50 }, (_, i) => i)));
    const target = new ArrayStore([]);
    const r = await compareStores(source, target, settings({ maxMismatches: 7 }));
    expect(r.missing).toHaveLength(7);
    expect(r.truncated).toBe(true);
    const exact = await compareStores(
      source,
      new ArrayStore(base(Array.from({ length: 43 }, (_, i) => i + 7))),
      settings({ maxMismatches: 7 }),
    );
    expect(exact.missing).toHaveLength(7);
    expect(exact.truncated).toBe(false);
    const none = await compareStores(source, target, settings({ maxMismatches: 0 }));
    expect(none).toMatchObject({ truncated: true, missing: [] });
  });

  it('stops with E_ABORTED when the signal fires', async () => {
    const controller = new AbortController();
    const source = new ArrayStore(base(Array.from({ length: 100 }, (_, i) => i)));
    let chunks = 0;
    const err = await compareStores(source, new ArrayStore([]), {
      ...settings({ chunkSize: 5 }),
      signal: controller.signal,
      onProgress: () => {
        if (++chunks === 2) controller.abort();
      },
    }).catch((e: unknown) => e);
    expect(isStrataError(err, 'E_ABORTED')).toBe(true);
    expect(chunks).toBe(2);
  });

  it('reports progress after each chunk', async () => {
    const progress: unknown[] = [];
    const rows = base(Array.from({ length: 25 }, (_, i) => i));
    await compareStores(new ArrayStore(rows), new ArrayStore(rows.slice(1)), {
      ...settings({ chunkSize: 10 }),
      onProgress: (p) => progress.push(p),
    });
    expect(progress).toEqual([
      { chunksDone: 1, chunksTotal: 3, rowsCompared: 10, mismatches: 1 },
      { chunksDone: 2, chunksTotal: 3, rowsCompared: 20, mismatches: 1 },
      { chunksDone: 3, chunksTotal: 3, rowsCompared: 25, mismatches: 1 },
    ]);
  });

  it('finds exactly the injected differences, whatever the data and the tunables', async () => {
    const row = fc.record({
      id: fc.integer({ min: 0, max: 400 }),
      a: fc.string({ maxLength: 3 }),
      b: fc.integer({ min: 0, max: 3 }),
    });
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(row, { selector: (r) => r.id, maxLength: 120 }),
        fc.uniqueArray(row, { selector: (r) => r.id, maxLength: 120 }),
        fc.integer({ min: 1, max: 30 }),
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 0, max: 40 }),
        fc.boolean(),
        async (left, right, chunkSize, leafSize, retainLimit, pushdown) => {
          const toRows = (list: typeof left): MemRow[] =>
            list.map((r) => ({ key: [r.id], values: [r.a, r.b] }));
          const result = await compareStores(
            new ArrayStore(toRows(left), pushdown),
            new ArrayStore(toRows(right), pushdown),
            settings({ chunkSize, leafSize, retainLimit }),
          );
          const byId = (list: typeof left) => new Map(list.map((r) => [r.id, r]));
          const l = byId(left);
          const r = byId(right);
          const sorted = (ids: number[]) => [...ids].sort((x, y) => x - y).map((id) => [id]);
          expect(keysOf(result.missing)).toEqual(sorted([...l.keys()].filter((id) => !r.has(id))));
          expect(keysOf(result.extra)).toEqual(sorted([...r.keys()].filter((id) => !l.has(id))));
          const expectedDifferent = sorted([...l.keys()].filter((id) => r.has(id))).flatMap(([id]) => {
            const x = l.get(id!)!;
            const y = r.get(id!)!;
            const columns = [x.a !== y.a ? 'a' : undefined, x.b !== y.b ? 'b' : undefined].filter(Boolean);
            return columns.length === 0 ? [] : [[[id], columns]];
          });
          expect(result.different.map((d) => [d.key.values, d.columns])).toEqual(expectedDifferent);
          expect(result.truncated).toBe(false);
        },
      ),
      { numRuns: 150 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Options are checked before any query

function recordingDriver(dialect = 'sqlite'): SqlDriver & { queries: number } {
  const driver = {
    name: `fake:${dialect}`,
    closed: false,
    queries: 0,
    dialect: { name: dialect, capabilities: {}, placeholder: () => '?', quoteIdentifier: (s: string) => s },
    async query() {
      driver.queries++;
      throw new Error('no query expected');
    },
    async exec() {
      driver.queries++;
    },
    async transaction() {
      throw new Error('no transaction expected');
    },
    async ping() {},
    async close() {},
  };
  return driver as unknown as SqlDriver & { queries: number };
}

describe('reconcile and repair options', () => {
  const a = recordingDriver();
  const b = recordingDriver();
  const ok = { source: { driver: a, table: 'orders' }, target: { driver: b, table: 'orders' } };

  it.each([
    [{ ...ok, source: { driver: a, table: 't; drop' } }, 'source.table'],
    [{ ...ok, target: { driver: b, table: 'orders', schema: 'x y' } }, 'target.schema'],
    [{ ...ok, source: { driver: {}, table: 'orders' } }, 'source.driver'],
    [{ ...ok, target: { driver: recordingDriver('mysql'), table: 'orders' } }, 'target.driver'],
    [{ ...ok, key: [] }, 'key'],
    [{ ...ok, key: ['id', 'id'] }, 'key'],
    [{ ...ok, key: ['id; --'] }, 'key'],
    [{ ...ok, columns: ['name', 'bad name'] }, 'columns'],
    [{ ...ok, chunkSize: 0 }, 'chunkSize'],
    [{ ...ok, chunkSize: 2.5 }, 'chunkSize'],
    [{ ...ok, maxMismatches: -1 }, 'maxMismatches'],
    [{ ...ok, where: { 'a=1 or 1': 1 } }, 'where'],
    [{ ...ok, where: { a: { $gt: 1 } } }, 'where'],
    [{ ...ok, signal: 'stop' }, 'signal'],
    [{ ...ok, onProgress: 5 }, 'onProgress'],
    [{ ...ok, pushdown: 'yes' }, 'pushdown'],
    [{ ...ok, plan: 'both' }, 'plan'],
    [{ source: ok.source, target: { driver: a, table: 'orders' } }, 'target'],
  ])('rejects a bad option with E_CONFIG naming it, before any query (%#)', async (options, option) => {
    const err = await reconcile(options as never).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'E_CONFIG', option });
    expect(a.queries + b.queries).toBe(0);
  });

  it('rejects a repair of something reconcile did not make', async () => {
    const fake = { kind: 'reconcile-report', mismatches: { missing: [], extra: [], different: [] } };
    await expect(repair(fake as never, { from: 'source' })).rejects.toMatchObject({
      code: 'E_CONFIG',
      option: 'report',
    });
    await expect(repair({} as never)).rejects.toMatchObject({ code: 'E_CONFIG', option: 'report' });
    await expect(repair(fake as never, { from: 'left' as never })).rejects.toMatchObject({ option: 'from' });
    await expect(repair(fake as never, { batchSize: 0 })).rejects.toMatchObject({ option: 'batchSize' });
  });
});
