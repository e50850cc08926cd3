// The optional in-process cache (readers/spec.md section 8): entries served
// while verified against Redis within a bound, dropped early by the
// daemon's notices, cleared whenever the notice subscription (re)starts.

export interface L1Options {
  /** The daemon's `[notices] redis_channel`; without it entries live by the bound alone. */
  channel?: string;
  /** The longest an entry is served after it was last verified (default 1000 ms). */
  maxStaleMs?: number;
  /** Default 10,000; beyond it the oldest entry is evicted. */
  maxEntries?: number;
}

interface Entry {
  dataKey: string;
  value: string;
  records: string[];
  verified: number; // performance.now() when the verifying read began
}

export class L1 {
  readonly maxStaleMs: number;
  readonly maxEntries: number;
  // A Map iterates in insertion order: the first key is the oldest.
  private entries = new Map<string, Entry>();
  private byRecord = new Map<string, Set<string>>();

  constructor(
    options: L1Options,
    private readonly epochRecord: string,
  ) {
    this.maxStaleMs = options.maxStaleMs ?? 1000;
    this.maxEntries = Math.max(1, options.maxEntries ?? 10_000);
  }

  fresh(id: string, boundMs: number): Entry | undefined {
    const entry = this.entries.get(id);
    return entry && performance.now() - entry.verified <= boundMs ? entry : undefined;
  }

  put(id: string, dataKey: string, value: string, records: string[], verified: number): void {
    if (!this.entries.has(id)) {
      while (this.entries.size >= this.maxEntries) {
        const oldest = this.entries.keys().next().value;
        if (oldest === undefined) break;
        this.remove(oldest);
      }
      for (const r of records) {
        let ids = this.byRecord.get(r);
        if (!ids) this.byRecord.set(r, (ids = new Set()));
        ids.add(id);
      }
    }
    this.entries.set(id, { dataKey, value, records, verified });
  }

  /** Drops every entry depending on `record`; returns how many. */
  invalidate(record: string): number {
    if (record === this.epochRecord) return this.clear();
    const ids = this.byRecord.get(record);
    if (!ids) return 0;
    let n = 0;
    for (const id of [...ids]) if (this.remove(id)) n++;
    return n;
  }

  clear(): number {
    const n = this.entries.size;
    this.entries.clear();
    this.byRecord.clear();
    return n;
  }

  private remove(id: string): boolean {
    const entry = this.entries.get(id);
    if (!entry) return false;
    this.entries.delete(id);
    for (const r of entry.records) {
      const ids = this.byRecord.get(r);
      ids?.delete(id);
      if (ids && ids.size === 0) this.byRecord.delete(r);
    }
    return true;
  }
}
