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

/// Why a partition stopped: the daemon will not commit past this record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stall {
    pub offset: i64,
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
struct StatusInner {
    dead_letters_error: Option<String>,
    registry_error: Option<String>,
    redis_error: Option<String>,
    redis_connected: bool,
    assigned: usize,
    stalls: BTreeMap<String, Stall>,
}

/// Shared health of the pipeline, written by it and read by `/readyz`.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub reasons: Vec<String>,
    pub assigned_partitions: usize,
    pub stalled_partitions: BTreeMap<String, Stall>,
}

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut StatusInner) -> T) -> T {
        f(&mut self.inner.lock().expect("status lock"))
    }

    pub fn redis_ok(&self) {
        self.with(|s| {
            s.redis_connected = true;
            s.redis_error = None;
        });
    }

    pub fn redis_failed(&self, error: String) {
        self.with(|s| {
            s.redis_connected = false;
            s.redis_error = Some(error);
        });
    }

    pub fn dead_letters_ok(&self) {
        self.with(|s| s.dead_letters_error = None);
    }

    pub fn dead_letters_failed(&self, error: String) {
        self.with(|s| s.dead_letters_error = Some(error));
    }

    pub fn registry_ok(&self) {
        self.with(|s| s.registry_error = None);
    }

    pub fn registry_failed(&self, error: String) {
        self.with(|s| s.registry_error = Some(error));
    }

    pub fn set_assigned(&self, count: usize) {
        self.with(|s| s.assigned = count);
    }

    pub fn stall(&self, partition: String, stall: Stall) {
        self.with(|s| {
            s.stalls.insert(partition, stall);
            crate::metrics::stalled_partitions(s.stalls.len());
        });
    }

    pub fn unstall(&self, partition: &str) {
        self.with(|s| {
            s.stalls.remove(partition);
            crate::metrics::stalled_partitions(s.stalls.len());
        });
    }

    pub fn readiness(&self) -> Readiness {
        self.with(|s| {
            let mut reasons = Vec::new();
            if !s.redis_connected {
                reasons.push(match &s.redis_error {
                    Some(e) => format!("redis not connected: {e}"),
                    None => "redis not connected yet".to_owned(),
                });
            }
            if let Some(e) = &s.dead_letters_error {
                reasons.push(format!("dead-letter store unreachable (consumption paused): {e}"));
            }
            if let Some(e) = &s.registry_error {
                reasons.push(format!("schema registry unreachable (consumption paused): {e}"));
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

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    status: Arc<Status>,
}

pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, status });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "admin http listening (/metrics /healthz /readyz)");
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

        status.stall(
            "shop.public.products/1".into(),
            Stall {
                offset: 17,
                reason: "missing_before",
                detail: "no namespace".into(),
            },
        );
        let r = status.readiness();
        assert!(!r.ready);
        assert!(
            r.reasons[0].contains("shop.public.products/1 stalled at offset 17"),
            "{:?}",
            r.reasons
        );
        status.unstall("shop.public.products/1");
        assert!(status.readiness().ready);
    }
}
