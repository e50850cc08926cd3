//! The intake driven as the consumer stage drives it, with an injected
//! resolver and paused time: a slow lookup holds up only its own partition.

use futures::future::BoxFuture;
use serde_json::json;

use super::*;
use crate::config;
use crate::pipeline::fanout::Resolver;
use crate::pipeline::partitions::Limits;

const PARENTS: &str = "shop.public.parents";
const PLAIN: &str = "shop.public.plain";

fn settings(extra_plan: &str) -> Arc<Settings> {
    let text = format!(
        r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["{PARENTS}", "{PLAIN}"]
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[plan]
eventual_linger = "50ms"
{extra_plan}
[lookup]
url = "postgres://127.0.0.1/none"
[[entity]]
table = "public.parents"
namespace = "parent"
consistency = "strong"
keys = ["parent:{{id}}"]
  [[entity.fanout]]
  query = "SELECT id FROM children WHERE parent_id = $1"
  bind = ["id"]
  keys = ["child:{{id}}"]
  max_rows = 10
  namespace = "child"
[[entity]]
table = "public.plain"
consistency = "strong"
keys = ["plain:{{id}}"]
"#
    );
    Arc::new(config::parse("t.toml", &text, &|_| None).unwrap())
}

/// Answers every lookup with one child after `delay`, or fails it.
struct SlowResolver {
    delay: Duration,
    fail: bool,
}

impl Resolver for SlowResolver {
    fn resolve(&self, _requests: Vec<LookupRequest>, _escalating: bool) -> BoxFuture<'static, Resolution> {
        let (delay, fail) = (self.delay, self.fail);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if fail {
                Err((EscalationReason::LookupFailed, "lookup failed".into()))
            } else {
                Ok((vec![Target::Key("child:7".into())], None))
            }
        })
    }
}

fn change(topic: &str, partition: i32, offset: i64, id: i64) -> KafkaRecord {
    let table = topic.rsplit('.').next().unwrap();
    let value = json!({"op": "c", "after": {"id": id}, "source": {"connector": "postgresql",
        "name": "shop", "schema": "public", "table": table, "lsn": 100 + offset}});
    KafkaRecord {
        topic: topic.into(),
        partition,
        offset,
        key: None,
        value: Some(serde_json::to_vec(&value).unwrap()),
        timestamp_ms: None,
        headers: Vec::new(),
    }
}

fn tombstone(topic: &str, partition: i32, offset: i64) -> KafkaRecord {
    KafkaRecord {
        value: None,
        ..change(topic, partition, offset, 0)
    }
}

/// The consumer stage without rdkafka: the unit, the intake, the open batch.
struct Stage {
    partitions: Partitions,
    intake: Intake,
    batch: Batch,
    status: Arc<Status>,
    lag: Option<i64>,
}

impl Stage {
    fn new(settings: Arc<Settings>, resolver: SlowResolver, partitions: &[PartitionId]) -> Stage {
        let status = Arc::new(Status::default());
        let mut unit = Partitions::new(Limits {
            escalate_above_lag: settings.plan.escalate_above_lag,
            schema_retry_cap: Duration::from_secs(1),
            held_records: 100,
            held_bytes: 1 << 20,
        });
        assert!(unit.assigned(partitions).is_empty());
        Stage {
            partitions: unit,
            intake: Intake::new(settings, false, None, status.clone(), Arc::new(resolver)),
            batch: Batch::default(),
            status,
            lag: None,
        }
    }

    async fn act(&mut self, actions: Vec<Action>) -> Vec<ConsumerAction> {
        let lag = self.lag;
        let lag = move |_: &PartitionId| lag;
        self.intake
            .run(&mut self.partitions, actions, &mut self.batch, &lag)
            .await
    }

    async fn record(&mut self, record: KafkaRecord) -> Vec<ConsumerAction> {
        let actions = self.partitions.record(record);
        self.act(actions).await
    }

    /// Waits for the next lookup and puts its record into the batch.
    async fn next_lookup(&mut self) -> Vec<ConsumerAction> {
        // Bounded, so that a lookup that never reports fails the test.
        let resolved = tokio::time::timeout(Duration::from_secs(600), self.intake.next_resolved())
            .await
            .expect("a lookup reports")
            .expect("the intake holds a sender");
        let actions = self.intake.resolved(&mut self.partitions, resolved, &mut self.batch);
        self.act(actions).await
    }

    /// Takes the records held behind lookups that resolved, as the loop does.
    async fn take_ready(&mut self) {
        while self.partitions.has_ready() {
            let actions = self.partitions.take_ready();
            assert!(self.act(actions).await.is_empty());
        }
    }

    fn done(&self, topic: &str, partition: i32) -> Option<i64> {
        self.batch.done.get(&(topic.to_owned(), partition)).copied()
    }
}

fn pid(topic: &str, partition: i32) -> PartitionId {
    (topic.to_owned(), partition)
}

#[tokio::test(start_paused = true)]
async fn a_slow_lookup_holds_up_only_its_own_partition() {
    let resolver = SlowResolver {
        delay: Duration::from_secs(2),
        fail: false,
    };
    let mut stage = Stage::new(settings(""), resolver, &[pid(PARENTS, 0), pid(PLAIN, 0)]);
    let started = Instant::now();
    assert!(stage.record(change(PARENTS, 0, 0, 1)).await.is_empty());
    assert!(stage.record(tombstone(PARENTS, 0, 1)).await.is_empty());
    for offset in 0..5 {
        assert!(stage.record(change(PLAIN, 0, offset, offset)).await.is_empty());
        // Record-to-batch latency of the other partition: none.
        assert_eq!(stage.done(PLAIN, 0), Some(offset));
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "nobody waited for the lookup");
    assert_eq!(stage.done(PARENTS, 0), None, "nothing of the waiting partition yet");
    assert_eq!(stage.intake.resolving(), 1);
    assert_eq!(stage.partitions.held(), 1);

    // The lookup's task starts as soon as the stage waits for something.
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(stage.record(change(PLAIN, 0, 5, 5)).await.is_empty());
    assert_eq!(stage.done(PLAIN, 0), Some(5), "still at once, mid-lookup");
    assert!(stage.record(tombstone(PARENTS, 0, 2)).await.is_empty());
    stage.take_ready().await;
    assert_eq!(stage.done(PARENTS, 0), None, "held records wait for the lookup");

    assert!(stage.next_lookup().await.is_empty());
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(stage.done(PARENTS, 0), Some(0), "the lookup's record first");
    stage.take_ready().await;
    assert_eq!(
        stage.done(PARENTS, 0),
        Some(2),
        "then the records held behind it, in order"
    );
    assert_eq!(stage.batch.records, 9);
    let keys: Vec<String> = std::mem::take(&mut stage.batch.plan)
        .into_bumps()
        .iter()
        .map(|b| b.target.record_key(""))
        .collect();
    assert!(keys.contains(&"child:7".to_owned()), "{keys:?}");
    assert!(keys.contains(&"parent:1".to_owned()), "{keys:?}");
}

#[tokio::test(start_paused = true)]
async fn at_most_four_lookups_run_at_once() {
    let resolver = SlowResolver {
        delay: Duration::from_secs(1),
        fail: false,
    };
    let partitions: Vec<PartitionId> = (0..6).map(|n| pid(PARENTS, n)).collect();
    let mut stage = Stage::new(settings(""), resolver, &partitions);
    let started = Instant::now();
    for n in 0..6 {
        stage.record(change(PARENTS, n, 0, 1)).await;
    }
    let mut finished = Vec::new();
    for _ in 0..6 {
        stage.next_lookup().await;
        finished.push(started.elapsed().as_secs());
    }
    assert_eq!(finished, [1, 1, 1, 1, 2, 2]);
    assert_eq!(stage.batch.done.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_revoked_partitions_lookup_is_dropped_without_its_offsets() {
    let resolver = SlowResolver {
        delay: Duration::from_secs(2),
        fail: false,
    };
    let mut stage = Stage::new(settings(""), resolver, &[pid(PARENTS, 0), pid(PLAIN, 0)]);
    stage.record(change(PARENTS, 0, 0, 1)).await;
    stage.record(tombstone(PARENTS, 0, 1)).await;
    let actions = stage.partitions.revoked(&[pid(PARENTS, 0)]);
    assert!(stage.act(actions).await.is_empty());
    assert_eq!(stage.intake.resolving(), 0);
    let waited = tokio::time::timeout(Duration::from_secs(10), stage.intake.next_resolved()).await;
    assert!(waited.is_err(), "the cancelled lookup never reports");
    assert!(stage.batch.done.is_empty());
    assert_eq!(stage.partitions.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_running_lookups_at_once() {
    let resolver = SlowResolver {
        delay: Duration::from_secs(60),
        fail: false,
    };
    let mut stage = Stage::new(settings(""), resolver, &[pid(PARENTS, 0)]);
    stage.record(change(PARENTS, 0, 0, 1)).await;
    let started = Instant::now();
    stage.intake.shut_down().await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(stage.batch.done.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lookup_that_cannot_escalate_stalls_its_partition() {
    let resolver = SlowResolver {
        delay: Duration::from_millis(10),
        fail: true,
    };
    let mut stage = Stage::new(settings(""), resolver, &[pid(PARENTS, 0)]);
    stage.record(change(PARENTS, 0, 3, 1)).await;
    stage.record(tombstone(PARENTS, 0, 4)).await;
    let actions = stage.next_lookup().await;
    assert_eq!(
        actions,
        vec![ConsumerAction::Pause {
            partition: pid(PARENTS, 0),
            unapplied_from: None
        }]
    );
    let readiness = stage.status.readiness();
    let stall = &readiness.stalled_partitions[&format!("{PARENTS}/0")];
    assert_eq!(
        (stall.offset, stall.reason),
        (3, StallReason::NoNamespace(EscalationReason::LookupFailed))
    );
    stage.take_ready().await;
    assert_eq!(stage.done(PARENTS, 0), None, "nothing at or past the stall");
    let stored = stage.partitions.applied(&stage.batch.done, Vec::new());
    assert!(stored.is_empty(), "{stored:?}");
}

#[tokio::test(start_paused = true)]
async fn under_lag_a_fanout_with_a_namespace_needs_no_lookup() {
    let resolver = SlowResolver {
        delay: Duration::from_secs(2),
        fail: false,
    };
    let mut stage = Stage::new(settings("escalate_above_lag = 10"), resolver, &[pid(PARENTS, 0)]);
    stage.lag = Some(100);
    let started = Instant::now();
    stage.record(change(PARENTS, 0, 0, 1)).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(stage.done(PARENTS, 0), Some(0), "taken at once");
    assert_eq!(stage.intake.resolving(), 0);
    let keys: Vec<String> = std::mem::take(&mut stage.batch.plan)
        .into_bumps()
        .iter()
        .map(|b| b.target.record_key(""))
        .collect();
    assert_eq!(keys, ["ns:child", "ns:parent"]);
}
