// The exact L1 through Redis client-side caching (readers/spec.md section
// 8.1) against a real Redis (CDC_REDIS_URL), the same cases as the Rust
// crate's tests/l1.rs; and the race rule without Redis.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Redis } from 'ioredis';
import { Registry } from 'prom-client';

import { Cache, L1, METRIC_NAMES, type GetOptions } from '../src';
import { bump, metric, redisUrl, unique } from './support';

const TTL = 60_000;
const fixed = (value: string): GetOptions => ({ ttlMs: TTL, loader: async () => value });

async function eventually(withinMs: number, check: () => boolean | Promise<boolean>): Promise<boolean> {
  const until = performance.now() + withinMs;
  for (;;) {
    if (await check()) return true;
    if (performance.now() >= until) return false;
    await sleep(1);
  }
}

test('a read begun before an invalidation of one of its records installs nothing', () => {
  const l1 = new L1({ mode: 'tracking' }, 'ver:epoch');
  const records = ['ver:epoch', 'ver:a'];
  const early = l1.begin();
  l1.put('a', 'a@e0:v1', Buffer.from('A'), records, early);
  assert.equal(l1.lookup('a', null), undefined, 'nothing is kept while tracking is down');
  l1.setUp(true);
  l1.put('a', 'a@e0:v1', Buffer.from('A'), records, early);
  assert.equal(l1.lookup('a', null), undefined, 'a read from before tracking came up installs nothing');
  l1.put('a', 'a@e0:v1', Buffer.from('A'), records, l1.begin());
  assert.equal(l1.lookup('a', null)?.value.toString(), 'A');
  assert.equal(l1.invalidateTracked(['ver:a']), 1);
  const raced = l1.begin();
  l1.invalidateTracked(['ver:a']);
  l1.put('a', 'a@e0:v1', Buffer.from('A'), records, raced);
  assert.equal(l1.lookup('a', null), undefined);
  const unrelated = l1.begin();
  l1.invalidateTracked(['ver:other']);
  l1.put('a', 'a@e0:v2', Buffer.from('A2'), records, unrelated);
  assert.equal(l1.lookup('a', null)?.value.toString(), 'A2');
  assert.equal(l1.invalidateTracked(null), 1, 'a flushed database drops everything');
  l1.put('a', 'a@e0:v2', Buffer.from('A2'), records, l1.begin());
  assert.equal(l1.setUp(false), 1);
});

test('the byte bound evicts the oldest and refuses what never fits', () => {
  const l1 = new L1({ maxBytes: 100 }, 'ver:epoch');
  const r = ['ver:k'];
  l1.put('a', 'a@e0', Buffer.alloc(50), r, l1.begin());
  l1.put('b', 'b@e0', Buffer.alloc(40), r, l1.begin());
  assert.deepEqual(l1.size, { entries: 1, bytes: 50 });
  l1.put('c', 'c@e0', Buffer.alloc(91), r, l1.begin());
  assert.deepEqual(l1.size, { entries: 1, bytes: 50 });
  assert.throws(() => new L1({ mode: 'exact' as 'tracking' }, 'ver:epoch'), /neither 'bounded' nor 'tracking'/);
});

describe('the tracking L1', () => {
  let redis: Redis;
  const connections: Redis[] = [];
  const caches: Cache[] = [];

  before(() => {
    redis = new Redis(redisUrl());
  });
  after(async () => {
    for (const c of caches) await c.close();
    for (const c of connections) c.disconnect();
    redis.disconnect();
  });

  /** A tracking cache whose L1 is up: the second get of `key` is an L1 hit. */
  async function trackingCache(name: string, prefix: string, key: string, registry: Registry): Promise<Cache> {
    const connection = new Redis(redisUrl());
    connections.push(connection);
    const cache = new Cache(connection, { name, prefix, registry, l1: { mode: 'tracking' } });
    caches.push(cache);
    const up = await eventually(3000, async () => {
      const before = await metric(registry, METRIC_NAMES.hits, { layer: 'l1' });
      await cache.get(key, fixed('v'));
      await cache.get(key, fixed('v'));
      return (await metric(registry, METRIC_NAMES.hits, { layer: 'l1' })) > before;
    });
    assert.ok(up, 'the tracking connections came up');
    return cache;
  }

  test('hits cost no round trip and a bump drops the entry at once', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const registry = new Registry();
    await bump(redis, prefix, key, 1);
    const cache = await trackingCache('tracking', prefix, key, registry);
    const hits = (layer: string) => metric(registry, METRIC_NAMES.hits, { layer });
    const [redisBefore, missesBefore, l1Before] = [await hits('redis'), await metric(registry, METRIC_NAMES.misses), await hits('l1')];
    const first = await cache.get(key, fixed('unused'));
    for (let i = 0; i < 999; i++) {
      const got = await cache.get(key, fixed('unused'));
      assert.ok(got.hit && !got.stale);
    }
    assert.equal((await hits('l1')) - l1Before, 1000, 'strong gets are served by the L1');
    assert.equal(await hits('redis'), redisBefore, 'no read reached Redis');
    assert.equal(await metric(registry, METRIC_NAMES.misses), missesBefore);

    const bumped = performance.now();
    const version = await bump(redis, prefix, key, 2);
    let fresh = await cache.get(key, fixed('v2'));
    while (fresh.dataKey === first.dataKey) {
      assert.ok(performance.now() - bumped < 200, 'still the old version after 200 ms');
      await sleep(0);
      fresh = await cache.get(key, fixed('v2'));
    }
    assert.ok(fresh.dataKey.endsWith(`:v${version}`));
    assert.equal(fresh.value, 'v2');
    assert.ok((await metric(registry, METRIC_NAMES.l1Invalidations, { reason: 'tracking' })) >= 1);
  });

  test('a change to any dependency, namespace or the epoch drops the entry', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('page');
    const cache = await trackingCache('tracking_deps', prefix, unique('warmup'), new Registry());
    const page = (value: string): GetOptions => ({ ...fixed(value), deps: ['product:1', 'category:3'], namespaces: ['product'] });
    let position = 1;
    for (const record of ['product:1', 'category:3', 'ns:product', 'epoch']) {
      const before = await cache.get(key, page('x'));
      assert.equal((await cache.get(key, page('x'))).dataKey, before.dataKey);
      if (record === 'epoch') await redis.hincrby(`${prefix}epoch`, 'e', 1);
      else await bump(redis, prefix, record, position++);
      const moved = await eventually(200, async () => (await cache.get(key, page('y'))).dataKey !== before.dataKey);
      assert.ok(moved, `the bump of ${record} reached the L1`);
    }
  });

  test('a dropped tracking connection flushes the L1 and it comes back', async () => {
    const prefix = `${unique('ver')}:`;
    const key = unique('product');
    const registry = new Registry();
    const name = unique('tracking_drop');
    const cache = await trackingCache(name, prefix, key, registry);
    const resets = await metric(registry, METRIC_NAMES.l1Invalidations, { reason: 'reset' });
    const list = String(await redis.client('LIST'));
    const id = list
      .split('\n')
      .find((l) => l.includes(`name=cdc-cache-tracking:${name} `))
      ?.split(' ')
      .find((f) => f.startsWith('id='))
      ?.slice(3);
    assert.ok(id, 'the tracking connection is named');
    await redis.client('KILL', 'ID', id);
    assert.ok(
      await eventually(100, async () => (await metric(registry, METRIC_NAMES.l1Invalidations, { reason: 'reset' })) > resets),
      'the L1 was flushed when its connection dropped',
    );
    const l1Hits = await metric(registry, METRIC_NAMES.hits, { layer: 'l1' });
    await cache.get(key, fixed('v'));
    assert.equal(await metric(registry, METRIC_NAMES.hits, { layer: 'l1' }), l1Hits, 'nothing served from a flushed L1');
    const back = await eventually(3000, async () => {
      await cache.get(key, fixed('v'));
      const before = await metric(registry, METRIC_NAMES.hits, { layer: 'l1' });
      await cache.get(key, fixed('v'));
      return (await metric(registry, METRIC_NAMES.hits, { layer: 'l1' })) > before;
    });
    assert.ok(back);
  });
});
