// The lease and wait rule (readers/spec.md section 5, the tests of section
// 13) against a real Redis (CDC_REDIS_URL), the same cases as the Rust
// crate's tests/lease.rs.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Redis } from 'ioredis';
import { Registry } from 'prom-client';

import { Cache, InvalidOptionsError, leaseKey, METRIC_NAMES, type CacheOptions, type GetOptions, type Got } from '../src';
import { bump, metric, redisUrl, unique } from './support';

const TTL = 60_000;

/** Counts loads, and the most ever in flight at once. */
class Loads {
  started = 0;
  inFlight = 0;
  most = 0;

  loader(tookMs: number, value: string | null): (signal: AbortSignal) => Promise<string> {
    return async () => {
      this.started++;
      this.most = Math.max(this.most, ++this.inFlight);
      try {
        await sleep(tookMs);
      } finally {
        this.inFlight--;
      }
      if (value === null) throw new Error('database down');
      return value;
    };
  }
}

async function eventually(withinMs: number, check: () => boolean | Promise<boolean>): Promise<boolean> {
  const until = performance.now() + withinMs;
  for (;;) {
    if (await check()) return true;
    if (performance.now() >= until) return false;
    await sleep(1);
  }
}

type Outcome = { got?: Got; error?: unknown; tookMs: number };

/** `count` gets of `key` at once, spread over `caches`. */
async function concurrently(caches: Cache[], count: number, key: string, options: () => GetOptions): Promise<Outcome[]> {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const started = performance.now();
      try {
        const got = await caches[i % caches.length].get(key, options());
        return { got, tookMs: performance.now() - started };
      } catch (error) {
        return { error, tookMs: performance.now() - started };
      }
    }),
  );
}

describe('the lease rule', () => {
  let redis: Redis;
  const caches: Cache[] = [];
  const connections: Redis[] = [];
  // Each of these stands for a process: its own connection, its own flights.
  const cacheOf = (options: CacheOptions): Cache => {
    const connection = new Redis(redisUrl());
    connections.push(connection);
    const cache = new Cache(connection, options);
    caches.push(cache);
    return cache;
  };

  before(() => {
    redis = new Redis(redisUrl());
  });
  after(async () => {
    for (const c of caches) await c.close();
    for (const c of connections) c.disconnect();
    redis.disconnect();
  });

  test('one load after a bump, in one process and across several', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    for (const instances of [1, 4]) {
      const registry = new Registry();
      const these = Array.from({ length: instances }, () => cacheOf({ name: 'one_load', prefix, registry }));
      await bump(redis, prefix, key, instances);
      const loads = new Loads();
      const out = await concurrently(these, 200, key, () => ({ ttlMs: TTL, loader: loads.loader(100, 'v') }));
      assert.equal(loads.started, 1, `${instances} instances: one load`);
      assert.ok(out.every((o) => o.got?.value === 'v'));
      assert.equal(out.filter((o) => !o.got!.hit).length, 1);
      // Rule 8: the holder is not counted, each of the 199 others is.
      assert.equal(await metric(registry, METRIC_NAMES.misses), 200);
      assert.equal(await metric(registry, METRIC_NAMES.stampedePrevented), 199, `${instances} instances`);
      assert.equal(await metric(registry, METRIC_NAMES.fills), 1);
    }
  });

  test('eventual readers serve the previous value while one loads', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const registry = new Registry();
    const these = [cacheOf({ name: 'eventual', prefix, registry }), cacheOf({ name: 'eventual', prefix, registry })];
    await bump(redis, prefix, key, 1);
    const loads = new Loads();
    await these[0].get(key, { ttlMs: TTL, loader: loads.loader(0, 'v1') });
    await bump(redis, prefix, key, 2);
    const out = await concurrently(these, 100, key, () => ({
      ttlMs: TTL,
      loader: loads.loader(200, 'v2'),
      consistency: 'eventual',
      maxStaleMs: 30_000,
    }));
    assert.equal(loads.started, 2);
    const stale = out.filter((o) => o.got?.stale);
    assert.equal(stale.length, 99);
    assert.ok(stale.every((o) => o.got!.value === 'v1' && o.got!.hit && o.tookMs < 150));
    assert.equal(await metric(registry, METRIC_NAMES.staleServed), 99);
    assert.equal(await metric(registry, METRIC_NAMES.stampedePrevented), 99);
  });

  test('a hung holder is taken over by exactly one waiter', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const registry = new Registry();
    const leaseMs = 300;
    const options = { name: 'hung', prefix, registry, leaseMs, waitTimeoutMs: 3000 };
    const hungCache = cacheOf(options);
    const these = Array.from({ length: 4 }, () => cacheOf(options));
    await bump(redis, prefix, key, 1);
    const hung = new Loads();
    const holder = hungCache.get(key, { ttlMs: TTL, loader: hung.loader(2000, 'late') });
    assert.ok(await eventually(1000, () => hung.started === 1));
    const waiters = new Loads();
    const started = performance.now();
    const out = await concurrently(these, 40, key, () => ({ ttlMs: TTL, loader: waiters.loader(100, 'fresh') }));
    assert.equal(waiters.started, 1, 'exactly one load after the lease expired');
    assert.equal(waiters.most, 1);
    assert.ok(out.every((o) => o.got?.value === 'fresh'));
    const slowest = Math.max(...out.map((o) => o.tookMs));
    assert.ok(slowest >= leaseMs - 100 && performance.now() - started < leaseMs + 800, `waited ${slowest} ms for a ${leaseMs} ms lease`);
    assert.equal(await metric(registry, METRIC_NAMES.leaseTakeovers), 1);
    assert.equal((await holder).hit, false, "the late holder's fill is harmless");
  });

  test('followers of a hung leader in this process take over after the lease', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const registry = new Registry();
    const leaseMs = 300;
    const cache = cacheOf({ name: 'hung_here', prefix, registry, leaseMs });
    const hung = new Loads();
    const holder = cache.get(key, { ttlMs: TTL, loader: hung.loader(2000, 'late') });
    assert.ok(await eventually(1000, () => hung.started === 1));
    const waiters = new Loads();
    const started = performance.now();
    const out = await concurrently([cache], 50, key, () => ({ ttlMs: TTL, loader: waiters.loader(50, 'fresh') }));
    assert.equal(waiters.started, 1);
    assert.ok(out.every((o) => o.got?.value === 'fresh'));
    assert.ok(performance.now() - started < leaseMs + 500);
    assert.equal(await metric(registry, METRIC_NAMES.leaseTakeovers), 1);
    await holder;
  });

  test('a failing loader is retried one at a time and waits are bounded', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const waitTimeoutMs = 800;
    const options = { name: 'failing', prefix, registry: new Registry(), leaseMs: 400, waitTimeoutMs };
    const these = Array.from({ length: 4 }, () => cacheOf(options));
    const loads = new Loads();
    const out = await concurrently(these, 100, key, () => ({ ttlMs: TTL, loader: loads.loader(30, null) }));
    assert.equal(loads.most, 1, 'loads never overlap');
    assert.ok(loads.started >= 2 && loads.started <= these.length, `${loads.started} loads`);
    for (const o of out) {
      assert.ok(o.tookMs <= waitTimeoutMs + 100 + 150, `a get waited ${o.tookMs} ms`);
      const kind = (o.error as { kind?: string }).kind;
      assert.ok(kind === 'loader' || kind === 'lease_timeout', String(kind));
    }
    assert.equal(await redis.exists(leaseKey(`${key}@e0:v0`)), 0, 'no lease left');
  });

  test('a wait ends at waitTimeoutMs: strong fails, eventual serves the previous value', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const registry = new Registry();
    const waitTimeoutMs = 300;
    const waiter = cacheOf({ name: 'wait_timeout', prefix, registry, waitTimeoutMs });
    const holder = cacheOf({ name: 'holder', prefix, registry: new Registry() });
    await bump(redis, prefix, key, 1);
    const loads = new Loads();
    await holder.get(key, { ttlMs: TTL, loader: loads.loader(0, 'v1') });
    await bump(redis, prefix, key, 2);
    const abort = new AbortController();
    const hung = holder.get(key, { ttlMs: TTL, loader: loads.loader(3000, 'v2'), signal: abort.signal }).catch(() => null);
    assert.ok(await eventually(1000, () => loads.started === 2));
    await sleep(20); // the previous value is now older than the bound below

    let started = performance.now();
    await assert.rejects(waiter.get(key, { ttlMs: TTL, loader: loads.loader(0, 'never') }), (e: any) => e.kind === 'lease_timeout');
    const waited = performance.now() - started;
    assert.ok(waited >= waitTimeoutMs - 1 && waited <= waitTimeoutMs + 250, `${waited}`);

    started = performance.now();
    const got = await waiter.get(key, { ttlMs: TTL, loader: loads.loader(0, 'never'), consistency: 'eventual', maxStaleMs: 1 });
    assert.ok(performance.now() - started >= waitTimeoutMs - 1);
    assert.ok(got.stale && got.hit);
    assert.equal(got.value, 'v1');
    assert.equal(loads.started, 2, 'the waiters never loaded');
    assert.equal(await metric(registry, METRIC_NAMES.staleServed), 1);
    assert.equal(await metric(registry, METRIC_NAMES.stampedePrevented), 2);
    abort.abort();
    await hung;
  });

  test('an aborted holder releases its lease at once', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const cache = cacheOf({ name: 'abort', prefix, registry: new Registry() });
    let loading = false;
    let aborted = false;
    const abort = new AbortController();
    const get = cache.get(key, {
      ttlMs: TTL,
      signal: abort.signal,
      loader: (signal) =>
        new Promise<string>((_, fail) => {
          loading = true;
          signal.addEventListener('abort', () => {
            aborted = true;
            fail(signal.reason);
          });
        }),
    });
    const lease = leaseKey(`${key}@e0:v0`);
    assert.ok(await eventually(1000, () => loading));
    assert.equal(await redis.exists(lease), 1);
    abort.abort(new Error('the caller gave up'));
    await assert.rejects(get, /the caller gave up/);
    assert.ok(await eventually(50, async () => (await redis.exists(lease)) === 0), 'the 5 s lease is gone right after the abort');
    assert.ok(aborted, "the loader's signal aborted too");
    const started = performance.now();
    assert.equal((await cache.get(key, { ttlMs: TTL, loader: async () => 'y' })).value, 'y');
    assert.ok(performance.now() - started < 100);
  });

  test('an aborted flight leader hands over to a follower', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const cache = cacheOf({ name: 'handover', prefix, registry: new Registry() });
    const loads = new Loads();
    const abort = new AbortController();
    const leader = cache.get(key, { ttlMs: TTL, loader: loads.loader(10_000, 'never'), signal: abort.signal }).catch((e) => e);
    assert.ok(await eventually(1000, () => loads.started === 1));
    const follower = cache.get(key, { ttlMs: TTL, loader: loads.loader(0, 'second') });
    await sleep(50);
    abort.abort();
    await leader;
    const started = performance.now();
    const got = await follower;
    assert.ok(performance.now() - started < 500, 'the follower did not wait for the 5 s lease');
    assert.equal(got.value, 'second');
    assert.equal(got.hit, false);
  });

  test('a loader slower than loaderTimeoutMs fails and writes nothing', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const registry = new Registry();
    const cache = cacheOf({ name: 'loader_timeout', prefix, registry, loaderTimeoutMs: 100 });
    const started = performance.now();
    await assert.rejects(cache.get(key, { ttlMs: TTL, loader: new Loads().loader(400, 'late') }), (e: any) => e.kind === 'loader_timeout');
    assert.ok(performance.now() - started < 300);
    const dataKey = `${key}@e0:v0`;
    assert.equal(await redis.exists(leaseKey(dataKey)), 0, 'the lease is released');
    await sleep(400);
    assert.equal(await redis.exists(dataKey), 0, 'the late value is never written');
    assert.equal(await metric(registry, METRIC_NAMES.fillErrors), 1);
  });

  test('each version is loaded once while readers race its moves', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const these = Array.from({ length: 8 }, () => cacheOf({ name: 'moves', prefix, registry: new Registry() }));
    const perKey = new Map<string, number>();
    let stop = false;
    const readers = Array.from({ length: 16 }, async (_, i) => {
      while (!stop) {
        const got = await these[i % 8].get(key, { ttlMs: TTL, loader: async () => 'v', consistency: 'eventual', maxStaleMs: 10_000 });
        if (!got.hit) perKey.set(got.dataKey, (perKey.get(got.dataKey) ?? 0) + 1);
      }
    });
    for (let n = 1; n <= 100; n++) {
      await bump(redis, prefix, key, n);
      await sleep(3);
    }
    stop = true;
    await Promise.all(readers);
    const twice = [...perKey].filter(([, n]) => n > 1);
    assert.ok(perKey.size > 20, `only ${perKey.size} versions loaded`);
    assert.deepEqual(twice, [], 'loaded more than once');
  });

  test('getBuffer returns the bytes unchanged, get the UTF-8 text', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('image');
    const cache = cacheOf({ name: 'binary', prefix, registry: new Registry() });
    const bytes = Buffer.from([0xff, 0x00, 0xfe, 0x63, 0x31, 0x3a]);
    const loaded = await cache.getBuffer(key, { ttlMs: TTL, loader: async () => bytes });
    const hit = await cache.getBuffer(key, { ttlMs: TTL, loader: async () => Buffer.alloc(0) });
    assert.ok(loaded.value.equals(bytes) && !loaded.hit);
    assert.ok(hit.value.equals(bytes) && hit.hit);
    const text = await cache.get(key, { ttlMs: TTL, loader: async () => 'unused' });
    assert.equal(text.value, bytes.toString('utf8'));
  });

  test('refused options', async () => {
    const cache = cacheOf({ name: 'options', registry: new Registry() });
    const loader = async () => 'x';
    // Typed loosely on purpose: JavaScript callers can pass anything.
    const refused: [string, Record<string, unknown>, RegExp][] = [
      ['empty deps', { deps: [] }, /deps is empty/],
      ['empty dependency', { deps: [''] }, /empty dependency/],
      ['empty namespace', { namespaces: [''] }, /empty namespace/],
      ['misspelt consistency', { consistency: 'eventaul' }, /consistency "eventaul" is neither/],
      ['negative bound', { consistency: 'eventual', maxStaleMs: -1 }, /maxStaleMs -1 must be at least 0/],
      ['eventual without bound', { consistency: 'eventual' }, /needs maxStaleMs/],
      ['bound with strong', { maxStaleMs: 5 }, /for eventual consistency/],
      ['zero ttl', { ttlMs: 0 }, /ttlMs must be above zero/],
      ['reserved dependency', { deps: ['ns:x'] }, /reserved/],
    ];
    for (const [name, extra, message] of refused) {
      await assert.rejects(
        cache.get('k', { ttlMs: TTL, loader, ...extra } as unknown as GetOptions),
        (e: unknown) => e instanceof InvalidOptionsError && message.test(e.message),
        name,
      );
    }
    await assert.rejects(cache.get('', { ttlMs: TTL, loader }), InvalidOptionsError);
    assert.throws(() => new Cache(redis, { maxPollMs: 5, pollMs: 10 }), /maxPollMs 5 is below pollMs 10/);
    assert.throws(() => new Cache(redis, { loaderTimeoutMs: 0 }), InvalidOptionsError);
    const prefixed = new Redis(redisUrl(), { keyPrefix: 'app:', lazyConnect: true });
    assert.throws(() => new Cache(prefixed), /keyPrefix "app:"/);
    prefixed.disconnect();
  });
});
