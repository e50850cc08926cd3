//! Admin HTTP: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive), `/readyz` (connected, assigned, not stalled; JSON saying why not).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::graph::StallReason;

/// Why a partition stopped: the daemon will not commit past this record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Stall {
    pub(crate) offset: i64,
    #[serde(serialize_with = "reason_label")]
    pub(crate) reason: StallReason,
    pub(crate) detail: String,
}

/// The reason's label in `/readyz`, the same word the logs use.
fn reason_label<S: serde::Serializer>(reason: &StallReason, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(reason.label())
}

#[derive(Debug, Default)]
struct StatusInner {
    dead_letters_error: Option<String>,
    registry_error: Option<String>,
    redis_error: Option<String>,
    redis_connected: bool,
    /// The readiness probe's last failures (None: it answered), kept apart
    /// from the pipeline's own view so neither clears the other's.
    redis_probe_error: Option<String>,
    dead_letters_probe_error: Option<String>,
    /// Source topics idle past `source.max_idle`: topic -> seconds idle.
    idle_sources: BTreeMap<String, u64>,
    /// Connectors Kafka Connect does not report RUNNING: name -> why.
    connectors_down: BTreeMap<String, String>,
    assigned: usize,
    stalls: BTreeMap<String, Stall>,
    /// Seconds no Kafka broker has answered anything, once past KAFKA_QUIET.
    kafka_quiet_s: Option<u64>,
}

/// No answer from any broker for this long is a partition from Kafka (or
/// every broker down): a healthy member hears a fetch response or a
/// heartbeat answer every few seconds. librdkafka retries by itself and
/// nothing is committed meanwhile, but the daemon is not keeping up and
/// says so, long before the group's session timeout would take its
/// partitions away.
pub(crate) const KAFKA_QUIET: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared health of the pipeline, written by it and read by `/readyz`.
#[derive(Debug, Default)]
pub(crate) struct Status {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    pub(crate) reasons: Vec<String>,
    pub(crate) assigned_partitions: usize,
    pub(crate) stalled_partitions: BTreeMap<String, Stall>,
}

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut StatusInner) -> T) -> T {
        f(&mut self.inner.lock().expect("status lock"))
    }

    pub(crate) fn redis_ok(&self) {
        self.with(|s| {
            s.redis_connected = true;
            s.redis_error = None;
        });
    }

    pub(crate) fn redis_failed(&self, error: String) {
        self.with(|s| {
            s.redis_connected = false;
            s.redis_error = Some(error);
        });
    }

    pub(crate) fn dead_letters_ok(&self) {
        self.with(|s| s.dead_letters_error = None);
    }

    pub(crate) fn dead_letters_failed(&self, error: String) {
        self.with(|s| s.dead_letters_error = Some(error));
    }

    pub(crate) fn registry_ok(&self) {
        self.with(|s| s.registry_error = None);
    }

    pub(crate) fn registry_failed(&self, error: String) {
        self.with(|s| s.registry_error = Some(error));
    }

    /// The readiness probe's verdict on Redis (None: PING answered in time).
    pub(crate) fn redis_probed(&self, error: Option<String>) {
        self.with(|s| s.redis_probe_error = error);
    }

    /// The readiness probe's verdict on the dead-letter store.
    pub(crate) fn dead_letters_probed(&self, error: Option<String>) {
        self.with(|s| s.dead_letters_probe_error = error);
    }

    /// Topics whose newest record is older than `source.max_idle`.
    pub(crate) fn set_idle_sources(&self, idle: BTreeMap<String, u64>) {
        self.with(|s| s.idle_sources = idle);
    }

    /// Connectors in `[connect] connectors` that are not running.
    pub(crate) fn set_connectors_down(&self, down: BTreeMap<String, String>) {
        self.with(|s| s.connectors_down = down);
    }

    /// How long no Kafka broker has answered (None: not known yet).
    pub(crate) fn kafka_quiet(&self, quiet: Option<std::time::Duration>) {
        self.with(|s| s.kafka_quiet_s = quiet.filter(|q| *q >= KAFKA_QUIET).map(|q| q.as_secs()));
    }

    pub(crate) fn set_assigned(&self, count: usize) {
        self.with(|s| s.assigned = count);
    }

    pub(crate) fn stall(&self, partition: String, stall: Stall) {
        self.with(|s| {
            s.stalls.insert(partition, stall);
            crate::metrics::stalled_partitions(s.stalls.len());
        });
    }

    pub(crate) fn unstall(&self, partition: &str) {
        self.with(|s| {
            s.stalls.remove(partition);
            crate::metrics::stalled_partitions(s.stalls.len());
        });
    }

    pub(crate) fn readiness(&self) -> Readiness {
        self.with(|s| {
            let mut reasons = Vec::new();
            if !s.redis_connected {
                reasons.push(match &s.redis_error {
                    Some(e) => format!("redis not connected: {e}"),
                    None => "redis not connected yet".to_owned(),
                });
            }
            if let (true, Some(e)) = (s.redis_connected, &s.redis_probe_error) {
                reasons.push(format!("redis not answering the readiness probe: {e}"));
            }
            if let Some(e) = &s.dead_letters_error {
                reasons.push(format!("dead-letter store unreachable (consumption paused): {e}"));
            } else if let Some(e) = &s.dead_letters_probe_error {
                reasons.push(format!("dead-letter store not answering the readiness probe: {e}"));
            }
            for (topic, seconds) in &s.idle_sources {
                reasons.push(format!(
                    "source topic {topic:?} has had no new record for {seconds}s (above source.max_idle): is the connector running?"
                ));
            }
            for (connector, problem) in &s.connectors_down {
                reasons.push(format!(
                    "source connector {connector:?} is not running ({problem}): no changes reach the daemon"
                ));
            }
            if let Some(e) = &s.registry_error {
                reasons.push(format!("schema registry unreachable (consumption paused): {e}"));
            }
            if let Some(seconds) = s.kafka_quiet_s {
                reasons.push(format!(
                    "kafka: no broker has answered for {seconds}s (a network partition, or every broker down; the client keeps retrying)"
                ));
            }
            if s.assigned == 0 {
                reasons.push("no partitions assigned".to_owned());
            }
            for (partition, stall) in &s.stalls {
                reasons.push(format!(
                    "partition {partition} stalled at offset {}: {} ({})",
                    stall.offset, stall.reason, stall.detail
                ));
            }
            let ready = reasons.is_empty();
            // Set on every call (each pipeline tick): gauges left alone expire.
            crate::metrics::ready(ready);
            crate::metrics::stalled_partitions(s.stalls.len());
            Readiness {
                ready,
                reasons,
                assigned_partitions: s.assigned,
                stalled_partitions: s.stalls.clone(),
            }
        })
    }
}

/// What the readiness probe pings, on its own task: an idle daemon learns of
/// an outage within one interval, not at its next write.
pub(crate) struct Probe {
    pub(crate) redis: Option<crate::sink::RedisProbe>,
    pub(crate) dead_letters: Option<crate::dead_letter::DeadLetterStore>,
    pub(crate) interval: std::time::Duration,
    /// Each ping is bounded: a hung dependency counts as down.
    pub(crate) timeout: std::time::Duration,
}

/// Pings Redis and the dead-letter store every interval until shutdown.
pub(crate) async fn probe(mut probe: Probe, status: Arc<Status>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(probe.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Some(redis) = probe.redis.as_mut() {
            let verdict = match tokio::time::timeout(probe.timeout, redis.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {:?}", probe.timeout)),
            };
            log_change("redis", status.with(|s| s.redis_probe_error.is_some()), &verdict);
            status.redis_probed(verdict);
        }
        if let Some(store) = &probe.dead_letters {
            let verdict = match tokio::time::timeout(probe.timeout, store.table_exists()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {:?}", probe.timeout)),
            };
            log_change(
                "dead-letter store",
                status.with(|s| s.dead_letters_probe_error.is_some()),
                &verdict,
            );
            status.dead_letters_probed(verdict);
        }
        status.readiness();
    }
}

fn log_change(dependency: &str, was_failing: bool, verdict: &Option<String>) {
    match (was_failing, verdict) {
        (false, Some(error)) => tracing::warn!(dependency, %error, "readiness probe failed: not ready"),
        (true, None) => tracing::info!(dependency, "readiness probe answered again"),
        _ => {}
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    status: Arc<Status>,
}

/// The admin address could not be bound: fatal at start, because a daemon
/// without `/metrics` and `/readyz` is invisible to its operators.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on admin address {address}{}: {error} (set [admin] listen or CDC_ADMIN_LISTEN to a free address)",
    .holder.as_ref().map(|h| format!(" (held by {h})")).unwrap_or_default())]
pub(crate) struct BindError {
    pub(crate) address: SocketAddr,
    /// The process listening there, when this host lets us see it.
    pub(crate) holder: Option<String>,
    pub(crate) error: std::io::Error,
}

/// Binds the admin listener before anything else starts (port 0 picks a
/// free port; the bound address is logged and returned by `local_addr`).
pub(crate) async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| BindError {
            address,
            holder: (error.kind() == std::io::ErrorKind::AddrInUse)
                .then(|| port_holder(address.port()))
                .flatten(),
            error,
        })?;
    // With port 0 the kernel picks the port: this line is how a supervisor
    // or a test learns it (the integration tests read it from the log).
    match listener.local_addr() {
        Ok(bound) => tracing::info!(address = %bound, "admin listener bound"),
        Err(error) => tracing::warn!(%error, "admin listener bound, address unknown"),
    }
    Ok(listener)
}

/// Finds the process listening on a TCP port through /proc (Linux): the
/// socket's inode in /proc/net/tcp{,6}, then the process holding that inode.
/// Best effort: None where /proc says nothing or is not ours to read.
fn port_holder(port: u16) -> Option<String> {
    const LISTEN: &str = "0A";
    let wanted = format!(":{port:04X}");
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            (local.ends_with(&wanted) && *state == LISTEN).then(|| inode.to_string())
        })
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|process| {
        let pid: u32 = process.file_name().to_str()?.parse().ok()?;
        let holds = std::fs::read_dir(process.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str()));
        holds.then(|| {
            let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            format!("{} (pid {pid})", name.trim())
        })
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on a listener from [`bind`]
/// until shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, status });
    tracing::info!(address = %listener.local_addr()?, "admin http listening (/metrics /healthz /readyz)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Serves `/metrics` and `/healthz` only: the auditor is not a daemon, so it
/// exports no readiness that a daemon alert could mistake for its own.
pub(crate) async fn serve_metrics_only(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tracing::info!(address = %listener.local_addr()?, "metrics http listening (/metrics /healthz)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Readiness is a gauge too; refresh it for scrapes that come without /readyz calls.
    state.status.readiness();
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = state.status.readiness();
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_reason() {
        let status = Status::default();
        let r = status.readiness();
        assert!(!r.ready);
        assert_eq!(r.reasons, vec!["redis not connected yet", "no partitions assigned"]);

        status.redis_ok();
        status.set_assigned(3);
        assert!(status.readiness().ready);

        status.redis_probed(Some("connection refused".into()));
        let r = status.readiness();
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            vec!["redis not answering the readiness probe: connection refused"]
        );
        status.redis_probed(None);
        status.dead_letters_probed(Some("timed out".into()));
        assert!(!status.readiness().ready);
        status.dead_letters_probed(None);
        let mut idle = BTreeMap::new();
        idle.insert("shop.public.products".to_owned(), 301);
        status.set_idle_sources(idle);
        let r = status.readiness();
        assert!(r.reasons[0].contains("no new record for 301s"), "{:?}", r.reasons);
        status.set_idle_sources(BTreeMap::new());
        assert!(status.readiness().ready);

        status.stall(
            "shop.public.products/1".into(),
            Stall {
                offset: 17,
                reason: StallReason::NoNamespace(crate::graph::EscalationReason::MissingBefore),
                detail: "no namespace".into(),
            },
        );
        let r = status.readiness();
        assert!(!r.ready);
        assert_eq!(
            r.reasons[0],
            "partition shop.public.products/1 stalled at offset 17: missing_before (no namespace)"
        );
        assert_eq!(
            serde_json::to_value(&r.stalled_partitions).unwrap()["shop.public.products/1"]["reason"],
            "missing_before"
        );
        status.unstall("shop.public.products/1");
        assert!(status.readiness().ready);

        // A broker heard from a few seconds ago is no reason; past KAFKA_QUIET it is.
        status.kafka_quiet(Some(KAFKA_QUIET - std::time::Duration::from_secs(1)));
        assert!(status.readiness().ready);
        status.kafka_quiet(Some(KAFKA_QUIET + std::time::Duration::from_secs(2)));
        let r = status.readiness();
        assert!(!r.ready);
        assert!(
            r.reasons[0].starts_with("kafka: no broker has answered for 12s"),
            "{:?}",
            r.reasons
        );
        status.kafka_quiet(None);
        assert!(status.readiness().ready);
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_names_the_address_and_the_holder() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind(address).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&address.to_string()), "{message}");
        let holder = error
            .holder
            .expect("this process holds the port and can read its own /proc entries");
        assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
    }
}
