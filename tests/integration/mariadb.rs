//! End to end through MariaDB, Debezium's MariaDB connector, Kafka, the
//! daemon and Redis (`scripts/stack up --with mariadb`), and fan-out lookups
//! and `check` against MariaDB through sqlx's MySQL driver.
//!
//! Gated on the MariaDB being up: without CDC_MARIADB_URL (exported by
//! `scripts/stack env` while MariaDB runs) each test says so and returns,
//! unless CDC_REQUIRE_MARIADB=1 (scripts/test sets it), which makes the
//! missing server a failure.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cdc_invalidator::graph::{Fanout, Template};
use cdc_invalidator::lookup::{LookupError, Lookups};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::common::chain::{
    expect_bumps_after, expected_positions, guard_positions, items_entity, kill_9_mid_stream, replay_changes_nothing,
    restart_until_caught_up, set, wait_for_seed, wait_for_topics, write_chain_config,
};
use crate::common::Daemon;

/// The guard source of the stack's connector (topic.prefix `mariadb`, GTID domain 0).
const SOURCE: &str = "mariadb-gtid:mariadb:0";

fn mariadb_url() -> Option<String> {
    match std::env::var("CDC_MARIADB_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CDC_REQUIRE_MARIADB").as_deref() == Ok("1") => {
            panic!("CDC_REQUIRE_MARIADB=1 but CDC_MARIADB_URL is not set (scripts/stack up --with mariadb, then eval \"$(scripts/stack env)\")")
        }
        Err(_) => {
            eprintln!("skipped: MariaDB is not up (scripts/stack up --with mariadb exports CDC_MARIADB_URL)");
            None
        }
    }
}

async fn mariadb(url: &str) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .expect("MariaDB from scripts/stack up --with mariadb is reachable (CDC_MARIADB_URL)")
}

/// Runs the statements in order on one connection (so `BEGIN` ... `COMMIT`
/// is one transaction).
async fn sql(pool: &sqlx::MySqlPool, statements: &[&str]) {
    let mut conn = pool.acquire().await.unwrap();
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

fn topic(table: &str) -> String {
    let prefix = std::env::var("CDC_MARIADB_TOPIC_PREFIX").unwrap_or_else(|_| "mariadb".into());
    format!("{prefix}.shop.{table}")
}

/// Runs the statements and asserts that exactly the expected keys moved.
async fn expect_bumps(pool: &sqlx::MySqlPool, prefix: &str, statements: &[&str], expected: BTreeSet<String>) {
    expect_bumps_after(prefix, &format!("{statements:?}"), sql(pool, statements), expected).await;
}

#[tokio::test]
async fn mariadb_ops_foreign_key_move_fanout_and_truncate_bump_exactly_the_dependent_keys() {
    let Some(url) = mariadb_url() else { return };
    let pool = mariadb(&url).await;
    let categories = common::unique("mcat");
    let products = common::unique("mprod");
    sql(
        &pool,
        &[
            &format!("CREATE TABLE {categories} (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL)"),
            &format!(
                "CREATE TABLE {products} (id INT PRIMARY KEY, category_id INT NOT NULL, sku VARCHAR(32) NOT NULL, price DECIMAL(10,2) NOT NULL)"
            ),
            &format!("INSERT INTO {categories} VALUES (1, 'tools'), (2, 'toys')"),
            &format!("INSERT INTO {products} VALUES (1, 1, 'A', 9.99)"),
        ],
    )
    .await;
    let topics = vec![topic(&categories), topic(&products)];
    wait_for_topics(&topics).await;
    let prefix = format!("{}:", common::unique("ver"));
    let entities = format!(
        r#"
[lookup]
url = "{url}"
timeout = "2s"
attempts = 2
[[entity]]
table = "shop.{categories}"
namespace = "category"
consistency = "eventual"
replica_identity = "full"
keys = ["category:{{id}}", "category-name:{{name}}"]
  [[entity.fanout]]
  query = "SELECT id, price FROM {products} WHERE category_id = ?"
  bind = ["id"]
  keys = ["product:{{id}}:price:{{price}}"]
  max_rows = 1
  namespace = "product"
[[entity]]
table = "shop.{products}"
namespace = "product"
consistency = "strong"
max_cache_ttl = "10m"
replica_identity = "full"
keys = ["product:{{id}}", "product-sku:{{sku}}", "category:{{category_id}}:products", "product:{{id}}:price:{{price}}"]
"#
    );
    let config = write_chain_config(&topics, &entities, &prefix, &common::unique("group"));

    // check: binlog settings and the tables, against the real server.
    let out = common::cli()
        .args(["check", "--config", config.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok    binlog_format = ROW"), "{text}");
    assert!(
        text.contains(&format!("ok    table shop.{products}: binlog_row_image = FULL")),
        "{text}"
    );
    assert!(text.contains("ok    gtid_strict_mode = ON"), "{text}");
    assert!(text.contains("prepares"), "{text}");

    let daemon = Daemon::start(config.path());
    daemon.wait_ready().await;
    wait_for_seed(
        &prefix,
        set(&[
            "category:1",
            "category-name:tools",
            "category:2",
            "category-name:toys",
            "product:1",
            "product-sku:A",
            "category:1:products",
            "product:1:price:9.99",
        ]),
    )
    .await;

    // Each change, with exactly the keys it must move. Product 2's insert
    // and its delete move the same keys.
    let product_2 = [
        "product:2",
        "product-sku:B",
        "category:2:products",
        "product:2:price:5.00",
    ];
    let steps: [(Vec<String>, &[&str]); 8] = [
        (
            vec![format!("INSERT INTO {products} VALUES (2, 2, 'B', 5.00)")],
            &product_2,
        ),
        // A foreign-key move invalidates the list it leaves and the one it joins
        // (binlog_row_image=FULL: the old row is whole).
        (
            vec![format!("UPDATE {products} SET category_id = 2 WHERE id = 1")],
            &[
                "product:1",
                "product-sku:A",
                "category:1:products",
                "category:2:products",
                "product:1:price:9.99",
            ],
        ),
        // A rename of category 1 (now empty) and of category 2: the fan-out finds
        // category 2's two products through MariaDB, over max_rows = 1, so it
        // escalates to the product namespace.
        (
            vec![format!("UPDATE {categories} SET name = 'hand tools' WHERE id = 1")],
            &["category:1", "category-name:tools", "category-name:hand tools"],
        ),
        (
            vec![format!("UPDATE {categories} SET name = 'games' WHERE id = 2")],
            &["category:2", "category-name:toys", "category-name:games", "ns:product"],
        ),
        (vec![format!("DELETE FROM {products} WHERE id = 2")], &product_2),
        // The fan-out within max_rows: exact product keys, rendered from the
        // lookup row as they are from the product's own events (DECIMAL as text).
        (
            vec![format!("UPDATE {categories} SET name = 'board games' WHERE id = 2")],
            &[
                "category:2",
                "category-name:games",
                "category-name:board games",
                "product:1:price:9.99",
            ],
        ),
        // One transaction of several rows over both tables.
        (
            vec![
                "BEGIN".into(),
                format!("INSERT INTO {products} VALUES (3, 1, 'C', 1.50)"),
                format!("UPDATE {products} SET sku = 'AA' WHERE id = 1"),
                "COMMIT".into(),
            ],
            &[
                "product:3",
                "product-sku:C",
                "category:1:products",
                "product:3:price:1.50",
                "product:1",
                "product-sku:A",
                "product-sku:AA",
                "category:2:products",
                "product:1:price:9.99",
            ],
        ),
        (vec![format!("TRUNCATE TABLE {products}")], &["ns:product"]),
    ];
    for (statements, expected) in steps {
        let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
        expect_bumps(&pool, &prefix, &statements, set(expected)).await;
    }

    let metrics = daemon.metrics().await;
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_events_total", &["op=\"t\""]) >= 1.0,
        "{metrics}"
    );
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_escalations_total", &[]) >= 1.0,
        "{metrics}"
    );
    // Every guard is under the GTID source.
    let mut conn = common::redis_conn().await;
    let guard: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}product-sku:AA"))
        .arg(format!("p:{SOURCE}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(guard.map(|g| g.len()), Some(60), "a 60-digit GTID position");
    drop(daemon);
    sql(&pool, &[&format!("DROP TABLE {products}, {categories}")]).await;
}

#[tokio::test]
async fn mariadb_kill_9_with_rotations_and_concurrent_writers_loses_nothing_and_replay_changes_nothing() {
    let Some(url) = mariadb_url() else { return };
    const ROWS: usize = 2000;
    const TRANSACTIONS: usize = 40;
    let pool = mariadb(&url).await;
    let items = common::unique("mitem");
    sql(
        &pool,
        &[
            &format!("CREATE TABLE {items} (id INT PRIMARY KEY, grp INT NOT NULL)"),
            &format!("INSERT INTO {items} VALUES (0, 0)"),
        ],
    )
    .await;
    let topics = vec![topic(&items)];
    wait_for_topics(&topics).await;
    let entities = items_entity(&format!("shop.{items}"));
    let prefix = format!("{}:", common::unique("ver"));
    let config = write_chain_config(&topics, &entities, &prefix, &common::unique("group"));
    let mut daemon = Daemon::start(config.path());
    daemon.wait_ready().await;

    // Two writers: one inserts batches, the other moves rows between groups
    // in interleaved transactions; the binlog rotates every ten batches.
    let per_tx = ROWS / TRANSACTIONS;
    let inserter = {
        let pool = pool.clone();
        let items = items.clone();
        tokio::spawn(async move {
            for tx in 0..TRANSACTIONS {
                let first = tx * per_tx + 1;
                let last = first + per_tx - 1;
                sql(
                    &pool,
                    &[&format!(
                        "INSERT INTO {items} SELECT seq, seq % 50 FROM seq_{first}_to_{last}"
                    )],
                )
                .await;
                if tx % 10 == 5 {
                    sql(&pool, &["FLUSH BINARY LOGS"]).await;
                }
                // Spread over seconds, so the kill lands mid-stream however
                // fast the daemon applies.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let mover = {
        let pool = pool.clone();
        let items = items.clone();
        tokio::spawn(async move {
            // READ COMMITTED: no gap locks, so the mover never blocks or
            // deadlocks the inserter's rows beyond its range.
            for round in 0..TRANSACTIONS {
                sql(
                    &pool,
                    &[
                        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                        "BEGIN",
                        &format!(
                            "UPDATE {items} SET grp = 50 + {round} WHERE id BETWEEN 1 AND {} AND id % 7 = {}",
                            round * per_tx,
                            round % 7
                        ),
                        &format!("UPDATE {items} SET grp = 100 + {round} WHERE id = 0"),
                        "COMMIT",
                    ],
                )
                .await;
            }
        })
    };
    kill_9_mid_stream(&mut daemon, &prefix).await;
    let at_kill = guard_positions(&prefix, SOURCE).await;
    inserter.await.unwrap();
    mover.await.unwrap();
    assert!(
        at_kill.len() < ROWS,
        "killed too late to prove anything ({} keys applied)",
        at_kill.len()
    );

    // The records on the topic: the inserts plus every row the mover changed.
    let end = {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", common::kafka_brokers())
            .create()
            .unwrap();
        let records_now = || -> usize {
            (0..3)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topics[0], p, Duration::from_secs(5))
                        .map(|(_, hi)| usize::try_from(hi).unwrap())
                        .unwrap_or(0)
                })
                .sum()
        };
        // Debezium may still be writing: wait until the count holds still.
        let mut last = records_now();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                Instant::now() < deadline,
                "the topic kept growing or stayed at {last} records for 120 s"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = records_now();
            if now == last && now > ROWS {
                break now;
            }
            last = now;
        }
    };
    let expected = expected_positions(&topics[0], config.path(), end, Some(SOURCE)).await;
    let (mut daemon, final_state) = restart_until_caught_up(config.path(), &prefix, SOURCE, &expected, &at_kill).await;
    for (key, p) in &expected {
        assert_eq!(&final_state[key].1, p, "{key}: the guard is the last change's position");
    }
    assert_eq!(
        daemon.terminate().code(),
        Some(0),
        "SIGTERM exits 0\n{}",
        daemon.log_tail()
    );

    // Replay from offset 0 (a new group): every bump is a guard no-op.
    replay_changes_nothing(&topics, &entities, &prefix, end).await;
    sql(&pool, &[&format!("DROP TABLE {items}")]).await;
}

#[tokio::test]
async fn mysql_lookups_are_exact_bounded_and_escalate() {
    let Some(url) = mariadb_url() else { return };
    let pool = mariadb(&url).await;
    let t = common::unique("mlook");
    sql(
        &pool,
        &[
            &format!(
                "CREATE TABLE {t} (id BIGINT UNSIGNED PRIMARY KEY, category_id INT NOT NULL, price DECIMAL(10,2), name VARCHAR(32), born DATE, ratio DOUBLE, score FLOAT, seen DATETIME)"
            ),
            &format!(
                "INSERT INTO {t} VALUES (18446744073709551615, 1, 19.90, 'caf\u{e9}: x', '2024-05-01', 0.1, 0.1, '2024-05-01 10:00:00'), (2, 1, NULL, NULL, NULL, NULL, NULL, NULL), (3, 2, 1.00, 'c', NULL, NULL, NULL, NULL)"
            ),
        ],
    )
    .await;
    let fanout = |query: &str, max_rows: usize| Fanout {
        query: query.into(),
        bind: vec!["id".into()],
        keys: vec![Template::parse("product:{id}").unwrap()],
        max_rows,
        namespace: Some("product".into()),
    };
    let lookups = Lookups::connect_lazy(&url, Duration::from_secs(2), 2).unwrap();
    let rows = lookups
        .run(
            &fanout(
                &format!("SELECT id, price, name, born, ratio, score FROM {t} WHERE category_id = ? ORDER BY id"),
                2,
            ),
            &[json!(1)],
        )
        .await
        .unwrap();
    let as_json: Vec<Value> = rows.into_iter().map(Value::Object).collect();
    assert_eq!(
        as_json,
        vec![
            json!({"id": 2, "price": null, "name": null, "born": null, "ratio": null, "score": null}),
            // Debezium's forms: DECIMAL as text (string mode), DATE as days
            // since the epoch, a FLOAT as its f32's shortest digits.
            json!({"id": 18446744073709551615u64, "price": "19.90", "name": "caf\u{e9}: x", "born": 19844, "ratio": 0.1, "score": 0.1}),
        ]
    );
    // Over max_rows: one more row than allowed is fetched, then refused.
    let over = lookups
        .run(
            &fanout(&format!("SELECT id FROM {t} WHERE category_id = ?"), 1),
            &[json!(1)],
        )
        .await;
    assert_eq!(over, Err(LookupError::OverLimit { max_rows: 1 }));
    // A query that keeps failing: every attempt is made, then it escalates.
    let failing = lookups
        .run(
            &fanout(&format!("SELECT id FROM {t}_missing WHERE category_id = ?"), 10),
            &[json!(1)],
        )
        .await;
    assert!(
        matches!(failing, Err(LookupError::Failed { attempts: 2, .. })),
        "{failing:?}"
    );
    // A DATETIME has no canonical form here: refused at once, not retried.
    let unsupported = lookups
        .run(
            &fanout(&format!("SELECT id, seen FROM {t} WHERE category_id = ?"), 10),
            &[json!(1)],
        )
        .await;
    match unsupported {
        Err(LookupError::Failed { attempts: 1, detail }) => assert!(detail.contains("DATETIME"), "{detail}"),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    sql(&pool, &[&format!("DROP TABLE {t}")]).await;
}

/// The demo config for the shop in MySQL dialect checks out against the
/// stack's MariaDB: binlog settings, tables, columns and the fan-out query.
#[tokio::test]
async fn the_mariadb_example_config_checks_against_the_stack() {
    let Some(url) = mariadb_url() else { return };
    let pool = mariadb(&url).await;
    let schema =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop-mariadb/schema.sql")).unwrap();
    // Comment lines first (they may hold a `;`), then one statement per `;`.
    let code: String = schema
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let statements: Vec<&str> = code.split(';').filter(|s| !s.trim().is_empty()).collect();
    sql(&pool, &statements).await;
    let out = common::cli()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop-mariadb/config.toml"),
        ])
        .env("CDC_KAFKA_BROKERS", common::kafka_brokers())
        .env("CDC_REDIS_URL", common::redis_url())
        .env("CDC_CONNECT_URL", common::connect_url())
        .env("CDC_LOOKUP_URL", &url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "ok    binlog_format = ROW",
        "ok    gtid_strict_mode = ON",
        "ok    table shop.products: binlog_row_image = FULL, old keys render exactly",
        "ok    table shop.categories: binlog_row_image = FULL, old keys render exactly",
        "ok    table shop.reviews: binlog_row_image = FULL, old keys render exactly",
        "ok    fan-out \"SELECT id FROM products WHERE category_id = ?\" prepares",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("FAIL  table"), "{text}");
}
