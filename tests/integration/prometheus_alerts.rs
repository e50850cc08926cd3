//! The shipped alert rules and dashboard queries against a real Prometheus
//! (Debian's `prometheus`, 2.42) scraping a live daemon and its auditor, each
//! as the job the shipped deploy/prometheus/prometheus.yml names. Only the
//! targets and the intervals (1s instead of 15s; CDC_ALERT_INTERVAL=15 for
//! the shipped ones) differ from the shipped config; the rules file is
//! deploy/prometheus/alerts.yml itself.
//!
//! The whole chain is real: a table of the test's own, written 20 times a
//! second, a Debezium connector of the test's own on the stack's Kafka
//! Connect (its own slot, publication, topic prefix and heartbeat topic),
//! the daemon watching that heartbeat topic (`max_idle` as shipped, 2m) and
//! that connector (`[connect]`), and a private Redis.
//!
//! One timeline:
//! 1. at start, every counter the dashboard draws is exported (the auditor's
//!    at 0) before anything happened;
//! 2. steady traffic: no alert pending or firing (but the budget tickets,
//!    whose hour-long windows a fresh Prometheus cannot fill, may be pending);
//! 3. outages of two causes: the daemon's Redis frozen (SIGSTOP) and the
//!    connector paused (Kafka Connect's pause and resume); by default a
//!    2-minute freeze (it pages) and a 1-minute pause (it does not), with
//!    CDC_ALERT_OUTAGES="1,4,10" both causes for each length in minutes (the
//!    long run, about 45 minutes). Every critical alert that fires must fire
//!    during the outage and resolve within RESOLVED_WITHIN of recovery; none
//!    may start firing after recovery. The long outages must page
//!    (InvalidationsStopped; ConnectorDown and SourceIdle). Every alert's
//!    pending, firing and resolved times are printed (run with
//!    --nocapture), warnings and tickets included;
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
use std::time::{Duration, Instant, SystemTime};

use crate::common::{eventually, Daemon, PrivateRedis};
use serde_json::{json, Value};

/// The daemon's and the auditor's scrape jobs, as the shipped config names them.
const DAEMON_JOB: &str = "cdc-invalidator";
const AUDIT_JOB: &str = "cdc-invalidator-audit";

/// InvalidationsStopped: 60s without progress, `for: 30s`, plus scrape and
/// evaluation delays and slack for a loaded 2-core machine.
const STOPPED_FIRES_WITHIN: Duration = Duration::from_secs(150);

/// Every alert that fired during an outage resolves within this of recovery
/// ("a few minutes": StaleRatioHigh's 1m window is the longest tail a
/// critical rule has).
const RESOLVED_WITHIN: Duration = Duration::from_secs(180);

/// After recovery each case is watched at least this long, and then until no
/// critical alert is pending: longer than any critical rule's detection
/// delay (a heartbeat, the 5s watermark reads, a scrape, an evaluation), so
/// a page that the ended outage would still set off is seen.
const WATCH_AFTER_RECOVERY: Duration = Duration::from_secs(90);

/// Prometheus's scrape and evaluation interval: CDC_ALERT_INTERVAL (seconds,
/// default 1; the shipped config's is 15). Longer intervals delay each
/// alert's firing and resolution by up to one scrape and one evaluation.
fn interval_seconds() -> u64 {
    std::env::var("CDC_ALERT_INTERVAL")
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("CDC_ALERT_INTERVAL={s:?}: whole seconds"))
        })
        .unwrap_or(1)
}

/// The shipped source.max_idle (examples/shop/config.toml).
const MAX_IDLE: &str = "2m";

/// The outages to run, in order: CDC_ALERT_OUTAGES ("1,4,10", minutes) runs
/// both causes for each length (the long run, about 45 minutes). By default
/// (the test suite's budget) a Redis freeze long enough to page
/// (InvalidationsStopped fires about 90 s in) and a connector pause of a
/// minute, shorter than any of its pages.
fn outages() -> Vec<(Cause, Duration)> {
    let Ok(list) = std::env::var("CDC_ALERT_OUTAGES") else {
        return vec![
            (Cause::RedisFrozen, Duration::from_secs(120)),
            (Cause::ConnectorPaused, Duration::from_secs(60)),
        ];
    };
    list.split(',')
        .map(|m| {
            m.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("CDC_ALERT_OUTAGES={list:?}: minutes, comma separated (\"1,4,10\")"))
        })
        .flat_map(|minutes| {
            let length = Duration::from_secs(60 * minutes);
            [(Cause::RedisFrozen, length), (Cause::ConnectorPaused, length)]
        })
        .collect()
}

/// The outages long enough that their pages must fire during them: the
/// thresholds plus `for:` (InvalidationsStopped 60 s + 30 s; ConnectorDown
/// 2 m; SourceIdle's 2 m idle bound + 1 m), with slack for a loaded machine.
fn must_page(cause: Cause, length: Duration) -> &'static [&'static str] {
    match cause {
        Cause::RedisFrozen if length >= Duration::from_secs(120) => &["InvalidationsStopped"],
        Cause::ConnectorPaused if length >= Duration::from_secs(240) => &["ConnectorDown", "SourceIdle"],
        _ => &[],
    }
}

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
                "global:\n  scrape_interval: {interval}s\n  scrape_timeout: 1s\n  evaluation_interval: {interval}s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n\
                 \x20 - job_name: {DAEMON_JOB}\n    static_configs:\n      - targets: [\"{daemon_target}\"]\n\
                 \x20 - job_name: {AUDIT_JOB}\n    static_configs:\n      - targets: [\"{audit_target}\"]\n",
                rules = rules.display(),
                interval = interval_seconds(),
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

    /// Active alerts with their severity and the time they went pending.
    async fn active(&self) -> Vec<ActiveAlert> {
        let Some(doc) = self.get("/api/v1/alerts").await else {
            return Vec::new();
        };
        doc["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|a| ActiveAlert {
                name: a["labels"]["alertname"].as_str().unwrap_or_default().to_owned(),
                severity: a["labels"]["severity"].as_str().unwrap_or_default().to_owned(),
                firing: a["state"] == "firing",
                active_at: a["activeAt"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .unwrap_or_else(|| panic!("alert without activeAt: {a}")),
            })
            .collect()
    }

    /// Every alerting rule's `for:`, by name.
    async fn hold_durations(&self) -> BTreeMap<String, Duration> {
        let doc = self.get("/api/v1/rules").await.unwrap_or(Value::Null);
        let mut durations = BTreeMap::new();
        for group in doc["data"]["groups"].as_array().cloned().unwrap_or_default() {
            for rule in group["rules"].as_array().cloned().unwrap_or_default() {
                if rule["type"] == "alerting" {
                    let seconds = rule["duration"].as_f64().unwrap_or(0.0);
                    durations.insert(
                        rule["name"].as_str().unwrap_or_default().to_owned(),
                        Duration::from_secs_f64(seconds),
                    );
                }
            }
        }
        durations
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

/// One active alert as Prometheus reports it.
struct ActiveAlert {
    name: String,
    severity: String,
    firing: bool,
    /// When it went pending.
    active_at: SystemTime,
}

/// One activation of an alert: pending, perhaps firing, perhaps resolved.
struct Episode {
    name: String,
    severity: String,
    active_at: SystemTime,
    /// `activeAt` plus the rule's `for:`: the evaluation that fired it, not
    /// the (up to a second later) poll that saw it.
    fired_at: Option<SystemTime>,
    /// The first poll that no longer saw it.
    resolved_at: Option<SystemTime>,
}

/// Every alert episode seen while one outage case was watched.
#[derive(Default)]
struct Timeline {
    episodes: Vec<Episode>,
}

impl Timeline {
    fn observe(&mut self, active: &[ActiveAlert], holds: &BTreeMap<String, Duration>, now: SystemTime) {
        for alert in active {
            let index = match self
                .episodes
                .iter()
                .position(|e| e.name == alert.name && e.active_at == alert.active_at && e.resolved_at.is_none())
            {
                Some(index) => index,
                None => {
                    self.episodes.push(Episode {
                        name: alert.name.clone(),
                        severity: alert.severity.clone(),
                        active_at: alert.active_at,
                        fired_at: None,
                        resolved_at: None,
                    });
                    self.episodes.len() - 1
                }
            };
            let episode = &mut self.episodes[index];
            if alert.firing && episode.fired_at.is_none() {
                let hold = holds.get(&alert.name).copied().unwrap_or_default();
                episode.fired_at = Some(alert.active_at + hold);
            }
        }
        for episode in self.episodes.iter_mut().filter(|e| e.resolved_at.is_none()) {
            if !active
                .iter()
                .any(|a| a.name == episode.name && a.active_at == episode.active_at)
            {
                episode.resolved_at = Some(now);
            }
        }
    }
}

/// Seconds from `start` to `at`, negative when `at` is earlier.
fn offset(start: SystemTime, at: SystemTime) -> f64 {
    match at.duration_since(start) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cause {
    /// The daemon's Redis frozen with SIGSTOP: writes wait, nothing errors.
    RedisFrozen,
    /// The test's Debezium connector paused in Kafka Connect: no changes and
    /// no heartbeats reach Kafka, while the table keeps being written.
    ConnectorPaused,
}

/// A Debezium PostgreSQL connector of the test's own on the stack's Kafka
/// Connect, capturing one table of its own in a schema of its own, so
/// pausing it touches nothing another test uses. Dropping it deletes the
/// connector, its replication slot (which would otherwise hold WAL on the
/// shared PostgreSQL), its publication and its schema.
struct OwnConnector {
    name: String,
    slot: String,
    publication: String,
    schema: String,
    /// Debezium's topic.prefix.
    prefix: String,
}

impl OwnConnector {
    async fn create(schema: &str, table: &str) -> OwnConnector {
        let connector = OwnConnector {
            name: common::unique("alerts-src").replace('_', "-"),
            slot: common::unique("alerts_slot"),
            publication: common::unique("alerts_pub"),
            schema: schema.to_owned(),
            prefix: common::unique("alerts"),
        };
        common::sql(
            &common::pg_admin().await,
            &format!(
                "CREATE PUBLICATION {} FOR TABLE {schema}.{table};",
                connector.publication
            ),
        )
        .await;
        let pg = reqwest::Url::parse(&common::pg_url()).expect("CDC_PG_URL is a URL");
        // As the stack's connector (scripts/stack.d/debezium-postgres.json),
        // with the test's own slot, publication, table and topic prefix.
        let config = json!({
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "tasks.max": "1",
            "database.hostname": pg.host_str().unwrap_or("127.0.0.1"),
            "database.port": pg.port().unwrap_or(5432).to_string(),
            "database.user": pg.username(),
            "database.password": pg.password().unwrap_or_default(),
            "database.dbname": pg.path().trim_start_matches('/'),
            "topic.prefix": connector.prefix,
            "plugin.name": "pgoutput",
            "publication.name": connector.publication,
            "publication.autocreate.mode": "disabled",
            "slot.name": connector.slot,
            "table.include.list": format!("{schema}.{table}"),
            "snapshot.mode": "no_data",
            "topic.creation.default.replication.factor": "-1",
            "topic.creation.default.partitions": "1",
            "heartbeat.interval.ms": "10000",
            "poll.interval.ms": "10",
            "tombstones.on.delete": "true",
        });
        let url = format!("{}/connectors/{}/config", common::connect_url(), connector.name);
        let response = reqwest::Client::new().put(&url).json(&config).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        connector.wait_for_state("RUNNING").await;
        connector
    }

    fn topic(&self, table: &str) -> String {
        format!("{}.{}.{table}", self.prefix, self.schema)
    }

    fn heartbeat_topic(&self) -> String {
        format!("__debezium-heartbeat.{}", self.prefix)
    }

    async fn state(&self) -> String {
        let url = format!("{}/connectors/{}/status", common::connect_url(), self.name);
        let Ok(response) = reqwest::get(&url).await else {
            return String::new();
        };
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let task = body["tasks"][0]["state"].as_str().unwrap_or("none");
        format!("{}/{task}", body["connector"]["state"].as_str().unwrap_or("none"))
    }

    /// Waits until the connector and its task are both in `state`.
    async fn wait_for_state(&self, state: &str) {
        let want = format!("{state}/{state}");
        eventually(
            &format!("connector {} {state}", self.name),
            Duration::from_secs(60),
            || {
                let want = want.clone();
                async move { (self.state().await == want).then_some(()) }
            },
        )
        .await;
    }

    async fn set_paused(&self, paused: bool) {
        let (verb, state) = if paused {
            ("pause", "PAUSED")
        } else {
            ("resume", "RUNNING")
        };
        let url = format!("{}/connectors/{}/{verb}", common::connect_url(), self.name);
        let response = reqwest::Client::new().put(&url).send().await.unwrap();
        assert!(response.status().is_success(), "{url}: {}", response.status());
        self.wait_for_state(state).await;
    }
}

impl Drop for OwnConnector {
    fn drop(&mut self) {
        let url = format!("{}/connectors/{}", common::connect_url(), self.name);
        let _ = Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", "-X", "DELETE", &url])
            .status();
        // The slot can be dropped only once the deleted task has let go of it.
        let admin = format!("postgres://postgres@{}/shop", common::pg_address());
        let drop_slot = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{}' AND NOT active",
            self.slot
        );
        let gone = format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            self.slot
        );
        let psql = |statement: &str| {
            Command::new("psql")
                .args([admin.as_str(), "-qtAc", statement])
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        for _ in 0..60 {
            psql(&drop_slot);
            if psql(&gone) == "0" {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        psql(&format!("DROP PUBLICATION IF EXISTS {}", self.publication));
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
    }
}

/// Updates rows of `table` at `rate` statements per second (read again
/// before every one; 0 pauses) until the task is aborted. Errors are
/// ignored: the writer stands for an application, which keeps writing.
fn writer(pool: sqlx::PgPool, table: String, rate: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n: u64 = 0;
        loop {
            let per_second = rate.load(Ordering::Relaxed);
            if per_second == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            n += 1;
            let statement = format!("UPDATE {table} SET n = n + 1 WHERE id = {}", n % 50 + 1);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&pool).await;
            tokio::time::sleep(Duration::from_millis(1000 / per_second)).await;
        }
    })
}

async fn http_ok(address: &str, path: &str) -> bool {
    common::http_get(address, path).await.map(|(s, _)| s) == Some(200)
}

/// The sum of a metric family's samples in a /metrics text; None when the
/// family is not exported at all.
fn exported(metrics: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// The counters (`*_total`) the shipped dashboard's queries read.
fn dashboard_counters() -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboard.json")).unwrap();
    text.match_indices("cdc_invalidator_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.ends_with("_total"))
        .collect()
}

/// Counters whose labels are a large cross product, born at their first
/// increment (src/metrics.rs, `daemon_at_zero`); the dashboard's panels of
/// them allow for that (DeadLettersAppearing and the dead-letter panels see
/// a series born at 1, checked at the end of the test).
const BORN_AT_FIRST_INCREMENT: [&str; 2] = ["cdc_invalidator_events_total", "cdc_invalidator_dead_letters_total"];

/// What the outage cases share.
struct Setup<'a> {
    prometheus: &'a Prometheus,
    redis: &'a PrivateRedis,
    connector: &'a OwnConnector,
    daemon: &'a Daemon,
    holds: BTreeMap<String, Duration>,
}

impl Setup<'_> {
    fn context(&self, what: &str) -> String {
        format!(
            "{what}\n--- daemon log\n{}\n--- prometheus log\n{}",
            self.daemon.log_tail(),
            self.prometheus.log_tail()
        )
    }

    /// Waits until no critical alert is pending or firing (the previous
    /// case's are gone), then lets steady traffic run a little.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let critical: Vec<String> = self
                .prometheus
                .active()
                .await
                .into_iter()
                .filter(|a| a.severity == "critical")
                .map(|a| a.name)
                .collect();
            if critical.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}",
                self.context(&format!(
                    "critical alerts still active before the next case: {critical:?}"
                ))
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
    }

    /// One outage of `cause` for `minutes`, watched from its start until
    /// every critical alert is gone after recovery; asserts what the module
    /// comment says and prints every episode.
    async fn outage(&self, cause: Cause, length: Duration) {
        self.settle().await;
        let case = format!("{cause:?} {}s", length.as_secs());
        let paused_query = panel_queries("Paused and stalled partitions", "5m")[0].clone();
        let lag_query = panel_queries("Consumer lag per partition", "5m")[0].clone();
        let mut timeline = Timeline::default();

        let start = SystemTime::now();
        let began = Instant::now();
        match cause {
            Cause::RedisFrozen => self.redis.signal("-STOP"),
            Cause::ConnectorPaused => self.connector.set_paused(true).await,
        }
        let (mut paused_seen, mut lag_seen) = (false, false);
        while began.elapsed() < length {
            timeline.observe(&self.prometheus.active().await, &self.holds, SystemTime::now());
            // Past the daemon's 30s gauge idle timeout, a Redis outage must
            // still show on the dashboard.
            if cause == Cause::RedisFrozen && began.elapsed() > Duration::from_secs(40) {
                paused_seen |= self.prometheus.query(&paused_query).await.iter().any(|(_, v)| *v > 0.0);
                lag_seen |= self.prometheus.query(&lag_query).await.iter().any(|(_, v)| *v > 0.0);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Recovery is when the cause is lifted, before Connect confirms the
        // resume: a page in between counts as after recovery.
        let recovered = SystemTime::now();
        let recovered_instant = Instant::now();
        match cause {
            Cause::RedisFrozen => self.redis.signal("-CONT"),
            Cause::ConnectorPaused => self.connector.set_paused(false).await,
        }
        if cause == Cause::RedisFrozen {
            assert!(
                paused_seen,
                "{}",
                self.context(&format!(
                    "{case}: the dashboard showed no paused partition: {paused_query}"
                ))
            );
            assert!(
                lag_seen,
                "{}",
                self.context(&format!("{case}: the dashboard showed no lag: {lag_query}"))
            );
        }
        loop {
            let active = self.prometheus.active().await;
            timeline.observe(&active, &self.holds, SystemTime::now());
            let critical: Vec<&str> = active
                .iter()
                .filter(|a| a.severity == "critical")
                .map(|a| a.name.as_str())
                .collect();
            if recovered_instant.elapsed() >= WATCH_AFTER_RECOVERY && critical.is_empty() {
                break;
            }
            assert!(
                recovered_instant.elapsed() < RESOLVED_WITHIN,
                "{}",
                self.context(&format!(
                    "{case}: critical alerts still active {RESOLVED_WITHIN:?} after recovery: {critical:?}"
                ))
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        let recovery = offset(start, recovered);
        for e in &timeline.episodes {
            let fired = e.fired_at.map(|t| format!("{:+.0}s", offset(start, t)));
            let resolved = e.resolved_at.map(|t| format!("{:+.0}s", offset(start, t)));
            let late = e.fired_at.is_some_and(|t| t > recovered);
            println!(
                "alert-outage {case}: {} ({}) pending {:+.0}s, firing {}, resolved {} (recovery at {recovery:+.0}s){}",
                e.name,
                e.severity,
                offset(start, e.active_at),
                fired.as_deref().unwrap_or("never"),
                resolved.as_deref().unwrap_or("not yet"),
                if late { ", STARTED FIRING AFTER RECOVERY" } else { "" },
            );
        }
        if timeline.episodes.is_empty() {
            println!("alert-outage {case}: no alert (recovery at {recovery:+.0}s)");
        }
        for e in timeline.episodes.iter().filter(|e| e.severity == "critical") {
            let Some(fired_at) = e.fired_at else { continue };
            assert!(
                fired_at >= start && fired_at <= recovered,
                "{}",
                self.context(&format!(
                    "{case}: critical {} fired at {:+.1}s, outside the outage (0s to {recovery:+.1}s)",
                    e.name,
                    offset(start, fired_at)
                ))
            );
            let resolved_in_time = e
                .resolved_at
                .is_some_and(|t| t.duration_since(recovered).unwrap_or_default() <= RESOLVED_WITHIN);
            assert!(
                resolved_in_time,
                "{}",
                self.context(&format!(
                    "{case}: critical {} not resolved within {RESOLVED_WITHIN:?} of recovery",
                    e.name
                ))
            );
        }
        let fired = |name: &str| {
            timeline
                .episodes
                .iter()
                .find(|e| e.name == name && e.fired_at.is_some())
                .and_then(|e| e.fired_at)
                .map(|t| offset(start, t))
        };
        // The long outages must page; a 1-minute one is shorter than any
        // page's threshold plus `for:`.
        let expected = must_page(cause, length);
        if !expected.is_empty() {
            for name in expected {
                assert!(
                    fired(name).is_some(),
                    "{}",
                    self.context(&format!("{case}: {name} did not fire during the outage"))
                );
            }
            if cause == Cause::RedisFrozen {
                let after = fired("InvalidationsStopped").unwrap_or_default();
                assert!(
                    (60.0..STOPPED_FIRES_WITHIN.as_secs_f64()).contains(&after),
                    "{case}: InvalidationsStopped fired {after:.1}s after the freeze, outside 60s to {STOPPED_FIRES_WITHIN:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shipped_alerts_page_during_outages_only_and_the_dashboard_shows_the_first_dead_letter() {
    let started = Instant::now();
    let outages = outages();
    let schema = common::unique("alerts");
    let table = "item";
    let pg = common::pg().await;
    common::sql(
        &pg,
        &format!(
            "CREATE SCHEMA {schema};\n\
             CREATE TABLE {schema}.{table} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);\n\
             INSERT INTO {schema}.{table} (id) SELECT generate_series(1, 50);"
        ),
    )
    .await;
    let connector = OwnConnector::create(&schema, table).await;
    let topic = connector.topic(table);
    let heartbeat = connector.heartbeat_topic();
    let prefix = format!("{}:", common::unique("ver"));
    let (dl_url, dl_schema) = common::dead_letter_url(&common::pg_address());
    let redis = PrivateRedis::start_ready().await;

    // Both topics exist before anyone subscribes or watches: Debezium
    // creates them on the first change and the first heartbeat.
    let rate = Arc::new(AtomicU64::new(20));
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _writer = Abort(writer(pg.clone(), format!("{schema}.{table}"), rate.clone()));
    common::chain::wait_for_topics(&[topic.clone(), heartbeat.clone()]).await;
    rate.store(0, Ordering::Relaxed);

    let extra = format!(
        "[dead_letters]\nurl = \"{dl_url}\"\nschema = \"{dl_schema}\"\n\
         [connect]\nurl = \"{connect}\"\nconnectors = [\"{name}\"]\n\
         [[entity]]\ntable = \"{schema}.{table}\"\nnamespace = \"item\"\nconsistency = \"strong\"\nkeys = [\"item:{{id}}\"]\n",
        connect = common::connect_url(),
        name = connector.name,
    );
    let config = common::write_config(&topic, &redis.url(), &prefix, &extra);
    // The watched heartbeat topic and max_idle as shipped (examples/shop).
    let text = std::fs::read_to_string(config.path()).unwrap().replacen(
        "[source.librdkafka]",
        &format!("liveness_topics = [\"{heartbeat}\"]\nmax_idle = \"{MAX_IDLE}\"\n[source.librdkafka]"),
        1,
    );
    std::fs::write(config.path(), text).unwrap();
    let daemon = Daemon::start_with(config.path(), &["--migrate"]);
    daemon.wait_ready().await;
    let daemon_metrics_at_start = daemon.metrics().await;

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
    let audit_metrics_at_start = common::http_get(&audit_address, "/metrics").await.unwrap_or_default().1;

    // ---------------------------------------------------------------- counters at 0
    // Every counter a panel draws exists before anything happened: a
    // counter born at its first increment loses that increment to rate()
    // and leaves its panel empty. No change has been written since the
    // topics were made, so nothing the auditor counts can have happened.
    let counters = dashboard_counters();
    assert!(
        counters.len() >= 10,
        "too few counters found in the dashboard: {counters:?}"
    );
    for name in &counters {
        if BORN_AT_FIRST_INCREMENT.contains(&name.as_str()) {
            continue;
        }
        let (process, metrics) = if name.starts_with("cdc_invalidator_audit_") {
            ("auditor", &audit_metrics_at_start)
        } else {
            ("daemon", &daemon_metrics_at_start)
        };
        let value = exported(metrics, name);
        assert!(
            value.is_some(),
            "the dashboard draws {name}, which the {process} does not export at start:\n{metrics}"
        );
        if process == "auditor" {
            assert_eq!(value, Some(0.0), "{name} at start:\n{metrics}");
        }
    }

    rate.store(20, Ordering::Relaxed);
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
        Duration::from_secs(10 + 2 * interval_seconds()),
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
    // elapse): not one alert may even be pending, but for the budget burn
    // tickets. Their windows are hours long and this Prometheus minutes old,
    // so a few late records (the topics' first changes, applied when the
    // daemon started; a slow second on a loaded machine) make the ratio of
    // its first scrapes: with 15s intervals the slow burn went pending here.
    let healthy_until = Instant::now() + Duration::from_secs(50);
    while Instant::now() < healthy_until {
        let alerts = prometheus.alerts().await;
        let active: Vec<_> = alerts
            .iter()
            .filter(|(name, state, _)| state == "firing" || !name.starts_with("ApplyLatencyBudget"))
            .collect();
        assert!(
            active.is_empty(),
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
            "the daemon applied little of 20 changes/s in the last minute: {applied:?}"
        ))
    );

    // ---------------------------------------------------------------- outages
    let setup = Setup {
        prometheus: &prometheus,
        redis: &redis,
        connector: &connector,
        daemon: &daemon,
        holds: prometheus.hold_durations().await,
    };
    for &(cause, length) in &outages {
        setup.outage(cause, length).await;
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
    // Tickets from the outages (the apply-latency burn) may still fire.
    let critical: Vec<String> = prometheus
        .active()
        .await
        .into_iter()
        .filter(|a| a.severity == "critical")
        .map(|a| a.name)
        .collect();
    assert!(
        critical.is_empty(),
        "{}",
        context(&format!("critical alerts active: {critical:?}"))
    );
    println!(
        "alert-outages: {outages:?}, {}s intervals, in {:?}",
        interval_seconds(),
        started.elapsed()
    );
}
