/**
 * The conformance suite of the key-value role. Every strata key-value backend runs it against
 * its real engine; run it against your own `KeyValueStore` the same way:
 *
 * ```ts
 * const base = `test_${process.pid}:`;
 * describeKeyValueStoreConformance('my store', ({ prefix, defaultTtl }) =>
 *   createMyStore({ prefix: base + prefix, defaultTtl }),
 * );
 * ```
 *
 * Time-to-live tests move time with `advance` when given (a fake clock); otherwise they wait for
 * real time by polling the store, with an upper bound, never by sleeping a fixed amount.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isStrataError } from '../core/errors.js';
import type { KeyValueEntry, KeyValueStore } from '../core/kv.js';

/** What the suite asks of the factory for one store. */
export interface KeyValueStoreFactoryOptions {
  /**
   * A namespace chosen by the suite (`main:`, `other:`, `a*`, ...), always given. Append it to a
   * prefix unique to your test run; stores created with different `prefix`es must not see each
   * other's keys, even when they share a server.
   */
  prefix: string;
  /** A default time to live in milliseconds, for writes without their own `ttl`. */
  defaultTtl?: number;
}

/** Creates one store for the suite; called once per namespace the suite needs. */
export type KeyValueStoreFactory = (
  options: KeyValueStoreFactoryOptions,
) => Promise<KeyValueStore> | KeyValueStore;

/** Options for `describeKeyValueStoreConformance`. */
export interface KeyValueStoreConformanceOptions {
  /**
   * Moves the stores' clock forward by `ms` (a `FakeClock`'s `advance`). Omitted: the suite waits
   * for real time, using short TTLs and bounded polling.
   */
  advance?: (ms: number) => Promise<void>;
  /** Whether the factory honours `defaultTtl` (default true); false skips the default-TTL test. */
  defaultTtl?: boolean;
  /** Runs after the suite, once every store it created is closed. */
  teardown?: () => Promise<void> | void;
}

/** The most a real-time wait may take beyond the TTL it waits for. */
const REAL_TIME_SLACK_MS = 10_000;

function isWellFormedString(text: string): boolean {
  return (text as unknown as { isWellFormed(): boolean }).isWellFormed();
}

/** The rejection (or synchronous throw) of `fn`, or undefined when it succeeds. */
async function failure(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

/** Polls `condition` until it holds; throws once `limitMs` has passed without it. */
async function until(condition: () => Promise<boolean>, what: string, limitMs: number): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what} after ${limitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Registers the key-value store conformance tests. `create` is called with a namespace for the
 * shared store and again for tests that need a second store, a default TTL or a closed store.
 */
export function describeKeyValueStoreConformance(
  label: string,
  create: KeyValueStoreFactory,
  options: KeyValueStoreConformanceOptions = {},
): void {
  const { advance } = options;
  // Real time: short enough to keep the suite fast, long enough to read an entry before it expires.
  const SHORT = advance === undefined ? 150 : 1_000;
  const HOUR = 3_600_000;

  describe(`KeyValueStore conformance: ${label}`, () => {
    let store: KeyValueStore;
    const extra: KeyValueStore[] = [];
    let stopwatches = 0;

    const open = async (factoryOptions: KeyValueStoreFactoryOptions): Promise<KeyValueStore> => {
      const created = await create(factoryOptions);
      extra.push(created);
      return created;
    };

    /**
     * Starts a stopwatch on the store's own clock; the returned function resolves once `ms` have
     * passed on it. In real time a probe entry with that TTL is the witness: once it has expired,
     * so has every entry written before it with the same TTL.
     */
    const stopwatch = async (on: KeyValueStore, ms: number): Promise<() => Promise<void>> => {
      if (advance !== undefined) return () => advance(ms + 1);
      const probe = `stopwatch:${stopwatches++}`;
      await on.set(probe, 'tick', { ttl: ms });
      return () =>
        until(async () => !(await on.has(probe)), `a ${ms} ms TTL to pass`, ms + REAL_TIME_SLACK_MS);
    };

    beforeAll(async () => {
      store = await create({ prefix: 'main:' });
    });

    beforeEach(async () => {
      await store.clear();
    });

    afterAll(async () => {
      for (const s of [store, ...extra]) {
        if (s === undefined) continue;
        await s.clear().catch(() => undefined);
        await s.close();
      }
      await options.teardown?.();
    });

    it('stores, reads, overwrites and deletes values', async () => {
      expect(typeof store.name).toBe('string');
      expect(await store.get('user:1')).toBeUndefined();
      expect(await store.has('user:1')).toBe(false);
      await store.set('user:1', 'alice');
      expect(await store.get('user:1')).toBe('alice');
      expect(await store.has('user:1')).toBe(true);
      await store.set('user:1', 'bob');
      expect(await store.get('user:1')).toBe('bob');
      await store.set('empty', '');
      expect(await store.get('empty')).toBe('');
      expect(await store.has('empty')).toBe(true);
      expect(await store.delete('user:1')).toBe(true);
      expect(await store.delete('user:1')).toBe(false);
      expect(await store.get('user:1')).toBeUndefined();
      expect(await store.has('user:1')).toBe(false);
    });

    it('reports the remaining ttl: at most the ttl, Infinity without one, undefined when missing', async () => {
      await store.set('forever', 'v');
      await store.set('hour', 'v', { ttl: '1h' });
      await store.set('ms', 'v', { ttl: HOUR });
      expect(await store.ttl('forever')).toBe(Number.POSITIVE_INFINITY);
      expect(await store.ttl('missing')).toBeUndefined();
      for (const key of ['hour', 'ms']) {
        const remaining = await store.ttl(key);
        expect(remaining).toBeGreaterThan(HOUR - 60_000);
        expect(remaining).toBeLessThanOrEqual(HOUR);
      }
      if (advance !== undefined) {
        await advance(HOUR / 2);
        expect(await store.ttl('hour')).toBe(HOUR / 2);
        expect(await store.ttl('forever')).toBe(Number.POSITIVE_INFINITY);
      }
    });

    it('expires entries after their ttl: get, has, getMany and ttl see them gone', async () => {
      await store.set('short', 'v', { ttl: SHORT });
      await store.set('long', 'w', { ttl: HOUR });
      await store.set('none', 'x');
      const passed = await stopwatch(store, SHORT);
      const remaining = await store.ttl('short');
      // In real time the entry may already be gone on a slow machine; if not, its TTL is bounded.
      if (remaining !== undefined) {
        expect(remaining).toBeGreaterThan(0);
        expect(remaining).toBeLessThanOrEqual(SHORT);
      }
      if (advance !== undefined) {
        await advance(SHORT / 2);
        expect(await store.get('short')).toBe('v');
        await advance(SHORT / 2);
      } else {
        await passed();
      }
      expect(await store.get('short')).toBeUndefined();
      expect(await store.has('short')).toBe(false);
      expect(await store.ttl('short')).toBeUndefined();
      expect(await store.getMany(['short', 'long', 'none'])).toEqual([undefined, 'w', 'x']);
      expect(await store.delete('short')).toBe(false);
    });

    it('replaces the ttl when a key is overwritten', async () => {
      await store.set('was-short', 'a', { ttl: SHORT });
      await store.set('was-short', 'b');
      expect(await store.ttl('was-short')).toBe(Number.POSITIVE_INFINITY);
      await store.set('was-forever', 'c');
      await store.set('was-forever', 'd', { ttl: SHORT });
      await store.set('was-long', 'e', { ttl: HOUR });
      await store.set('was-long', 'f', { ttl: SHORT });
      const passed = await stopwatch(store, SHORT);
      await passed();
      expect(await store.get('was-short')).toBe('b');
      expect(await store.get('was-forever')).toBeUndefined();
      expect(await store.get('was-long')).toBeUndefined();
    });

    it('applies the default ttl to writes without one; Infinity opts out', async (ctx) => {
      if (options.defaultTtl === false) ctx.skip();
      const withDefault = await open({ prefix: 'default-ttl:', defaultTtl: SHORT });
      await withDefault.clear();
      await withDefault.set('defaulted', 'a');
      await withDefault.set('forever', 'b', { ttl: Number.POSITIVE_INFINITY });
      await withDefault.set('hour', 'c', { ttl: '1h' });
      await withDefault.setMany([
        { key: 'many-defaulted', value: 'd' },
        { key: 'many-forever', value: 'e', ttl: 'infinite' },
      ]);
      expect(await withDefault.setIfAbsent('lease-defaulted', 'f')).toBe(true);
      expect(await withDefault.setIfAbsent('lease-forever', 'g', { ttl: 'infinite' })).toBe(true);
      expect(await withDefault.ttl('forever')).toBe(Number.POSITIVE_INFINITY);
      expect(await withDefault.ttl('many-forever')).toBe(Number.POSITIVE_INFINITY);
      expect(await withDefault.ttl('lease-forever')).toBe(Number.POSITIVE_INFINITY);
      expect(await withDefault.ttl('lease-defaulted')).toBeLessThanOrEqual(SHORT);
      expect(await withDefault.ttl('hour')).toBeGreaterThan(SHORT);
      const passed = await stopwatch(withDefault, SHORT);
      await passed();
      expect(
        await withDefault.getMany([
          'defaulted',
          'forever',
          'hour',
          'many-defaulted',
          'many-forever',
          'lease-defaulted',
          'lease-forever',
        ]),
      ).toEqual([undefined, 'b', 'c', undefined, 'e', undefined, 'g']);
    });

    it('setIfAbsent stores only when the key is absent, leaving an existing value and ttl alone', async () => {
      expect(await store.setIfAbsent('lease', 'first')).toBe(true);
      expect(await store.get('lease')).toBe('first');
      expect(await store.ttl('lease')).toBe(Number.POSITIVE_INFINITY);
      expect(await store.setIfAbsent('lease', 'second', { ttl: SHORT })).toBe(false);
      expect(await store.setIfAbsent('lease', 'first')).toBe(false);
      expect(await store.get('lease')).toBe('first');
      expect(await store.ttl('lease')).toBe(Number.POSITIVE_INFINITY);
      await store.set('empty', '');
      expect(await store.setIfAbsent('empty', 'x')).toBe(false);
      expect(await store.get('empty')).toBe('');
      expect(await store.delete('lease')).toBe(true);
      expect(await store.setIfAbsent('lease', 'third', { ttl: '1h' })).toBe(true);
      expect(await store.get('lease')).toBe('third');
      const remaining = await store.ttl('lease');
      expect(remaining).toBeGreaterThan(HOUR - 60_000);
      expect(remaining).toBeLessThanOrEqual(HOUR);
    });

    it('lets exactly one of 50 concurrent setIfAbsent calls on one key win', async () => {
      const contenders = Array.from({ length: 50 }, (_, i) => `token-${i}`);
      const won = await Promise.all(contenders.map((token) => store.setIfAbsent('contended', token)));
      const winners = contenders.filter((_, i) => won[i]);
      expect(winners).toHaveLength(1);
      expect(await store.get('contended')).toBe(winners[0]);
      // A second round on the held key: nobody wins.
      const again = await Promise.all(contenders.map((token) => store.setIfAbsent('contended', token)));
      expect(again.some(Boolean)).toBe(false);
      expect(await store.get('contended')).toBe(winners[0]);
    });

    it('applies the ttl of setIfAbsent; once it has passed, a new setIfAbsent wins', async () => {
      expect(await store.setIfAbsent('lease', 'holder-1', { ttl: SHORT })).toBe(true);
      const passed = await stopwatch(store, SHORT);
      const remaining = await store.ttl('lease');
      // In real time the lease may already be gone on a slow machine; if not, its TTL is bounded.
      if (remaining !== undefined) {
        expect(remaining).toBeGreaterThan(0);
        expect(remaining).toBeLessThanOrEqual(SHORT);
      }
      if (advance !== undefined) {
        await advance(SHORT - 1);
        expect(await store.setIfAbsent('lease', 'holder-2', { ttl: SHORT })).toBe(false);
      }
      await passed();
      // No read first: the expired lease must count as absent even before anything reclaims it.
      expect(await store.deleteIfEquals('lease', 'holder-1')).toBe(false);
      expect(await store.setIfAbsent('lease', 'holder-2', { ttl: HOUR })).toBe(true);
      expect(await store.get('lease')).toBe('holder-2');
      // The first holder, releasing late, must not remove the second holder's lease.
      expect(await store.deleteIfEquals('lease', 'holder-1')).toBe(false);
      expect(await store.get('lease')).toBe('holder-2');
    });

    it('setIfAbsent takes an expired key, before any read has reclaimed it', async () => {
      expect(await store.setIfAbsent('stale', 'old', { ttl: SHORT })).toBe(true);
      await store.set('stale-probe', 'old', { ttl: SHORT });
      const passed = await stopwatch(store, SHORT);
      await passed();
      expect(await store.setIfAbsent('stale', 'new')).toBe(true);
      expect(await store.get('stale')).toBe('new');
      expect(await store.ttl('stale')).toBe(Number.POSITIVE_INFINITY);
      expect(await store.deleteIfEquals('stale-probe', 'old')).toBe(false);
    });

    it('deleteIfEquals removes a key only while it holds that exact value', async () => {
      expect(await store.deleteIfEquals('missing', 'v')).toBe(false);
      await store.set('k', 'token', { ttl: HOUR });
      for (const wrong of ['other', '', 'token ', 'Token', 'tok']) {
        expect(await store.deleteIfEquals('k', wrong), JSON.stringify(wrong)).toBe(false);
      }
      expect(await store.get('k')).toBe('token');
      expect(await store.deleteIfEquals('k', 'token')).toBe(true);
      expect(await store.has('k')).toBe(false);
      expect(await store.deleteIfEquals('k', 'token')).toBe(false);
      await store.set('empty', '');
      expect(await store.deleteIfEquals('empty', 'x')).toBe(false);
      expect(await store.deleteIfEquals('empty', '')).toBe(true);
      expect(await store.has('empty')).toBe(false);
      const unicode = '🙂 é 中 \0 "quoted"';
      await store.set('u', unicode);
      expect(await store.deleteIfEquals('u', unicode.slice(0, -1))).toBe(false);
      expect(await store.deleteIfEquals('u', unicode)).toBe(true);
    });

    it('lets exactly one of 50 concurrent deleteIfEquals calls remove a key', async () => {
      await store.set('held', 'token');
      const removed = await Promise.all(
        Array.from({ length: 50 }, () => store.deleteIfEquals('held', 'token')),
      );
      expect(removed.filter(Boolean)).toHaveLength(1);
      expect(await store.has('held')).toBe(false);
    });

    it('getMany returns values in order, undefined where missing', async () => {
      expect(await store.getMany([])).toEqual([]);
      await store.setMany([
        { key: 'a', value: '1' },
        { key: 'c', value: '3' },
      ]);
      expect(await store.getMany(['c', 'missing', 'a', 'c'])).toEqual(['3', undefined, '1', '3']);
      const keys = Array.from({ length: 1_000 }, (_, i) => `bulk:${i}`);
      await store.setMany(keys.filter((_, i) => i % 3 !== 0).map((key) => ({ key, value: `v${key}` })));
      const values = await store.getMany(keys);
      expect(values).toEqual(keys.map((key, i) => (i % 3 === 0 ? undefined : `v${key}`)));
    });

    it('setMany writes every entry with its own ttl, the last write of a key winning', async () => {
      await store.setMany([]);
      await store.setMany([
        { key: 'short', value: 's', ttl: SHORT },
        { key: 'plain', value: 'p' },
        { key: 'hour', value: 'h', ttl: HOUR },
        { key: 'twice', value: 'first' },
        { key: 'twice', value: 'second' },
      ]);
      expect(await store.getMany(['short', 'plain', 'hour', 'twice'])).toEqual(['s', 'p', 'h', 'second']);
      expect(await store.ttl('plain')).toBe(Number.POSITIVE_INFINITY);
      expect(await store.ttl('hour')).toBeGreaterThan(SHORT);
      const passed = await stopwatch(store, SHORT);
      await passed();
      expect(await store.getMany(['short', 'plain', 'hour'])).toEqual([undefined, 'p', 'h']);
    });

    it('deleteMany returns how many keys existed', async () => {
      expect(await store.deleteMany([])).toBe(0);
      await store.setMany([
        { key: 'x', value: '1' },
        { key: 'y', value: '2' },
        { key: 'z', value: '3' },
      ]);
      expect(await store.deleteMany(['x', 'missing', 'y', 'x'])).toBe(2);
      expect(await store.getMany(['x', 'y', 'z'])).toEqual([undefined, undefined, '3']);
    });

    it("clear removes this store's keys and nothing else", async () => {
      const other = await open({ prefix: 'other:' });
      await other.clear();
      await store.setMany([
        { key: 'shared', value: 'mine' },
        { key: 'only-mine', value: 'm', ttl: HOUR },
      ]);
      await other.set('shared', 'theirs');
      expect(await store.get('shared')).toBe('mine');
      expect(await other.get('shared')).toBe('theirs');
      expect(await other.get('only-mine')).toBeUndefined();
      await store.clear();
      expect(await store.getMany(['shared', 'only-mine'])).toEqual([undefined, undefined]);
      expect(await other.get('shared')).toBe('theirs');
      await store.clear();
      await other.clear();
      expect(await other.get('shared')).toBeUndefined();
    });

    it('clear treats glob characters in a prefix literally and never reaches a sibling store', async () => {
      // Each pair: clearing the first must delete its own keys and leave the second's alone.
      const pairs: [string, string][] = [
        ['a*', 'ab'],
        ['?', 'x'],
        ['[ab]', 'a'],
        ['\\', '*'],
        ['[^a]', 'b'],
      ];
      for (const [clearing, sibling] of pairs) {
        const a = await open({ prefix: `glob:${clearing}` });
        const b = await open({ prefix: `glob:${sibling}` });
        await a.set('k', 'a');
        await a.set('k2', 'a2');
        await b.set('k', 'b');
        await b.set('k2', 'b2');
        await a.clear();
        expect(await a.getMany(['k', 'k2'])).toEqual([undefined, undefined]);
        expect(await b.getMany(['k', 'k2'])).toEqual(['b', 'b2']);
        await b.clear();
      }
    });

    it('accepts keys with glob characters, separators, spaces and unicode', async () => {
      const keys = [
        '*',
        'a*b',
        '?',
        '[abc]',
        '\\',
        'a\\*',
        'x:y:z',
        'a/b|c',
        'with space',
        'tab\tnew\nline',
        'é🙂中',
      ];
      await store.setMany(keys.map((key, i) => ({ key, value: `v${i}` })));
      expect(await store.getMany(keys)).toEqual(keys.map((_, i) => `v${i}`));
      for (const [i, key] of keys.entries()) {
        expect(await store.get(key)).toBe(`v${i}`);
        expect(await store.has(key)).toBe(true);
      }
      expect(await store.get('a')).toBeUndefined();
      expect(await store.delete('*')).toBe(true);
      expect(await store.get('a*b')).toBe('v1');
      expect(await store.deleteMany(keys)).toBe(keys.length - 1);
    });

    it('round-trips unicode and control characters exactly', async () => {
      const values = [
        'héllo wörld',
        '🙂👩‍👩‍👧 emoji',
        '中文 日本語 한국어',
        'nul\0inside',
        '\r\n\t',
        ' padded ',
        '"quoted" \'single\'',
      ];
      for (const [i, value] of values.entries()) await store.set(`u${i}`, value);
      const back = await store.getMany(values.map((_, i) => `u${i}`));
      expect(back).toEqual(values);
    });

    it('round-trips a 1 MiB value exactly', async () => {
      const unit = 'abc 🙂 é 中 \0\n';
      const big = unit.repeat(Math.ceil((1024 * 1024) / unit.length)).slice(0, 1024 * 1024 - 1) + 'Z';
      expect(big.length).toBe(1024 * 1024);
      expect(isWellFormedString(big)).toBe(true);
      await store.set('big', big);
      const back = await store.get('big');
      expect(back?.length).toBe(big.length);
      expect(back === big).toBe(true);
      const [many] = await store.getMany(['big']);
      expect(many === big).toBe(true);
    });

    it('serves concurrent writes and reads', async () => {
      const keys = Array.from({ length: 200 }, (_, i) => `c${i}`);
      await Promise.all(keys.map((key) => store.set(key, key)));
      const reads = await Promise.all(keys.map((key) => store.get(key)));
      expect(reads).toEqual(keys);
      expect(await store.deleteMany(keys)).toBe(keys.length);
    });

    it('rejects invalid keys and values with E_VALIDATION, writing nothing', async () => {
      const badKeys: unknown[] = [123, null, undefined, {}, '', '\uD800'];
      for (const key of badKeys) {
        const k = key as string;
        const calls: (() => unknown)[] = [
          () => store.get(k),
          () => store.set(k, 'v'),
          () => store.delete(k),
          () => store.has(k),
          () => store.ttl(k),
          () => store.getMany(['ok', k]),
          () => store.deleteMany(['ok', k]),
          () => store.setMany([{ key: k, value: 'v' }]),
          () => store.setIfAbsent(k, 'v'),
          () => store.deleteIfEquals(k, 'v'),
        ];
        for (const call of calls) {
          const err = await failure(call);
          expect(isStrataError(err, 'E_VALIDATION'), `key ${JSON.stringify(key)}`).toBe(true);
        }
      }
      const badValues: unknown[] = [42, null, undefined, { a: 1 }, Buffer.from('x'), '\uDC00 lone'];
      for (const value of badValues) {
        const v = value as string;
        for (const call of [
          () => store.set('k', v),
          () => store.setIfAbsent('k', v),
          () => store.deleteIfEquals('k', v),
        ]) {
          const err = await failure(call);
          expect(isStrataError(err, 'E_VALIDATION'), `value ${String(value)}`).toBe(true);
        }
      }
      const partial = await failure(() =>
        store.setMany([
          { key: 'first', value: 'ok' },
          { key: 'second', value: 7 as unknown as string },
        ]),
      );
      expect(isStrataError(partial, 'E_VALIDATION')).toBe(true);
      const notEntries = await failure(() => store.setMany([null as unknown as KeyValueEntry]));
      expect(isStrataError(notEntries, 'E_VALIDATION')).toBe(true);
      const notArray = await failure(() => store.getMany('abc' as unknown as string[]));
      expect(isStrataError(notArray, 'E_VALIDATION')).toBe(true);
      expect(await store.get('first')).toBeUndefined();
      expect(await store.has('k')).toBe(false);
    });

    it("rejects invalid ttls with E_CONFIG naming 'ttl', writing nothing", async () => {
      const badTtls: unknown[] = [-5, '-1s', '5 parsecs', 'abc', Number.NaN, 0, '0ms', true];
      for (const ttl of badTtls) {
        const single = await failure(() => store.set('k', 'v', { ttl: ttl as number }));
        expect(single, `ttl ${String(ttl)}`).toMatchObject({ code: 'E_CONFIG', option: 'ttl' });
        const many = await failure(() =>
          store.setMany([
            { key: 'first', value: 'ok' },
            { key: 'k', value: 'v', ttl: ttl as number },
          ]),
        );
        expect(many, `ttl ${String(ttl)}`).toMatchObject({ code: 'E_CONFIG', option: 'ttl' });
        const lease = await failure(() => store.setIfAbsent('k', 'v', { ttl: ttl as number }));
        expect(lease, `ttl ${String(ttl)}`).toMatchObject({ code: 'E_CONFIG', option: 'ttl' });
      }
      expect(await store.getMany(['k', 'first'])).toEqual([undefined, undefined]);
    });

    it('fails with E_CLOSED after close, and closing twice is safe', async () => {
      const closing = await open({ prefix: 'closing:' });
      await closing.set('k', 'v');
      await closing.clear();
      await closing.close();
      await closing.close();
      const calls: (() => unknown)[] = [
        () => closing.get('k'),
        () => closing.getMany(['k']),
        () => closing.set('k', 'v'),
        () => closing.setMany([{ key: 'k', value: 'v' }]),
        () => closing.delete('k'),
        () => closing.deleteMany(['k']),
        () => closing.has('k'),
        () => closing.ttl('k'),
        () => closing.clear(),
        () => closing.setIfAbsent('k', 'v'),
        () => closing.deleteIfEquals('k', 'v'),
      ];
      for (const call of calls) {
        const err = await failure(call);
        expect(isStrataError(err, 'E_CLOSED')).toBe(true);
      }
    });
  });
}
