//! The consistency auditor (`cdc-invalidator audit`): a black-box check in
//! the spirit of Meta's Polaris. It reads the same change topics with its own
//! consumer group, samples changes, and after an SLO checks in Redis that
//! every dependent version record's guard has reached the change's position
//! (or that the entity's namespace has, which covers the keys). It exports
//! checks, violations and the stale ratio, and reports "N nines within M s".

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::event::Position;
use crate::graph::Target;
use crate::pipeline::{self, Routed};

#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// How long a change may take to reach Redis before it counts as a violation.
    pub slo: Duration,
    /// Check one change in this many.
    pub sample_every: u64,
    /// Stop after this long (then finish the checks already due); None runs until a signal.
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditReport {
    pub checks: u64,
    pub violations: u64,
}

impl AuditReport {
    pub fn stale_ratio(&self) -> f64 {
        if self.checks == 0 {
            0.0
        } else {
            self.violations as f64 / self.checks as f64
        }
    }

    /// Whole nines of the fraction of changes that arrived within the SLO.
    /// With no violation the sample only supports log10(checks) nines.
    pub fn nines(&self) -> u32 {
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

    pub fn summary(&self, slo: Duration) -> String {
        let bound = if self.violations == 0 && self.checks > 0 {
            "at least "
        } else {
            ""
        };
        format!(
            "{bound}{} nines within {} seconds ({} checks, {} violations, stale ratio {:.4}%)",
            self.nines(),
            slo.as_secs_f64(),
            self.checks,
            self.violations,
            self.stale_ratio() * 100.0
        )
    }
}

struct Pending {
    due: Instant,
    records: Vec<(String, Option<String>)>,
    position: Position,
    what: String,
}

pub async fn run(
    settings: &Settings,
    options: &AuditOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<AuditReport> {
    let mut config = ClientConfig::new();
    for (k, v) in &settings.source.librdkafka {
        config.set(k, v);
    }
    let consumer: StreamConsumer = config
        .set("bootstrap.servers", &settings.source.brokers)
        // Its own group, starting at the newest records: the auditor watches
        // live traffic and never moves the daemon's offsets.
        .set(
            "group.id",
            format!("{}-audit-{}", settings.source.group_id, std::process::id()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .create()?;
    let patterns = settings.source.subscription.patterns();
    consumer.subscribe(&patterns.iter().map(String::as_str).collect::<Vec<_>>())?;
    let client = redis::Client::open(settings.redis.url.as_str())?;
    let mut redis = if settings.redis.cluster {
        None
    } else {
        Some(client.get_multiplexed_async_connection().await?)
    };
    let mut cluster = if settings.redis.cluster {
        Some(
            redis::cluster::ClusterClient::new(vec![settings.redis.url.as_str()])?
                .get_async_connection()
                .await?,
        )
    } else {
        None
    };
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
                                });
                            }
                        }
                    }
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while pending.front().is_some_and(|p| p.due <= Instant::now()) {
            let Some(check) = pending.pop_front() else { break };
            let field = format!("p:{}", check.position.source);
            let mut ok = true;
            for (record, covering) in &check.records {
                let reached = |guard: Option<String>| {
                    guard.is_some_and(|g| g.len() == check.position.ordinal.len() && g >= check.position.ordinal)
                };
                let key_guard = query(&mut redis, &mut cluster, redis::cmd("HGET").arg(record).arg(&field)).await?;
                let covered = match covering {
                    Some(ns) if !reached(key_guard.clone()) => {
                        reached(query(&mut redis, &mut cluster, redis::cmd("HGET").arg(ns).arg(&field)).await?)
                    }
                    _ => false,
                };
                if !reached(key_guard) && !covered {
                    ok = false;
                    tracing::warn!(change = %check.what, record = %record, position = %check.position, slo = ?options.slo,
                        "violation: version record not advanced past the change within the SLO");
                }
            }
            report.checks += 1;
            crate::metrics::audit(ok);
            if !ok {
                report.violations += 1;
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

async fn query(
    redis: &mut Option<redis::aio::MultiplexedConnection>,
    cluster: &mut Option<redis::cluster_async::ClusterConnection>,
    cmd: &redis::Cmd,
) -> anyhow::Result<Option<String>> {
    Ok(match (redis, cluster) {
        (Some(c), _) => cmd.query_async(c).await?,
        (None, Some(c)) => cmd.query_async(c).await?,
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_and_ratio() {
        let r = AuditReport {
            checks: 10_000,
            violations: 1,
        };
        assert_eq!(r.nines(), 4);
        assert!(r
            .summary(Duration::from_secs(5))
            .starts_with("4 nines within 5 seconds"));
        let clean = AuditReport {
            checks: 1000,
            violations: 0,
        };
        assert_eq!(clean.nines(), 3);
        assert!(clean.summary(Duration::from_secs(2)).starts_with("at least 3 nines"));
        let bad = AuditReport {
            checks: 10,
            violations: 5,
        };
        assert_eq!(bad.nines(), 0);
        assert_eq!(AuditReport::default().nines(), 0);
    }
}
