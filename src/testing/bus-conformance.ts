/**
 * The conformance suite of the message-bus role. Every strata bus runs it against its real
 * engine; run it against your own `MessageBus` the same way:
 *
 * ```ts
 * const prefix = `test_${process.pid}.`;
 * describeMessageBusConformance('my bus', () => createMyBus({ prefix }));
 * ```
 *
 * The suite opens two buses from `create`, standing for two processes, so every bus the factory
 * returns must share one namespace (and a namespace of its own on a shared server). It never
 * sleeps: it waits for messages and events by polling, with an upper bound. To prove that a
 * message did not arrive, it publishes a later message from the same publisher and waits for that
 * one, relying on one publisher's messages reaching a subscriber in publish order.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BusSubscription, BusSubscriptionEvents, MessageBus } from '../core/bus.js';
import { isStrataError } from '../core/errors.js';

/** Creates one bus; every bus it returns must reach the others (one server, one namespace). */
export type MessageBusFactory = () => Promise<MessageBus> | MessageBus;

/** Options for `describeMessageBusConformance`. */
export interface MessageBusConformanceOptions {
  /**
   * Cuts the connection of every bus to its server (kill the server) and returns a function that
   * restores it (restart the server on the same address). Given: the suite also checks that
   * subscribers are told about the gap, that a publish meanwhile never hangs, and that delivery
   * resumes. Run it against a private server, never a shared one.
   */
  disconnect?: () => Promise<() => Promise<void>>;
  /** The longest a message, an event or a failing publish may take to arrive or settle (default 10s). */
  timeoutMs?: number;
  /** Runs after the suite, once every bus it created is closed. */
  teardown?: () => Promise<void> | void;
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
async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  limitMs: number,
): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what} after ${limitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Whether `promise` settled within `ms`, and how. */
async function settle(promise: Promise<unknown>, ms: number): Promise<{ settled: boolean; error?: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<{ settled: boolean }>((resolve) => {
    timer = setTimeout(() => resolve({ settled: false }), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        () => ({ settled: true }),
        (error: unknown) => ({ settled: true, error }),
      ),
      hung,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A subscription's messages and events, in arrival order. */
interface Recorder {
  messages: string[];
  events: string[];
  handler: (message: string) => void;
  callbacks: BusSubscriptionEvents;
}

function recorder(): Recorder {
  const r: Recorder = {
    messages: [],
    events: [],
    handler: (message) => {
      r.messages.push(message);
    },
    callbacks: {
      onDisconnect: () => {
        r.events.push('disconnect');
      },
      onReconnect: () => {
        r.events.push('reconnect');
      },
    },
  };
  return r;
}

/**
 * Registers the message-bus conformance tests. `create` is called for the two shared buses and
 * again for tests that need a bus of their own (to close it).
 */
export function describeMessageBusConformance(
  label: string,
  create: MessageBusFactory,
  options: MessageBusConformanceOptions = {},
): void {
  const limit = options.timeoutMs ?? 10_000;

  describe(`MessageBus conformance: ${label}`, () => {
    let a: MessageBus;
    let b: MessageBus;
    const extra: MessageBus[] = [];
    const subscriptions: BusSubscription[] = [];
    let channels = 0;
    /** A channel no other test uses, so a late message of one test never reaches another. */
    const channel = (name: string) => `${name}.${channels++}`;

    const subscribe = async (
      bus: MessageBus,
      on: string,
      r: Recorder = recorder(),
    ): Promise<Recorder & { subscription: BusSubscription }> => {
      const subscription = await bus.subscribe(on, r.handler, r.callbacks);
      subscriptions.push(subscription);
      return Object.assign(r, { subscription });
    };

    const received = (r: Recorder, message: string, who: string) =>
      until(() => r.messages.includes(message), `${who} to receive ${JSON.stringify(message)}`, limit);

    beforeAll(async () => {
      a = await create();
      b = await create();
    });

    afterAll(async () => {
      for (const subscription of subscriptions) await subscription.unsubscribe().catch(() => undefined);
      for (const bus of [a, b, ...extra]) await bus?.close();
      await options.teardown?.();
    });

    it('delivers a message published on one bus to the subscribers on both, once each', async () => {
      expect(typeof a.name).toBe('string');
      const on = channel('fanout');
      const onA = await subscribe(a, on);
      const onB = await subscribe(b, on);
      const alsoOnB = await subscribe(b, on);
      await a.publish(on, 'hello');
      await a.publish(on, 'end');
      for (const [r, who] of [
        [onA, 'the publishing bus'],
        [onB, 'the other bus'],
        [alsoOnB, "the other bus's second handler"],
      ] as const) {
        await received(r, 'end', who);
        expect(r.messages, who).toEqual(['hello', 'end']);
      }
      await b.publish(on, 'back');
      await received(onA, 'back', 'the first bus');
      expect(onA.messages).toEqual(['hello', 'end', 'back']);
    });

    it('keeps channels apart', async () => {
      const users = channel('users');
      const orders = channel('orders');
      const onUsers = await subscribe(b, users);
      const onOrders = await subscribe(b, orders);
      const onPrefix = await subscribe(b, `${users}x`);
      await a.publish(orders, 'order-1');
      await a.publish(`${users}x`, 'longer');
      await a.publish(users, 'user-1');
      await received(onUsers, 'user-1', 'the users subscriber');
      await received(onOrders, 'order-1', 'the orders subscriber');
      await received(onPrefix, 'longer', 'the longer channel subscriber');
      expect(onUsers.messages).toEqual(['user-1']);
      expect(onOrders.messages).toEqual(['order-1']);
      expect(onPrefix.messages).toEqual(['longer']);
    });

    it('stops delivery on unsubscribe, to that handler only; unsubscribing twice is safe', async () => {
      const on = channel('unsubscribe');
      const leaving = await subscribe(b, on);
      const staying = await subscribe(b, on);
      await a.publish(on, 'first');
      await received(leaving, 'first', 'the leaving handler');
      await received(staying, 'first', 'the staying handler');
      await leaving.subscription.unsubscribe();
      await leaving.subscription.unsubscribe();
      await a.publish(on, 'second');
      await received(staying, 'second', 'the staying handler');
      expect(leaving.messages).toEqual(['first']);

      await staying.subscription.unsubscribe();
      const witness = await subscribe(a, on);
      await a.publish(on, 'third');
      await received(witness, 'third', 'a subscriber on the publishing bus');
      // The other bus has no handler left on the channel; a new one there gets later messages only.
      const again = await subscribe(b, on);
      await a.publish(on, 'fourth');
      await received(again, 'fourth', 'a new handler on the other bus');
      expect(again.messages).toEqual(['fourth']);
      expect(staying.messages).toEqual(['first', 'second']);
    });

    it("delivers one publisher's messages in publish order", async () => {
      const on = channel('order');
      const onA = await subscribe(a, on);
      const onB = await subscribe(b, on);
      const sent = Array.from({ length: 500 }, (_, i) => `m${i}`);
      for (const message of sent) await a.publish(on, message);
      await received(onB, 'm499', 'the other bus');
      await received(onA, 'm499', 'the publishing bus');
      expect(onB.messages).toEqual(sent);
      expect(onA.messages).toEqual(sent);
    });

    it('round-trips empty, unicode, control-character and 64 KiB messages exactly', async () => {
      const on = channel('payload');
      const onB = await subscribe(b, on);
      const big = 'é🙂中 \0\n'.repeat(8192).slice(0, 65_535) + 'Z';
      const sent = [
        '',
        'héllo wörld',
        '🙂👩‍👩‍👧',
        'nul\0inside',
        '\r\n\t',
        ' padded ',
        '{"json":[1,2]}',
        big,
      ];
      for (const message of sent) await a.publish(on, message);
      await until(() => onB.messages.length >= sent.length, 'every message', limit);
      expect(onB.messages.length).toBe(sent.length);
      onB.messages.forEach((message, i) => {
        expect(message === sent[i], `message ${i}`).toBe(true);
      });
    });

    it('keeps a subscription delivering after its handler throws or rejects', async () => {
      const on = channel('throwing');
      let thrown = 0;
      const throwing = recorder();
      throwing.handler = (message) => {
        throwing.messages.push(message);
        thrown++;
        throw new Error('handler failure');
      };
      const rejecting = recorder();
      rejecting.handler = ((message: string) => {
        rejecting.messages.push(message);
        return Promise.reject(new Error('async handler failure'));
      }) as (message: string) => void;
      await subscribe(b, on, throwing);
      await subscribe(b, on, rejecting);
      const after = await subscribe(b, on);
      for (const message of ['one', 'two', 'three']) await a.publish(on, message);
      await received(after, 'three', 'the handler after the throwing ones');
      await received(throwing, 'three', 'the throwing handler');
      await received(rejecting, 'three', 'the rejecting handler');
      expect(after.messages).toEqual(['one', 'two', 'three']);
      expect(thrown).toBe(3);
      // The bus still serves other channels on the same connection.
      const other = channel('after-throw');
      const onOther = await subscribe(b, other);
      await a.publish(other, 'still alive');
      await received(onOther, 'still alive', 'a later subscription');
    });

    it('rejects invalid channels, messages and handlers with E_VALIDATION', async () => {
      const badChannels: unknown[] = ['', 42, null, undefined, {}, '\uD800'];
      for (const bad of badChannels) {
        const c = bad as string;
        for (const call of [() => a.publish(c, 'm'), () => a.subscribe(c, () => undefined)]) {
          const err = await failure(call);
          expect(isStrataError(err, 'E_VALIDATION'), `channel ${JSON.stringify(bad)}`).toBe(true);
        }
      }
      const on = channel('validation');
      for (const bad of [42, null, undefined, { a: 1 }, Buffer.from('x'), '\uDC00 lone']) {
        const err = await failure(() => a.publish(on, bad as string));
        expect(isStrataError(err, 'E_VALIDATION'), `message ${String(bad)}`).toBe(true);
      }
      for (const bad of [undefined, 'handler', 42]) {
        const err = await failure(() => a.subscribe(on, bad as unknown as () => void));
        expect(isStrataError(err, 'E_VALIDATION'), `handler ${String(bad)}`).toBe(true);
      }
      const badEvents = await failure(() =>
        a.subscribe(on, () => undefined, { onDisconnect: 'no' as unknown as () => void }),
      );
      expect(isStrataError(badEvents, 'E_VALIDATION')).toBe(true);
      // Nothing was subscribed by the refused calls: a valid subscriber sees only its own message.
      const onB = await subscribe(b, on);
      await a.publish(on, 'valid');
      await received(onB, 'valid', 'a valid subscriber');
      expect(onB.messages).toEqual(['valid']);
    });

    it('fails with E_CLOSED after close; closing twice and unsubscribing afterwards are safe', async () => {
      const closing = await create();
      extra.push(closing);
      const on = channel('closing');
      const onClosing = recorder();
      const subscription = await closing.subscribe(on, onClosing.handler, onClosing.callbacks);
      await closing.publish(on, 'before');
      await received(onClosing, 'before', 'the bus about to close');
      await closing.close();
      await closing.close();
      for (const call of [() => closing.publish(on, 'after'), () => closing.subscribe(on, () => undefined)]) {
        const err = await failure(call);
        expect(isStrataError(err, 'E_CLOSED')).toBe(true);
      }
      await subscription.unsubscribe();
      const witness = await subscribe(a, on);
      await a.publish(on, 'after close');
      await received(witness, 'after close', 'a subscriber on an open bus');
      expect(onClosing.messages).toEqual(['before']);
      // Closing is not a disconnect: the subscription was not told about one.
      expect(onClosing.events).toEqual([]);
    });

    if (options.disconnect !== undefined) {
      const disconnect = options.disconnect;
      it('tells subscribers about a lost connection and its return, and delivers again after it', async () => {
        const on = channel('fault');
        const onA = await subscribe(a, on);
        const onB = await subscribe(b, on);
        await a.publish(on, 'before');
        await received(onB, 'before', 'the other bus');
        await received(onA, 'before', 'the publishing bus');

        const restore = await disconnect();
        await until(
          () => onA.events.length > 0 && onB.events.length > 0,
          'onDisconnect on both buses',
          limit,
        );
        expect(onB.events).toEqual(['disconnect']);
        expect(onA.events).toEqual(['disconnect']);

        // A publish while the server is away never hangs; when it fails, it says why.
        const during = await settle(a.publish(on, 'during'), limit);
        expect(during.settled, 'a publish while disconnected settles').toBe(true);
        if (during.error !== undefined) {
          expect(['E_CONNECTION', 'E_TIMEOUT']).toContain((during.error as { code?: unknown }).code);
        }

        await restore();
        await until(
          () => onA.events.length === 2 && onB.events.length === 2,
          'onReconnect on both buses',
          limit,
        );
        expect(onB.events).toEqual(['disconnect', 'reconnect']);
        expect(onA.events).toEqual(['disconnect', 'reconnect']);

        // The publisher may still be reconnecting: retry until a publish is accepted.
        await until(
          () =>
            a.publish(on, 'after').then(
              () => true,
              () => false,
            ),
          'a publish to succeed after the reconnect',
          limit,
        );
        await received(onB, 'after', 'the other bus, after the reconnect');
        await received(onA, 'after', 'the publishing bus, after the reconnect');
        await b.publish(on, 'from b');
        await received(onA, 'from b', 'the first bus, from the other bus');
        expect(onB.events).toEqual(['disconnect', 'reconnect']);
      });
    }
  });
}
