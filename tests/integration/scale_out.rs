//! Two replicas in one consumer group share the partitions (cooperative
//! sticky); when one stops, the other takes its partitions over and nothing
//! is lost.

use crate::common;

use std::time::Duration;

use crate::common::{eventually, Daemon};
use serde_json::json;

#[tokio::test]
async fn replicas_share_partitions_and_take_over_without_loss() {
    const FIRST: i64 = 600;
    const SECOND: i64 = 600;
    let table = common::unique("scale");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let entity = format!("[[entity]]\ntable = \"public.{table}\"\nnamespace = \"i\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n");
    // Three partitions (the broker's default here); records spread by key.
    let produce = |from: i64, to: i64| {
        let table = table.clone();
        (from..to).map(move |id| {
            let (key, value) = common::debezium_change(
                &table,
                "c",
                u64::try_from(id).unwrap() + 1,
                id,
                json!({"id": id}),
                common::now_us(),
            );
            (key, value)
        })
    };
    produce_spread(&topic, produce(0, FIRST)).await;

    // One config, so one group, for both replicas; each binds its own
    // admin port (port 0).
    let config = common::write_config(&topic, &common::redis_url(), &prefix, &entity);
    let mut a = Daemon::start(config.path());
    let b = Daemon::start(config.path());
    let assigned = |admin: String| async move {
        let (_, body) = common::http_get(&admin, "/readyz").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["assigned_partitions"].as_u64()
    };
    eventually("both replicas to hold partitions", Duration::from_secs(60), || {
        let (admin_a, admin_b) = (a.admin.clone(), b.admin.clone());
        async move {
            let (x, y) = (assigned(admin_a).await?, assigned(admin_b).await?);
            (x > 0 && y > 0 && x + y == 3).then_some(())
        }
    })
    .await;
    eventually("the first wave to be applied", Duration::from_secs(60), || {
        let prefix = prefix.clone();
        async move {
            (i64::try_from(common::count_keys(&common::redis_url(), &format!("{prefix}item:*")).await).unwrap()
                == FIRST)
                .then_some(())
        }
    })
    .await;

    // One replica leaves; the other takes its partitions over.
    assert_eq!(a.terminate().code(), Some(0), "{}", a.log_tail());
    produce_spread(&topic, produce(FIRST, FIRST + SECOND)).await;
    eventually("the survivor to hold every partition", Duration::from_secs(60), || {
        let admin = b.admin.clone();
        async move { (assigned(admin).await? == 3).then_some(()) }
    })
    .await;
    eventually(
        "the second wave to be applied by the survivor",
        Duration::from_secs(60),
        || {
            let prefix = prefix.clone();
            async move {
                (i64::try_from(common::count_keys(&common::redis_url(), &format!("{prefix}item:*")).await).unwrap()
                    == FIRST + SECOND)
                    .then_some(())
            }
        },
    )
    .await;
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(log.contains("partitions assigned"), "{log}");
}

/// Produces with the record key choosing the partition (not pinned to 0).
async fn produce_spread(topic: &str, records: impl Iterator<Item = (Option<Vec<u8>>, Option<Vec<u8>>)>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for (key, value) in records {
        let (key, value) = (key.unwrap(), value.unwrap());
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .expect("enqueue"),
        );
    }
    for p in pending {
        p.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
    }
}
