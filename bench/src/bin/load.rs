//! Loads a fresh topic with N Debezium-shaped change events of
//! `public.bench_items` as fast as the broker takes them, and optionally
//! writes the daemon config that matches (key templates per row).
//!
//!   load --topic-prefix bench_x --events 200000 --rows 50000 --zipf 0.99 \
//!        --partitions 3 --keys-per-row 3 --config-out run.toml
//!
//! Prints one JSON object on stdout; progress on stderr.

// The bench harness (this library and its binaries) is an operator tool run
// by bench/run, never linked by the daemon or an application: a panic on a
// broken setup or a malformed scrape is the run failing loudly, which is what
// it should do. The cast lints still hold (Cargo.toml): a wrong cast here is a
// wrong number in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use anyhow::Context;
use cdc_bench::daemon_config::DaemonConfig;
use cdc_bench::gen::{Generator, MalformedShare, Mix};
use cdc_bench::{kafka, now_us};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Debezium topic.prefix: the topic is <prefix>.public.bench_items.
    #[arg(long)]
    topic_prefix: String,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Records to produce, tombstones included.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Distinct rows the changes fall on.
    #[arg(long, default_value_t = 50_000)]
    rows: usize,
    /// Zipf exponent of the row popularity (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    zipf: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Percent of inserts, deletes (each followed by a tombstone) and, of the
    /// updates, moves to another category.
    #[arg(long, default_value_t = 10)]
    create_pct: u32,
    #[arg(long, default_value_t = 5)]
    delete_pct: u32,
    #[arg(long, default_value_t = 5)]
    move_pct: u32,
    /// Do not create the topic (it exists already).
    #[arg(long)]
    no_create: bool,
    /// Write the matching daemon config here.
    #[arg(long)]
    config_out: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 3)]
    keys_per_row: usize,
    #[arg(long, default_value = "redis://127.0.0.1:6390")]
    redis_url: String,
    #[arg(long, default_value = "127.0.0.1:9811")]
    admin_listen: String,
    #[arg(long, default_value = "cdc-bench")]
    group_id: String,
    /// Write Avro records (Confluent framing) instead of JSON, and their
    /// schemas as <id>.avsc files into this directory (named in the config).
    #[arg(long)]
    avro_schemas_dir: Option<std::path::PathBuf>,
    /// Consistency of the entity in the written config: strong or eventual.
    #[arg(long, default_value = "strong")]
    consistency: String,
    /// Percent of the records that are malformed (JSON only): truncated
    /// JSON, a wrong table, a null key in turn, each a dead letter for the
    /// daemon. Counted in the output's `malformed`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    malformed_pct: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.malformed_pct == 0 || args.avro_schemas_dir.is_none(),
        "--malformed-pct is for JSON topics only"
    );
    let mix = Mix {
        create_pct: args.create_pct,
        delete_pct: args.delete_pct,
        move_pct: args.move_pct,
        tombstones: true,
    };
    let mut generator = Generator::new(
        &args.topic_prefix,
        args.partitions,
        args.rows,
        args.zipf,
        mix,
        args.seed,
    );
    if let Some(dir) = &args.avro_schemas_dir {
        generator = generator.with_avro()?;
        generator.avro().expect("just set").write_schemas(dir)?;
    }
    let topic = generator.topic();
    if !args.no_create {
        kafka::create_topic(&args.brokers, &topic, args.partitions).await?;
    }
    if let Some(path) = &args.config_out {
        let text = DaemonConfig {
            brokers: &args.brokers,
            group_id: &args.group_id,
            topic: &topic,
            redis_url: &args.redis_url,
            admin_listen: &args.admin_listen,
            keys_per_row: args.keys_per_row,
            consistency: &args.consistency,
            avro_schemas_dir: args.avro_schemas_dir.as_deref().and_then(|p| p.to_str()),
            librdkafka: &[],
            wait_replicas: 0,
            dead_letters: None,
            cluster: false,
            route_workers: None,
        }
        .render();
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        // Throughput settings for loading; the probe produces differently.
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("compression.type", "none")
        .create()
        .context("producer")?;

    let started = Instant::now();
    let mut bytes = 0u64;
    let mut last_report = Instant::now();
    let mut malformed = MalformedShare::new(args.malformed_pct);
    for i in 0..args.events {
        let kind = if generator.tombstone_owed() {
            None
        } else {
            malformed.take(i)
        };
        let record = match kind {
            Some(kind) => generator.next_malformed(kind, now_us()),
            None => generator.next(now_us()),
        };
        bytes += (record.key.len() + record.value.as_ref().map_or(0, Vec::len)) as u64;
        let mut base: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&topic).partition(record.partition).key(&record.key[..]);
        if let Some(v) = &record.value {
            base = base.payload(&v[..]);
        }
        kafka::send_when_queued(&producer, base, Duration::from_millis(5)).context("produce")?;
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "[load] {i}/{} records ({:.0}/s)",
                args.events,
                i as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    producer.flush(Duration::from_secs(120)).context("flush")?;
    let seconds = started.elapsed().as_secs_f64();
    let ends = kafka::end_offsets(&args.brokers, &topic)?;
    let total: i64 = ends.iter().sum();
    anyhow::ensure!(
        u64::try_from(total).is_ok_and(|total| total >= args.events),
        "only {total} of {} records reached the topic",
        args.events
    );
    let out = serde_json::json!({
        "topic": topic,
        "partitions": args.partitions,
        "events": args.events,
        "rows": args.rows,
        "zipf": args.zipf,
        "keys_per_row": args.keys_per_row,
        "format": if args.avro_schemas_dir.is_some() { "avro" } else { "json" },
        "bytes": bytes,
        "mean_record_bytes": bytes as f64 / args.events.max(1) as f64,
        "seconds": seconds,
        "produced_per_second": args.events as f64 / seconds,
        "end_offsets": ends,
        "malformed": malformed.total(),
        "malformed_by_kind": malformed.produced,
    });
    println!("{out}");
    Ok(())
}
