//! The daemon as a process under test: its command, its log, its admin
//! listener (bound on port 0; the address comes from its log), and reading
//! that listener's metrics.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test. scripts/test exports the stack's addresses, and
/// these variables override config files: each test's own config must win.
pub fn cli() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdc-invalidator"));
    for name in [
        "CDC_REDIS_URL",
        "CDC_KAFKA_BROKERS",
        "CDC_KAFKA_GROUP",
        "CDC_ADMIN_LISTEN",
        "CDC_DEAD_LETTERS_URL",
        "CDC_LOOKUP_URL",
        "CDC_CONNECT_URL",
        "CDC_LEAVE_GROUP_ON_STOP",
    ] {
        command.env_remove(name);
    }
    command
}

/// A daemon process under test, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub admin: String,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(config_path: &std::path::Path) -> Daemon {
        Daemon::start_with(config_path, &[])
    }

    /// Starts `run` and waits until its admin listener is bound: the config
    /// says port 0 and the daemon logs the address it got. A daemon that
    /// exits first (a test of a failing start) is returned as it is, with
    /// no admin address.
    pub fn start_with(config_path: &std::path::Path, extra: &[&str]) -> Daemon {
        // Beside the config, named for this start: two daemons may share a config.
        let log = config_path.with_extension(format!("{}.log", super::unique("daemon")));
        let file = std::fs::File::create(&log).unwrap();
        let child = cli()
            .args(["run", "--config"])
            .arg(config_path)
            .args(extra)
            .env("CDC_LOG", "info,cdc_invalidator=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the daemon");
        let mut daemon = Daemon {
            child,
            admin: String::new(),
            log,
        };
        daemon.admin = daemon.wait_for_admin_address();
        daemon
    }

    /// The address from the daemon's "admin listener bound" log line.
    fn wait_for_admin_address(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(address) = bound_address(&text) {
                return address;
            }
            if self.child.try_wait().unwrap().is_some() {
                return String::new();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not bind its admin listener within 30s\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and returns at once, so the caller can watch the stop.
    pub fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }

    /// Waits without blocking the runtime for the process to exit, at most
    /// `timeout`.
    pub async fn exited(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {timeout:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The partitions the daemon holds, as its `/readyz` reports them (None
    /// while it does not answer).
    pub async fn assigned_partitions(&self) -> Option<u64> {
        let (_, body) = http_get(&self.admin, "/readyz").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["assigned_partitions"].as_u64()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop within 40s after SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let admin = self.admin.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get(&admin, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready within 60s\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The listener address in a log line `admin listener bound address=...`
/// (the daemon's and the auditor's, human log format).
pub fn bound_address(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("admin listener bound"))?
        .split_whitespace()
        .find_map(|field| field.strip_prefix("address="))
        .map(str::to_owned)
}

/// Waits (30 s at most) for the "admin listener bound" line in a log file:
/// the address a process started with `--listen 127.0.0.1:0` got.
pub fn wait_for_bound_address(log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(address) = bound_address(&std::fs::read_to_string(log).unwrap_or_default()) {
            return address;
        }
        assert!(
            Instant::now() < deadline,
            "no \"admin listener bound\" line in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET `http://{addr}{path}`; (status, body), None when nothing answered
/// within the timeouts (the daemon not up yet, or gone).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client")
    });
    let response = client.get(format!("http://{addr}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Sum of a metric's samples whose line contains every `filter` fragment.
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Peak resident memory of a process in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
