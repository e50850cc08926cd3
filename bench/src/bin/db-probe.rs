//! The end-to-end probe: PostgreSQL commit to the version record changing in
//! Redis, through the real Debezium connector, Kafka and the daemon.
//!
//! 1. Creates its own table `public.dbprobe_<run>` (the stack's publication
//!    holds the whole `public` schema, so Debezium captures it with no
//!    connector change) with `--rows` rows, and waits for its topic.
//! 2. Writes a daemon config mapping the table to one key per row
//!    (`dbprobe:<run>:{id}`), starts the daemon (admin on a port it checked
//!    is free, and answered by that very process), and waits until the
//!    daemon has applied the inserts.
//! 3. Runs UPDATEs at a steady `--rate` for `--warmup-s` + `--duration-s`
//!    seconds, each its own committed transaction, rotating over the rows,
//!    and records when each COMMIT returned to the client.
//! 4. Measures when the row's version record changed: a keyspace
//!    notification (`__keyspace@0__:ver:dbprobe:<run>:*`, hash events only)
//!    on one pattern subscription: Redis matches every hash write against
//!    one pattern, and only the daemon writes hashes, at one bump per
//!    change, so the cost is bounded by the bump rate.
//! 5. Reads the topic itself as a second consumer, so the time splits into
//!    PostgreSQL + Debezium + Kafka (record timestamp minus commit; with
//!    Debezium's own `ts_us`, when its streaming thread handled the change)
//!    and daemon + Redis (notification minus record timestamp).
//!
//! A change is matched to the first notification of its row after the
//! change was issued and before the row's next change was issued; rows
//! rotate so that the next change of a row comes `--timeout-ms` later. A
//! change with no notification in that window is lost and reported.
//!
//! Prints one JSON object on stdout; progress on stderr. Everything it
//! starts (daemon, table, topic, consumer group, version records, the
//! notification setting) it stops or removes. Exits non-zero on any failure,
//! and when more than `--max-lost` changes were lost.
//!
//!   eval "$(scripts/stack env)"; target/release/db-probe --rate 1000 --duration-s 30

// The bench harness (this library and its binaries) is an operator tool run
// by bench/run, never linked by the daemon or an application: a panic on a
// broken setup or a malformed scrape is the run failing loudly, which is what
// it should do. The cast lints still hold (Cargo.toml): a wrong cast here is a
// wrong number in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cdc_bench::{now_us, prom, stats};
use clap::Parser;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const PROPAGATION: &str = "cdc_invalidator_invalidation_propagation_seconds";
const EVENTS: &str = "cdc_invalidator_events_total";
const BUILD_INFO: &str = "cdc_invalidator_build_info";

#[derive(Parser, Debug)]
#[command(about = "PostgreSQL commit to Redis version record, through Debezium, Kafka and the daemon")]
struct Args {
    /// The stack's PostgreSQL (a user that may create tables in `public`).
    #[arg(long, env = "CDC_PG_URL", default_value = "postgres://cdc:cdc@127.0.0.1:5432/shop")]
    pg_url: String,
    #[arg(long, env = "CDC_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The stack's Redis: the probe turns on hash keyspace notifications
    /// there for the run and restores the previous setting.
    #[arg(long, env = "CDC_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Debezium's topic.prefix: the table's topic is <prefix>.public.<table>.
    #[arg(long, env = "CDC_TOPIC_PREFIX", default_value = "shop")]
    topic_prefix: String,
    /// Committed row changes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// The measured window, seconds.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Changes at the same rate before the measured window, left out of every
    /// figure: the connector's first sends to a new topic fetch its metadata.
    #[arg(long, default_value_t = 3)]
    warmup_s: u64,
    /// A change whose version record has not changed this long after its
    /// commit is lost. Also the rotation period: rows = rate x timeout.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Exit non-zero when more changes than this were lost.
    #[arg(long, default_value_t = 0)]
    max_lost: usize,
    /// The daemon binary [default: cdc-invalidator beside this binary].
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// The daemon's admin port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// The daemon's version prefix.
    #[arg(long, default_value = "ver:")]
    prefix: String,
    /// Where the daemon's config and log go [default: a fresh temp dir, kept
    /// only when the run fails].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds each setup step may take (topic creation, daemon ready, catch-up).
    #[arg(long, default_value_t = 120)]
    setup_timeout_s: u64,
}

/// One committed change: row `row` got `seq`.
#[derive(Clone, Copy)]
struct Change {
    seq: i64,
    row: i32,
    issued_us: i64,
    committed_us: i64,
}

/// What the second consumer saw of one change's record.
#[derive(Clone, Copy, Default)]
struct Seen {
    kafka_ts_ms: i64,
    received_us: i64,
    /// Debezium's `ts_us`: when the connector processed the change.
    debezium_us: Option<i64>,
    /// `source.ts_us`: the transaction's commit time in PostgreSQL.
    source_us: Option<i64>,
}

/// Every run names its own table, key prefix and group.
struct Names {
    run: String,
    table: String,
    topic: String,
    key_prefix: String,
    group: String,
}

impl Names {
    fn new(topic_prefix: &str, prefix: &str) -> Self {
        let run = format!("{:x}{:04x}", now_us() / 1000 % 0xffff_ffff, std::process::id() % 0xffff);
        let table = format!("dbprobe_{run}");
        Names {
            topic: format!("{topic_prefix}.public.{table}"),
            key_prefix: format!("{prefix}dbprobe:{run}:"),
            group: format!("cdc-db-probe-{run}"),
            run,
            table,
        }
    }
}

/// The daemon child: SIGTERM, then SIGKILL, whatever way the probe ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(
                libc::pid_t::try_from(self.0.id()).expect("a pid fits pid_t"),
                libc::SIGTERM,
            )
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the run set up and cleanup must undo.
#[derive(Default)]
struct Undo {
    table_created: bool,
    notify_before: Option<String>,
    topic_seen: bool,
    group_used: bool,
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let names = Names::new(&args.topic_prefix, &args.prefix);
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("cdc-db-probe-{}", names.run)));
    let mut undo = Undo::default();
    let outcome = tokio::select! {
        r = run(&args, &names, &work_dir, &mut undo) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleaned = cleanup(&args, &names, &undo).await;
    match (&outcome, &cleaned) {
        (Ok(_), Ok(())) if args.work_dir.is_none() => {
            let _ = std::fs::remove_dir_all(&work_dir);
        }
        _ => eprintln!("[db-probe] daemon config and log kept in {}", work_dir.display()),
    }
    if let Err(e) = &cleaned {
        eprintln!("[db-probe] error: cleanup: {e:#}");
    }
    match outcome {
        Ok(lost) if cleaned.is_ok() => {
            if lost > args.max_lost {
                eprintln!(
                    "[db-probe] error: {lost} changes never reached Redis within {} ms (--max-lost {})",
                    args.timeout_ms, args.max_lost
                );
                std::process::exit(1);
            }
        }
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("[db-probe] error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The whole measurement; returns the number of lost changes after printing
/// the JSON result.
async fn run(args: &Args, names: &Names, work_dir: &Path, undo: &mut Undo) -> anyhow::Result<usize> {
    if args.rate == 0 || args.duration_s == 0 {
        bail!("--rate and --duration-s must be positive");
    }
    let rows = (args.rate * args.timeout_ms / 1000).max(1);
    let warm = args.rate * args.warmup_s;
    let total = warm + args.rate * args.duration_s;
    let setup_timeout = Duration::from_secs(args.setup_timeout_s);
    std::fs::create_dir_all(work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    let daemon_bin = match &args.daemon {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory above this binary")?
            .join("cdc-invalidator"),
    };
    if !daemon_bin.is_file() {
        bail!(
            "no daemon binary at {} (cargo build --release --bin cdc-invalidator, or --daemon)",
            daemon_bin.display()
        );
    }

    // 1. The table and its rows; the inserts make Debezium create the topic.
    let mut pg = PgConnection::connect(&args.pg_url)
        .await
        .with_context(|| format!("connect to PostgreSQL at {}", redact(&args.pg_url)))?;
    // Table names are the probe's own (hex run id), never input.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE public.{t} (id integer PRIMARY KEY, seq bigint NOT NULL)",
        t = names.table
    )))
    .execute(&mut pg)
    .await
    .with_context(|| format!("create table public.{}", names.table))?;
    undo.table_created = true;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO public.{t} (id, seq) SELECT g, 0 FROM generate_series(1, $1) AS g",
        t = names.table
    )))
    .bind(i32::try_from(rows).context("--rows above i32::MAX")?)
    .execute(&mut pg)
    .await
    .context("insert the rows")?;
    eprintln!(
        "[db-probe] table public.{} with {rows} rows; waiting for topic {}",
        names.table, names.topic
    );
    let partitions = wait_for_topic(&args.brokers, &names.topic, i64::try_from(rows)?, setup_timeout).await?;
    undo.topic_seen = true;

    // 2. The daemon, on an admin port it checked and verified.
    let port = free_port(args.admin_port)?;
    let admin = format!("127.0.0.1:{port}");
    let config = work_dir.join("daemon.toml");
    std::fs::write(&config, daemon_config(args, names, &admin)).context("write the daemon config")?;
    let log_path = work_dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(&daemon_bin);
    cdc_bench::daemon_run_args(&mut cmd, &config, log)?;
    undo.group_used = true;
    let mut daemon = Daemon(cmd.spawn().with_context(|| format!("start {}", daemon_bin.display()))?);
    verify_own_admin(&mut daemon, port, &log_path, setup_timeout)?;
    wait_applied(&mut daemon, &admin, rows as f64, setup_timeout).await?;
    eprintln!(
        "[db-probe] daemon (pid {}) on admin {admin} applied the inserts",
        daemon.0.id()
    );

    // 3. Redis: hash keyspace notifications of this run's records.
    let client = redis::Client::open(args.redis_url.as_str()).context("redis url")?;
    let mut redis_admin = client
        .get_multiplexed_async_connection()
        .await
        .context("connect to Redis")?;
    let (_, before): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut redis_admin)
        .await
        .context("CONFIG GET notify-keyspace-events")?;
    let wanted = with_hash_keyspace_events(&before);
    undo.notify_before = Some(before);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async::<()>(&mut redis_admin)
        .await
        .context("CONFIG SET notify-keyspace-events")?;
    let channel_prefix = format!("__keyspace@0__:{}", names.key_prefix);
    let notified: Arc<Mutex<HashMap<i32, Vec<i64>>>> = Arc::default();
    let mut pubsub = client.get_async_pubsub().await.context("Redis pubsub")?;
    pubsub.psubscribe(format!("{channel_prefix}*")).await?;
    let listener = {
        let notified = notified.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let at = now_us();
                if let Some(row) = msg
                    .get_channel_name()
                    .strip_prefix(channel_prefix.as_str())
                    .and_then(|rest| rest.parse::<i32>().ok())
                {
                    notified.lock().expect("notified").entry(row).or_default().push(at);
                }
            }
        })
    };

    // 4. The second consumer, from the current end of every partition.
    let seen: Arc<Mutex<HashMap<i64, Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(&args.brokers, &names.topic, partitions, seen.clone(), stop.clone())?;

    // 5. The changes, on schedule.
    let load_before = stats::load_average();
    eprintln!(
        "[db-probe] {total} changes at {}/s ({} s warm-up, {} s measured), rotating over {rows} rows",
        args.rate, args.warmup_s, args.duration_s
    );
    let update = format!("UPDATE public.{} SET seq = $1 WHERE id = $2", names.table);
    let mut changes: Vec<Change> = Vec::with_capacity(usize::try_from(total)?);
    let start = tokio::time::Instant::now();
    let mut max_behind = Duration::ZERO;
    let mut hist_at_window: Option<Vec<(f64, f64)>> = None;
    for seq in 1..=total {
        // The column and Change hold it as PostgreSQL's bigint.
        let seq_value = i64::try_from(seq)?;
        let due = start + Duration::from_secs_f64((seq - 1) as f64 / args.rate as f64);
        let now = tokio::time::Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else {
            max_behind = max_behind.max(now - due);
        }
        if seq == warm + 1 {
            hist_at_window = Some(prom::buckets(&prom::scrape(&admin)?, PROPAGATION));
        }
        let row = i32::try_from((seq - 1) % rows)? + 1;
        let issued_us = now_us();
        let mut tx = pg.begin().await.context("BEGIN")?;
        let done = sqlx::query(AssertSqlSafe(update.as_str()))
            .bind(seq_value)
            .bind(row)
            .execute(&mut *tx)
            .await
            .context("UPDATE")?;
        if done.rows_affected() != 1 {
            bail!("the update of row {row} changed {} rows", done.rows_affected());
        }
        tx.commit().await.context("COMMIT")?;
        changes.push(Change {
            seq: seq_value,
            row,
            issued_us,
            committed_us: now_us(),
        });
        if seq.is_multiple_of(args.rate * 5) {
            eprintln!("[db-probe] {seq} / {total} changes");
        }
        if let Ok(Some(status)) = daemon.0.try_wait() {
            bail!(
                "the daemon exited during the run ({status}; log {})",
                log_path.display()
            );
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let measured = &changes[usize::try_from(warm)?..];
    let window_s =
        (measured.last().map_or(0, |c| c.committed_us) - measured.first().map_or(0, |c| c.issued_us)) as f64 / 1e6;

    // 6. Wait for the last bumps and records, at most the loss timeout.
    let deadline = Instant::now() + Duration::from_millis(args.timeout_ms + 200);
    loop {
        let done_redis = {
            let n = notified.lock().expect("notified");
            measured
                .iter()
                .all(|c| match_notification(c, &n, rows, &changes, args.timeout_ms).is_some())
        };
        let done_kafka = {
            let s = seen.lock().expect("seen");
            measured.iter().all(|c| s.contains_key(&c.seq))
        };
        if (done_redis && done_kafka) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The daemon records its histogram right after Redis acknowledged.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hist_after = prom::buckets(&prom::scrape(&admin)?, PROPAGATION);
    let load_after = stats::load_average();
    stop.store(true, Ordering::Relaxed);
    listener.abort();
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    drop(daemon);

    // 7. Figures.
    let notified = std::mem::take(&mut *notified.lock().expect("notified"));
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let mut to_redis = Vec::new();
    let mut to_kafka = Vec::new();
    let mut kafka_to_redis = Vec::new();
    let mut to_debezium = Vec::new();
    let mut debezium_to_kafka = Vec::new();
    let mut source_to_commit = Vec::new();
    let mut kafka_to_reader = Vec::new();
    let mut lost = Vec::new();
    let mut lost_kafka = 0usize;
    for c in measured {
        let bump = match_notification(c, &notified, rows, &changes, args.timeout_ms);
        match bump {
            Some(at) => to_redis.push(ms(at - c.committed_us)),
            None => lost.push(c.seq),
        }
        let Some(s) = seen.get(&c.seq) else {
            lost_kafka += 1;
            continue;
        };
        let kafka_us = s.kafka_ts_ms * 1000;
        to_kafka.push(ms(kafka_us - c.committed_us));
        kafka_to_reader.push(ms(s.received_us - kafka_us));
        if let Some(at) = bump {
            kafka_to_redis.push(ms(at - kafka_us));
        }
        if let Some(d) = s.debezium_us {
            to_debezium.push(ms(d - c.committed_us));
            debezium_to_kafka.push(ms(kafka_us - d));
        }
        if let Some(src) = s.source_us {
            source_to_commit.push(ms(c.committed_us - src));
        }
    }
    let daemon_hist = match hist_at_window {
        Some(at_window) => {
            let delta = prom::bucket_delta(&at_window, &hist_after);
            let q = |q| prom::histogram_quantile(q, &delta).map(|s| s * 1000.0);
            json!({"samples": delta.last().map_or(0.0, |b| b.1), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999)})
        }
        None => Value::Null,
    };
    let out = json!({
        "rate": args.rate,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "rows": rows,
        "timeout_ms": args.timeout_ms,
        "count": measured.len(),
        "achieved_rate": measured.len() as f64 / window_s.max(1e-9),
        "all_changes_s": elapsed,
        "max_behind_schedule_ms": max_behind.as_secs_f64() * 1000.0,
        "lost": lost.len(),
        "lost_seqs": lost.iter().take(20).collect::<Vec<_>>(),
        "missing_kafka_records": lost_kafka,
        "commit_to_redis_ms": summary(&mut to_redis),
        "commit_to_kafka_ms": summary(&mut to_kafka),
        "kafka_to_redis_ms": summary(&mut kafka_to_redis),
        "split": {
            "commit_to_debezium_ms": summary(&mut to_debezium),
            "debezium_to_kafka_ms": summary(&mut debezium_to_kafka),
            "pg_commit_to_client_commit_ms": summary(&mut source_to_commit),
            "kafka_to_second_consumer_ms": summary(&mut kafka_to_reader),
        },
        "commit_to_kafka_histogram_50ms": histogram(&to_kafka, 50.0),
        "daemon_propagation_histogram": daemon_hist,
        "load_average_before": load_before,
        "load_average_after": load_after,
    });
    println!("{out}");
    Ok(lost.len())
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// Sorts `v` and gives count, p50/p90/p99/p99.9, min and max.
fn summary(v: &mut [f64]) -> Value {
    v.sort_by(f64::total_cmp);
    let p = |q| stats::percentile(v, q);
    json!({
        "count": v.len(), "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999),
        "min": v.first(), "max": v.last(),
    })
}

/// Counts per bucket of `width` ms ([lower bound, count]; sorted input).
// The bucket cast: x is a latency in ms (finite, far below 2^63 * width), so
// floor(x / width) is a whole number well inside i64.
#[allow(clippy::cast_possible_truncation)]
fn histogram(sorted: &[f64], width: f64) -> Value {
    let mut buckets: Vec<(i64, usize)> = Vec::new();
    for &x in sorted {
        let b = (x / width).floor() as i64;
        match buckets.last_mut() {
            Some((last, n)) if *last == b => *n += 1,
            _ => buckets.push((b, 1)),
        }
    }
    json!(buckets
        .into_iter()
        .map(|(b, n)| json!([b as f64 * width, n]))
        .collect::<Vec<_>>())
}

/// The first notification of the change's row after the change was issued,
/// before the row's next change was issued and within the loss timeout.
fn match_notification(
    c: &Change,
    notified: &HashMap<i32, Vec<i64>>,
    rows: u64,
    changes: &[Change],
    timeout_ms: u64,
) -> Option<i64> {
    let next_issued = changes
        .get(usize::try_from(c.seq - 1).expect("seq starts at 1") + usize::try_from(rows).expect("rows fits usize"))
        .map_or(i64::MAX, |n| n.issued_us);
    let limit = next_issued.min(
        c.committed_us
            .saturating_add(i64::try_from(timeout_ms.saturating_mul(1000)).unwrap_or(i64::MAX)),
    );
    notified
        .get(&c.row)?
        .iter()
        .copied()
        .filter(|&at| at >= c.issued_us && at < limit)
        .min()
}

/// The current flags plus K (keyspace channel) and h (hash commands),
/// keeping whatever else the server already publishes.
fn with_hash_keyspace_events(current: &str) -> String {
    let mut flags = current.to_owned();
    if !flags.contains('K') {
        flags.push('K');
    }
    // 'A' already includes the hash class.
    if !flags.contains('h') && !flags.contains('A') {
        flags.push('h');
    }
    flags
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

fn daemon_config(args: &Args, names: &Names, admin: &str) -> String {
    format!(
        r#"# Generated by db-probe for one run.
[source]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[source.librdkafka]
"client.id" = "cdc-db-probe-daemon"

[redis]
url = "{redis}"
version_prefix = "{prefix}"
version_ttl = "1h"

[admin]
listen = "{admin}"

[[entity]]
table = "public.{table}"
namespace = "dbprobe-{run}"
# strong: every change is flushed to Redis at once (the latency case).
consistency = "strong"
max_cache_ttl = "10m"
# One key per row, from the primary key only (REPLICA IDENTITY DEFAULT suffices).
keys = ["dbprobe:{run}:{{id}}"]
"#,
        brokers = args.brokers,
        group = names.group,
        topic = names.topic,
        redis = args.redis_url,
        prefix = args.prefix,
        table = names.table,
        run = names.run,
    )
}

/// A port to hand the daemon: `requested` when it is free now, else any
/// free one when `requested` is 0. The daemon binds it a moment later, and
/// `verify_own_admin` then checks that it was the daemon that got it.
fn free_port(requested: u16) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", requested))
        .with_context(|| format!("admin port {requested} is not free (choose another with --admin-port, or 0)"))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until /healthz answers on `port` and checks, through /proc, that
/// the listening socket belongs to our daemon's process, and that the answer
/// is a cdc-invalidator's (its build-info metric).
fn verify_own_admin(daemon: &mut Daemon, port: u16, log: &Path, timeout: Duration) -> anyhow::Result<()> {
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = daemon.0.try_wait()? {
            bail!("the daemon exited at start ({status}); its log: {}", log.display());
        }
        if let Ok((200, _)) = prom::http_get(&addr, "/healthz") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the daemon's admin on {addr} did not answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = daemon.0.id();
    match listener_pid(port) {
        Some(holder) if holder == pid => {}
        Some(holder) => bail!("port {port} answers, but process {holder} holds it, not our daemon (pid {pid})"),
        None => bail!("cannot tell through /proc which process listens on port {port}"),
    }
    let samples = prom::scrape(&addr)?;
    if !samples.iter().any(|s| s.name == BUILD_INFO) {
        bail!("{addr}/metrics has no {BUILD_INFO}: not a cdc-invalidator");
    }
    Ok(())
}

/// The process listening on loopback TCP `port`: the socket's inode from
/// /proc/net/tcp, then the process with that inode among its fds.
fn listener_pid(port: u16) -> Option<u32> {
    let suffix = format!(":{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Field 3 is the state; 0A is LISTEN.
        (f.len() > 9 && f[1].ends_with(&suffix) && f[3] == "0A").then(|| f[9].to_owned())
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == socket.as_str()))
            .then_some(pid)
    })
}

/// Waits until the daemon reports at least `events` applied events (the
/// inserts), so the measured changes meet a warm, caught-up pipeline.
async fn wait_applied(daemon: &mut Daemon, admin: &str, events: f64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = 0.0;
    while Instant::now() < deadline {
        if let Some(status) = daemon.0.try_wait()? {
            bail!("the daemon exited ({status})");
        }
        if let Ok(samples) = prom::scrape(admin) {
            last = samples.iter().filter(|s| s.name == EVENTS).map(|s| s.value).sum();
            if last >= events {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the daemon handled {last} of the {events} inserts within {timeout:?}")
}

fn kafka_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

/// Waits until Debezium's topic for the table exists and holds `records`
/// (the inserts); returns its partition count.
async fn wait_for_topic(brokers: &str, topic: &str, records: i64, timeout: Duration) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = kafka_config(brokers)
        .set("group.id", "cdc-db-probe-metadata")
        // Metadata requests must not create the topic before Debezium does
        // (it creates it with the connector's topic.creation settings).
        .set("allow.auto.create.topics", "false")
        .create()
        .context("kafka client")?;
    let deadline = Instant::now() + timeout;
    let mut held = 0;
    while Instant::now() < deadline {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md
                .topics()
                .first()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            {
                held = 0;
                for p in t.partitions() {
                    if let Ok((low, high)) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5)) {
                        held += high - low;
                    }
                }
                if held >= records {
                    return Ok(i32::try_from(t.partitions().len())?);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "topic {topic:?} held {held} of {records} insert records after {timeout:?}: \
         is the Debezium connector running (scripts/stack status)?"
    )
}

/// The second consumer: assigned every partition at its current end, no
/// group membership, short fetch waits so its own receive time means little.
fn spawn_reader(
    brokers: &str,
    topic: &str,
    partitions: i32,
    seen: Arc<Mutex<HashMap<i64, Seen>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = kafka_config(brokers)
        .set("group.id", "cdc-db-probe-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "5")
        .set("allow.auto.create.topics", "false")
        .create()
        .context("kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl).context("assign")?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let received_us = now_us();
            let Some(payload) = msg.payload() else { continue };
            let Some((seq, debezium_us, source_us)) = parse_change(payload) else {
                continue;
            };
            let kafka_ts_ms = msg.timestamp().to_millis().unwrap_or(0);
            seen.lock().expect("seen").entry(seq).or_insert(Seen {
                kafka_ts_ms,
                received_us,
                debezium_us,
                source_us,
            });
        }
    }))
}

/// `after.seq`, Debezium's processing time and the source commit time (µs)
/// of a Debezium JSON change, with or without the schema wrapper.
fn parse_change(payload: &[u8]) -> Option<(i64, Option<i64>, Option<i64>)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let p = v.get("payload").filter(|p| p.is_object()).unwrap_or(&v);
    let seq = p.get("after")?.get("seq")?.as_i64()?;
    let micros = |o: &Value| {
        o.get("ts_us")
            .and_then(Value::as_i64)
            .or_else(|| o.get("ts_ms").and_then(Value::as_i64).map(|m| m * 1000))
    };
    Some((seq, micros(p), p.get("source").and_then(micros)))
}

/// Undoes what the run set up, each step attempted whatever the others did.
async fn cleanup(args: &Args, names: &Names, undo: &Undo) -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();
    if let Some(before) = &undo.notify_before {
        let r: anyhow::Result<()> = async {
            let client = redis::Client::open(args.redis_url.as_str())?;
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(before)
                .query_async::<()>(&mut c)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            errors.push(format!("restore notify-keyspace-events: {e}"));
        }
    }
    // The version records and the namespace record of this run.
    let r: anyhow::Result<()> = async {
        let client = redis::Client::open(args.redis_url.as_str())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        use redis::AsyncCommands as _;
        let mut keys: Vec<String> = Vec::new();
        for pattern in [
            format!("{}*", names.key_prefix),
            format!("{}ns:dbprobe-{}", args.prefix, names.run),
        ] {
            let mut iter: redis::AsyncIter<String> = c.scan_match(&pattern).await?;
            while let Some(k) = iter.next_item().await {
                keys.push(k?);
            }
        }
        for chunk in keys.chunks(500) {
            redis::cmd("DEL").arg(chunk).query_async::<()>(&mut c).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        errors.push(format!("delete the version records: {e}"));
    }
    if undo.table_created {
        let r: anyhow::Result<()> = async {
            let mut pg = PgConnection::connect(&args.pg_url).await?;
            sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS public.{}", names.table)))
                .execute(&mut pg)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            errors.push(format!("drop table public.{}: {e}", names.table));
        }
    }
    if undo.topic_seen || undo.group_used {
        let r: anyhow::Result<()> = async {
            let admin: AdminClient<DefaultClientContext> = kafka_config(&args.brokers).create()?;
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            if undo.group_used {
                // A group that never committed is not there to delete: fine.
                let _ = admin.delete_groups(&[names.group.as_str()], &opts).await;
            }
            if undo.topic_seen {
                for result in admin.delete_topics(&[names.topic.as_str()], &opts).await? {
                    if let Err((name, code)) = result {
                        anyhow::bail!("delete topic {name:?}: {code}");
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            errors.push(format!("kafka: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64, row: i32, issued_us: i64) -> Change {
        Change {
            seq,
            row,
            issued_us,
            committed_us: issued_us + 500,
        }
    }

    /// Two rows, one change per ms: row 1 changes at 0 and 2 ms.
    #[test]
    fn a_notification_counts_only_between_issue_and_the_rows_next_change() {
        let changes = vec![change(1, 1, 0), change(2, 2, 1000), change(3, 1, 2000)];
        let mut notified = HashMap::new();
        // Row 1: one bump before change 1 (an insert's), one after change 3.
        notified.insert(1, vec![-10, 2600]);
        notified.insert(2, vec![1700, 1800]);
        assert_eq!(match_notification(&changes[0], &notified, 2, &changes, 10), None);
        assert_eq!(match_notification(&changes[1], &notified, 2, &changes, 10), Some(1700));
        assert_eq!(match_notification(&changes[2], &notified, 2, &changes, 10), Some(2600));
        // Past the loss timeout (1 ms after the commit at 2.5 ms): lost.
        assert_eq!(match_notification(&changes[2], &notified, 2, &changes, 0), None);
    }

    #[test]
    fn keyspace_flags_are_added_not_replaced() {
        assert_eq!(with_hash_keyspace_events(""), "Kh");
        assert_eq!(with_hash_keyspace_events("Ex"), "ExKh");
        assert_eq!(with_hash_keyspace_events("AK"), "AK");
    }

    #[test]
    fn debezium_changes_parse_with_and_without_the_wrapper() {
        let wrapped = br#"{"schema":{},"payload":{"after":{"id":3,"seq":42},"ts_us":1700000000123456,"source":{"ts_ms":1700000000100}}}"#;
        assert_eq!(
            parse_change(wrapped),
            Some((42, Some(1_700_000_000_123_456), Some(1_700_000_000_100_000)))
        );
        let flat = br#"{"after":{"seq":7},"ts_ms":5}"#;
        assert_eq!(parse_change(flat), Some((7, Some(5000), None)));
        assert_eq!(parse_change(br#"{"payload":{"before":{"seq":1},"after":null}}"#), None);
    }

    #[test]
    fn passwords_do_not_reach_messages() {
        assert_eq!(redact("postgres://cdc:secret@h:1/db"), "postgres://***@h:1/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
