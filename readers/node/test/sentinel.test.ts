// Redis Sentinel (readers/spec.md section 14): the Node reader connected
// through a private primary, replica and three Sentinels
// (readers/testing/sentinel-topology.sh, ports from CDC_CACHE_NODE_SENTINEL_PORT,
// default 26510, up to +4) follows a failover without a new client.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';
import { inspect } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

import { Redis } from 'ioredis';
import { Registry } from 'prom-client';

import { Cache, InvalidOptionsError, SentinelSettings, sentinelRedis, type Got } from '../src';
import { ROOT, bump, unique } from './support';

const SCRIPT = resolve(ROOT, 'readers/testing/sentinel-topology.sh');
const BASE = Number(process.env.CDC_CACHE_NODE_SENTINEL_PORT ?? 26510);
/**
 * A failover is followed within this long after the Sentinels name the new primary.
 * A Sentinel demotes the old primary, killing its clients (which would move any
 * client), only about 8 s after the switch: this bound tells the two apart.
 */
const FAILOVER_BOUND_MS = 6_000;

function topology(...args: string[]): { status: number | null; out: string } {
  const run = spawnSync(SCRIPT, args, { encoding: 'utf8', timeout: 90_000, stdio: ['ignore', 'pipe', 'inherit'] });
  return { status: run.status, out: (run.stdout ?? '').trim() };
}

/**
 * Retries `get` every 100 ms until it succeeds with a result `done` accepts, or the
 * bound passes (then the last result is returned or its error thrown).
 */
async function until(get: () => Promise<Got>, done: (got: Got) => boolean): Promise<{ got: Got; tries: number }> {
  const deadline = Date.now() + FAILOVER_BOUND_MS;
  for (let tries = 0; ; tries++) {
    try {
      const got = await get();
      if (done(got) || Date.now() > deadline) return { got, tries };
    } catch (error) {
      if (Date.now() > deadline) throw error;
    }
    await sleep(100);
  }
}

test('settings print without their passwords and refuse a bad address', () => {
  const s = new SentinelSettings({ masterName: 'm', addresses: ['h:1'], password: 'data-secret', sentinelPassword: 'sentinel-secret' });
  for (const text of [String(s), JSON.stringify(s), inspect(s), `${s}`]) {
    assert.ok(!text.includes('secret'), text);
  }
  assert.match(JSON.stringify(s), /<redacted>/);
  assert.throws(() => new SentinelSettings({ masterName: 'm', addresses: ['h'] }), InvalidOptionsError);
  assert.throws(() => new SentinelSettings({ masterName: '', addresses: ['h:1'] }), InvalidOptionsError);
});

test('through Sentinel: a read and a fill succeed on the new primary after a failover', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cdc-cache-sentinel-'));
  after(() => void topology('stop', String(BASE), dir));
  const started = topology('start', String(BASE), dir);
  if (started.status === 3) {
    t.skip('redis-sentinel is not installed: the Sentinel failover test needs it');
    return;
  }
  assert.equal(started.status, 0, 'sentinel-topology.sh start');

  const redis = sentinelRedis({ masterName: 'cdc-readers', addresses: started.out.split(',') });
  const replica = new Redis({ host: '127.0.0.1', port: BASE + 1 });
  after(() => {
    redis.disconnect();
    replica.disconnect();
  });
  const prefix = `${unique('ver')}:`;
  const cache = new Cache(redis, { name: 'sentinel', prefix, registry: new Registry() });
  // With the tracking L1, whose connections must follow the primary too.
  const tracked = new Cache(redis, { name: 'sentinel-tracked', prefix, registry: new Registry(), l1: { mode: 'tracking' } });
  after(() => tracked.close());
  const key = `${unique('product')}:1`;
  const ttlMs = 60_000;

  // A version the replica acknowledged (WAIT 1, on the same connection) before the failover.
  const v1 = await bump(redis, prefix, key, 1);
  assert.ok(Number(await redis.call('WAIT', 1, 5000)) >= 1, 'WAIT 1');
  const before = await cache.get(key, { ttlMs, loader: async () => 'before' });
  assert.equal(before.hit, false);
  assert.ok(before.dataKey.endsWith(`:v${v1}`), before.dataKey);
  for (let i = 0; i < 2; i++) {
    assert.equal((await tracked.get(key, { ttlMs, loader: async () => 'unused' })).dataKey, before.dataKey);
  }
  const replicated = Date.now() + 5000;
  while (!((await replica.get(before.dataKey)) ?? '').endsWith(':before')) {
    assert.ok(Date.now() < replicated, 'the replica never received the fill');
    await sleep(20);
  }

  const failover = topology('failover', String(BASE));
  assert.equal(failover.status, 0, 'sentinel-topology.sh failover');
  assert.equal(failover.out, String(BASE + 1), 'the replica was promoted');

  // The version written before the failover, read from the new primary.
  const read = await until(() => cache.get(key, { ttlMs, loader: async () => 'unused' }), () => true);
  t.diagnostic(`first get after the failover: ${read.tries} failed attempts`);
  assert.equal(read.got.hit, true);
  assert.equal(read.got.dataKey, before.dataKey);
  assert.equal(read.got.value, 'before');

  // A bump written straight to the new primary: a cache still reading the old one
  // (not yet demoted) does not see it. Then the lease and the fill there.
  const primary = new Redis({ host: '127.0.0.1', port: BASE + 1 });
  after(() => primary.disconnect());
  const v2 = await bump(primary, prefix, key, 2);
  const fill = await until(
    () => cache.get(key, { ttlMs, loader: async () => 'after' }),
    (got) => got.dataKey.endsWith(`:v${v2}`),
  );
  t.diagnostic(`fill after the failover: ${fill.tries} attempts before`);
  assert.equal(fill.got.hit, false);
  assert.equal(fill.got.value, 'after');
  assert.ok(fill.got.dataKey.endsWith(`:v${v2}`), fill.got.dataKey);
  assert.ok(((await primary.get(fill.got.dataKey)) ?? '').endsWith(':after'), 'the new primary holds the fill');
  assert.equal(await primary.exists(`${fill.got.dataKey}:lease`), 0, 'no lease left behind');
  // The tracking L1 let go of the old primary's entry.
  const seen = await until(
    () => tracked.get(key, { ttlMs, loader: async () => 'unused' }),
    (got) => got.dataKey === fill.got.dataKey,
  );
  t.diagnostic(`tracking L1 after the failover: ${seen.tries} attempts before`);
  assert.equal(seen.got.dataKey, fill.got.dataKey);
  assert.equal(seen.got.value, 'after');
  await cache.close();
});
