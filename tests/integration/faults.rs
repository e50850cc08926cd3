//! Faults: Redis going away mid-stream, and a partition that must stall.

use crate::common;

use std::time::Duration;

use crate::common::{eventually, Daemon, PrivateRedis};

#[tokio::test]
async fn redis_outage_pauses_then_applies_everything_after_recovery() {
    let table = common::unique("outage");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let pool = common::pg().await;
    common::sql(
        &pool,
        &format!("CREATE TABLE {table} (id integer PRIMARY KEY); INSERT INTO {table} VALUES (0);"),
    )
    .await;

    let redis = PrivateRedis::start_ready().await;
    let cfg = common::write_config(
        &topic,
        &redis.url(),
        "ver:",
        &format!("[[entity]]\ntable = \"public.{table}\"\nnamespace = \"item\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n"),
    );
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;
    eventually("the seed row to be applied", Duration::from_secs(60), || {
        let url = redis.url();
        async move { (common::count_keys(&url, "ver:item:*").await == 1).then_some(()) }
    })
    .await;

    // Freeze Redis (as a hung server or a partition would), then change rows.
    redis.signal("-STOP");
    common::sql(
        &pool,
        &format!("INSERT INTO {table} SELECT g FROM generate_series(1, 500) g"),
    )
    .await;
    let not_ready = eventually("readiness to report the outage", Duration::from_secs(60), || {
        let admin = daemon.admin.clone();
        async move {
            let (code, body) = common::http_get(&admin, "/readyz").await?;
            (code == 503 && body.contains("redis")).then_some(body)
        }
    })
    .await;
    assert!(not_ready.contains("\"ready\":false"), "{not_ready}");
    // The readiness probe may see the outage before the pipeline's write fails.
    let metrics = eventually("the pipeline to pause for the outage", Duration::from_secs(60), || {
        let admin = daemon.admin.clone();
        async move {
            let (_, body) = common::http_get(&admin, "/metrics").await?;
            (common::metric_sum(&body, "cdc_invalidator_paused_partitions", &[]) >= 1.0).then_some(body)
        }
    })
    .await;
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_redis_errors_total", &[]) >= 1.0,
        "{metrics}"
    );
    assert!(
        common::metric_sum(&metrics, "cdc_invalidator_paused_partitions", &[]) >= 1.0,
        "{metrics}"
    );

    redis.signal("-CONT");
    eventually(
        "all 501 rows to be applied after recovery",
        Duration::from_secs(60),
        || {
            let url = redis.url();
            async move { (common::count_keys(&url, "ver:item:*").await == 501).then_some(()) }
        },
    )
    .await;
    daemon.wait_ready().await;
    drop(daemon);
    common::sql(&pool, &format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn missing_before_without_namespace_stalls_and_commits_nothing_past_it() {
    let table = common::unique("stall");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let pool = common::pg().await;
    // REPLICA IDENTITY DEFAULT: updates carry no before image.
    common::sql(
        &pool,
        &format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, grp integer NOT NULL); INSERT INTO {table} VALUES (1, 1);"
        ),
    )
    .await;
    let entity = format!(
        "[[entity]]\ntable = \"public.{table}\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\", \"grp:{{grp}}\"]\n"
    );
    let cfg = common::write_config(
        &topic,
        &common::redis_url(),
        "ver:",
        &entity
            .replace("item:", &format!("{table}:item:"))
            .replace("grp:", &format!("{table}:grp:")),
    );
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;
    common::sql(
        &pool,
        &format!("UPDATE {table} SET grp = 2 WHERE id = 1; INSERT INTO {table} VALUES (2, 2);"),
    )
    .await;

    let body = eventually("the partition to stall", Duration::from_secs(60), || {
        let admin = daemon.admin.clone();
        async move {
            let (code, body) = common::http_get(&admin, "/readyz").await?;
            (code == 503 && body.contains("stalled")).then_some(body)
        }
    })
    .await;
    assert!(body.contains("missing_before"), "{body}");
    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_stalled_partitions", &[]),
        1.0,
        "{metrics}"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(log.contains("ERROR") && log.contains("partition stalled"), "{log}");

    // Nothing past the stalled record is committed: the group's committed
    // offset for that partition is at most the stalled record's offset.
    let stalled_offset: i64 = body
        .split("\"offset\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // two auto-commit intervals
    let partition: i32 = body
        .split(&format!("{topic}/"))
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no partition in {body}"));
    // The seed insert before it was applied and committed; nothing after it.
    assert_eq!(
        common::committed_offset(&common::group_of(cfg.path()), &topic, partition),
        Some(stalled_offset),
        "{body}"
    );
    drop(daemon);
    common::sql(&pool, &format!("DROP TABLE {table}")).await;
}

/// A fatal librdkafka error leaves the consumer unusable for good: the
/// daemon must exit non-zero (its supervisor starts a new process) instead of
/// running on with no partitions. Provoked for real: with the consumer group
/// protocol (KIP-848) and static membership, a replica restarted before its
/// killed predecessor's session expired is refused with
/// UNRELEASED_INSTANCE_ID, which librdkafka raises as fatal.
#[tokio::test]
async fn a_fatal_kafka_client_error_ends_the_process_with_status_1() {
    let topic = format!("{}.public.{}", common::topic_prefix(), common::unique("fatal"));
    let table = topic.rsplit('.').next().unwrap().to_owned();
    common::produce(
        &topic,
        &[common::debezium_change(
            &table,
            "c",
            1,
            1,
            serde_json::json!({"id": 1}),
            common::now_us(),
        )],
    )
    .await;
    let entity = "[[entity]]\ntable = \"public.fatal\"\nconsistency = \"strong\"\nmax_cache_ttl = \"10m\"\nkeys = [\"fatal:{id}\"]\n";
    let cfg = common::write_config(&topic, &common::redis_url(), "fatal:", entity);
    let text = std::fs::read_to_string(cfg.path()).unwrap().replacen(
        "[source]\n",
        &format!(
            "[source]\ngroup_protocol = \"consumer\"\ninstance_id = \"{}\"\n",
            common::unique("member")
        ),
        1,
    );
    std::fs::write(cfg.path(), text).unwrap();

    let mut first = Daemon::start(cfg.path());
    first.wait_ready().await;
    first.kill9();
    let mut second = Daemon::start(cfg.path());
    let status = eventually("the restarted member to exit", Duration::from_secs(60), || {
        let status = second.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(1), "{}", second.log_tail());
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("fatal kafka client error")),
        "{}",
        second.log_tail()
    );
    second.kill9();
}
