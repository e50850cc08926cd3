//! The daemon's main path:
//! consume -> decode -> graph -> plan (coalesce) -> apply (Redis) -> store offsets.
//!
//! Two stages joined by a bounded channel. The consumer stage (this file)
//! owns the Kafka consumer: it polls, routes, runs fan-out lookups and
//! fills the next batch while the applier ([`apply`]) applies the previous
//! one; a full channel is the backpressure. The applier reports each batch
//! back only once Redis acknowledged it, in order, and only then are its
//! offsets stored; a partition never stores past a record whose
//! invalidation could not be applied, escalated or dead-lettered. The
//! batching decisions are in [`batch`], pure and tested on their own.

mod apply;
mod batch;
mod route;

pub use route::{now_us, route, route_with, Route, Routed};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{Stall, Status};
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::dead_letter::DeadLetterStore;
use crate::decode::{AvroSchemas, SchemaError};
use crate::event::KafkaRecord;
use crate::graph::{Consistency, EscalationReason, LookupError, LookupRequest, Lookups, Target};
use crate::metrics::{self, Outcome};
use crate::sink::notice::Notices;
use crate::sink::RedisSink;
use crate::source::{self, Consumer, PartitionId, RebalanceEvent};

use apply::{Applier, Report, Sealed};
use batch::{Batch, Batching, Next};
/// librdkafka raised a fatal error: the client instance cannot recover.
#[derive(Debug, thiserror::Error)]
#[error("fatal kafka client error {code:?}: {reason}")]
pub(crate) struct FatalKafkaError {
    pub(crate) code: rdkafka::types::RDKafkaErrorCode,
    pub(crate) reason: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("cannot create the kafka consumer: {0}")]
    Consumer(rdkafka::error::KafkaError),
    #[error("cannot subscribe to {patterns:?}: {cause}")]
    Subscribe {
        patterns: Vec<String>,
        cause: rdkafka::error::KafkaError,
    },
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset to take into a batch: one past the last record taken.
    next_offset: Option<i64>,
    /// Stopped at this record: nothing at or past it is stored.
    stalled_at: Option<i64>,
    /// Paused at a record whose Avro schema the registry cannot serve now;
    /// the other partitions go on.
    waiting_schema: Option<SchemaWait>,
    /// Lag above `plan.escalate_above_lag`: namespaces instead of keys.
    escalating: bool,
    /// The last offset stored for commit (next to consume), for the gauge.
    stored_offset: Option<i64>,
    /// Resumed after a pause but the seek back to this offset (the first
    /// record dropped while paused) failed: paused again until a retry
    /// succeeds, because consuming on from librdkafka's position would skip
    /// the dropped records, and storing the later offsets would lose them.
    seek_pending: Option<i64>,
}

impl PartitionState {
    /// Stopped at a record of its own (a stall or a schema wait), so it stays
    /// paused when an outage of the whole pipeline ends.
    fn held(&self) -> bool {
        self.stalled_at.is_some() || self.waiting_schema.is_some() || self.seek_pending.is_some()
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

// How long a due batch may keep taking records that are already fetched:
// bounds the latency a strong entity pays for batching under load.
const MAX_DRAIN: Duration = Duration::from_millis(5);
// Sealed batches waiting for the applier besides the one it applies: one
// lets the consumer stage fill the next batch while a batch is applied and
// keeps the memory bound at three batches (open, queued, applying).
const QUEUED_BATCHES: usize = 1;
// How long a seek on resume may wait for librdkafka before it is retried.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
// The loop wakes at least this often to refresh gauges and readiness.
const TICK: Duration = Duration::from_secs(1);
// How long a shutdown may spend on its final apply and commit.
pub(crate) const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
// How long a shutdown waits for the final synchronous commit: a commit to a
// healthy group takes milliseconds; past this it is stuck in a rebalance or
// an outage, and what it would commit is at most a second of auto-commits.
pub(crate) const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The optional parts a config may enable.
#[derive(Default)]
pub(crate) struct Services {
    pub(crate) dead_letters: Option<DeadLetterStore>,
    pub(crate) lookups: Option<Lookups>,
    pub(crate) avro: Option<Arc<AvroSchemas>>,
    pub(crate) notices: Option<Arc<Notices>>,
}

pub(crate) struct Pipeline {
    stage: ConsumerStage,
    applier: Applier,
}

/// The consumer side: poll, route, fan out, batch, and store the offsets of
/// what the applier reports acknowledged.
struct ConsumerStage {
    settings: Arc<Settings>,
    /// Shared with the gauge refresher, which asks the broker for the high
    /// watermarks of paused partitions.
    consumer: Arc<Consumer>,
    dead_letters: bool,
    lookups: Option<Lookups>,
    avro: Option<Arc<AvroSchemas>>,
    status: Arc<Status>,
    partitions: HashMap<PartitionId, PartitionState>,
    /// Set while the applier reports Redis or the dead-letter store
    /// unreachable: every partition is paused and Kafka holds the backlog.
    paused_for_outage: bool,
    batching: Batching,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Records handed to the applier and not yet acknowledged.
    unacknowledged: usize,
}

impl Pipeline {
    pub(crate) fn new(
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
        let (to_stage, reports) = mpsc::unbounded_channel();
        let batching = Batching {
            max_records: settings.plan.max_batch_records,
            max_bytes: settings.plan.max_batch_bytes,
            max_drain: MAX_DRAIN,
        };
        Ok(Pipeline {
            applier: Applier {
                settings: settings.clone(),
                sink,
                dead_letters: services.dead_letters.clone(),
                notices: services.notices,
                status: status.clone(),
                reports: to_stage,
                namespaces: all_namespaces(&settings),
                in_outage: false,
            },
            stage: ConsumerStage {
                settings,
                consumer: Arc::new(consumer),
                dead_letters: services.dead_letters.is_some(),
                lookups: services.lookups,
                avro: services.avro,
                status,
                partitions: HashMap::new(),
                paused_for_outage: false,
                batching,
                reports,
                unacknowledged: 0,
            },
        })
    }

    /// Runs until shutdown; Err when the Kafka client failed fatally (the
    /// process should exit non-zero so its supervisor starts a new one).
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), FatalKafkaError> {
        let Pipeline { mut stage, applier } = self;
        let refresher_stop = CancellationToken::new();
        let refresher = tokio::spawn(refresh_gauges(
            stage.consumer.clone(),
            stage.status.clone(),
            refresher_stop.clone(),
        ));
        metrics::build_info();
        // Every gauge exists from the start, so none is missing during an
        // outage that begins before the first tick.
        metrics::in_flight(0);
        metrics::progress(now_us() as f64 / 1e6);
        stage.refresh_paused_gauge();
        let (to_applier, batches) = mpsc::channel(QUEUED_BATCHES);
        // Cancelled only during shutdown: a failing write is retried until then.
        let give_up = CancellationToken::new();
        let applier_task = tokio::spawn(applier.run(batches, give_up.clone()));
        let (batch, fatal) = stage.consume(&to_applier, &shutdown).await;
        stage.shut_down(batch, to_applier, applier_task, give_up).await;
        refresher_stop.cancel();
        let _ = refresher.await;
        fatal.map_or(Ok(()), Err)
    }
}

impl ConsumerStage {
    /// The consumer loop; returns the open batch at shutdown, and the fatal
    /// Kafka error that ended it, if one did.
    async fn consume(
        &mut self,
        to_applier: &mpsc::Sender<Sealed>,
        shutdown: &CancellationToken,
    ) -> (Batch, Option<FatalKafkaError>) {
        let mut batch = Batch::default();
        let mut next_tick = Instant::now() + TICK;
        let mut took_record = false;
        loop {
            let now = Instant::now();
            let next = self.batching.next(&batch, now, took_record, to_applier.capacity() > 0);
            if next == Next::HandOver {
                match to_applier.try_reserve() {
                    Ok(permit) => {
                        self.hand_over(&mut batch, permit);
                        took_record = false;
                        continue;
                    }
                    // The applier is gone: only at shutdown.
                    Err(_) => break,
                }
            }
            let wake = match batch.due_at {
                Some(due) if next == Next::Take => due.min(next_tick),
                _ => next_tick,
            };
            // A full batch takes nothing more, except during an outage, when
            // records still fetched are dropped (and fetched again after the
            // seek on resume) so the consumer keeps being polled.
            let may_take = next != Next::WaitForApplier || self.paused_for_outage;
            let waits_for_room = matches!(next, Next::GrowUntilRoom | Next::WaitForApplier);
            took_record = false;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                report = self.reports.recv() => match report {
                    Some(report) => self.handle(report),
                    None => {
                        tracing::error!("the applier stopped unexpectedly; stopping");
                        break;
                    }
                },
                permit = to_applier.reserve(), if waits_for_room => match permit {
                    Ok(permit) => self.hand_over(&mut batch, permit),
                    Err(_) => break,
                },
                received = tokio::time::timeout_at(wake, self.consumer.recv()), if may_take => {
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
                        self.take(record, &mut batch).await;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                // A fatal librdkafka error (a fenced static member, for one)
                // leaves the consumer unusable for good: the process must end.
                if let Some((code, reason)) = self.consumer.client().fatal_error() {
                    tracing::error!(?code, %reason, "fatal kafka client error: the consumer cannot go on; exiting with status 1 so a supervisor starts a new process");
                    return (batch, Some(FatalKafkaError { code, reason }));
                }
                self.retry_schema_waits().await;
                self.retry_pending_seeks();
                self.tick(&batch);
                next_tick = now + TICK;
            }
        }
        (batch, None)
    }

    /// Seals the open batch and gives it to the applier.
    fn hand_over(&mut self, batch: &mut Batch, permit: mpsc::Permit<'_, Sealed>) {
        let taken = std::mem::take(batch);
        self.unacknowledged += taken.records;
        // In flight until Redis acknowledges, however long an outage lasts.
        metrics::in_flight(self.unacknowledged);
        permit.send(seal(taken));
    }

    fn handle(&mut self, report: Report) {
        match report {
            Report::Outage => {
                if !self.paused_for_outage {
                    self.paused_for_outage = true;
                    let all: Vec<PartitionId> = self.partitions.keys().cloned().collect();
                    self.pause(&all);
                }
            }
            Report::Healthy => {
                if self.paused_for_outage {
                    self.resume_after_outage();
                }
            }
            Report::Applied { done, records, refused } => {
                for refusal in refused {
                    self.stall_at(
                        &refusal.partition,
                        refusal.offset,
                        "dead_letter_refused",
                        refusal.detail,
                    );
                }
                self.store_offsets(&done);
                self.unacknowledged = self.unacknowledged.saturating_sub(records);
                metrics::in_flight(self.unacknowledged);
            }
        }
    }

    /// Routes one record into the batch, or stalls its partition.
    async fn take(&mut self, record: KafkaRecord, batch: &mut Batch) {
        let partition: PartitionId = (record.topic.clone(), record.partition);
        let lag = self.consumer.context().lag(&partition);
        if self.paused_for_outage || self.partitions.get(&partition).is_some_and(PartitionState::held) {
            // Fetched before the pause took effect; it is fetched again after a
            // restart (stall) or the seek on resume (outage, schema wait).
            let state = self.partitions.entry(partition).or_default();
            state.next_offset.get_or_insert(record.offset);
            return;
        }
        if let Err((ids, error)) = self.load_schemas(&record).await {
            self.wait_for_schemas(partition, record.offset, ids, error);
            return;
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
            message,
        } = route_with(
            &self.settings.graph,
            &self.settings.plan,
            &record,
            now_us(),
            self.dead_letters,
            self.avro.as_deref(),
        );
        if let Some(outcome) = message {
            metrics::message(outcome);
        }
        let mut dead_lettered = false;
        if let Some(failure) = dead_letter {
            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset,
                stage = failure.stage.label(), kind = failure.kind, detail = %failure.detail, "bad record");
            if self.dead_letters {
                batch.dead_letters.push((record.clone(), failure));
                // Written soon even when the record stalls its partition.
                batch.due_by(Instant::now() + self.settings.plan.eventual_linger);
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
                batch.add_targets(targets, &position, commit_time_us);
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
                batch.due_by(Instant::now() + linger);
                fanout.err()
            }
            Routed::Stall { reason, detail } => Some((reason, detail)),
        };
        if let Some((reason, detail)) = stalled {
            self.stall_at(&partition, record.offset, reason, detail);
            return;
        }
        let bytes = record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
        batch.count(partition, record.offset, bytes);
        if batch.due_at.is_none() {
            // Skipped records still need their offsets stored soon.
            batch.due_by(Instant::now() + self.settings.plan.eventual_linger);
        }
    }

    /// Stops a partition at `offset`: nothing at or past it is committed
    /// until an operator acts (never silent: README, "Delivery").
    fn stall_at(&mut self, partition: &PartitionId, offset: i64, reason: &'static str, detail: String) {
        let state = self.partitions.entry(partition.clone()).or_default();
        state.stalled_at = Some(state.stalled_at.map_or(offset, |at| at.min(offset)));
        state.next_offset = Some(offset);
        tracing::error!(topic = %partition.0, partition = partition.1, offset, reason, %detail,
            "partition stalled: this invalidation cannot be applied, escalated or dead-lettered; nothing past it will be committed");
        self.pause(std::slice::from_ref(partition));
        self.status.stall(
            format!("{}/{}", partition.0, partition.1),
            Stall { offset, reason, detail },
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
                    if state.stalled_at.is_none() && !self.paused_for_outage {
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
    fn resume_at(&mut self, id: &PartitionId, offset: i64) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&id.0, id.1);
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(topic = %id.0, partition = id.1, error = %e, "resuming a partition failed");
        }
        self.consumer.context().mark_resumed(id);
        self.seek_or_hold(id, offset);
    }

    /// Seeks a just-resumed partition back to `offset`, the first record it
    /// dropped while paused (resume alone goes on from the last record
    /// delivered). If the seek fails, the partition is paused again and the
    /// seek retried on the next tick: taking records from where librdkafka
    /// stands would skip the dropped ones for good.
    fn seek_or_hold(&mut self, id: &PartitionId, offset: i64) {
        let Err(error) = self.consumer.seek(&id.0, id.1, Offset::Offset(offset), SEEK_TIMEOUT) else {
            return;
        };
        tracing::warn!(topic = %id.0, partition = id.1, offset, %error,
            "seek back to the first unconsumed record failed: the partition stays paused and the seek is retried");
        self.partitions.entry(id.clone()).or_default().seek_pending = Some(offset);
        self.pause(std::slice::from_ref(id));
    }

    /// Retries the seeks that failed on resume (see `seek_or_hold`).
    fn retry_pending_seeks(&mut self) {
        if self.paused_for_outage {
            return;
        }
        let pending: Vec<(PartitionId, i64)> = self
            .partitions
            .iter_mut()
            .filter(|(_, s)| s.stalled_at.is_none() && s.waiting_schema.is_none())
            .filter_map(|(id, s)| s.seek_pending.take().map(|offset| (id.clone(), offset)))
            .collect();
        if pending.is_empty() {
            return;
        }
        for (id, offset) in pending {
            self.resume_at(&id, offset);
            if !self.partitions.get(&id).is_some_and(PartitionState::held) {
                tracing::info!(topic = %id.0, partition = id.1, offset, "seek retried: the partition resumes");
            }
        }
        self.refresh_paused_gauge();
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

    fn resume_after_outage(&mut self) {
        self.paused_for_outage = false;
        let resumed: Vec<(PartitionId, Option<i64>)> = self
            .partitions
            .iter()
            .filter(|(_, state)| !state.held())
            .map(|(id, state)| (id.clone(), state.next_offset))
            .collect();
        let mut resume = TopicPartitionList::new();
        for (id @ (topic, partition), _) in &resumed {
            resume.add_partition(topic, *partition);
            self.consumer.context().mark_resumed(id);
        }
        if let Err(e) = self.consumer.resume(&resume) {
            tracing::warn!(error = %e, "resume after the outage failed");
        }
        for (id, next_offset) in &resumed {
            if let Some(offset) = next_offset {
                self.seek_or_hold(id, *offset);
            }
        }
        self.refresh_paused_gauge();
        tracing::info!("writes succeed again; consumption resumed");
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

    /// Stores the offsets of an acknowledged batch (batch::storable says which).
    fn store_offsets(&mut self, done: &HashMap<PartitionId, i64>) {
        let storable = batch::storable(done, |id| self.partitions.get(id).map(|s| s.stalled_at));
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in storable {
            let Some(state) = self.partitions.get_mut(&(topic.clone(), partition)) else {
                continue;
            };
            if tpl
                .add_partition_offset(&topic, partition, Offset::Offset(next))
                .is_ok()
            {
                state.stored_offset = Some(next);
                metrics::stored_offset(&topic, partition, next);
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
                        // Batches already handed over keep their work too;
                        // store_offsets skips partitions no longer ours.
                        batch.forget(&p);
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
        let in_flight = batch.records + self.unacknowledged;
        metrics::in_flight(in_flight);
        if in_flight == 0 && !self.paused_for_outage {
            // Nothing consumed is waiting: the daemon is keeping up.
            metrics::progress(now_us() as f64 / 1e6);
        }
        self.status.readiness();
    }

    /// Hands the open batch to the applier, lets it finish what it holds
    /// (storing the offsets it reports), then commits them.
    async fn shut_down(
        mut self,
        batch: Batch,
        to_applier: mpsc::Sender<Sealed>,
        applier: tokio::task::JoinHandle<()>,
        give_up: CancellationToken,
    ) {
        tracing::info!(
            records = batch.records + self.unacknowledged,
            "stopping: applying what was taken"
        );
        let deadline = Instant::now() + SHUTDOWN_DRAIN_TIMEOUT;
        // A failing write may be retried for half the budget, then nothing
        // past it is committed.
        let give_up_soon = give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SHUTDOWN_DRAIN_TIMEOUT / 2).await;
            give_up_soon.cancel();
        });
        let mut drained = true;
        if !batch.is_empty() {
            let records = batch.records;
            match tokio::time::timeout_at(deadline, to_applier.reserve()).await {
                Ok(Ok(permit)) => {
                    self.unacknowledged += records;
                    permit.send(seal(batch));
                }
                _ => drained = false,
            }
        }
        // Closing the channel tells the applier to stop after what it holds.
        drop(to_applier);
        loop {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => self.handle(report),
                Ok(None) => break,
                Err(_elapsed) => {
                    drained = false;
                    break;
                }
            }
        }
        give_up.cancel();
        if self.unacknowledged > 0 {
            drained = false;
        }
        if !drained {
            applier.abort();
            tracing::warn!(
                records = self.unacknowledged,
                "not everything taken was applied; its offsets are not committed"
            );
        }
        let _ = applier.await;
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

fn seal(batch: Batch) -> Sealed {
    Sealed {
        plan: batch.plan,
        dead_letters: batch.dead_letters,
        done: batch.done,
        record_times_ms: batch.record_times_ms,
        records: batch.records,
    }
}

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
pub(crate) fn namespace_count(settings: &Settings) -> usize {
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
