//! The processes of a run: the private Redis servers, the daemon under test
//! and the children that print JSON, with the reaper that stops them all.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cdc_bench::daemon_config::DaemonConfig;
use cdc_bench::prom;
use serde::de::DeserializeOwned;

use crate::dead_letters::DeadLetterTable;
use crate::results::{GitState, RedisCommands};
use crate::{say, Args};

/// Kills the children it holds when dropped (errors and ^C leave nothing behind).
pub struct Reaper(pub Vec<(String, Child)>);

impl Reaper {
    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.0.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.0.remove(i);
            terminate(&mut child, Duration::from_secs(30));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            terminate(child, Duration::from_secs(10));
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).expect("a pid fits pid_t"),
            libc::SIGTERM,
        )
    };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub struct Ctx {
    pub args: Args,
    pub run_id: String,
    pub dir: PathBuf,
    pub redis: redis::Connection,
    pub redis_url: String,
    pub admin: String,
    /// The log of the daemon spawned last.
    pub last_log: Option<PathBuf>,
    /// The private Redis Cluster's nodes, when a drain asks for one.
    pub cluster_nodes: Vec<u16>,
    /// Set for the length of a cluster drain: flushes and command counts
    /// then cover every cluster node instead of the private server.
    pub on_cluster: bool,
    pub reaper: Reaper,
    pub topics: Vec<String>,
    /// The tree the run started from (the daemon copy was built from it).
    pub git_at_start: GitState,
    /// The dead-letter store of the malformed drains, when one may run.
    pub dead_letters: Option<DeadLetterTable>,
}

/// The daemon under test, as copied into the run's bin directory.
pub const DAEMON: &str = "cdc-invalidator";
/// The build it is compared with (`--baseline-daemon`), copied beside it.
pub const BASELINE_DAEMON: &str = "cdc-invalidator-baseline";

impl Ctx {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.args.bin_dir.join(name)
    }

    pub fn flush_redis(&mut self) -> anyhow::Result<()> {
        redis::cmd("FLUSHALL").query::<()>(&mut self.redis)?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("")
            .query::<()>(&mut self.redis)?;
        if self.on_cluster {
            for port in &self.cluster_nodes {
                let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()?;
                redis::cmd("FLUSHALL").query::<()>(&mut node)?;
            }
        }
        Ok(())
    }

    /// Calls per command so far: of the private server, or summed over the
    /// cluster's nodes during a cluster drain.
    pub fn commandstats(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut texts = Vec::new();
        if self.on_cluster {
            for port in &self.cluster_nodes {
                let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()?;
                texts.push(redis::cmd("INFO").arg("commandstats").query::<String>(&mut node)?);
            }
        } else {
            texts.push(redis::cmd("INFO").arg("commandstats").query(&mut self.redis)?);
        }
        let mut out = BTreeMap::new();
        for line in texts.iter().flat_map(|t| t.lines()) {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            *out.entry(name.to_owned()).or_insert(0) += calls;
        }
        Ok(out)
    }

    /// Commands issued between two commandstats snapshots (the harness's own
    /// INFO, FLUSHALL and CONFIG calls left out).
    pub fn commands_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> RedisCommands {
        let mut delta = RedisCommands::default();
        for (name, calls) in after {
            if matches!(name.as_str(), "info" | "flushall" | "config|set" | "ping") {
                continue;
            }
            let d = calls - before.get(name).copied().unwrap_or(0);
            if d > 0 {
                delta.by_command.insert(name.clone(), d);
                delta.total += d;
            }
        }
        delta
    }

    pub fn daemon_config(
        &self,
        topic: &str,
        group: &str,
        consistency: &str,
        avro_dir: Option<&Path>,
    ) -> anyhow::Result<PathBuf> {
        let (consistency, malformed) = split_malformed(consistency)?;
        let dead_letters = match (malformed, &self.dead_letters) {
            (None, _) => None,
            (Some(_), Some(table)) => Some((table.url(), table.schema.as_str())),
            (Some(_), None) => bail!("a malformed drain needs --dead-letters-url (the stack's CDC_PG_URL)"),
        };
        let (consistency, inline) = split_inline(consistency);
        let (consistency, cluster) = match consistency.strip_suffix("-cluster") {
            Some(base) => (base, true),
            None => (consistency, false),
        };
        let (consistency, wait_replicas) = split_wait(consistency)?;
        let cluster_url = self
            .cluster_nodes
            .first()
            .map(|port| format!("redis://127.0.0.1:{port}"));
        let redis_url = match (&cluster_url, cluster) {
            (Some(url), true) => url.as_str(),
            (None, true) => bail!("a cluster drain without the private cluster"),
            _ => self.redis_url.as_str(),
        };
        let text = DaemonConfig {
            brokers: &self.args.brokers,
            group_id: group,
            topic,
            redis_url,
            cluster,
            admin_listen: &self.admin,
            keys_per_row: self.args.keys_per_row,
            consistency,
            wait_replicas,
            avro_schemas_dir: avro_dir.and_then(Path::to_str),
            librdkafka: &self.args.daemon_librdkafka,
            dead_letters,
            // Routing on the consumer task alone, for the drain beside the
            // default pool of routing threads.
            route_workers: inline.then_some(1),
        }
        .render();
        let path = self.dir.join(format!("{group}.toml"));
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the daemon build `binary` ([`DAEMON`] or [`BASELINE_DAEMON`]),
    /// or `wrapper` + it, with its log in the run directory.
    pub fn spawn_daemon(
        &mut self,
        binary: &str,
        config: &Path,
        log_name: &str,
        wrapper: &[String],
    ) -> anyhow::Result<u32> {
        let log_path = self.dir.join(log_name);
        let log = fs::File::create(&log_path)?;
        self.last_log = Some(log_path);
        let daemon = self.bin(binary);
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&daemon);
                c
            }
            None => Command::new(&daemon),
        };
        cdc_bench::daemon_run_args(&mut cmd, config, log)?;
        let child = cmd.spawn().with_context(|| format!("spawn {}", daemon.display()))?;
        let pid = child.id();
        self.reaper.0.push(("daemon".into(), child));
        Ok(pid)
    }

    pub fn daemon_alive(&mut self) -> bool {
        self.reaper
            .0
            .iter_mut()
            .find(|(n, _)| n == "daemon")
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether the daemon spawned last says, in its own log, that it bound
    /// the admin address: an answer on the port is trusted only then. (It
    /// logs the address before it serves, so an answer implies the line.)
    pub fn owns_admin(&self) -> anyhow::Result<bool> {
        let bound = format!("\"address\":\"{}\"", self.admin);
        let log = match &self.last_log {
            Some(path) => fs::read_to_string(path)?,
            None => String::new(),
        };
        Ok(log
            .lines()
            .any(|l| l.contains("admin http listening") && l.contains(&bound)))
    }

    /// Waits until the daemon spawned last answers /readyz itself.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = prom::http_get(&self.admin, "/readyz") {
                if self.owns_admin()? {
                    return Ok(());
                }
                bail!(
                    "something answers on {} but the daemon's log never says it bound it (another process holds the port; choose --admin-port)",
                    self.admin
                );
            }
            if !self.daemon_alive() {
                bail!(
                    "the daemon exited before it was ready (see its log in {})",
                    self.dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the daemon was not ready within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a child to completion (bounded), returning its stdout's last JSON
    /// line as a `T`; its stderr (progress, errors) goes to ours.
    pub fn run_json<T: DeserializeOwned>(
        &mut self,
        name: &str,
        cmd: &mut Command,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                terminate(&mut child, Duration::from_secs(5));
                bail!("{name} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = reader.join().unwrap_or_default();
        if !status.success() {
            bail!("{name} failed ({status})");
        }
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("no JSON output")?;
        serde_json::from_str(line).with_context(|| format!("{name} printed unexpected JSON: {line}"))
    }
}

/// A port nothing listens on now. The daemon's own log later proves it was
/// our daemon that bound it (Ctx::wait_ready), so a process that takes the
/// port in between is detected, not trusted.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// "strong-malformed10" -> ("strong", Some(10)): the drain of the topic
/// where 10% of the records are malformed; "strong" -> ("strong", None).
/// The malformed suffix comes last ("strong-wait1-malformed10").
pub fn split_malformed(consistency: &str) -> anyhow::Result<(&str, Option<u32>)> {
    match consistency.rsplit_once("-malformed") {
        Some((base, pct)) => {
            let pct: u32 =
                pct.parse().ok().filter(|p| (1..=100).contains(p)).with_context(|| {
                    format!("--consistencies: expected e.g. strong-malformed10, got {consistency:?}")
                })?;
            Ok((base, Some(pct)))
        }
        None => Ok((consistency, None)),
    }
}

/// "strong-inline" -> ("strong", true): the drain with `plan.route_workers
/// = 1` (every record routed on the consumer task), beside the default pool.
/// It comes before the malformed suffix ("strong-inline-malformed10").
pub fn split_inline(consistency: &str) -> (&str, bool) {
    match consistency.strip_suffix("-inline") {
        Some(base) => (base, true),
        None => (consistency, false),
    }
}

/// "strong-wait1" -> ("strong", 1); "eventual" -> ("eventual", 0).
pub fn split_wait(consistency: &str) -> anyhow::Result<(&str, u32)> {
    match consistency.split_once("-wait") {
        Some((base, n)) => Ok((base, n.parse().context("--consistencies: expected e.g. strong-wait1")?)),
        None => Ok((consistency, 0)),
    }
}

pub fn start_redis(args: &Args, dir: &Path, reaper: &mut Reaper) -> anyhow::Result<String> {
    let url = start_redis_server(args.redis_port, &[], dir, reaper)?;
    let replicas = args
        .consistencies
        .iter()
        .map(|c| split_wait(split_malformed(c)?.0).map(|(_, n)| n))
        .collect::<anyhow::Result<Vec<u32>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    for i in 1..=replicas {
        let port = args.redis_port + u16::try_from(i)?;
        start_redis_server(
            port,
            &["--replicaof".into(), "127.0.0.1".into(), args.redis_port.to_string()],
            dir,
            reaper,
        )?;
        let mut primary = redis::Client::open(url.as_str())?.get_connection()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut primary)?;
            if info.contains(&format!("connected_slaves:{i}")) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the replica on port {port} did not connect to the private redis");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        say(format!("private redis replica on port {port}"));
    }
    Ok(url)
}

/// A private 3-node Redis Cluster (no replicas) on `first_port` and the two
/// ports after it; returns the ports.
pub fn start_cluster(first_port: u16, dir: &Path, reaper: &mut Reaper) -> anyhow::Result<Vec<u16>> {
    let ports: Vec<u16> = (first_port..first_port + 3).collect();
    for &port in &ports {
        start_redis_server(
            port,
            &[
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                format!("nodes-{port}.conf"),
            ],
            dir,
            reaper,
        )?;
    }
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("redis-cli (apt-get install redis-tools)")?;
    if !status.success() {
        bail!("redis-cli --cluster create {addresses:?} failed");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for &port in &ports {
        let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()?;
        loop {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut node)?;
            if info.contains("cluster_state:ok") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the private redis cluster did not reach cluster_state:ok");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    say(format!("private redis cluster on {addresses:?}"));
    Ok(ports)
}

pub fn start_redis_server(port: u16, extra: &[String], dir: &Path, reaper: &mut Reaper) -> anyhow::Result<String> {
    let url = format!("redis://127.0.0.1:{port}");
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!("port {port} is taken: the bench starts its own Redis there (choose --redis-port)");
    }
    let redis_dir = dir.join(format!("redis-{port}"));
    fs::create_dir_all(&redis_dir)?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&redis_dir)
        .args(["--logfile", "redis.log"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    reaper.0.push((format!("redis:{port}"), child));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                say(format!("private redis-server on {url}"));
                return Ok(url);
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_malformed_suffix_comes_off_first() {
        assert_eq!(split_malformed("strong").unwrap(), ("strong", None));
        assert_eq!(split_malformed("strong-malformed10").unwrap(), ("strong", Some(10)));
        assert_eq!(
            split_malformed("strong-wait1-malformed5").unwrap(),
            ("strong-wait1", Some(5))
        );
        for bad in [
            "strong-malformed",
            "strong-malformed0",
            "strong-malformed101",
            "strong-malformedx",
        ] {
            assert!(split_malformed(bad).is_err(), "{bad}");
        }
    }
}
