// The helpers that name invalidations in the application's transaction
// (src/emit.ts): the content they render, what they refuse, and, against
// the stack's PostgreSQL (CDC_PG_URL), that a committed transaction carries
// exactly one transactional message with that content and a rolled-back one
// none, read back through a temporary test_decoding slot.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';

import { Pool } from 'pg';

import { key } from '../src';
import { InvalidationError, emitInvalidation, invalidationContent, outboxInsert } from '../src/emit';

test('the content is version 1 JSON with only what is named', () => {
  assert.equal(invalidationContent({ keys: ['product:42'] }), '{"v":1,"keys":["product:42"]}');
  const content = invalidationContent({
    keys: ['category:3:count', key('pair:{a}:{b}', { a: '1', b: '2:3' })!],
    namespaces: ['category'],
    rows: [{ entity: 'public.products', row: { id: 9007199254740993n, price: '12.50' } }],
  });
  assert.equal(
    content,
    '{"v":1,"keys":["category:3:count","pair:1:2%3A3"],"namespaces":["category"],"rows":[{"entity":"public.products","row":{"id":9007199254740993,"price":"12.50"}}]}',
  );
});

test('what the daemon would refuse is refused before the commit', () => {
  for (const bad of [
    {},
    { keys: [''] },
    { keys: ['epoch'] },
    { keys: ['ns:product'] },
    { keys: ['product:{id}'] },
    { keys: ['a\nb'] },
    { keys: ['100%'] },
    { namespaces: [''] },
    { rows: [{ entity: '', row: {} }] },
    { keys: [42 as unknown as string] },
  ]) {
    assert.throws(() => invalidationContent(bad), InvalidationError, JSON.stringify(bad));
  }
});

test('the outbox insert names a plain table and binds the content', () => {
  assert.deepEqual(outboxInsert('shop.cache_outbox', { keys: ['a:1'] }, '?'), {
    text: 'INSERT INTO shop.cache_outbox (content) VALUES (?)',
    values: ['{"v":1,"keys":["a:1"]}'],
  });
  assert.equal(outboxInsert('cache_outbox', { keys: ['a:1'] }).text, 'INSERT INTO cache_outbox (content) VALUES ($1)');
  for (const bad of ['', 'a.b.c', 'x; DROP TABLE y', '"q"']) {
    assert.throws(() => outboxInsert(bad, { keys: ['a:1'] }), InvalidationError, bad);
  }
});

test('a committed transaction carries the message, a rolled-back one nothing', async () => {
  const pool = new Pool({ connectionString: process.env.CDC_PG_URL ?? 'postgres://cdc:cdc@127.0.0.1:5432/shop', max: 2 });
  const slot = `emit_test_${randomBytes(6).toString('hex')}`;
  const prefix = `emit-test-${randomBytes(6).toString('hex')}`;
  const reader = await pool.connect();
  try {
    // Temporary: dropped with this session, whatever happens.
    await reader.query("SELECT pg_create_logical_replication_slot($1, 'test_decoding', true)", [slot]);
    for (const [end, named] of [
      ['ROLLBACK', 'rolled:back'],
      ['COMMIT', 'committed:1'],
    ] as const) {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        await emitInvalidation(client, { keys: [named], namespaces: ['product'] }, { prefix });
        await client.query(end);
      } finally {
        client.release();
      }
    }
    const { rows } = await reader.query<{ data: string }>(
      "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL) WHERE data LIKE 'message:%'",
      [slot],
    );
    const mine = rows.map((r) => r.data).filter((d) => d.includes(`prefix: ${prefix},`));
    const content = '{"v":1,"keys":["committed:1"],"namespaces":["product"]}';
    assert.deepEqual(mine, [`message: transactional: 1 prefix: ${prefix}, sz: ${content.length} content:${content}`]);
  } finally {
    reader.release(true);
    await pool.end();
  }
});
