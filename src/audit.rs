//! The consistency auditor (`cdc-invalidator audit`): a black-box check in
//! the spirit of Meta's Polaris. It reads the same change topics with its own
//! consumer group, samples changes, and after an SLO checks in Redis that
//! every dependent version record's guard has reached the change's position
//! (or that the entity's namespace has, which covers the keys). It exports
//! checks, violations and the stale ratio, and reports "N nines within M s".
//!
//! A change not visible at the SLO is a violation, and is checked again
//! `recheck_after` later: then it is late (it arrived), covered or lost,
//! each counted and printed. Covered is how a reader sees it
//! (readers/spec.md, section 2: a data key names the epoch, the deps' `v`
//! and the namespaces' `v`): a record that did not move, while the epoch or
//! the entity's namespace moved after the change (a data-loss recovery, a
//! namespace bump), leaves no stale data key reachable. "After the change"
//! is after the auditor consumed it: the epoch and the namespace version
//! read then are the baseline. Outages of Redis or Kafka are gaps, not
//! exits: a check that cannot read Redis waits and is tried again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::config::{RedisSettings, Settings};
use crate::event::Position;
use crate::graph::Target;
use crate::pipeline::{self, Routed};
use crate::sink::connection::Connection;
use crate::sink::{epoch, reply};

#[derive(Debug, Clone)]
pub(crate) struct AuditOptions {
    /// How long a change may take to reach Redis before it counts as a violation.
    pub(crate) slo: Duration,
    /// Check one change in this many.
    pub(crate) sample_every: u64,
    /// Stop after this long (then finish the checks already due); None runs until a signal.
    pub(crate) duration: Option<Duration>,
    /// How long after the SLO a violation is checked again, to tell late from lost.
    pub(crate) recheck_after: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AuditReport {
    pub(crate) checks: u64,
    pub(crate) violations: u64,
    /// Violations that had arrived by the recheck.
    pub(crate) late: u64,
    /// Violations not arrived at the recheck, but covered by an epoch or
    /// namespace move after the change.
    pub(crate) covered: u64,
    /// Violations neither arrived nor covered at the recheck.
    pub(crate) lost: u64,
    /// Changes covered by an epoch or namespace move already at the SLO:
    /// a reader following the key protocol (which folds both into its data
    /// keys) sees no stale value, so they are checks passed, not violations.
    pub(crate) covered_in_time: u64,
}

impl AuditReport {
    pub(crate) fn stale_ratio(&self) -> f64 {
        if self.checks == 0 {
            0.0
        } else {
            self.violations as f64 / self.checks as f64
        }
    }

    /// Whole nines of the fraction of changes that arrived within the SLO.
    /// With no violation the sample only supports log10(checks) nines.
    // The cast takes a whole number in 0..=19: ratio is at least 1/checks
    // (checks a u64 above 0), so -log10(ratio) is at most log10(u64::MAX) < 20,
    // and max(0.0) keeps it from being negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub(crate) fn nines(&self) -> u32 {
        if self.checks == 0 {
            return 0;
        }
        let ratio = if self.violations == 0 {
            1.0 / self.checks as f64
        } else {
            self.stale_ratio()
        };
        (-ratio.log10()).floor().max(0.0) as u32
    }

    pub(crate) fn summary(&self, slo: Duration) -> String {
        let bound = if self.violations == 0 && self.checks > 0 {
            "at least "
        } else {
            ""
        };
        let unresolved = self.violations.saturating_sub(self.late + self.covered + self.lost);
        format!(
            "{bound}{} nines within {} seconds ({} checks, {} covered by the epoch or a namespace in time, {} violations: {} late, {} covered, {} lost{}; stale ratio {:.4}%)",
            self.nines(),
            slo.as_secs_f64(),
            self.checks,
            self.covered_in_time,
            self.violations,
            self.late,
            self.covered,
            self.lost,
            if unresolved > 0 {
                format!(", {unresolved} not rechecked yet")
            } else {
                String::new()
            },
            self.stale_ratio() * 100.0
        )
    }
}

struct Pending {
    due: Instant,
    /// The change's version records.
    records: Vec<String>,
    /// The entity's namespace record, if it declares one.
    covering: Option<String>,
    position: Position,
    what: String,
    /// Already a violation at the SLO: this is the recheck (late, covered or lost).
    recheck: bool,
    /// Read once the change is consumed; None until Redis answered.
    baseline: Option<Baseline>,
}

/// The epoch and the covering namespace's version (0 when missing, as
/// readers take them) read after the change was consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Baseline {
    epoch: u64,
    namespace: Option<u64>,
}

impl Baseline {
    /// Whether a reader's data key changed since `self` was read: the epoch
    /// or the namespace moved (both only grow).
    fn moved_by(self, now: Baseline) -> bool {
        now.epoch > self.epoch
            || matches!((self.namespace, now.namespace), (Some(before), Some(after)) if after > before)
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every version record, or the namespace, reached the change's position.
    Reached,
    /// Some record did not, but the epoch or the namespace moved after the change.
    Covered,
    /// Some record did not, and nothing moved that covers it.
    Missed,
}

// A check that could not read Redis is tried again this much later.
const REDIS_RETRY: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    settings: &Settings,
    options: &AuditOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<AuditReport> {
    // Its own group, starting at the newest records: the auditor watches
    // live traffic and never moves the daemon's offsets.
    let consumer: StreamConsumer = crate::kafka_client::auditor(&settings.source)
        .create()
        .map_err(crate::kafka_client::without_setting_value)?;
    let patterns = settings.source.subscription.patterns();
    consumer.subscribe(&patterns.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut redis = AuditRedis::new(&settings.redis);
    let avro = match &settings.avro {
        Some(sources) => Some(crate::decode::AvroSchemas::new(sources.clone())?),
        None => None,
    };
    let prefix = &settings.redis.version_prefix;
    let epoch_record = epoch::epoch_record(prefix);
    let mut baselines_due = Instant::now();
    let started = Instant::now();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut report = AuditReport::default();
    let mut seen: u64 = 0;
    let mut last_progress = Instant::now();
    loop {
        let consuming = options.duration.is_none_or(|d| started.elapsed() < d) && !shutdown.is_cancelled();
        if !consuming && pending.is_empty() {
            break;
        }
        if consuming {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                received = tokio::time::timeout(Duration::from_millis(100), consumer.recv()) => {
                    if let Ok(Ok(message)) = received {
                        let record = crate::source::to_record(&message);
                        seen += 1;
                        if seen.is_multiple_of(options.sample_every.max(1)) {
                            for id in [record.key.as_deref(), record.value.as_deref()].into_iter().flatten().filter_map(crate::decode::schema_id) {
                                if let (Some(avro), false) = (&avro, avro.as_ref().is_some_and(|a| a.is_loaded(id))) {
                                    if let Err(e) = avro.ensure(id).await {
                                        tracing::warn!(schema_id = id, error = %e, "audit: schema not loaded; this change is not checked");
                                    }
                                }
                            }
                            let route = pipeline::route_with(&settings.graph, &settings.plan, &record, pipeline::now_us(), true, avro.as_ref());
                            if let Routed::Bump { targets, position, namespace, .. } = route.action {
                                pending.push_back(Pending {
                                    due: Instant::now() + options.slo,
                                    records: targets.iter().map(|t| t.record_key(prefix)).collect(),
                                    covering: namespace.map(|ns| Target::Namespace(ns).record_key(prefix)),
                                    what: format!("{}/{}@{}", record.topic, record.partition, record.offset),
                                    position,
                                    recheck: false,
                                    baseline: None,
                                });
                            }
                        }
                    }
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if Instant::now() >= baselines_due {
            if let Err(e) = take_baselines(&mut redis, &mut pending, &epoch_record).await {
                // A gap: the baselines are read once Redis answers. Read
                // later they are still after the change: sound, only fewer
                // changes can turn out covered.
                tracing::warn!(error = %e, "audit: redis not readable; epoch and namespace baselines read again shortly");
                baselines_due = Instant::now() + REDIS_RETRY;
            }
        }
        // Rechecks are due later than new checks: take the earliest due first.
        while let Some(index) = earliest_due(&pending) {
            let Some(mut check) = pending.remove(index) else { break };
            let verdict = match inspect(&mut redis, &check, &epoch_record).await {
                Ok(verdict) => verdict,
                Err(e) => {
                    // A gap, not a verdict: the change is checked again once
                    // Redis answers.
                    tracing::warn!(error = %e, change = %check.what, "audit: redis not readable; checking again shortly");
                    check.due = Instant::now() + REDIS_RETRY;
                    pending.push_back(check);
                    break;
                }
            };
            if check.recheck {
                match verdict {
                    Verdict::Reached => {
                        report.late += 1;
                        crate::metrics::audit_late();
                    }
                    Verdict::Covered => {
                        report.covered += 1;
                        crate::metrics::audit_covered();
                        tracing::warn!(change = %check.what, position = %check.position, after = ?(options.slo + options.recheck_after),
                            "covered: version record not advanced past the change, but the epoch or the namespace moved after it (a data-loss recovery or a namespace bump); readers that fold them see no stale value");
                    }
                    Verdict::Missed => {
                        report.lost += 1;
                        crate::metrics::audit_lost();
                        tracing::warn!(change = %check.what, position = %check.position, after = ?(options.slo + options.recheck_after),
                            "lost: version record still not advanced past the change");
                    }
                }
                continue;
            }
            // Covered already at the SLO: the epoch or the namespace moved
            // after the change, so readers that fold them (the key protocol)
            // see no stale value; not a violation, but counted apart.
            let visible = matches!(verdict, Verdict::Reached | Verdict::Covered);
            if verdict == Verdict::Covered {
                report.covered_in_time += 1;
                crate::metrics::audit_covered();
            }
            report.checks += 1;
            crate::metrics::audit(visible);
            if !visible {
                report.violations += 1;
                tracing::warn!(change = %check.what, position = %check.position, slo = ?options.slo,
                    "violation: version record not advanced past the change within the SLO; rechecked later (late, covered or lost)");
                check.recheck = true;
                check.due = Instant::now() + options.recheck_after;
                pending.push_back(check);
            }
            crate::metrics::audit_stale_ratio(report.stale_ratio());
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            tracing::info!(
                checks = report.checks,
                violations = report.violations,
                pending = pending.len(),
                "audit progress"
            );
            last_progress = Instant::now();
        }
    }
    Ok(report)
}

fn earliest_due(pending: &VecDeque<Pending>) -> Option<usize> {
    let now = Instant::now();
    pending
        .iter()
        .enumerate()
        .filter(|(_, p)| p.due <= now)
        .min_by_key(|(_, p)| p.due)
        .map(|(i, _)| i)
}

/// Reads the baselines of the changes that have none yet: the epoch once,
/// each namespace once per pass. Stops at the first failed read.
async fn take_baselines(
    redis: &mut AuditRedis,
    pending: &mut VecDeque<Pending>,
    epoch_record: &str,
) -> anyhow::Result<()> {
    let mut epoch_now = None;
    let mut namespaces: HashMap<String, u64> = HashMap::new();
    for check in pending.iter_mut().filter(|c| c.baseline.is_none()) {
        let epoch = match epoch_now {
            Some(epoch) => epoch,
            None => *epoch_now.insert(redis.version(epoch_record, "e").await?),
        };
        let namespace = match &check.covering {
            Some(record) => Some(match namespaces.get(record) {
                Some(v) => *v,
                None => {
                    let v = redis.version(record, "v").await?;
                    namespaces.insert(record.clone(), v);
                    v
                }
            }),
            None => None,
        };
        check.baseline = Some(Baseline { epoch, namespace });
    }
    Ok(())
}

/// Whether every version record of the change (or its entity's namespace)
/// has reached the change's position; if not, whether the epoch or the
/// namespace moved since the baseline. A change without a baseline (Redis
/// was never readable since it was consumed) cannot be covered.
async fn inspect(redis: &mut AuditRedis, check: &Pending, epoch_record: &str) -> anyhow::Result<Verdict> {
    let field = format!("p:{}", check.position.source);
    let reached = |guard: Option<String>| {
        guard.is_some_and(|g| g.len() == check.position.ordinal.len() && g >= check.position.ordinal)
    };
    let mut namespace_reached = None;
    for record in &check.records {
        if reached(redis.hget(record, &field).await?) {
            continue;
        }
        let covering_reached = match (&check.covering, namespace_reached) {
            (Some(_), Some(known)) => known,
            (Some(ns), None) => *namespace_reached.insert(reached(redis.hget(ns, &field).await?)),
            (None, _) => false,
        };
        if !covering_reached {
            let Some(baseline) = check.baseline else {
                return Ok(Verdict::Missed);
            };
            let now = Baseline {
                epoch: redis.version(epoch_record, "e").await?,
                namespace: match &check.covering {
                    Some(ns) => Some(redis.version(ns, "v").await?),
                    None => None,
                },
            };
            return Ok(if baseline.moved_by(now) {
                Verdict::Covered
            } else {
                Verdict::Missed
            });
        }
    }
    Ok(Verdict::Reached)
}

/// The auditor's Redis reads, reconnecting after an outage instead of
/// ending the audit (the first connection is made at the first read).
struct AuditRedis {
    settings: RedisSettings,
    connection: Option<Connection>,
}

// Bounds one read, so a frozen Redis is a gap rather than a hang.
const REDIS_READ_TIMEOUT: Duration = Duration::from_secs(2);

impl AuditRedis {
    fn new(settings: &RedisSettings) -> AuditRedis {
        AuditRedis {
            settings: settings.clone(),
            connection: None,
        }
    }

    async fn hget(&mut self, key: &str, field: &str) -> anyhow::Result<Option<String>> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(key).arg(field);
        let answer = tokio::time::timeout(REDIS_READ_TIMEOUT, async {
            if self.connection.is_none() {
                self.connection = Some(Connection::open(&self.settings).await?);
            }
            match self.connection.as_mut() {
                Some(c) => Ok(c.command(&cmd).await?),
                None => Ok(None),
            }
        })
        .await;
        match answer {
            Ok(Ok(value)) => Ok(value),
            failed => {
                // Reconnect at the next read.
                self.connection = None;
                match failed {
                    Ok(Err::<_, crate::sink::SinkError>(e)) => Err(e.into()),
                    _ => anyhow::bail!("no answer within {REDIS_READ_TIMEOUT:?}"),
                }
            }
        }
    }

    /// A version field as readers take it: missing is 0, anything but
    /// canonical decimal text is an error.
    async fn version(&mut self, key: &str, field: &'static str) -> anyhow::Result<u64> {
        match self.hget(key, field).await? {
            Some(text) => Ok(reply::version_number(&text, field)?),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_and_ratio() {
        let r = AuditReport {
            checks: 10_000,
            violations: 1,
            late: 1,
            covered: 0,
            lost: 0,
            covered_in_time: 0,
        };
        assert_eq!(r.nines(), 4);
        assert!(r
            .summary(Duration::from_secs(5))
            .starts_with("4 nines within 5 seconds"));
        let clean = AuditReport {
            checks: 1000,
            ..AuditReport::default()
        };
        assert_eq!(clean.nines(), 3);
        assert!(clean.summary(Duration::from_secs(2)).starts_with("at least 3 nines"));
        let bad = AuditReport {
            checks: 10,
            violations: 5,
            late: 2,
            covered: 1,
            lost: 1,
            covered_in_time: 3,
        };
        assert_eq!(bad.nines(), 0);
        assert!(bad
            .summary(Duration::from_secs(2))
            .contains("3 covered by the epoch or a namespace in time, 5 violations: 2 late, 1 covered, 1 lost, 1 not rechecked yet"));
        assert_eq!(AuditReport::default().nines(), 0);
    }

    #[test]
    fn a_change_is_covered_when_the_epoch_or_its_namespace_moved_after_it() {
        let before = Baseline {
            epoch: 100,
            namespace: Some(7),
        };
        assert!(!before.moved_by(before));
        assert!(before.moved_by(Baseline { epoch: 101, ..before }));
        assert!(before.moved_by(Baseline {
            namespace: Some(8),
            ..before
        }));
        // A record rolled back, or gone (0), covers nothing.
        assert!(!before.moved_by(Baseline {
            epoch: 0,
            namespace: Some(0)
        }));
        let no_namespace = Baseline {
            epoch: 100,
            namespace: None,
        };
        assert!(!no_namespace.moved_by(no_namespace));
        assert!(no_namespace.moved_by(Baseline {
            epoch: 200,
            namespace: None
        }));
    }
}
