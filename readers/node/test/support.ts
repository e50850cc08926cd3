// Helpers for the tests against real Redis: the stack's standalone server
// (CDC_REDIS_URL), a three-node Cluster started here (like tests/common/
// cluster.rs does for the Rust tests), bumps through the daemon's own bump
// script (src/sink/bump.lua), and metric values from a registry.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { Cluster, Redis } from 'ioredis';
import type { Registry } from 'prom-client';

export const ROOT = resolve(__dirname, '..', '..', '..', '..');
const BUMP_LUA = readFileSync(resolve(ROOT, 'src/sink/bump.lua'), 'utf8');

export const redisUrl = () => process.env.CDC_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const unique = (prefix: string) => `${prefix}_${randomBytes(6).toString('hex')}`;

/** One bump of `key` through the daemon's bump script; returns the new version. */
export async function bump(redis: Redis | Cluster, prefix: string, key: string, position: number): Promise<string> {
  // KEYS: the records; ARGV: version_ttl ms, then guard field and position per record.
  // The reply: per record the new version (a string) when applied, 0 when not.
  const reply = (await redis.eval(BUMP_LUA, 1, `${prefix}${key}`, 600_000, 'p:test', String(position).padStart(20, '0'))) as (string | number)[];
  if (typeof reply[0] !== 'string') throw new Error(`bump of ${key} at ${position} not applied`);
  return reply[0];
}

export async function metric(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (!m) return 0;
  const { values } = await m.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want))
    .filter((v) => !('metricName' in v) || v.metricName === name || v.metricName === undefined)
    .reduce((sum, v) => sum + v.value, 0);
}

/** A free port whose cluster bus port (+10000) is valid too. */
async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((ok, fail) => {
      const s = createServer();
      s.once('error', fail);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => ok(p));
      });
    });
    if (port + 10000 <= 65535) return port;
  }
}

export class TestCluster {
  private constructor(
    private readonly nodes: ChildProcess[],
    readonly ports: number[],
    private readonly dir: string,
  ) {}

  static async start(): Promise<TestCluster> {
    const dir = mkdtempSync(join(tmpdir(), 'cdc-cache-cluster-'));
    const ports: number[] = [];
    while (ports.length < 3) {
      const p = await freePort();
      if (!ports.includes(p)) ports.push(p);
    }
    const nodes = ports.map((port) =>
      spawn(
        'redis-server',
        ['--bind', '127.0.0.1', '--port', String(port), '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--save', '', '--appendonly', 'no'],
        { cwd: dir, stdio: 'ignore' },
      ),
    );
    const cluster = new TestCluster(nodes, ports, dir);
    for (const port of ports) await cluster.waitFor(port, ['PING'], 'PONG');
    const created = spawnSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], {
      stdio: 'ignore',
    });
    if (created.status !== 0) throw new Error('redis-cli --cluster create failed');
    for (const port of ports) await cluster.waitFor(port, ['CLUSTER', 'INFO'], 'cluster_state:ok');
    return cluster;
  }

  private async waitFor(port: number, args: string[], expect: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      const out = spawnSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' });
      if ((out.stdout ?? '').includes(expect)) return;
      await sleep(100);
    }
    throw new Error(`redis node ${port}: ${args.join(' ')} never answered ${expect}`);
  }

  client(): Cluster {
    return new Cluster([{ host: '127.0.0.1', port: this.ports[0] }]);
  }

  stop(): void {
    for (const n of this.nodes) n.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}
