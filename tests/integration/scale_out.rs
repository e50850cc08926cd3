//! Replicas in one consumer group share the partitions (cooperative
//! sticky); when one stops, the others take its partitions over and nothing
//! is lost. Static members with `leave_group_on_stop` hand theirs over at
//! once (docs/scale-in.md): measured against members that do not, and under
//! load while scaling 1 -> 3 -> 1 as an autoscaler would.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{eventually, Daemon};
use serde_json::json;
use tokio_util::sync::CancellationToken;

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

/// The static members' session timeout here: short (the broker's minimum is
/// 6 s) so that a member which does not leave is noticed in the time a test
/// may take; 45 s by default.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon's whole stop (drain 20 s + commit 5 s), which the leave stays
/// inside; the Helm chart's grace period is derived from it.
const STOP_BUDGET: Duration = Duration::from_secs(25);

/// One group's shared parts: the topic, the group id, the version prefix
/// and the entity of the topic's table.
struct Group {
    topic: String,
    id: String,
    prefix: String,
    entity: String,
}

impl Group {
    fn new(topic: &str, table: &str) -> Group {
        Group {
            topic: topic.to_owned(),
            id: common::unique("group"),
            prefix: format!("{}:", common::unique("ver")),
            entity: format!(
                "[[entity]]\ntable = \"public.{table}\"\nnamespace = \"i\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n"
            ),
        }
    }

    /// A config for one static member of the group (its own instance id),
    /// leaving the group at stop or not, with a short session and a 1 s
    /// heartbeat (how soon the others hear of a rebalance).
    fn static_member(&self, leave_group_on_stop: bool) -> tempfile::NamedTempFile {
        let config = common::write_config_for(
            std::slice::from_ref(&self.topic),
            &common::redis_url(),
            &self.prefix,
            &self.id,
            &self.entity,
        );
        let text = std::fs::read_to_string(config.path()).unwrap().replacen(
            "[source.librdkafka]\n",
            &format!(
                "instance_id = \"{}\"\nleave_group_on_stop = {leave_group_on_stop}\n[source.librdkafka]\n\"session.timeout.ms\" = \"{}\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
                common::unique("member"),
                SESSION_TIMEOUT.as_millis()
            ),
            1,
        );
        std::fs::write(config.path(), text).unwrap();
        config
    }
}

/// A topic with three partitions (the broker's default), created by a few
/// records spread over them; (topic, table).
async fn spread_topic(name: &str) -> (String, String) {
    let table = common::unique(name);
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let records = (0..3).map(|id| {
        common::debezium_change(
            &table,
            "c",
            id + 1,
            i64::try_from(id).unwrap(),
            json!({"id": id}),
            common::now_us(),
        )
    });
    produce_spread(&topic, records).await;
    (topic, table)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_member_that_leaves_at_stop_hands_its_partitions_over_at_once() {
    let (topic, table) = spread_topic("handover").await;
    // Two groups side by side on one topic: members that leave, members that do not.
    let (leaving, staying) = tokio::join!(
        handover_after_sigterm(Group::new(&topic, &table), true),
        handover_after_sigterm(Group::new(&topic, &table), false)
    );
    eprintln!(
        "handover after SIGTERM (session.timeout.ms {}, heartbeat.interval.ms 1000): leave_group_on_stop on {leaving:?}, off {staying:?}",
        SESSION_TIMEOUT.as_millis()
    );
    // Without the leave the partitions wait for the session to expire
    // (counted from the last heartbeat, at most 1 s before the stop); with
    // it they move within a heartbeat and a rebalance.
    assert!(leaving < SESSION_TIMEOUT / 2, "leaving: {leaving:?}");
    assert!(staying > SESSION_TIMEOUT * 8 / 10, "staying: {staying:?}");
}

/// Two static members of `group` share its three partitions; one gets
/// SIGTERM; how long until the other holds all three.
async fn handover_after_sigterm(group: Group, leave_group_on_stop: bool) -> Duration {
    let (config_a, config_b) = (
        group.static_member(leave_group_on_stop),
        group.static_member(leave_group_on_stop),
    );
    let mut a = Daemon::start(config_a.path());
    let b = Daemon::start(config_b.path());
    eventually("both members to hold partitions", Duration::from_secs(60), || async {
        let (x, y) = (a.assigned_partitions().await?, b.assigned_partitions().await?);
        (x > 0 && y > 0 && x + y == 3).then_some(())
    })
    .await;
    let sent = Instant::now();
    a.send_sigterm();
    eventually(
        "the survivor to hold every partition",
        Duration::from_secs(60),
        || async { (b.assigned_partitions().await? == 3).then_some(()) },
    )
    .await;
    let handover = sent.elapsed();
    assert_eq!(a.exited(STOP_BUDGET).await.code(), Some(0), "{}", a.log_tail());
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert_eq!(
        log.contains("left the consumer group; partitions handed over"),
        leave_group_on_stop,
        "{}",
        a.log_tail()
    );
    handover
}

/// What an autoscaler does, under continuous writes: one static member,
/// two more join (scale-out), then they stop one at a time, the highest
/// first as a StatefulSet removes them (scale-in). Every write's key must
/// be bumped after it; each stop must end within its budget with its
/// offsets committed and its partitions handed over; a joining member is
/// not ready before it holds partitions.
#[tokio::test(flavor = "multi_thread")]
async fn scaling_one_to_three_to_one_under_load_loses_no_invalidation() {
    let (topic, table) = spread_topic("autoscale").await;
    let group = Group::new(&topic, &table);
    let configs: Vec<_> = (0..3).map(|_| group.static_member(true)).collect();
    let first = Daemon::start(configs[0].path());
    eventually(
        "the first member to hold every partition",
        Duration::from_secs(60),
        || async { (first.assigned_partitions().await? == 3).then_some(()) },
    )
    .await;
    first.wait_ready().await;

    let stop_writing = CancellationToken::new();
    let writer = tokio::spawn(write_continuously(topic.clone(), table.clone(), stop_writing.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1 -> 3.
    let scale_out = common::now_us();
    let second = Daemon::start(configs[1].path());
    let third = Daemon::start(configs[2].path());
    let (seen_second, seen_third) = tokio::join!(readiness_until_ready(&second), readiness_until_ready(&third));
    for seen in [&seen_second, &seen_third] {
        // Never ready without partitions, and the probe did see the member
        // before its assignment (the rule was exercised, not skipped).
        assert!(
            seen.iter().all(|(code, assigned)| *code != 200 || *assigned > 0),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|(code, assigned)| *code == 503 && *assigned == 0),
            "{seen:?}"
        );
        assert_eq!(seen.last().map(|(code, _)| *code), Some(200), "{seen:?}");
    }
    eventually(
        "three members to share the partitions",
        Duration::from_secs(60),
        || async {
            let counts = [
                first.assigned_partitions().await?,
                second.assigned_partitions().await?,
                third.assigned_partitions().await?,
            ];
            (counts == [1, 1, 1]).then_some(())
        },
    )
    .await;
    let mut steps = vec![("1 -> 3", scale_out, common::now_us())];
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3 -> 2 -> 1, under the same writes.
    let mut members = vec![first, second, third];
    for step in ["3 -> 2", "2 -> 1"] {
        let mut member = members.pop().unwrap();
        let began = common::now_us();
        let sent = Instant::now();
        member.send_sigterm();
        assert_eq!(
            member.exited(STOP_BUDGET).await.code(),
            Some(0),
            "{}",
            member.log_tail()
        );
        let stopped_in = sent.elapsed();
        let log = std::fs::read_to_string(&member.log).unwrap();
        assert!(
            log.contains("final offsets committed") || log.contains("final commit: nothing new to commit"),
            "{}",
            member.log_tail()
        );
        assert!(
            log.contains("left the consumer group; partitions handed over"),
            "{}",
            member.log_tail()
        );
        assert!(
            !log.contains("not everything taken was applied"),
            "{}",
            member.log_tail()
        );
        eventually(
            "the remaining members to hold every partition",
            Duration::from_secs(60),
            || async {
                let mut held = 0;
                for remaining in &members {
                    held += remaining.assigned_partitions().await?;
                }
                (held == 3).then_some(())
            },
        )
        .await;
        eprintln!("{step}: the stopped member exited {stopped_in:?} after SIGTERM");
        steps.push((step, began, common::now_us()));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    stop_writing.cancel();
    let writes = writer.await.unwrap();
    assert!(writes.len() > 1000, "{} writes", writes.len());
    let pattern = format!("{}item:*", group.prefix);
    eventually("every write to be applied", Duration::from_secs(60), || {
        let pattern = pattern.clone();
        let expected = writes.len() + 3;
        async move { (common::count_keys(&common::redis_url(), &pattern).await == expected).then_some(()) }
    })
    .await;

    // The oracle: each written row's key version moved after its write. A
    // created record's version is Redis TIME in microseconds at the bump,
    // so it is also when the write was applied.
    let mut conn = common::redis_conn().await;
    let versions = common::versions(&mut conn, &group.prefix).await;
    let mut applied: Vec<(i64, i64)> = Vec::new();
    for (id, written_us) in &writes {
        let version = versions.get(&format!("item:{id}")).copied().unwrap_or(0);
        let version = i64::try_from(version).unwrap();
        assert!(
            version >= *written_us,
            "item:{id} written at {written_us} has version {version}"
        );
        applied.push((*written_us, version));
    }
    for (step, began, ended) in &steps {
        let (delay, gap) = apply_figures(&applied, began - 1_000_000, ended + 2_000_000);
        eprintln!("{step}: longest write-to-apply {delay:?}, longest pause between applies {gap:?}");
        if step.starts_with('3') || step.starts_with('2') {
            // Handed over, not left to the session timeout.
            assert!(delay < SESSION_TIMEOUT * 8 / 10, "{step}: {delay:?}");
        }
    }

    // The last member's stop commits everything it applied: every
    // partition's committed offset is its end.
    let mut last = members.pop().unwrap();
    assert_eq!(last.terminate().code(), Some(0), "{}", last.log_tail());
    for partition in 0..3 {
        let end = high_watermark(&topic, partition);
        assert_eq!(
            common::committed_offset(&group.id, &topic, partition),
            Some(end),
            "partition {partition}"
        );
    }
}

/// Writes unique rows to `topic` (about 200 a second, spread over the
/// partitions) until `stop`; each row's id and its write time (µs).
async fn write_continuously(topic: String, table: String, stop: CancellationToken) -> Vec<(i64, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .unwrap();
    let mut writes = Vec::new();
    let mut pending = Vec::new();
    // Ids 0..3 made the topic.
    let mut id: i64 = 3;
    while !stop.is_cancelled() {
        for _ in 0..5 {
            let written_us = common::now_us();
            let (key, value) = common::debezium_change(
                &table,
                "c",
                u64::try_from(id).unwrap() + 1,
                id,
                json!({"id": id}),
                written_us,
            );
            let (key, value) = (key.unwrap(), value.unwrap());
            pending.push(
                producer
                    .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                    .expect("enqueue"),
            );
            writes.push((id, written_us));
            id += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for delivery in pending {
        delivery.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
    }
    writes
}

/// A joining member's `/readyz` answers, every 100 ms from its start until
/// it is ready: (status, assigned partitions).
async fn readiness_until_ready(member: &Daemon) -> Vec<(u16, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some((code, body)) = common::http_get(&member.admin, "/readyz").await {
            let assigned = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["assigned_partitions"].as_u64());
            seen.push((code, assigned.unwrap_or(0)));
            if code == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// For the writes made between `from_us` and `to_us`, given as (written,
/// applied) in µs: the longest time from a write to its apply, and the
/// longest pause between two consecutive applies.
fn apply_figures(applied: &[(i64, i64)], from_us: i64, to_us: i64) -> (Duration, Duration) {
    let in_window: Vec<&(i64, i64)> = applied.iter().filter(|(w, _)| (from_us..=to_us).contains(w)).collect();
    let micros = |us: i64| Duration::from_micros(u64::try_from(us.max(0)).unwrap());
    let delay = in_window.iter().map(|(w, a)| micros(a - w)).max().unwrap_or_default();
    let mut times: Vec<i64> = in_window.iter().map(|(_, a)| *a).collect();
    times.sort_unstable();
    let gap = times
        .windows(2)
        .map(|pair| micros(pair[1] - pair[0]))
        .max()
        .unwrap_or_default();
    (delay, gap)
}

fn high_watermark(topic: &str, partition: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
        .1
}
