// Single flight (readers/spec.md section 5, rule 2): concurrent gets in one
// Cache that found the same data key missing (with the same consistency)
// share one lease attempt and one wait. The first get leads; the others
// follow and take the outcome the leader publishes. A leader that is aborted abandons
// the flight: its followers start again, one of them leading. A follower
// whose leader holds the lease and is still loading one lease after the
// follower joined leaves that flight and starts over, so a hung leader
// delays its followers no longer than a hung holder delays other processes.

import type { Got } from './cache';

export interface Shared {
  result: { ok: true; got: Got<Buffer> } | { ok: false; error: unknown };
}

export type Outcome = { kind: 'done'; shared: Shared } | { kind: 'abandoned' };

export class Flight {
  finished = false;
  /** The leader holds the lease (is loading): only such a leader can hang. */
  holding = false;
  readonly outcome: Promise<Outcome>;
  private settle!: (o: Outcome) => void;

  constructor(
    private readonly flights: Flights,
    readonly key: string,
  ) {
    this.outcome = new Promise((resolve) => (this.settle = resolve));
  }

  /**
   * Hands `shared` to the followers and closes the flight: a get that
   * starts after this starts a flight of its own. The leader may go on
   * working for itself (an early refresh, a load behind a stale value).
   */
  finish(shared: Shared): void {
    this.end({ kind: 'done', shared });
  }

  /** The leader was aborted: its followers start again. */
  abandon(): void {
    this.end({ kind: 'abandoned' });
  }

  /** A follower gave up on a hung leader: close the flight to newcomers (the leader may still finish it). */
  close(): void {
    if (this.flights.running.get(this.key) === this) this.flights.running.delete(this.key);
  }

  private end(outcome: Outcome): void {
    if (this.finished) return;
    this.finished = true;
    if (this.flights.running.get(this.key) === this) this.flights.running.delete(this.key);
    this.settle(outcome);
  }
}

export class Flights {
  readonly running = new Map<string, Flight>();

  /** Joins the running flight of `key`, or starts one led by the caller. */
  join(key: string): { lead: Flight } | { follow: Flight } {
    const running = this.running.get(key);
    if (running) return { follow: running };
    const flight = new Flight(this, key);
    this.running.set(key, flight);
    return { lead: flight };
  }
}
