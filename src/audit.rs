//! The consistency auditor (`cdc-invalidator audit`): a black-box check in
//! the spirit of Meta's Polaris. It reads the same change topics with its own
//! consumer group, samples changes, and after an SLO checks in Redis that
//! every dependent version record's guard has reached the change's position
//! (or that the entity's namespace has, which covers the keys). It exports
//! checks, violations and the stale ratio, and reports "N nines within M s".
//!
//! A change not visible at the SLO is a violation, and is checked again
//! `recheck_after` later: then it is either late (it arrived) or lost (it
//! never did), both counted and printed. Outages of Redis or Kafka are gaps,
//! not exits: a check that cannot read Redis waits and is tried again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::event::Position;
use crate::graph::Target;
use crate::pipeline::{self, Routed};

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
    /// Violations still not visible at the recheck.
    pub(crate) lost: u64,
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
        let unresolved = self.violations.saturating_sub(self.late + self.lost);
        format!(
            "{bound}{} nines within {} seconds ({} checks, {} violations: {} late, {} lost{}; stale ratio {:.4}%)",
            self.nines(),
            slo.as_secs_f64(),
            self.checks,
            self.violations,
            self.late,
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
    records: Vec<(String, Option<String>)>,
    position: Position,
    what: String,
    /// Already a violation at the SLO: this is the late-or-lost recheck.
    recheck: bool,
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
    let consumer: StreamConsumer = crate::kafka_client::auditor(&settings.source).create()?;
    let patterns = settings.source.subscription.patterns();
    consumer.subscribe(&patterns.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut redis = AuditRedis::new(&settings.redis.url, settings.redis.cluster)?;
    let avro = match &settings.avro {
        Some(sources) => Some(crate::decode::AvroSchemas::new(sources.clone())?),
        None => None,
    };
    let prefix = &settings.redis.version_prefix;
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
                                let covering = namespace.map(|ns| Target::Namespace(ns).record_key(prefix));
                                pending.push_back(Pending {
                                    due: Instant::now() + options.slo,
                                    records: targets.iter().map(|t| (t.record_key(prefix), covering.clone())).collect(),
                                    what: format!("{}/{}@{}", record.topic, record.partition, record.offset),
                                    position,
                                    recheck: false,
                                });
                            }
                        }
                    }
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Rechecks are due later than new checks: take the earliest due first.
        while let Some(index) = earliest_due(&pending) {
            let Some(mut check) = pending.remove(index) else { break };
            let visible = match visible(&mut redis, &check).await {
                Ok(visible) => visible,
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
                if visible {
                    report.late += 1;
                    crate::metrics::audit_late();
                } else {
                    report.lost += 1;
                    crate::metrics::audit_lost();
                    tracing::warn!(change = %check.what, position = %check.position, after = ?(options.slo + options.recheck_after),
                        "lost: version record still not advanced past the change");
                }
                continue;
            }
            report.checks += 1;
            crate::metrics::audit(visible);
            if !visible {
                report.violations += 1;
                tracing::warn!(change = %check.what, position = %check.position, slo = ?options.slo,
                    "violation: version record not advanced past the change within the SLO; rechecked later (late or lost)");
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

/// Whether every version record of the change (or its entity's namespace)
/// has reached the change's position.
async fn visible(redis: &mut AuditRedis, check: &Pending) -> anyhow::Result<bool> {
    let field = format!("p:{}", check.position.source);
    let reached = |guard: Option<String>| {
        guard.is_some_and(|g| g.len() == check.position.ordinal.len() && g >= check.position.ordinal)
    };
    for (record, covering) in &check.records {
        if reached(redis.hget(record, &field).await?) {
            continue;
        }
        match covering {
            Some(ns) if reached(redis.hget(ns, &field).await?) => continue,
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// The auditor's Redis reads, reconnecting after an outage instead of
/// ending the audit (the first connection is made at the first read).
enum AuditRedis {
    Standalone {
        client: redis::Client,
        connection: Option<redis::aio::MultiplexedConnection>,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        connection: Option<redis::cluster_async::ClusterConnection>,
    },
}

// Bounds one read, so a frozen Redis is a gap rather than a hang.
const REDIS_READ_TIMEOUT: Duration = Duration::from_secs(2);

impl AuditRedis {
    fn new(url: &str, cluster: bool) -> anyhow::Result<AuditRedis> {
        Ok(if cluster {
            AuditRedis::Cluster {
                client: redis::cluster::ClusterClient::new(vec![url])?,
                connection: None,
            }
        } else {
            AuditRedis::Standalone {
                client: redis::Client::open(url)?,
                connection: None,
            }
        })
    }

    async fn hget(&mut self, key: &str, field: &str) -> anyhow::Result<Option<String>> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(key).arg(field);
        let answer = tokio::time::timeout(REDIS_READ_TIMEOUT, async {
            match self {
                AuditRedis::Standalone { client, connection } => {
                    if connection.is_none() {
                        *connection = Some(client.get_multiplexed_async_connection().await?);
                    }
                    match connection.as_mut() {
                        Some(c) => cmd.query_async(c).await,
                        None => Ok(None),
                    }
                }
                AuditRedis::Cluster { client, connection } => {
                    if connection.is_none() {
                        *connection = Some(client.get_async_connection().await?);
                    }
                    match connection.as_mut() {
                        Some(c) => cmd.query_async(c).await,
                        None => Ok(None),
                    }
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(value)) => Ok(value),
            failed => {
                // Reconnect at the next read.
                match self {
                    AuditRedis::Standalone { connection, .. } => *connection = None,
                    AuditRedis::Cluster { connection, .. } => *connection = None,
                }
                match failed {
                    Ok(Err(e)) => Err(e.into()),
                    _ => anyhow::bail!("no answer within {REDIS_READ_TIMEOUT:?}"),
                }
            }
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
            lost: 0,
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
            lost: 1,
        };
        assert_eq!(bad.nines(), 0);
        assert!(bad
            .summary(Duration::from_secs(2))
            .contains("5 violations: 2 late, 1 lost, 2 not rechecked yet"));
        assert_eq!(AuditReport::default().nines(), 0);
    }
}
