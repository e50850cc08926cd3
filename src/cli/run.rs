//! `run`: the daemon. Binds the admin listener first, checks the
//! dead-letter table, connects Redis (retrying while serving `/readyz`),
//! starts the probe, liveness and connector watches, then runs the pipeline
//! until SIGTERM/SIGINT or a fatal Kafka client error.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{avro_schemas, dead_letter_store, load, lookups, spawn_signal_handler, wait_for_tasks};
use crate::admin::{self, Status};
use crate::backoff::{Next, Retry};
use crate::config::Settings;
use crate::pipeline::{self, Pipeline};
use crate::sink::notice::Notices;
use crate::sink::RedisSink;
use crate::tasks::Tasks;

pub(super) async fn run(path: &Path, migrate: bool) -> anyhow::Result<i32> {
    let settings = Arc::new(load(path)?);
    // Bound before anything else: a taken port fails the start at once
    // instead of leaving a daemon without /metrics and /readyz.
    let listener = admin::bind(settings.admin_listen).await?;
    let dead_letters = match &settings.dead_letters {
        Some(_) => {
            let store = dead_letter_store(&settings)?;
            if migrate {
                store.migrate().await.context("applying dead-letter migrations")?;
                tracing::info!("dead-letter migrations applied");
            }
            match store.table_exists().await {
                Ok(false) => anyhow::bail!(
                    "the dead-letter table {} does not exist: run `cdc-invalidator migrate --config {}` or start with --migrate",
                    store.table(),
                    path.display()
                ),
                Ok(true) => match store.capturing_publications().await {
                    Ok(publications) if !publications.is_empty() => tracing::warn!(
                        table = %store.table(), publications = ?publications,
                        "the dead-letter table is captured by a publication: dead letters feed back into CDC (see `check`)"
                    ),
                    _ => {}
                },
                // Unreachable now is an outage like any other: the pipeline
                // pauses at the first dead letter until the store returns.
                Err(e) => tracing::warn!(error = %e, "dead-letter store not reachable at start"),
            }
            Some(store)
        }
        None => {
            tracing::info!("no dead-letter store configured: undecodable records escalate to their namespace or stall");
            None
        }
    };
    let metrics = crate::metrics::install();
    crate::metrics::daemon_at_zero(&fixed_labels());
    let status = Arc::new(Status::default());
    let shutdown = CancellationToken::new();
    // Every task spawned from here on is tracked, and waited for (bounded)
    // before `run` returns, whichever way it returns.
    let tasks = Tasks::new();
    spawn_signal_handler(&tasks, shutdown.clone());
    let admin_task = tasks.spawn(
        "admin http",
        admin::serve(listener, metrics, status.clone(), shutdown.clone()),
    );
    let outcome = serve(&settings, dead_letters, status, &tasks, &shutdown).await;
    shutdown.cancel();
    match admin_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "admin http failed"),
        Err(e) => tracing::warn!(error = %e, "admin http task panicked"),
        Ok(Ok(())) => {}
    }
    wait_for_tasks(&tasks).await;
    match outcome? {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(0)
        }
        Err(fatal) => {
            tracing::error!(error = %fatal, "stopped after a fatal kafka client error");
            Ok(1)
        }
    }
}

/// Connects Redis, starts the watches and runs the pipeline until
/// shutdown: the outer Err is a start that failed, the inner one a fatal
/// Kafka client error.
async fn serve(
    settings: &Arc<Settings>,
    dead_letters: Option<crate::dead_letter::DeadLetterStore>,
    status: Arc<Status>,
    tasks: &Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<Result<(), crate::pipeline::FatalKafkaError>> {
    let Some(sink) = connect_redis_until_ready(settings, &status, shutdown).await else {
        return Ok(Ok(()));
    };
    tracing::info!(
        brokers = %settings.source.brokers, group = %settings.source.group_id,
        subscription = ?settings.source.subscription.patterns(), redis = %settings.redis.describe(),
        entities = settings.graph.entities().len(), "starting"
    );
    let lookups = lookups(settings)?;
    let avro = avro_schemas(settings)?;
    let notices = match &settings.notices {
        Some(n) => {
            let registry = match &settings.avro {
                Some(sources) => {
                    crate::registry::Registry::from_sources(sources).context("creating the schema registry client")?
                }
                None => None,
            };
            Some(Arc::new(
                Notices::new(n, &settings.source, registry.as_ref(), tasks.clone()).await?,
            ))
        }
        None => None,
    };
    let services = pipeline::Services {
        dead_letters,
        lookups,
        avro,
        notices,
    };
    let probe = admin::Probe {
        redis: Some(sink.prober()),
        dead_letters: services.dead_letters.clone(),
        interval: settings.probe.interval,
        timeout: settings.probe.timeout,
    };
    // Each watch ends at the shutdown token between rounds; dropped at
    // the token mid-round too, so a slow poll cannot hold the stop.
    tasks.spawn(
        "admin probe",
        shutdown
            .clone()
            .run_until_cancelled_owned(admin::probe(probe, status.clone(), shutdown.clone())),
    );
    tasks.spawn(
        "source liveness",
        shutdown
            .clone()
            .run_until_cancelled_owned(crate::source::liveness::watch(
                settings.source.clone(),
                status.clone(),
                shutdown.clone(),
            )),
    );
    if let Some(connect) = &settings.connect {
        tasks.spawn(
            "connector watch",
            shutdown
                .clone()
                .run_until_cancelled_owned(crate::source::connect::watch(
                    connect.clone(),
                    status.clone(),
                    shutdown.clone(),
                )),
        );
    }
    let pipeline = Pipeline::new(settings.clone(), sink, services, status)?;
    Ok(pipeline.run(shutdown.clone()).await)
}

/// Redis may come up after the daemon: retry with capped backoff, serving
/// /readyz (not ready, and why) meanwhile. None when shut down first.
async fn connect_redis_until_ready(
    settings: &Settings,
    status: &Status,
    shutdown: &CancellationToken,
) -> Option<RedisSink> {
    let connected = Retry::new(settings.redis.max_retry_backoff)
        .cancelled_by(shutdown)
        .run(
            || RedisSink::connect(&settings.redis),
            |e, attempt| {
                crate::metrics::redis_error(e.kind_label());
                status.redis_failed(e.to_string());
                tracing::warn!(error = %e, retry_in = ?attempt.retry_in, "redis not reachable at start");
                Next::Retry
            },
        )
        .await;
    // Unlimited attempts, every failure retried: only a shutdown ends the
    // wait without a connection.
    connected.ok()
}

/// The label values of the daemon's counters registered at zero.
fn fixed_labels() -> crate::metrics::FixedLabels {
    use crate::graph::{EscalationReason, Target};
    use crate::sink::epoch::LossReason;
    use EscalationReason::*;
    let reasons = [
        MissingBefore,
        Toast,
        Unrenderable,
        Undecodable,
        Lag,
        FanoutLimit,
        LookupFailed,
    ];
    for reason in reasons {
        // No wildcard: a new reason stops the build here until it is listed.
        match reason {
            MissingBefore | Toast | Unrenderable | Undecodable | Lag | FanoutLimit | LookupFailed => {}
        }
    }
    crate::metrics::FixedLabels {
        target_kinds: [Target::Key(String::new()), Target::Namespace(String::new())]
            .iter()
            .map(Target::kind_label)
            .collect(),
        escalation_reasons: reasons.map(EscalationReason::label).to_vec(),
        redis_error_kinds: crate::sink::SinkError::KIND_LABELS.to_vec(),
        loss_reasons: LossReason::ALL.map(LossReason::label).to_vec(),
    }
}
