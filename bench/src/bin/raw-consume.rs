//! The consume limit: an rdkafka consumer that reads a topic from the start
//! to its end offsets (taken when it starts) and does nothing else with the
//! records but count them. No group, no commits (partitions are assigned).
//!
//!   raw-consume --topic bench_x.public.bench_items
//!
//! Prints one JSON object: events, bytes, seconds from the first record to
//! the last, events/s, CPU seconds (getrusage, all threads) and peak RSS.

// The bench harness (this library and its binaries) is an operator tool run
// by bench/run, never linked by the daemon or an application: a panic on a
// broken setup or a malformed scrape is the run failing loudly, which is what
// it should do. The cast lints still hold (Cargo.toml): a wrong cast here is a
// wrong number in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cdc_bench::{kafka, stats};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// `base`: a BaseConsumer polled in a loop (the limit of librdkafka);
    /// `stream`: the daemon's way in, a StreamConsumer awaited on tokio with
    /// the daemon's consumer settings and a group subscription, each record
    /// copied out as the daemon's source does, and nothing else.
    #[arg(long, default_value = "base")]
    mode: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.mode == "stream" {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(stream(args));
    }
    let ends = kafka::end_offsets(&args.brokers, &args.topic)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "cdc-bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..i32::try_from(ends.len())? {
        tpl.add_partition_offset(&args.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let mut tally = Tally::new(ends, args.timeout_s);
    while !tally.done()? {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => tally.count(
                m.partition(),
                m.offset(),
                m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len),
            ),
            Some(Err(e)) => eprintln!("[raw-consume] consumer error: {e}"),
            None => {}
        }
    }
    println!("{}", tally.report()?);
    Ok(())
}

/// What a consume loop counted: records, their key and value bytes, the
/// next offset per partition against the end offsets, and when the first
/// record came.
struct Tally {
    ends: Vec<i64>,
    next: Vec<i64>,
    events: u64,
    bytes: u64,
    first: Option<Instant>,
    deadline: Instant,
}

impl Tally {
    fn new(ends: Vec<i64>, timeout_s: u64) -> Tally {
        Tally {
            next: vec![0; ends.len()],
            ends,
            events: 0,
            bytes: 0,
            first: None,
            deadline: Instant::now() + Duration::from_secs(timeout_s),
        }
    }

    /// Every partition read to its end offset; an error past the deadline.
    fn done(&self) -> anyhow::Result<bool> {
        if self.next.iter().zip(&self.ends).all(|(n, e)| n >= e) {
            return Ok(true);
        }
        if Instant::now() > self.deadline {
            let expected: i64 = self.ends.iter().sum();
            bail!("timed out after {} of {expected} records", self.events);
        }
        Ok(false)
    }

    fn count(&mut self, partition: i32, offset: i64, bytes: usize) {
        self.first.get_or_insert_with(Instant::now);
        self.events += 1;
        self.bytes += bytes as u64;
        let p = usize::try_from(partition).expect("a partition number from the broker");
        self.next[p] = self.next[p].max(offset + 1);
    }

    /// The printed figures: seconds from the first record, CPU and peak RSS.
    fn report(&self) -> anyhow::Result<serde_json::Value> {
        let seconds = self.first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let cpu = stats::self_cpu_seconds();
        Ok(serde_json::json!({
            "events": self.events,
            "bytes": self.bytes,
            "seconds": seconds,
            "events_per_second": self.events as f64 / seconds,
            "cpu_seconds": cpu,
            "cpu_seconds_per_million": cpu / self.events as f64 * 1e6,
            "peak_rss_mib": stats::peak_rss_mib(std::process::id())?,
        }))
    }
}

/// The daemon's consumer path without the daemon: same settings (the
/// daemon's `source::consumer`), same awaited `recv()`, same owned copy.
async fn stream(args: Args) -> anyhow::Result<()> {
    let ends = kafka::end_offsets(&args.brokers, &args.topic)?;
    // The daemon's default plan (its in-flight budget sizes the fetch queue).
    let parsed = cdc_bench::daemon_config::DaemonConfig {
        brokers: &args.brokers,
        group_id: "unused",
        topic: &args.topic,
        ..cdc_bench::daemon_config::DaemonConfig::parse_only()
    }
    .settings()?;
    let plan = parsed.plan;
    // The daemon's source settings for the same topic, in a group of its own.
    let mut settings = parsed.source;
    settings.group_id = format!("cdc-bench-raw-stream-{}-{}", std::process::id(), cdc_bench::now_us());
    let consumer = cdc_invalidator::source::consumer(&settings, &plan)?;
    consumer.subscribe(&[args.topic.as_str()])?;
    let mut tally = Tally::new(ends, args.timeout_s);
    while !tally.done()? {
        match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Ok(Ok(m)) => {
                // first is set when the record arrives, before the copy.
                let arrived = Instant::now();
                let record = cdc_invalidator::source::to_record(&m);
                tally.first.get_or_insert(arrived);
                tally.count(
                    record.partition,
                    record.offset,
                    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len),
                );
            }
            Ok(Err(e)) => eprintln!("[raw-consume] consumer error: {e}"),
            Err(_) => {}
        }
    }
    let mut out = tally.report()?;
    out["mode"] = "stream".into();
    println!("{out}");
    Ok(())
}
