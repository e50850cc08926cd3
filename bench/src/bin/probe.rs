//! The latency probe: produces change events in real time at a steady rate
//! for a bounded duration to a topic the daemon consumes, and measures, per
//! event, Kafka append time (the broker's LogAppendTime of the record, from
//! the delivery report) to Redis acknowledgement (the keyspace notification
//! of the HSET the daemon's bump script makes on `ver:item:<id>`).
//!
//! Every event updates its own row (id = position in the run), so each
//! notification names exactly one event. Redis must be the bench's private
//! server: the probe turns on `notify-keyspace-events Kh` there and off again.
//!
//!   probe --topic T --rate 5000 --duration-s 20 --redis-url redis://127.0.0.1:6390 \
//!         --metrics 127.0.0.1:9811
//!
//! Prints one JSON object: percentiles of the external measurement and of
//! the daemon's own `cdc_invalidator_invalidation_propagation_seconds`
//! histogram over the same window.

// The bench harness (this library and its binaries) is an operator tool run
// by bench/run, never linked by the daemon or an application: a panic on a
// broken setup or a malformed scrape is the run failing loudly, which is what
// it should do. The cast lints still hold (Cargo.toml): a wrong cast here is a
// wrong number in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cdc_bench::gen::{Generator, Mix};
use cdc_bench::{kafka, now_us, prom, stats};
use clap::Parser;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

const PROPAGATION: &str = "cdc_invalidator_invalidation_propagation_seconds";

/// What the producing thread hands back: the send time of each event (µs,
/// index = row id - 1) and the daemon's histogram buckets at the start of
/// the measured window.
type Produced = (Vec<i64>, Vec<(f64, f64)>);

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic prefix the topic was created with (<prefix>.public.bench_items).
    #[arg(long)]
    topic_prefix: String,
    /// Events per second.
    #[arg(long)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Produced at the same rate before the measured window and left out of
    /// every figure: the daemon's first fetches and batches are not steady state.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    #[arg(long, default_value = "redis://127.0.0.1:6390")]
    redis_url: String,
    #[arg(long, default_value = "ver:")]
    prefix: String,
    /// The daemon's admin address, for its propagation histogram.
    #[arg(long)]
    metrics: Option<String>,
    /// How long to wait for the last notifications after producing. Long:
    /// when the daemon falls behind, its backlog must drain for the slowest
    /// events to be measured at all (events never acknowledged are reported
    /// as missing, and the percentiles are then lower bounds).
    #[arg(long, default_value_t = 120)]
    grace_s: u64,
}

/// Append times from delivery reports: (row id, broker timestamp ms, was it LogAppendTime).
#[derive(Default, Clone)]
struct Deliveries(Arc<Mutex<Vec<(u64, i64, bool)>>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<u64>) {
        match result {
            Ok(message) => {
                let (ms, log_append) = match message.timestamp() {
                    Timestamp::LogAppendTime(ms) => (ms, true),
                    Timestamp::CreateTime(ms) => (ms, false),
                    Timestamp::NotAvailable => (-1, false),
                };
                self.0.lock().expect("deliveries").push((*id, ms, log_append));
            }
            Err((e, _)) => eprintln!("[probe] delivery of row {id} failed: {e}"),
        }
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = cdc_bench::gen::topic_name(&args.topic_prefix);
    let partitions = i32::try_from(kafka::end_offsets(&args.brokers, &topic)?.len())?;
    let warm = args.rate * args.warmup_s;
    let total = warm + args.rate * args.duration_s;
    let (warm_len, total_len) = (usize::try_from(warm)?, usize::try_from(total)?);

    // Redis acknowledgements: time of the first hset notification per row.
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Kh")
        .query_async::<()>(&mut admin)
        .await
        .context("CONFIG SET notify-keyspace-events")?;
    let acked: Arc<Mutex<HashMap<u64, i64>>> = Arc::default();
    let mut pubsub = client.get_async_pubsub().await?;
    let channel_prefix = format!("__keyspace@0__:{}item:", args.prefix);
    pubsub.psubscribe(format!("{channel_prefix}*")).await?;
    let listener = {
        let acked = acked.clone();
        let channel_prefix = channel_prefix.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let at = now_us();
                // item:<id> only; item:<id>:viewN records are other targets.
                if let Some(id) = msg
                    .get_channel_name()
                    .strip_prefix(channel_prefix.as_str())
                    .and_then(|rest| rest.parse::<u64>().ok())
                {
                    acked.lock().expect("acked").entry(id).or_insert(at);
                }
            }
        })
    };

    let deliveries = Deliveries::default();
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        // Send at once: the probe's clock starts at the broker append, but a
        // short linger keeps the daemon's own histogram comparable.
        .set("linger.ms", "1")
        .create_with_context(deliveries.clone())
        .context("producer")?;

    // Produce in real time: at every tick, whatever is due by the clock.
    let (sent_at, before) = tokio::task::spawn_blocking({
        let topic = topic.clone();
        let rate = args.rate;
        let prefix = args.topic_prefix.clone();
        let metrics = args.metrics.clone();
        move || -> anyhow::Result<Produced> {
            let mut before = Vec::new();
            let mut generator = Generator::new(&prefix, partitions, 1000, 0.0, Mix::default(), 5);
            let mut sent_at = Vec::with_capacity(total_len);
            let start = Instant::now();
            let mut last_report = Instant::now();
            while (sent_at.len() as u64) < total {
                // Elapsed seconds times the rate: finite and not negative; the
                // float-to-int cast saturates and min(total) bounds it anyway.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while (sent_at.len() as u64) < due {
                    let id = sent_at.len() as u64 + 1;
                    if id == warm + 1 {
                        // The measured window starts: the daemon's histogram from here.
                        if let Some(addr) = &metrics {
                            before = prom::buckets(&prom::scrape(addr)?, PROPAGATION);
                        }
                    }
                    let now = now_us();
                    let record = generator.unique_update(id, now);
                    let value = record.value.expect("updates have values");
                    let pending = BaseRecord::with_opaque_to(&topic, Box::new(id))
                        .partition(record.partition)
                        .key(&record.key[..])
                        .payload(&value[..]);
                    kafka::send_when_queued(&producer, pending, Duration::from_millis(1)).context("produce")?;
                    sent_at.push(now);
                }
                if last_report.elapsed() >= Duration::from_secs(5) {
                    eprintln!("[probe] {} / {total} events at {rate}/s", sent_at.len());
                    last_report = Instant::now();
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            let achieved = total as f64 / start.elapsed().as_secs_f64();
            eprintln!("[probe] produced {total} events at {achieved:.0}/s");
            producer.flush(Duration::from_secs(30)).context("flush")?;
            Ok((sent_at, before))
        }
    })
    .await??;
    let measured_sent = &sent_at[warm_len..];
    let produce_seconds =
        (measured_sent.last().copied().unwrap_or(0) - measured_sent.first().copied().unwrap_or(0)) as f64 / 1e6;

    let grace_end = Instant::now() + Duration::from_secs(args.grace_s);
    while acked.lock().expect("acked").len() < total_len && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The daemon records its histogram right after the acknowledgement.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let daemon = match &args.metrics {
        Some(addr) => {
            let after = prom::buckets(&prom::scrape(addr)?, PROPAGATION);
            let delta = prom::bucket_delta(&before, &after);
            let q = |q| prom::histogram_quantile(q, &delta).map(|s| s * 1000.0);
            serde_json::json!({
                "samples": delta.last().map_or(0.0, |b| b.1),
                "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999),
                "buckets": delta.iter().map(|(le, n)| serde_json::json!([if le.is_finite() { serde_json::json!(le) } else { serde_json::json!("+Inf") }, n])).collect::<Vec<_>>(),
            })
        }
        None => serde_json::Value::Null,
    };
    listener.abort();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query_async::<()>(&mut admin)
        .await?;

    let all_deliveries = std::mem::take(&mut *deliveries.0.lock().expect("deliveries"));
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    let missing_total = total_len - acked.len().min(total_len);
    let measured = total - warm;
    // Only the measured window counts.
    let deliveries: Vec<(u64, i64, bool)> = all_deliveries.into_iter().filter(|d| d.0 > warm).collect();
    if deliveries.iter().any(|d| !d.2) {
        bail!("records came back without LogAppendTime: the topic must be created with message.timestamp.type=LogAppendTime");
    }
    let mut append_to_ack = Vec::with_capacity(deliveries.len());
    let mut send_to_ack = Vec::with_capacity(deliveries.len());
    // The producer side alone (probe -> broker), for reading the other two.
    let mut send_to_append: Vec<f64> = deliveries
        .iter()
        .map(|&(id, append_ms, _)| {
            append_ms as f64 - sent_at[usize::try_from(id - 1).expect("an event id")] as f64 / 1000.0
        })
        .collect();
    send_to_append.sort_by(f64::total_cmp);
    for &(id, append_ms, _) in &deliveries {
        if let Some(&ack_us) = acked.get(&id) {
            append_to_ack.push((ack_us as f64 / 1000.0) - append_ms as f64);
            send_to_ack.push((ack_us - sent_at[usize::try_from(id - 1).expect("an event id")]) as f64 / 1000.0);
        }
    }
    append_to_ack.sort_by(f64::total_cmp);
    send_to_ack.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q| stats::percentile(v, q);
    let out = serde_json::json!({
        "rate": args.rate,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "events": measured,
        "achieved_rate": measured as f64 / produce_seconds.max(1e-9),
        "delivered": deliveries.len(),
        "acknowledged": append_to_ack.len(),
        "missing": total_len - warm_len - append_to_ack.len(),
        "missing_including_warmup": missing_total,
        "append_to_ack_ms": {
            "p50": pct(&append_to_ack, 0.5), "p99": pct(&append_to_ack, 0.99),
            "p999": pct(&append_to_ack, 0.999), "max": append_to_ack.last(),
            "min": append_to_ack.first(),
        },
        "send_to_ack_ms": {
            "p50": pct(&send_to_ack, 0.5), "p99": pct(&send_to_ack, 0.99),
            "p999": pct(&send_to_ack, 0.999), "max": send_to_ack.last(),
        },
        "send_to_append_ms": {
            "p50": pct(&send_to_append, 0.5), "p99": pct(&send_to_append, 0.99),
            "p999": pct(&send_to_append, 0.999), "max": send_to_append.last(),
        },
        "daemon_histogram": daemon,
    });
    println!("{out}");
    Ok(())
}
