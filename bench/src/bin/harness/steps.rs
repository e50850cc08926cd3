//! The measurements: daemon and Node drains, redis-benchmark, the decode
//! microbenchmark, the latency probe and the callgrind profile.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cdc_bench::{gen, prom, stats};

use crate::bare_writes;
use crate::processes::{split_malformed, Ctx, DAEMON};
use crate::results::{
    CallgrindReports, CriterionEstimates, DeadLetterCount, DecodeResult, DrainResult, LoadResult, NodeOutput,
    NodeResult, ProbeOutput, ProbeResult, ProfileResult, RedisBenchmarkResult,
};
use crate::say;

/// One drain of a topic by the daemon: it runs with a fresh group until
/// every partition's stored offset (set only after Redis acknowledged)
/// reaches its end offset.
pub struct Drain<'a> {
    pub topic: &'a str,
    /// End offset per partition: drained when every stored offset reaches it.
    pub ends: &'a [i64],
    /// A fresh consumer group (and the name of the config and log files).
    pub group: &'a str,
    pub consistency: &'a str,
    pub avro_dir: Option<&'a Path>,
    /// A command the daemon runs under (valgrind for the profile), or none.
    pub wrapper: &'a [String],
    pub timeout: Duration,
    /// The daemon build: [`DAEMON`] or [`BASELINE_DAEMON`].
    pub daemon: &'a str,
    /// The malformed records in the topic, for a `-malformed<pct>` drain:
    /// the dead-letter rows it must leave, no more and no fewer.
    pub malformed: Option<u64>,
}

pub fn daemon_drain(ctx: &mut Ctx, drain: &Drain<'_>) -> anyhow::Result<DrainResult> {
    ctx.on_cluster = split_malformed(drain.consistency)?.0.ends_with("-cluster");
    let result = drain_once(ctx, drain);
    ctx.on_cluster = false;
    result
}

fn drain_once(ctx: &mut Ctx, drain: &Drain<'_>) -> anyhow::Result<DrainResult> {
    let Drain {
        topic,
        ends,
        group,
        consistency,
        avro_dir,
        wrapper,
        timeout,
        daemon,
        malformed,
    } = *drain;
    ctx.flush_redis()?;
    let config = ctx.daemon_config(topic, group, consistency, avro_dir)?;
    if malformed.is_some() {
        let migrate_with = ctx.bin(DAEMON);
        let table = ctx
            .dead_letters
            .as_mut()
            .context("a malformed drain without a dead-letter store")?;
        table.ensure_created(&migrate_with, &config)?;
        table.truncate()?;
    }
    let before = ctx.commandstats()?;
    let pid = ctx.spawn_daemon(daemon, &config, &format!("{group}.log"), wrapper)?;
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
                        // An offset exported as a float: a whole number below 2^53, exact.
                        #[allow(clippy::cast_possible_truncation)]
                        let offset = s.value as i64;
                        stored[p] = offset;
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
    // Applied and guard no-ops: every bump that reached Redis (coalesced
    // targets never did).
    let bumped = by("cdc_invalidator_targets_bumped_total");
    let noops = by("cdc_invalidator_guard_noops_total");
    let commands = Ctx::commands_delta(&before, &after);
    // Where the wall time went: the pipeline awaits each Redis apply before
    // it consumes again, so this share of the drain is spent waiting.
    let apply_s = by("cdc_invalidator_redis_apply_seconds_sum");
    let applies = by("cdc_invalidator_redis_apply_seconds_count");
    let coalesced = by("cdc_invalidator_targets_coalesced_total");
    let dead_letters = match malformed {
        Some(expected) => {
            let rows = ctx
                .dead_letters
                .as_ref()
                .context("a malformed drain without a dead-letter store")?
                .rows()?;
            let counted = by("cdc_invalidator_dead_letters_total");
            // Every malformed record is kept exactly once: a missing row is a
            // lost record, an extra one a clean record the daemon refused.
            if rows != expected {
                bail!(
                    "the drain left {rows} dead-letter rows for {expected} malformed records (daemon counted {counted}; log: {}/{group}.log)",
                    ctx.dir.display()
                );
            }
            Some(DeadLetterCount {
                malformed_records: expected,
                rows,
                counted_by_daemon: counted,
            })
        }
        None => None,
    };
    let evalsha = commands.by_command.get("evalsha").copied().unwrap_or(0);
    Ok(DrainResult {
        events: records,
        seconds,
        events_per_second: records as f64 / seconds,
        targets_applied: bumped,
        targets_guard_noop: noops,
        targets_coalesced: coalesced,
        targets_per_second: (bumped + noops) / seconds,
        events_by_outcome,
        escalations: by("cdc_invalidator_escalations_total"),
        moot: by("cdc_invalidator_moot_events_total"),
        evalsha_per_event: evalsha as f64 / records as f64,
        redis_commands_per_event: commands.total as f64 / records as f64,
        redis_commands: commands,
        targets_per_event: (bumped + noops + coalesced) / records as f64,
        bumps_per_event: (bumped + noops) / records as f64,
        cpu_seconds: cpu,
        cpu_seconds_per_million: cpu / records as f64 * 1e6,
        cpu_utilisation: cpu / seconds,
        peak_rss_mib: rss,
        redis_apply_seconds: apply_s,
        redis_apply_share_of_drain: apply_s / seconds,
        batches: applies,
        mean_targets_per_batch: by("cdc_invalidator_batch_targets_sum") / applies.max(1.0),
        startup_to_first_record_s: (first - spawned).as_secs_f64(),
        dead_letters,
    })
}

pub fn node_drain(ctx: &mut Ctx, topic: &str, rep: usize) -> anyhow::Result<NodeResult> {
    ctx.flush_redis()?;
    let before = ctx.commandstats()?;
    let group = format!("cdc-bench-{}-n{rep}", ctx.run_id);
    let node_dir = ctx.args.node_dir.clone();
    let output: NodeOutput = ctx.run_json(
        &format!("naive-node-{rep}"),
        Command::new("node")
            .arg(node_dir.join("index.js"))
            .args(["--topic", topic, "--brokers", &ctx.args.brokers, "--group", &group])
            .args(["--redis-port", &ctx.args.redis_port.to_string()]),
        Duration::from_secs(1800),
    )?;
    let after = ctx.commandstats()?;
    Ok(NodeResult {
        output,
        redis_commands: Ctx::commands_delta(&before, &after),
    })
}

/// redis-benchmark of the daemon's own bump script at `chunk` bumps per
/// call: the Redis ceiling for that chunk size, in calls and in bumps per
/// second.
pub fn redis_benchmark(ctx: &mut Ctx, chunk: usize) -> anyhow::Result<RedisBenchmarkResult> {
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
    // The bare writes (`bare_writes`) use the same shapes.
    let position = bare_writes::position();
    let chunk = chunk.max(1);
    let mut command = vec!["EVALSHA".to_owned(), sha, chunk.to_string()];
    command.extend((0..chunk).map(|_| "ver:item:__rand_int__".to_owned()));
    command.push(bare_writes::TTL_MS.to_owned());
    for _ in 0..chunk {
        command.push(bare_writes::GUARD_FIELD.to_owned());
        command.push(position.clone());
    }
    let args = ctx.args.clone();
    let calls = (args.redis_benchmark_requests / chunk as u64).max(1000);
    let pipeline = (args.redis_benchmark_pipeline / chunk as u64).max(1);
    let before = ctx.commandstats()?;
    let cpu_before = bare_writes::redis_cpu_seconds(&mut ctx.redis)?;
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &args.redis_port.to_string()])
        .args(["-n", &calls.to_string(), "-c", "1"])
        .args([
            "-P",
            &pipeline.to_string(),
            "-r",
            &bare_writes::KEY_SPACE.to_string(),
            "--csv",
        ])
        .args(&command)
        .stdin(Stdio::null())
        .output()
        .context("redis-benchmark (apt-get install redis-tools)")?;
    if !out.status.success() {
        bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cpu = bare_writes::redis_cpu_seconds(&mut ctx.redis)? - cpu_before;
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
    let commands = Ctx::commands_delta(&before, &after);
    // redis-benchmark sends whole pipelines: up to one pipeline more calls
    // than asked for. The CPU is per bump Redis ran.
    let executed = commands.by_command.get("evalsha").copied().unwrap_or(calls);
    Ok(RedisBenchmarkResult {
        bumps_per_call: chunk,
        requests: calls,
        clients: 1,
        pipeline,
        requests_per_second: rps,
        bumps_per_second: rps * chunk as f64,
        keys_created: dbsize,
        redis_commands: commands,
        redis_cpu_us_per_bump: Some(cpu / (executed * chunk as u64) as f64 * 1e6),
    })
}

pub fn decode_bench(ctx: &mut Ctx, exe: &Path, rep: usize) -> anyhow::Result<BTreeMap<String, DecodeResult>> {
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
    let mut out = BTreeMap::new();
    for entry in walk(&home) {
        if entry.ends_with("new/estimates.json") {
            let rel = entry
                .strip_prefix(&home)?
                .to_string_lossy()
                .replace("/new/estimates.json", "");
            let estimates: CriterionEstimates =
                serde_json::from_str(&fs::read_to_string(&entry)?).with_context(|| format!("{}", entry.display()))?;
            let median_ns = estimates.median.point_estimate;
            out.insert(
                rel,
                DecodeResult {
                    median_ns,
                    per_second: 1e9 / median_ns,
                },
            );
        }
    }
    Ok(out)
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

pub fn probe(ctx: &mut Ctx, rate: u64, rep: usize) -> anyhow::Result<ProbeResult> {
    let prefix = format!("bench_{}_p{rate}_{rep}", ctx.run_id);
    let topic = gen::topic_name(&prefix);
    ctx.topics.push(topic.clone());
    // `load` with no events only creates the topic (with LogAppendTime);
    // nothing of what it prints is needed.
    ctx.run_json::<serde::de::IgnoredAny>(
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
    let pid = ctx.spawn_daemon(DAEMON, &config, &format!("{group}.log"), &[])?;
    ctx.wait_ready(Duration::from_secs(60))?;
    let cpu_before = stats::cpu_seconds(pid)?;
    let t0 = Instant::now();
    let admin = ctx.admin.clone();
    let args = ctx.args.clone();
    let result = ctx.run_json::<ProbeOutput>(
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
    Ok(ProbeResult {
        output: result?,
        rep,
        daemon_cpu_utilisation: cpu / wall,
        daemon_peak_rss_mib: rss,
    })
}

pub fn profile(ctx: &mut Ctx) -> anyhow::Result<ProfileResult> {
    let n = ctx.args.profile_events;
    let prefix = format!("bench_{}_profile", ctx.run_id);
    let topic = gen::topic_name(&prefix);
    ctx.topics.push(topic.clone());
    say(format!(
        "profile: loading {n} events, then the daemon under callgrind until drained"
    ));
    let load: LoadResult = ctx.run_json(
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
    let ends = load.end_offsets;
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
            daemon: DAEMON,
            malformed: None,
        },
    )?;
    // callgrind writes its file when the daemon exits (daemon_drain stopped it).
    std::thread::sleep(Duration::from_secs(1));
    let annotate = |name: &str, inclusive: &str| -> anyhow::Result<PathBuf> {
        let out = Command::new("callgrind_annotate")
            .arg(format!("--inclusive={inclusive}"))
            .arg("--threshold=99")
            .arg(&out_file)
            .output()
            .context("callgrind_annotate")?;
        let path = ctx.dir.join(format!("callgrind-{name}.txt"));
        fs::write(&path, &out.stdout)?;
        Ok(path)
    };
    let reports = CallgrindReports {
        exclusive: annotate("exclusive", "no")?,
        inclusive: annotate("inclusive", "yes")?,
    };
    Ok(ProfileResult {
        events: n,
        drain_under_callgrind: drained,
        callgrind_out: out_file,
        reports,
    })
}
