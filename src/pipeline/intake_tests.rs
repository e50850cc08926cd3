//! The intake driven as the consumer stage drives it, with an injected
//! resolver and paused time: a slow lookup holds up only its own partition.

use futures::future::BoxFuture;
use serde_json::json;

use super::*;
use crate::config;
use crate::pipeline::fanout::Resolver;
use crate::pipeline::partitions::Limits;
use crate::pipeline::route_pool::{Prerouted, RoutePool};

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
        Stage::with_avro(settings, resolver, partitions, None)
    }

    fn with_avro(
        settings: Arc<Settings>,
        resolver: SlowResolver,
        partitions: &[PartitionId],
        avro: Option<Arc<AvroSchemas>>,
    ) -> Stage {
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
            intake: Intake::new(settings, false, avro, status.clone(), Arc::new(resolver)),
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

/// The Debezium envelope of `public.plain` in Avro, registered as id 7.
const AVRO_SCHEMA_ID: u32 = 7;
const AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Envelope", "namespace": "shop.public.plain", "fields": [
  {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [{"name": "id", "type": "long"}]}], "default": null},
  {"name": "after", "type": ["null", "Value"], "default": null},
  {"name": "source", "type": {"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
    {"name": "connector", "type": "string"}, {"name": "name", "type": "string"}, {"name": "schema", "type": "string"},
    {"name": "table", "type": "string"}, {"name": "lsn", "type": ["null", "long"], "default": null}]}},
  {"name": "op", "type": "string"}]}"#;

/// A created `public.plain` row in Avro with the Confluent framing.
fn avro_change(partition: i32, offset: i64, id: i64) -> KafkaRecord {
    use apache_avro::types::Value as Avro;
    let schema = apache_avro::Schema::parse_str(AVRO_SCHEMA).unwrap();
    let text = |t: &str| Avro::String(t.into());
    let datum = Avro::Record(vec![
        ("before".into(), Avro::Union(0, Box::new(Avro::Null))),
        (
            "after".into(),
            Avro::Union(1, Box::new(Avro::Record(vec![("id".into(), Avro::Long(id))]))),
        ),
        (
            "source".into(),
            Avro::Record(vec![
                ("connector".into(), text("postgresql")),
                ("name".into(), text("shop")),
                ("schema".into(), text("public")),
                ("table".into(), text("plain")),
                ("lsn".into(), Avro::Union(1, Box::new(Avro::Long(100 + offset)))),
            ]),
        ),
        ("op".into(), text("c")),
    ]);
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap();
    let mut value = vec![0];
    value.extend(AVRO_SCHEMA_ID.to_be_bytes());
    value.extend(writer.write_value_to_vec(datum).unwrap());
    KafkaRecord {
        key: None,
        value: Some(value),
        ..change(PLAIN, partition, offset, id)
    }
}

/// What the stage shows after each step: the done offset per partition,
/// the records in the batch, those held and those whose lookup runs.
type Snapshot = (Vec<(PartitionId, i64)>, usize, usize, usize);

impl Stage {
    fn snapshot(&self) -> Snapshot {
        let mut done: Vec<(PartitionId, i64)> = self.batch.done.iter().map(|(p, o)| (p.clone(), *o)).collect();
        done.sort();
        (
            done,
            self.batch.records,
            self.partitions.held(),
            self.intake.resolving(),
        )
    }

    /// Hands `records` as the consumer stage does: with no pool one by one,
    /// routed when taken; with one, routed ahead at once, then handed one
    /// by one in the order polled, each offering its route. The snapshot
    /// after each record, and which records were routed ahead.
    async fn hand(&mut self, pool: Option<&mut RoutePool>, records: Vec<KafkaRecord>) -> (Vec<Snapshot>, Vec<bool>) {
        let prerouted: Vec<Prerouted> = match pool {
            Some(pool) => pool.route(records, now_us()).await,
            None => records
                .into_iter()
                .map(|record| Prerouted { record, route: None })
                .collect(),
        };
        let ahead = prerouted.iter().map(|p| p.route.is_some()).collect();
        let mut trace = Vec::new();
        for Prerouted { record, route } in prerouted {
            if let Some(route) = route {
                self.intake.offer(&record, route);
            }
            let actions = self.partitions.record(record);
            assert!(self.act(actions).await.is_empty());
            self.intake.withdraw_offer();
            trace.push(self.snapshot());
        }
        (trace, ahead)
    }

    /// The batch's bumps: key and position, sorted.
    fn bumps(&mut self) -> Vec<(String, String)> {
        let mut bumps: Vec<(String, String)> = std::mem::take(&mut self.batch.plan)
            .into_bumps()
            .iter()
            .map(|b| (b.target.record_key(""), format!("{:?}", b.position)))
            .collect();
        bumps.sort();
        bumps
    }
}

/// Two chunks of records over five partitions, interleaved: changes with a
/// lookup (their partition's later records held behind it), tombstones,
/// plain changes, and Avro records of a schema not loaded before the first
/// chunk (loaded when its first record is taken, so routed ahead in the
/// second chunk only).
fn interleaved(chunk: i64) -> Vec<KafkaRecord> {
    let base = chunk * 6;
    (0..6)
        .flat_map(|i| {
            let offset = base + i;
            [
                if i % 3 == 0 {
                    change(PARENTS, 0, offset, offset)
                } else {
                    tombstone(PARENTS, 0, offset)
                },
                change(PLAIN, 0, offset, 100 + offset),
                if i == 2 {
                    change(PARENTS, 1, offset, offset)
                } else {
                    tombstone(PARENTS, 1, offset)
                },
                avro_change(1, offset, 200 + offset),
                change(PLAIN, 2, offset, 300 + offset),
            ]
        })
        .collect()
}

/// Runs the two chunks with or without a pool; the snapshots, which records
/// were routed ahead, and the bumps.
async fn run_interleaved(threads: Option<usize>) -> (Vec<Snapshot>, Vec<bool>, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{AVRO_SCHEMA_ID}.avsc")), AVRO_SCHEMA).unwrap();
    let avro = Arc::new(
        AvroSchemas::new(crate::decode::SchemaSources {
            schemas_dir: Some(dir.path().to_path_buf()),
            timeout: Duration::from_secs(1),
            ..crate::decode::SchemaSources::default()
        })
        .unwrap(),
    );
    let settings = settings("");
    let mut pool = threads.map(|n| RoutePool::new(n, settings.clone(), false, Some(avro.clone())).unwrap());
    let resolver = SlowResolver {
        delay: Duration::from_secs(2),
        fail: false,
    };
    let partitions = [
        pid(PARENTS, 0),
        pid(PARENTS, 1),
        pid(PLAIN, 0),
        pid(PLAIN, 1),
        pid(PLAIN, 2),
    ];
    let mut stage = Stage::with_avro(settings, resolver, &partitions, Some(avro));
    let mut trace = Vec::new();
    let mut ahead = Vec::new();
    for chunk in 0..2 {
        let (steps, routed) = stage.hand(pool.as_mut(), interleaved(chunk)).await;
        trace.extend(steps);
        ahead.extend(routed);
        // Lookups resolve, the records held behind them are taken (and may
        // start the next lookup), until none runs.
        while stage.intake.resolving() > 0 {
            assert!(stage.next_lookup().await.is_empty());
            trace.push(stage.snapshot());
            stage.take_ready().await;
            trace.push(stage.snapshot());
        }
    }
    assert_eq!(stage.partitions.held() + stage.intake.resolving(), 0);
    assert!(stage.batch.dead_letters.is_empty());
    assert!(stage.status.readiness().stalled_partitions.is_empty());
    (trace, ahead, stage.bumps())
}

#[tokio::test(start_paused = true)]
async fn records_routed_ahead_on_many_threads_go_in_as_routed_one_by_one() {
    let (inline_trace, inline_ahead, inline_bumps) = run_interleaved(None).await;
    assert!(inline_ahead.iter().all(|ahead| !ahead));
    for threads in [2, 3] {
        let (trace, ahead, bumps) = run_interleaved(Some(threads)).await;
        // Step by step the same done offsets, batch, held records and
        // lookups: each partition's records went in in the same order.
        assert_eq!(trace, inline_trace, "{threads} threads");
        assert_eq!(bumps, inline_bumps, "{threads} threads");
        // Avro records (every fifth, from the fourth) are routed ahead only
        // once their schema was loaded: in the second chunk, not the first.
        let avro_ahead: Vec<bool> = ahead.iter().skip(3).step_by(5).copied().collect();
        assert_eq!(avro_ahead, [false; 6].into_iter().chain([true; 6]).collect::<Vec<_>>());
        let json_ahead = ahead.iter().enumerate().filter(|(i, _)| i % 5 != 3);
        assert!(json_ahead.clone().all(|(_, ahead)| *ahead), "{threads} threads");
    }
    // Each partition's records all went in, in order; the Avro ones as bumps.
    let done = &inline_trace.last().unwrap().0;
    let expected: Vec<(PartitionId, i64)> = [
        pid(PARENTS, 0),
        pid(PARENTS, 1),
        pid(PLAIN, 0),
        pid(PLAIN, 1),
        pid(PLAIN, 2),
    ]
    .into_iter()
    .map(|p| (p, 11))
    .collect();
    assert_eq!(done, &expected);
    let avro_keys = inline_bumps
        .iter()
        .filter(|(key, _)| key.starts_with("plain:2"))
        .count();
    assert_eq!(avro_keys, 12, "{inline_bumps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_route_offered_for_another_record_is_not_used() {
    let resolver = SlowResolver {
        delay: Duration::from_secs(2),
        fail: false,
    };
    let mut stage = Stage::new(settings(""), resolver, &[pid(PLAIN, 0)]);
    let settings = settings("");
    // The route of a tombstone, offered for a change at another offset.
    let skip = route_with(
        &settings.graph,
        &settings.plan,
        &tombstone(PLAIN, 0, 9),
        now_us(),
        false,
        None,
    );
    assert_eq!(skip.action, Routed::Skip);
    let record = change(PLAIN, 0, 0, 5);
    stage.intake.offer(&tombstone(PLAIN, 0, 9), skip.clone());
    assert!(stage.record(record).await.is_empty());
    stage.intake.withdraw_offer();
    assert_eq!(stage.bumps().first().map(|b| b.0.as_str()), Some("plain:5"));
    // Offered for the record itself, it is used as it is.
    stage.intake.offer(&change(PLAIN, 0, 1, 6), skip);
    assert!(stage.record(change(PLAIN, 0, 1, 6)).await.is_empty());
    stage.intake.withdraw_offer();
    assert!(stage.bumps().is_empty(), "the offered skip, not a bump");
    assert_eq!(stage.done(PLAIN, 0), Some(1));
}
