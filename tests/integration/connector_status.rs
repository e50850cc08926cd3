//! The Kafka Connect status watch against the stack's real Connect worker
//! and its Debezium connector: RUNNING is up; a paused connector and one that
//! does not exist are down, in the metric, in readiness and in `check`.
//! Its own test binary: pausing the stack's connector must not overlap the
//! tests that need Debezium (binaries run one after another).

use crate::common;

use std::time::Duration;

use crate::common::{eventually, Daemon};

const CONNECTOR: &str = "shop-postgres";

fn connector_up(metrics: &str, connector: &str) -> Option<f64> {
    let filter = format!("connector=\"{connector}\"");
    metrics
        .lines()
        .find(|l| l.starts_with("cdc_invalidator_connector_up{") && l.contains(&filter))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn connect(method: reqwest::Method, path: &str) {
    let url = format!("{}{path}", common::connect_url());
    let response = reqwest::Client::new().request(method, &url).send().await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
}

async fn connector_state() -> String {
    let url = format!("{}/connectors/{CONNECTOR}/status", common::connect_url());
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    body["connector"]["state"].as_str().unwrap_or("").to_owned()
}

/// Resumes the connector even when an assertion fails midway.
struct ResumeOnDrop;
impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        let url = format!("{}/connectors/{CONNECTOR}/resume", common::connect_url());
        let _ = std::process::Command::new("curl")
            .args(["-fsS", "-X", "PUT", &url])
            .status();
    }
}

#[tokio::test]
async fn connector_status_reaches_metrics_readiness_and_check() {
    let topic = format!("{}.public.{}", common::topic_prefix(), common::unique("conn"));
    let extra = format!(
        "[connect]\nurl = \"{}\"\nconnectors = [\"{CONNECTOR}\", \"no-such-connector\"]\npoll_interval = \"500ms\"\n\
         [[entity]]\ntable = \"public.conn\"\nconsistency = \"strong\"\nmax_cache_ttl = \"10m\"\nkeys = [\"conn:{{id}}\"]\n",
        common::connect_url()
    );
    let cfg = common::write_config(&topic, &common::redis_url(), "conn:", &extra);

    // check: the real connector is RUNNING, the other does not exist.
    let out = common::cli()
        .args(["check", "--config"])
        .arg(cfg.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("ok    connector {CONNECTOR}: RUNNING")),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  connector no-such-connector: no such connector"),
        "{stdout}"
    );
    assert!(!out.status.success());

    let daemon = Daemon::start(cfg.path());
    eventually("connector_up for both connectors", Duration::from_secs(30), || {
        let daemon = &daemon;
        async move {
            let m = daemon.metrics().await;
            (connector_up(&m, CONNECTOR) == Some(1.0) && connector_up(&m, "no-such-connector") == Some(0.0))
                .then_some(())
        }
    })
    .await;
    let (status, body) = common::http_get(&daemon.admin, "/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("no-such-connector"), "{body}");
    assert!(!body.contains(&format!("connector \\\"{CONNECTOR}\\\"")), "{body}");

    // Pause the real connector: Connect reports PAUSED, the daemon follows.
    let _resume = ResumeOnDrop;
    connect(reqwest::Method::PUT, &format!("/connectors/{CONNECTOR}/pause")).await;
    eventually("the daemon to see the pause", Duration::from_secs(30), || {
        let daemon = &daemon;
        async move { (connector_up(&daemon.metrics().await, CONNECTOR) == Some(0.0)).then_some(()) }
    })
    .await;
    let (_, body) = common::http_get(&daemon.admin, "/readyz").await.unwrap();
    assert!(body.contains("PAUSED"), "{body}");
    connect(reqwest::Method::PUT, &format!("/connectors/{CONNECTOR}/resume")).await;
    eventually("the daemon to see it running again", Duration::from_secs(30), || {
        let daemon = &daemon;
        async move { (connector_up(&daemon.metrics().await, CONNECTOR) == Some(1.0)).then_some(()) }
    })
    .await;
    eventually("Connect to report RUNNING", Duration::from_secs(30), || async {
        (connector_state().await == "RUNNING").then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("source connector is not running") && l.contains(CONNECTOR)),
        "{}",
        daemon.log_tail()
    );
}
