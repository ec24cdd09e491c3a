/**
 * A change log held in process memory, for fast tests of consumers and handlers. It passes the
 * change-log conformance suite; logs with the same name in one process share their entries.
 * Nothing survives the process: use the SQLite log (the embedded default) for real work.
 */
import {
  type AppendResult,
  type Change,
  type ChangeLog,
  comparePositions,
  deserializeChange,
  type LogEntry,
  type Position,
  type ReadOptions,
  serializeChange,
} from '../core/changes.js';
import { ClosedError } from '../core/errors.js';

interface Shared {
  entries: string[];
  last: Map<string, Position>;
  watchers: Set<() => void>;
}

const registry = new Map<string, Shared>();

/** Options for `createMemoryChangeLog`. */
export interface MemoryChangeLogOptions {
  /** Logs with the same name share entries (default: a fresh private log). */
  name?: string;
}

/** Creates an in-memory change log. */
export function createMemoryChangeLog(options: MemoryChangeLogOptions = {}): ChangeLog & { clear(): void } {
  const name = options.name ?? `memory-${Math.random().toString(36).slice(2)}`;
  let shared = registry.get(name);
  if (shared === undefined) {
    shared = { entries: [], last: new Map(), watchers: new Set() };
    registry.set(name, shared);
  }
  const state = shared;
  const own = new Set<() => void>();
  let closed = false;
  const assertOpen = () => {
    if (closed) throw new ClosedError(`memory change log ${name}`);
  };

  return {
    name,
    async append(changes: readonly Change[]): Promise<AppendResult> {
      assertOpen();
      let appended = 0;
      let duplicates = 0;
      for (const change of changes) {
        const last = state.last.get(change.source);
        if (last !== undefined && comparePositions(change.position, last) <= 0) {
          duplicates++;
          continue;
        }
        const entry: LogEntry = { ...change, offset: state.entries.length + 1 };
        // Stored serialized, so tests see exactly what a durable log would give back.
        state.entries.push(serializeChange(entry));
        state.last.set(change.source, change.position);
        appended++;
      }
      if (appended > 0) for (const watcher of state.watchers) queueMicrotask(watcher);
      return { appended, duplicates, lastOffset: state.entries.length };
    },
    async read(after: number, limit: number, readOptions?: ReadOptions): Promise<LogEntry[]> {
      assertOpen();
      const out: LogEntry[] = [];
      const tables = readOptions?.tables === undefined ? undefined : new Set(readOptions.tables);
      for (let i = Math.max(0, after); i < state.entries.length && out.length < limit; i++) {
        const entry = deserializeChange<LogEntry>(state.entries[i]!);
        if (tables === undefined || tables.has(entry.table)) out.push(entry);
      }
      return out;
    },
    async head() {
      assertOpen();
      return state.entries.length;
    },
    async lastPosition(source: string) {
      assertOpen();
      return state.last.get(source);
    },
    watch(listener: () => void) {
      state.watchers.add(listener);
      own.add(listener);
      return () => {
        state.watchers.delete(listener);
        own.delete(listener);
      };
    },
    async close() {
      closed = true;
      for (const listener of own) state.watchers.delete(listener);
      own.clear();
    },
    clear() {
      registry.delete(name);
    },
  };
}
