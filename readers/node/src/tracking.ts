// The exact L1's connections (readers/spec.md section 8.1). ioredis drops
// RESP3 `invalidate` pushes, so this uses the RESP2 form of
// Redis client-side caching: a subscriber connection subscribed to
// `__redis__:invalidate`, and a tracker connection with
// `CLIENT TRACKING ON REDIRECT <subscriber's id>` on which every read whose
// result the L1 may keep is made. Redis publishes the keys read on the
// tracker to the subscriber when they change.
//
// The two arrive on different connections, so an invalidation may overtake
// the reply of a read it concerns: the L1 refuses to install a read begun
// before an invalidation of one of its records (L1.put). While either
// connection is down, or from the moment one is found dead, the L1 is
// flushed and serves nothing; reads go to the main connection. Every
// HEALTH_INTERVAL_MS both connections are checked (a PING each, and the
// tracker's CLIENT TRACKINGINFO for a broken redirect), so a connection that
// died silently stops the L1 within about two seconds.

import type { Redis } from 'ioredis';

import type { L1 } from './l1';

const CHANNEL = '__redis__:invalidate';
const HEALTH_INTERVAL_MS = 1000;
const HEALTH_TIMEOUT_MS = 1000;

export class Tracking {
  private readonly tracker: Redis;
  private readonly subscriber: Redis;
  /** The subscriber's client id while it is subscribed. */
  private subscribedAs: string | null = null;
  private generation = 0;
  private up = false;
  private closed = false;
  private readonly health: NodeJS.Timeout;

  constructor(
    redis: Redis,
    cacheName: string,
    private readonly l1: L1,
    /** Entries flushed because tracking went up or down. */
    private readonly onReset: (dropped: number) => void,
    /** Entries dropped by one invalidation message. */
    private readonly onInvalidated: (dropped: number) => void,
  ) {
    // A subscribed connection serves nothing else; both come back by themselves
    // after a drop, and are set up again (the subscriber's id changes).
    // Named, so an operator can tell them apart in CLIENT LIST (no spaces allowed).
    const name = cacheName.replace(/[^\x21-\x7e]/g, '_');
    // RESP2 on both: ioredis (which speaks RESP3 by default) drops RESP3
    // `invalidate` pushes, while RESP2 delivers them as Pub/Sub messages.
    const common = { autoResubscribe: false, lazyConnect: false, protocol: 2 } as const;
    this.tracker = redis.duplicate({ ...common, connectionName: `cdc-cache-tracking:${name}` });
    this.subscriber = redis.duplicate({ ...common, connectionName: `cdc-cache-invalidations:${name}` });
    for (const conn of [this.tracker, this.subscriber]) {
      conn.on('error', () => undefined); // reconnects by itself; 'close' flushes the L1
      conn.on('close', () => {
        if (conn === this.subscriber) this.subscribedAs = null;
        this.down();
      });
      conn.on('ready', () => void this.setup());
    }
    this.subscriber.on('messageBuffer', (channel: Buffer, message: unknown) => {
      if (channel.toString() !== CHANNEL) return;
      // An array of keys, or null after FLUSHALL / FLUSHDB.
      const keys = message === null ? null : Array.isArray(message) ? message.map((k) => String(k)) : [String(message)];
      this.onInvalidated(this.l1.invalidateTracked(keys));
    });
    this.health = setInterval(() => void this.check(), HEALTH_INTERVAL_MS);
    this.health.unref();
  }

  /** The tracker, when tracking is on. */
  connection(): Redis | null {
    return this.up ? this.tracker : null;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.health);
    this.down();
    this.tracker.disconnect();
    this.subscriber.disconnect();
  }

  private down(): void {
    this.generation++;
    this.up = false;
    this.onReset(this.l1.setUp(false));
  }

  private async setup(): Promise<void> {
    if (this.closed || this.tracker.status !== 'ready' || this.subscriber.status !== 'ready') return;
    const generation = ++this.generation;
    this.up = false;
    try {
      if (this.subscribedAs === null) {
        const id = String(await this.subscriber.client('ID'));
        await this.subscriber.subscribe(CHANNEL);
        this.subscribedAs = id;
      }
      // OFF first: a tracker that stayed up while the subscriber came back
      // still redirects to the old, gone id.
      await this.tracker.client('TRACKING', 'OFF');
      await this.tracker.client('TRACKING', 'ON', 'REDIRECT', this.subscribedAs);
      if (generation !== this.generation || this.closed) return;
      this.up = true;
      this.onReset(this.l1.setUp(true));
    } catch {
      if (generation === this.generation) this.down();
    }
  }

  private async check(): Promise<void> {
    if (this.closed || this.tracker.status !== 'ready' || this.subscriber.status !== 'ready') return;
    const generation = this.generation;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, fail) => {
      timer = setTimeout(() => fail(new Error('health check timed out')), HEALTH_TIMEOUT_MS);
    });
    try {
      const [info] = await Promise.race([
        Promise.all([this.tracker.call('CLIENT', 'TRACKINGINFO'), this.subscriber.ping()]),
        timeout,
      ]);
      // [ 'flags', [...], 'redirect', id, 'prefixes', [...] ]
      const flags = Array.isArray(info) ? (info[1] as unknown[]).map(String) : [];
      if (this.up && (!flags.includes('on') || flags.includes('broken_redirect'))) throw new Error('tracking is off');
    } catch {
      if (generation !== this.generation) return;
      this.down();
      // Start both afresh: a connection that stopped answering may still
      // look connected, and the server may still redirect to it.
      this.subscribedAs = null;
      this.tracker.disconnect(true);
      this.subscriber.disconnect(true);
    } finally {
      clearTimeout(timer);
    }
  }
}
