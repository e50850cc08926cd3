//! The product-and-category page of the design, read through cdc-cache
//! against the demo stack (`scripts/demo --keep` leaves the daemon running
//! on examples/shop/config.toml).
//!
//!     cargo run -p cdc-cache --example product-page -- [PRODUCT_ID] [--change]
//!
//! The page is cached whole under `page:product:<id>` and depends on the
//! product, its category and the category's product list (and both
//! namespaces): any change the daemon sees to one of them moves a version and
//! the next read rebuilds the page. `--change` raises the product's price in
//! PostgreSQL and reads the page until the new price shows, printing how long
//! that took. Addresses: CDC_REDIS_URL, CDC_PG_URL (scripts/stack env).

// An example against the demo stack: a panic on a broken setup is the
// example failing loudly. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use cdc_cache::{key, Cache, CacheOptions, GetOptions};
use sqlx::PgPool;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One JSON value from the database, as the loader's bytes.
async fn json(pool: &PgPool, sql: &'static str, id: i32) -> Result<Vec<u8>> {
    let value: Option<serde_json::Value> = sqlx::query_scalar(sql).bind(id).fetch_one(pool).await?;
    Ok(serde_json::to_vec(&value.ok_or("no such row")?)?)
}

async fn page(cache: &Cache, pool: &PgPool, id: i32, verbose: bool) -> Result<String> {
    // Within the entities' max_cache_ttl (examples/shop/config.toml: 10m for products).
    let ttl = Duration::from_secs(600);
    let product_key = key("product:{id}", &[("id", id.into())])?.ok_or("null id")?;
    let product = cache
        .get(
            &product_key,
            GetOptions::new(ttl, || {
                json(
                    pool,
                    // Prices as text: numeric keeps its scale (12.50).
                    "SELECT row_to_json(p) FROM (SELECT id, category_id, name, price::text AS price \
                     FROM products WHERE id = $1) p",
                    id,
                )
            })
            .namespaces(["product"]),
        )
        .await?;
    let row: serde_json::Value = serde_json::from_slice(&product.value)?;
    let category_id = i32::try_from(row["category_id"].as_i64().ok_or("product without category")?)?;
    let category_key = key("category:{id}", &[("id", category_id.into())])?.ok_or("null id")?;
    let list_key = key(
        "category:{category_id}:products",
        &[("category_id", category_id.into())],
    )?
    .ok_or("null id")?;

    let built = cache
        .get(
            &format!("page:{product_key}"),
            GetOptions::new(ttl, || async {
                let category = json(pool, "SELECT row_to_json(c) FROM categories c WHERE id = $1", category_id).await?;
                let list = json(
                    pool,
                    "SELECT coalesce(json_agg(json_build_object('id', id, 'name', name, 'price', price::text) ORDER BY id), '[]') \
                     FROM products WHERE category_id = $1",
                    category_id,
                )
                .await?;
                let category: serde_json::Value = serde_json::from_slice(&category)?;
                let list: Vec<serde_json::Value> = serde_json::from_slice(&list)?;
                let others: Vec<String> = list
                    .iter()
                    .filter(|p| p["id"].as_i64() != Some(i64::from(id)))
                    .map(|p| format!("{} ({})", p["name"].as_str().unwrap_or("?"), p["price"].as_str().unwrap_or("?")))
                    .collect();
                let html = format!(
                    "<h1>{}</h1><p>price {}</p><p>in {}</p><p>also in this category: {}</p>",
                    row["name"].as_str().unwrap_or("?"),
                    row["price"].as_str().unwrap_or("?"),
                    category["name"].as_str().unwrap_or("?"),
                    if others.is_empty() { "nothing".to_owned() } else { others.join(", ") }
                );
                Result::Ok(html.into_bytes())
            })
            .deps([product_key.clone(), category_key, list_key])
            .namespaces(["product", "category"])
            // A catalogue page may be up to a second behind a change; in
            // exchange readers never pile up on a refill.
            .eventual(Duration::from_secs(1)),
        )
        .await?;
    if verbose {
        println!("{product_key}: hit={} data_key={}", product.hit, product.data_key);
        println!(
            "page:{product_key}: hit={} stale={} data_key={}",
            built.hit, built.stale, built.data_key
        );
    }
    Ok(String::from_utf8(built.value)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let change = args.iter().any(|a| a == "--change");
    let redis_url = std::env::var("CDC_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pg_url = std::env::var("CDC_PG_URL").unwrap_or_else(|_| "postgres://cdc:cdc@127.0.0.1:5432/shop".into());
    let pool = PgPool::connect(&pg_url).await?;
    let id: i32 = match args.iter().find(|a| !a.starts_with("--")) {
        Some(id) => id.parse()?,
        None => sqlx::query_scalar("SELECT id FROM products ORDER BY id LIMIT 1")
            .fetch_optional(&pool)
            .await?
            .ok_or("no products: run scripts/demo --keep first")?,
    };
    let cache = Cache::connect(&redis_url, CacheOptions::default()).await?;

    for _ in 0..2 {
        println!("{}\n", page(&cache, &pool, id, true).await?);
    }
    if change {
        let price: String =
            sqlx::query_scalar("UPDATE products SET price = price + 1 WHERE id = $1 RETURNING price::text")
                .bind(id)
                .fetch_one(&pool)
                .await?;
        let changed = Instant::now();
        loop {
            let html = page(&cache, &pool, id, false).await?;
            if html.contains(&format!("price {price}<")) {
                page(&cache, &pool, id, true).await?;
                println!(
                    "{html}\nthe new price {price} showed {} ms after the UPDATE",
                    changed.elapsed().as_millis()
                );
                break;
            }
            if changed.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "price {price} not shown after 30 s: is the daemon running (scripts/demo --keep)?"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
