// The Node reader with the real daemon: a writer changes a row in
// PostgreSQL (Debezium -> Kafka -> cdc-invalidator -> Redis) while readers
// loop; strong readers never serve a value older than the last bump, eventual
// ones (L1 with notices, stale-while-revalidate) never one older than the last
// bump plus their bound. Standalone and Cluster, like tests/integration/readers.rs.
//
// Needs the stack (scripts/stack up; CDC_* variables from scripts/stack env)
// and the daemon built (target/debug/cdc-invalidator, or CDC_INVALIDATOR_BIN).

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Cluster, Redis } from 'ioredis';
import { Pool } from 'pg';
import { Registry } from 'prom-client';

import { Cache, METRIC_NAMES } from '../src';
import { ROOT, TestCluster, metric, redisUrl, unique } from './support';

interface Read {
  startedUs: number;
  value: number;
  boundUs: number;
}

/** Reads that served a value older than the last bump before them plus their bound. */
export function violations(bumps: [number, number][], reads: Read[]): [Read, number][] {
  const out: [Read, number][] = [];
  for (const r of reads) {
    const due = bumps.filter(([, at]) => at + r.boundUs < r.startedUs).map(([n]) => n);
    if (due.length && r.value < Math.max(...due)) out.push([r, Math.max(...due)]);
  }
  return out;
}

test('the staleness check can fail', () => {
  const bumps: [number, number][] = [
    [1, 1_000_000],
    [2, 2_000_000],
  ];
  const ok = { startedUs: 2_000_100, value: 2, boundUs: 0 };
  assert.equal(violations(bumps, [ok, { ...ok, value: 1, boundUs: 500 }]).length, 0);
  assert.equal(violations(bumps, [{ ...ok, value: 1 }]).length, 1);
});

const daemonBin = () => process.env.CDC_INVALIDATOR_BIN ?? resolve(ROOT, 'target/debug/cdc-invalidator');
const pgUrl = () => process.env.CDC_PG_URL ?? 'postgres://cdc:cdc@127.0.0.1:5432/shop';
const brokers = () => process.env.CDC_KAFKA_BROKERS ?? '127.0.0.1:9092';
const topicPrefix = () => process.env.CDC_TOPIC_PREFIX ?? 'shop';

async function eventually<T>(what: string, timeoutMs: number, check: () => Promise<T | null | undefined>): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== null && v !== undefined) return v;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

for (const topology of ['standalone', 'cluster'] as const) {
  describe(`the daemon with ${topology} Redis`, () => {
    let cluster: TestCluster | undefined;
    let redis: Redis | Cluster;
    let url: string;
    let pool: Pool;
    let daemon: ChildProcess | undefined;
    let log = '';

    before(async () => {
      assert.ok(existsSync(daemonBin()), `the daemon binary ${daemonBin()} (cargo build, or set CDC_INVALIDATOR_BIN)`);
      if (topology === 'cluster') {
        cluster = await TestCluster.start();
        redis = cluster.client();
        url = `redis://127.0.0.1:${cluster.ports[0]}`;
      } else {
        url = redisUrl();
        redis = new Redis(url);
      }
      pool = new Pool({ connectionString: pgUrl(), max: 4 });
    });

    after(async () => {
      daemon?.kill('SIGKILL');
      redis.disconnect();
      await pool.end();
      cluster?.stop();
    });

    test('readers never serve a value older than the last bump plus their bound', async () => {
      const table = unique('reader_rows_node');
      await pool.query(`CREATE TABLE ${table} (id integer PRIMARY KEY, price bigint NOT NULL); INSERT INTO ${table} VALUES (1, 0)`);
      const prefix = `${unique('ver')}:`;
      const channel = unique('notices');
      const dir = mkdtempSync(join(tmpdir(), 'cdc-cache-daemon-'));
      const config = join(dir, 'config.toml');
      log = join(dir, 'daemon.log');
      // topic_regex: the daemon picks the topic up once Debezium creates it.
      writeFileSync(
        config,
        `[source]
brokers = "${brokers()}"
group_id = "${unique('group')}"
topic_regex = "${topicPrefix()}\\\\.public\\\\.${table}"
[source.librdkafka]
"topic.metadata.refresh.interval.ms" = "1000"
[redis]
url = "${url}"
cluster = ${topology === 'cluster'}
version_prefix = "${prefix}"
version_ttl = "1h"
max_retry_backoff = "500ms"
[admin]
listen = "127.0.0.1:0"
[notices]
redis_channel = "${channel}"
[[entity]]
table = "public.${table}"
namespace = "${table}"
consistency = "strong"
keys = ["${table}:{id}"]
`,
      );
      // The stack's variables override the file: this test's file must win.
      const env: NodeJS.ProcessEnv = { ...process.env, CDC_LOG: 'info' };
      for (const name of ['CDC_REDIS_URL', 'CDC_KAFKA_BROKERS', 'CDC_KAFKA_GROUP', 'CDC_ADMIN_LISTEN', 'CDC_DEAD_LETTERS_URL', 'CDC_LOOKUP_URL', 'CDC_CONNECT_URL']) {
        delete env[name];
      }
      daemon = spawn(daemonBin(), ['run', '--config', config], { env, stdio: ['ignore', 'ignore', openSync(log, 'w')] });
      const tail = () => readFileSync(log, 'utf8').split('\n').slice(-30).join('\n');

      const key = `${table}:1`;
      const version = async () => {
        const v = await redis.hget(`${prefix}${key}`, 'v');
        return v === null ? null : Number(v);
      };
      let last = await eventually('the seed row bump', 90_000, version).catch((e) => {
        throw new Error(`${e.message}\n${tail()}`);
      });

      const boundMs = 300;
      const strong = new Cache(redis, { name: 'strong', prefix, registry: new Registry() });
      const registry = new Registry();
      const eventual = new Cache(redis, { name: 'eventual', prefix, registry, l1: { channel, maxStaleMs: boundMs, maxEntries: 100 } });
      await sleep(200); // the notice subscription
      const loader = async () => {
        const r = await pool.query(`SELECT price FROM ${table} WHERE id = 1`);
        return String(r.rows[0].price);
      };
      let stop = false;
      const reads: Read[] = [];
      const readers = Array.from({ length: 8 }, async (_, i) => {
        const isEventual = i % 2 === 1;
        while (!stop) {
          const startedUs = Date.now() * 1000;
          const got = isEventual
            ? await eventual.get(key, { ttlMs: 60_000, loader, consistency: 'eventual', maxStaleMs: boundMs })
            : await strong.get(key, { ttlMs: 60_000, loader });
          reads.push({ startedUs, value: Number(got.value), boundUs: isEventual ? boundMs * 1000 : 0 });
          await sleep(2);
        }
      });

      const bumps: [number, number][] = [];
      for (let n = 1; n <= 12; n++) {
        await pool.query(`UPDATE ${table} SET price = ${n} WHERE id = 1`);
        const moved = await eventually(`the bump of price ${n}`, 30_000, async () => {
          const v = await version();
          return v !== null && v > last ? v : null;
        });
        bumps.push([n, moved]);
        last = moved;
        await sleep(50 + ((n * 37) % 150));
      }
      await sleep(boundMs * 2);
      stop = true;
      await Promise.all(readers);
      await eventual.close();

      // Date.now() has millisecond resolution: a read's start is the start of
      // its millisecond, never later than the real one, so the check asks
      // nothing of a read that began before a bump.
      const bad = violations(bumps, reads);
      assert.equal(bad.length, 0, `${bad.length} of ${reads.length} reads too old, e.g. ${JSON.stringify(bad.slice(0, 5))}; bumps ${JSON.stringify(bumps)}`);
      const newest = reads.filter((r) => r.startedUs > last + boundMs * 1000);
      assert.ok(newest.length > 0 && newest.every((r) => r.value === 12));
      assert.ok(reads.length > 200, `only ${reads.length} reads`);
      assert.ok((await metric(registry, METRIC_NAMES.l1Invalidations, { reason: 'notice' })) > 0, 'the L1 heard the notices');
      daemon.kill('SIGTERM');
    });
  });
}
