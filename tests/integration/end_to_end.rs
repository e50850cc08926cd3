//! End to end through PostgreSQL, Debezium, Kafka, the daemon and Redis.

use crate::common;

use std::collections::BTreeSet;

use crate::common::chain::{
    expect_bumps_after, expected_positions, guard_positions, items_entity, kill_9_mid_stream, replay_changes_nothing,
    restart_until_caught_up, set, wait_for_seed, wait_for_topics, write_chain_config,
};
use crate::common::Daemon;

/// The guard source of the stack's PostgreSQL connector.
const SOURCE: &str = "pg:shop";

struct Setup {
    prefix: String,
    config: tempfile::NamedTempFile,
}

/// Writes a config for the given entities with a fresh group and key prefix.
fn setup(topics: &[String], entities: &str) -> Setup {
    let prefix = format!("{}:", common::unique("ver"));
    let config = write_chain_config(topics, entities, &prefix, &common::unique("group"));
    Setup { prefix, config }
}

fn topic(table: &str) -> String {
    format!("{}.public.{table}", common::topic_prefix())
}

/// Runs `statement` and asserts that exactly the expected keys moved.
async fn expect_bumps(pool: &sqlx::PgPool, prefix: &str, statement: &str, expected: BTreeSet<String>) {
    expect_bumps_after(prefix, statement, common::sql(pool, statement), expected).await;
}

#[tokio::test]
async fn insert_update_delete_truncate_bump_exactly_the_dependent_keys() {
    let categories = common::unique("cat");
    let products = common::unique("prod");
    let pool = common::pg().await;
    common::sql(
        &pool,
        &format!(
            "CREATE TABLE {categories} (id integer PRIMARY KEY, name text NOT NULL);
             CREATE TABLE {products} (id integer PRIMARY KEY, category_id integer NOT NULL, sku text NOT NULL, name text NOT NULL);
             ALTER TABLE {products} REPLICA IDENTITY FULL;
             INSERT INTO {categories} VALUES (1, 'tools'), (2, 'toys');
             INSERT INTO {products} VALUES (1, 1, 'A', 'hammer');"
        ),
    )
    .await;
    let topics = vec![topic(&categories), topic(&products)];
    wait_for_topics(&topics).await;
    let s = setup(
        &topics,
        &format!(
            r#"
[[entity]]
table = "public.{categories}"
namespace = "category"
consistency = "eventual"
keys = ["category:{{id}}"]
[[entity]]
table = "public.{products}"
namespace = "product"
consistency = "strong"
max_cache_ttl = "10m"
replica_identity = "full"
keys = ["product:{{id}}", "product-sku:{{sku}}", "category:{{category_id}}:products"]
"#
        ),
    );
    let daemon = Daemon::start(s.config.path());
    daemon.wait_ready().await;
    wait_for_seed(
        &s.prefix,
        set(&[
            "category:1",
            "category:2",
            "product:1",
            "product-sku:A",
            "category:1:products",
        ]),
    )
    .await;

    // Each statement, with exactly the keys it must move. Product 2's
    // insert and its delete move the same keys.
    let product_2 = ["product:2", "product-sku:B", "category:2:products"];
    let steps: [(String, &[&str]); 5] = [
        (format!("INSERT INTO {products} VALUES (2, 2, 'B', 'doll')"), &product_2),
        // A foreign-key move invalidates the list it leaves and the one it joins.
        (
            format!("UPDATE {products} SET category_id = 2 WHERE id = 1"),
            &[
                "product:1",
                "product-sku:A",
                "category:1:products",
                "category:2:products",
            ],
        ),
        (format!("DELETE FROM {products} WHERE id = 2"), &product_2),
        (
            format!("UPDATE {categories} SET name = 'games' WHERE id = 2"),
            &["category:2"],
        ),
        (format!("TRUNCATE {products}"), &["ns:product"]),
    ];
    for (statement, expected) in steps {
        expect_bumps(&pool, &s.prefix, &statement, set(expected)).await;
    }

    let metrics = daemon.metrics().await;
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_events_total", &["op=\"t\""]) >= 1.0,
        "{metrics}"
    );
    assert!(
        common::metric_sum(
            &metrics,
            "cdc_invalidator_targets_bumped_total",
            &["kind=\"namespace\""]
        ) >= 1.0
    );
    assert!(common::metric_sum(&metrics, "cdc_invalidator_invalidation_propagation_seconds_count", &[]) >= 1.0);
    drop(daemon);
    common::sql(&pool, &format!("DROP TABLE {products}; DROP TABLE {categories};")).await;
}

#[tokio::test]
async fn kill_9_mid_stream_then_restart_loses_nothing_and_replay_changes_nothing() {
    const ROWS: usize = 3000;
    const TRANSACTIONS: usize = 60;
    let items = common::unique("item");
    let pool = common::pg().await;
    common::sql(
        &pool,
        &format!("CREATE TABLE {items} (id integer PRIMARY KEY, grp integer NOT NULL); ALTER TABLE {items} REPLICA IDENTITY FULL; INSERT INTO {items} VALUES (0, 0);"),
    )
    .await;
    let topics = vec![topic(&items)];
    wait_for_topics(&topics).await;
    let entities = items_entity(&format!("public.{items}"));
    let s = setup(&topics, &entities);
    let mut daemon = Daemon::start(s.config.path());
    daemon.wait_ready().await;

    // Thousands of changes in many transactions, written while the daemon runs.
    let writer = {
        let pool = pool.clone();
        let items = items.clone();
        tokio::spawn(async move {
            let per_tx = ROWS / TRANSACTIONS;
            for tx in 0..TRANSACTIONS {
                let first = tx * per_tx + 1;
                common::sql(
                    &pool,
                    &format!(
                        "INSERT INTO {items} SELECT g, g % 50 FROM generate_series({first}, {}) g",
                        first + per_tx - 1
                    ),
                )
                .await;
                // Spread over about 3 s, so the kill lands mid-stream even
                // when the machine is slow to notice the first 200 keys.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    // Kill it once it is clearly mid-stream.
    kill_9_mid_stream(&mut daemon, &s.prefix).await;
    let at_kill = guard_positions(&s.prefix, SOURCE).await;
    writer.await.unwrap();
    let applied_at_kill = at_kill.len();
    assert!(
        applied_at_kill < ROWS,
        "killed too late to prove anything ({applied_at_kill} keys applied)"
    );

    let expected = expected_positions(&topics[0], s.config.path(), ROWS + 1, None).await;
    let (mut daemon, _) = restart_until_caught_up(s.config.path(), &s.prefix, SOURCE, &expected, &at_kill).await;
    assert_eq!(
        daemon.terminate().code(),
        Some(0),
        "SIGTERM exits 0\n{}",
        daemon.log_tail()
    );

    // Replay from offset 0 (a new group): every bump is a guard no-op.
    let metrics = replay_changes_nothing(&topics, &entities, &s.prefix, ROWS + 1).await;
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_guard_noops_total", &[]) >= 50.0,
        "{metrics}"
    );
    common::sql(&pool, &format!("DROP TABLE {items}")).await;
}
