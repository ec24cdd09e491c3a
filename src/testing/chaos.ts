/**
 * Chaos wrappers around real implementations, for fault tests: make the next calls fail, stall
 * or go down, without mocking the engine underneath.
 */
import type { ChangeLog } from '../core/changes.js';
import { ConnectionError } from '../core/errors.js';

/** A change log whose appends and reads can be made to fail or stall. */
export interface ChaosChangeLog extends ChangeLog {
  /** The next `n` appends fail (with `err`, default an `E_CONNECTION`) without reaching the log. */
  failAppends(n: number, err?: unknown): void;
  /** Every call fails until `up()`. */
  down(err?: unknown): void;
  up(): void;
  /** The next append waits for the returned release function before reaching the log. */
  stallNextAppend(): () => void;
  /** Appends attempted, including failed ones. */
  readonly appendAttempts: number;
}

/** Wraps `log` in a chaos wrapper; without instructions it behaves exactly like `log`. */
export function chaosChangeLog(log: ChangeLog): ChaosChangeLog {
  let failures = 0;
  let failure: unknown;
  let isDown = false;
  let downError: unknown;
  let stall: Promise<void> | undefined;
  let attempts = 0;
  const unavailable = () => new ConnectionError({ backend: 'chaos' }, 'injected outage');
  const check = () => {
    if (isDown) throw downError ?? unavailable();
  };
  return {
    get name() {
      return log.name;
    },
    get appendAttempts() {
      return attempts;
    },
    async append(changes) {
      attempts++;
      check();
      if (failures > 0) {
        failures--;
        throw failure ?? unavailable();
      }
      if (stall !== undefined) {
        const wait = stall;
        stall = undefined;
        await wait;
      }
      return log.append(changes);
    },
    async read(after, limit, options) {
      check();
      return log.read(after, limit, options);
    },
    async head() {
      check();
      return log.head();
    },
    async lastPosition(source) {
      check();
      return log.lastPosition(source);
    },
    watch: (listener) => log.watch(listener),
    close: () => log.close(),
    failAppends(n, err) {
      failures = n;
      failure = err;
    },
    down(err) {
      isDown = true;
      downError = err;
    },
    up() {
      isDown = false;
    },
    stallNextAppend() {
      let release!: () => void;
      stall = new Promise<void>((r) => {
        release = r;
      });
      return release;
    },
  };
}
