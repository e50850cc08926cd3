//! The whole chain (database, Debezium, Kafka, daemon, Redis) as the
//! PostgreSQL and MariaDB end-to-end tests drive it: topics, exact bump
//! expectations, an oracle of the last position per key, and the
//! kill-restart-replay checks. What differs by database (how SQL runs, the
//! guard source) comes in as parameters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::{
    eventually, http_get, kafka_brokers, metric_sum, redis_conn, redis_url, unique, versions, write_config_for, Daemon,
};

/// The common config writer with a short eventual linger (20 ms, not the
/// default 100), so a test's changes reach Redis sooner.
pub fn write_chain_config(topics: &[String], entities: &str, prefix: &str, group: &str) -> tempfile::NamedTempFile {
    let extra = format!("[plan]\neventual_linger = \"20ms\"\n{entities}");
    write_config_for(topics, &redis_url(), prefix, group, &extra)
}

/// The kill tests' entity: `table` (schema-qualified) of rows with an `id`
/// and a group `grp`, strong, full replica identity, keyed by both.
pub fn items_entity(table: &str) -> String {
    format!(
        r#"
[[entity]]
table = "{table}"
namespace = "item"
consistency = "strong"
replica_identity = "full"
keys = ["item:{{id}}", "group:{{grp}}"]
"#
    )
}

/// Waits until Debezium created every topic (it does on the first event).
pub async fn wait_for_topics(topics: &[String]) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
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
pub fn changed(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeSet<String> {
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until the keys under `prefix` are exactly `seeded`.
pub async fn wait_for_seed(prefix: &str, seeded: BTreeSet<String>) {
    let conn = redis_conn().await;
    eventually("the seed rows to be applied", Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let seeded = seeded.clone();
        async move {
            let keys: BTreeSet<String> = versions(&mut conn, prefix).await.into_keys().collect();
            (keys == seeded).then_some(())
        }
    })
    .await;
}

/// Runs `change` (SQL, described by `what`), waits until every expected key
/// moved, lets stragglers arrive, and asserts that exactly the expected keys
/// moved.
pub async fn expect_bumps_after(
    prefix: &str,
    what: &str,
    change: impl Future<Output = ()>,
    expected: BTreeSet<String>,
) {
    let mut conn = redis_conn().await;
    let before = versions(&mut conn, prefix).await;
    change.await;
    eventually(
        &format!("{expected:?} to move after {what}"),
        Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            let before = before.clone();
            let expected = expected.clone();
            async move {
                let now = versions(&mut conn, prefix).await;
                expected.is_subset(&changed(&before, &now)).then_some(())
            }
        },
    )
    .await;
    // Anything else the change caused would have arrived by now: the
    // expected keys came through the same partitions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = versions(&mut conn, prefix).await;
    assert_eq!(changed(&before, &after), expected, "after {what}");
}

/// The highest position per key, computed independently of the daemon:
/// every record of the topic routed through the library. With `source`,
/// every position must come from that source.
pub async fn expected_positions(
    topic: &str,
    config: &std::path::Path,
    records: usize,
    source: Option<&str>,
) -> HashMap<String, String> {
    let settings = cdc_invalidator::config::load(config, &|_| None).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("expect"))
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
            if let Some(source) = source {
                assert_eq!(position.source, source);
            }
            for t in targets {
                let slot = expected.entry(t.record_key("")).or_default();
                if position.ordinal > *slot {
                    *slot = position.ordinal.clone();
                }
            }
        }
    }
    expected
}

/// Version and guard position (under `source`) of every record below `prefix`.
pub async fn guard_positions(prefix: &str, source: &str) -> HashMap<String, (u64, String)> {
    // One pipeline, tried again on an error: on a loaded machine a single
    // reply among thousands can miss the client's response timeout.
    let mut last_error = None;
    for _ in 0..5 {
        match try_guard_positions(prefix, source).await {
            Ok(out) => return out,
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("reading the guards: {last_error:?}");
}

async fn try_guard_positions(prefix: &str, source: &str) -> redis::RedisResult<HashMap<String, (u64, String)>> {
    let mut conn = redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await?;
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("HMGET").arg(key).arg("v").arg(format!("p:{source}"));
    }
    let replies: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await?;
    Ok(keys
        .iter()
        .zip(replies)
        .map(|(key, (v, p))| {
            (
                key[prefix.len()..].to_owned(),
                (v.and_then(|v| v.parse().ok()).unwrap_or(0), p.unwrap_or_default()),
            )
        })
        .collect())
}

/// Waits until the daemon applied more than 200 records, then kills it
/// with SIGKILL mid-stream.
pub async fn kill_9_mid_stream(daemon: &mut Daemon, prefix: &str) {
    let conn = redis_conn().await;
    eventually("the daemon to apply some changes", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        async move { (versions(&mut conn, prefix).await.len() > 200).then_some(()) }
    })
    .await;
    daemon.kill9();
}

/// Starts the daemon again on `config`, waits until every key reached the
/// oracle's position, and asserts that no key applied before the kill
/// (`at_kill`, already at its last position then) was bumped again. Returns
/// the running daemon and the guards it left.
pub async fn restart_until_caught_up(
    config: &std::path::Path,
    prefix: &str,
    source: &str,
    expected: &HashMap<String, String>,
    at_kill: &HashMap<String, (u64, String)>,
) -> (Daemon, HashMap<String, (u64, String)>) {
    let daemon = Daemon::start(config);
    daemon.wait_ready().await;
    eventually(
        "every key to reach its last change's position",
        Duration::from_secs(120),
        || async move {
            let now = guard_positions(prefix, source).await;
            expected
                .iter()
                .all(|(k, p)| now.get(k).is_some_and(|(_, got)| got >= p))
                .then_some(())
        },
    )
    .await;
    let final_state = guard_positions(prefix, source).await;
    for (key, (v, p)) in at_kill {
        if expected.get(key) == Some(p) {
            assert_eq!(
                final_state[key].0, *v,
                "{key} was applied before the kill and must not be bumped again"
            );
        }
    }
    (daemon, final_state)
}

/// Replays the topics from offset 0 under a new group until `records`
/// events were consumed, and asserts that no version changed and nothing
/// was bumped (every bump a guard no-op). Returns the replay's metrics.
pub async fn replay_changes_nothing(topics: &[String], entities: &str, prefix: &str, records: usize) -> String {
    let mut conn = redis_conn().await;
    let before_replay = versions(&mut conn, prefix).await;
    let replay_config = write_chain_config(topics, entities, prefix, &unique("replay"));
    let replay = Daemon::start(replay_config.path());
    replay.wait_ready().await;
    eventually("the replay to consume every record", Duration::from_secs(120), || {
        let admin = replay.admin.clone();
        async move {
            let (_, body) = http_get(&admin, "/metrics").await?;
            (metric_sum(&body, "cdc_invalidator_events_total", &[]) >= records as f64).then_some(body)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = replay.metrics().await;
    assert_eq!(
        versions(&mut conn, prefix).await,
        before_replay,
        "replay changed versions"
    );
    assert_eq!(
        metric_sum(&metrics, "cdc_invalidator_targets_bumped_total", &[]),
        0.0,
        "{metrics}"
    );
    drop(replay);
    metrics
}
