//! The orchestrator behind `bench/run`: one run, every measurement, side by
//! side on the same machine, the same topic and the same private Redis.
//!
//! 1. A private redis-server (`--redis-port`, no persistence) for the run.
//! 2. `load`: one topic of N Debezium events (the throughput topic).
//! 3. Per repetition: the decode microbenchmark (criterion), `raw-consume`,
//!    the daemon until drained, the naive Node peer until drained, and
//!    `redis-benchmark` with the bump script's EVALSHA.
//! 4. Per rate and repetition: a fresh topic, the daemon, and `probe`.
//! 5. Optionally a callgrind profile of the daemon on a short drain.
//!
//! Writes `<out>/<run id>.json` and prints a table of medians. Progress on stderr.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cdc_bench::daemon_config::DaemonConfig;
use cdc_bench::{gen, prom, stats};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
// Later occurrences win, so `bench/run --quick -- --events N` works.
#[command(args_override_self = true)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Records in the throughput topic (tombstones included).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    #[arg(long, default_value_t = 50_000)]
    rows: usize,
    #[arg(long, default_value_t = 3)]
    keys_per_row: usize,
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Steady rates of the latency probe, events/s.
    #[arg(long, value_delimiter = ',', default_value = "5000,20000")]
    rates: Vec<u64>,
    #[arg(long, default_value_t = 20)]
    probe_duration_s: u64,
    /// Entity consistency of the drain runs: "strong" is the headline (and
    /// the latency test's), "eventual" the daemon's default; "strong-wait1"
    /// is strong with `redis.wait_replicas = 1` against a replica of the
    /// private Redis (started on --redis-port + 1 when asked for);
    /// "strong-cluster" is strong against a private 3-node Redis Cluster on
    /// loopback (ports --redis-port + 10, 11, 12).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "strong,strong-wait1,strong-cluster,eventual"
    )]
    consistencies: Vec<String>,
    /// Bumps per redis-benchmark point (calls = this / bumps per call).
    #[arg(long, default_value_t = 500_000)]
    redis_benchmark_requests: u64,
    /// Bumps in flight per redis-benchmark connection (pipeline depth =
    /// this / bumps per call), about what one daemon batch sends at once.
    #[arg(long, default_value_t = 1000)]
    redis_benchmark_pipeline: u64,
    /// Bumps per script call to measure with redis-benchmark: the curve in
    /// BENCHMARKS.md; the daemon's own (sink::BUMPS_PER_CALL) is always added.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32,64,128")]
    script_chunks: Vec<usize>,
    #[arg(long, default_value_t = 6390)]
    redis_port: u16,
    /// The daemon's admin port; 0 (the default): a free one, picked at start.
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// Directory of the release binaries (cdc-invalidator, load, raw-consume, probe).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The compiled criterion benchmark (benches/decode.rs); skipped when absent.
    #[arg(long)]
    decode_bench: Option<PathBuf>,
    #[arg(long, default_value = "bench/peers/naive-node")]
    node_dir: PathBuf,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    #[arg(long)]
    skip_node: bool,
    #[arg(long)]
    skip_probe: bool,
    /// Extra librdkafka settings for the daemon under test, NAME=VALUE
    /// (repeatable), written to its `[source.librdkafka]`: a what-if run.
    #[arg(long = "daemon-librdkafka", value_parser = parse_setting)]
    daemon_librdkafka: Vec<(String, String)>,
    /// Skip the Avro topic (the same events through Debezium's AvroConverter shape).
    #[arg(long)]
    skip_avro: bool,
    /// Also profile the daemon under callgrind on a drain of this many records (0: no profile).
    #[arg(long, default_value_t = 0)]
    profile_events: u64,
    /// Keep the bench topics instead of deleting them at the end.
    #[arg(long)]
    keep_topics: bool,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[bench {}] {}", clock(), msg.as_ref());
}

fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

/// Kills the children it holds when dropped (errors and ^C leave nothing behind).
struct Reaper(Vec<(String, Child)>);

impl Reaper {
    fn stop(&mut self, name: &str) {
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
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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

struct Ctx {
    args: Args,
    run_id: String,
    dir: PathBuf,
    redis: redis::Connection,
    redis_url: String,
    admin: String,
    /// The log of the daemon spawned last.
    last_log: Option<PathBuf>,
    /// The private Redis Cluster's nodes, when a drain asks for one.
    cluster_nodes: Vec<u16>,
    /// Set for the length of a cluster drain: flushes and command counts
    /// then cover every cluster node instead of the private server.
    on_cluster: bool,
    reaper: Reaper,
    topics: Vec<String>,
    /// The tree the run started from (the daemon copy was built from it).
    git_at_start: Value,
}

impl Ctx {
    fn bin(&self, name: &str) -> PathBuf {
        self.args.bin_dir.join(name)
    }

    fn flush_redis(&mut self) -> anyhow::Result<()> {
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
    fn commandstats(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
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
    fn commands_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Value {
        let mut by_command = serde_json::Map::new();
        let mut total = 0u64;
        for (name, calls) in after {
            if matches!(name.as_str(), "info" | "flushall" | "config|set" | "ping") {
                continue;
            }
            let d = calls - before.get(name).copied().unwrap_or(0);
            if d > 0 {
                by_command.insert(name.clone(), json!(d));
                total += d;
            }
        }
        json!({"total": total, "by_command": by_command})
    }

    fn daemon_config(
        &self,
        topic: &str,
        group: &str,
        consistency: &str,
        avro_dir: Option<&Path>,
    ) -> anyhow::Result<PathBuf> {
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
        }
        .render();
        let path = self.dir.join(format!("{group}.toml"));
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts the daemon (or `wrapper` + daemon) with its log in the run directory.
    fn spawn_daemon(&mut self, config: &Path, log_name: &str, wrapper: &[String]) -> anyhow::Result<u32> {
        let log_path = self.dir.join(log_name);
        let log = fs::File::create(&log_path)?;
        self.last_log = Some(log_path);
        let daemon = self.bin("cdc-invalidator");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&daemon);
                c
            }
            None => Command::new(&daemon),
        };
        cmd.args([
            "--log-format",
            "json",
            "--log",
            "warn,cdc_invalidator=info",
            "run",
            "--config",
        ])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        // The generated config is the whole truth: no overrides from the shell.
        for (name, _) in std::env::vars() {
            if name.starts_with("CDC_") {
                cmd.env_remove(&name);
            }
        }
        let child = cmd.spawn().with_context(|| format!("spawn {}", daemon.display()))?;
        let pid = child.id();
        self.reaper.0.push(("daemon".into(), child));
        Ok(pid)
    }

    fn daemon_alive(&mut self) -> bool {
        self.reaper
            .0
            .iter_mut()
            .find(|(n, _)| n == "daemon")
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether the daemon spawned last says, in its own log, that it bound
    /// the admin address: an answer on the port is trusted only then. (It
    /// logs the address before it serves, so an answer implies the line.)
    fn owns_admin(&self) -> anyhow::Result<bool> {
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
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
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

    /// Runs a child to completion (bounded), returning its stdout parsed as
    /// JSON; its stderr (progress, errors) goes to ours.
    fn run_json(&mut self, name: &str, cmd: &mut Command, timeout: Duration) -> anyhow::Result<Value> {
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
        Ok(serde_json::from_str(line)?)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("{started}");
    let dir = args.out.join(&run_id);
    fs::create_dir_all(&dir)?;
    let load_before = stats::load_average();
    say(format!(
        "run {run_id}: load average before {load_before:?}; files in {}",
        dir.display()
    ));

    // Run from copies: a `cargo build` elsewhere in the tree during the run
    // must not swap the daemon under test between repetitions.
    let bin_dir = dir.join("bin");
    fs::create_dir_all(&bin_dir)?;
    for name in ["cdc-invalidator", "load", "raw-consume", "probe"] {
        fs::copy(args.bin_dir.join(name), bin_dir.join(name))
            .with_context(|| format!("{}/{name} (build it first: bench/run does)", args.bin_dir.display()))?;
    }
    let mut args = args;
    if let Some(exe) = &args.decode_bench {
        let copy = bin_dir.join("decode-bench");
        fs::copy(exe, &copy).with_context(|| format!("{}", exe.display()))?;
        args.decode_bench = Some(copy);
    }
    args.bin_dir = bin_dir;

    let mut reaper = Reaper(Vec::new());
    let redis_url = start_redis(&args, &dir, &mut reaper)?;
    let cluster_nodes = if args.consistencies.iter().any(|c| c.ends_with("-cluster")) {
        start_cluster(args.redis_port + 10, &dir, &mut reaper)?
    } else {
        Vec::new()
    };
    let redis = redis::Client::open(redis_url.as_str())?.get_connection()?;
    let admin_port = match args.admin_port {
        0 => free_port()?,
        port => port,
    };
    let mut ctx = Ctx {
        admin: format!("127.0.0.1:{admin_port}"),
        last_log: None,
        cluster_nodes,
        on_cluster: false,
        args: args.clone(),
        run_id: run_id.clone(),
        dir: dir.clone(),
        redis,
        redis_url,
        reaper,
        topics: Vec::new(),
        git_at_start: git(),
    };
    if prom::http_get(&ctx.admin, "/healthz").is_ok() {
        bail!(
            "something already listens on {} (another daemon?); choose --admin-port",
            ctx.admin
        );
    }

    let result = run(&mut ctx);
    if !args.keep_topics {
        for topic in std::mem::take(&mut ctx.topics) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if let Err(e) = rt.block_on(cdc_bench::kafka::delete_topic(&args.brokers, &topic)) {
                say(format!("could not delete topic {topic}: {e}"));
            }
        }
    }
    let mut results = result?;
    let load_after = stats::load_average();
    results["load_average_before"] = json!(load_before);
    results["load_average_after"] = json!(load_after);
    let path = args.out.join(format!("{run_id}.json"));
    fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    print_table(&results);
    say(format!("load average after {load_after:?}"));
    say(format!("results: {}", path.display()));
    Ok(())
}

/// A port nothing listens on now. The daemon's own log later proves it was
/// our daemon that bound it (Ctx::wait_ready), so a process that takes the
/// port in between is detected, not trusted.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// "strong-wait1" -> ("strong", 1); "eventual" -> ("eventual", 0).
fn split_wait(consistency: &str) -> anyhow::Result<(&str, u32)> {
    match consistency.split_once("-wait") {
        Some((base, n)) => Ok((base, n.parse().context("--consistencies: expected e.g. strong-wait1")?)),
        None => Ok((consistency, 0)),
    }
}

fn start_redis(args: &Args, dir: &Path, reaper: &mut Reaper) -> anyhow::Result<String> {
    let url = start_redis_server(args.redis_port, &[], dir, reaper)?;
    let replicas = args
        .consistencies
        .iter()
        .map(|c| split_wait(c).map(|(_, n)| n))
        .collect::<anyhow::Result<Vec<u32>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    for i in 1..=replicas {
        let port = args.redis_port + i as u16;
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
fn start_cluster(first_port: u16, dir: &Path, reaper: &mut Reaper) -> anyhow::Result<Vec<u16>> {
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

fn start_redis_server(port: u16, extra: &[String], dir: &Path, reaper: &mut Reaper) -> anyhow::Result<String> {
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

fn run(ctx: &mut Ctx) -> anyhow::Result<Value> {
    let args = ctx.args.clone();
    let machine = machine();
    say(format!("machine: {}", machine));

    // ------------------------------------------------------------ load
    let prefix = format!("bench_{}", ctx.run_id);
    let topic = gen::topic_name(&prefix);
    say(format!(
        "loading {} events ({} rows, {} keys per row, zipf {}) into {topic}",
        args.events, args.rows, args.keys_per_row, args.zipf
    ));
    ctx.topics.push(topic.clone());
    let load = ctx.run_json(
        "load",
        Command::new(ctx.bin("load"))
            .args(["--brokers", &args.brokers, "--topic-prefix", &prefix])
            .args(["--events", &args.events.to_string(), "--rows", &args.rows.to_string()])
            .args([
                "--zipf",
                &args.zipf.to_string(),
                "--partitions",
                &args.partitions.to_string(),
            ])
            .args(["--keys-per-row", &args.keys_per_row.to_string()]),
        Duration::from_secs(1800),
    )?;
    say(format!(
        "loaded: {:.0} records/s, {:.0} bytes per record",
        load["produced_per_second"].as_f64().unwrap_or(0.0),
        load["mean_record_bytes"].as_f64().unwrap_or(0.0)
    ));
    let ends: Vec<i64> = serde_json::from_value(load["end_offsets"].clone())?;

    // The same events (same seed) in Avro, as Debezium's AvroConverter writes them.
    let avro = if args.skip_avro {
        None
    } else {
        let prefix = format!("bench_{}_avro", ctx.run_id);
        let topic = gen::topic_name(&prefix);
        let schemas = ctx.dir.join("avsc");
        say(format!("loading the same {} events in Avro into {topic}", args.events));
        ctx.topics.push(topic.clone());
        let load = ctx.run_json(
            "load-avro",
            Command::new(ctx.bin("load"))
                .args(["--brokers", &args.brokers, "--topic-prefix", &prefix])
                .args(["--events", &args.events.to_string(), "--rows", &args.rows.to_string()])
                .args([
                    "--zipf",
                    &args.zipf.to_string(),
                    "--partitions",
                    &args.partitions.to_string(),
                ])
                .args(["--keys-per-row", &args.keys_per_row.to_string()])
                .arg("--avro-schemas-dir")
                .arg(&schemas),
            Duration::from_secs(1800),
        )?;
        say(format!(
            "loaded: {:.0} records/s, {:.0} bytes per record",
            load["produced_per_second"].as_f64().unwrap_or(0.0),
            load["mean_record_bytes"].as_f64().unwrap_or(0.0)
        ));
        let ends: Vec<i64> = serde_json::from_value(load["end_offsets"].clone())?;
        Some((topic, ends, schemas, load))
    };

    // ------------------------------------------------------------ repetitions
    let mut reps = Vec::new();
    for rep in 1..=args.reps {
        let mut r = serde_json::Map::new();
        r.insert("rep".into(), json!(rep));
        if let Some(exe) = &args.decode_bench {
            say(format!("rep {rep}/{}: decode microbenchmark (criterion)", args.reps));
            r.insert("decode".into(), decode_bench(ctx, exe, rep)?);
        }
        say(format!("rep {rep}/{}: raw-consume", args.reps));
        let raw = ctx.run_json(
            &format!("raw-consume-{rep}"),
            Command::new(ctx.bin("raw-consume")).args(["--brokers", &args.brokers, "--topic", &topic]),
            Duration::from_secs(900),
        )?;
        say(format!(
            "  raw-consume: {:.0} events/s",
            raw["events_per_second"].as_f64().unwrap_or(0.0)
        ));
        r.insert("raw_consume".into(), raw);

        // strong (flushed at once) is what the latency test runs; eventual
        // (100 ms linger) is the daemon's default for an entity.
        for consistency in &args.consistencies {
            say(format!("rep {rep}/{}: daemon ({consistency}) until drained", args.reps));
            let group = format!("cdc-bench-{}-d{rep}-{consistency}", ctx.run_id);
            let daemon = daemon_drain(
                ctx,
                &Drain {
                    topic: &topic,
                    ends: &ends,
                    group: &group,
                    consistency,
                    avro_dir: None,
                    wrapper: &[],
                    timeout: Duration::from_secs(900),
                },
            )?;
            say(format!(
                "  daemon ({consistency}): {:.0} events/s, {:.0} targets/s, {:.0} targets per Redis batch",
                daemon["events_per_second"].as_f64().unwrap_or(0.0),
                daemon["targets_per_second"].as_f64().unwrap_or(0.0),
                daemon["mean_targets_per_batch"].as_f64().unwrap_or(0.0)
            ));
            let key = if consistency == "strong" {
                "daemon".to_owned()
            } else {
                format!("daemon_{}", consistency.replace('-', "_"))
            };
            r.insert(key, daemon);
        }

        if let Some((avro_topic, avro_ends, schemas, _)) = &avro {
            say(format!("rep {rep}/{}: raw-consume, Avro topic", args.reps));
            let raw = ctx.run_json(
                &format!("raw-consume-avro-{rep}"),
                Command::new(ctx.bin("raw-consume")).args(["--brokers", &args.brokers, "--topic", avro_topic]),
                Duration::from_secs(900),
            )?;
            say(format!(
                "  raw-consume (Avro): {:.0} events/s",
                raw["events_per_second"].as_f64().unwrap_or(0.0)
            ));
            r.insert("raw_consume_avro".into(), raw);
            say(format!(
                "rep {rep}/{}: daemon (strong) on the Avro topic until drained",
                args.reps
            ));
            let group = format!("cdc-bench-{}-d{rep}-avro", ctx.run_id);
            let daemon = daemon_drain(
                ctx,
                &Drain {
                    topic: avro_topic,
                    ends: avro_ends,
                    group: &group,
                    consistency: "strong",
                    avro_dir: Some(schemas.as_path()),
                    wrapper: &[],
                    timeout: Duration::from_secs(900),
                },
            )?;
            say(format!(
                "  daemon (Avro, strong): {:.0} events/s, {:.0} targets/s",
                daemon["events_per_second"].as_f64().unwrap_or(0.0),
                daemon["targets_per_second"].as_f64().unwrap_or(0.0)
            ));
            r.insert("daemon_avro".into(), daemon);
        }

        if !args.skip_node {
            say(format!("rep {rep}/{}: naive Node peer until drained", args.reps));
            let node = node_drain(ctx, &topic, rep)?;
            say(format!(
                "  naive peer: {:.0} events/s",
                node["events_per_second"].as_f64().unwrap_or(0.0)
            ));
            r.insert("node".into(), node);
        }

        let daemon_chunk = cdc_invalidator::sink::BUMPS_PER_CALL;
        let mut chunks = args.script_chunks.clone();
        chunks.push(daemon_chunk);
        chunks.sort_unstable();
        chunks.dedup();
        let mut curve = serde_json::Map::new();
        for chunk in chunks {
            say(format!(
                "rep {rep}/{}: redis-benchmark, the bump script at {chunk} bumps per call",
                args.reps
            ));
            let rb = redis_benchmark(ctx, chunk)?;
            say(format!(
                "  redis-benchmark: {:.0} calls/s, {:.0} bumps/s",
                rb["requests_per_second"].as_f64().unwrap_or(0.0),
                rb["bumps_per_second"].as_f64().unwrap_or(0.0)
            ));
            if chunk == daemon_chunk {
                r.insert("redis_benchmark".into(), rb.clone());
            }
            curve.insert(chunk.to_string(), rb);
        }
        r.insert("script_curve".into(), Value::Object(curve));
        reps.push(Value::Object(r));
    }

    // ------------------------------------------------------------ latency
    let mut probes = Vec::new();
    if !args.skip_probe {
        for rep in 1..=args.reps {
            for &rate in &args.rates {
                say(format!(
                    "latency rep {rep}/{}: {rate} events/s for {} s",
                    args.reps, args.probe_duration_s
                ));
                let p = probe(ctx, rate, rep)?;
                say(format!(
                    "  append->ack p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; missing {}",
                    p["append_to_ack_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
                    p["append_to_ack_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
                    p["append_to_ack_ms"]["p999"].as_f64().unwrap_or(f64::NAN),
                    p["missing"]
                ));
                probes.push(p);
            }
        }
    }

    // ------------------------------------------------------------ profile
    let profile = if args.profile_events > 0 {
        Some(profile(ctx)?)
    } else {
        None
    };

    let medians = medians(&reps, &probes, &args.rates);
    let ratios = ratios(&medians);
    Ok(json!({
        "run_id": ctx.run_id,
        "git": ctx.git_at_start,
        "daemon_binary_sha256": Command::new("sha256sum")
            .arg(ctx.bin("cdc-invalidator"))
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().map(str::to_owned)),
        "machine": machine,
        "params": {
            "events": args.events, "rows": args.rows, "keys_per_row": args.keys_per_row,
            "zipf": args.zipf, "partitions": args.partitions, "reps": args.reps,
            "rates": args.rates, "probe_duration_s": args.probe_duration_s,
            "redis_benchmark_requests": args.redis_benchmark_requests,
            "redis_benchmark_pipeline": args.redis_benchmark_pipeline,
            "consistencies": args.consistencies,
            "daemon_librdkafka": args.daemon_librdkafka.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(), "latency_consistency": "strong",
        },
        "load": load,
        "load_avro": avro.as_ref().map(|a| a.3.clone()),
        "reps": reps,
        "probes": probes,
        "medians": medians,
        "ratios": ratios,
        "profile": profile,
    }))
}

/// Runs the daemon on `topic` with a fresh group until every partition's
/// stored offset (set only after Redis acknowledged) reaches its end offset.
/// One drain of a topic by the daemon.
struct Drain<'a> {
    topic: &'a str,
    /// End offset per partition: drained when every stored offset reaches it.
    ends: &'a [i64],
    /// A fresh consumer group (and the name of the config and log files).
    group: &'a str,
    consistency: &'a str,
    avro_dir: Option<&'a Path>,
    /// A command the daemon runs under (valgrind for the profile), or none.
    wrapper: &'a [String],
    timeout: Duration,
}

fn daemon_drain(ctx: &mut Ctx, drain: &Drain<'_>) -> anyhow::Result<Value> {
    ctx.on_cluster = drain.consistency.ends_with("-cluster");
    let result = drain_once(ctx, drain);
    ctx.on_cluster = false;
    result
}

fn drain_once(ctx: &mut Ctx, drain: &Drain<'_>) -> anyhow::Result<Value> {
    let Drain {
        topic,
        ends,
        group,
        consistency,
        avro_dir,
        wrapper,
        timeout,
    } = *drain;
    ctx.flush_redis()?;
    let config = ctx.daemon_config(topic, group, consistency, avro_dir)?;
    let before = ctx.commandstats()?;
    let pid = ctx.spawn_daemon(&config, &format!("{group}.log"), wrapper)?;
    let spawned = Instant::now();
    let deadline = spawned + timeout;
    // First record: the midpoint between the last scrape that saw none and the first that saw some.
    let mut last_empty = spawned;
    let first = loop {
        if Instant::now() > deadline || !ctx.daemon_alive() {
            bail!("the daemon consumed nothing (log: {}/{group}.log)", ctx.dir.display());
        }
        let t0 = Instant::now();
        if let Ok(samples) = prom::scrape(&ctx.admin) {
            if !ctx.owns_admin()? {
                bail!(
                    "something answers on {} but the daemon's log never says it bound it (another process holds the port; choose --admin-port)",
                    ctx.admin
                );
            }
            if prom::sum(&samples, "cdc_invalidator_events_total") > 0.0 {
                break last_empty + (t0 - last_empty) / 2;
            }
        }
        last_empty = t0;
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut last_progress = Instant::now();
    let (drained, samples) = loop {
        if Instant::now() > deadline {
            bail!("the daemon did not drain within {timeout:?}");
        }
        if !ctx.daemon_alive() {
            bail!(
                "the daemon exited before draining (log: {}/{group}.log)",
                ctx.dir.display()
            );
        }
        let t0 = Instant::now();
        if let Ok(samples) = prom::scrape(&ctx.admin) {
            let mut stored = vec![0i64; ends.len()];
            for s in samples.iter().filter(|s| {
                s.name == "cdc_invalidator_stored_offset" && s.labels.get("topic").map(String::as_str) == Some(topic)
            }) {
                if let Some(p) = s.labels.get("partition").and_then(|p| p.parse::<usize>().ok()) {
                    if p < stored.len() {
                        stored[p] = s.value as i64;
                    }
                }
            }
            if stored.iter().zip(ends).all(|(s, e)| s >= e) {
                break (t0, samples);
            }
            if last_progress.elapsed() > Duration::from_secs(5) {
                let done: i64 = stored.iter().sum();
                say(format!(
                    "  ... {done}/{} records acknowledged",
                    ends.iter().sum::<i64>()
                ));
                last_progress = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu = stats::cpu_seconds(pid)?;
    let rss = stats::peak_rss_mib(pid)?;
    let final_samples = prom::scrape(&ctx.admin).unwrap_or(samples);
    ctx.reaper.stop("daemon");
    let after = ctx.commandstats()?;
    let seconds = (drained - first).as_secs_f64();
    let records: i64 = ends.iter().sum();
    let by = |name: &str| prom::sum(&final_samples, name);
    let events_by_outcome: BTreeMap<String, f64> = final_samples
        .iter()
        .filter(|s| s.name == "cdc_invalidator_events_total")
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.labels.get("outcome").cloned().unwrap_or_default())
                .or_default() += s.value;
            m
        });
    let bumped = by("cdc_invalidator_targets_bumped_total");
    let noops = by("cdc_invalidator_guard_noops_total");
    let commands = Ctx::commands_delta(&before, &after);
    // Where the wall time went: the pipeline awaits each Redis apply before
    // it consumes again, so this share of the drain is spent waiting.
    let apply_s = by("cdc_invalidator_redis_apply_seconds_sum");
    let applies = by("cdc_invalidator_redis_apply_seconds_count");
    Ok(json!({
        "events": records,
        "seconds": seconds,
        "events_per_second": records as f64 / seconds,
        "targets_applied": bumped,
        "targets_guard_noop": noops,
        "targets_coalesced": by("cdc_invalidator_targets_coalesced_total"),
        "targets_per_second": (bumped + noops) / seconds,
        "events_by_outcome": events_by_outcome,
        "escalations": by("cdc_invalidator_escalations_total"),
        "moot": by("cdc_invalidator_moot_events_total"),
        "redis_commands": commands,
        "evalsha_per_event": commands["by_command"]["evalsha"].as_f64().unwrap_or(0.0) / records as f64,
        "redis_commands_per_event": commands["total"].as_f64().unwrap_or(0.0) / records as f64,
        "targets_per_event": (bumped + noops + by("cdc_invalidator_targets_coalesced_total")) / records as f64,
        "cpu_seconds": cpu,
        "cpu_seconds_per_million": cpu / records as f64 * 1e6,
        "cpu_utilisation": cpu / seconds,
        "peak_rss_mib": rss,
        "redis_apply_seconds": apply_s,
        "redis_apply_share_of_drain": apply_s / seconds,
        "batches": applies,
        "mean_targets_per_batch": by("cdc_invalidator_batch_targets_sum") / applies.max(1.0),
        "startup_to_first_record_s": (first - spawned).as_secs_f64(),
    }))
}

fn node_drain(ctx: &mut Ctx, topic: &str, rep: usize) -> anyhow::Result<Value> {
    ctx.flush_redis()?;
    let before = ctx.commandstats()?;
    let group = format!("cdc-bench-{}-n{rep}", ctx.run_id);
    let node_dir = ctx.args.node_dir.clone();
    let mut out = ctx.run_json(
        &format!("naive-node-{rep}"),
        Command::new("node")
            .arg(node_dir.join("index.js"))
            .args(["--topic", topic, "--brokers", &ctx.args.brokers, "--group", &group])
            .args(["--redis-port", &ctx.args.redis_port.to_string()]),
        Duration::from_secs(1800),
    )?;
    let after = ctx.commandstats()?;
    out["redis_commands"] = Ctx::commands_delta(&before, &after);
    Ok(out)
}

/// redis-benchmark of the daemon's own bump script at `chunk` bumps per
/// call: the Redis ceiling for that chunk size, in calls and in bumps per
/// second.
fn redis_benchmark(ctx: &mut Ctx, chunk: usize) -> anyhow::Result<Value> {
    ctx.flush_redis()?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(cdc_invalidator::sink::BUMP_SCRIPT)
        .query(&mut ctx.redis)?;
    // The daemon's argument shapes: ver:<key>, p:pg:<server>, a 40-digit
    // position ([last commit, lsn], 20 digits each), version_ttl in ms.
    // Every __rand_int__ is drawn on its own from a space far larger than the
    // request count: nearly every bump takes the applied path, as almost all
    // of the daemon's do.
    let position = format!("{:020}{:020}", 33_554_248u64, 33_554_432u64);
    let chunk = chunk.max(1);
    let mut command = vec!["EVALSHA".to_owned(), sha, chunk.to_string()];
    command.extend((0..chunk).map(|_| "ver:item:__rand_int__".to_owned()));
    command.push("21600000".to_owned());
    for _ in 0..chunk {
        command.push("p:pg:bench".to_owned());
        command.push(position.clone());
    }
    let args = ctx.args.clone();
    let calls = (args.redis_benchmark_requests / chunk as u64).max(1000);
    let pipeline = (args.redis_benchmark_pipeline / chunk as u64).max(1);
    let before = ctx.commandstats()?;
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &args.redis_port.to_string()])
        .args(["-n", &calls.to_string(), "-c", "1"])
        .args(["-P", &pipeline.to_string(), "-r", "100000000", "--csv"])
        .args(&command)
        .stdin(Stdio::null())
        .output()
        .context("redis-benchmark (apt-get install redis-tools)")?;
    if !out.status.success() {
        bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let after = ctx.commandstats()?;
    // CSV: a header line, then "<test>","<rps>",...
    let rps = text
        .lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| {
            l.split("\",\"")
                .nth(1)
                .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        })
        .with_context(|| format!("cannot read redis-benchmark output: {text}"))?;
    let dbsize: u64 = redis::cmd("DBSIZE").query(&mut ctx.redis)?;
    Ok(json!({
        "bumps_per_call": chunk,
        "requests": calls,
        "clients": 1,
        "pipeline": pipeline,
        "requests_per_second": rps,
        "bumps_per_second": rps * chunk as f64,
        "keys_created": dbsize,
        "redis_commands": Ctx::commands_delta(&before, &after),
    }))
}

fn decode_bench(ctx: &mut Ctx, exe: &Path, rep: usize) -> anyhow::Result<Value> {
    let home = ctx.dir.join(format!("criterion-{rep}"));
    let status = Command::new(exe)
        .args(["--bench", "--warm-up-time", "1", "--measurement-time", "4"])
        .env("CRITERION_HOME", &home)
        .stdin(Stdio::null())
        .stdout(fs::File::create(ctx.dir.join(format!("criterion-{rep}.log")))?)
        .stderr(Stdio::null())
        .status()
        .context("criterion benchmark")?;
    if !status.success() {
        bail!("the decode benchmark failed ({status})");
    }
    // One estimates.json per benchmark: <group>/<function>/<input>/new/estimates.json.
    let mut out = serde_json::Map::new();
    for entry in walk(&home) {
        if entry.ends_with("new/estimates.json") {
            let rel = entry
                .strip_prefix(&home)?
                .to_string_lossy()
                .replace("/new/estimates.json", "");
            let est: Value = serde_json::from_str(&fs::read_to_string(&entry)?)?;
            let ns = est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
            out.insert(rel, json!({"median_ns": ns, "per_second": 1e9 / ns}));
        }
    }
    Ok(Value::Object(out))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn probe(ctx: &mut Ctx, rate: u64, rep: usize) -> anyhow::Result<Value> {
    let prefix = format!("bench_{}_p{rate}_{rep}", ctx.run_id);
    let topic = gen::topic_name(&prefix);
    ctx.topics.push(topic.clone());
    // `load` with no events only creates the topic (with LogAppendTime).
    ctx.run_json(
        &format!("probe-topic-{rate}-{rep}"),
        Command::new(ctx.bin("load"))
            .args([
                "--brokers",
                &ctx.args.brokers,
                "--topic-prefix",
                &prefix,
                "--events",
                "0",
            ])
            .args(["--partitions", &ctx.args.partitions.to_string(), "--rows", "1000"]),
        Duration::from_secs(120),
    )?;
    ctx.flush_redis()?;
    let group = format!("cdc-bench-{}-p{rate}-{rep}", ctx.run_id);
    let config = ctx.daemon_config(&topic, &group, "strong", None)?;
    let pid = ctx.spawn_daemon(&config, &format!("{group}.log"), &[])?;
    ctx.wait_ready(Duration::from_secs(60))?;
    let cpu_before = stats::cpu_seconds(pid)?;
    let t0 = Instant::now();
    let admin = ctx.admin.clone();
    let args = ctx.args.clone();
    let result = ctx.run_json(
        &format!("probe-{rate}-{rep}"),
        Command::new(ctx.bin("probe"))
            .args(["--brokers", &args.brokers, "--topic-prefix", &prefix])
            .args([
                "--rate",
                &rate.to_string(),
                "--duration-s",
                &args.probe_duration_s.to_string(),
            ])
            .args(["--redis-url", &ctx.redis_url.clone(), "--metrics", &admin]),
        Duration::from_secs(args.probe_duration_s + 300),
    );
    let cpu = stats::cpu_seconds(pid)? - cpu_before;
    let wall = t0.elapsed().as_secs_f64();
    let rss = stats::peak_rss_mib(pid)?;
    ctx.reaper.stop("daemon");
    let mut out = result?;
    out["rep"] = json!(rep);
    out["daemon_cpu_utilisation"] = json!(cpu / wall);
    out["daemon_peak_rss_mib"] = json!(rss);
    Ok(out)
}

fn profile(ctx: &mut Ctx) -> anyhow::Result<Value> {
    let n = ctx.args.profile_events;
    let prefix = format!("bench_{}_profile", ctx.run_id);
    let topic = gen::topic_name(&prefix);
    ctx.topics.push(topic.clone());
    say(format!(
        "profile: loading {n} events, then the daemon under callgrind until drained"
    ));
    let load = ctx.run_json(
        "profile-load",
        Command::new(ctx.bin("load"))
            .args(["--brokers", &ctx.args.brokers, "--topic-prefix", &prefix])
            .args(["--events", &n.to_string(), "--rows", &ctx.args.rows.to_string()])
            .args([
                "--zipf",
                &ctx.args.zipf.to_string(),
                "--partitions",
                &ctx.args.partitions.to_string(),
            ]),
        Duration::from_secs(600),
    )?;
    let ends: Vec<i64> = serde_json::from_value(load["end_offsets"].clone())?;
    let out_file = ctx.dir.join("callgrind.out");
    let wrapper = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out_file.display()),
    ];
    let group = format!("cdc-bench-{}-profile", ctx.run_id);
    let drained = daemon_drain(
        ctx,
        &Drain {
            topic: &topic,
            ends: &ends,
            group: &group,
            consistency: "strong",
            avro_dir: None,
            wrapper: &wrapper,
            timeout: Duration::from_secs(1800),
        },
    )?;
    // callgrind writes its file when the daemon exits (daemon_drain stopped it).
    std::thread::sleep(Duration::from_secs(1));
    let mut reports = serde_json::Map::new();
    for (name, inclusive) in [("exclusive", "no"), ("inclusive", "yes")] {
        let out = Command::new("callgrind_annotate")
            .arg(format!("--inclusive={inclusive}"))
            .arg("--threshold=99")
            .arg(&out_file)
            .output()
            .context("callgrind_annotate")?;
        let path = ctx.dir.join(format!("callgrind-{name}.txt"));
        fs::write(&path, &out.stdout)?;
        reports.insert(name.into(), json!(path));
    }
    Ok(json!({"events": n, "drain_under_callgrind": drained, "callgrind_out": out_file, "reports": reports}))
}

fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let mem_kib: Option<f64> = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    });
    let cmd = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "cpu_model": field("model name"),
        "cpu_mhz": field("cpu MHz"),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "mem_total_mib": mem_kib.map(|k| (k / 1024.0).round()),
        "kernel": cmd("uname", &["-r"]),
        "redis_server": cmd("redis-server", &["--version"]),
        "node": cmd("node", &["--version"]),
        "rustc": cmd("rustc", &["--version"]),
    })
}

fn git() -> Value {
    let run = |a: &[&str]| {
        Command::new("git")
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "commit": run(&["rev-parse", "HEAD"]),
        "dirty_paths": run(&["status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
            .map(|s| s.lines().count()),
    })
}

fn get(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

fn med(items: &[Value], path: &[&str]) -> Value {
    let values: Vec<f64> = items.iter().filter_map(|v| get(v, path)).collect();
    json!(stats::median(&values))
}

fn medians(reps: &[Value], probes: &[Value], rates: &[u64]) -> Value {
    let mut m = json!({
        "raw_consume_events_per_second": med(reps, &["raw_consume", "events_per_second"]),
        "raw_consume_cpu_seconds_per_million": med(reps, &["raw_consume", "cpu_seconds_per_million"]),
        "daemon_events_per_second": med(reps, &["daemon", "events_per_second"]),
        "daemon_targets_per_second": med(reps, &["daemon", "targets_per_second"]),
        "daemon_redis_commands": med(reps, &["daemon", "redis_commands", "total"]),
        "daemon_evalsha": med(reps, &["daemon", "redis_commands", "by_command", "evalsha"]),
        "daemon_cpu_seconds_per_million": med(reps, &["daemon", "cpu_seconds_per_million"]),
        "daemon_cpu_utilisation": med(reps, &["daemon", "cpu_utilisation"]),
        "daemon_redis_apply_share_of_drain": med(reps, &["daemon", "redis_apply_share_of_drain"]),
        "daemon_mean_targets_per_batch": med(reps, &["daemon", "mean_targets_per_batch"]),
        "daemon_peak_rss_mib": med(reps, &["daemon", "peak_rss_mib"]),
        "daemon_eventual_events_per_second": med(reps, &["daemon_eventual", "events_per_second"]),
        "daemon_eventual_targets_per_second": med(reps, &["daemon_eventual", "targets_per_second"]),
        "daemon_eventual_redis_commands": med(reps, &["daemon_eventual", "redis_commands", "total"]),
        "daemon_eventual_cpu_seconds_per_million": med(reps, &["daemon_eventual", "cpu_seconds_per_million"]),
        "daemon_eventual_cpu_utilisation": med(reps, &["daemon_eventual", "cpu_utilisation"]),
        "daemon_eventual_peak_rss_mib": med(reps, &["daemon_eventual", "peak_rss_mib"]),
        "daemon_eventual_redis_apply_share_of_drain": med(reps, &["daemon_eventual", "redis_apply_share_of_drain"]),
        "daemon_eventual_mean_targets_per_batch": med(reps, &["daemon_eventual", "mean_targets_per_batch"]),
        "daemon_strong_wait1_events_per_second": med(reps, &["daemon_strong_wait1", "events_per_second"]),
        "daemon_strong_wait1_targets_per_second": med(reps, &["daemon_strong_wait1", "targets_per_second"]),
        "daemon_strong_wait1_redis_commands": med(reps, &["daemon_strong_wait1", "redis_commands", "total"]),
        "daemon_strong_wait1_cpu_seconds_per_million": med(reps, &["daemon_strong_wait1", "cpu_seconds_per_million"]),
        "daemon_strong_wait1_cpu_utilisation": med(reps, &["daemon_strong_wait1", "cpu_utilisation"]),
        "daemon_strong_wait1_peak_rss_mib": med(reps, &["daemon_strong_wait1", "peak_rss_mib"]),
        "daemon_strong_wait1_redis_apply_share_of_drain": med(reps, &["daemon_strong_wait1", "redis_apply_share_of_drain"]),
        "raw_consume_avro_events_per_second": med(reps, &["raw_consume_avro", "events_per_second"]),
        "daemon_avro_events_per_second": med(reps, &["daemon_avro", "events_per_second"]),
        "daemon_avro_targets_per_second": med(reps, &["daemon_avro", "targets_per_second"]),
        "daemon_avro_redis_commands": med(reps, &["daemon_avro", "redis_commands", "total"]),
        "daemon_avro_cpu_seconds_per_million": med(reps, &["daemon_avro", "cpu_seconds_per_million"]),
        "daemon_avro_cpu_utilisation": med(reps, &["daemon_avro", "cpu_utilisation"]),
        "daemon_avro_peak_rss_mib": med(reps, &["daemon_avro", "peak_rss_mib"]),
        "daemon_avro_redis_apply_share_of_drain": med(reps, &["daemon_avro", "redis_apply_share_of_drain"]),
        "node_events_per_second": med(reps, &["node", "events_per_second"]),
        "node_redis_commands": med(reps, &["node", "redis_commands", "total"]),
        "node_cpu_seconds_per_million": med(reps, &["node", "cpu_seconds_per_million"]),
        "node_peak_rss_mib": med(reps, &["node", "peak_rss_mib"]),
        "redis_benchmark_evalsha_per_second": med(reps, &["redis_benchmark", "requests_per_second"]),
    });
    m["daemon_strong_cluster_events_per_second"] = med(reps, &["daemon_strong_cluster", "events_per_second"]);
    m["daemon_strong_cluster_targets_per_second"] = med(reps, &["daemon_strong_cluster", "targets_per_second"]);
    m["daemon_strong_cluster_redis_commands"] = med(reps, &["daemon_strong_cluster", "redis_commands", "total"]);
    m["daemon_strong_cluster_cpu_seconds_per_million"] =
        med(reps, &["daemon_strong_cluster", "cpu_seconds_per_million"]);
    m["daemon_strong_cluster_cpu_utilisation"] = med(reps, &["daemon_strong_cluster", "cpu_utilisation"]);
    m["daemon_strong_cluster_peak_rss_mib"] = med(reps, &["daemon_strong_cluster", "peak_rss_mib"]);
    m["redis_ceiling_bumps_per_second"] = med(reps, &["redis_benchmark", "bumps_per_second"]);
    m["daemon_bumps_per_call"] = json!(cdc_invalidator::sink::BUMPS_PER_CALL);
    m["daemon_targets_per_event"] = med(reps, &["daemon", "targets_per_event"]);
    m["daemon_redis_commands_per_event"] = med(reps, &["daemon", "redis_commands_per_event"]);
    m["daemon_peak_rss_mib_max"] = json!(reps
        .iter()
        .filter_map(|r| get(r, &["daemon", "peak_rss_mib"]))
        .fold(0.0f64, f64::max));
    // Bumps per second of the script by bumps per call: every chunk size
    // the first repetition has.
    if let Some(Value::Object(first)) = reps.first().and_then(|r| r.get("script_curve")) {
        let mut curve = serde_json::Map::new();
        for chunk in first.keys() {
            curve.insert(
                chunk.clone(),
                json!({
                    "calls_per_second": med(reps, &["script_curve", chunk, "requests_per_second"]),
                    "bumps_per_second": med(reps, &["script_curve", chunk, "bumps_per_second"]),
                }),
            );
        }
        m["script_curve"] = Value::Object(curve);
    }
    // Decode benchmarks: every id the first repetition has.
    if let Some(Value::Object(first)) = reps.first().and_then(|r| r.get("decode")) {
        let mut d = serde_json::Map::new();
        for id in first.keys() {
            d.insert(
                id.clone(),
                json!({
                    "median_ns": med(reps, &["decode", id, "median_ns"]),
                }),
            );
        }
        m["decode"] = Value::Object(d);
    }
    let mut lat = serde_json::Map::new();
    for &rate in rates {
        let at: Vec<Value> = probes
            .iter()
            .filter(|p| p["rate"].as_u64() == Some(rate))
            .cloned()
            .collect();
        if at.is_empty() {
            continue;
        }
        lat.insert(
            rate.to_string(),
            json!({
                "achieved_rate": med(&at, &["achieved_rate"]),
                "append_to_ack_ms": {
                    "p50": med(&at, &["append_to_ack_ms", "p50"]),
                    "p99": med(&at, &["append_to_ack_ms", "p99"]),
                    "p999": med(&at, &["append_to_ack_ms", "p999"]),
                    "max": med(&at, &["append_to_ack_ms", "max"]),
                },
                "daemon_histogram_ms": {
                    "p50": med(&at, &["daemon_histogram", "p50_ms"]),
                    "p99": med(&at, &["daemon_histogram", "p99_ms"]),
                    "p999": med(&at, &["daemon_histogram", "p999_ms"]),
                },
                "missing": med(&at, &["missing"]),
                "daemon_cpu_utilisation": med(&at, &["daemon_cpu_utilisation"]),
            }),
        );
    }
    m["latency"] = Value::Object(lat);
    m
}

fn ratios(m: &Value) -> Value {
    let f = |k: &str| m.get(k).and_then(Value::as_f64);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    json!({
        "daemon_over_raw_consume": div(f("daemon_events_per_second"), f("raw_consume_events_per_second")),
        "daemon_over_node": div(f("daemon_events_per_second"), f("node_events_per_second")),
        // The share of the Redis ceiling the daemon used: its bumps per second
        // over redis-benchmark's for the same script at the same chunk size
        // (equivalently events/s over ceiling / targets per event).
        "daemon_targets_over_redis_ceiling": div(f("daemon_targets_per_second"), f("redis_ceiling_bumps_per_second")),
        "daemon_strong_wait1_over_strong": div(f("daemon_strong_wait1_events_per_second"), f("daemon_events_per_second")),
        "daemon_strong_cluster_over_strong": div(f("daemon_strong_cluster_events_per_second"), f("daemon_events_per_second")),
        "daemon_eventual_over_raw_consume": div(f("daemon_eventual_events_per_second"), f("raw_consume_events_per_second")),
        "daemon_eventual_over_node": div(f("daemon_eventual_events_per_second"), f("node_events_per_second")),
        "daemon_avro_over_raw_consume_avro": div(f("daemon_avro_events_per_second"), f("raw_consume_avro_events_per_second")),
        "daemon_avro_over_node": div(f("daemon_avro_events_per_second"), f("node_events_per_second")),
        "daemon_cpu_per_event_over_node": div(f("daemon_cpu_seconds_per_million"), f("node_cpu_seconds_per_million")),
    })
}

fn print_table(r: &Value) {
    let m = &r["medians"];
    let n = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.0}"));
    let f2 = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    let pct = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{:.0}%", x * 100.0));
    let p = &r["params"];
    println!();
    println!(
        "cdc-bench run {}: medians of {} runs; {} events, {} rows, {} keys/row, zipf {}, {} partitions",
        r["run_id"].as_str().unwrap_or(""),
        p["reps"],
        p["events"],
        p["rows"],
        p["keys_per_row"],
        p["zipf"],
        p["partitions"]
    );
    if let Some(overrides) = p["daemon_librdkafka"].as_array().filter(|a| !a.is_empty()) {
        println!("what-if: the daemon ran with [source.librdkafka] {overrides:?}");
    }
    let row = |name: &str, cells: [String; 7]| {
        println!(
            "{name:<36} {:>10} {:>10} {:>11} {:>10} {:>6} {:>10} {:>9}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    let dash = || "-".to_owned();
    row(
        "drain of the topic",
        [
            "events/s",
            "targets/s",
            "redis cmds",
            "CPU s/Mev",
            "CPU",
            "peak MiB",
            "redis wait",
        ]
        .map(String::from),
    );
    row(
        "raw-consume (the consume limit)",
        [
            n(&m["raw_consume_events_per_second"]),
            dash(),
            dash(),
            f2(&m["raw_consume_cpu_seconds_per_million"]),
            dash(),
            dash(),
            dash(),
        ],
    );
    for (label, k) in [
        ("cdc-invalidator, strong", "daemon"),
        ("cdc-invalidator, strong, WAIT 1 replica", "daemon_strong_wait1"),
        ("cdc-invalidator, strong, 3-node cluster", "daemon_strong_cluster"),
        ("cdc-invalidator, eventual (default)", "daemon_eventual"),
        ("cdc-invalidator, Avro, strong", "daemon_avro"),
    ] {
        if m[format!("{k}_events_per_second")].is_null() {
            continue;
        }
        row(
            label,
            [
                n(&m[format!("{k}_events_per_second")]),
                n(&m[format!("{k}_targets_per_second")]),
                n(&m[format!("{k}_redis_commands")]),
                f2(&m[format!("{k}_cpu_seconds_per_million")]),
                pct(&m[format!("{k}_cpu_utilisation")]),
                f2(&m[format!("{k}_peak_rss_mib")]),
                pct(&m[format!("{k}_redis_apply_share_of_drain")]),
            ],
        );
    }
    if !m["raw_consume_avro_events_per_second"].is_null() {
        row(
            "raw-consume, Avro topic (its limit)",
            [
                n(&m["raw_consume_avro_events_per_second"]),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
            ],
        );
    }
    row(
        "naive peer (Node, INCR per event)",
        [
            n(&m["node_events_per_second"]),
            dash(),
            n(&m["node_redis_commands"]),
            f2(&m["node_cpu_seconds_per_million"]),
            dash(),
            f2(&m["node_peak_rss_mib"]),
            dash(),
        ],
    );
    row(
        "redis-benchmark, bump script (limit)",
        [
            dash(),
            n(&m["redis_ceiling_bumps_per_second"]),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ],
    );
    if let Value::Object(curve) = &m["script_curve"] {
        println!(
            "{:<36} {:>10} {:>10}",
            "bump script, bumps per call", "calls/s", "bumps/s"
        );
        let mut chunks: Vec<&String> = curve.keys().collect();
        chunks.sort_by_key(|c| c.parse::<u64>().unwrap_or(0));
        for chunk in chunks {
            println!(
                "{:<36} {:>10} {:>10}",
                chunk,
                n(&curve[chunk]["calls_per_second"]),
                n(&curve[chunk]["bumps_per_second"])
            );
        }
        println!(
            "daemon: {} bumps per call, {} targets per event, {} Redis commands per event",
            m["daemon_bumps_per_call"],
            f2(&m["daemon_targets_per_event"]),
            f2(&m["daemon_redis_commands_per_event"])
        );
    }
    if let Value::Object(d) = &m["decode"] {
        println!(
            "{:<56} {:>10} {:>10}",
            "decode microbenchmark (criterion median)", "ns/record", "records/s"
        );
        for (id, v) in d {
            let ns = v["median_ns"].as_f64();
            println!(
                "{:<56} {:>10} {:>10}",
                id,
                ns.map_or("-".into(), |x| format!("{x:.0}")),
                ns.map_or("-".into(), |x| format!("{:.0}", 1e9 / x))
            );
        }
    }
    if let Value::Object(lat) = &m["latency"] {
        println!(
            "{:<20} {:>8} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>9} | {:>6} {:>7}",
            "latency, strong (ms)",
            "ext p50",
            "ext p99",
            "ext p99.9",
            "ext max",
            "hist p50",
            "hist p99",
            "hist p99.9",
            "CPU",
            "missing"
        );
        let mut rates: Vec<&String> = lat.keys().collect();
        rates.sort_by_key(|r| r.parse::<u64>().unwrap_or(0));
        for rate in rates {
            let v = &lat[rate];
            let a = &v["append_to_ack_ms"];
            let h = &v["daemon_histogram_ms"];
            println!(
                "{:<20} {:>8} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>9} | {:>6} {:>7}",
                format!("{rate} events/s"),
                f2(&a["p50"]),
                f2(&a["p99"]),
                f2(&a["p999"]),
                f2(&a["max"]),
                f2(&h["p50"]),
                f2(&h["p99"]),
                f2(&h["p999"]),
                pct(&v["daemon_cpu_utilisation"]),
                n(&v["missing"])
            );
        }
        println!("  ext: external probe, Kafka log-append time -> Redis keyspace notification; hist: the daemon's propagation histogram (commit time -> ack, bucketed)");
    }
    let q = &r["ratios"];
    println!(
        "ratios (strong / eventual): ours/raw-consume {} / {}   ours/naive peer {} / {}   ours bumps/Redis ceiling {}",
        f2(&q["daemon_over_raw_consume"]),
        f2(&q["daemon_eventual_over_raw_consume"]),
        f2(&q["daemon_over_node"]),
        f2(&q["daemon_eventual_over_node"]),
        f2(&q["daemon_targets_over_redis_ceiling"])
    );
    println!(
        "Avro: ours/raw-consume (Avro topic) {}   ours/naive peer (JSON) {}",
        f2(&q["daemon_avro_over_raw_consume_avro"]),
        f2(&q["daemon_avro_over_node"])
    );
    println!(
        "load average before {} after {}",
        r["load_average_before"], r["load_average_after"]
    );
}
