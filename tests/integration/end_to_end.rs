//! End to end through PostgreSQL, Debezium, Kafka, the daemon and Redis.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::common::{eventually, Daemon};

struct Setup {
    prefix: String,
    config: tempfile::NamedTempFile,
}

/// Writes a config for the given entities with a fresh group and key prefix.
fn setup(topics: &[String], entities: &str) -> Setup {
    let prefix = format!("{}:", common::unique("ver"));
    let config = write_config(topics, entities, &prefix, &common::unique("group"));
    Setup { prefix, config }
}

/// Eventual entities linger 20 ms here (not 100): the tests wait less.
fn write_config(topics: &[String], entities: &str, prefix: &str, group: &str) -> tempfile::NamedTempFile {
    let extra = format!("[plan]\neventual_linger = \"20ms\"\n{entities}");
    common::write_config_for(topics, &common::redis_url(), prefix, group, &extra)
}

fn topic(table: &str) -> String {
    format!("{}.public.{table}", common::topic_prefix())
}

/// Waits until Debezium created every topic (it does on the first event).
async fn wait_for_topics(topics: &[String]) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .unwrap();
    eventually("Debezium to create the topics", Duration::from_secs(60), || {
        let found = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect::<BTreeSet<_>>());
        let ok = found.map(|f| topics.iter().all(|t| f.contains(t))).unwrap_or(false);
        async move { ok.then_some(()) }
    })
    .await;
}

/// Keys whose version changed between two snapshots (new keys included).
fn changed(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeSet<String> {
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs `statement`, waits until every expected key moved, lets stragglers
/// arrive, and asserts that exactly the expected keys moved.
async fn expect_bumps(pool: &sqlx::PgPool, prefix: &str, statement: &str, expected: BTreeSet<String>) {
    let mut conn = common::redis_conn().await;
    let before = common::versions(&mut conn, prefix).await;
    common::sql(pool, statement).await;
    eventually(
        &format!("{expected:?} to move after {statement}"),
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            let before = before.clone();
            let expected = expected.clone();
            async move {
                let now = common::versions(&mut conn, prefix).await;
                expected.is_subset(&changed(&before, &now)).then_some(())
            }
        },
    )
    .await;
    // Anything else the statement caused would have arrived by now: the
    // expected keys came through the same partitions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = common::versions(&mut conn, prefix).await;
    assert_eq!(changed(&before, &after), expected, "after {statement}");
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
    let conn = common::redis_conn().await;
    let seeded = set(&[
        "category:1",
        "category:2",
        "product:1",
        "product-sku:A",
        "category:1:products",
    ]);
    eventually("the seed rows to be applied", Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let seeded = seeded.clone();
        let prefix = s.prefix.clone();
        async move {
            let keys: BTreeSet<String> = common::versions(&mut conn, &prefix).await.into_keys().collect();
            (keys == seeded).then_some(())
        }
    })
    .await;

    expect_bumps(
        &pool,
        &s.prefix,
        &format!("INSERT INTO {products} VALUES (2, 2, 'B', 'doll')"),
        set(&["product:2", "product-sku:B", "category:2:products"]),
    )
    .await;
    // A foreign-key move invalidates the list it leaves and the one it joins.
    expect_bumps(
        &pool,
        &s.prefix,
        &format!("UPDATE {products} SET category_id = 2 WHERE id = 1"),
        set(&[
            "product:1",
            "product-sku:A",
            "category:1:products",
            "category:2:products",
        ]),
    )
    .await;
    expect_bumps(
        &pool,
        &s.prefix,
        &format!("DELETE FROM {products} WHERE id = 2"),
        set(&["product:2", "product-sku:B", "category:2:products"]),
    )
    .await;
    expect_bumps(
        &pool,
        &s.prefix,
        &format!("UPDATE {categories} SET name = 'games' WHERE id = 2"),
        set(&["category:2"]),
    )
    .await;
    expect_bumps(&pool, &s.prefix, &format!("TRUNCATE {products}"), set(&["ns:product"])).await;

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

/// The highest position per key, computed independently of the daemon:
/// read every record of the topic and route it through the library.
async fn expected_positions(topic: &str, entities_config: &std::path::Path, records: usize) -> HashMap<String, String> {
    let settings = cdc_invalidator::config::load(entities_config, &|_| None).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .set("group.id", common::unique("expect"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < records {
        assert!(
            Instant::now() < deadline,
            "read {seen} of {records} records from {topic}"
        );
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let record = cdc_invalidator::source::to_record(&message);
        seen += 1;
        let route = cdc_invalidator::pipeline::route(
            &settings.graph,
            &settings.plan,
            &record,
            cdc_invalidator::pipeline::now_us(),
            false,
        );
        if let cdc_invalidator::pipeline::Routed::Bump { targets, position, .. } = route.action {
            for t in targets {
                let key = t.record_key("");
                let slot = expected.entry(key).or_default();
                if position.ordinal > *slot {
                    *slot = position.ordinal.clone();
                }
            }
        }
    }
    expected
}

async fn guard_positions(prefix: &str, source: &str) -> HashMap<String, (u64, String)> {
    let mut conn = common::redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = HashMap::new();
    for key in keys {
        let (v, p): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("v")
            .arg(format!("p:{source}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        out.insert(
            key[prefix.len()..].to_owned(),
            (v.and_then(|v| v.parse().ok()).unwrap_or(0), p.unwrap_or_default()),
        );
    }
    out
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
    let entities = format!(
        r#"
[[entity]]
table = "public.{items}"
namespace = "item"
consistency = "strong"
replica_identity = "full"
keys = ["item:{{id}}", "group:{{grp}}"]
"#
    );
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
            }
        })
    };
    // Kill it once it is clearly mid-stream.
    let mut conn = common::redis_conn().await;
    eventually("the daemon to apply some changes", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let prefix = s.prefix.clone();
        async move { (common::versions(&mut conn, &prefix).await.len() > 200).then_some(()) }
    })
    .await;
    daemon.kill9();
    let at_kill = guard_positions(&s.prefix, "pg:shop").await;
    writer.await.unwrap();
    let applied_at_kill = at_kill.len();
    assert!(
        applied_at_kill < ROWS,
        "killed too late to prove anything ({applied_at_kill} keys applied)"
    );

    let expected = expected_positions(&topics[0], s.config.path(), ROWS + 1).await;
    let mut daemon = Daemon::start(s.config.path());
    daemon.wait_ready().await;
    eventually(
        "every key to reach its last change's position",
        Duration::from_secs(120),
        || {
            let prefix = s.prefix.clone();
            let expected = expected.clone();
            async move {
                let now = guard_positions(&prefix, "pg:shop").await;
                expected
                    .iter()
                    .all(|(k, p)| now.get(k).is_some_and(|(_, got)| got >= p))
                    .then_some(())
            }
        },
    )
    .await;
    let final_state = guard_positions(&s.prefix, "pg:shop").await;
    for (key, (v, p)) in &at_kill {
        if expected.get(key) == Some(p) {
            assert_eq!(
                final_state[key].0, *v,
                "{key} was already applied before the kill and must not be bumped again"
            );
        }
    }
    assert_eq!(
        daemon.terminate().code(),
        Some(0),
        "SIGTERM exits 0\n{}",
        daemon.log_tail()
    );

    // Replay from offset 0 (a new group): every bump is a guard no-op.
    let before_replay = common::versions(&mut conn, &s.prefix).await;
    let replay_config = write_config(&topics, &entities, &s.prefix, &common::unique("replay"));
    let replay = Daemon::start(replay_config.path());
    replay.wait_ready().await;
    eventually("the replay to consume every record", Duration::from_secs(120), || {
        let admin = replay.admin.clone();
        async move {
            let (_, body) = common::http_get(&admin, "/metrics").await?;
            (common::metric_sum(&body, "cdc_invalidator_events_total", &[]) >= (ROWS + 1) as f64).then_some(body)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = replay.metrics().await;
    assert_eq!(
        common::versions(&mut conn, &s.prefix).await,
        before_replay,
        "replay changed versions"
    );
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_targets_bumped_total", &[]),
        0.0,
        "{metrics}"
    );
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_guard_noops_total", &[]) >= 50.0,
        "{metrics}"
    );
    drop(replay);
    common::sql(&pool, &format!("DROP TABLE {items}")).await;
}
