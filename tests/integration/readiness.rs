//! Readiness tells the truth on an idle replica: Redis and the dead-letter
//! store are pinged on their own task, a source topic idle past
//! `source.max_idle` turns readiness off; static membership rejoins as the
//! same member.

use crate::common;

use std::time::Duration;

use crate::common::{eventually, Daemon, PrivateRedis, Proxy};
use serde_json::json;

fn entity(table: &str) -> String {
    format!(
        "[[entity]]\ntable = \"public.{table}\"\nnamespace = \"item\"\nmax_cache_ttl = \"10m\"\nkeys = [\"item:{{id}}\"]\n"
    )
}

async fn readyz(daemon: &Daemon) -> Option<(u16, String)> {
    common::http_get(&daemon.admin, "/readyz").await
}

async fn wait_status(daemon: &Daemon, what: &str, code: u16, body_has: &str) -> String {
    eventually(what, Duration::from_secs(30), || async move {
        readyz(daemon)
            .await
            .filter(|(c, body)| *c == code && body.contains(body_has))
            .map(|(_, body)| body)
    })
    .await
}

/// Creates the topic with one record, so the daemon gets a partition.
async fn topic_with_a_record() -> (String, String) {
    let table = common::unique("ready");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    common::produce(
        &topic,
        &[common::debezium_change(
            &table,
            "c",
            1,
            1,
            json!({"id": 1}),
            common::now_us(),
        )],
    )
    .await;
    (table, topic)
}

#[tokio::test]
async fn idle_replica_turns_unready_when_redis_or_postgres_go_and_ready_when_they_return() {
    let (table, topic) = topic_with_a_record().await;
    let mut redis = PrivateRedis::start_ready().await;
    let mut proxy = Proxy::start(&common::pg_address()).await;
    let (dl_url, schema) = common::dead_letter_url(&format!("127.0.0.1:{}", proxy.port));
    let extra = format!(
        "[dead_letters]\nurl = \"{dl_url}\"\nschema = \"{schema}\"\n{}",
        entity(&table)
    );
    let cfg = common::write_config(&topic, &redis.url(), "ver:", &extra);
    // [admin] probe settings go with listen.
    let text = std::fs::read_to_string(cfg.path()).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nprobe_interval = \"500ms\"\nprobe_timeout = \"300ms\"",
    );
    std::fs::write(cfg.path(), text).unwrap();
    let daemon = Daemon::start_with(cfg.path(), &["--migrate"]);
    daemon.wait_ready().await;

    // Redis goes away while nothing is written: only the probe can notice.
    redis.signal("-STOP");
    let body = wait_status(&daemon, "503 while redis is frozen", 503, "readiness probe").await;
    assert!(body.contains("redis not answering the readiness probe"), "{body}");
    redis.signal("-CONT");
    wait_status(&daemon, "200 after redis returned", 200, "").await;

    proxy.down().await;
    let body = wait_status(&daemon, "503 while postgres is cut", 503, "dead-letter store").await;
    assert!(body.contains("not answering the readiness probe"), "{body}");
    proxy.up().await;
    wait_status(&daemon, "200 after postgres returned", 200, "").await;

    // A crashed and restarted Redis too.
    redis.crash_and_restart().await;
    wait_status(&daemon, "200 after the redis restart", 200, "").await;
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("readiness probe failed") && log.contains("readiness probe answered again"),
        "{}",
        daemon.log_tail()
    );
}

#[tokio::test]
async fn a_source_topic_idle_past_max_idle_turns_readiness_off_until_a_record_comes() {
    let (table, topic) = topic_with_a_record().await;
    let redis = PrivateRedis::start_ready().await;
    let cfg = common::write_config(&topic, &redis.url(), "ver:", &entity(&table));
    let text = std::fs::read_to_string(cfg.path()).unwrap().replace(
        &format!("topics = [\"{topic}\"]"),
        &format!("topics = [\"{topic}\"]\nmax_idle = \"3s\""),
    );
    std::fs::write(cfg.path(), text).unwrap();
    let daemon = Daemon::start(cfg.path());

    let body = wait_status(&daemon, "503 for the idle topic", 503, "no new record").await;
    assert!(body.contains(&topic), "{body}");
    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_source_idle_topics", &[]),
        1.0
    );
    assert!(
        common::metric_sum(
            &metrics,
            "cdc_invalidator_source_idle_seconds",
            &[&format!("topic=\"{topic}\"")]
        ) > 3.0,
        "{metrics}"
    );

    common::produce(
        &topic,
        &[common::debezium_change(
            &table,
            "c",
            2,
            2,
            json!({"id": 2}),
            common::now_us(),
        )],
    )
    .await;
    wait_status(&daemon, "200 after a new record", 200, "").await;
    let metrics = daemon.metrics().await;
    assert_eq!(
        common::metric_sum(&metrics, "cdc_invalidator_source_idle_topics", &[]),
        0.0
    );
}

#[tokio::test]
async fn static_member_rejoins_under_its_instance_id_after_kill_9() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (table, topic) = topic_with_a_record().await;
    let redis = PrivateRedis::start_ready().await;
    let instance = common::unique("inst");
    let cfg = common::write_config(&topic, &redis.url(), "ver:", &entity(&table));
    let text = std::fs::read_to_string(cfg.path()).unwrap().replace(
        &format!("topics = [\"{topic}\"]"),
        &format!("topics = [\"{topic}\"]\ninstance_id = \"{instance}\""),
    );
    std::fs::write(cfg.path(), text).unwrap();
    let group = common::group_of(cfg.path());
    let members = || {
        let admin: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::kafka_brokers())
            .create()
            .unwrap();
        let list = admin.fetch_group_list(Some(&group), Duration::from_secs(10)).unwrap();
        list.groups()
            .iter()
            .flat_map(|g| g.members().iter().map(|m| m.id().to_owned()))
            .collect::<Vec<String>>()
    };

    let mut daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;
    let first = members();
    assert_eq!(first.len(), 1, "{first:?}");
    // Kafka names a static member `<group.instance.id>-<uuid>`.
    assert!(first[0].starts_with(&format!("{instance}-")), "{first:?}");

    daemon.kill9();
    let daemon = Daemon::start(cfg.path());
    daemon.wait_ready().await;
    // The restarted process took the old member's place (no second member
    // waiting for the first one's session to expire).
    let second = members();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].starts_with(&format!("{instance}-")), "{second:?}");
}
