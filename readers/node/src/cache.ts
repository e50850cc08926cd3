// Cache.get (readers/spec.md sections 1, 5, 6, 7 and 9), the same behaviour
// as the Rust crate cdc-cache: the read, single flight, the lease and the
// wait for another's load, stale-while-revalidate, XFetch, the freshness
// check.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { Cluster, Redis } from 'ioredis';
import type { Registry } from 'prom-client';

import { Flights, type Flight, type Shared } from './flight';
import { L1, type L1Options, type ReadStart } from './l1';
import { metricsFor, type Metrics } from './metrics';
import { InvalidOptionsError, Layout, leaseKey, parseVersion, type Fields } from './naming';
import { Tracking } from './tracking';

// One Lua source for both libraries (readers/lua/), copied into the package
// at build time (scripts/copy-lua.js): this file runs from dist/src/.
const LUA_DIR = resolve(__dirname, '..', 'lua');
const READ_LUA = readFileSync(resolve(LUA_DIR, 'read.lua'), 'utf8');
const RELEASE_LUA = readFileSync(resolve(LUA_DIR, 'release.lua'), 'utf8');
const sha1 = (text: string) => createHash('sha1').update(text).digest('hex');
const READ_SHA = sha1(READ_LUA);
const RELEASE_SHA = sha1(RELEASE_LUA);
/** The last N freshness checks make cache_stale_ratio. */
const RATIO_WINDOW = 100;

export interface CacheOptions {
  /** The `cache` label of every metric (default `default`). */
  name?: string;
  /** The daemon's `[redis] version_prefix` (default `ver:`). */
  prefix?: string;
  /** The lease's time to live: how long a loader may hold a key before another reader may take it over (default 5000). */
  leaseMs?: number;
  /** A waiter's first re-read interval; it doubles up to maxPollMs (default 10). */
  pollMs?: number;
  /** The longest re-read interval of a waiter (default 100). */
  maxPollMs?: number;
  /** The longest a get waits for another reader's load (default twice leaseMs). */
  waitTimeoutMs?: number;
  /** The longest a loader may run (default: no limit). */
  loaderTimeoutMs?: number;
  /** XFetch's beta: above 1 refreshes earlier, 0 turns XFetch off (default 1). */
  beta?: number;
  /** The share of hits checked against the loader, 0 to 1 (default 0). */
  sampleRate?: number;
  l1?: L1Options;
  /** prom-client registry (default: prom-client's global one). */
  registry?: Registry;
}

export interface GetOptions {
  /** The cache keys whose version records the value depends on (default: the key itself; never empty). */
  deps?: string[];
  namespaces?: string[];
  ttlMs: number;
  /**
   * Called at most once, and only while this get holds the lease. The
   * signal aborts when the get is aborted or the loader runs past
   * loaderTimeoutMs: its result is then ignored.
   */
  loader: (signal: AbortSignal) => Promise<string | Buffer>;
  /** `strong` (default) or `eventual`, which needs `maxStaleMs`. */
  consistency?: 'strong' | 'eventual';
  maxStaleMs?: number;
  /** Aborts the get: it rejects with the signal's reason and releases a lease it holds at once. */
  signal?: AbortSignal;
}

export interface Got<T = string> {
  /** UTF-8 text from `get`, the bytes unchanged from `getBuffer`. */
  value: T;
  /** Not from this call's own loader: from the L1, from Redis, or from another get's load. */
  hit: boolean;
  /** The data key the value is keyed by (`product:42@e0:v1754312399000001`): it names the versions the value belongs to. */
  dataKey: string;
  /** The value may be older than the current version: the previous version's value, or a bounded L1's entry. */
  stale: boolean;
}

export class LoaderError extends Error {
  readonly kind = 'loader';
  constructor(readonly cause: unknown) {
    super(`loader: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'LoaderError';
  }
}

export class LoaderTimeoutError extends Error {
  readonly kind = 'loader_timeout';
  constructor(
    readonly dataKey: string,
    readonly afterMs: number,
  ) {
    super(`loader_timeout: the loader of ${JSON.stringify(dataKey)} ran longer than ${afterMs} ms`);
    this.name = 'LoaderTimeoutError';
  }
}

/** Another reader held the lease for the whole wait and there was no previous value to serve; nothing was loaded. */
export class LeaseTimeoutError extends Error {
  readonly kind = 'lease_timeout';
  constructor(
    readonly dataKey: string,
    readonly waitedMs: number,
  ) {
    super(`lease_timeout: waited ${Math.round(waitedMs)} ms for another reader to load ${JSON.stringify(dataKey)}`);
    this.name = 'LeaseTimeoutError';
  }
}

export class ProtocolError extends Error {
  readonly kind = 'protocol';
}

interface Snapshot {
  nowUs: bigint;
  epoch: string;
  fields: Fields[];
  dataKey: string;
  pttlMs: number;
  value: Buffer | null;
}

/** One get's facts and state, passed down the read path. */
interface Ctx {
  layout: Layout;
  /** The L1 entry's id: the key and its records. */
  id: string;
  ttlMs: number;
  eventual: boolean;
  maxStaleMs: number;
  started: number;
  deadline: number;
  /** Aborted with the caller's signal: stops sleeps and the loader. */
  stop: AbortController;
  /** The lease this get holds, released at once if the get is aborted. */
  lease: { dataKey: string; token: string } | null;
  /** The flight this get leads, abandoned if the get is aborted. */
  leading: Flight | null;
}

type Loader = (signal: AbortSignal) => Promise<string | Buffer>;

const text = (b: unknown): string | null => (b === null || b === undefined ? null : Buffer.isBuffer(b) ? b.toString('utf8') : String(b));
const asBuffer = (v: string | Buffer) => (Buffer.isBuffer(v) ? v : Buffer.from(v, 'utf8'));

/** `c1:<delta ms>:<bytes>` (spec section 7). */
export function encode(deltaMs: number, value: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`c1:${Math.max(0, Math.floor(deltaMs))}:`), value]);
}

/** The loader's duration and the value; a value without the envelope is returned whole. */
export function decode(raw: Buffer): { deltaMs: number; value: Buffer } {
  if (raw.length > 3 && raw.subarray(0, 3).toString('latin1') === 'c1:') {
    const colon = raw.indexOf(0x3a, 3);
    const digits = colon > 3 ? raw.subarray(3, colon).toString('latin1') : '';
    if (/^[0-9]{1,19}$/.test(digits)) return { deltaMs: Number(digits), value: raw.subarray(colon + 1) };
  }
  return { deltaMs: 0, value: raw };
}

/** XFetch: refresh when `delta * beta * -ln(u) >= ttl left`, u in (0, 1]. */
export function xfetchDue(deltaMs: number, beta: number, pttlMs: number): boolean {
  const u = 1 - Math.random();
  return deltaMs * beta * -Math.log(u) >= pttlMs;
}

/** The ioredis key prefix of a client, if any: every key it sends is rewritten. */
function keyPrefixOf(redis: Redis | Cluster): string | undefined {
  if (redis instanceof Cluster) return redis.options.keyPrefix ?? redis.options.redisOptions?.keyPrefix;
  return redis.options.keyPrefix;
}

/** A reader of one Redis, standalone (`Redis`) or Cluster (`Cluster`), from ioredis. */
export class Cache {
  private readonly name: string;
  private readonly prefix: string;
  private readonly leaseMs: number;
  private readonly pollMs: number;
  private readonly maxPollMs: number;
  private readonly waitTimeoutMs: number;
  private readonly loaderTimeoutMs: number | undefined;
  private readonly beta: number;
  private readonly sampleRate: number;
  private readonly m: Metrics;
  private readonly l1?: L1;
  private readonly tracking?: Tracking;
  private readonly cluster: boolean;
  private readonly flights = new Flights();
  private readOnly = true; // EVALSHA_RO exists (Redis 7.0+)
  private checks: boolean[] = [];
  private subscriber?: Redis | Cluster;

  constructor(
    private readonly redis: Redis | Cluster,
    options: CacheOptions = {},
  ) {
    const keyPrefix = keyPrefixOf(redis);
    if (keyPrefix) {
      // ioredis would prefix the version records and data keys, but not the
      // keys the read script builds: every hit would turn into a miss, and
      // the records read would be ones the daemon never bumps.
      throw new InvalidOptionsError(
        `the ioredis client has keyPrefix ${JSON.stringify(keyPrefix)}: pass a client without it ` +
          '(the daemon writes unprefixed records; set the cache option prefix to its version_prefix instead)',
      );
    }
    this.name = options.name ?? 'default';
    this.prefix = options.prefix ?? 'ver:';
    // Longer than a typical loader, short enough that a crashed one is not noticed for long.
    this.leaseMs = options.leaseMs ?? 5000;
    // A fill is usually a few milliseconds away: look again soon, then less
    // often, so a slow load does not turn waiters into a flood of GETs.
    this.pollMs = options.pollMs ?? 10;
    this.maxPollMs = options.maxPollMs ?? 100;
    this.waitTimeoutMs = options.waitTimeoutMs ?? 2 * this.leaseMs;
    this.loaderTimeoutMs = options.loaderTimeoutMs;
    this.beta = options.beta ?? 1;
    this.sampleRate = options.sampleRate ?? 0;
    if (!(this.leaseMs > 0) || !(this.pollMs > 0) || !(this.maxPollMs > 0)) {
      throw new InvalidOptionsError(`leaseMs ${this.leaseMs}, pollMs ${this.pollMs} and maxPollMs ${this.maxPollMs} must be above zero`);
    }
    if (this.maxPollMs < this.pollMs) throw new InvalidOptionsError(`maxPollMs ${this.maxPollMs} is below pollMs ${this.pollMs}`);
    if (!(this.waitTimeoutMs > 0) || (this.loaderTimeoutMs !== undefined && !(this.loaderTimeoutMs > 0))) {
      throw new InvalidOptionsError('waitTimeoutMs and loaderTimeoutMs must be above zero when set');
    }
    if (!(this.sampleRate >= 0 && this.sampleRate <= 1) || !(this.beta >= 0)) {
      throw new InvalidOptionsError(`sampleRate ${this.sampleRate} must be within 0..1 and beta ${this.beta} at least 0`);
    }
    this.cluster = redis instanceof Cluster;
    this.m = metricsFor(options.registry);
    if (options.l1) {
      this.l1 = new L1(options.l1, `${this.prefix}epoch`);
      const cache = { cache: this.name };
      if (this.l1.tracking) {
        if (redis instanceof Cluster) {
          throw new InvalidOptionsError('the tracking L1 needs a standalone Redis (on a cluster use the bounded L1)');
        }
        this.tracking = new Tracking(
          redis,
          this.name,
          this.l1,
          (n) => this.m.l1Invalidations.inc({ ...cache, reason: 'reset' }, n),
          (n) => this.m.l1Invalidations.inc({ ...cache, reason: 'tracking' }, n),
        );
      } else if (options.l1.channel) {
        this.followNotices(options.l1.channel);
      }
    }
  }

  /** Stops the L1's own connections (the Redis connection passed in stays the caller's). */
  async close(): Promise<void> {
    this.tracking?.close();
    if (this.subscriber) {
      const s = this.subscriber;
      this.subscriber = undefined;
      s.disconnect();
    }
  }

  private followNotices(channel: string): void {
    // A connection of its own: a subscribed connection serves nothing else.
    // (A Cluster's duplicate subscribes on one node; every node relays a
    // cluster's Pub/Sub messages.)
    const sub: Redis | Cluster = this.redis instanceof Cluster ? this.redis.duplicate() : this.redis.duplicate();
    this.subscriber = sub;
    const l1 = this.l1!;
    // On every (re)subscribe: notices sent while not subscribed are lost.
    sub.on('ready', () => this.m.l1Invalidations.inc({ cache: this.name, reason: 'reset' }, l1.clear()));
    sub.on('close', () => this.m.l1Invalidations.inc({ cache: this.name, reason: 'reset' }, l1.clear()));
    sub.on('error', () => undefined); // reconnects by itself; the L1 is cleared on close
    sub.on('message', (_channel: string, message: string) => {
      let notice: { record_key?: unknown; commit_time_us?: unknown };
      try {
        notice = JSON.parse(message);
      } catch {
        return;
      }
      if (typeof notice.record_key !== 'string') return;
      this.m.l1Invalidations.inc({ cache: this.name, reason: 'notice' }, l1.invalidate(notice.record_key));
      if (typeof notice.commit_time_us === 'number' && notice.commit_time_us > 0) {
        const nowUs = Date.now() * 1000;
        this.m.propagation.observe({ cache: this.name }, Math.max(0, nowUs - notice.commit_time_us) / 1000);
      }
    });
    sub.subscribe(channel).catch(() => undefined);
  }

  /** Reads the value of `key` as UTF-8 text (spec section 1). */
  async get(key: string, options: GetOptions): Promise<Got<string>> {
    const got = await this.getBuffer(key, options);
    return { ...got, value: got.value.toString('utf8') };
  }

  /** Reads the value of `key` as the bytes stored (spec section 1). */
  async getBuffer(key: string, options: GetOptions): Promise<Got<Buffer>> {
    const started = performance.now();
    const named = (what: string) => new InvalidOptionsError(`key ${JSON.stringify(key)}: ${what}`);
    if (!(options.ttlMs > 0)) throw named('ttlMs must be above zero');
    const consistency = options.consistency ?? 'strong';
    if (consistency !== 'strong' && consistency !== 'eventual') {
      throw named(`consistency ${JSON.stringify(options.consistency)} is neither 'strong' nor 'eventual'`);
    }
    const eventual = consistency === 'eventual';
    if (options.maxStaleMs !== undefined && !(options.maxStaleMs >= 0)) throw named(`maxStaleMs ${options.maxStaleMs} must be at least 0`);
    if (eventual && options.maxStaleMs === undefined) throw named('eventual consistency needs maxStaleMs');
    if (!eventual && options.maxStaleMs !== undefined) throw named('maxStaleMs is for eventual consistency');
    if (typeof options.loader !== 'function') throw named('loader must be a function');
    const layout = new Layout(this.prefix, key, options.deps, options.namespaces ?? []);
    const loader = once(options.loader);
    const id = `${layout.key}\n${layout.records.join('\n')}`;
    const maxStaleMs = options.maxStaleMs ?? 0;

    if (this.l1 && (this.l1.tracking || eventual)) {
      const entry = this.l1.lookup(id, this.l1.tracking ? null : Math.min(maxStaleMs, this.l1.maxStaleMs));
      if (entry) {
        this.m.hits.inc({ cache: this.name, layer: 'l1' });
        await this.sample(entry.value, loader, undefined);
        // Only the tracking L1 knows its entries are current.
        return { value: entry.value, hit: true, dataKey: entry.dataKey, stale: !this.l1.tracking };
      }
    }

    const signal = options.signal;
    signal?.throwIfAborted();
    const ctx: Ctx = {
      layout,
      id,
      ttlMs: options.ttlMs,
      eventual,
      maxStaleMs,
      started,
      deadline: started + this.waitTimeoutMs,
      stop: new AbortController(),
      lease: null,
      leading: null,
    };
    const run = this.run(ctx, loader);
    if (!signal) return run;

    run.catch(() => undefined); // after an abort its outcome is nobody's
    return new Promise<Got<Buffer>>((ok, fail) => {
      const onAbort = () => {
        // Rule 6: a cancelled holder releases its lease at once; a
        // cancelled leader hands its flight on.
        ctx.stop.abort(signal.reason);
        ctx.leading?.abandon();
        const held = ctx.lease;
        ctx.lease = null;
        if (held) this.release(held.dataKey, held.token).catch(() => undefined);
        fail(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      run.then(
        (got) => {
          signal.removeEventListener('abort', onAbort);
          ok(got);
        },
        (error) => {
          signal.removeEventListener('abort', onAbort);
          fail(error);
        },
      );
    });
  }

  /** The read, then on a miss single flight (spec section 5, rule 2). */
  private async run(ctx: Ctx, loader: Loader): Promise<Got<Buffer>> {
    const cache = { cache: this.name };
    // Every get makes its own read: a get started after a bump must see it,
    // so no get takes the reply of a read sent before it started.
    const start = this.l1 ? this.l1.begin() : { at: performance.now(), seq: 0 };
    const snap = await this.read(ctx.layout, this.tracking?.connection() ?? null);
    if (snap.value) {
      this.m.hits.inc({ ...cache, layer: 'redis' });
      return this.hit(ctx, snap, snap.value, loader, start);
    }
    this.m.misses.inc(cache);

    // From the miss on, the gets of this process that found the same data
    // key missing share one lease attempt and one wait.
    const flightKey = `${snap.dataKey}\n${ctx.eventual ? `e${ctx.maxStaleMs}` : 's'}`;
    // Set once this get left a flight whose leader outlived its lease.
    let afterHungLeader = false;
    for (;;) {
      const joined = this.flights.join(flightKey);
      if ('lead' in joined) {
        const flight = joined.lead;
        ctx.leading = flight;
        let result: Shared['result'];
        try {
          result = { ok: true, got: await this.lead(ctx, snap, flight, loader, start, afterHungLeader) };
        } catch (error) {
          result = { ok: false, error };
        }
        ctx.leading = null;
        // Its followers did not load: for them it is a hit.
        flight.finish({ result: result.ok ? { ok: true, got: { ...result.got, hit: true } } : result });
        if (result.ok) return result.got;
        throw result.error;
      }
      const outcome = await this.followUntil(joined.follow, ctx);
      if (outcome === 'abandoned') continue; // its leader was aborted: lead or follow anew
      if (outcome === 'left') {
        afterHungLeader = true;
        continue;
      }
      this.m.stampedePrevented.inc(cache);
      if (outcome === 'timeout') {
        const again = await this.read(ctx.layout, null);
        if (again.value) return { value: decode(again.value).value, hit: true, dataKey: again.dataKey, stale: false };
        return this.giveUp(ctx, again);
      }
      if (!outcome.result.ok) throw outcome.result.error;
      if (outcome.result.got.stale) this.m.staleServed.inc(cache);
      return outcome.result.got;
    }
  }

  private async followUntil(flight: Flight, ctx: Ctx): Promise<Shared | 'abandoned' | 'timeout' | 'left'> {
    const timer = new AbortController();
    const stopTimer = () => timer.abort();
    ctx.stop.signal.addEventListener('abort', stopTimer, { once: true });
    try {
      let outcome: Awaited<typeof flight.outcome> | 'timeout' | 'left';
      for (;;) {
        const untilDeadline = Math.max(0, ctx.deadline - performance.now());
        outcome = await Promise.race([
          flight.outcome,
          this.leaseMs < untilDeadline
            ? sleep(this.leaseMs, 'left' as const, { signal: timer.signal })
            : sleep(untilDeadline, 'timeout' as const, { signal: timer.signal }),
        ]);
        // A leader that is only waiting itself is not hung: follow on.
        if (outcome !== 'left' || flight.holding) break;
      }
      if (outcome === 'timeout') return 'timeout';
      if (outcome === 'left') {
        flight.close();
        return 'left';
      }
      return outcome.kind === 'done' ? outcome.shared : 'abandoned';
    } finally {
      ctx.stop.signal.removeEventListener('abort', stopTimer);
      timer.abort();
    }
  }

  /** The value was there: XFetch may refresh it early (spec section 7). */
  private async hit(ctx: Ctx, snap: Snapshot, raw: Buffer, loader: Loader, start: ReadStart): Promise<Got<Buffer>> {
    const { deltaMs, value } = decode(raw);
    if (deltaMs > 0 && snap.pttlMs > 0 && xfetchDue(deltaMs, this.beta, snap.pttlMs)) {
      if (await this.acquire(ctx, snap.dataKey)) {
        this.m.earlyRefreshes.inc({ cache: this.name });
        return this.loadAndFill(ctx, snap.dataKey, loader, start);
      }
    }
    this.l1Put(ctx, snap.dataKey, value, start);
    await this.sample(value, loader, ctx);
    return { value, hit: true, dataKey: snap.dataKey, stale: false };
  }

  /** The flight leader after a miss (spec section 5). */
  private async lead(ctx: Ctx, snap: Snapshot, flight: Flight, loader: Loader, start: ReadStart, afterHungLeader: boolean): Promise<Got<Buffer>> {
    const cache = { cache: this.name };
    if (await this.acquire(ctx, snap.dataKey)) {
      // The lease of this process's own hung leader was free.
      if (afterHungLeader) this.m.leaseTakeovers.inc(cache);
      if (ctx.eventual) {
        // The followers serve the previous value, as another process's
        // waiters would; this get loads.
        const stale = await this.staleValue(ctx, snap, true);
        if (stale) flight.finish({ result: { ok: true, got: stale } });
      }
      return this.hold(ctx, snap.dataKey, loader, start);
    }
    if (ctx.eventual) {
      const stale = await this.staleValue(ctx, snap, true);
      if (stale) {
        this.m.stampedePrevented.inc(cache);
        this.m.staleServed.inc(cache);
        return stale;
      }
    }
    return this.wait(ctx, snap, loader, start);
  }

  /**
   * Rule 3: waits for another reader's fill, re-reading with a backoff from
   * pollMs to maxPollMs; takes the lease over once it is gone without a
   * value; gives up at the deadline (rule 4).
   */
  private async wait(ctx: Ctx, snap: Snapshot, loader: Loader, start: ReadStart): Promise<Got<Buffer>> {
    const cache = { cache: this.name };
    const lease = leaseKey(snap.dataKey);
    let interval = this.pollMs;
    for (;;) {
      const now = performance.now();
      if (now >= ctx.deadline) {
        this.m.stampedePrevented.inc(cache);
        return this.giveUp(ctx, snap);
      }
      await sleep(Math.min(interval, ctx.deadline - now), undefined, { signal: ctx.stop.signal });
      interval = Math.min(interval * 2, this.maxPollMs);
      const [raw, leaseLeft] = await Promise.all([this.redis.getBuffer(snap.dataKey), this.redis.pttl(lease)]);
      if (raw) {
        this.m.stampedePrevented.inc(cache);
        const value = decode(raw).value;
        this.l1Put(ctx, snap.dataKey, value, start);
        return { value, hit: true, dataKey: snap.dataKey, stale: false };
      }
      // -2: the lease is gone without a fill (its holder crashed, hung past
      // its lease, or its loader failed): one attempt to take it over; the
      // winner loads, the others keep waiting.
      if (leaseLeft === -2 && (await this.acquire(ctx, snap.dataKey))) {
        this.m.leaseTakeovers.inc(cache);
        return this.hold(ctx, snap.dataKey, loader, start);
      }
    }
  }

  /** Rule 4: the wait is over. Eventual serves the previous value if there is one, whatever its age. */
  private async giveUp(ctx: Ctx, snap: Snapshot): Promise<Got<Buffer>> {
    if (ctx.eventual) {
      const stale = await this.staleValue(ctx, snap, false);
      if (stale) {
        this.m.staleServed.inc({ cache: this.name });
        return stale;
      }
    }
    throw new LeaseTimeoutError(snap.dataKey, performance.now() - ctx.started);
  }

  /** The previous version's value (spec section 6), if its key holds one; bounded: only within maxStaleMs. */
  private async staleValue(ctx: Ctx, snap: Snapshot, bounded: boolean): Promise<Got<Buffer> | null> {
    if (!ctx.eventual) return null;
    const stale = ctx.layout.staleKey(snap.epoch, snap.fields, snap.nowUs);
    if (!stale || (bounded && stale.ageUs > BigInt(Math.floor(ctx.maxStaleMs * 1000)))) return null;
    const raw = await this.redis.getBuffer(stale.key);
    return raw ? { value: decode(raw).value, hit: true, dataKey: stale.key, stale: true } : null;
  }

  /** Rule 5: this get holds the lease. It reads the data key once more (someone may have filled it since), then loads. */
  private async hold(ctx: Ctx, dataKey: string, loader: Loader, start: ReadStart): Promise<Got<Buffer>> {
    const found = await this.redis.getBuffer(dataKey);
    if (!found) return this.loadAndFill(ctx, dataKey, loader, start);
    await this.releaseHeld(ctx);
    const value = decode(found).value;
    this.l1Put(ctx, dataKey, value, start);
    return { value, hit: true, dataKey, stale: false };
  }

  /** Calls the loader (within loaderTimeoutMs), writes the value, then releases the lease. */
  private async loadAndFill(ctx: Ctx, dataKey: string, loader: Loader, start: ReadStart): Promise<Got<Buffer>> {
    const cache = { cache: this.name };
    const started = performance.now();
    let loaded: Buffer;
    try {
      loaded = asBuffer(await this.callLoader(ctx, dataKey, loader));
    } catch (e) {
      this.m.fillLatency.observe(cache, performance.now() - started);
      this.m.fillErrors.inc(cache);
      await this.releaseHeld(ctx);
      if (e instanceof LoaderTimeoutError || ctx.stop.signal.aborted) throw e;
      throw new LoaderError(e);
    }
    const took = performance.now() - started;
    this.m.fillLatency.observe(cache, took);
    // An aborted get writes nothing: its lease is already released.
    ctx.stop.signal.throwIfAborted();
    // The value first, then the lease: a waiter that sees the lease gone finds the value.
    try {
      await this.redis.set(dataKey, encode(took, loaded), 'PX', Math.max(1, Math.floor(ctx.ttlMs)));
    } finally {
      await this.releaseHeld(ctx);
    }
    this.m.fills.inc(cache);
    this.l1Put(ctx, dataKey, loaded, start);
    return { value: loaded, hit: false, dataKey, stale: false };
  }

  /** The loader, failing with LoaderTimeoutError past loaderTimeoutMs (its signal then aborts). */
  private callLoader(ctx: Ctx, dataKey: string, loader: Loader): Promise<string | Buffer> {
    ctx.stop.signal.throwIfAborted(); // an aborted get loads nothing
    const limit = this.loaderTimeoutMs;
    const controller = new AbortController();
    const forward = () => controller.abort(ctx.stop.signal.reason);
    ctx.stop.signal.addEventListener('abort', forward, { once: true });
    const loading = loader(controller.signal);
    const done = () => ctx.stop.signal.removeEventListener('abort', forward);
    if (limit === undefined) return loading.finally(done);
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => {
        const error = new LoaderTimeoutError(dataKey, limit);
        controller.abort(error);
        fail(error);
      }, limit);
      loading.then(ok, fail).finally(() => {
        clearTimeout(timer);
        done();
      });
    });
  }

  /** SET NX of the lease; the lease is remembered so an abort releases it. */
  private async acquire(ctx: Ctx, dataKey: string): Promise<boolean> {
    ctx.stop.signal.throwIfAborted();
    const token = randomBytes(16).toString('hex');
    const set = await this.redis.set(leaseKey(dataKey), token, 'PX', Math.max(1, Math.floor(this.leaseMs)), 'NX');
    if (!set) return false;
    if (ctx.stop.signal.aborted) {
      // Aborted while the SET was on its way: not ours to keep.
      await this.release(dataKey, token).catch(() => undefined);
      ctx.stop.signal.throwIfAborted();
    }
    ctx.lease = { dataKey, token };
    if (ctx.leading) ctx.leading.holding = true;
    return true;
  }

  /** Releases the lease this get holds; an error is ignored (the lease expires anyway). */
  private async releaseHeld(ctx: Ctx): Promise<void> {
    const held = ctx.lease;
    ctx.lease = null;
    if (held) await this.release(held.dataKey, held.token).catch(() => undefined);
  }

  /** Keeps a current value in the L1: the tracking L1 for every get, the bounded one for eventual gets. */
  private l1Put(ctx: Ctx, dataKey: string, value: Buffer, start: ReadStart): void {
    if (this.l1 && (this.l1.tracking || ctx.eventual)) this.l1.put(ctx.id, dataKey, value, ctx.layout.records, start);
  }

  /** One script on a standalone server (on the tracker when given), two pipelined round trips on a cluster. */
  private async read(layout: Layout, tracker: Redis | null): Promise<Snapshot> {
    let nowUs: bigint;
    let texts: (string | null)[];
    let scriptKey: string | null = null;
    let pttlMs = 0;
    let value: Buffer | null = null;
    if (!this.cluster) {
      const reply = await this.runReadScript(layout, tracker);
      const expected = 3 + 2 * (layout.records.length - 1) + 3;
      if (!Array.isArray(reply) || reply.length !== expected) {
        throw new ProtocolError(`unexpected reply from the read script: ${String(reply)}`);
      }
      nowUs = BigInt(text(reply[0])!) * 1_000_000n + BigInt(text(reply[1])!);
      texts = reply.slice(2, expected - 3).map(text);
      scriptKey = text(reply[expected - 3]);
      pttlMs = Number(reply[expected - 2]);
      value = (reply[expected - 1] as Buffer | null) ?? null;
    } else {
      const [time, epoch, ...each] = await Promise.all([
        this.redis.time(),
        this.redis.hget(layout.records[0], 'e'),
        ...layout.records.slice(1).map((r) => this.redis.hmget(r, 'v', 'pv')),
      ]);
      const [s, us] = time as [string | number, string | number];
      nowUs = BigInt(s) * 1_000_000n + BigInt(us);
      texts = [epoch as string | null];
      for (const [v, pv] of each as (string | null)[][]) texts.push(v, pv);
    }
    const epoch = parseVersion(layout.records[0], 'e', texts[0]) ?? '0';
    const fields: Fields[] = layout.records.slice(1).map((record, i) => ({
      v: parseVersion(record, 'v', texts[1 + 2 * i]) ?? '0',
      pv: parseVersion(record, 'pv', texts[2 + 2 * i]),
    }));
    const dataKey = layout.dataKey(
      epoch,
      fields.map((f) => f.v),
    );
    // Valid texts are canonical, so the script built the same key.
    if (scriptKey !== dataKey) {
      [pttlMs, value] = await Promise.all([this.redis.pttl(dataKey), this.redis.getBuffer(dataKey)]);
    }
    return { nowUs, epoch, fields, dataKey, pttlMs, value };
  }

  private async runReadScript(layout: Layout, tracker: Redis | null): Promise<unknown> {
    const args = [READ_SHA, layout.records.length, ...layout.records, layout.key, layout.deps];
    let conn: Redis | Cluster = tracker ?? this.redis;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        return await conn.callBuffer(this.readOnly ? 'EVALSHA_RO' : 'EVALSHA', ...args);
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        if (message.startsWith('NOSCRIPT')) await this.loadScripts();
        else if (this.readOnly && /unknown command/i.test(message)) this.readOnly = false;
        // The tracker failed (it is being replaced, and the L1 flushed): read on the main connection.
        else if (conn !== this.redis) conn = this.redis;
        else throw e;
      }
    }
    throw new ProtocolError('the read script kept disappearing (SCRIPT FLUSH in a loop?)');
  }

  private async loadScripts(): Promise<void> {
    const nodes = this.redis instanceof Cluster ? this.redis.nodes('master') : [this.redis];
    await Promise.all(nodes.flatMap((n) => [READ_LUA, RELEASE_LUA].map((s) => n.script('LOAD', s))));
  }

  private async release(dataKey: string, token: string): Promise<void> {
    const lease = leaseKey(dataKey);
    try {
      await this.redis.evalsha(RELEASE_SHA, 1, lease, token);
    } catch (e) {
      if (!(e instanceof Error && e.message.startsWith('NOSCRIPT'))) throw e;
      await this.loadScripts();
      await this.redis.evalsha(RELEASE_SHA, 1, lease, token);
    }
  }

  /** The freshness check of spec section 9, on a sample of hits. */
  private async sample(served: Buffer, loader: Loader, ctx: Ctx | undefined): Promise<void> {
    if (this.sampleRate <= 0 || Math.random() >= this.sampleRate) return;
    let truth: Buffer;
    try {
      truth = asBuffer(await loader(ctx?.stop.signal ?? new AbortController().signal));
    } catch {
      return; // a loader error says nothing about freshness: not a check
    }
    const stale = !truth.equals(served);
    const cache = { cache: this.name };
    this.m.freshnessChecks.inc(cache);
    if (stale) this.m.freshnessMismatches.inc(cache);
    this.checks.push(stale);
    if (this.checks.length > RATIO_WINDOW) this.checks.shift();
    this.m.staleRatio.set(cache, this.checks.filter(Boolean).length / this.checks.length);
  }
}

/** The loader runs at most once per get (spec section 1). */
function once(f: Loader): Loader {
  let called = false;
  return (signal) => {
    if (called) return Promise.reject(new Error('the loader is called once per get'));
    called = true;
    return f(signal);
  };
}
