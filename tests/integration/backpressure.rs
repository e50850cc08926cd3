//! Backpressure: a large burst while Redis is frozen stays in bounded memory
//! and is applied in full after recovery; a backlog above the lag threshold
//! is escalated to namespace bumps, and per-key bumps return afterwards.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{eventually, Daemon, PrivateRedis};
use serde_json::json;

#[tokio::test]
async fn burst_of_200k_while_redis_is_frozen_is_bounded_and_fully_applied() {
    const BURST: i64 = 200_000;
    let table = common::unique("burst");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let redis = PrivateRedis::start_ready().await;
    let entity = format!("[[entity]]\ntable = \"public.{table}\"\nnamespace = \"item\"\nconsistency = \"strong\"\nmax_cache_ttl = \"10m\"\nkeys = [\"item:{{id}}\"]\n");
    let cfg = common::write_config(&topic, &redis.url(), "ver:", &entity);
    let now = common::now_us();
    common::produce_many(
        &topic,
        std::iter::once(common::debezium_change(&table, "c", 1, 0, json!({"id": 0}), now)),
    )
    .await;
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;

    redis.signal("-STOP");
    let started = Instant::now();
    let produced = common::produce_many(
        &topic,
        (1..=BURST).map(|id| {
            common::debezium_change(
                &table,
                "c",
                10 + u64::try_from(id).unwrap(),
                id,
                json!({"id": id, "name": "burst row"}),
                now,
            )
        }),
    )
    .await;
    assert_eq!(i64::try_from(produced).unwrap(), BURST);
    // Let the daemon run into the outage with the whole backlog waiting.
    eventually("consumption to pause for the outage", Duration::from_secs(60), || {
        let admin = daemon.admin.clone();
        async move {
            let (_, body) = common::http_get(&admin, "/metrics").await?;
            (common::metric_sum(&body, "cdc_invalidator_paused_partitions", &[]) >= 1.0).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_during_outage = common::peak_rss_kib(daemon.child.id());

    redis.signal("-CONT");
    let recovered = Instant::now();
    eventually("every row of the burst to be applied", Duration::from_secs(300), || {
        let url = redis.url();
        async move { (i64::try_from(common::count_keys(&url, "ver:item:*").await).unwrap() == BURST + 1).then_some(()) }
    })
    .await;
    let recovery = recovered.elapsed();
    let peak = common::peak_rss_kib(daemon.child.id());
    let metrics = daemon.metrics().await;
    eprintln!(
        "burst of {BURST}: peak RSS {} MiB (during the outage {} MiB), applied {:.1}s after recovery, {:.1}s after the burst began",
        peak / 1024,
        rss_during_outage / 1024,
        recovery.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // The in-flight budget (32 MiB of records, plus librdkafka's bounded
    // prefetch) keeps memory far below the size of the backlog in Kafka.
    assert!(peak < 400 * 1024, "peak RSS {} MiB", peak / 1024);
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_moot_events_total", &[]),
        0.0,
        "nothing here is moot"
    );
    assert!(common::metric_sum(&metrics, "cdc_invalidator_redis_errors_total", &[]) >= 1.0);
}

#[tokio::test]
async fn lag_above_threshold_escalates_then_per_key_bumps_return() {
    const BACKLOG: i64 = 30_000;
    let table = common::unique("lag");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let redis = PrivateRedis::start_ready().await;
    let extra = format!(
        "[plan]\nescalate_above_lag = 2000\nmax_batch_records = 500\n[[entity]]\ntable = \"public.{table}\"\nnamespace = \"item\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n"
    );
    let cfg = common::write_config(&topic, &redis.url(), "ver:", &extra);
    // Lag readings every 100 ms, so the first arrives before an optimised
    // build has drained the whole backlog (at the default 1 s it came too late).
    let text = std::fs::read_to_string(cfg.path()).unwrap().replace(
        "[source.librdkafka]\n",
        "[source.librdkafka]\n\"statistics.interval.ms\" = \"100\"\n",
    );
    std::fs::write(cfg.path(), text).unwrap();
    let now = common::now_us();
    common::produce_many(
        &topic,
        (1..=BACKLOG)
            .map(|id| common::debezium_change(&table, "c", u64::try_from(id).unwrap(), id, json!({"id": id}), now)),
    )
    .await;

    let daemon = Daemon::start(cfg.path());
    let metrics = eventually("the backlog to be consumed", Duration::from_secs(120), || {
        let admin = daemon.admin.clone();
        async move {
            let (_, body) = common::http_get(&admin, "/metrics").await?;
            (common::metric_sum(&body, "cdc_invalidator_events_total", &[]) >= BACKLOG as f64).then_some(body)
        }
    })
    .await;
    // Every event is accounted for: bumped per key before the first lag
    // reading arrived (statistics come every second), or escalated after it.
    // How many fall on each side depends on timing; that both happen does not.
    let escalated = common::metric_sum(&metrics, "cdc_invalidator_events_total", &["outcome=\"escalated\""]);
    let applied = common::metric_sum(&metrics, "cdc_invalidator_events_total", &["outcome=\"applied\""]);
    assert_eq!(escalated + applied, BACKLOG as f64, "{metrics}");
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_escalations_total", &["reason=\"lag\""]),
        escalated
    );
    assert!(
        escalated >= 1000.0,
        "the backlog above the threshold escalates: {escalated}\n{metrics}"
    );
    // Events are counted when routed, before their batch reaches Redis: the
    // last batch may still be on its way, so wait for the records.
    let url = redis.url();
    let per_key = eventually("the last batch's per-key records", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let n = common::count_keys(&url, "ver:item:*").await as f64;
            (n >= applied).then_some(n)
        }
    })
    .await;
    assert_eq!(
        per_key, applied,
        "only events applied before the escalation created per-key records"
    );
    let namespace_bumps = common::metric_sum(
        &metrics,
        "cdc_invalidator_targets_bumped_total",
        &["kind=\"namespace\""],
    );
    assert!(
        namespace_bumps < escalated / 10.0,
        "at most one namespace bump per batch: {namespace_bumps} for {escalated} events"
    );
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ns: Option<String> = redis::cmd("HGET")
        .arg("ver:ns:item")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ns.is_some(), "the namespace was bumped");

    // Once the lag is gone (statistics every second), keys are bumped again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    common::produce_id_change(&topic, &table, "u", BACKLOG as u64 + 10, 7_000_001).await;
    common::wait_for_version_record(
        &conn,
        "a per-key bump after recovery",
        "ver:item:7000001",
        Duration::from_secs(30),
    )
    .await;
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("lag above plan.escalate_above_lag") && log.contains("lag recovered"),
        "{}",
        daemon.log_tail()
    );
}
