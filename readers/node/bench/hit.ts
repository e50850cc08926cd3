// Reads per second and latency percentiles of a cache hit through
// @cdc-invalidator/cache, beside a plain GET of the same data key (the limit
// on one connection) and an L1 hit. Not a test: figures for BENCHMARKS.md.
//
//   npm run bench -- [--seconds 3] [--concurrency 32]
//
// Redis: CDC_REDIS_URL (default redis://127.0.0.1:6379). Each case runs
// `concurrency` loops on one ioredis connection for `seconds`.

import { Redis } from 'ioredis';
import { Registry } from 'prom-client';

import { Cache } from '../src';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};
const seconds = arg('--seconds', 3);
const concurrency = arg('--concurrency', 32);

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
  redis.disconnect();
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
