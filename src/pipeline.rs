//! The daemon's main path on one screen:
//! consume -> decode -> graph -> plan (coalesce) -> apply (Redis) -> store offsets.
//!
//! One task owns the consumer, the batch and the sink, so the order of
//! events is plain to see: a batch is applied and acknowledged before its
//! offsets are stored, and a partition never stores past a record whose
//! invalidation could not be applied or escalated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::admin::{Stall, Status};
use crate::backoff::Backoff;
use crate::config::{PlanSettings, Settings};
use crate::dead_letter::{DeadLetterStore, Failure, Stage};
use crate::decode::{decode, table_from_topic, AvroSchemas, DecodeError, DecodeErrorKind, SchemaError};
use crate::event::{Decoded, KafkaRecord, Position};
use crate::graph::{
    escalate, Consistency, Derivation, EscalationReason, Graph, LookupError, LookupRequest, Lookups, Target, Why,
};
use crate::metrics::{self, Outcome};
use crate::plan::{is_moot, Bump, Plan};
use crate::sink::epoch::LossReason;
use crate::sink::notice::Notices;
use crate::sink::RedisSink;
use crate::source::{self, Consumer, PartitionId, RebalanceEvent};

/// librdkafka raised a fatal error: the client instance cannot recover.
#[derive(Debug, thiserror::Error)]
#[error("fatal kafka client error {code:?}: {reason}")]
pub struct FatalKafkaError {
    pub code: rdkafka::types::RDKafkaErrorCode,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the kafka consumer: {0}")]
    Consumer(rdkafka::error::KafkaError),
    #[error("cannot subscribe to {patterns:?}: {cause}")]
    Subscribe {
        patterns: Vec<String>,
        cause: rdkafka::error::KafkaError,
    },
}

/// What one record asks of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// Nothing to invalidate (tombstone, heartbeat, unknown table, snapshot).
    Skip,
    /// Provably moot: older than the entity's cache TTL plus the skew margin.
    Moot,
    Bump {
        targets: Vec<Target>,
        position: Position,
        commit_time_us: Option<i64>,
        consistency: Consistency,
        escalation: Option<EscalationReason>,
        /// The entity's namespace, for escalation under lag.
        namespace: Option<String>,
        /// Fan-out queries still to run; their rows add targets.
        lookups: Vec<LookupRequest>,
    },
    /// Cannot be applied or escalated: stop the partition here.
    Stall { reason: &'static str, detail: String },
}

/// The routing of one record: the op label for metrics, the action, and
/// whether the record must also be kept as a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub op: &'static str,
    pub action: Routed,
    pub dead_letter: Option<Failure>,
}

/// Decode and graph for one record; pure, so `explain`, replays and tests
/// share it. `dead_letters` says whether a dead-letter store is configured:
/// with one, a bad record of an unknown table is kept there and skipped;
/// without one it stalls, because nothing may be lost silently.
pub fn route(graph: &Graph, plan: &PlanSettings, record: &KafkaRecord, now_us: i64, dead_letters: bool) -> Route {
    route_with(graph, plan, record, now_us, dead_letters, None)
}

/// [`route`] for topics that may carry Avro: the schemas of the record's
/// ids must already be loaded (`AvroSchemas::ensure`).
pub fn route_with(
    graph: &Graph,
    plan: &PlanSettings,
    record: &KafkaRecord,
    now_us: i64,
    dead_letters: bool,
    avro: Option<&AvroSchemas>,
) -> Route {
    let size = record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
    let decoded = if size > plan.max_record_bytes {
        Err(DecodeError {
            kind: DecodeErrorKind::TooLarge,
            detail: format!("{size} bytes, above plan.max_record_bytes ({})", plan.max_record_bytes),
        })
    } else {
        decode(record, avro)
    };
    let event = match decoded {
        Ok(Decoded::Change(event)) => event,
        // Debezium never writes these to a table's own topic: on the topic
        // of a configured table, skipping could lose a change (a row whose
        // columns merely look like one of them), so it is handled as an
        // undecodable record of that table instead.
        Ok(other @ (Decoded::Heartbeat | Decoded::TransactionMetadata | Decoded::SchemaChange))
            if table_from_topic(&record.topic).is_some_and(|t| graph.entity(&t).is_some()) =>
        {
            let error = DecodeError {
                kind: DecodeErrorKind::UnexpectedShape,
                detail: format!(
                    "a {} record on the topic of a configured table; not skipped",
                    other.op_label_long()
                ),
            };
            return route_undecodable(graph, record, error, dead_letters);
        }
        Ok(other) => {
            return Route {
                op: other.op_label(),
                action: Routed::Skip,
                dead_letter: None,
            }
        }
        Err(error) => return route_undecodable(graph, record, error, dead_letters),
    };
    let op = event.op.code();
    let Some(entity) = graph.entity(&event.table) else {
        return Route {
            op,
            action: Routed::Skip,
            dead_letter: None,
        };
    };
    if is_moot(
        event.commit_time_us,
        now_us,
        entity.max_cache_ttl,
        plan.clock_skew_margin,
    ) {
        return Route {
            op,
            action: Routed::Moot,
            dead_letter: None,
        };
    }
    let render_failure = |reason: EscalationReason, detail: &str| {
        (reason == EscalationReason::Unrenderable).then(|| Failure {
            stage: Stage::Render,
            kind: "unrenderable",
            detail: detail.to_owned(),
        })
    };
    match graph.derive(&event) {
        Derivation::Skip(_) => Route {
            op,
            action: Routed::Skip,
            dead_letter: None,
        },
        Derivation::Stall { reason, detail } => Route {
            op,
            dead_letter: render_failure(reason, &detail),
            action: Routed::Stall {
                reason: reason.label(),
                detail,
            },
        },
        Derivation::Targets {
            targets,
            escalation,
            lookups,
        } => {
            let dead_letter = targets.iter().find_map(|t| match (&t.why, escalation) {
                (Why::Escalation { detail, .. }, Some(reason)) => render_failure(reason, detail),
                _ => None,
            });
            Route {
                op,
                dead_letter,
                action: Routed::Bump {
                    targets: targets.into_iter().map(|t| t.target).collect(),
                    position: event.position,
                    commit_time_us: event.commit_time_us,
                    consistency: entity.consistency,
                    escalation,
                    namespace: entity.namespace.clone(),
                    lookups,
                },
            }
        }
    }
}

/// The record says nothing trustworthy, but its topic may name the table:
/// then the whole entity is invalidated instead.
fn route_undecodable(graph: &Graph, record: &KafkaRecord, error: DecodeError, dead_letters: bool) -> Route {
    let failure = Failure {
        stage: Stage::Decode,
        kind: error.kind.label(),
        detail: error.detail.clone(),
    };
    let entity = table_from_topic(&record.topic).and_then(|t| graph.entity(&t));
    let detail = format!("undecodable record ({error})");
    let action = match entity {
        Some(entity) => match escalate(entity, Vec::new(), EscalationReason::Undecodable, detail) {
            Derivation::Targets {
                targets, escalation, ..
            } => Routed::Bump {
                targets: targets.into_iter().map(|t| t.target).collect(),
                position: Position::kafka(&record.topic, record.partition, record.offset),
                commit_time_us: None,
                consistency: entity.consistency,
                escalation,
                namespace: entity.namespace.clone(),
                lookups: Vec::new(),
            },
            Derivation::Stall { reason, detail } => Routed::Stall {
                reason: reason.label(),
                detail,
            },
            Derivation::Skip(_) => unreachable!("escalate never skips"),
        },
        // Kept as a dead letter, nothing is lost by moving on.
        None if dead_letters => Routed::Skip,
        None => Routed::Stall {
            reason: error.kind.label(),
            detail,
        },
    };
    Route {
        op: "other",
        action,
        dead_letter: Some(failure),
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset to take into a batch: one past the last record taken.
    next_offset: Option<i64>,
    stalled: bool,
    /// Paused at a record whose Avro schema the registry cannot serve now;
    /// the other partitions go on.
    waiting_schema: Option<SchemaWait>,
    /// Lag above `plan.escalate_above_lag`: namespaces instead of keys.
    escalating: bool,
    /// The last offset stored for commit (next to consume), for the gauge.
    stored_offset: Option<i64>,
}

impl PartitionState {
    /// Stopped at a record of its own (a stall or a schema wait), so it stays
    /// paused when an outage of the whole pipeline ends.
    fn held(&self) -> bool {
        self.stalled || self.waiting_schema.is_some()
    }
}

/// A partition parked at `offset` until the registry serves `ids`.
#[derive(Debug)]
struct SchemaWait {
    offset: i64,
    ids: Vec<u32>,
    retry_at: Instant,
    backoff: Backoff,
}

/// Records taken since the last flush, and what they ask of Redis.
#[derive(Default)]
struct Batch {
    plan: Plan,
    /// Written durably before anything of the batch is acknowledged.
    dead_letters: Vec<(KafkaRecord, Failure)>,
    /// Per partition, the highest offset whose work is in this batch.
    done: HashMap<PartitionId, i64>,
    /// Kafka timestamps of the records whose bumps are in this batch, for
    /// the apply latency (bounded by the batch's record budget).
    record_times_ms: Vec<i64>,
    records: usize,
    bytes: usize,
    flush_at: Option<Instant>,
}

impl Batch {
    fn take_until(&mut self, at: Instant) {
        self.flush_at = Some(self.flush_at.map_or(at, |t| t.min(at)));
    }
}

// How long a due batch may keep taking records that are already fetched:
// bounds the latency a strong entity pays for batching under load.
const MAX_DRAIN: Duration = Duration::from_millis(5);
// The loop wakes at least this often to refresh gauges and readiness.
const TICK: Duration = Duration::from_secs(1);
// First retry delay after a failed write; doubles up to max_retry_backoff.
// How long a shutdown may spend on its final apply and commit.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
// How long a shutdown waits for the final synchronous commit: a commit to a
// healthy group takes milliseconds; past this it is stuck in a rebalance or
// an outage, and what it would commit is at most a second of auto-commits.
pub const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a batch waits on while it retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dependency {
    Redis,
    DeadLetters,
}

/// The optional parts a config may enable.
#[derive(Default)]
pub struct Services {
    pub dead_letters: Option<DeadLetterStore>,
    pub lookups: Option<Lookups>,
    pub avro: Option<Arc<AvroSchemas>>,
    pub notices: Option<Arc<Notices>>,
}

pub struct Pipeline {
    settings: Arc<Settings>,
    /// Shared with the gauge refresher, which asks the broker for the high
    /// watermarks of paused partitions.
    consumer: Arc<Consumer>,
    sink: RedisSink,
    dead_letters: Option<DeadLetterStore>,
    lookups: Option<Lookups>,
    avro: Option<Arc<AvroSchemas>>,
    notices: Option<Arc<Notices>>,
    status: Arc<Status>,
    partitions: HashMap<PartitionId, PartitionState>,
    /// Set while Redis or the dead-letter store is unreachable: every
    /// partition is paused and Kafka holds the backlog.
    paused_for_outage: bool,
    /// Every namespace of the graph: all are bumped when Redis lost writes.
    namespaces: Vec<String>,
}

impl Pipeline {
    pub fn new(
        settings: Arc<Settings>,
        mut sink: RedisSink,
        services: Services,
        status: Arc<Status>,
    ) -> Result<Pipeline, RunError> {
        let consumer = source::consumer(&settings.source, &settings.plan).map_err(RunError::Consumer)?;
        let patterns = settings.source.subscription.patterns();
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(|cause| RunError::Subscribe {
            patterns: patterns.clone(),
            cause,
        })?;
        status.redis_ok();
        sink.enable_loss_detection();
        let namespaces = all_namespaces(&settings);
        Ok(Pipeline {
            settings,
            consumer: Arc::new(consumer),
            sink,
            dead_letters: services.dead_letters,
            lookups: services.lookups,
            avro: services.avro,
            notices: services.notices,
            status,
            partitions: HashMap::new(),
            paused_for_outage: false,
            namespaces,
        })
    }

    /// Runs until shutdown; Err when the Kafka client failed fatally (the
    /// process should exit non-zero so its supervisor starts a new one).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), FatalKafkaError> {
        let refresher_stop = CancellationToken::new();
        let refresher = tokio::spawn(refresh_gauges(
            self.consumer.clone(),
            self.status.clone(),
            refresher_stop.clone(),
        ));
        metrics::build_info();
        // Every gauge exists from the start, so none is missing during an
        // outage that begins before the first tick.
        metrics::in_flight(0);
        metrics::progress(now_us() as f64 / 1e6);
        self.refresh_paused_gauge();
        let mut batch = Batch::default();
        let mut next_tick = Instant::now() + TICK;
        // Before anything is applied: did Redis lose writes while no daemon watched?
        if self.check_loss(&shutdown).await.is_err() {
            self.shut_down(batch).await;
            return Ok(());
        }
        let mut fatal = None;
        let loss_interval = self.settings.redis.loss_check_interval;
        let mut next_loss_check = Instant::now() + loss_interval;
        loop {
            let now = Instant::now();
            let wake = batch.flush_at.unwrap_or(next_tick).min(next_tick);
            let mut took_record = false;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = tokio::time::timeout(wake.saturating_duration_since(now), self.consumer.recv()) => {
                    let record = match received {
                        Ok(Ok(message)) => Some(source::to_record(&message)),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "kafka consumer error");
                            None
                        }
                        Err(_elapsed) => None,
                    };
                    self.handle_rebalances(&mut batch);
                    if let Some(record) = record {
                        took_record = true;
                        if self.take(record, &mut batch).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let now = Instant::now();
            // The in-flight budget: a full batch is applied before more is
            // consumed, so memory stays bounded whatever the backlog.
            let full = batch.records >= self.settings.plan.max_batch_records
                || batch.bytes >= self.settings.plan.max_batch_bytes;
            // A due batch still takes the records that are already waiting
            // (one Redis round trip for many), but for at most MAX_DRAIN.
            let due = batch
                .flush_at
                .is_some_and(|t| t <= now && (!took_record || now - t >= MAX_DRAIN));
            // Abandoned only at shutdown: the drain below handles what is left.
            if (full || due) && self.flush(&mut batch, &shutdown).await.is_err() {
                break;
            }
            if now >= next_tick {
                // A fatal librdkafka error (a fenced static member, for one)
                // leaves the consumer unusable for good: the process must end.
                if let Some((code, reason)) = self.consumer.client().fatal_error() {
                    tracing::error!(?code, %reason, "fatal kafka client error: the consumer cannot go on; exiting with status 1 so a supervisor starts a new process");
                    fatal = Some(FatalKafkaError { code, reason });
                    break;
                }
                self.retry_schema_waits().await;
                self.tick(&batch);
                next_tick = now + TICK;
            }
            if now >= next_loss_check {
                if self.check_loss(&shutdown).await.is_err() {
                    break;
                }
                next_loss_check = Instant::now() + loss_interval;
            }
        }
        self.shut_down(batch).await;
        refresher_stop.cancel();
        let _ = refresher.await;
        fatal.map_or(Ok(()), Err)
    }

    /// The periodic look at the epoch record; an unreachable Redis is left to
    /// the readiness probe and the next apply.
    async fn check_loss(&mut self, shutdown: &CancellationToken) -> Result<(), Abandoned> {
        match self.sink.check_loss().await {
            Ok(Some(reason)) => self.recover_from_loss(reason, shutdown).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "loss check failed; retried at the next one");
                Ok(())
            }
        }
    }

    /// Redis lost acknowledged writes: make every possibly-stale data key
    /// unreachable (epoch, then every namespace) before anything else is
    /// applied; retried like any write until Redis takes it.
    async fn recover_from_loss(&mut self, reason: LossReason, shutdown: &CancellationToken) -> Result<(), Abandoned> {
        metrics::redis_data_loss(reason.label());
        let previous = self.sink.current_epoch().unwrap_or("0").to_owned();
        if reason == LossReason::Missing && !self.sink.has_seen_epoch() {
            tracing::warn!(
                record = %crate::sink::epoch::epoch_record(self.sink.prefix()),
                "no epoch record: this redis is used for the first time, or it lost all data; bumping the epoch and every namespace"
            );
        } else {
            tracing::error!(
                reason = reason.label(), previous_epoch = %previous, namespaces = self.namespaces.len(),
                "redis lost acknowledged writes; bumping the epoch and every namespace before applying anything else"
            );
        }
        let mut backoff = Backoff::new(self.settings.redis.max_retry_backoff);
        loop {
            match self.sink.recover(&self.namespaces).await {
                Ok(epoch) => {
                    self.status.redis_ok();
                    tracing::info!(%epoch, namespaces = self.namespaces.len(), "epoch advanced: data keys cached before the loss are unreachable");
                    break;
                }
                Err(error) => {
                    self.outage(Dependency::Redis, error.kind_label(), &error.to_string());
                    if self.wait_polling(backoff.next_delay(), shutdown).await.is_err() {
                        tracing::error!("shutdown before the epoch could be advanced after a redis data loss; the next run's check finds it again only if the record is still behind");
                        return Err(Abandoned);
                    }
                }
            }
        }
        if self.paused_for_outage {
            self.resume_after_outage();
        }
        Ok(())
    }

    /// Routes one record into the batch, or stalls its partition.
    async fn take(&mut self, record: KafkaRecord, batch: &mut Batch) -> Result<(), Abandoned> {
        let partition: PartitionId = (record.topic.clone(), record.partition);
        let lag = self.consumer.context().lag(&partition);
        if self.paused_for_outage || self.partitions.get(&partition).is_some_and(PartitionState::held) {
            // Fetched before the pause took effect; it is fetched again after a
            // restart (stall) or the seek on resume (outage, schema wait).
            return Ok(());
        }
        if let Err((ids, error)) = self.load_schemas(&record).await {
            self.wait_for_schemas(partition, record.offset, ids, error);
            return Ok(());
        }
        let state = self.partitions.entry(partition.clone()).or_default();
        state.next_offset = Some(record.offset + 1);
        if let (Some(threshold), Some(lag)) = (self.settings.plan.escalate_above_lag, lag) {
            if !state.escalating && lag > threshold {
                state.escalating = true;
                tracing::warn!(topic = %partition.0, partition = partition.1, lag, threshold,
                    "lag above plan.escalate_above_lag: bumping namespaces instead of keys until it recovers");
            } else if state.escalating && lag < threshold / 2 {
                state.escalating = false;
                tracing::info!(topic = %partition.0, partition = partition.1, lag, "lag recovered: back to per-key bumps");
            }
        }
        let escalating = state.escalating;
        let Route {
            op,
            action,
            dead_letter,
        } = route_with(
            &self.settings.graph,
            &self.settings.plan,
            &record,
            now_us(),
            self.dead_letters.is_some(),
            self.avro.as_deref(),
        );
        let mut dead_lettered = false;
        if let Some(failure) = dead_letter {
            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset,
                stage = failure.stage.label(), kind = failure.kind, detail = %failure.detail, "bad record");
            if self.dead_letters.is_some() {
                batch.dead_letters.push((record.clone(), failure));
                dead_lettered = true;
            }
        }
        // A dead letter is an outcome of its own, whatever else became of the
        // record (an escalation is still counted by reason).
        let outcome = |other| if dead_lettered { Outcome::DeadLetter } else { other };
        let stalled = match action {
            Routed::Skip => {
                metrics::event(op, outcome(Outcome::Skipped));
                None
            }
            Routed::Moot => {
                metrics::event(op, outcome(Outcome::Moot));
                metrics::moot();
                None
            }
            Routed::Bump {
                mut targets,
                position,
                commit_time_us,
                consistency,
                mut escalation,
                namespace,
                lookups,
            } => {
                if let (true, None, Some(ns)) = (escalating, escalation, namespace) {
                    // Coalesces in the plan to one bump per entity per batch.
                    targets = vec![Target::Namespace(ns)];
                    escalation = Some(EscalationReason::Lag);
                }
                let fanout = self.fan_out(&lookups, escalating, &mut targets).await;
                if let Ok(Some(reason)) = fanout {
                    escalation.get_or_insert(reason);
                }
                for target in targets {
                    batch.plan.add(target, &position, commit_time_us);
                }
                if let Some(timestamp_ms) = record.timestamp_ms {
                    batch.record_times_ms.push(timestamp_ms);
                }
                match escalation {
                    Some(reason) => {
                        metrics::event(op, outcome(Outcome::Escalated));
                        metrics::escalation(reason.label());
                        if reason != EscalationReason::Lag {
                            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset,
                                reason = reason.label(), "escalated to the namespace: exact keys could not be derived");
                        }
                    }
                    None => metrics::event(op, outcome(Outcome::Applied)),
                }
                let linger = match consistency {
                    Consistency::Strong => Duration::ZERO,
                    Consistency::Eventual => self.settings.plan.eventual_linger,
                };
                batch.take_until(Instant::now() + linger);
                fanout.err()
            }
            Routed::Stall { reason, detail } => Some((reason, detail)),
        };
        if let Some((reason, detail)) = stalled {
            self.stall(&record, reason, detail);
            return Ok(());
        }
        batch.done.insert(partition, record.offset);
        batch.records += 1;
        batch.bytes += record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
        if batch.flush_at.is_none() {
            // Skipped records still need their offsets stored soon.
            batch.take_until(Instant::now() + self.settings.plan.eventual_linger);
        }
        Ok(())
    }

    /// Stops `record`'s partition at the record: nothing at or past it is
    /// committed until an operator acts (architecture 4.3, never silent).
    fn stall(&mut self, record: &KafkaRecord, reason: &'static str, detail: String) {
        let partition: PartitionId = (record.topic.clone(), record.partition);
        let state = self.partitions.entry(partition.clone()).or_default();
        state.stalled = true;
        state.next_offset = Some(record.offset);
        tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, reason, %detail,
            "partition stalled: this invalidation cannot be applied, escalated or dead-lettered; nothing past it will be committed");
        self.pause(std::slice::from_ref(&partition));
        self.status.stall(
            format!("{}/{}", record.topic, record.partition),
            Stall {
                offset: record.offset,
                reason,
                detail,
            },
        );
    }

    /// Loads the Avro schemas a framed record names. An unknown or bad id is
    /// left to decoding (a dead letter); when the registry cannot answer, the
    /// ids it owes are returned with the error, and only this record's
    /// partition waits for them (JSON partitions and Avro ones whose schemas
    /// are cached go on).
    async fn load_schemas(&self, record: &KafkaRecord) -> Result<(), (Vec<u32>, String)> {
        let Some(avro) = self.avro.clone() else { return Ok(()) };
        let ids: Vec<u32> = [record.key.as_deref(), record.value.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(crate::decode::schema_id)
            .collect();
        ensure_schemas(&avro, &ids).await.map_err(|error| (ids, error))
    }

    /// Parks a partition at the record whose schemas the registry owes: it
    /// is paused there, nothing past it is committed, and the schemas are
    /// asked for again with capped backoff (retry_schema_waits).
    fn wait_for_schemas(&mut self, partition: PartitionId, offset: i64, ids: Vec<u32>, error: String) {
        tracing::warn!(topic = %partition.0, partition = partition.1, offset, schema_ids = ?ids, %error,
            "schema registry unreachable: this partition waits at the record (nothing past it is committed); the others go on");
        self.status.registry_failed(error);
        let state = self.partitions.entry(partition.clone()).or_default();
        state.next_offset = Some(offset);
        let mut backoff = Backoff::new(self.settings.redis.max_retry_backoff);
        state.waiting_schema = Some(SchemaWait {
            offset,
            ids,
            retry_at: Instant::now() + backoff.next_delay(),
            backoff,
        });
        self.pause(std::slice::from_ref(&partition));
    }

    /// Asks the registry again for the schemas waiting partitions owe; a
    /// partition whose schemas are all in hand resumes at its parked record.
    async fn retry_schema_waits(&mut self) {
        let Some(avro) = self.avro.clone() else { return };
        let now = Instant::now();
        let due: Vec<(PartitionId, Vec<u32>)> = self
            .partitions
            .iter()
            .filter_map(|(p, s)| {
                s.waiting_schema
                    .as_ref()
                    .filter(|w| w.retry_at <= now)
                    .map(|w| (p.clone(), w.ids.clone()))
            })
            .collect();
        for (partition, ids) in due {
            let outcome = ensure_schemas(&avro, &ids).await;
            let Some(state) = self.partitions.get_mut(&partition) else {
                continue;
            };
            match outcome {
                Err(error) => {
                    if let Some(wait) = state.waiting_schema.as_mut() {
                        wait.retry_at = Instant::now() + wait.backoff.next_delay();
                    }
                    tracing::debug!(topic = %partition.0, partition = partition.1, %error, "schema registry still unreachable");
                    self.status.registry_failed(error);
                }
                Ok(()) => {
                    let Some(wait) = state.waiting_schema.take() else {
                        continue;
                    };
                    if !state.stalled && !self.paused_for_outage {
                        self.resume_at(&partition, wait.offset);
                    }
                    tracing::info!(topic = %partition.0, partition = partition.1, offset = wait.offset,
                        "schemas loaded: the partition resumes at the record that waited");
                }
            }
        }
        if !self.partitions.values().any(|s| s.waiting_schema.is_some()) {
            self.status.registry_ok();
        }
        self.refresh_paused_gauge();
    }

    /// Resumes one paused partition from `offset` (fetched again from Kafka).
    fn resume_at(&self, (topic, partition): &PartitionId, offset: i64) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(%topic, partition, error = %e, "resuming a partition failed");
        }
        self.consumer.context().mark_resumed(&(topic.clone(), *partition));
        if let Err(e) = self
            .consumer
            .seek(topic, *partition, Offset::Offset(offset), Duration::from_secs(5))
        {
            tracing::warn!(%topic, partition, offset, error = %e, "seek on resume failed");
        }
    }

    /// Runs the event's fan-out lookups and adds the children they name.
    /// Returns the escalation it had to make, or the stall when a lookup
    /// cannot be completed and its rule declares no namespace.
    async fn fan_out(
        &self,
        requests: &[LookupRequest],
        escalating: bool,
        targets: &mut Vec<Target>,
    ) -> Result<Option<EscalationReason>, (&'static str, String)> {
        let mut escalation = None;
        for request in requests {
            let Some(fanout) = self
                .settings
                .graph
                .entity(&request.table)
                .and_then(|e| e.fanouts.get(request.fanout))
            else {
                continue;
            };
            if let (true, Some(ns)) = (escalating, &fanout.namespace) {
                // Under lag the children's namespace replaces the query.
                targets.push(Target::Namespace(ns.clone()));
                escalation.get_or_insert(EscalationReason::Lag);
                continue;
            }
            let outcome = match &self.lookups {
                Some(lookups) => lookups.run(fanout, &request.binds).await,
                None => Err(LookupError::Failed {
                    attempts: 0,
                    detail: "no [lookup] database configured".into(),
                }),
            };
            let problem = match outcome {
                Ok(rows) => {
                    let mut unrenderable = None;
                    for row in &rows {
                        for template in &fanout.keys {
                            match template.render(row) {
                                Ok(Some(key)) => targets.push(Target::Key(key)),
                                Ok(None) => {}
                                Err(e) => {
                                    unrenderable = Some(format!("fan-out row, template {:?}: {e}", template.text()))
                                }
                            }
                        }
                    }
                    unrenderable.map(|detail| (EscalationReason::Unrenderable, detail))
                }
                Err(e @ LookupError::OverLimit { .. }) => Some((
                    EscalationReason::FanoutLimit,
                    format!("fan-out {:?}: {e}", fanout.query),
                )),
                Err(e @ LookupError::Failed { .. }) => Some((
                    EscalationReason::LookupFailed,
                    format!("fan-out {:?}: {e}", fanout.query),
                )),
            };
            if let Some((reason, detail)) = problem {
                match &fanout.namespace {
                    Some(ns) => {
                        tracing::warn!(reason = reason.label(), %detail, namespace = %ns, "fan-out escalated to its namespace");
                        targets.push(Target::Namespace(ns.clone()));
                        escalation.get_or_insert(reason);
                    }
                    None => {
                        return Err((
                            reason.label(),
                            format!("{detail}; the fan-out declares no namespace to escalate to"),
                        ))
                    }
                }
            }
        }
        targets.sort();
        targets.dedup();
        Ok(escalation)
    }

    /// Writes the batch's dead letters, applies its bumps (retrying while a
    /// dependency is unreachable), then stores its offsets.
    async fn flush(&mut self, batch: &mut Batch, shutdown: &CancellationToken) -> Result<(), Abandoned> {
        let mut taken = std::mem::take(batch);
        // In flight until Redis acknowledges, however long an outage lasts.
        metrics::in_flight(taken.records);
        metrics::coalesced(taken.plan.coalesced());
        if let Some(store) = self.dead_letters.clone() {
            for (record, failure) in &taken.dead_letters {
                let mut backoff = Backoff::new(self.settings.redis.max_retry_backoff);
                loop {
                    match store.write(record, failure).await {
                        Ok(()) => {
                            metrics::dead_letter(failure.stage.label(), failure.kind);
                            self.status.dead_letters_ok();
                            break;
                        }
                        Err(error) if error.is_data_error() => {
                            // The store is up and refused this row: retrying
                            // cannot help and is no outage. Only this record's
                            // partition stops, just before it.
                            self.status.dead_letters_ok();
                            let partition = (record.topic.clone(), record.partition);
                            match record.offset.checked_sub(1) {
                                Some(before) if before >= 0 => {
                                    let done = taken.done.entry(partition).or_insert(before);
                                    *done = (*done).min(before);
                                }
                                _ => {
                                    taken.done.remove(&partition);
                                }
                            }
                            self.stall(
                                record,
                                "dead_letter_refused",
                                format!("the dead-letter store refused the record ({error})"),
                            );
                            break;
                        }
                        Err(error) => {
                            self.outage(Dependency::DeadLetters, "unreachable", &error.to_string());
                            if self.wait_polling(backoff.next_delay(), shutdown).await.is_err() {
                                tracing::warn!("shutdown while the dead-letter store is unreachable: nothing committed past the record");
                                return Err(Abandoned);
                            }
                        }
                    }
                }
            }
        }
        let bumps = taken.plan.into_bumps();
        let mut backoff = Backoff::new(self.settings.redis.max_retry_backoff);
        while !bumps.is_empty() {
            let started = Instant::now();
            match self.sink.apply(&bumps).await {
                Ok(results) => {
                    metrics::redis_apply(started.elapsed().as_secs_f64(), bumps.len());
                    record_results(&bumps, &results);
                    self.status.redis_ok();
                    self.announce(&bumps, &results).await;
                    break;
                }
                Err(error) => {
                    self.outage(Dependency::Redis, error.kind_label(), &error.to_string());
                    if self.wait_polling(backoff.next_delay(), shutdown).await.is_err() {
                        tracing::warn!(targets = bumps.len(), "shutdown during a redis outage: the unapplied batch is left to the next run (nothing committed past it)");
                        return Err(Abandoned);
                    }
                }
            }
        }
        let acknowledged_ms = now_us() / 1000;
        for timestamp_ms in &taken.record_times_ms {
            metrics::apply_latency((acknowledged_ms - timestamp_ms).max(0) as f64 / 1e3);
        }
        if let Some(reason) = self.sink.take_loss() {
            // This batch's bumps are in Redis; what Redis forgot before them
            // is covered by the epoch before the next batch is applied.
            self.recover_from_loss(reason, shutdown).await?;
        }
        if self.paused_for_outage {
            self.resume_after_outage();
        }
        self.store_offsets(&taken.done);
        Ok(())
    }

    /// Notices of the applied bumps: Pub/Sub inline (one round trip), Kafka
    /// in the background. Best effort: failures are counted, not retried.
    async fn announce(&mut self, bumps: &[Bump], results: &[crate::sink::BumpResult]) {
        let Some(notices) = self.notices.clone() else { return };
        let list = Notices::of(self.sink.prefix(), bumps, results);
        if list.is_empty() {
            return;
        }
        if let Some(channel) = notices.redis_channel() {
            match self.sink.publish(channel, &list).await {
                Ok(()) => list.iter().for_each(|_| metrics::notice_sent("redis")),
                Err(e) => {
                    list.iter().for_each(|_| metrics::notice_failed("redis"));
                    tracing::warn!(error = %e, "notices not published on redis");
                }
            }
        }
        tokio::spawn(async move { notices.publish_kafka(&list).await });
    }

    fn outage(&mut self, dependency: Dependency, kind: &'static str, error: &str) {
        match dependency {
            Dependency::Redis => {
                metrics::redis_error(kind);
                self.status.redis_failed(error.to_owned());
            }
            Dependency::DeadLetters => self.status.dead_letters_failed(error.to_owned()),
        }
        if !self.paused_for_outage {
            tracing::warn!(?dependency, %error, "write failed; pausing consumption and retrying (nothing is committed meanwhile)");
            self.paused_for_outage = true;
            let all: Vec<PartitionId> = self.partitions.keys().cloned().collect();
            self.pause(&all);
        } else {
            tracing::debug!(?dependency, %error, "write failed again");
        }
    }

    /// Sleeps while keeping the consumer polled, so the group keeps us and
    /// rebalances are served; records that still arrive are dropped and
    /// fetched again by the seek on resume.
    async fn wait_polling(&mut self, delay: Duration, shutdown: &CancellationToken) -> Result<(), Abandoned> {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(Abandoned),
                _ = &mut deadline => return Ok(()),
                received = self.consumer.recv() => {
                    if let Ok(message) = received {
                        let partition = (rdkafka::Message::topic(&message).to_owned(), rdkafka::Message::partition(&message));
                        let offset = rdkafka::Message::offset(&message);
                        let state = self.partitions.entry(partition).or_default();
                        state.next_offset.get_or_insert(offset);
                    }
                    let mut ignored = Batch::default();
                    self.handle_rebalances(&mut ignored);
                }
            }
        }
    }

    fn resume_after_outage(&mut self) {
        self.paused_for_outage = false;
        let mut resume = TopicPartitionList::new();
        for (id @ (topic, partition), state) in &self.partitions {
            if !state.held() {
                resume.add_partition(topic, *partition);
                self.consumer.context().mark_resumed(id);
            }
        }
        if let Err(e) = self.consumer.resume(&resume) {
            tracing::warn!(error = %e, "resume after the redis outage failed");
        }
        for ((topic, partition), state) in &self.partitions {
            if let (false, Some(offset)) = (state.held(), state.next_offset) {
                if let Err(e) = self
                    .consumer
                    .seek(topic, *partition, Offset::Offset(offset), Duration::from_secs(5))
                {
                    tracing::warn!(%topic, partition, offset, error = %e, "seek after the redis outage failed");
                }
            }
        }
        self.refresh_paused_gauge();
        tracing::info!("redis reachable again; consumption resumed");
    }

    fn pause(&self, partitions: &[PartitionId]) {
        let mut tpl = TopicPartitionList::new();
        for id @ (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
            let unapplied_from = self.partitions.get(id).and_then(|s| s.stored_offset);
            self.consumer.context().mark_paused(id.clone(), unapplied_from);
        }
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(error = %e, "pausing partitions failed");
        }
        self.refresh_paused_gauge();
    }

    fn refresh_paused_gauge(&self) {
        let paused = if self.paused_for_outage {
            self.partitions.len()
        } else {
            self.partitions.values().filter(|s| s.held()).count()
        };
        metrics::paused_partitions(paused);
    }

    fn store_offsets(&mut self, done: &HashMap<PartitionId, i64>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in done {
            // A partition revoked since it was taken is someone else's now;
            // its new owner resumes from the last commit, which is safe.
            let Some(state) = self.partitions.get_mut(&(topic.clone(), *partition)) else {
                continue;
            };
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
                .is_ok()
            {
                state.stored_offset = Some(offset + 1);
                metrics::stored_offset(topic, *partition, offset + 1);
            }
        }
        if tpl.count() > 0 {
            match self.consumer.store_offsets(&tpl) {
                Ok(()) => metrics::progress(now_us() as f64 / 1e6),
                Err(e) => {
                    tracing::warn!(error = %e, "storing offsets failed; they are stored again after the next batch")
                }
            }
        }
    }

    fn handle_rebalances(&mut self, batch: &mut Batch) {
        for event in self.consumer.context().drain_events() {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    for p in partitions {
                        // Work already taken stays in the plan (a bump is
                        // harmless to repeat) but its offsets are abandoned.
                        batch.done.remove(&p);
                        self.partitions.remove(&p);
                        self.status.unstall(&format!("{}/{}", p.0, p.1));
                    }
                }
                RebalanceEvent::Assigned(partitions) => {
                    for p in &partitions {
                        self.partitions.insert(p.clone(), PartitionState::default());
                    }
                    if self.paused_for_outage {
                        self.pause(&partitions);
                    }
                }
            }
        }
        self.status.set_assigned(self.partitions.len());
    }

    fn tick(&self, batch: &Batch) {
        metrics::in_flight(batch.records);
        if batch.records == 0 && !self.paused_for_outage {
            // Nothing consumed is waiting: the daemon is keeping up.
            metrics::progress(now_us() as f64 / 1e6);
        }
        self.status.readiness();
    }

    async fn shut_down(mut self, mut batch: Batch) {
        tracing::info!(records = batch.records, "stopping: draining the last batch");
        let drained = tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, async {
            // Not the shutdown token (already cancelled, it would give up at
            // the first failed write): a failing write may be retried for
            // half the budget, then nothing past it is committed.
            let once = CancellationToken::new();
            let cancel_soon = once.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SHUTDOWN_DRAIN_TIMEOUT / 2).await;
                cancel_soon.cancel();
            });
            self.flush(&mut batch, &once).await
        })
        .await;
        if !matches!(drained, Ok(Ok(()))) {
            tracing::warn!("final batch not applied; its offsets are not committed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.forget_watermark()).await;
        // A synchronous commit can block for a whole rebalance (34.5 s seen,
        // then IllegalGeneration): it runs on its own thread and the stop
        // waits for it at most SHUTDOWN_COMMIT_TIMEOUT. The consumer is
        // closed on that thread too, so a hung close cannot hold the exit.
        let consumer = self.consumer;
        let (done, committed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = done.send(consumer.commit_consumer_state(CommitMode::Sync));
            drop(consumer);
        });
        match tokio::time::timeout(SHUTDOWN_COMMIT_TIMEOUT, committed).await {
            Ok(Ok(Ok(()))) => tracing::info!("final offsets committed"),
            // librdkafka reports "nothing stored since the last commit" as an error.
            Ok(Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)))) => {
                tracing::info!("final commit: nothing new to commit")
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "final commit failed; the next run replays from the last commit")
            }
            Ok(Err(_)) => {
                tracing::warn!("final commit thread ended without an answer; the next run replays from the last commit")
            }
            Err(_) => tracing::warn!(
                timeout = ?SHUTDOWN_COMMIT_TIMEOUT,
                "final commit did not finish in time; stopping anyway: the next owner replays from the last commit (the auto-commit at most a second older), which the guard makes harmless"
            ),
        }
    }
}

#[derive(Debug)]
struct Abandoned;

/// Loads every schema id once each; Err carries the registry's outage.
async fn ensure_schemas(avro: &AvroSchemas, ids: &[u32]) -> Result<(), String> {
    for &id in ids {
        match avro.ensure(id).await {
            Ok(()) => {}
            Err(SchemaError::Unavailable(error)) => return Err(error),
            Err(permanent) => {
                // Decoding turns the record into a dead letter that says why.
                tracing::warn!(schema_id = id, error = %permanent, "schema cannot be loaded; the record becomes a dead letter");
            }
        }
    }
    Ok(())
}

/// Re-sets every gauge on a timer of its own, so that they stay true (and
/// present) while the apply loop waits on an outage or a hung call, and
/// measures the lag of paused partitions against the broker's high
/// watermark, which the statistics of a paused partition no longer follow.
async fn refresh_gauges(consumer: Arc<Consumer>, status: Arc<Status>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(metrics::GAUGE_REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        for (partition, unapplied_from) in consumer.context().paused_partitions() {
            let Some(unapplied_from) = unapplied_from else { continue };
            let asking = consumer.clone();
            let (topic, id) = partition.clone();
            // fetch_watermarks blocks on a broker round trip.
            let answer =
                tokio::task::spawn_blocking(move || asking.fetch_watermarks(&topic, id, WATERMARK_TIMEOUT)).await;
            match answer {
                Ok(Ok((_low, high))) => consumer.context().set_paused_lag(&partition, high - unapplied_from),
                Ok(Err(e)) => tracing::debug!(topic = %partition.0, partition = partition.1, error = %e,
                    "high watermark of a paused partition not available"),
                Err(e) => tracing::debug!(error = %e, "watermark query task failed"),
            }
        }
        status.readiness();
        metrics::refresh_gauges();
    }
}

// A broker that does not answer within this is asked again at the next refresh.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// How many namespaces a loss recovery bumps.
pub fn namespace_count(settings: &Settings) -> usize {
    all_namespaces(settings).len()
}

/// Every namespace an entity or a fan-out declares, once each.
fn all_namespaces(settings: &Settings) -> Vec<String> {
    let mut namespaces: Vec<String> = settings
        .graph
        .entities()
        .iter()
        .flat_map(|e| {
            e.namespace
                .iter()
                .chain(e.fanouts.iter().filter_map(|f| f.namespace.as_ref()))
        })
        .cloned()
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

fn record_results(bumps: &[Bump], results: &[crate::sink::BumpResult]) {
    let now = now_us();
    let mut counts: HashMap<(&'static str, bool), u64> = HashMap::new();
    for (bump, result) in bumps.iter().zip(results) {
        *counts.entry((bump.target.kind_label(), result.applied)).or_default() += 1;
        if result.applied {
            if let Some(commit) = bump.commit_time_us {
                metrics::propagation((now - commit).max(0) as f64 / 1e6);
            }
        }
    }
    for ((kind, applied), count) in counts {
        metrics::targets(kind, applied, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use serde_json::json;

    fn settings() -> Settings {
        let text = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["shop.public.products"]
[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"
[[entity]]
table = "public.products"
namespace = "product"
consistency = "strong"
max_cache_ttl = "10m"
keys = ["product:{id}"]
[[entity]]
table = "public.plain"
keys = ["plain:{id}"]
"#;
        config::parse("t.toml", text, &|_| None).unwrap()
    }

    fn record(topic: &str, value: &[u8]) -> KafkaRecord {
        KafkaRecord {
            topic: topic.into(),
            partition: 0,
            offset: 9,
            key: None,
            value: Some(value.to_vec()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn undecodable_record_of_known_table_escalates_and_is_dead_lettered() {
        let s = settings();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", b"{oops"),
            now_us(),
            true,
        );
        assert_eq!(
            r.dead_letter.as_ref().map(|f| (f.stage, f.kind)),
            Some((Stage::Decode, "malformed"))
        );
        match r.action {
            Routed::Bump {
                targets,
                position,
                escalation,
                ..
            } => {
                assert_eq!(targets, vec![Target::Namespace("product".into())]);
                assert_eq!(position, Position::kafka("shop.public.products", 0, 9));
                assert_eq!(escalation, Some(EscalationReason::Undecodable));
            }
            other => panic!("expected an escalation, got {other:?}"),
        }
    }

    #[test]
    fn undecodable_record_without_namespace_stalls() {
        let s = settings();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.plain", b"{oops"),
            now_us(),
            true,
        );
        assert!(
            matches!(
                r.action,
                Routed::Stall {
                    reason: "undecodable",
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(r.dead_letter.is_some());
    }

    #[test]
    fn undecodable_record_of_unknown_table_is_dead_lettered_or_stalls() {
        let s = settings();
        let with_store = route(&s.graph, &s.plan, &record("elsewhere", b"{oops"), now_us(), true);
        assert_eq!(with_store.action, Routed::Skip);
        assert!(with_store.dead_letter.is_some());
        let without = route(&s.graph, &s.plan, &record("elsewhere", b"{oops"), now_us(), false);
        assert!(
            matches!(
                without.action,
                Routed::Stall {
                    reason: "malformed",
                    ..
                }
            ),
            "{without:?}"
        );
    }

    #[test]
    fn oversized_record_is_not_parsed() {
        let mut s = settings();
        s.plan.max_record_bytes = 10;
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &[b'x'; 11]),
            now_us(),
            true,
        );
        assert_eq!(r.dead_letter.map(|f| f.kind), Some("too_large"));
    }

    #[test]
    fn unrenderable_value_is_dead_lettered_and_escalated() {
        let s = settings();
        let value = serde_json::to_vec(
            &json!({"op": "c", "after": {"id": {"nested": 1}}, "source": {"connector": "postgresql",
            "name": "shop", "schema": "public", "table": "products", "lsn": 5}}),
        )
        .unwrap();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &value),
            now_us(),
            true,
        );
        assert_eq!(
            r.dead_letter.as_ref().map(|f| (f.stage, f.kind)),
            Some((Stage::Render, "unrenderable"))
        );
        assert!(
            matches!(
                r.action,
                Routed::Bump {
                    escalation: Some(EscalationReason::Unrenderable),
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn old_events_are_moot_recent_ones_bump() {
        let s = settings();
        let value = |ts_us: i64| {
            serde_json::to_vec(
                &json!({"op": "u", "after": {"id": 1}, "source": {"connector": "postgresql", "name": "shop",
                "schema": "public", "table": "products", "lsn": 5, "ts_us": ts_us}}),
            )
            .unwrap()
        };
        let now = now_us();
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &value(now - 11 * 60 * 1_000_000)),
            now,
            false,
        );
        assert_eq!((r.op, r.action), ("u", Routed::Moot));
        let r = route(
            &s.graph,
            &s.plan,
            &record("shop.public.products", &value(now - 1_000_000)),
            now,
            false,
        );
        assert!(matches!(r.action, Routed::Bump { .. }), "{r:?}");
    }
}
