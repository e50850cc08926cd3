// Reads per second and latency percentiles of a cache hit through
// @cdc-invalidator/cache, beside a plain GET of the same data key (the limit
// on one connection), a bounded L1 hit and a tracking L1 hit; then the
// tracking L1's staleness window: from a bump of the version record by
// another connection to the first get serving the new version. Not a test:
// figures for BENCHMARKS.md.
//
//   npm run bench -- [--seconds 3] [--concurrency 32] [--bumps 200]
//
// Redis: CDC_REDIS_URL (default redis://127.0.0.1:6379). Each case runs
// `concurrency` loops on one ioredis connection for `seconds`.

import { setTimeout as sleep } from 'node:timers/promises';

import { Redis } from 'ioredis';
import { Registry } from 'prom-client';

import { Cache } from '../src';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};
const seconds = arg('--seconds', 3);
const concurrency = arg('--concurrency', 32);
const bumps = arg('--bumps', 200);

async function run(name: string, read: () => Promise<void>): Promise<void> {
  for (let i = 0; i < 1000; i++) await read(); // warm up
  const latencies: number[] = [];
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const t = performance.now();
        await read();
        latencies.push((performance.now() - t) * 1000);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q: number) => Math.round(latencies[Math.floor((latencies.length - 1) * q)]);
  console.log(
    `${name.padEnd(28)} ${String(Math.round(latencies.length / elapsed)).padStart(9)} reads/s   p50 ${String(at(0.5)).padStart(6)} µs   p99 ${String(at(0.99)).padStart(6)} µs   p99.9 ${String(at(0.999)).padStart(6)} µs`,
  );
}

async function main(): Promise<void> {
  const redis = new Redis(process.env.CDC_REDIS_URL ?? 'redis://127.0.0.1:6379');
  const prefix = `benchnode${process.pid}:`;
  const key = `${prefix}product:1`;
  const registry = new Registry();
  // beta 0: a hit stays a hit for the whole run.
  const cache = new Cache(redis, { prefix, beta: 0, registry });
  const value = 'x'.repeat(512);
  const filled = await cache.get(key, { ttlMs: 600_000, loader: async () => value });
  console.log(`${concurrency} concurrent readers, ${seconds} s per case, 512-byte value, data key ${filled.dataKey}`);
  const miss = async (): Promise<string> => {
    throw new Error('a miss');
  };

  await run('plain GET (ioredis)', async () => {
    if ((await redis.getBuffer(filled.dataKey)) === null) throw new Error('gone');
  });
  await run('cache.get, Redis hit', async () => {
    if (!(await cache.get(key, { ttlMs: 600_000, loader: miss })).hit) throw new Error('not a hit');
  });
  const l1 = new Cache(redis, { prefix, beta: 0, registry: new Registry(), l1: { maxStaleMs: 1000 } });
  await run('cache.get, L1 hit (1 s)', async () => {
    const got = await l1.get(key, { ttlMs: 600_000, loader: miss, consistency: 'eventual', maxStaleMs: 1000 });
    if (!got.hit) throw new Error('not a hit');
  });

  const tracking = new Cache(redis, { prefix, beta: 0, registry: new Registry(), l1: { mode: 'tracking', maxEntries: 1000 } });
  // The tracking connections come up in the background.
  for (let i = 0; i < 300; i++) {
    await tracking.get(key, { ttlMs: 600_000, loader: miss });
    await sleep(10);
  }
  await run('cache.get, tracking L1 hit', async () => {
    if (!(await tracking.get(key, { ttlMs: 600_000, loader: miss })).hit) throw new Error('not a hit');
  });

  // The staleness window: bump, then get until the new version is served.
  // An L1 hit costs no round trip but resolves without giving the event loop
  // a turn, so each try first yields (setImmediate) for the invalidation to
  // be read; the first get to read Redis starts right after it was handled.
  const writer = new Redis(process.env.CDC_REDIS_URL ?? 'redis://127.0.0.1:6379');
  const fromSent: number[] = [];
  const fromAcked: number[] = [];
  for (let n = 0; n < bumps; n++) {
    const before = (await tracking.get(key, { ttlMs: 600_000, loader: miss })).dataKey;
    const sent = performance.now();
    await writer.hincrby(`${prefix}${key}`, 'v', 1);
    const acked = performance.now();
    for (;;) {
      await new Promise((r) => setImmediate(r));
      const started = performance.now();
      const got = await tracking.get(key, { ttlMs: 600_000, loader: async () => value });
      if (got.dataKey !== before) {
        fromSent.push((started - sent) * 1000);
        fromAcked.push(Math.max(0, started - acked) * 1000);
        break;
      }
      if (performance.now() - sent > 5000) throw new Error(`bump ${n} never reached the L1`);
    }
    await sleep(5);
  }
  const at = (v: number[], q: number) => Math.round([...v].sort((a, b) => a - b)[Math.floor((v.length - 1) * q)]);
  console.log(
    `tracking L1 staleness window over ${bumps} bumps: from the bump sent p50 ${at(fromSent, 0.5)} µs p99 ${at(fromSent, 0.99)} µs max ${at(fromSent, 1)} µs; ` +
      `from its reply p50 ${at(fromAcked, 0.5)} µs p99 ${at(fromAcked, 0.99)} µs`,
  );
  await tracking.close();
  writer.disconnect();
  redis.disconnect();
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
