//! Notices: each applied bump announced on Redis Pub/Sub (JSON) and on a
//! Kafka topic (Avro, decoded here by fastavro, not by the daemon's code).

use crate::common;

use std::time::Duration;

use crate::common::Daemon;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde_json::Value;

#[tokio::test]
async fn applied_bumps_are_announced_on_pubsub_and_kafka() {
    let table = common::unique("notice");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let notice_topic = common::unique("notices");
    let channel = common::unique("channel");
    let prefix = format!("{}:", common::unique("ver"));
    let extra = format!(
        "[notices]\nredis_channel = \"{channel}\"\nkafka_topic = \"{notice_topic}\"\nkafka_schema_id = 7\n\
         [[entity]]\ntable = \"public.{table}\"\nnamespace = \"n\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n"
    );
    let cfg = common::write_config(&topic, &common::redis_url(), &prefix, &extra);
    common::produce_id_change(&topic, &table, "c", 5, 0).await;

    let client = common::redis();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;
    common::produce_id_change(&topic, &table, "u", 9, 42).await;

    // The first notice may be for the seed row; wait for item:42's.
    let mut stream = pubsub.on_message();
    let notice = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let message = stream.next().await.expect("pubsub stream");
            let text: String = message.get_payload().unwrap();
            let notice: Value = serde_json::from_str(&text).unwrap();
            if notice["target"] == "item:42" {
                return notice;
            }
        }
    })
    .await
    .expect("a pubsub notice for item:42 within 30s");
    let mut conn = common::redis_conn().await;
    let version: String = redis::cmd("HGET")
        .arg(format!("{prefix}item:42"))
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(notice["kind"], "KEY");
    assert_eq!(notice["record_key"], format!("{prefix}item:42"));
    assert_eq!(
        notice["version"].to_string(),
        version,
        "the notice carries the new version"
    );
    assert_eq!(notice["source"], "pg:shop");

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .set("group.id", common::unique("notice-reader"))
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    consumer.subscribe(&[&notice_topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let decoded = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no kafka notice for item:42 within 30s"
        );
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let hex: String = message.payload().unwrap().iter().map(|b| format!("{b:02x}")).collect();
        let out = std::process::Command::new("python3")
            .arg(format!("{}/tests/avro/read_notice.py", env!("CARGO_MANIFEST_DIR")))
            .arg(&hex)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["target"] == "item:42" {
            break v;
        }
    };
    assert_eq!(decoded["schema_id"], 7);
    assert_eq!(decoded["kind"], "KEY");
    assert_eq!(decoded["version"].to_string(), version);
    assert_eq!(decoded["position"], notice["position"]);
    let metrics = daemon.metrics().await;
    assert!(
        common::metric_sum(
            &metrics,
            "cdc_invalidator_notices_total",
            &["channel=\"kafka\"", "outcome=\"sent\""]
        ) >= 1.0,
        "{metrics}"
    );
}
