// The product-and-category page of the design, read through
// @cdc-invalidator/cache against the demo stack (`scripts/demo --keep`
// leaves the daemon running on examples/shop/config.toml). The same page as
// readers/rust/examples/product_page.rs.
//
//   npm run example -- [PRODUCT_ID] [--change]
//
// The page is cached whole under `page:product:<id>` and depends on the
// product, its category and the category's product list (and both
// namespaces): any change the daemon sees to one of them moves a version and
// the next read rebuilds the page. `--change` raises the product's price in
// PostgreSQL and reads the page until the new price shows. Addresses:
// CDC_REDIS_URL, CDC_PG_URL (scripts/stack env).

import { setTimeout as sleep } from 'node:timers/promises';

import { Redis } from 'ioredis';
import { Pool } from 'pg';

import { Cache, key } from '../src';

const redis = new Redis(process.env.CDC_REDIS_URL ?? 'redis://127.0.0.1:6379');
const pool = new Pool({ connectionString: process.env.CDC_PG_URL ?? 'postgres://cdc:cdc@127.0.0.1:5432/shop' });
const cache = new Cache(redis);
// Within the entities' max_cache_ttl (examples/shop/config.toml: 10m for products).
const ttlMs = 600_000;

async function json(sql: string, id: number): Promise<string> {
  const { rows } = await pool.query(sql, [id]);
  if (!rows.length || rows[0].j === null) throw new Error('no such row');
  return JSON.stringify(rows[0].j);
}

async function page(id: number, verbose: boolean): Promise<string> {
  const productKey = key('product:{id}', { id })!;
  const product = await cache.get(productKey, {
    namespaces: ['product'],
    ttlMs,
    // Prices as text: numeric keeps its scale (12.50).
    loader: () => json('SELECT row_to_json(p) AS j FROM (SELECT id, category_id, name, price::text AS price FROM products WHERE id = $1) p', id),
  });
  const row = JSON.parse(product.value);
  const categoryId: number = row.category_id;
  const categoryKey = key('category:{id}', { id: categoryId })!;
  const listKey = key('category:{category_id}:products', { category_id: categoryId })!;
  const built = await cache.get(`page:${productKey}`, {
    deps: [productKey, categoryKey, listKey],
    namespaces: ['product', 'category'],
    ttlMs,
    // A catalogue page may be up to a second behind a change; in exchange
    // readers never pile up on a refill.
    consistency: 'eventual',
    maxStaleMs: 1000,
    loader: async () => {
      const category = JSON.parse(await json('SELECT row_to_json(c) AS j FROM categories c WHERE id = $1', categoryId));
      const list: { id: number; name: string; price: string }[] = JSON.parse(
        await json(
          "SELECT coalesce(json_agg(json_build_object('id', id, 'name', name, 'price', price::text) ORDER BY id), '[]') AS j FROM products WHERE category_id = $1",
          categoryId,
        ),
      );
      const others = list.filter((p) => p.id !== id).map((p) => `${p.name} (${p.price})`);
      return `<h1>${row.name}</h1><p>price ${row.price}</p><p>in ${category.name}</p><p>also in this category: ${others.length ? others.join(', ') : 'nothing'}</p>`;
    },
  });
  if (verbose) {
    console.log(`${productKey}: hit=${product.hit} dataKey=${product.dataKey}`);
    console.log(`page:${productKey}: hit=${built.hit} stale=${built.stale} dataKey=${built.dataKey}`);
  }
  return built.value;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const change = args.includes('--change');
  const given = args.find((a) => !a.startsWith('--'));
  let id: number;
  if (given !== undefined) {
    id = Number(given);
  } else {
    const { rows } = await pool.query('SELECT id FROM products ORDER BY id LIMIT 1');
    if (!rows.length) throw new Error('no products: run scripts/demo --keep first');
    id = rows[0].id;
  }
  for (let i = 0; i < 2; i++) console.log(`${await page(id, true)}\n`);
  if (change) {
    const { rows } = await pool.query('UPDATE products SET price = price + 1 WHERE id = $1 RETURNING price::text AS price', [id]);
    const price: string = rows[0].price;
    const changed = performance.now();
    for (;;) {
      const html = await page(id, false);
      if (html.includes(`price ${price}<`)) {
        await page(id, true);
        console.log(`${html}\nthe new price ${price} showed ${Math.round(performance.now() - changed)} ms after the UPDATE`);
        break;
      }
      if (performance.now() - changed > 30_000) throw new Error(`price ${price} not shown after 30 s: is the daemon running (scripts/demo --keep)?`);
      await sleep(100);
    }
  }
}

main()
  .catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  })
  .finally(() => {
    redis.disconnect();
    void pool.end();
  });
