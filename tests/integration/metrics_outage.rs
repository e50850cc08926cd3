//! Metrics stay true while the pipeline waits: during a Redis freeze longer
//! than the exporter's gauge idle timeout, the gauges are still exported, the
//! lag follows the broker's high watermark (the backlog grows), and the last
//! progress time stops; after recovery everything moves again.

use crate::common;

use std::time::Duration;

use crate::common::{eventually, metric_sum, Daemon, PrivateRedis};
use serde_json::json;

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn gauges_lag_and_progress_stay_true_through_a_redis_freeze() {
    let table = common::unique("gauges");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let redis = PrivateRedis::start_ready().await;
    let cfg = common::write_config(
        &topic,
        &redis.url(),
        "ver:",
        &format!("[[entity]]\ntable = \"public.{table}\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n"),
    );
    let change = |id: i64| {
        common::debezium_change(
            &table,
            "c",
            100 + u64::try_from(id).unwrap(),
            id,
            json!({"id": id}),
            common::now_us(),
        )
    };
    common::produce(&topic, &[change(1)]).await;
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;
    let before = eventually("the first record's apply latency", Duration::from_secs(60), || {
        let daemon = &daemon;
        async move {
            let m = daemon.metrics().await;
            (metric_sum(&m, "cdc_invalidator_apply_latency_seconds_count", &[]) >= 1.0).then_some(m)
        }
    })
    .await;
    let progress_before = gauge(&before, "cdc_invalidator_last_progress_timestamp_seconds").expect("progress");

    redis.signal("-STOP");
    // One record runs into the frozen server (the apply waits for its
    // response timeout, then pauses); the rest are the outage's backlog.
    common::produce(&topic, &[change(2)]).await;
    eventually("the outage pause", Duration::from_secs(60), || {
        let daemon = &daemon;
        async move {
            let m = daemon.metrics().await;
            (metric_sum(&m, "cdc_invalidator_paused_partitions", &[]) >= 1.0).then_some(())
        }
    })
    .await;
    let backlog: Vec<_> = (3..53).map(change).collect();
    common::produce(&topic, &backlog).await;
    // Longer than the exporter's 30 s gauge idle timeout.
    tokio::time::sleep(Duration::from_secs(40)).await;

    let during = daemon.metrics().await;
    for name in [
        "cdc_invalidator_paused_partitions",
        "cdc_invalidator_ready",
        "cdc_invalidator_build_info",
        "cdc_invalidator_stored_offset",
        "cdc_invalidator_in_flight_records",
    ] {
        assert!(
            gauge(&during, name).is_some(),
            "{name} vanished during the outage:\n{during}"
        );
    }
    assert_eq!(gauge(&during, "cdc_invalidator_ready"), Some(0.0), "{during}");
    // Records 2..=52 are not applied: the lag comes from the high watermark.
    let lag = metric_sum(&during, "cdc_invalidator_consumer_lag_records", &[]);
    assert!(lag >= 51.0, "lag {lag} does not show the outage backlog:\n{during}");
    let progress_during = gauge(&during, "cdc_invalidator_last_progress_timestamp_seconds").expect("progress");
    let now = common::now_us() as f64 / 1e6;
    assert!(
        now - progress_during > 30.0,
        "progress kept advancing while nothing was applied ({progress_during} at {now})"
    );

    redis.signal("-CONT");
    let after = eventually("the backlog to be applied", Duration::from_secs(60), || {
        let daemon = &daemon;
        async move {
            let m = daemon.metrics().await;
            (metric_sum(&m, "cdc_invalidator_apply_latency_seconds_count", &[]) >= 52.0).then_some(m)
        }
    })
    .await;
    let progress_after = gauge(&after, "cdc_invalidator_last_progress_timestamp_seconds").expect("progress");
    assert!(progress_after > progress_during && progress_during >= progress_before);
    eventually("the lag to drain", Duration::from_secs(30), || {
        let daemon = &daemon;
        async move {
            let m = daemon.metrics().await;
            (metric_sum(&m, "cdc_invalidator_consumer_lag_records", &[]) == 0.0).then_some(())
        }
    })
    .await;
}
