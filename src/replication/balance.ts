/**
 * How a read picks one replica among those that may serve it: round robin, least lag, or smooth
 * weighted round robin. Pickers are deterministic (no randomness), so their spread is testable.
 */

/** The balance policies a replica set offers. */
export type BalancePolicy = 'round-robin' | 'least-lag' | 'weighted';

/** What a picker knows about a replica. */
export interface BalanceCandidate {
  /** The replica's place in the set's list (stable). */
  readonly index: number;
  /** Its weight for `weighted` (positive). */
  readonly weight: number;
  /** Its measured lag in position units, when measured. */
  readonly lag: number | undefined;
  /** Its measured lag in milliseconds, when measured. */
  readonly lagMs: number | undefined;
}

/** Picks one candidate per call. */
export interface Balancer {
  /** One of `candidates`, or undefined when there is none. */
  pick<C extends BalanceCandidate>(candidates: readonly C[]): C | undefined;
}

/** The balancer of `policy` over a set of `size` replicas. */
export function createBalancer(policy: BalancePolicy, size: number): Balancer {
  if (policy === 'weighted') return weighted(size);
  if (policy === 'least-lag') return leastLag(size);
  return roundRobin(size);
}

/** Each call takes the first candidate at or after a cursor that moves past the last one taken. */
function roundRobin(size: number): Balancer {
  const n = Math.max(1, size);
  let cursor = 0;
  return {
    pick(candidates) {
      if (candidates.length === 0) return undefined;
      let chosen = candidates[0]!;
      let best = Number.POSITIVE_INFINITY;
      for (const c of candidates) {
        // Distance from the cursor going forward, wrapping around the whole set.
        const distance = (((c.index - cursor) % n) + n) % n;
        if (distance < best) {
          best = distance;
          chosen = c;
        }
      }
      cursor = (chosen.index + 1) % n;
      return chosen;
    },
  };
}

/** The candidates with the least lag (units, then time; unmeasured last), in turn among equals. */
function leastLag(size: number): Balancer {
  const tie = roundRobin(size);
  return {
    pick(candidates) {
      if (candidates.length <= 1) return candidates[0];
      let best: [number, number] = [Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY];
      let leaders: (typeof candidates)[number][] = [];
      for (const c of candidates) {
        const units = c.lag ?? Number.POSITIVE_INFINITY;
        const ms = c.lagMs ?? Number.POSITIVE_INFINITY;
        if (units < best[0] || (units === best[0] && ms < best[1])) {
          best = [units, ms];
          leaders = [c];
        } else if (units === best[0] && ms === best[1]) leaders.push(c);
      }
      return tie.pick(leaders);
    },
  };
}

/**
 * Smooth weighted round robin (as nginx does it): every candidate gains its weight, the richest
 * is taken and pays the total. Over any run of calls each candidate's share follows its weight,
 * without bursts.
 */
function weighted(size: number): Balancer {
  const current = new Array<number>(size).fill(0);
  return {
    pick(candidates) {
      if (candidates.length <= 1) return candidates[0];
      let total = 0;
      let chosen = candidates[0]!;
      for (const c of candidates) {
        current[c.index] = (current[c.index] ?? 0) + c.weight;
        total += c.weight;
        if (current[c.index]! > current[chosen.index]!) chosen = c;
      }
      current[chosen.index] = current[chosen.index]! - total;
      return chosen;
    },
  };
}
