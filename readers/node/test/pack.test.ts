// The package as users get it: `npm pack`, installed into an empty project
// in a temporary directory, then one get against Redis (CDC_REDIS_URL).
// Catches anything the built code reads from outside the package (the Lua
// scripts once were).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';

import { redisUrl, unique } from './support';

// Tests run from dist/test/.
const PACKAGE = resolve(__dirname, '..', '..');

test('the packed tarball installs and serves a get', { timeout: 180_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'cdc-cache-pack-'));
  try {
    const run = (cmd: string, args: string[], cwd: string) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    // --ignore-scripts: the build already ran (npm test builds first).
    run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], PACKAGE);
    const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
    assert.ok(tarball, 'npm pack wrote a tarball');
    const listing = run('tar', ['-tzf', join(dir, tarball)], dir);
    assert.match(listing, /package\/dist\/lua\/read\.lua/);
    assert.match(listing, /package\/dist\/lua\/release\.lua/);
    assert.doesNotMatch(listing, /package\/dist\/test\//, 'tests stay out of the package');

    const project = join(dir, 'app');
    run('mkdir', ['-p', project], dir);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(dir, tarball)], project);
    const key = unique('packed');
    writeFileSync(
      join(project, 'get.js'),
      `const { Redis } = require('ioredis');
const { Cache } = require('@cdc-invalidator/cache');
(async () => {
  const redis = new Redis(${JSON.stringify(redisUrl())});
  const cache = new Cache(redis, { prefix: ${JSON.stringify(`${key}:ver:`)} });
  const first = await cache.get(${JSON.stringify(key)}, { ttlMs: 10000, loader: async () => 'from the loader' });
  const second = await cache.get(${JSON.stringify(key)}, { ttlMs: 10000, loader: async () => 'unused' });
  console.log(JSON.stringify([first, second]));
  redis.disconnect();
})().catch((e) => { console.error(e); process.exit(1); });
`,
    );
    const [first, second] = JSON.parse(run('node', ['get.js'], project));
    assert.equal(first.value, 'from the loader');
    assert.equal(first.hit, false);
    assert.equal(second.value, 'from the loader');
    assert.equal(second.hit, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
