//! The intake: what happens to a record between the consumer handing it
//! over and the open batch, with no rdkafka in it. It carries out the
//! partition unit's actions that are not the consumer's: it loads Avro
//! schemas, routes the record ([`route_with`]), escalates under lag, runs
//! fan-out lookups as tracked tasks off the poll loop, and adds the result
//! to the batch in each partition's order (the unit holds a partition's
//! later records until its lookup resolved). Stalls are reported here. A
//! route computed ahead by the route pool ([`super::route_pool`]) may be
//! offered for the record about to be handed to the unit: taking that record
//! uses it instead of routing again (after its schemas are loaded and before
//! the lag escalation, as a route computed here).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batch::Batch;
use super::fanout::{self, needs_query, Resolution, Resolver};
use super::partitions::{Action, ConsumerAction, Partitions, Ticket};
use super::route::{now_us, route_with, Route, Routed};
use super::route_pool::schema_ids;
use crate::admin::{Stall, Status};
use crate::config::Settings;
use crate::dead_letter::Failure;
use crate::decode::{AvroSchemas, SchemaError};
use crate::event::KafkaRecord;
use crate::graph::{Consistency, EscalationReason, LookupRequest, StallReason, Target};
use crate::metrics::{self, Outcome};
use crate::source::PartitionId;

// Lookups running at once, across partitions: the lookup pool's size
// (lookup::postgres and lookup::mysql open at most 4 connections). More would wait for a
// connection inside their own timeout and escalate for no fault of the
// database.
const MAX_CONCURRENT_LOOKUPS: usize = 4;

/// A routed record on its way into the batch.
struct Taken {
    record: KafkaRecord,
    op: &'static str,
    dead_letter: Option<Failure>,
    /// With the lag escalation applied; a bump's lookups are taken out.
    action: Routed,
}

/// A record whose lookup runs.
struct InFlight {
    partition: PartitionId,
    taken: Taken,
    cancel: CancellationToken,
}

/// A lookup's outcome, back from its task.
pub(super) struct Resolved {
    ticket: Ticket,
    resolution: Resolution,
}

/// The consumer's lag of a partition, as of its last statistics.
pub(super) type Lag<'a> = &'a (dyn Fn(&PartitionId) -> Option<i64> + Sync);

pub(super) struct Intake {
    settings: Arc<Settings>,
    dead_letters: bool,
    avro: Option<Arc<AvroSchemas>>,
    status: Arc<Status>,
    resolver: Arc<dyn Resolver>,
    lookup_slots: Arc<Semaphore>,
    tasks: TaskTracker,
    in_flight: HashMap<Ticket, InFlight>,
    resolved_tx: mpsc::UnboundedSender<Resolved>,
    resolved_rx: mpsc::UnboundedReceiver<Resolved>,
    /// Cancels every lookup at shutdown; each has a child token of its own.
    stop: CancellationToken,
    /// The route computed ahead for the record being handed to the unit.
    offered: Option<Offered>,
}

/// A route computed ahead, for the record at `offset` of `partition`.
struct Offered {
    partition: PartitionId,
    offset: i64,
    route: Route,
}

impl Intake {
    pub(super) fn new(
        settings: Arc<Settings>,
        dead_letters: bool,
        avro: Option<Arc<AvroSchemas>>,
        status: Arc<Status>,
        resolver: Arc<dyn Resolver>,
    ) -> Intake {
        let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
        Intake {
            settings,
            dead_letters,
            avro,
            status,
            resolver,
            lookup_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
            tasks: TaskTracker::new(),
            in_flight: HashMap::new(),
            resolved_tx,
            resolved_rx,
            stop: CancellationToken::new(),
            offered: None,
        }
    }

    /// Offers `route`, computed ahead, for `record`, which the consumer
    /// stage hands to the unit next: used if the unit has it taken now.
    pub(super) fn offer(&mut self, record: &KafkaRecord, route: Route) {
        self.offered = Some(Offered {
            partition: (record.topic.clone(), record.partition),
            offset: record.offset,
            route,
        });
    }

    /// The record offered for was handed: a route not used by now (the
    /// record was held, dropped or waits for its schemas) is discarded, and
    /// the record is routed again when it is taken.
    pub(super) fn withdraw_offer(&mut self) {
        self.offered = None;
    }

    /// The route offered for `record`, if it is that record's.
    fn offered_for(&mut self, record: &KafkaRecord) -> Option<Route> {
        let offered = self.offered.take()?;
        let matches = offered.offset == record.offset
            && offered.partition.1 == record.partition
            && offered.partition.0 == record.topic;
        matches.then_some(offered.route)
    }

    /// Carries out the unit's actions, and those they lead to, in order;
    /// returns the ones for the consumer.
    pub(super) async fn run(
        &mut self,
        partitions: &mut Partitions,
        actions: Vec<Action>,
        batch: &mut Batch,
        lag: Lag<'_>,
    ) -> Vec<ConsumerAction> {
        let mut queue = VecDeque::from(actions);
        let mut for_consumer = Vec::new();
        while let Some(action) = queue.pop_front() {
            let next = match action {
                Action::Take(record) => self.take(partitions, record, batch, lag).await,
                Action::Stall { partition, stall } => {
                    self.report_stall(&partition, stall);
                    Vec::new()
                }
                Action::FetchSchemas { partition, ids } => self.fetch_schemas(partitions, &partition, &ids).await,
                Action::DropFanout(ticket) => {
                    if let Some(dropped) = self.in_flight.remove(&ticket) {
                        dropped.cancel.cancel();
                    }
                    Vec::new()
                }
                Action::Forget(partition) => {
                    // Batches already handed over keep their work too; the
                    // unit stores nothing for partitions no longer ours.
                    batch.forget(&partition);
                    self.status.unstall(&partition_label(&partition));
                    Vec::new()
                }
                Action::Consumer(action) => {
                    for_consumer.push(action);
                    Vec::new()
                }
            };
            // What an action leads to comes before the actions after it.
            for action in next.into_iter().rev() {
                queue.push_front(action);
            }
        }
        for_consumer
    }

    /// The next lookup that finished; pending while none did.
    pub(super) async fn next_resolved(&mut self) -> Option<Resolved> {
        self.resolved_rx.recv().await
    }

    /// A lookup finished: its record goes into the batch, unless the lookup
    /// no longer counts (its partition was revoked or stalled meanwhile).
    pub(super) fn resolved(
        &mut self,
        partitions: &mut Partitions,
        resolved: Resolved,
        batch: &mut Batch,
    ) -> Vec<Action> {
        let Some(in_flight) = self.in_flight.remove(&resolved.ticket) else {
            return Vec::new();
        };
        if !partitions.fanout_finished(&in_flight.partition, resolved.ticket) {
            return Vec::new();
        }
        self.admit(partitions, in_flight.taken, resolved.resolution, batch)
    }

    /// After the tick's schema fetches: the registry is fine again once no
    /// partition waits for it.
    pub(super) fn registry_check(&self, partitions: &Partitions) {
        if self.avro.is_some() && !partitions.waiting_for_schemas() {
            self.status.registry_ok();
        }
    }

    /// Records whose lookup is running.
    pub(super) fn resolving(&self) -> usize {
        self.in_flight.len()
    }

    /// Cancels every lookup (their records' offsets are not stored: the
    /// next owner takes them again) and waits for the tasks to end.
    pub(super) async fn shut_down(&mut self) {
        if !self.in_flight.is_empty() {
            tracing::info!(
                records = self.in_flight.len(),
                "stopping: fan-out lookups still running are dropped; their records are taken again by the next owner"
            );
        }
        self.in_flight.clear();
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Routes one record: into the batch now, or after its lookup.
    async fn take(
        &mut self,
        partitions: &mut Partitions,
        record: KafkaRecord,
        batch: &mut Batch,
        lag: Lag<'_>,
    ) -> Vec<Action> {
        let partition: PartitionId = (record.topic.clone(), record.partition);
        if let Err((ids, error)) = self.load_schemas(&record).await {
            tracing::warn!(topic = %partition.0, partition = partition.1, offset = record.offset, schema_ids = ?ids, %error,
                "schema registry unreachable: this partition waits at the record (nothing past it is committed); the others go on");
            self.status.registry_failed(error);
            return partitions.schema_missing(&partition, record.offset, ids, Instant::now());
        }
        let escalating = partitions.escalating(&partition, lag(&partition));
        let (taken, lookups) = self.route(record, escalating);
        if lookups.is_empty() {
            return self.admit(partitions, taken, Ok((Vec::new(), None)), batch);
        }
        if !needs_query(&self.settings.graph, &lookups, escalating) {
            // Every rule is replaced by its namespace under lag: answered
            // without the database, so without a task or a wait.
            let resolution = fanout::resolve(&self.settings.graph, None, &lookups, escalating).await;
            return self.admit(partitions, taken, resolution, batch);
        }
        let ticket = partitions.fanout_started(&partition, taken.record.offset);
        let cancel = self.stop.child_token();
        let resolving = self.resolver.resolve(lookups, escalating);
        let (slots, results, stop) = (self.lookup_slots.clone(), self.resolved_tx.clone(), cancel.clone());
        self.tasks.spawn(async move {
            let resolution = tokio::select! {
                // Revoked, stalled or shutting down: nobody waits for it.
                _ = stop.cancelled() => return,
                resolution = async {
                    let _slot = slots.acquire().await;
                    resolving.await
                } => resolution,
            };
            let _ = results.send(Resolved { ticket, resolution });
        });
        self.in_flight.insert(
            ticket,
            InFlight {
                partition,
                taken,
                cancel,
            },
        );
        Vec::new()
    }

    /// Decode and graph (or the route offered for the record); under lag an
    /// entity with a namespace is bumped per namespace. The bump's lookups
    /// are returned apart.
    fn route(&mut self, record: KafkaRecord, escalating: bool) -> (Taken, Vec<LookupRequest>) {
        let routed = match self.offered_for(&record) {
            Some(route) => route,
            None => route_with(
                &self.settings.graph,
                &self.settings.plan,
                &record,
                now_us(),
                self.dead_letters,
                self.avro.as_deref(),
            ),
        };
        let Route {
            op,
            mut action,
            dead_letter,
            message,
        } = routed;
        if let Some(outcome) = message {
            metrics::message(outcome);
        }
        let mut lookups = Vec::new();
        if let Routed::Bump {
            targets,
            escalation,
            namespace,
            lookups: requests,
            ..
        } = &mut action
        {
            if let (true, None, Some(ns)) = (escalating, *escalation, namespace.as_ref()) {
                // Coalesces in the plan to one bump per entity per batch.
                *targets = vec![Target::Namespace(ns.clone())];
                *escalation = Some(EscalationReason::Lag);
            }
            lookups = std::mem::take(requests);
        }
        let taken = Taken {
            record,
            op,
            dead_letter,
            action,
        };
        (taken, lookups)
    }

    /// Adds a routed record and its lookups' outcome to the batch, or stalls
    /// its partition at it.
    fn admit(
        &self,
        partitions: &mut Partitions,
        taken: Taken,
        resolution: Resolution,
        batch: &mut Batch,
    ) -> Vec<Action> {
        let Taken {
            record,
            op,
            dead_letter,
            action,
        } = taken;
        let dead_lettered = self.keep_dead_letter(&record, dead_letter, batch);
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
                ..
            } => {
                let stalled = match resolution {
                    Ok((children, reason)) => {
                        targets.extend(children);
                        if let Some(reason) = reason {
                            escalation.get_or_insert(reason);
                        }
                        None
                    }
                    Err((reason, detail)) => Some((StallReason::NoNamespace(reason), detail)),
                };
                targets.sort();
                targets.dedup();
                batch.add_targets(targets, &position, commit_time_us);
                if let Some(timestamp_ms) = record.timestamp_ms {
                    batch.record_times_ms.push(timestamp_ms);
                }
                count_bump(&record, op, escalation, dead_lettered, outcome);
                batch.due_by(Instant::now() + self.linger(consistency));
                stalled
            }
            Routed::Stall { reason, detail } => Some((reason, detail)),
        };
        let partition = (record.topic.clone(), record.partition);
        if let Some((reason, detail)) = stalled {
            return partitions.stall(&partition, record.offset, reason, detail);
        }
        let bytes = record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len);
        batch.count(partition, record.offset, bytes);
        if batch.due_at.is_none() {
            // Skipped records still need their offsets stored soon.
            batch.due_by(Instant::now() + self.settings.plan.eventual_linger);
        }
        Vec::new()
    }

    fn linger(&self, consistency: Consistency) -> Duration {
        match consistency {
            Consistency::Strong => Duration::ZERO,
            Consistency::Eventual => self.settings.plan.eventual_linger,
        }
    }

    /// Puts a bad record's dead letter into the batch (when a store is
    /// configured); true when it did.
    fn keep_dead_letter(&self, record: &KafkaRecord, dead_letter: Option<Failure>, batch: &mut Batch) -> bool {
        let Some(failure) = dead_letter else { return false };
        tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset,
            stage = failure.stage.label(), kind = failure.kind, detail = %failure.detail, "bad record");
        if !self.dead_letters {
            return false;
        }
        batch.dead_letters.push((record.clone(), failure));
        // Written soon even when the record stalls its partition.
        batch.due_by(Instant::now() + self.settings.plan.eventual_linger);
        true
    }

    fn report_stall(&self, partition: &PartitionId, stall: Stall) {
        tracing::error!(topic = %partition.0, partition = partition.1, offset = stall.offset, reason = %stall.reason,
            detail = %stall.detail,
            "partition stalled: this invalidation cannot be applied, escalated or dead-lettered; nothing past it will be committed");
        self.status.stall(partition_label(partition), stall);
    }

    /// Asks the registry again for the schemas a waiting partition owes.
    async fn fetch_schemas(&self, partitions: &mut Partitions, partition: &PartitionId, ids: &[u32]) -> Vec<Action> {
        let Some(avro) = self.avro.clone() else {
            return Vec::new();
        };
        match ensure_schemas(&avro, ids).await {
            Ok(()) => partitions.schemas_arrived(partition),
            Err(error) => {
                tracing::debug!(topic = %partition.0, partition = partition.1, %error, "schema registry still unreachable");
                self.status.registry_failed(error);
                partitions.schemas_still_missing(partition, Instant::now());
                Vec::new()
            }
        }
    }

    /// Loads the Avro schemas a framed record names. An unknown or bad id is
    /// left to decoding (a dead letter); when the registry cannot answer, the
    /// ids it owes are returned with the error.
    async fn load_schemas(&self, record: &KafkaRecord) -> Result<(), (Vec<u32>, String)> {
        let Some(avro) = self.avro.clone() else { return Ok(()) };
        let ids = schema_ids(record);
        ensure_schemas(&avro, &ids).await.map_err(|error| (ids, error))
    }
}

/// The event and escalation counters of a bump, and the warning for an
/// escalation the record itself caused, unless its "bad record" warning
/// already told it (one line per bad record: a hostile stream must not
/// double the log).
fn count_bump(
    record: &KafkaRecord,
    op: &'static str,
    escalation: Option<EscalationReason>,
    dead_lettered: bool,
    outcome: impl Fn(Outcome) -> Outcome,
) {
    let Some(reason) = escalation else {
        metrics::event(op, outcome(Outcome::Applied));
        return;
    };
    metrics::event(op, outcome(Outcome::Escalated));
    metrics::escalation(reason);
    if reason != EscalationReason::Lag && !dead_lettered {
        tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset,
            %reason, "escalated to the namespace: exact keys could not be derived");
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

/// The partition's name in readiness: `topic/partition`.
fn partition_label(partition: &PartitionId) -> String {
    format!("{}/{}", partition.0, partition.1)
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
