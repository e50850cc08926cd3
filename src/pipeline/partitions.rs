//! The partition state machine of the consumer stage, with no I/O: which
//! partitions are paused and why, where each one resumes, which records
//! wait behind a fan-out lookup, when a schema fetch is retried, and which
//! offsets an acknowledged batch may store.
//!
//! It takes events (partitions assigned or revoked, a record fetched, a
//! lookup started or finished, a batch acknowledged, an outage begun or
//! ended, a schema missing or arrived, a seek failed, a tick) and answers
//! with [`Action`]s: records to route now, stalls to report, schema fetches
//! to retry, lookups to drop, and what the rdkafka consumer must do
//! ([`ConsumerAction`]: pause, resume and seek, store offsets). The driver
//! (`ConsumerStage` and the intake) carries them out.
//!
//! The rule it keeps (docs/architecture.md, "Offsets follow Redis"): a
//! partition never stores an offset past a record whose invalidation was
//! not acknowledged, and a paused partition resumes exactly at its first
//! record not yet taken, so nothing it dropped while paused is skipped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::apply::Refused;
use crate::admin::Stall;
use crate::backoff::Backoff;
use crate::event::KafkaRecord;
use crate::graph::StallReason;
use crate::source::PartitionId;

/// The unit's settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `plan.escalate_above_lag`: above it a partition's entities are bumped
    /// per namespace, until the lag is below half of it.
    pub(super) escalate_above_lag: Option<i64>,
    /// The cap of a schema fetch's retry backoff.
    pub(super) schema_retry_cap: Duration,
    /// Records a partition may hold behind a fan-out lookup before it is
    /// paused (and its later records fetched again on resume).
    pub(super) held_records: usize,
    /// The same bound in record bytes (key plus value).
    pub(super) held_bytes: usize,
}

/// One fan-out lookup in flight: its result counts only while the ticket is
/// still its partition's (a revoke or a stall drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Ticket(u64);

/// What the unit asks of the driver.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Route this record now: every earlier record of its partition is
    /// already in a batch.
    Take(KafkaRecord),
    /// Report the partition stalled at `stall.offset` (log, readiness).
    Stall {
        partition: PartitionId,
        stall: Stall,
    },
    /// Ask the registry again for the schemas a waiting partition owes.
    FetchSchemas {
        partition: PartitionId,
        ids: Vec<u32>,
    },
    /// The lookup's result no longer counts: cancel it.
    DropFanout(Ticket),
    /// The partition is no longer ours: drop its offsets from the open
    /// batch and its stall from readiness.
    Forget(PartitionId),
    Consumer(ConsumerAction),
}

/// What the rdkafka consumer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConsumerAction {
    /// `unapplied_from`: the first offset not yet stored, for the lag gauge.
    Pause {
        partition: PartitionId,
        unapplied_from: Option<i64>,
    },
    /// Resume, then seek back to `seek_to` (the first record not taken;
    /// resume alone would go on past the records dropped while paused). A
    /// failed seek must be reported with [`Partitions::seek_failed`].
    Resume {
        partition: PartitionId,
        seek_to: Option<i64>,
    },
    /// Store these next offsets for librdkafka's auto-commit.
    Store(Vec<(PartitionId, i64)>),
}

/// A partition parked at `offset` until the registry serves `ids`.
#[derive(Debug)]
struct SchemaWait {
    offset: i64,
    ids: Vec<u32>,
    retry_at: Instant,
    backoff: Backoff,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset to take: one past the last record taken or held.
    next_offset: Option<i64>,
    /// Stopped at this record: nothing at or past it is stored.
    stalled_at: Option<i64>,
    /// Parked at a record whose Avro schema the registry cannot serve now.
    schema_wait: Option<SchemaWait>,
    /// A seek on resume failed: paused until a retry succeeds, because
    /// consuming on from librdkafka's position would skip dropped records.
    seek_pending: bool,
    /// Its held records reached the limits: paused until half are taken.
    held_full: bool,
    /// What the unit last told the consumer.
    paused: bool,
    /// Lag above `escalate_above_lag`: namespaces instead of keys.
    escalating: bool,
    /// The last offset stored (the next to consume), for the lag gauge.
    stored_offset: Option<i64>,
    /// The record whose fan-out lookup is in flight.
    fanout: Option<Ticket>,
    /// Records fetched after it, in order, waiting to be taken.
    held: VecDeque<KafkaRecord>,
    held_bytes: usize,
}

impl PartitionState {
    /// Stopped for a reason of its own, so it stays paused when an outage
    /// of the whole pipeline ends.
    fn holds(&self) -> bool {
        self.stalled_at.is_some() || self.schema_wait.is_some() || self.seek_pending || self.held_full
    }

    /// Forgets the held records and the lookup in flight; the ticket to cancel.
    fn drop_held(&mut self) -> Option<Ticket> {
        self.held.clear();
        self.held_bytes = 0;
        self.held_full = false;
        self.fanout.take()
    }
}

pub(super) struct Partitions {
    limits: Limits,
    /// Ordered, so that actions over many partitions come in a stable order.
    states: BTreeMap<PartitionId, PartitionState>,
    /// Redis or the dead-letter store is unreachable: every partition is
    /// paused and Kafka holds the backlog.
    outage: bool,
    /// Partitions whose held records may be taken (no lookup in flight).
    ready: VecDeque<PartitionId>,
    last_ticket: u64,
}

impl Partitions {
    pub(super) fn new(limits: Limits) -> Partitions {
        Partitions {
            limits,
            states: BTreeMap::new(),
            outage: false,
            ready: VecDeque::new(),
            last_ticket: 0,
        }
    }

    pub(super) fn assigned(&mut self, partitions: &[PartitionId]) -> Vec<Action> {
        let mut actions = Vec::new();
        for id in partitions {
            let state = self.states.entry(id.clone()).or_default();
            *state = PartitionState::default();
            actions.extend(reconcile(self.outage, id, state));
        }
        actions
    }

    /// A revoked partition's pending offsets, held records and lookup are
    /// dropped: the new owner resumes from the last commit.
    pub(super) fn revoked(&mut self, partitions: &[PartitionId]) -> Vec<Action> {
        let mut actions = Vec::new();
        for id in partitions {
            if let Some(ticket) = self.states.remove(id).and_then(|mut s| s.drop_held()) {
                actions.push(Action::DropFanout(ticket));
            }
            actions.push(Action::Forget(id.clone()));
        }
        actions
    }

    /// A record fetched from Kafka: taken now, held behind its partition's
    /// lookup, or dropped because the partition is paused (it is fetched
    /// again after the seek on resume, or by the next run after a stall).
    pub(super) fn record(&mut self, record: KafkaRecord) -> Vec<Action> {
        let id = (record.topic.clone(), record.partition);
        let state = self.states.entry(id.clone()).or_default();
        if self.outage || state.holds() {
            state.next_offset.get_or_insert(record.offset);
            return reconcile(self.outage, &id, state).into_iter().collect();
        }
        state.next_offset = Some(record.offset + 1);
        if state.fanout.is_none() && state.held.is_empty() {
            return vec![Action::Take(record)];
        }
        state.held_bytes += record_bytes(&record);
        state.held.push_back(record);
        if state.held.len() >= self.limits.held_records || state.held_bytes >= self.limits.held_bytes {
            state.held_full = true;
        }
        reconcile(self.outage, &id, state).into_iter().collect()
    }

    /// Whether [`Partitions::take_ready`] may have a record to take.
    pub(super) fn has_ready(&self) -> bool {
        !self.outage && !self.ready.is_empty()
    }

    /// The next held record whose lookup has resolved, partitions taking
    /// turns; a partition paused because its held records were full resumes
    /// once half are taken. Nothing during an outage.
    pub(super) fn take_ready(&mut self) -> Vec<Action> {
        if self.outage {
            return Vec::new();
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(state) = self.states.get_mut(&id) else {
                continue;
            };
            if state.fanout.is_some() {
                continue;
            }
            let Some(record) = state.held.pop_front() else { continue };
            state.held_bytes -= record_bytes(&record);
            if !state.held.is_empty() {
                self.ready.push_back(id.clone());
            }
            let mut actions = vec![Action::Take(record)];
            if state.held_full
                && state.held.len() <= self.limits.held_records / 2
                && state.held_bytes <= self.limits.held_bytes / 2
            {
                state.held_full = false;
                actions.extend(reconcile(self.outage, &id, state));
            }
            return actions;
        }
        Vec::new()
    }

    /// The partition's lag decides whether its entities are bumped per
    /// namespace: above the threshold, until below half of it.
    pub(super) fn escalating(&mut self, id: &PartitionId, lag: Option<i64>) -> bool {
        let state = self.states.entry(id.clone()).or_default();
        if let (Some(threshold), Some(lag)) = (self.limits.escalate_above_lag, lag) {
            if !state.escalating && lag > threshold {
                state.escalating = true;
                tracing::warn!(topic = %id.0, partition = id.1, lag, threshold,
                    "lag above plan.escalate_above_lag: bumping namespaces instead of keys until it recovers");
            } else if state.escalating && lag < threshold / 2 {
                state.escalating = false;
                tracing::info!(topic = %id.0, partition = id.1, lag, "lag recovered: back to per-key bumps");
            }
        }
        state.escalating
    }

    /// The record at `offset` waits for a fan-out lookup: the partition's
    /// later records are held until [`Partitions::fanout_finished`].
    pub(super) fn fanout_started(&mut self, id: &PartitionId, offset: i64) -> Ticket {
        self.last_ticket += 1;
        let ticket = Ticket(self.last_ticket);
        let state = self.states.entry(id.clone()).or_default();
        tracing::debug!(topic = %id.0, partition = id.1, offset, "fan-out lookup started; later records of the partition wait behind it");
        state.fanout = Some(ticket);
        ticket
    }

    /// True when the result still counts: the record goes into the batch
    /// now, and its partition's held records may be taken after it.
    pub(super) fn fanout_finished(&mut self, id: &PartitionId, ticket: Ticket) -> bool {
        let Some(state) = self.states.get_mut(id).filter(|s| s.fanout == Some(ticket)) else {
            return false;
        };
        state.fanout = None;
        if !state.held.is_empty() && !self.ready.contains(id) {
            self.ready.push_back(id.clone());
        }
        true
    }

    /// Stops a partition at `offset`: nothing at or past it is stored, its
    /// held records and lookup are dropped, and it stays paused until an
    /// operator acts (docs/architecture.md, "Never silent").
    pub(super) fn stall(&mut self, id: &PartitionId, offset: i64, reason: StallReason, detail: String) -> Vec<Action> {
        let Some(state) = self.states.get_mut(id) else {
            tracing::warn!(topic = %id.0, partition = id.1, offset, %reason, %detail,
                "a record of a partition no longer ours cannot be applied; its new owner meets it again");
            return Vec::new();
        };
        state.stalled_at = Some(state.stalled_at.map_or(offset, |at| at.min(offset)));
        state.next_offset = Some(offset);
        let mut actions: Vec<Action> = state.drop_held().map(Action::DropFanout).into_iter().collect();
        actions.push(Action::Stall {
            partition: id.clone(),
            stall: Stall { offset, reason, detail },
        });
        actions.extend(reconcile(self.outage, id, state));
        actions
    }

    /// The registry cannot serve the schemas of the record at `offset`: the
    /// partition waits there (paused, later records dropped) and asks again
    /// with capped backoff; the other partitions go on.
    pub(super) fn schema_missing(&mut self, id: &PartitionId, offset: i64, ids: Vec<u32>, now: Instant) -> Vec<Action> {
        let state = self.states.entry(id.clone()).or_default();
        state.next_offset = Some(offset);
        let mut actions: Vec<Action> = state.drop_held().map(Action::DropFanout).into_iter().collect();
        let mut backoff = Backoff::new(self.limits.schema_retry_cap);
        state.schema_wait = Some(SchemaWait {
            offset,
            ids,
            retry_at: now + backoff.next_delay(),
            backoff,
        });
        actions.extend(reconcile(self.outage, id, state));
        actions
    }

    /// The registry still cannot serve them: the next try waits longer.
    pub(super) fn schemas_still_missing(&mut self, id: &PartitionId, now: Instant) {
        if let Some(wait) = self.states.get_mut(id).and_then(|s| s.schema_wait.as_mut()) {
            wait.retry_at = now + wait.backoff.next_delay();
        }
    }

    /// The schemas are loaded: the partition resumes at the record that
    /// waited, unless something else holds it.
    pub(super) fn schemas_arrived(&mut self, id: &PartitionId) -> Vec<Action> {
        let Some(state) = self.states.get_mut(id) else {
            return Vec::new();
        };
        let Some(wait) = state.schema_wait.take() else {
            return Vec::new();
        };
        tracing::info!(topic = %id.0, partition = id.1, offset = wait.offset,
            "schemas loaded: the partition resumes at the record that waited");
        reconcile(self.outage, id, state).into_iter().collect()
    }

    pub(super) fn waiting_for_schemas(&self) -> bool {
        self.states.values().any(|s| s.schema_wait.is_some())
    }

    /// The seek after a resume failed: paused again, retried on the tick.
    pub(super) fn seek_failed(&mut self, id: &PartitionId) -> Vec<Action> {
        let Some(state) = self.states.get_mut(id) else {
            return Vec::new();
        };
        state.seek_pending = true;
        reconcile(self.outage, id, state).into_iter().collect()
    }

    pub(super) fn outage_began(&mut self) -> Vec<Action> {
        self.outage = true;
        self.reconcile_all()
    }

    /// Every partition resumes at its first record not taken, except those
    /// held for a reason of their own (stall, schema wait, failed seek, full
    /// held records).
    pub(super) fn outage_ended(&mut self) -> Vec<Action> {
        self.outage = false;
        self.reconcile_all()
    }

    pub(super) fn in_outage(&self) -> bool {
        self.outage
    }

    /// A batch is acknowledged: refused dead letters stall their partitions
    /// first, then the offsets that may be stored are.
    pub(super) fn applied(&mut self, done: &HashMap<PartitionId, i64>, refused: Vec<Refused>) -> Vec<Action> {
        let mut actions = Vec::new();
        for refusal in refused {
            actions.extend(self.stall(
                &refusal.partition,
                refusal.offset,
                StallReason::DeadLetterRefused,
                refusal.detail,
            ));
        }
        let stored = storable(done, |id| self.states.get(id).map(|s| s.stalled_at));
        for (id, next) in &stored {
            if let Some(state) = self.states.get_mut(id) {
                state.stored_offset = Some(*next);
            }
        }
        if !stored.is_empty() {
            actions.push(Action::Consumer(ConsumerAction::Store(stored)));
        }
        actions
    }

    /// Schema fetches that are due, and failed seeks to try again (not
    /// during an outage: its end resumes them).
    pub(super) fn tick(&mut self, now: Instant) -> Vec<Action> {
        let outage = self.outage;
        let mut actions = Vec::new();
        for (id, state) in &mut self.states {
            if let Some(wait) = state.schema_wait.as_ref().filter(|w| w.retry_at <= now) {
                actions.push(Action::FetchSchemas {
                    partition: id.clone(),
                    ids: wait.ids.clone(),
                });
            }
            if state.seek_pending && !outage {
                state.seek_pending = false;
                if !state.holds() {
                    tracing::info!(topic = %id.0, partition = id.1, offset = ?state.next_offset, "retrying the seek: the partition resumes if it succeeds");
                }
                actions.extend(reconcile(outage, id, state));
            }
        }
        actions
    }

    /// Partitions the consumer has paused, for the gauge.
    pub(super) fn paused(&self) -> usize {
        self.states.values().filter(|s| s.paused).count()
    }

    /// Records held behind lookups, across partitions.
    pub(super) fn held(&self) -> usize {
        self.states.values().map(|s| s.held.len()).sum()
    }

    pub(super) fn assigned_count(&self) -> usize {
        self.states.len()
    }

    fn reconcile_all(&mut self) -> Vec<Action> {
        let outage = self.outage;
        self.states
            .iter_mut()
            .filter_map(|(id, state)| reconcile(outage, id, state))
            .collect()
    }
}

/// The pause or resume that brings the consumer in line with the state.
fn reconcile(outage: bool, id: &PartitionId, state: &mut PartitionState) -> Option<Action> {
    let should_pause = outage || state.holds();
    let action = match (state.paused, should_pause) {
        (false, true) => ConsumerAction::Pause {
            partition: id.clone(),
            unapplied_from: state.stored_offset,
        },
        (true, false) => ConsumerAction::Resume {
            partition: id.clone(),
            seek_to: state.next_offset,
        },
        _ => return None,
    };
    state.paused = should_pause;
    Some(Action::Consumer(action))
}

fn record_bytes(record: &KafkaRecord) -> usize {
    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len)
}

/// The offsets an applied batch may store: only partitions still ours, and
/// never at or past a stalled record (a batch handed over before the stall
/// was known may hold later records of its partition). `owned` answers
/// None for a partition not ours, else its stall.
pub(super) fn storable(
    done: &HashMap<PartitionId, i64>,
    owned: impl Fn(&PartitionId) -> Option<Option<i64>>,
) -> Vec<(PartitionId, i64)> {
    let mut out: Vec<(PartitionId, i64)> = done
        .iter()
        .filter_map(|(partition, &offset)| {
            let stalled_at = owned(partition)?;
            let next = match stalled_at {
                Some(stall) => (offset + 1).min(stall),
                None => offset + 1,
            };
            (next > 0).then(|| (partition.clone(), next))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
#[path = "partitions_tests.rs"]
mod tests;
