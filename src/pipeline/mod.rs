//! The daemon's main path:
//! consume -> decode -> graph -> plan (coalesce) -> apply (Redis) -> store offsets.
//!
//! Two stages joined by a bounded channel. The consumer stage (this file)
//! is a thin driver of the rdkafka consumer: it polls, hands records and
//! reports to the partition unit ([`partitions`], pure: pause, resume and
//! seek, stalls, schema waits, held records, the offset-store rule) and
//! carries out what it answers; the intake ([`intake`]) routes records into
//! the next batch and runs fan-out lookups as tasks, so a slow lookup holds
//! up only its own partition. The applier ([`apply`]) applies the previous
//! batch meanwhile; a full channel is the backpressure. With more than one
//! `plan.route_workers`, records already fetched are decoded and routed on
//! several threads at once ([`route_pool`]), then handed to the unit one by
//! one in the order polled. The applier reports
//! each batch back only once Redis acknowledged it, in order, and only then
//! are its offsets stored; a partition never stores past a record whose
//! invalidation could not be applied, escalated or dead-lettered. The
//! batching decisions are in [`batch`], pure and tested on their own.

mod apply;
mod batch;
mod fanout;
mod gauges;
mod intake;
mod partitions;
mod route;
mod route_pool;

pub(crate) use apply::namespace_count;
pub use route::{now_us, route, route_with, trace_with, Route, Routed, Trace};
pub use route_pool::{Prerouted, RoutePool};

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::Status;
use crate::config::Settings;
use crate::dead_letter::DeadLetterStore;
use crate::decode::AvroSchemas;
use crate::event::KafkaRecord;
use crate::lookup::Lookups;
use crate::metrics;
use crate::sink::notice::Notices;
use crate::sink::RedisSink;
use crate::source::{self, Consumer, PartitionId, RebalanceEvent};

use apply::{Applier, Report, Sealed};
use batch::{Batch, Batching, Next};
use fanout::SqlResolver;
use intake::Intake;
use partitions::{Action, ConsumerAction, Limits, Partitions};

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
    #[error("cannot start the route workers (plan.route_workers = {threads}): {cause}")]
    RouteWorkers { threads: usize, cause: std::io::Error },
}

// How long a due batch may keep taking records that are already fetched:
// bounds the latency a strong entity pays for batching under load.
const MAX_DRAIN: Duration = Duration::from_millis(5);
// Sealed batches waiting for the applier besides the one it applies: one
// lets the consumer stage fill the next batch while a batch is applied and
// keeps the memory bound at three batches (open, queued, applying).
const QUEUED_BATCHES: usize = 1;
// Records routed at once per routing thread: enough that waking a worker
// (some microseconds) is small beside routing its part (about 8 µs a record),
// few enough that a chunk is routed well within MAX_DRAIN.
const ROUTE_CHUNK_PER_THREAD: usize = 64;
// How long a seek on resume may wait for librdkafka before it is retried.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
// The loop wakes at least this often to refresh gauges and readiness.
const TICK: Duration = Duration::from_secs(1);
// Records a partition may hold behind a running fan-out lookup before it is
// paused (its later records are fetched again on resume): enough to ride
// out a lookup of a few seconds at a busy partition's rate, while the
// memory stays bounded per partition.
const HELD_RECORDS: usize = 1000;
// The same bound in bytes; with librdkafka's prefetch it bounds what a slow
// lookup can make a partition keep in memory.
const HELD_BYTES: usize = 1 << 20;
// How long a shutdown may spend on its final apply and commit.
pub(crate) const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
// How long a shutdown waits for the final synchronous commit: a commit to a
// healthy group takes milliseconds; past this it is stuck in a rebalance or
// an outage, and what it would commit is at most a second of auto-commits.
pub(crate) const SHUTDOWN_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
// How long a stop with `source.leave_group_on_stop` may spend leaving the
// group (the revoke handled, the LeaveGroup answered): both take
// milliseconds in a healthy group. It is cut to what the drain and the
// commit left of their budget, so the stop as a whole never takes longer
// than SHUTDOWN_DRAIN_TIMEOUT + SHUTDOWN_COMMIT_TIMEOUT (the chart's
// terminationGracePeriodSeconds is derived from those two).
pub(crate) const SHUTDOWN_LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
// While leaving, the consumer is polled at least this often to serve the
// revoke (a record it returns meanwhile is dropped).
const LEAVE_POLL: Duration = Duration::from_millis(100);

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

/// The consumer side: poll, hand records and reports to the partition unit
/// and the intake, carry out their consumer actions (pause, resume and
/// seek, store offsets).
struct ConsumerStage {
    /// Shared with the gauge refresher, which asks the broker for the high
    /// watermarks of paused partitions.
    consumer: Arc<Consumer>,
    status: Arc<Status>,
    partitions: Partitions,
    intake: Intake,
    /// Routes the records a poll found waiting on several threads at once.
    route_pool: RoutePool,
    batching: Batching,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Records handed to the applier and not yet acknowledged.
    unacknowledged: usize,
    /// Leave the consumer group at a clean stop (`source.leave_group_on_stop`).
    leave_group_on_stop: bool,
}

/// Rebalances a poll queued, and the record it returned with them, if any:
/// the events are handled first, as after any poll.
type Rebalanced = (Vec<RebalanceEvent>, Option<KafkaRecord>);

/// How the consumer is closed at the end of a stop.
enum Closing {
    /// Closed on a thread of its own; the exit does not wait for it.
    Detached,
    /// After a leave: the close sends nothing more but waits for the
    /// LeaveGroup's answer, so the stop waits for it until `deadline`.
    Leaving { revoked: bool, deadline: Instant },
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
        let resolver = Arc::new(SqlResolver {
            settings: settings.clone(),
            lookups: services.lookups,
        });
        let route_pool = RoutePool::new(
            settings.plan.route_workers,
            settings.clone(),
            services.dead_letters.is_some(),
            services.avro.clone(),
        )
        .map_err(|cause| RunError::RouteWorkers {
            threads: settings.plan.route_workers,
            cause,
        })?;
        let intake = Intake::new(
            settings.clone(),
            services.dead_letters.is_some(),
            services.avro,
            status.clone(),
            resolver,
        );
        Ok(Pipeline {
            applier: Applier::new(
                settings.clone(),
                sink,
                services.dead_letters,
                services.notices,
                status.clone(),
                to_stage,
            ),
            stage: ConsumerStage {
                consumer: Arc::new(consumer),
                status,
                partitions: Partitions::new(limits(&settings)),
                intake,
                route_pool,
                batching: Batching {
                    max_records: settings.plan.max_batch_records,
                    max_bytes: settings.plan.max_batch_bytes,
                    max_drain: MAX_DRAIN,
                },
                reports,
                unacknowledged: 0,
                leave_group_on_stop: settings.source.leave_group_on_stop,
            },
        })
    }

    /// Runs until shutdown; Err when the Kafka client failed fatally (the
    /// process should exit non-zero so its supervisor starts a new one).
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), FatalKafkaError> {
        let Pipeline { mut stage, applier } = self;
        let refresher_stop = CancellationToken::new();
        let refresher = tokio::spawn(gauges::refresh(
            stage.consumer.clone(),
            stage.status.clone(),
            refresher_stop.clone(),
        ));
        metrics::build_info();
        // Every gauge exists from the start, so none is missing during an
        // outage that begins before the first tick.
        metrics::in_flight(0);
        metrics::progress(now_us() as f64 / 1e6);
        metrics::paused_partitions(0);
        let (to_applier, batches) = mpsc::channel(QUEUED_BATCHES);
        // Cancelled only during shutdown: a failing write is retried until then.
        let give_up = CancellationToken::new();
        let applier_task = tokio::spawn(applier.run(batches, give_up.clone()));
        let (batch, fatal) = stage.consume(&to_applier, &shutdown).await;
        // A client that failed fatally can no longer leave; its close ends it.
        let leave = stage.leave_group_on_stop && fatal.is_none();
        let (consumer, closing) = stage.shut_down(batch, to_applier, applier_task, give_up, leave).await;
        refresher_stop.cancel();
        let _ = refresher.await;
        // The refresher's handle is gone: this is the consumer's last one,
        // so dropping it closes the consumer.
        close(consumer, closing).await;
        fatal.map_or(Ok(()), Err)
    }
}

/// The partition unit's settings.
fn limits(settings: &Settings) -> Limits {
    Limits {
        escalate_above_lag: settings.plan.escalate_above_lag,
        schema_retry_cap: settings.redis.max_retry_backoff,
        held_records: HELD_RECORDS,
        held_bytes: HELD_BYTES,
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
            let next = self
                .batching
                .next(&batch, Instant::now(), took_record, to_applier.capacity() > 0);
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
            let has_room = next != Next::WaitForApplier;
            let may_take = has_room || self.partitions.in_outage();
            let may_take_held = has_room && self.partitions.has_ready();
            let waits_for_room = matches!(next, Next::GrowUntilRoom | Next::WaitForApplier);
            took_record = false;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                report = self.reports.recv() => match report {
                    Some(report) => self.handle(report, &mut batch).await,
                    None => {
                        tracing::error!("the applier stopped unexpectedly; stopping");
                        break;
                    }
                },
                permit = to_applier.reserve(), if waits_for_room => match permit {
                    Ok(permit) => self.hand_over(&mut batch, permit),
                    Err(_) => break,
                },
                Some(resolved) = self.intake.next_resolved(), if has_room => {
                    let actions = self.intake.resolved(&mut self.partitions, resolved, &mut batch);
                    self.act(actions, &mut batch).await;
                }
                // Records held behind a lookup that resolved come before
                // new ones: they are earlier in their partition.
                _ = std::future::ready(()), if may_take_held => {
                    took_record = true;
                    let actions = self.partitions.take_ready();
                    self.act(actions, &mut batch).await;
                }
                received = tokio::time::timeout_at(wake, self.consumer.recv()), if may_take => {
                    took_record = self.received(polled(received), &mut batch).await;
                }
            }
            if Instant::now() >= next_tick {
                if let Some(fatal) = self.tick(&mut batch).await {
                    return (batch, Some(fatal));
                }
                next_tick = Instant::now() + TICK;
            }
        }
        (batch, None)
    }

    /// One poll's outcome: rebalances first, then the record; true when a
    /// record came (more are probably waiting).
    ///
    /// With more than one routing thread, the records already fetched after
    /// it are polled too (without waiting, up to a chunk) and routed at once
    /// on the pool, then handed to the unit one by one in the order polled,
    /// each after the rebalances queued before it, exactly as one poll at a
    /// time would. Handing a record never resumes a partition (only reports,
    /// held records, schema fetches and ticks do, never within this call),
    /// so no record polled before a resume and its seek is handed after it.
    async fn received(&mut self, record: Option<KafkaRecord>, batch: &mut Batch) -> bool {
        self.handle_rebalances(batch).await;
        let Some(record) = record else { return false };
        // During an outage every record is dropped: nothing to route.
        if self.route_pool.threads() == 1 || self.partitions.in_outage() {
            self.hand(record, None, batch).await;
            return true;
        }
        let (chunk, rebalanced) = self.poll_chunk(record, batch);
        if chunk.len() == 1 {
            // Nothing else was waiting: routed when taken, as inline.
            for record in chunk {
                self.hand(record, None, batch).await;
            }
        } else {
            for Prerouted { record, route } in self.route_pool.route(chunk, now_us()).await {
                self.hand(record, route, batch).await;
            }
        }
        if let Some((events, record)) = rebalanced {
            self.handle_events(events, batch).await;
            if let Some(record) = record {
                self.hand(record, None, batch).await;
            }
        }
        // Rebalances queued by the last poll, which found no record: after
        // every record polled before them.
        self.handle_rebalances(batch).await;
        true
    }

    /// `first` and the records already fetched after it, polled without
    /// waiting: at most a chunk, and no more than the open batch has room
    /// for (records and bytes), so it never grows past what one poll at a
    /// time would let it. A poll that queued rebalances ends the chunk: its
    /// events and its record, if any, are returned apart, to be handled
    /// after the chunk.
    fn poll_chunk(&self, first: KafkaRecord, batch: &Batch) -> (Vec<KafkaRecord>, Option<Rebalanced>) {
        let room = self.batching.max_records.saturating_sub(batch.records).max(1);
        let limit = (self.route_pool.threads() * ROUTE_CHUNK_PER_THREAD).min(room);
        let mut bytes = batch.bytes + record_bytes(&first);
        let mut chunk = vec![first];
        while chunk.len() < limit && bytes < self.batching.max_bytes {
            // None: nothing is waiting (or the poll served an event only).
            let Some(polled) = self.consumer.recv().now_or_never() else {
                break;
            };
            let record = match polled {
                Ok(message) => Some(source::to_record(&message)),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    None
                }
            };
            let events = self.consumer.context().drain_events();
            if !events.is_empty() {
                return (chunk, Some((events, record)));
            }
            // A consumer error ends the chunk too; librdkafka retries it.
            let Some(record) = record else { break };
            bytes += record_bytes(&record);
            chunk.push(record);
        }
        (chunk, None)
    }

    /// Hands one polled record to the unit, with its route when it was
    /// computed ahead, and carries out what the unit answers.
    async fn hand(&mut self, record: KafkaRecord, route: Option<Route>, batch: &mut Batch) {
        if let Some(route) = route {
            self.intake.offer(&record, route);
        }
        let actions = self.partitions.record(record);
        self.act(actions, batch).await;
        self.intake.withdraw_offer();
    }

    /// Carries out the unit's actions: the intake takes its own, the
    /// consumer's are done here; a failed seek goes back to the unit.
    async fn act(&mut self, mut actions: Vec<Action>, batch: &mut Batch) {
        let mut paused_or_resumed = false;
        while !actions.is_empty() {
            let consumer = &self.consumer;
            let lag = |partition: &PartitionId| consumer.context().lag(partition);
            let for_consumer = self.intake.run(&mut self.partitions, actions, batch, &lag).await;
            actions = Vec::new();
            for action in for_consumer {
                paused_or_resumed |= !matches!(action, ConsumerAction::Store(_));
                match action {
                    ConsumerAction::Pause {
                        partition,
                        unapplied_from,
                    } => self.pause(partition, unapplied_from),
                    ConsumerAction::Resume { partition, seek_to } => {
                        if !self.resume(&partition, seek_to) {
                            actions.extend(self.partitions.seek_failed(&partition));
                        }
                    }
                    ConsumerAction::Store(offsets) => self.store_offsets(offsets),
                }
            }
        }
        if paused_or_resumed {
            metrics::paused_partitions(self.partitions.paused());
        }
    }

    /// Seals the open batch and gives it to the applier.
    fn hand_over(&mut self, batch: &mut Batch, permit: mpsc::Permit<'_, Sealed>) {
        let taken = std::mem::take(batch);
        self.unacknowledged += taken.records;
        // In flight until Redis acknowledges, however long an outage lasts.
        metrics::in_flight(self.unacknowledged);
        permit.send(seal(taken));
    }

    async fn handle(&mut self, report: Report, batch: &mut Batch) {
        match report {
            Report::Outage => {
                let actions = self.partitions.outage_began();
                self.act(actions, batch).await;
            }
            Report::Healthy => {
                if self.partitions.in_outage() {
                    let actions = self.partitions.outage_ended();
                    self.act(actions, batch).await;
                    tracing::info!("writes succeed again; consumption resumed");
                }
            }
            Report::Applied { done, records, refused } => {
                let actions = self.partitions.applied(&done, refused);
                self.act(actions, batch).await;
                self.unacknowledged = self.unacknowledged.saturating_sub(records);
                metrics::in_flight(self.unacknowledged);
            }
        }
    }

    fn pause(&self, partition: PartitionId, unapplied_from: Option<i64>) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&partition.0, partition.1);
        self.consumer.context().mark_paused(partition, unapplied_from);
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(error = %e, "pausing partitions failed");
        }
    }

    /// Resumes a paused partition and seeks it back to `seek_to`, the first
    /// record not taken (resume alone goes on from the last record
    /// delivered); false when the seek failed.
    fn resume(&self, partition: &PartitionId, seek_to: Option<i64>) -> bool {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&partition.0, partition.1);
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(topic = %partition.0, partition = partition.1, error = %e, "resuming a partition failed");
        }
        self.consumer.context().mark_resumed(partition);
        let Some(offset) = seek_to else { return true };
        let Err(error) = self
            .consumer
            .seek(&partition.0, partition.1, Offset::Offset(offset), SEEK_TIMEOUT)
        else {
            return true;
        };
        tracing::warn!(topic = %partition.0, partition = partition.1, offset, %error,
            "seek back to the first unconsumed record failed: the partition stays paused and the seek is retried");
        false
    }

    /// Stores the offsets the unit found storable, for librdkafka's auto-commit.
    fn store_offsets(&self, offsets: Vec<(PartitionId, i64)>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            if tpl
                .add_partition_offset(&topic, partition, Offset::Offset(next))
                .is_ok()
            {
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

    /// Rebalance callbacks queued during the last poll, in order.
    async fn handle_rebalances(&mut self, batch: &mut Batch) {
        let events = self.consumer.context().drain_events();
        self.handle_events(events, batch).await;
    }

    async fn handle_events(&mut self, events: Vec<RebalanceEvent>, batch: &mut Batch) {
        for event in events {
            let actions = match event {
                RebalanceEvent::Revoked(partitions) => self.partitions.revoked(&partitions),
                RebalanceEvent::Assigned(partitions) => self.partitions.assigned(&partitions),
            };
            self.act(actions, batch).await;
        }
        self.status.set_assigned(self.partitions.assigned_count());
    }

    /// Once a second: a fatal client error ends the loop; schema fetches and
    /// seeks due are retried; gauges and readiness are refreshed.
    async fn tick(&mut self, batch: &mut Batch) -> Option<FatalKafkaError> {
        // A fatal librdkafka error (a fenced static member, for one) leaves
        // the consumer unusable for good: the process must end.
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            tracing::error!(?code, %reason, "fatal kafka client error: the consumer cannot go on; exiting with status 1 so a supervisor starts a new process");
            return Some(FatalKafkaError { code, reason });
        }
        let actions = self.partitions.tick(Instant::now());
        self.act(actions, batch).await;
        self.intake.registry_check(&self.partitions);
        let in_flight = batch.records + self.unacknowledged + self.intake.resolving() + self.partitions.held();
        metrics::in_flight(in_flight);
        if in_flight == 0 && !self.partitions.in_outage() {
            // Nothing consumed is waiting: the daemon is keeping up.
            metrics::progress(now_us() as f64 / 1e6);
        }
        self.status.readiness();
        None
    }

    /// Hands the open batch to the applier, lets it finish what it holds
    /// (storing the offsets it reports), then commits them and, with
    /// `leave`, leaves the group. Running lookups are dropped first: their
    /// records' offsets are not stored. Returns the consumer, still open,
    /// and how to close it.
    async fn shut_down(
        mut self,
        batch: Batch,
        to_applier: mpsc::Sender<Sealed>,
        applier: tokio::task::JoinHandle<()>,
        give_up: CancellationToken,
        leave: bool,
    ) -> (Arc<Consumer>, Closing) {
        tracing::info!(
            records = batch.records + self.unacknowledged,
            "stopping: applying what was taken"
        );
        self.intake.shut_down().await;
        let started = Instant::now();
        let deadline = started + SHUTDOWN_DRAIN_TIMEOUT;
        // A failing write may be retried for half the budget, then nothing
        // past it is committed.
        let give_up_soon = give_up.clone();
        let give_up_timer = tokio::spawn(async move {
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
        // Reports of what was handed over; nothing is taken any more.
        let mut closed = Batch::default();
        loop {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => self.handle(report, &mut closed).await,
                Ok(None) => break,
                Err(_elapsed) => {
                    drained = false;
                    break;
                }
            }
        }
        give_up.cancel();
        // The timer has nothing left to do: joined here, not left behind.
        give_up_timer.abort();
        let _ = give_up_timer.await;
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
        commit(self.consumer.clone()).await;
        if !leave {
            return (self.consumer, Closing::Detached);
        }
        // Whatever the drain and the commit left of their budget, at most
        // SHUTDOWN_LEAVE_TIMEOUT.
        let budget_end = started + SHUTDOWN_DRAIN_TIMEOUT + SHUTDOWN_COMMIT_TIMEOUT;
        let deadline = budget_end.min(Instant::now() + SHUTDOWN_LEAVE_TIMEOUT);
        let revoked = self.leave_group(deadline).await;
        (self.consumer, Closing::Leaving { revoked, deadline })
    }

    /// Unsubscribes, which under the classic protocol revokes every
    /// partition and then sends a LeaveGroup, for a static member too (the
    /// close alone skips it for one); then serves the consumer until the
    /// revoke has been handled. True when it was, before `deadline`.
    ///
    /// Runs after the final commit: a record polled meanwhile is dropped,
    /// never taken or stored, and the commit librdkafka makes at the revoke
    /// carries only offsets stored before, all of them applied.
    async fn leave_group(&mut self, deadline: Instant) -> bool {
        let consumer = self.consumer.clone();
        // rd_kafka_unsubscribe waits for the group thread's answer: off the runtime.
        let unsubscribe = tokio::task::spawn_blocking(move || consumer.unsubscribe());
        if tokio::time::timeout_at(deadline, unsubscribe).await.is_err() {
            return false;
        }
        let mut discarded = Batch::default();
        loop {
            // The revoke arrives as a rebalance event; the unit forgets the
            // partitions and readiness reports none assigned.
            self.handle_rebalances(&mut discarded).await;
            if self.partitions.assigned_count() == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let poll_until = deadline.min(now + LEAVE_POLL);
            if let Ok(Err(error)) = tokio::time::timeout_at(poll_until, self.consumer.recv()).await {
                tracing::debug!(%error, "kafka consumer error while leaving the group");
                // An error returns at once; do not spin on it.
                tokio::time::sleep_until(poll_until).await;
            }
        }
    }
}

/// Closes the consumer by dropping its last handle, on a thread of its own
/// so a hung close cannot hold the exit. After a leave the stop waits for
/// the close (which waits for the LeaveGroup's answer) until the leave's
/// deadline, and says whether the partitions were handed over.
async fn close(consumer: Arc<Consumer>, closing: Closing) {
    let (done, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        // None: a handle is still held elsewhere (a final commit still
        // running); the consumer closes when that one is dropped.
        let last = Arc::into_inner(consumer);
        let was_last = last.is_some();
        drop(last);
        let _ = done.send(was_last);
    });
    let Closing::Leaving { revoked, deadline } = closing else {
        return;
    };
    match tokio::time::timeout_at(deadline, closed).await {
        Ok(Ok(true)) if revoked => {
            metrics::group_leave("handed_over");
            tracing::info!("left the consumer group; partitions handed over");
        }
        outcome => {
            metrics::group_leave("timed_out");
            tracing::warn!(
                revoked,
                closed = matches!(outcome, Ok(Ok(true))),
                "leaving the consumer group did not finish in time: partitions not handed over wait for the session timeout"
            );
        }
    }
}

/// The final synchronous commit. It can block for a whole rebalance (34.5 s
/// seen, then IllegalGeneration): it runs on its own thread and the stop
/// waits for it at most SHUTDOWN_COMMIT_TIMEOUT.
async fn commit(consumer: Arc<Consumer>) {
    let (done, committed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(consumer.commit_consumer_state(CommitMode::Sync));
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

/// The owned record a poll returned, if any (a consumer error is logged;
/// librdkafka retries it).
fn polled(
    received: Result<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>, tokio::time::error::Elapsed>,
) -> Option<KafkaRecord> {
    match received {
        Ok(Ok(message)) => Some(source::to_record(&message)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "kafka consumer error");
            None
        }
        Err(_elapsed) => None,
    }
}

fn record_bytes(record: &KafkaRecord) -> usize {
    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len)
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
