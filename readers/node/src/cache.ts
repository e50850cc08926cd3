// Cache.get (readers/spec.md sections 1, 5, 6, 7 and 9), the same
// behaviour as the Rust crate cdc-cache.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { Cluster, Redis } from 'ioredis';
import type { Registry } from 'prom-client';

import { L1, type L1Options } from './l1';
import { metricsFor, type Metrics } from './metrics';
import { InvalidOptionsError, Layout, leaseKey, parseVersion, type Fields } from './naming';

// One Lua source for both libraries: readers/lua/ (this file runs from dist/src/).
const LUA_DIR = resolve(__dirname, '..', '..', '..', 'lua');
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
  /** How long a loader may hold a key before others take over (default 5000). */
  leaseMs?: number;
  /** How often a reader waiting for a fill looks again (default 10). */
  pollMs?: number;
  /** XFetch's beta: above 1 refreshes earlier, 0 turns XFetch off (default 1). */
  beta?: number;
  /** The share of hits checked against the loader, 0 to 1 (default 0). */
  sampleRate?: number;
  l1?: L1Options;
  /** prom-client registry (default: prom-client's global one). */
  registry?: Registry;
}

export interface GetOptions {
  /** The cache keys whose version records the value depends on (default: the key itself). */
  deps?: string[];
  namespaces?: string[];
  ttlMs: number;
  loader: () => Promise<string | Buffer>;
  /** `strong` (default) or `eventual`, which needs `maxStaleMs`. */
  consistency?: 'strong' | 'eventual';
  maxStaleMs?: number;
}

export interface Got {
  value: string;
  /** From a cache (L1 or Redis), not from this call's loader. */
  hit: boolean;
  /** The data key the value is keyed by. */
  version: string;
  /** The previous version's value, served while a lease holder refills. */
  stale: boolean;
}

export class LoaderError extends Error {
  readonly kind = 'loader';
  constructor(readonly cause: unknown) {
    super(`loader: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'LoaderError';
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

/** A reader of one Redis, standalone (`Redis`) or Cluster (`Cluster`), from ioredis. */
export class Cache {
  private readonly name: string;
  private readonly prefix: string;
  private readonly leaseMs: number;
  private readonly pollMs: number;
  private readonly beta: number;
  private readonly sampleRate: number;
  private readonly m: Metrics;
  private readonly l1?: L1;
  private readonly cluster: boolean;
  private readOnly = true; // EVALSHA_RO exists (Redis 7.0+)
  private checks: boolean[] = [];
  private subscriber?: Redis | Cluster;

  constructor(
    private readonly redis: Redis | Cluster,
    options: CacheOptions = {},
  ) {
    this.name = options.name ?? 'default';
    this.prefix = options.prefix ?? 'ver:';
    // Longer than a typical loader, short enough that a crashed one is not noticed for long.
    this.leaseMs = options.leaseMs ?? 5000;
    // A fill is usually a few milliseconds away; 10 ms keeps 200 waiters at 20k cheap GETs/s at worst.
    this.pollMs = options.pollMs ?? 10;
    this.beta = options.beta ?? 1;
    this.sampleRate = options.sampleRate ?? 0;
    if (!(this.leaseMs > 0) || !(this.pollMs > 0)) throw new InvalidOptionsError('leaseMs and pollMs must be above zero');
    if (!(this.sampleRate >= 0 && this.sampleRate <= 1) || !(this.beta >= 0)) {
      throw new InvalidOptionsError(`sampleRate ${this.sampleRate} must be within 0..1 and beta ${this.beta} at least 0`);
    }
    this.cluster = redis instanceof Cluster;
    this.m = metricsFor(options.registry);
    if (options.l1) {
      this.l1 = new L1(options.l1, `${this.prefix}epoch`);
      if (options.l1.channel) this.followNotices(options.l1.channel);
    }
  }

  /** Stops the notice subscriber (the Redis connection passed in stays the caller's). */
  async close(): Promise<void> {
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

  /** Reads the value of `key` (spec section 1). */
  async get(key: string, options: GetOptions): Promise<Got> {
    if (!(options.ttlMs > 0)) throw new InvalidOptionsError(`key ${JSON.stringify(key)}: ttlMs must be above zero`);
    const eventual = options.consistency === 'eventual';
    if (eventual && !(options.maxStaleMs !== undefined && options.maxStaleMs >= 0)) {
      throw new InvalidOptionsError(`key ${JSON.stringify(key)}: eventual consistency needs maxStaleMs`);
    }
    if (!eventual && options.maxStaleMs !== undefined) {
      throw new InvalidOptionsError(`key ${JSON.stringify(key)}: maxStaleMs is for eventual consistency`);
    }
    const layout = new Layout(this.prefix, key, options.deps, options.namespaces ?? []);
    const loader = once(options.loader);
    const cache = { cache: this.name };

    let l1Id: string | undefined;
    if (this.l1 && eventual) {
      l1Id = `${layout.key}\n${layout.records.join('\n')}`;
      const entry = this.l1.fresh(l1Id, Math.min(options.maxStaleMs!, this.l1.maxStaleMs));
      if (entry) {
        this.m.hits.inc({ ...cache, layer: 'l1' });
        await this.sample(Buffer.from(entry.value, 'utf8'), loader);
        return { value: entry.value, hit: true, version: entry.dataKey, stale: false };
      }
    }

    const started = performance.now();
    const snap = await this.read(layout);
    if (snap.value) {
      this.m.hits.inc({ ...cache, layer: 'redis' });
      const { deltaMs, value } = decode(snap.value);
      if (deltaMs > 0 && snap.pttlMs > 0 && xfetchDue(deltaMs, this.beta, snap.pttlMs)) {
        const token = await this.tryLease(snap.dataKey);
        if (token) {
          this.m.earlyRefreshes.inc(cache);
          return this.fill(layout, snap.dataKey, token, loader, options.ttlMs, l1Id);
        }
      }
      const served = value.toString('utf8');
      if (this.l1 && l1Id) this.l1.put(l1Id, snap.dataKey, served, layout.records, started);
      await this.sample(value, loader);
      return { value: served, hit: true, version: snap.dataKey, stale: false };
    }

    this.m.misses.inc(cache);
    const token = await this.tryLease(snap.dataKey);
    if (token) {
      // A holder may have filled and released between our read and our lease
      // (a reader stalled that long): look once more before loading.
      const found = await this.redis.getBuffer(snap.dataKey);
      if (found) {
        await this.release(snap.dataKey, token);
        this.m.stampedePrevented.inc(cache);
        return { value: decode(found).value.toString('utf8'), hit: true, version: snap.dataKey, stale: false };
      }
      return this.fill(layout, snap.dataKey, token, loader, options.ttlMs, l1Id);
    }

    if (eventual) {
      const stale = layout.staleKey(snap.epoch, snap.fields, snap.nowUs);
      if (stale && stale.ageUs <= BigInt(Math.floor(options.maxStaleMs! * 1000))) {
        const raw = await this.redis.getBuffer(stale.key);
        if (raw) {
          this.m.stampedePrevented.inc(cache);
          this.m.staleServed.inc(cache);
          return { value: decode(raw).value.toString('utf8'), hit: true, version: stale.key, stale: true };
        }
      }
    }

    // Wait for the holder's fill, at most one lease in all.
    const lease = leaseKey(snap.dataKey);
    const deadline = performance.now() + this.leaseMs;
    for (;;) {
      await sleep(this.pollMs);
      const [raw, leaseLeft] = await Promise.all([this.redis.getBuffer(snap.dataKey), this.redis.pttl(lease)]);
      if (raw) {
        this.m.stampedePrevented.inc(cache);
        const served = decode(raw).value.toString('utf8');
        if (this.l1 && l1Id) this.l1.put(l1Id, snap.dataKey, served, layout.records, started);
        return { value: served, hit: true, version: snap.dataKey, stale: false };
      }
      // -2: the lease is gone without a fill (its holder crashed or failed).
      if (leaseLeft === -2) {
        const taken = await this.tryLease(snap.dataKey);
        if (taken) {
          // On a cluster the GET and the PTTL above went to different nodes:
          // the fill may have landed between them.
          const found = await this.redis.getBuffer(snap.dataKey);
          if (found) {
            await this.release(snap.dataKey, taken);
            this.m.stampedePrevented.inc(cache);
            return { value: decode(found).value.toString('utf8'), hit: true, version: snap.dataKey, stale: false };
          }
          this.m.leaseTakeovers.inc(cache);
          return this.fill(layout, snap.dataKey, taken, loader, options.ttlMs, l1Id);
        }
      }
      // Leases keep changing hands without a fill: load rather than wait without bound.
      if (performance.now() >= deadline) return this.fill(layout, snap.dataKey, null, loader, options.ttlMs, l1Id);
    }
  }

  /** One script on a standalone server, two pipelined round trips on a cluster. */
  private async read(layout: Layout): Promise<Snapshot> {
    let nowUs: bigint;
    let texts: (string | null)[];
    let scriptKey: string | null = null;
    let pttlMs = 0;
    let value: Buffer | null = null;
    if (!this.cluster) {
      const reply = await this.runReadScript(layout);
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

  private async runReadScript(layout: Layout): Promise<unknown> {
    const args = [READ_SHA, layout.records.length, ...layout.records, layout.key, layout.deps];
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        return await this.redis.callBuffer(this.readOnly ? 'EVALSHA_RO' : 'EVALSHA', ...args);
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        if (message.startsWith('NOSCRIPT')) await this.loadScripts();
        else if (this.readOnly && /unknown command/i.test(message)) this.readOnly = false;
        else throw e;
      }
    }
    throw new ProtocolError('the read script kept disappearing (SCRIPT FLUSH in a loop?)');
  }

  private async loadScripts(): Promise<void> {
    const nodes = this.redis instanceof Cluster ? this.redis.nodes('master') : [this.redis];
    await Promise.all(nodes.flatMap((n) => [READ_LUA, RELEASE_LUA].map((s) => n.script('LOAD', s))));
  }

  private async tryLease(dataKey: string): Promise<string | null> {
    const token = randomBytes(16).toString('hex');
    const set = await this.redis.set(leaseKey(dataKey), token, 'PX', Math.max(1, Math.floor(this.leaseMs)), 'NX');
    return set ? token : null;
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

  /** Loads and writes the value; without a token (a waiter out of patience) there is no lease to release. */
  private async fill(
    layout: Layout,
    dataKey: string,
    token: string | null,
    loader: () => Promise<string | Buffer>,
    ttlMs: number,
    l1Id: string | undefined,
  ): Promise<Got> {
    const cache = { cache: this.name };
    const started = performance.now();
    let loaded: Buffer;
    try {
      loaded = asBuffer(await loader());
    } catch (e) {
      this.m.fillLatency.observe(cache, performance.now() - started);
      this.m.fillErrors.inc(cache);
      if (token) await this.release(dataKey, token);
      throw new LoaderError(e);
    }
    const took = performance.now() - started;
    this.m.fillLatency.observe(cache, took);
    // The value first, then the lease: a waiter that sees the lease gone finds the value.
    await this.redis.set(dataKey, encode(took, loaded), 'PX', Math.max(1, Math.floor(ttlMs)));
    if (token) await this.release(dataKey, token);
    this.m.fills.inc(cache);
    const value = loaded.toString('utf8');
    if (this.l1 && l1Id) this.l1.put(l1Id, dataKey, value, layout.records, started);
    return { value, hit: false, version: dataKey, stale: false };
  }

  /** The freshness check of spec section 9, on a sample of hits. */
  private async sample(served: Buffer, loader: () => Promise<string | Buffer>): Promise<void> {
    if (this.sampleRate <= 0 || Math.random() >= this.sampleRate) return;
    let truth: Buffer;
    try {
      truth = asBuffer(await loader());
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
function once<T>(f: () => Promise<T>): () => Promise<T> {
  let called = false;
  return () => {
    if (called) return Promise.reject(new Error('the loader is called once per get'));
    called = true;
    return f();
  };
}
