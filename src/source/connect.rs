//! Kafka Connect status of the connectors that feed the daemon. A FAILED
//! Debezium task stops every change silently: the topics just go quiet,
//! which the liveness watch notices only after `max_idle`. Connect's REST
//! API (`GET /connectors/<name>/status`) says so at once, with the trace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::admin::Status;
use crate::config::ConnectSettings;

/// One status request slower than this counts as Connect unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct ConnectorStatus {
    connector: StateOf,
    #[serde(default)]
    tasks: Vec<TaskStatus>,
}

#[derive(Debug, Deserialize)]
struct StateOf {
    state: String,
    #[serde(default)]
    trace: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TaskStatus {
    id: i64,
    state: String,
    #[serde(default)]
    trace: Option<String>,
}

/// What one poll found for one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The connector and every task RUNNING (and at least one task).
    pub(crate) up: bool,
    /// Tasks per state (RUNNING, FAILED, PAUSED, UNASSIGNED, ...).
    pub(crate) tasks: BTreeMap<String, usize>,
    /// Why it is not up, for readiness and the log; None when up.
    pub(crate) problem: Option<String>,
}

/// Judges one status document (the body of a 200 answer).
fn judge(body: &str) -> Verdict {
    let status: ConnectorStatus = match serde_json::from_str(body) {
        Ok(s) => s,
        Err(e) => {
            return Verdict {
                up: false,
                tasks: BTreeMap::new(),
                problem: Some(format!("unreadable status from Kafka Connect: {e}")),
            }
        }
    };
    let mut tasks = BTreeMap::new();
    for task in &status.tasks {
        *tasks.entry(task.state.clone()).or_insert(0) += 1;
    }
    let first_line = |trace: &Option<String>| {
        trace
            .as_deref()
            .and_then(|t| t.lines().next())
            .map(|l| format!(": {l}"))
            .unwrap_or_default()
    };
    let problem = if status.connector.state != "RUNNING" {
        Some(format!(
            "connector is {}{}",
            status.connector.state,
            first_line(&status.connector.trace)
        ))
    } else if let Some(task) = status.tasks.iter().find(|t| t.state != "RUNNING") {
        Some(format!("task {} is {}{}", task.id, task.state, first_line(&task.trace)))
    } else if status.tasks.is_empty() {
        Some("connector has no tasks".to_owned())
    } else {
        None
    };
    Verdict {
        up: problem.is_none(),
        tasks,
        problem,
    }
}

/// Asks Connect about one connector.
async fn poll(http: &reqwest::Client, base: &str, name: &str) -> Verdict {
    let down = |problem: String| Verdict {
        up: false,
        tasks: BTreeMap::new(),
        problem: Some(problem),
    };
    let url = format!("{base}/connectors/{name}/status");
    // The base URL may carry a password: messages name it redacted, and
    // reqwest's errors without the URL they would quote whole.
    let shown = crate::config::redact_url(base);
    let response = match http.get(&url).send().await {
        Ok(r) => r,
        Err(e) => return down(format!("Kafka Connect at {shown} unreachable: {}", e.without_url())),
    };
    match response.status() {
        reqwest::StatusCode::NOT_FOUND => down(format!("no such connector on Kafka Connect at {shown}")),
        code if !code.is_success() => down(format!("Kafka Connect at {shown} answered {code}")),
        _ => match response.text().await {
            Ok(body) => judge(&body),
            Err(e) => down(format!("Kafka Connect at {shown}: {}", e.without_url())),
        },
    }
}

/// One poll of every connector, for `check`.
pub(crate) async fn status_once(settings: &ConnectSettings) -> Vec<(String, Verdict)> {
    let http = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            let verdict = Verdict {
                up: false,
                tasks: BTreeMap::new(),
                problem: Some(format!("no HTTP client: {e}")),
            };
            return settings
                .connectors
                .iter()
                .map(|n| (n.clone(), verdict.clone()))
                .collect();
        }
    };
    let mut out = Vec::new();
    for name in &settings.connectors {
        out.push((name.clone(), poll(&http, &settings.url, name).await));
    }
    out
}

/// Polls every connector each interval until shutdown; exports
/// `connector_up` and task counts, and tells readiness what is down.
pub(crate) async fn watch(settings: ConnectSettings, status: Arc<Status>, shutdown: CancellationToken) {
    let http = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "connector status watch not started");
            return;
        }
    };
    let mut last: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut ticker = tokio::time::interval(settings.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut down = BTreeMap::new();
        for name in &settings.connectors {
            let verdict = poll(&http, &settings.url, name).await;
            let before = last.get(name);
            match (&verdict.problem, before.and_then(|b| b.problem.as_ref())) {
                (Some(problem), previous) if previous != Some(problem) => {
                    tracing::warn!(connector = %name, %problem, "source connector is not running: no changes reach the daemon")
                }
                (None, Some(_)) => tracing::info!(connector = %name, "source connector is running again"),
                _ => {}
            }
            let previous_states: Vec<String> = before.map(|b| b.tasks.keys().cloned().collect()).unwrap_or_default();
            crate::metrics::connector_status(name, verdict.up, &verdict.tasks, &previous_states);
            if let Some(problem) = &verdict.problem {
                down.insert(name.clone(), problem.clone());
            }
            last.insert(name.clone(), verdict);
        }
        status.set_connectors_down(down);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_connector_with_running_tasks_is_up() {
        let v = judge(
            r#"{"name":"shop","connector":{"state":"RUNNING","worker_id":"w:8083"},
                "tasks":[{"id":0,"state":"RUNNING","worker_id":"w:8083"}],"type":"source"}"#,
        );
        assert!(v.up);
        assert_eq!(v.problem, None);
        assert_eq!(v.tasks.get("RUNNING"), Some(&1));
    }

    #[test]
    fn a_failed_task_is_down_with_the_first_line_of_its_trace() {
        let v = judge(
            r#"{"name":"shop","connector":{"state":"RUNNING","worker_id":"w"},
                "tasks":[{"id":0,"state":"FAILED","worker_id":"w",
                          "trace":"org.apache.kafka.common.errors.RecordTooLargeException: too big\n\tat x.y"}]}"#,
        );
        assert!(!v.up);
        assert_eq!(
            v.problem.as_deref(),
            Some("task 0 is FAILED: org.apache.kafka.common.errors.RecordTooLargeException: too big")
        );
        assert_eq!(v.tasks.get("FAILED"), Some(&1));
    }

    #[test]
    fn paused_stopped_taskless_and_unreadable_are_down() {
        let paused = judge(r#"{"connector":{"state":"PAUSED"},"tasks":[{"id":0,"state":"PAUSED"}]}"#);
        assert_eq!(paused.problem.as_deref(), Some("connector is PAUSED"));
        let stopped = judge(r#"{"connector":{"state":"STOPPED"},"tasks":[]}"#);
        assert!(!stopped.up);
        let taskless = judge(r#"{"connector":{"state":"RUNNING"},"tasks":[]}"#);
        assert_eq!(taskless.problem.as_deref(), Some("connector has no tasks"));
        let garbage = judge("<html>");
        assert!(!garbage.up);
        assert!(garbage.problem.unwrap().starts_with("unreadable status"));
    }
}
