//! The sink against a real three-node Redis Cluster started by this test.

use crate::common;

use std::time::Duration;

use cdc_invalidator::config::RedisSettings;
use cdc_invalidator::event::Position;
use cdc_invalidator::graph::Target;
use cdc_invalidator::plan::Bump;
use cdc_invalidator::sink::RedisSink;
use common::cluster::Cluster;
use redis::cluster_routing::Slot;

fn bump(key: String, ordinal: i64) -> Bump {
    Bump {
        target: Target::Key(key),
        position: Position::kafka("t", 0, ordinal),
        commit_time_us: None,
    }
}

#[tokio::test]
async fn bumps_spread_over_slots_apply_guard_and_survive_script_flush() {
    let cluster = Cluster::start();
    // The slot function the sink groups by agrees with the server's.
    for key in ["foo", "123456789", "ver:product:42", "ver:{tag}:x", "ver:ns:product"] {
        let server: u16 = cluster
            .cli(cluster.ports[0], &["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap();
        assert_eq!(Slot::for_key(key), Slot::new(server).unwrap(), "{key}");
    }

    let mut sink = RedisSink::connect(&RedisSettings {
        cluster: true,
        ..common::sink_settings(
            &format!("redis://127.0.0.1:{}", cluster.ports[0]),
            "ver:",
            Duration::from_secs(600),
        )
    })
    .await
    .unwrap();
    let bumps: Vec<Bump> = (0..300).map(|i| bump(format!("product:{i}"), 5)).collect();
    let results = sink.apply(&bumps).await.unwrap();
    assert!(results.iter().all(|r| r.applied()));
    // Keys landed on all three nodes.
    for port in &cluster.ports {
        let count: usize = cluster.cli(*port, &["DBSIZE"]).parse().unwrap();
        assert!(count > 50, "node {port} holds {count} keys");
    }
    let again = sink.apply(&bumps).await.unwrap();
    assert!(again.iter().all(|a| !a.applied()), "redelivery is a no-op");

    for port in &cluster.ports {
        cluster.cli(*port, &["SCRIPT", "FLUSH"]);
    }
    let newer: Vec<Bump> = (0..300).map(|i| bump(format!("product:{i}"), 6)).collect();
    let after_flush = sink.apply(&newer).await.unwrap();
    assert!(after_flush
        .iter()
        .zip(&results)
        .all(|(a, r)| a.applied() && a.version > r.version));
}
