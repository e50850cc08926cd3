//! The apply stage: its own task, fed sealed batches through a bounded
//! channel (the backpressure), so the consumer stage fills the next batch
//! while this one waits on Redis. Batches are applied strictly in the order
//! they were sealed, and each is reported back only after Redis (and the
//! dead-letter store) acknowledged all of it: the consumer stage stores
//! offsets from those reports, so offsets follow acknowledgements in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::now_us;
use crate::admin::Status;
use crate::backoff::{Failed, Next, Retry};
use crate::config::Settings;
use crate::dead_letter::{DeadLetterError, DeadLetterStore, Failure};
use crate::event::KafkaRecord;
use crate::metrics;
use crate::plan::{Bump, Plan};
use crate::sink::epoch::LossReason;
use crate::sink::notice::Notices;
use crate::sink::{BumpResult, RedisSink, SinkError};
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
    settings: Arc<Settings>,
    sink: RedisSink,
    dead_letters: Option<DeadLetterStore>,
    notices: Option<Arc<Notices>>,
    /// Every namespace of the graph: all are bumped when Redis lost writes.
    namespaces: Vec<String>,
    health: Health,
}

/// What the applier tells the readiness probe and the consumer stage about
/// its dependencies: kept apart from the sink so that a retry's classifier
/// can report while the operation holds the sink.
struct Health {
    status: Arc<Status>,
    reports: mpsc::UnboundedSender<Report>,
    /// Between the first failed write and the next success. Atomic because
    /// a batch's dead letters and bumps are written at once, and either may
    /// report.
    in_outage: AtomicBool,
}

impl Applier {
    pub(super) fn new(
        settings: Arc<Settings>,
        sink: RedisSink,
        dead_letters: Option<DeadLetterStore>,
        notices: Option<Arc<Notices>>,
        status: Arc<Status>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Applier {
        Applier {
            namespaces: all_namespaces(&settings),
            settings,
            sink,
            dead_letters,
            notices,
            health: Health {
                status,
                reports,
                in_outage: AtomicBool::new(false),
            },
        }
    }

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
        // Retry::run calls the operation again for each attempt, one at a
        // time: the lock only lends the sink to the attempt running now.
        let sink = tokio::sync::Mutex::new(&mut self.sink);
        let namespaces = &self.namespaces;
        let health = &self.health;
        let recovered = Retry::new(self.settings.redis.max_retry_backoff)
            .cancelled_by(give_up)
            .run(
                || {
                    let sink = &sink;
                    async move { sink.lock().await.recover(namespaces).await }
                },
                |error, _| {
                    health.outage(Dependency::Redis, error.kind_label(), &error.to_string());
                    Next::Retry
                },
            )
            .await;
        match recovered {
            Ok(epoch) => {
                self.health.status.redis_ok();
                tracing::info!(%epoch, namespaces = self.namespaces.len(), "epoch advanced: data keys cached before the loss are unreachable");
            }
            // Every failure is retried: only the shutdown ends the retries.
            Err(failed) => {
                tracing::error!(attempts = failed.attempts(), last_error = %failed.error(),
                    "shutdown before the epoch could be advanced after a redis data loss; the next run's check finds it again only if the record is still behind");
                return Err(Abandoned);
            }
        }
        self.health.healthy();
        Ok(())
    }

    /// Writes the batch's dead letters and applies its bumps (retrying while a
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
        let bumps = plan.into_bumps();
        // Two stores, no order between them: the batch is reported only once
        // both acknowledged, so the dead-letter statement runs while Redis
        // applies the bumps instead of before them.
        let retry_cap = self.settings.redis.max_retry_backoff;
        let (written, applied) = tokio::join!(
            write_dead_letters(
                self.dead_letters.as_ref(),
                &dead_letters,
                &self.health,
                retry_cap,
                give_up
            ),
            apply_bumps(&mut self.sink, &bumps, &self.health, retry_cap, give_up),
        );
        let refused: Vec<Refused> = written?
            .into_iter()
            .map(|(record, error)| refuse(record, &mut done, &error))
            .collect();
        if let Some(results) = applied? {
            self.announce(&bumps, &results).await;
        }
        let acknowledged_ms = now_us() / 1000;
        let apply_latency = metrics::histogram_handle(metrics::APPLY_LATENCY);
        for timestamp_ms in &record_times_ms {
            apply_latency.record((acknowledged_ms - timestamp_ms).max(0) as f64 / 1e3);
        }
        if let Some(reason) = self.sink.take_loss() {
            // This batch's bumps are in Redis; what Redis forgot before them
            // is covered by the epoch before the next batch is applied.
            self.recover_from_loss(reason, give_up).await?;
        }
        self.health.healthy();
        // The receiver is gone only when the consumer stage stopped waiting.
        let _ = self.health.reports.send(Report::Applied { done, records, refused });
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
}

impl Health {
    fn outage(&self, dependency: Dependency, kind: &'static str, error: &str) {
        match dependency {
            Dependency::Redis => {
                metrics::redis_error(kind);
                self.status.redis_failed(error.to_owned());
            }
            Dependency::DeadLetters => self.status.dead_letters_failed(error.to_owned()),
        }
        if !self.in_outage.swap(true, Ordering::Relaxed) {
            tracing::warn!(?dependency, %error, "write failed; pausing consumption and retrying (nothing is committed meanwhile)");
            let _ = self.reports.send(Report::Outage);
        } else {
            tracing::debug!(?dependency, %error, "write failed again");
        }
    }

    fn healthy(&self) {
        if self.in_outage.swap(false, Ordering::Relaxed) {
            let _ = self.reports.send(Report::Healthy);
        }
    }
}

/// Writes a batch's dead letters, one statement per
/// [`DeadLetterStore::ROWS_PER_STATEMENT`] records, retrying while the store
/// is unreachable. When the store refuses a statement's data, its records
/// are written one by one; the ones it refuses are returned, for their
/// partitions to stop just before them.
async fn write_dead_letters<'a>(
    store: Option<&DeadLetterStore>,
    dead_letters: &'a [(KafkaRecord, Failure)],
    health: &Health,
    retry_cap: Duration,
    give_up: &CancellationToken,
) -> Result<Vec<(&'a KafkaRecord, DeadLetterError)>, Abandoned> {
    let Some(store) = store else {
        return Ok(Vec::new());
    };
    let mut refused = Vec::new();
    for chunk in dead_letters.chunks(DeadLetterStore::ROWS_PER_STATEMENT) {
        let letters: Vec<(&KafkaRecord, &Failure)> = chunk.iter().map(|(record, failure)| (record, failure)).collect();
        match write_with_retry(|| store.write_all(&letters), health, retry_cap, give_up).await? {
            Ok(()) => {
                for (_, failure) in chunk {
                    metrics::dead_letter(failure.stage.label(), failure.kind);
                }
            }
            Err(_) => {
                for (record, failure) in chunk {
                    match write_with_retry(|| store.write(record, failure), health, retry_cap, give_up).await? {
                        Ok(()) => metrics::dead_letter(failure.stage.label(), failure.kind),
                        Err(error) => refused.push((record, error)),
                    }
                }
            }
        }
    }
    Ok(refused)
}

/// Runs one dead-letter statement until the store answers: `Ok(Err)` when it
/// refused the data (retrying cannot help and is no outage), `Err` when the
/// shutdown gave up while the store was unreachable.
async fn write_with_retry<F, Fut>(
    write: F,
    health: &Health,
    retry_cap: Duration,
    give_up: &CancellationToken,
) -> Result<Result<(), DeadLetterError>, Abandoned>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DeadLetterError>>,
{
    let started = Instant::now();
    let written = Retry::new(retry_cap)
        .cancelled_by(give_up)
        .run(write, |error, _| {
            if error.is_data_error() {
                health.status.dead_letters_ok();
                Next::Stop
            } else {
                health.outage(Dependency::DeadLetters, "unreachable", &error.to_string());
                Next::Retry
            }
        })
        .await;
    match written {
        Ok(()) => {
            metrics::dead_letter_write(started.elapsed().as_secs_f64());
            health.status.dead_letters_ok();
            Ok(Ok(()))
        }
        Err(Failed::Permanent { error, .. }) => Ok(Err(error)),
        // Unreachable errors are retried until the shutdown gives up.
        Err(failed) => {
            tracing::warn!(attempts = failed.attempts(), last_error = %failed.error(),
                "shutdown while the dead-letter store is unreachable: nothing committed past the record");
            Err(Abandoned)
        }
    }
}

/// Sends the bumps until Redis acknowledges them; their results, or `None`
/// when there were none.
async fn apply_bumps(
    sink: &mut RedisSink,
    bumps: &[Bump],
    health: &Health,
    retry_cap: Duration,
    give_up: &CancellationToken,
) -> Result<Option<Vec<BumpResult>>, Abandoned> {
    if bumps.is_empty() {
        return Ok(None);
    }
    // One attempt at a time holds the sink (see recover_from_loss).
    let sink = tokio::sync::Mutex::new(sink);
    let applied = Retry::new(retry_cap)
        .cancelled_by(give_up)
        .run(
            || {
                let sink = &sink;
                async move {
                    let started = Instant::now();
                    let results = sink.lock().await.apply(bumps).await?;
                    Ok::<_, SinkError>((results, started.elapsed()))
                }
            },
            |error, _| {
                health.outage(Dependency::Redis, error.kind_label(), &error.to_string());
                if error.is_retriable() {
                    return Next::Retry;
                }
                tracing::error!(%error, targets = bumps.len(),
                    "redis refused the batch: retrying cannot fix this (a version record that is not a hash? an ACL without a command README lists?); retrying at the longest backoff until an operator fixes it, nothing committed meanwhile");
                Next::RetryAtCap
            },
        )
        .await;
    match applied {
        Ok((results, took)) => {
            metrics::redis_apply(took.as_secs_f64(), bumps.len());
            record_results(bumps, &results);
            health.status.redis_ok();
            Ok(Some(results))
        }
        // Every failure is retried: only the shutdown ends the retries.
        Err(failed) => {
            tracing::warn!(targets = bumps.len(), attempts = failed.attempts(), last_error = %failed.error(),
                "shutdown during a redis outage: the unapplied batch is left to the next run (nothing committed past it)");
            Err(Abandoned)
        }
    }
}

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

fn record_results(bumps: &[Bump], results: &[BumpResult]) {
    let now = now_us();
    let propagation = metrics::histogram_handle(metrics::PROPAGATION);
    let mut counts: HashMap<(&'static str, bool), u64> = HashMap::new();
    for (bump, result) in bumps.iter().zip(results) {
        *counts.entry((bump.target.kind_label(), result.applied())).or_default() += 1;
        if result.applied() {
            if let Some(commit) = bump.commit_time_us {
                propagation.record((now - commit).max(0) as f64 / 1e6);
            }
        }
    }
    for ((kind, applied), count) in counts {
        metrics::targets(kind, applied, count);
    }
}

/// A record the dead-letter store refused: its partition stops just before
/// it, so nothing at or past it is committed.
fn refuse(record: &KafkaRecord, done: &mut HashMap<PartitionId, i64>, error: &DeadLetterError) -> Refused {
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
    Refused {
        partition,
        offset: record.offset,
        detail: format!("the dead-letter store refused the record ({error})"),
    }
}
