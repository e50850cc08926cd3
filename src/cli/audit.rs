//! `audit`: samples changes from the topics and checks, against Redis, that
//! their version records moved within the SLO (`crate::audit` does the
//! checking); serves only the `cdc_invalidator_audit_*` metrics.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{load, spawn_signal_handler, wait_for_tasks};
use crate::admin;
use crate::audit::AuditOptions;
use crate::tasks::Tasks;

pub(super) async fn audit(config: &Path, options: AuditOptions, listen: std::net::SocketAddr) -> anyhow::Result<i32> {
    let settings = load(config)?;
    let metrics = crate::metrics::install();
    let shutdown = CancellationToken::new();
    let tasks = Tasks::new();
    spawn_signal_handler(&tasks, shutdown.clone());
    let listener = admin::bind(listen).await?;
    crate::metrics::audit_build_info();
    crate::metrics::audit_at_zero();
    let server = tasks.spawn(
        "audit http",
        admin::serve_metrics_only(listener, metrics, shutdown.clone()),
    );
    let refresher = tasks.spawn("gauge refresher", {
        let stop = shutdown.clone();
        async move {
            let mut interval = tokio::time::interval(crate::metrics::GAUGE_REFRESH);
            while stop.run_until_cancelled(interval.tick()).await.is_some() {
                crate::metrics::refresh_gauges();
            }
        }
    });
    let slo = options.slo;
    tracing::info!(slo = ?slo, sample_every = options.sample_every, "auditing: changes must reach their version records within the SLO");
    let report = crate::audit::run(&settings, &options, shutdown.clone()).await?;
    println!("{}", report.summary(slo));
    shutdown.cancel();
    let _ = tokio::join!(server, refresher);
    wait_for_tasks(&tasks).await;
    Ok(if report.violations == 0 { 0 } else { 1 })
}
