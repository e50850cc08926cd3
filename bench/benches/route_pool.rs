//! Decode-and-route throughput of the consumer stage's route pool
//! (`cdc_invalidator::pipeline::RoutePool`, `plan.route_workers`): N records
//! from the benchmark generator (JSON with schemas, as `bench/run` produces
//! them, three partitions) routed in chunks of 64 per thread, as the consumer
//! stage polls them, on a single-threaded runtime (the stage is one task).
//! Prints one line per run: the threads, the records, wall and CPU time
//! (this process, every thread) and the rate. Pin it to cores with taskset:
//!
//!   cargo bench -p cdc-bench --bench route_pool --no-run
//!   taskset -c 0,1 target/release/deps/route_pool-<hash> --threads 2 --records 200000
//!
//! BENCHMARKS.md, "Routing on more than one core", has the figures and the
//! method.

// A benchmark, run by hand: a panic on a broken setup is the run failing
// loudly, which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_bench::daemon_config::DaemonConfig;
use cdc_bench::gen::{Generator, Mix};
use cdc_invalidator::event::KafkaRecord;
use cdc_invalidator::pipeline::{now_us, Prerouted, RoutePool};

// The consumer stage's chunk: 64 records per routing thread.
const CHUNK_PER_THREAD: usize = 64;

struct Args {
    threads: usize,
    records: usize,
}

fn args() -> Args {
    let mut parsed = Args {
        threads: 1,
        records: 200_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => parsed.threads = args.next().unwrap().parse().unwrap(),
            "--records" => parsed.records = args.next().unwrap().parse().unwrap(),
            // cargo bench passes --bench; nothing else is expected.
            "--bench" => {}
            other => panic!("unknown argument {other:?}: expected --threads N --records N"),
        }
    }
    parsed
}

/// User plus system CPU time of this process, all threads.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let of = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap()) + Duration::from_micros(u64::try_from(t.tv_usec).unwrap())
    };
    of(usage.ru_utime) + of(usage.ru_stime)
}

fn records(count: usize, now_us: i64) -> Vec<KafkaRecord> {
    let mut generator = Generator::new("bench", 3, 100_000, 0.0, Mix::default(), 7);
    let topic = generator.topic();
    let mut next_offset = [0_i64; 3];
    (0..count)
        .map(|_| {
            let record = generator.next(now_us);
            let offset = &mut next_offset[usize::try_from(record.partition).unwrap()];
            *offset += 1;
            record.into_kafka(&topic, *offset - 1, Some(now_us / 1000))
        })
        .collect()
}

fn main() {
    let Args {
        threads,
        records: count,
    } = args();
    let settings = Arc::new(DaemonConfig::parse_only().settings().expect("config"));
    // Committed now: no record takes the cheaper moot path.
    let now = now_us();
    let input = records(count, now);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut pool = RoutePool::new(threads, settings, false, None).unwrap();
    let chunk = CHUNK_PER_THREAD * threads;
    // Warm-up: the workers' first wake and the allocator's first pages.
    let warm: Vec<KafkaRecord> = input.iter().take(chunk).cloned().collect();
    runtime.block_on(pool.route(warm, now));
    let mut chunks = Vec::new();
    let mut input = input.into_iter().peekable();
    while input.peek().is_some() {
        chunks.push(input.by_ref().take(chunk).collect::<Vec<_>>());
    }
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut routed = 0_usize;
    runtime.block_on(async {
        for records in chunks {
            let out: Vec<Prerouted> = pool.route(records, now).await;
            routed += out.iter().filter(|p| p.route.is_some()).count();
        }
    });
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    assert_eq!(routed, count, "every record routed ahead");
    println!(
        "threads={threads} records={count} wall_s={:.3} cpu_s={:.3} records_per_s={:.0} cpu_us_per_record={:.2}",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        count as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / count as f64,
    );
}
