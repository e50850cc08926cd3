//! The shipped alert rules and dashboard queries against a real Prometheus
//! (Debian's `prometheus`, 2.42) scraping a live daemon and its auditor, each
//! as the job the shipped deploy/prometheus/prometheus.yml names. Only the
//! targets and the intervals (1s instead of 15s) differ from the shipped
//! config; the rules file is deploy/prometheus/alerts.yml itself.
//!
//! One timeline, every wait bounded (about 4 minutes in all):
//! 1. steady traffic (20 records/s): no alert pending or firing;
//! 2. the daemon's private Redis frozen (SIGSTOP), a trickle of changes
//!    waiting: the dashboard's paused-partitions and lag panels show the
//!    outage, and InvalidationsStopped fires within its bound;
//! 3. Redis resumed (SIGCONT), traffic again: InvalidationsStopped resolves
//!    at once and nothing fires;
//! 4. one malformed record: the dashboard's dead-letter queries (read from
//!    deploy/grafana/dashboard.json) show exactly 1 and DeadLettersAppearing
//!    fires, though the counter's series is born at 1.
//!
//! The promtool unit tests (tests/deploy/alerts_test.yml) prove the rule
//! logic; this proves the wiring: metric names, labels and jobs as the daemon
//! really exports them, scrape and evaluation timing, and the outage behaviour
//! of the gauges.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{eventually, Daemon, PrivateRedis};
use serde_json::{json, Value};

/// The daemon's and the auditor's scrape jobs, as the shipped config names them.
const DAEMON_JOB: &str = "cdc-invalidator";
const AUDIT_JOB: &str = "cdc-invalidator-audit";

/// InvalidationsStopped: 60s without progress, `for: 30s`, plus scrape and
/// evaluation delays and slack for a loaded 2-core machine.
const STOPPED_FIRES_WITHIN: Duration = Duration::from_secs(150);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus of the test's own: its own config, data directory and
/// loopback port; killed when dropped.
struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(daemon_target: &str, audit_target: &str) -> Prometheus {
        let found = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "the `prometheus` binary is not on PATH: install Debian's package \
             (apt-get install -y prometheus, as root; scripts/test installs it \
             before the integration tests) and run this test again"
        );
        let shipped = std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).unwrap();
        for job in [DAEMON_JOB, AUDIT_JOB] {
            assert!(
                shipped.contains(&format!("job_name: {job}\n")),
                "deploy/prometheus/prometheus.yml no longer names the scrape job {job:?}; \
                 the rules and the dashboard select on it"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n\
                 \x20 - job_name: {DAEMON_JOB}\n    static_configs:\n      - targets: [\"{daemon_target}\"]\n\
                 \x20 - job_name: {AUDIT_JOB}\n    static_configs:\n      - targets: [\"{audit_target}\"]\n",
                rules = rules.display(),
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", common::free_port());
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            address,
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let (status, body) = common::http_get(&self.address, path).await?;
        (status == 200).then_some(())?;
        serde_json::from_str(&body).ok()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::http_get(&self.address, "/-/ready").await.map(|(s, _)| s) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30s\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query: each series' labels and value. An error (a query
    /// the server refuses) panics: a dashboard query must be valid PromQL.
    async fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let (status, body) = common::http_get(&self.address, &format!("/api/v1/query?query={}", encode(expr)))
            .await
            .unwrap_or_else(|| panic!("prometheus did not answer\n{}", self.log_tail()));
        let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            status == 200 && doc["status"] == "success",
            "query refused ({status}): {expr}\n{body}"
        );
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// Active alerts: (name, state "pending" or "firing", labels).
    async fn alerts(&self) -> Vec<(String, String, Value)> {
        let Some(doc) = self.get("/api/v1/alerts").await else {
            return Vec::new();
        };
        doc["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or_default().to_owned(),
                    a["state"].as_str().unwrap_or_default().to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// The rule groups as loaded: every rule's health must be ok.
    async fn rule_problems(&self) -> Vec<String> {
        let doc = self.get("/api/v1/rules").await.unwrap_or(Value::Null);
        let mut names = Vec::new();
        for group in doc["data"]["groups"].as_array().cloned().unwrap_or_default() {
            for rule in group["rules"].as_array().cloned().unwrap_or_default() {
                if rule["health"] != "ok" && rule["health"] != "unknown" {
                    names.push(format!("{}: {} {}", rule["name"], rule["health"], rule["lastError"]));
                }
            }
        }
        names
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query string value (everything but unreserved bytes).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A panel's queries from the shipped dashboard, by title, with the
/// dashboard's variables set the way a viewer of this one daemon would.
fn panel_queries(title: &str, range: &str) -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/dashboard.json")).unwrap()).unwrap();
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut panels = Vec::new();
    walk(&dashboard["panels"], &mut panels);
    let panel = panels
        .into_iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel titled {title:?} in deploy/grafana/dashboard.json"));
    panel["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", range)
                .replace("$audit_job", AUDIT_JOB)
                .replace("$instance", ".*")
                .replace("$job", DAEMON_JOB)
        })
        .collect()
}

fn firing<'a>(alerts: &'a [(String, String, Value)], name: &str) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|(n, s, _)| n == name && s == "firing")
        .map(|(_, _, labels)| labels)
}

/// Produces Debezium-shaped updates to `topic` at `rate` records per second
/// (read again before every record; 0 pauses) until the task is aborted.
fn traffic(topic: String, table: String, rate: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    tokio::spawn(async move {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::kafka_brokers())
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let mut n: u64 = 1_000;
        loop {
            let per_second = rate.load(Ordering::Relaxed);
            if per_second == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            n += 1;
            let id = i64::try_from(n % 50).unwrap();
            let (key, value) = common::debezium_change(&table, "u", n, id, json!({"id": id}), common::now_us());
            let (key, value) = (key.unwrap(), value.unwrap());
            let record = FutureRecord::to(&topic).partition(0).key(&key).payload(&value);
            let _ = producer.send(record, Duration::from_secs(5)).await;
            tokio::time::sleep(Duration::from_millis(1000 / per_second)).await;
        }
    })
}

async fn http_ok(address: &str, path: &str) -> bool {
    common::http_get(address, path).await.map(|(s, _)| s) == Some(200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shipped_alerts_page_on_a_redis_outage_only_and_the_dashboard_shows_the_first_dead_letter() {
    let started = Instant::now();
    let table = common::unique("promalert");
    let topic = format!("{}.public.{table}", common::topic_prefix());
    let prefix = format!("{}:", common::unique("ver"));
    let (dl_url, dl_schema) = common::dead_letter_url(&common::pg_address());
    let redis = PrivateRedis::start_ready().await;

    // The topic exists before anyone subscribes.
    common::produce_id_change(&topic, &table, "c", 1, 0).await;

    let extra = format!(
        "[dead_letters]\nurl = \"{dl_url}\"\nschema = \"{dl_schema}\"\n\
         [[entity]]\ntable = \"public.{table}\"\nnamespace = \"item\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n"
    );
    let config = common::write_config(&topic, &redis.url(), &prefix, &extra);
    let daemon = Daemon::start_with(config.path(), &["--migrate"]);
    daemon.wait_ready().await;

    // The auditor on the same config: its own consumer group, its own port.
    let audit_log = config.path().with_extension("audit.log");
    let auditor = common::cli()
        .args(["audit", "--config"])
        .arg(config.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("CDC_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&audit_log).unwrap())
        .spawn()
        .expect("start the auditor");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _auditor = Kill(auditor);
    let audit_address = common::wait_for_bound_address(&audit_log);
    eventually("the auditor's /healthz", Duration::from_secs(30), || {
        let address = audit_address.clone();
        async move { http_ok(&address, "/healthz").await.then_some(()) }
    })
    .await;

    let rate = Arc::new(AtomicU64::new(20));
    let producer = traffic(topic.clone(), table.clone(), rate.clone());
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _producer = Abort(producer);

    let prometheus = Prometheus::start(&daemon.admin, &audit_address);
    prometheus.wait_ready().await;
    let context = |what: &str| {
        format!(
            "{what}\n--- daemon log\n{}\n--- prometheus log\n{}",
            daemon.log_tail(),
            prometheus.log_tail()
        )
    };

    // ---------------------------------------------------------------- healthy
    let prom = &prometheus;
    eventually(
        "both jobs scraped (up == 1)",
        Duration::from_secs(30),
        move || async move {
            let up = prom.query("up == 1").await;
            let jobs: Vec<&str> = up
                .iter()
                .filter_map(|(l, _)| l.get("job").map(String::as_str))
                .collect();
            (jobs.contains(&DAEMON_JOB) && jobs.contains(&AUDIT_JOB)).then_some(())
        },
    )
    .await;
    // Rules evaluated before the first scrape saw no target at all
    // (CdcInvalidatorAbsent pending); the next evaluations clear that.
    eventually(
        "the first evaluations after both scrapes",
        Duration::from_secs(10),
        move || async move {
            let alerts = prom.alerts().await;
            (!alerts.iter().any(|(n, _, _)| n == "CdcInvalidatorAbsent")).then_some(())
        },
    )
    .await;
    let problems = prometheus.rule_problems().await;
    assert!(problems.is_empty(), "rules failed to evaluate: {problems:?}");
    // The auditor exports its own metrics only: nothing a daemon rule selects.
    let leaked = prometheus
        .query(&format!(
            "{{job=\"{AUDIT_JOB}\", __name__=~\"cdc_invalidator_.*\", __name__!~\"cdc_invalidator_audit_.*\"}}"
        ))
        .await;
    assert!(
        leaked.is_empty(),
        "the auditor exports daemon metrics: {:?}",
        leaked
            .iter()
            .map(|(l, _)| l.get("__name__").cloned())
            .collect::<Vec<_>>()
    );
    // Steady traffic for 50s (long enough for every `for:` under a minute to
    // elapse): not one alert may even be pending.
    let healthy_until = Instant::now() + Duration::from_secs(50);
    while Instant::now() < healthy_until {
        let alerts = prometheus.alerts().await;
        assert!(
            alerts.is_empty(),
            "{}",
            context(&format!("alerts active under steady traffic: {alerts:?}"))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let applied = prometheus
        .query(&format!(
            "sum(increase(cdc_invalidator_apply_latency_seconds_count{{job=\"{DAEMON_JOB}\"}}[1m]))"
        ))
        .await;
    assert!(
        applied.first().map(|(_, v)| *v).unwrap_or(0.0) > 300.0,
        "{}",
        context(&format!(
            "the daemon applied little of 20 records/s in the last minute: {applied:?}"
        ))
    );

    // ---------------------------------------------------------------- outage
    // Changes keep coming, but only a trickle: enough to wait in Kafka, too
    // few to burn the apply-latency budget when they are applied late (the
    // short history of this Prometheus would inflate the ratio).
    rate.store(0, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.signal("-STOP");
    let frozen = Instant::now();
    rate.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    rate.store(0, Ordering::Relaxed);
    let paused_query = panel_queries("Paused and stalled partitions", "5m")[0].clone();
    let lag_query = panel_queries("Consumer lag per partition", "5m")[0].clone();
    let mut paused_seen = false;
    let mut lag_seen = false;
    let mut gauges_late = false;
    let fired_after = loop {
        let alerts = prometheus.alerts().await;
        if firing(&alerts, "InvalidationsStopped").is_some() {
            break frozen.elapsed();
        }
        let others: Vec<_> = alerts.iter().filter(|(_, s, _)| s == "firing").collect();
        assert!(
            others.is_empty(),
            "{}",
            context(&format!("fired during the outage: {others:?}"))
        );
        // Past the daemon's 30s gauge idle timeout, the outage must still show.
        if frozen.elapsed() > Duration::from_secs(40) {
            gauges_late = true;
            paused_seen |= prometheus.query(&paused_query).await.iter().any(|(_, v)| *v > 0.0);
            lag_seen |= prometheus.query(&lag_query).await.iter().any(|(_, v)| *v > 0.0);
        }
        assert!(
            frozen.elapsed() < STOPPED_FIRES_WITHIN,
            "{}",
            context(&format!(
                "InvalidationsStopped did not fire within {STOPPED_FIRES_WITHIN:?} of freezing Redis; active: {alerts:?}"
            ))
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        fired_after >= Duration::from_secs(60),
        "InvalidationsStopped fired {fired_after:?} after the freeze, before its 60s threshold"
    );
    assert!(gauges_late, "the outage check ran");
    assert!(
        paused_seen,
        "{}",
        context(&format!(
            "the dashboard showed no paused partition during the outage: {paused_query}"
        ))
    );
    assert!(
        lag_seen,
        "{}",
        context(&format!("the dashboard showed no lag during the outage: {lag_query}"))
    );

    // ---------------------------------------------------------------- recovery
    redis.signal("-CONT");
    let resumed = Instant::now();
    rate.store(20, Ordering::Relaxed);
    loop {
        let alerts = prometheus.alerts().await;
        let firing_now: Vec<_> = alerts.iter().filter(|(_, s, _)| s == "firing").collect();
        let stopped_active = alerts.iter().any(|(n, _, _)| n == "InvalidationsStopped");
        if !stopped_active && firing_now.is_empty() {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "{}",
            context(&format!("still active 30s after Redis resumed: {alerts:?}"))
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Nothing fires after the cause is gone: watch a while longer.
    let watch_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < watch_until {
        let alerts = prometheus.alerts().await;
        let firing_now: Vec<_> = alerts.iter().filter(|(_, s, _)| s == "firing").collect();
        assert!(
            firing_now.is_empty(),
            "{}",
            context(&format!("fired after Redis resumed: {firing_now:?}"))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // ---------------------------------------------------------------- first dead letter
    common::produce(
        &topic,
        &[(
            Some(b"{\"id\":7}".to_vec()),
            Some(b"{\"op\": \"u\", \"after\": {\"id\": 7".to_vec()),
        )],
    )
    .await;
    for (title, range) in [
        ("Dead letters (time range)", "10m"),
        ("Dead letters by stage and kind (since daemon start)", "10m"),
    ] {
        let expr = panel_queries(title, range)[0].clone();
        let shown = eventually(
            &format!("the dead letter in panel {title:?}"),
            Duration::from_secs(45),
            || {
                let expr = expr.clone();
                async move {
                    let result = prom.query(&expr).await;
                    let total: f64 = result.iter().map(|(_, v)| *v).sum();
                    (total > 0.0).then_some(result)
                }
            },
        )
        .await;
        let total: f64 = shown.iter().map(|(_, v)| *v).sum();
        assert_eq!(
            total, 1.0,
            "panel {title:?} shows {shown:?} for one dead letter: {expr}"
        );
    }
    let labels = eventually(
        "DeadLettersAppearing to fire for the first dead letter",
        Duration::from_secs(60),
        move || async move {
            let alerts = prom.alerts().await;
            firing(&alerts, "DeadLettersAppearing").cloned()
        },
    )
    .await;
    assert_eq!(labels["job"], DAEMON_JOB, "{labels}");
    let others: Vec<_> = prometheus
        .alerts()
        .await
        .into_iter()
        .filter(|(n, s, _)| s == "firing" && n != "DeadLettersAppearing")
        .collect();
    assert!(others.is_empty(), "{}", context(&format!("also firing: {others:?}")));
    assert!(
        started.elapsed() < Duration::from_secs(330),
        "the test took {:?}; its waits are sized for under 5 minutes",
        started.elapsed()
    );
}
