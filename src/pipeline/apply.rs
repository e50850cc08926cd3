//! The apply stage: its own task, fed sealed batches through a bounded
//! channel (the backpressure), so the consumer stage fills the next batch
//! while this one waits on Redis. Batches are applied strictly in the order
//! they were sealed, and each is reported back only after Redis (and the
//! dead-letter store) acknowledged all of it: the consumer stage stores
//! offsets from those reports, so offsets follow acknowledgements in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::now_us;
use crate::admin::Status;
use crate::backoff::Backoff;
use crate::config::Settings;
use crate::dead_letter::{DeadLetterStore, Failure};
use crate::event::KafkaRecord;
use crate::metrics;
use crate::plan::{Bump, Plan};
use crate::sink::epoch::LossReason;
use crate::sink::notice::Notices;
use crate::sink::{BumpResult, RedisSink};
use crate::source::PartitionId;

/// A batch handed from the consumer stage to the applier.
pub(super) struct Sealed {
    pub(crate) plan: Plan,
    pub(crate) dead_letters: Vec<(KafkaRecord, Failure)>,
    pub(crate) done: HashMap<PartitionId, i64>,
    pub(crate) record_times_ms: Vec<i64>,
    pub(crate) records: usize,
}

/// A record the dead-letter store refused: its partition stops just before it.
#[derive(Debug)]
pub(super) struct Refused {
    pub(crate) partition: PartitionId,
    pub(crate) offset: i64,
    pub(crate) detail: String,
}

/// What the applier tells the consumer stage, in order.
#[derive(Debug)]
pub(super) enum Report {
    /// A write failed: consumption pauses (Kafka holds the backlog) until
    /// `Healthy`.
    Outage,
    /// The dependency that failed answers again: consumption resumes.
    Healthy,
    /// A batch is acknowledged: its offsets may be stored (after the stalls).
    Applied {
        done: HashMap<PartitionId, i64>,
        records: usize,
        refused: Vec<Refused>,
    },
}

/// What a batch waits on while it retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dependency {
    Redis,
    DeadLetters,
}

/// The applier gave up because it was told to stop retrying (shutdown).
#[derive(Debug)]
pub(super) struct Abandoned;

pub(super) struct Applier {
    pub(crate) settings: Arc<Settings>,
    pub(crate) sink: RedisSink,
    pub(crate) dead_letters: Option<DeadLetterStore>,
    pub(crate) notices: Option<Arc<Notices>>,
    pub(crate) status: Arc<Status>,
    pub(crate) reports: mpsc::UnboundedSender<Report>,
    /// Every namespace of the graph: all are bumped when Redis lost writes.
    pub(crate) namespaces: Vec<String>,
    /// Between the first failed write and the next success.
    pub(crate) in_outage: bool,
}

impl Applier {
    /// Applies batches until the channel closes (the consumer stage stopped
    /// and everything sealed was applied) or `give_up` is cancelled while a
    /// write is failing; between batches it checks Redis for lost writes.
    pub(crate) async fn run(mut self, mut batches: mpsc::Receiver<Sealed>, give_up: CancellationToken) {
        // Before anything is applied: did Redis lose writes while no daemon watched?
        if self.check_loss(&give_up).await.is_err() {
            return;
        }
        let loss_interval = self.settings.redis.loss_check_interval;
        let mut next_loss_check = Instant::now() + loss_interval;
        loop {
            tokio::select! {
                biased;
                sealed = batches.recv() => {
                    let Some(sealed) = sealed else { break };
                    if self.apply(sealed, &give_up).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next_loss_check) => {
                    if self.check_loss(&give_up).await.is_err() {
                        return;
                    }
                    next_loss_check = Instant::now() + loss_interval;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.forget_watermark()).await;
    }

    /// The periodic look at the epoch record; an unreachable Redis is left to
    /// the readiness probe and the next apply.
    async fn check_loss(&mut self, give_up: &CancellationToken) -> Result<(), Abandoned> {
        match self.sink.check_loss().await {
            Ok(Some(reason)) => self.recover_from_loss(reason, give_up).await,
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
    async fn recover_from_loss(&mut self, reason: LossReason, give_up: &CancellationToken) -> Result<(), Abandoned> {
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
                    if wait(backoff.next_delay(), give_up).await.is_err() {
                        tracing::error!("shutdown before the epoch could be advanced after a redis data loss; the next run's check finds it again only if the record is still behind");
                        return Err(Abandoned);
                    }
                }
            }
        }
        self.healthy();
        Ok(())
    }

    /// Writes the batch's dead letters, applies its bumps (retrying while a
    /// dependency is unreachable), then reports it acknowledged.
    async fn apply(&mut self, sealed: Sealed, give_up: &CancellationToken) -> Result<(), Abandoned> {
        let Sealed {
            plan,
            dead_letters,
            mut done,
            record_times_ms,
            records,
        } = sealed;
        metrics::coalesced(plan.coalesced());
        let mut refused = Vec::new();
        if let Some(store) = self.dead_letters.clone() {
            for (record, failure) in &dead_letters {
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
                                    let last = done.entry(partition.clone()).or_insert(before);
                                    *last = (*last).min(before);
                                }
                                _ => {
                                    done.remove(&partition);
                                }
                            }
                            refused.push(Refused {
                                partition,
                                offset: record.offset,
                                detail: format!("the dead-letter store refused the record ({error})"),
                            });
                            break;
                        }
                        Err(error) => {
                            self.outage(Dependency::DeadLetters, "unreachable", &error.to_string());
                            if wait(backoff.next_delay(), give_up).await.is_err() {
                                tracing::warn!("shutdown while the dead-letter store is unreachable: nothing committed past the record");
                                return Err(Abandoned);
                            }
                        }
                    }
                }
            }
        }
        let bumps = plan.into_bumps();
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
                    let delay = if error.is_retriable() {
                        backoff.next_delay()
                    } else {
                        tracing::error!(%error, targets = bumps.len(),
                            "redis refused the batch: retrying cannot fix this (a version record that is not a hash? an ACL without a command README lists?); retrying at the longest backoff until an operator fixes it, nothing committed meanwhile");
                        self.settings.redis.max_retry_backoff
                    };
                    if wait(delay, give_up).await.is_err() {
                        tracing::warn!(targets = bumps.len(), "shutdown during a redis outage: the unapplied batch is left to the next run (nothing committed past it)");
                        return Err(Abandoned);
                    }
                }
            }
        }
        let acknowledged_ms = now_us() / 1000;
        for timestamp_ms in &record_times_ms {
            metrics::apply_latency((acknowledged_ms - timestamp_ms).max(0) as f64 / 1e3);
        }
        if let Some(reason) = self.sink.take_loss() {
            // This batch's bumps are in Redis; what Redis forgot before them
            // is covered by the epoch before the next batch is applied.
            self.recover_from_loss(reason, give_up).await?;
        }
        self.healthy();
        // The receiver is gone only when the consumer stage stopped waiting.
        let _ = self.reports.send(Report::Applied { done, records, refused });
        Ok(())
    }

    /// Notices of the applied bumps: Pub/Sub inline (one round trip), Kafka
    /// in the background. Best effort: failures are counted, not retried.
    async fn announce(&mut self, bumps: &[Bump], results: &[BumpResult]) {
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
        notices.publish_kafka_in_background(list);
    }

    fn outage(&mut self, dependency: Dependency, kind: &'static str, error: &str) {
        match dependency {
            Dependency::Redis => {
                metrics::redis_error(kind);
                self.status.redis_failed(error.to_owned());
            }
            Dependency::DeadLetters => self.status.dead_letters_failed(error.to_owned()),
        }
        if !self.in_outage {
            tracing::warn!(?dependency, %error, "write failed; pausing consumption and retrying (nothing is committed meanwhile)");
            self.in_outage = true;
            let _ = self.reports.send(Report::Outage);
        } else {
            tracing::debug!(?dependency, %error, "write failed again");
        }
    }

    fn healthy(&mut self) {
        if self.in_outage {
            self.in_outage = false;
            let _ = self.reports.send(Report::Healthy);
        }
    }
}

/// Sleeps `delay` unless told to give up first.
async fn wait(delay: Duration, give_up: &CancellationToken) -> Result<(), Abandoned> {
    tokio::select! {
        biased;
        _ = give_up.cancelled() => Err(Abandoned),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

fn record_results(bumps: &[Bump], results: &[BumpResult]) {
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
