// The optional in-process cache (readers/spec.md section 8), in one of two
// modes, as in the Rust crate:
//
// - 'tracking': exact. Version records are read on a connection with Redis
//   client-side caching on (CLIENT TRACKING, see tracking.ts); an entry is
//   dropped the moment Redis reports a change to a record it depends on, and
//   the whole L1 is flushed whenever the tracking connections drop. Served
//   to every get, strong ones too: a hit costs no round trip.
// - 'bounded': entries served to eventual gets while verified against Redis
//   within a bound, dropped early by the daemon's notices, cleared whenever
//   the notice subscription (re)starts.
//
// Both hold at most maxEntries entries and maxBytes bytes.

import { InvalidOptionsError } from './naming';

export interface L1Options {
  /** 'bounded' (default) or 'tracking'. */
  mode?: 'bounded' | 'tracking';
  /** bounded: the daemon's `[notices] redis_channel`; without it entries live by the bound alone. */
  channel?: string;
  /** bounded: the longest an entry is served after it was last verified (default 1000 ms). */
  maxStaleMs?: number;
  /** Default 10,000; beyond it the oldest entry is evicted. */
  maxEntries?: number;
  /** Values, data keys and record names counted together (default 64 MiB). */
  maxBytes?: number;
}

interface Entry {
  dataKey: string;
  value: Buffer;
  records: string[];
  verified: number; // performance.now() when the verifying read began
  bytes: number;
}

/** When a read began: the L1 installs its result only if nothing it depends on changed since. */
export interface ReadStart {
  at: number;
  seq: number;
}

export class L1 {
  readonly tracking: boolean;
  readonly maxStaleMs: number;
  readonly maxEntries: number;
  readonly maxBytes: number;
  // A Map iterates in insertion order: the first key is the oldest.
  private entries = new Map<string, Entry>();
  private byRecord = new Map<string, Set<string>>();
  private bytes = 0;
  // Tracking only: one more per invalidation message and per flush; the
  // seq of each key's last invalidation; reads begun before spoiledBefore
  // install nothing; whether tracking is on.
  private seq = 0;
  private invalidatedAt = new Map<string, number>();
  private spoiledBefore = 0;
  private up = false;

  constructor(
    options: L1Options,
    private readonly epochRecord: string,
  ) {
    if (options.mode !== undefined && options.mode !== 'bounded' && options.mode !== 'tracking') {
      throw new InvalidOptionsError(`l1.mode ${JSON.stringify(options.mode)} is neither 'bounded' nor 'tracking'`);
    }
    this.tracking = options.mode === 'tracking';
    this.maxStaleMs = options.maxStaleMs ?? 1000;
    this.maxEntries = Math.max(1, options.maxEntries ?? 10_000);
    this.maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
    if (!(this.maxStaleMs >= 0) || !(this.maxBytes > 0)) {
      throw new InvalidOptionsError(`l1.maxStaleMs ${this.maxStaleMs} must be at least 0 and l1.maxBytes ${this.maxBytes} above 0`);
    }
    if (this.tracking && options.channel !== undefined) {
      throw new InvalidOptionsError('l1.channel (the daemon notices) is for the bounded L1; the tracking L1 hears Redis itself');
    }
  }

  /** tracking: the entry while tracking is up; bounded: when verified within boundMs. */
  lookup(id: string, boundMs: number | null): Entry | undefined {
    if (this.tracking && !this.up) return undefined;
    const entry = this.entries.get(id);
    if (!entry) return undefined;
    return boundMs === null || performance.now() - entry.verified <= boundMs ? entry : undefined;
  }

  /** Call before the read whose result may be installed. */
  begin(): ReadStart {
    return { at: performance.now(), seq: this.seq };
  }

  put(id: string, dataKey: string, value: Buffer, records: string[], start: ReadStart): void {
    if (this.tracking) {
      if (!this.up || start.seq < this.spoiledBefore) return;
      if (records.some((r) => (this.invalidatedAt.get(r) ?? -1) > start.seq)) return;
    }
    let bytes = Buffer.byteLength(id) + Buffer.byteLength(dataKey) + value.length;
    for (const r of records) bytes += Buffer.byteLength(r);
    if (bytes > this.maxBytes) return;
    this.remove(id);
    while (this.entries.size >= this.maxEntries || this.bytes + bytes > this.maxBytes) {
      const oldest = this.entries.keys().next().value;
      if (oldest === undefined) break;
      this.remove(oldest);
    }
    for (const r of records) {
      let ids = this.byRecord.get(r);
      if (!ids) this.byRecord.set(r, (ids = new Set()));
      ids.add(id);
    }
    this.bytes += bytes;
    this.entries.set(id, { dataKey, value, records, verified: start.at, bytes });
  }

  /** A daemon notice: drops every entry depending on `record`; returns how many. */
  invalidate(record: string): number {
    if (record === this.epochRecord) return this.clear();
    const ids = this.byRecord.get(record);
    if (!ids) return 0;
    let n = 0;
    for (const id of [...ids]) if (this.remove(id)) n++;
    return n;
  }

  /** A Redis invalidation message: these keys changed (null: the database was flushed). */
  invalidateTracked(keys: string[] | null): number {
    this.seq++;
    if (keys === null) return this.flush();
    let n = 0;
    for (const key of keys) {
      this.invalidatedAt.set(key, this.seq);
      const ids = this.byRecord.get(key);
      if (ids) for (const id of [...ids]) if (this.remove(id)) n++;
    }
    // Forgetting is safe: reads that began before now install nothing.
    if (this.invalidatedAt.size > 4 * Math.max(this.maxEntries, 1024)) {
      this.invalidatedAt.clear();
      this.spoiledBefore = this.seq;
    }
    return n;
  }

  /** Tracking went up (on fresh connections) or down: either way every entry goes. */
  setUp(up: boolean): number {
    this.up = up;
    return this.flush();
  }

  clear(): number {
    return this.flush();
  }

  get size(): { entries: number; bytes: number } {
    return { entries: this.entries.size, bytes: this.bytes };
  }

  private flush(): number {
    const n = this.entries.size;
    this.entries.clear();
    this.byRecord.clear();
    this.invalidatedAt.clear();
    this.bytes = 0;
    this.seq++;
    this.spoiledBefore = this.seq;
    return n;
  }

  private remove(id: string): boolean {
    const entry = this.entries.get(id);
    if (!entry) return false;
    this.entries.delete(id);
    this.bytes -= entry.bytes;
    for (const r of entry.records) {
      const ids = this.byRecord.get(r);
      ids?.delete(id);
      if (ids && ids.size === 0) this.byRecord.delete(r);
    }
    return true;
  }
}
