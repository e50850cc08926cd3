// The Node reader against real Redis, standalone and a three-node Cluster,
// with versions bumped by the daemon's own bump script (readers/spec.md
// sections 5 and 6): the same suite as the Rust crate's tests/integration/readers.rs.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Cluster, Redis } from 'ioredis';
import { Registry } from 'prom-client';

import { Cache, leaseKey, METRIC_NAMES, type Got } from '../src';
import { TestCluster, bump, metric, redisUrl, unique } from './support';

for (const topology of ['standalone', 'cluster'] as const) {
  describe(`${topology} Redis`, () => {
    let cluster: TestCluster | undefined;
    let redis: Redis | Cluster;

    before(async () => {
      if (topology === 'cluster') {
        cluster = await TestCluster.start();
        redis = cluster.client();
      } else {
        redis = new Redis(redisUrl());
      }
    });

    after(async () => {
      redis.disconnect();
      cluster?.stop();
    });

    test('200 readers of a key whose version just moved: one loader call', async () => {
      const prefix = `${unique('ver')}:`;
      const registry = new Registry();
      const cache = new Cache(redis, { name: 'stampede', prefix, registry });
      const key = `${unique('product')}:1`;
      const ttlMs = 60_000;
      const prevented = () => metric(registry, METRIC_NAMES.stampedePrevented);
      await bump(redis, prefix, key, 1);
      const first = await cache.get(key, { ttlMs, loader: async () => 'v1' });
      assert.equal(first.hit, false);
      assert.equal((await cache.get(key, { ttlMs, loader: async () => 'unused' })).hit, true);

      for (const [round, eventual] of [
        [2, false],
        [3, true],
      ] as const) {
        await bump(redis, prefix, key, round);
        const before = await prevented();
        let calls = 0;
        const loader = async () => {
          calls++;
          await sleep(300);
          return `v${round}`;
        };
        const got: Got[] = await Promise.all(
          Array.from({ length: 200 }, () =>
            cache.get(key, eventual ? { ttlMs, loader, consistency: 'eventual', maxStaleMs: 30_000 } : { ttlMs, loader }),
          ),
        );
        assert.equal(calls, 1, `eventual=${eventual}: one loader call`);
        const loaded = got.filter((g) => !g.hit);
        assert.equal(loaded.length, 1);
        assert.equal(loaded[0].value, `v${round}`);
        assert.equal((await prevented()) - before, 199, `eventual=${eventual}: the others counted as prevented`);
        if (eventual) {
          const stale = got.filter((g) => g.stale);
          assert.equal(stale.length, 199);
          assert.ok(stale.every((g) => g.value === `v${round - 1}` && g.hit && g.dataKey !== loaded[0].dataKey));
        } else {
          assert.ok(got.every((g) => g.value === `v${round}` && !g.stale && g.dataKey === loaded[0].dataKey));
        }
      }
      assert.equal(await metric(registry, METRIC_NAMES.fills), 3);
      assert.equal(await metric(registry, METRIC_NAMES.staleServed), 199);
    });

    test('a loader that crashes holding a lease delays others by at most the lease', async () => {
      const prefix = `${unique('ver')}:`;
      const registry = new Registry();
      const leaseMs = 1500;
      const cache = new Cache(redis, { name: 'crash', prefix, registry, leaseMs });
      const key = `${unique('product')}:9`;
      const version = await bump(redis, prefix, key, 1);
      // A process that took the lease and crashed leaves it behind until it
      // expires. (Within this process an aborted get releases its lease at
      // once, so the crash is the lease key itself.)
      const dataKey = `${key}@e0:v${version}`;
      await redis.set(leaseKey(dataKey), 'the-crashed-holder', 'PX', leaseMs);
      const crashedAt = performance.now();
      const got = await cache.get(key, { ttlMs: 60_000, loader: async () => 'fresh' });
      const waited = performance.now() - crashedAt;
      assert.equal(got.value, 'fresh');
      assert.equal(got.hit, false);
      assert.equal(got.dataKey, dataKey);
      assert.ok(waited >= leaseMs - 300, `waited ${waited} ms`);
      assert.ok(waited <= leaseMs + 500, `waited ${waited} ms for a ${leaseMs} ms lease`);
      assert.equal(await metric(registry, METRIC_NAMES.leaseTakeovers), 1);
      assert.equal(await redis.exists(leaseKey(got.dataKey)), 0, 'the taker released its lease after the fill');
    });

    test('a loader error releases the lease and reaches the caller', async () => {
      const prefix = `${unique('ver')}:`;
      const registry = new Registry();
      const cache = new Cache(redis, { name: 'error', prefix, registry });
      await assert.rejects(
        cache.get(`${prefix}k`, {
          ttlMs: 1000,
          loader: async () => {
            throw new Error('database down');
          },
        }),
        /loader: database down/,
      );
      const started = performance.now();
      const got = await cache.get(`${prefix}k`, { ttlMs: 1000, loader: async () => 'ok' });
      assert.equal(got.value, 'ok');
      assert.ok(performance.now() - started < 200, 'no lease was left behind');
      assert.equal(await metric(registry, METRIC_NAMES.fillErrors), 1);
    });

    test('XFetch refreshes a value close to its expiry, once', async () => {
      const prefix = `${unique('ver')}:`;
      const registry = new Registry();
      // beta 1e9: a 5 ms loader is "close to expiry" for the whole TTL (the
      // chance of no refresh is about one in a million).
      const cache = new Cache(redis, { name: 'xfetch', prefix, registry, beta: 1e9 });
      let calls = 0;
      const loader = async () => {
        calls++;
        await sleep(5);
        return `n${calls}`;
      };
      await cache.get(`${prefix}x`, { ttlMs: 5000, loader });
      const again = await cache.get(`${prefix}x`, { ttlMs: 5000, loader });
      assert.equal(again.hit, false, 'refreshed early');
      assert.equal(again.value, 'n2');
      assert.equal(await metric(registry, METRIC_NAMES.earlyRefreshes), 1);
      const off = new Cache(redis, { name: 'xfetch-off', prefix, registry, beta: 0 });
      assert.equal((await off.get(`${prefix}x`, { ttlMs: 5000, loader })).hit, true);
    });

    test('freshness sampling counts what the loader disagrees with', async () => {
      const prefix = `${unique('ver')}:`;
      const registry = new Registry();
      const cache = new Cache(redis, { name: 'fresh', prefix, registry, sampleRate: 1, beta: 0 });
      await cache.get(`${prefix}f`, { ttlMs: 60_000, loader: async () => 'old' });
      // The row changed, but no bump came (a lost invalidation): the check sees it.
      await cache.get(`${prefix}f`, { ttlMs: 60_000, loader: async () => 'new' });
      await cache.get(`${prefix}f`, { ttlMs: 60_000, loader: async () => 'old' });
      assert.equal(await metric(registry, METRIC_NAMES.freshnessChecks), 2);
      assert.equal(await metric(registry, METRIC_NAMES.freshnessMismatches), 1);
      assert.equal(await metric(registry, METRIC_NAMES.staleRatio), 0.5);
    });

    test('L1: served within its bound, dropped by a notice at once', async () => {
      const prefix = `${unique('ver')}:`;
      const channel = unique('notices');
      const registry = new Registry();
      const cache = new Cache(redis, { name: 'l1', prefix, registry, l1: { channel, maxStaleMs: 60_000 } });
      try {
        await sleep(200); // the subscription
        const opts = (value: string) => ({ ttlMs: 60_000, consistency: 'eventual' as const, maxStaleMs: 60_000, loader: async () => value });
        await cache.get(`${prefix}p`, opts('one'));
        await bump(redis, prefix, `${prefix}p`, 1);
        // No notice yet: the L1 serves its entry (within the caller's bound).
        const l1 = await cache.get(`${prefix}p`, opts('two'));
        assert.equal(l1.value, 'one');
        assert.equal(await metric(registry, METRIC_NAMES.hits, { layer: 'l1' }), 1);
        const publisher = redis instanceof Cluster ? redis : redis;
        await publisher.publish(channel, JSON.stringify({ kind: 'KEY', target: `${prefix}p`, record_key: `${prefix}${prefix}p`, version: 1, source: 't', position: '1', commit_time_us: Date.now() * 1000 - 5000 }));
        await sleep(100);
        const fresh = await cache.get(`${prefix}p`, opts('two'));
        assert.equal(fresh.value, 'two');
        assert.equal(await metric(registry, METRIC_NAMES.l1Invalidations, { reason: 'notice' }), 1);
        // A strong get never reads the L1.
        assert.equal((await cache.get(`${prefix}p`, { ttlMs: 60_000, loader: async () => 'x' })).value, 'two');
        // A tight bound re-verifies against Redis.
        await sleep(20);
        const bounded = await cache.get(`${prefix}p`, { ...opts('x'), maxStaleMs: 10 });
        assert.equal(bounded.value, 'two');
        assert.equal(await metric(registry, METRIC_NAMES.hits, { layer: 'redis' }), 2);
      } finally {
        await cache.close();
      }
    });
  });
}
