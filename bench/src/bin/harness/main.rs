//! The orchestrator behind `bench/run`: one run, every measurement, side by
//! side on the same machine, the same topic and the same private Redis.
//!
//! 1. A private redis-server (`--redis-port`, no persistence) for the run.
//! 2. `load`: one topic of N Debezium events (the throughput topic).
//! 3. Per repetition: the decode microbenchmark (criterion), `raw-consume`,
//!    the daemon until drained, the naive Node peer until drained,
//!    `redis-benchmark` with the bump script's EVALSHA, and the same bumps
//!    as bare writes (`bare_writes`: no guard, no script). A `-malformed<pct>`
//!    drain reads a topic of its own where that share of the records is
//!    malformed, with a dead-letter store; `--baseline-daemon` drains every
//!    consistency with a second build too, the two taking turns.
//! 4. Per rate and repetition: a fresh topic, the daemon, and `probe`.
//! 5. Optionally a callgrind profile of the daemon on a short drain.
//!
//! Writes `<out>/<run id>.json` and prints a table of medians. Progress on stderr.

// The bench harness (this library and its binaries) is an operator tool run
// by bench/run, never linked by the daemon or an application: a panic on a
// broken setup or a malformed scrape is the run failing loudly, which is what
// it should do. The cast lints still hold (Cargo.toml): a wrong cast here is a
// wrong number in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod bare_writes;
mod dead_letters;
mod processes;
mod report;
mod results;
mod steps;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cdc_bench::{gen, prom, stats};
use clap::Parser;

use bare_writes::bare_writes;
use dead_letters::DeadLetterTable;
use processes::{free_port, split_malformed, start_cluster, start_redis, Ctx, Reaper, BASELINE_DAEMON, DAEMON};
use results::{
    drain_key, BaselineDaemon, GitState, LoadResult, Machine, Params, RawConsumeResult, Repetition, RunReport,
};
use steps::{daemon_drain, decode_bench, node_drain, probe, profile, redis_benchmark, Drain};

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
    /// loopback (ports --redis-port + 10, 11, 12). A `-malformed<pct>`
    /// suffix ("strong-malformed10") drains a topic of the same events where
    /// <pct>% of the records are malformed (truncated JSON, a wrong table, a
    /// null key in turn), with the dead-letter store of --dead-letters-url;
    /// the run fails unless the store holds exactly one row per malformed record.
    /// An `-inline` suffix ("strong-inline") runs the daemon with
    /// `plan.route_workers = 1`, every record routed on the consumer task.
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
    /// Keep the bench topics (and the dead-letter schema) instead of
    /// deleting them at the end.
    #[arg(long)]
    keep_topics: bool,
    /// PostgreSQL for the dead letters of the malformed drains (the local
    /// stack's: `eval "$(scripts/stack env)"` sets CDC_PG_URL). The run
    /// makes a schema of its own there and drops it at the end.
    #[arg(long, env = "CDC_PG_URL", hide_env_values = true)]
    dead_letters_url: Option<String>,
    /// Another build of the daemon to compare with: every drain of every
    /// repetition runs with it too, right before or after the daemon under
    /// test (the order alternates per repetition), so machine load falls on
    /// both alike. Its results are keyed `baseline_...`.
    #[arg(long)]
    baseline_daemon: Option<PathBuf>,
    /// What the baseline was built from (e.g. a commit), for the table and file.
    #[arg(long, default_value = "baseline")]
    baseline_label: String,
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
    for name in [DAEMON, "load", "raw-consume", "probe"] {
        fs::copy(args.bin_dir.join(name), bin_dir.join(name))
            .with_context(|| format!("{}/{name} (build it first: bench/run does)", args.bin_dir.display()))?;
    }
    if let Some(baseline) = &args.baseline_daemon {
        fs::copy(baseline, bin_dir.join(BASELINE_DAEMON)).with_context(|| format!("{}", baseline.display()))?;
    }
    let mut malformed_pcts = Vec::new();
    for consistency in &args.consistencies {
        if let (_, Some(pct)) = split_malformed(consistency)? {
            malformed_pcts.push(pct);
        }
    }
    malformed_pcts.sort_unstable();
    malformed_pcts.dedup();
    let dead_letters = match (&args.dead_letters_url, malformed_pcts.is_empty()) {
        (_, true) => None,
        (Some(url), false) => Some(DeadLetterTable::new(url, &run_id)),
        (None, false) => bail!(
            "a -malformed drain needs a dead-letter store: --dead-letters-url or CDC_PG_URL (eval \"$(scripts/stack env)\")"
        ),
    };
    let mut args = args;
    if let Some(exe) = &args.decode_bench {
        let copy = bin_dir.join("decode-bench");
        fs::copy(exe, &copy).with_context(|| format!("{}", exe.display()))?;
        args.decode_bench = Some(copy);
    }
    args.bin_dir = bin_dir;

    let mut reaper = Reaper(Vec::new());
    let redis_url = start_redis(&args, &dir, &mut reaper)?;
    let mut on_cluster = Vec::new();
    for consistency in &args.consistencies {
        on_cluster.push(split_malformed(consistency)?.0.ends_with("-cluster"));
    }
    let cluster_nodes = if on_cluster.contains(&true) {
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
        dead_letters,
    };
    if prom::http_get(&ctx.admin, "/healthz").is_ok() {
        bail!(
            "something already listens on {} (another daemon?); choose --admin-port",
            ctx.admin
        );
    }

    let result = run(&mut ctx, &malformed_pcts);
    if !args.keep_topics {
        for topic in std::mem::take(&mut ctx.topics) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if let Err(e) = rt.block_on(cdc_bench::kafka::delete_topic(&args.brokers, &topic)) {
                say(format!("could not delete topic {topic}: {e}"));
            }
        }
        if let Some(table) = &mut ctx.dead_letters {
            if let Err(e) = table.drop_schema() {
                say(format!("could not drop the dead-letter schema {}: {e:#}", table.schema));
            }
        }
    }
    let mut report = result?;
    let load_after = stats::load_average();
    report.load_average_before = load_before;
    report.load_average_after = load_after;
    let path = args.out.join(format!("{run_id}.json"));
    fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    report::print_table(&report);
    say(format!("load average after {load_after:?}"));
    say(format!("results: {}", path.display()));
    Ok(())
}

/// The `load` of the run's events (count, rows, zipf, partitions, keys per
/// row) into the topic of `prefix`.
fn load_command(ctx: &Ctx, prefix: &str) -> Command {
    let args = &ctx.args;
    let mut cmd = Command::new(ctx.bin("load"));
    cmd.args(["--brokers", &args.brokers, "--topic-prefix", prefix])
        .args(["--events", &args.events.to_string(), "--rows", &args.rows.to_string()])
        .args([
            "--zipf",
            &args.zipf.to_string(),
            "--partitions",
            &args.partitions.to_string(),
        ])
        .args(["--keys-per-row", &args.keys_per_row.to_string()]);
    cmd
}

fn run(ctx: &mut Ctx, malformed_pcts: &[u32]) -> anyhow::Result<RunReport> {
    let args = ctx.args.clone();
    let machine = machine();
    say(format!("machine: {}", serde_json::to_string(&machine)?));

    // ------------------------------------------------------------ load
    let prefix = format!("bench_{}", ctx.run_id);
    let topic = gen::topic_name(&prefix);
    say(format!(
        "loading {} events ({} rows, {} keys per row, zipf {}) into {topic}",
        args.events, args.rows, args.keys_per_row, args.zipf
    ));
    ctx.topics.push(topic.clone());
    let load: LoadResult = ctx.run_json("load", &mut load_command(ctx, &prefix), Duration::from_secs(1800))?;
    say_loaded(&load);

    // The same events (same seed) in Avro, as Debezium's AvroConverter writes them.
    let avro = if args.skip_avro {
        None
    } else {
        let prefix = format!("bench_{}_avro", ctx.run_id);
        let topic = gen::topic_name(&prefix);
        let schemas = ctx.dir.join("avsc");
        say(format!("loading the same {} events in Avro into {topic}", args.events));
        ctx.topics.push(topic.clone());
        let load: LoadResult = ctx.run_json(
            "load-avro",
            load_command(ctx, &prefix).arg("--avro-schemas-dir").arg(&schemas),
            Duration::from_secs(1800),
        )?;
        say_loaded(&load);
        Some((topic, schemas, load))
    };

    // The same events (same seed) with a share of them malformed, per share.
    let mut malformed_topics: BTreeMap<u32, (String, LoadResult)> = BTreeMap::new();
    for &pct in malformed_pcts {
        let prefix = format!("bench_{}_malformed{pct}", ctx.run_id);
        let topic = gen::topic_name(&prefix);
        say(format!(
            "loading the same {} events with {pct}% malformed into {topic}",
            args.events
        ));
        ctx.topics.push(topic.clone());
        let load: LoadResult = ctx.run_json(
            &format!("load-malformed{pct}"),
            load_command(ctx, &prefix).args(["--malformed-pct", &pct.to_string()]),
            Duration::from_secs(1800),
        )?;
        say_loaded(&load);
        say(format!("  {} malformed records", load.malformed));
        malformed_topics.insert(pct, (topic, load));
    }

    // ------------------------------------------------------------ repetitions
    let mut reps = Vec::new();
    for rep in 1..=args.reps {
        let mut r = Repetition {
            rep,
            ..Repetition::default()
        };
        if let Some(exe) = &args.decode_bench {
            say(format!("rep {rep}/{}: decode microbenchmark (criterion)", args.reps));
            r.decode = Some(decode_bench(ctx, exe, rep)?);
        }
        say(format!("rep {rep}/{}: raw-consume", args.reps));
        let raw: RawConsumeResult = ctx.run_json(
            &format!("raw-consume-{rep}"),
            Command::new(ctx.bin("raw-consume")).args(["--brokers", &args.brokers, "--topic", &topic]),
            Duration::from_secs(900),
        )?;
        say(format!(
            "  raw-consume: {:.0} events/s",
            raw.events_per_second.unwrap_or(0.0)
        ));
        r.raw_consume = Some(raw);

        // strong (flushed at once) is what the latency test runs; eventual
        // (100 ms linger) is the daemon's default for an entity.
        for consistency in &args.consistencies {
            let (drained, malformed) = match split_malformed(consistency)? {
                (_, Some(pct)) => {
                    let (topic, load) = &malformed_topics[&pct];
                    (topic.as_str(), Some(load))
                }
                (_, None) => (topic.as_str(), None),
            };
            let ends = malformed.map_or(&load.end_offsets, |l| &l.end_offsets);
            // With a baseline the two builds take turns, the first one
            // alternating per repetition, so that neither always runs on
            // the machine the other just warmed (or loaded).
            let mut builds = vec![DAEMON];
            if args.baseline_daemon.is_some() {
                builds.push(BASELINE_DAEMON);
                if rep % 2 == 0 {
                    builds.reverse();
                }
            }
            for build in builds {
                let baseline = build == BASELINE_DAEMON;
                let who = if baseline {
                    format!("baseline {}", args.baseline_label)
                } else {
                    "daemon".to_owned()
                };
                say(format!("rep {rep}/{}: {who} ({consistency}) until drained", args.reps));
                let group = format!(
                    "cdc-bench-{}-d{rep}-{consistency}{}",
                    ctx.run_id,
                    if baseline { "-baseline" } else { "" }
                );
                let daemon = daemon_drain(
                    ctx,
                    &Drain {
                        topic: drained,
                        ends,
                        group: &group,
                        consistency,
                        avro_dir: None,
                        wrapper: &[],
                        timeout: Duration::from_secs(900),
                        daemon: build,
                        malformed: malformed.map(|l| l.malformed),
                    },
                )?;
                say(format!(
                    "  {who} ({consistency}): {:.0} events/s, {:.0} targets/s, {:.0} targets per Redis batch{}",
                    daemon.events_per_second,
                    daemon.targets_per_second,
                    daemon.mean_targets_per_batch,
                    daemon.dead_letters.as_ref().map_or(String::new(), |d| format!(
                        ", {} dead letters (as many as malformed records)",
                        d.rows
                    ))
                ));
                if baseline {
                    r.baseline.insert(drain_key(consistency), daemon);
                } else {
                    r.insert_drain(consistency, daemon);
                }
            }
        }

        if let Some((avro_topic, schemas, avro_load)) = &avro {
            say(format!("rep {rep}/{}: raw-consume, Avro topic", args.reps));
            let raw: RawConsumeResult = ctx.run_json(
                &format!("raw-consume-avro-{rep}"),
                Command::new(ctx.bin("raw-consume")).args(["--brokers", &args.brokers, "--topic", avro_topic]),
                Duration::from_secs(900),
            )?;
            say(format!(
                "  raw-consume (Avro): {:.0} events/s",
                raw.events_per_second.unwrap_or(0.0)
            ));
            r.raw_consume_avro = Some(raw);
            say(format!(
                "rep {rep}/{}: daemon (strong) on the Avro topic until drained",
                args.reps
            ));
            let group = format!("cdc-bench-{}-d{rep}-avro", ctx.run_id);
            let daemon = daemon_drain(
                ctx,
                &Drain {
                    topic: avro_topic,
                    ends: &avro_load.end_offsets,
                    group: &group,
                    consistency: "strong",
                    avro_dir: Some(schemas.as_path()),
                    wrapper: &[],
                    timeout: Duration::from_secs(900),
                    daemon: DAEMON,
                    malformed: None,
                },
            )?;
            say(format!(
                "  daemon (Avro, strong): {:.0} events/s, {:.0} targets/s",
                daemon.events_per_second, daemon.targets_per_second
            ));
            r.daemon_avro = Some(daemon);
        }

        if !args.skip_node {
            say(format!("rep {rep}/{}: naive Node peer until drained", args.reps));
            let node = node_drain(ctx, &topic, rep)?;
            say(format!(
                "  naive peer: {:.0} events/s",
                node.output.events_per_second.unwrap_or(0.0)
            ));
            r.node = Some(node);
        }

        let daemon_chunk = cdc_invalidator::sink::BUMPS_PER_CALL;
        let mut chunks = args.script_chunks.clone();
        chunks.push(daemon_chunk);
        chunks.sort_unstable();
        chunks.dedup();
        for chunk in chunks {
            say(format!(
                "rep {rep}/{}: redis-benchmark, the bump script at {chunk} bumps per call",
                args.reps
            ));
            let rb = redis_benchmark(ctx, chunk)?;
            say(format!(
                "  redis-benchmark: {:.0} calls/s, {:.0} bumps/s",
                rb.requests_per_second, rb.bumps_per_second
            ));
            if chunk == daemon_chunk {
                r.redis_benchmark = Some(rb.clone());
                // Right after the script's run at the same keys per call,
                // the same bumps in flight and as many of them.
                say(format!(
                    "rep {rep}/{}: the same bumps as bare writes (HSET + PEXPIRE, no guard), {chunk} keys per group",
                    args.reps
                ));
                let bare = bare_writes(ctx, chunk, args.redis_benchmark_pipeline, rb.requests * chunk as u64)?;
                say(format!(
                    "  bare writes: {:.0} bumps/s, {:.2} µs Redis CPU per bump (the script: {:.2})",
                    bare.bumps_per_second,
                    bare.redis_cpu_us_per_bump,
                    rb.redis_cpu_us_per_bump.unwrap_or(f64::NAN)
                ));
                r.bare_writes = Some(bare);
            }
            r.script_curve.insert(chunk, rb);
        }
        reps.push(r);
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
                let ack = &p.output.append_to_ack_ms;
                say(format!(
                    "  append->ack p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; missing {}",
                    ack.p50.unwrap_or(f64::NAN),
                    ack.p99.unwrap_or(f64::NAN),
                    ack.p999.unwrap_or(f64::NAN),
                    p.output.missing
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

    let medians = report::medians(&reps, &probes, &args.rates);
    let ratios = report::ratios(&medians, &args.consistencies);
    let sha256 = |binary: &str| {
        Command::new("sha256sum")
            .arg(ctx.bin(binary))
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
    };
    Ok(RunReport {
        run_id: ctx.run_id.clone(),
        git: ctx.git_at_start.clone(),
        daemon_binary_sha256: sha256(DAEMON),
        baseline_daemon: args.baseline_daemon.as_ref().map(|_| BaselineDaemon {
            label: args.baseline_label.clone(),
            sha256: sha256(BASELINE_DAEMON),
        }),
        load_malformed: malformed_topics
            .into_iter()
            .map(|(pct, (_, load))| (pct, load))
            .collect(),
        dead_letter_schema: ctx.dead_letters.as_ref().map(|t| t.schema.clone()),
        machine,
        params: Params {
            events: args.events,
            rows: args.rows,
            keys_per_row: args.keys_per_row,
            zipf: args.zipf,
            partitions: args.partitions,
            reps: args.reps,
            rates: args.rates.clone(),
            probe_duration_s: args.probe_duration_s,
            redis_benchmark_requests: args.redis_benchmark_requests,
            redis_benchmark_pipeline: args.redis_benchmark_pipeline,
            consistencies: args.consistencies.clone(),
            daemon_librdkafka: args.daemon_librdkafka.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            latency_consistency: "strong".to_owned(),
        },
        load,
        load_avro: avro.map(|(_, _, load)| load),
        reps,
        probes,
        medians,
        ratios,
        profile,
        // Filled by main, after the topics are deleted.
        load_average_before: None,
        load_average_after: None,
    })
}

fn say_loaded(load: &LoadResult) {
    say(format!(
        "loaded: {:.0} records/s, {:.0} bytes per record",
        load.produced_per_second.unwrap_or(0.0),
        load.mean_record_bytes.unwrap_or(0.0)
    ));
}

fn machine() -> Machine {
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
    Machine {
        cpu_model: field("model name"),
        cpu_mhz: field("cpu MHz"),
        nproc: std::thread::available_parallelism().map(|n| n.get()).ok(),
        mem_total_mib: mem_kib.map(|k| (k / 1024.0).round()),
        kernel: cmd("uname", &["-r"]),
        redis_server: cmd("redis-server", &["--version"]),
        node: cmd("node", &["--version"]),
        rustc: cmd("rustc", &["--version"]),
    }
}

fn git() -> GitState {
    let run = |a: &[&str]| {
        Command::new("git")
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    GitState {
        commit: run(&["rev-parse", "HEAD"]),
        dirty_paths: run(&["status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
            .map(|s| s.lines().count()),
    }
}
