//! Reads per second and latency percentiles of a cache hit through cdc-cache,
//! beside a plain GET of the same data key (the limit a reader can reach on
//! one connection), a bounded L1 hit and a tracking L1 hit; then the
//! tracking L1's staleness window: from a bump of the version record by
//! another connection to the first get serving the new version. Not a test:
//! figures for BENCHMARKS.md.
//!
//!     cargo bench -p cdc-cache --bench hit -- [--seconds 3] [--concurrency 32] [--bumps 200]
//!
//! Redis: CDC_REDIS_URL (default redis://127.0.0.1:6379). Each case runs
//! `concurrency` tasks on one multiplexed connection for `seconds`.

// A benchmark, run by hand: a panic on a broken setup is the run failing
// loudly, which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_cache::{Cache, CacheOptions, GetOptions, L1Options};

struct Figures {
    reads: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Figures {
    fn print(&mut self, name: &str) {
        self.latencies_us.sort_unstable();
        // q in 0..=1 (the figures below): a whole index in 0..len.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let at = |q: f64| self.latencies_us[((self.latencies_us.len() as f64 - 1.0) * q) as usize];
        println!(
            "{name:<28} {:>9.0} reads/s   p50 {:>6} µs   p99 {:>6} µs   p99.9 {:>6} µs",
            self.reads as f64 / self.elapsed.as_secs_f64(),
            at(0.50),
            at(0.99),
            at(0.999),
        );
    }
}

async fn run<F, Fut>(seconds: u64, concurrency: usize, read: F) -> Figures
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let read = Arc::new(read);
    // Warm up: connections, scripts, branch predictors.
    for _ in 0..1000 {
        read().await;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let read = read.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(100_000);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    read().await;
                    latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                    // An L1 hit never waits: without this, readers would
                    // keep the connection's own task from running.
                    tokio::task::yield_now().await;
                }
                latencies
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.expect("bench task"));
    }
    Figures {
        reads: latencies_us.len(),
        elapsed: started.elapsed(),
        latencies_us,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seconds = arg("--seconds", 3);
    let bumps = usize::try_from(arg("--bumps", 200)).expect("--bumps fits usize");
    let concurrency = usize::try_from(arg("--concurrency", 32)).expect("--concurrency fits usize");
    let url = std::env::var("CDC_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("bench{}:", std::process::id());
    let key = format!("{prefix}product:1");
    let ttl = Duration::from_secs(600);
    let value = vec![b'x'; 512];

    let cache = Cache::connect(
        &url,
        CacheOptions {
            prefix: prefix.clone(),
            // A hit must stay a hit for the whole run.
            beta: 0.0,
            ..CacheOptions::default()
        },
    )
    .await?;
    let v = value.clone();
    let filled = cache
        .get(
            &key,
            GetOptions::new(ttl, move || async move { Ok::<_, std::io::Error>(v) }),
        )
        .await?;
    println!(
        "{concurrency} concurrent readers, {seconds} s per case, 512-byte value, data key {}",
        filled.data_key
    );

    let client = redis::Client::open(url.as_str())?;
    let conn = client.get_multiplexed_async_connection().await?;
    let data_key = filled.data_key.clone();
    run(seconds, concurrency, move || {
        let mut conn = conn.clone();
        let data_key = data_key.clone();
        async move {
            let got: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&data_key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            assert!(got.is_some());
        }
    })
    .await
    .print("plain GET (redis-rs)");

    let c = cache.clone();
    let k = key.clone();
    run(seconds, concurrency, move || {
        let (c, k) = (c.clone(), k.clone());
        async move {
            let got = c
                .get(
                    &k,
                    GetOptions::new(ttl, || async { Err::<Vec<u8>, _>(std::io::Error::other("a miss")) }),
                )
                .await
                .expect("hit");
            assert!(got.hit);
        }
    })
    .await
    .print("cdc-cache get, Redis hit");

    let l1 = Cache::connect(
        &url,
        CacheOptions {
            prefix: prefix.clone(),
            beta: 0.0,
            l1: Some(L1Options::bounded(Duration::from_secs(1)).max_entries(1000)),
            ..CacheOptions::default()
        },
    )
    .await?;
    let k = key.clone();
    run(seconds, concurrency, move || {
        let (c, k) = (l1.clone(), k.clone());
        async move {
            let got = c
                .get(
                    &k,
                    GetOptions::new(ttl, || async { Err::<Vec<u8>, _>(std::io::Error::other("a miss")) })
                        .eventual(Duration::from_secs(1)),
                )
                .await
                .expect("hit");
            assert!(got.hit);
        }
    })
    .await
    .print("cdc-cache get, L1 hit (1 s)");

    let tracking = Cache::connect(
        &url,
        CacheOptions {
            prefix: prefix.clone(),
            beta: 0.0,
            l1: Some(L1Options::tracking().max_entries(1000)),
            ..CacheOptions::default()
        },
    )
    .await?;
    let miss = || async { Err::<Vec<u8>, _>(std::io::Error::other("a miss")) };
    // The tracking connection comes up in the background.
    for _ in 0..300 {
        tracking.get(&key, GetOptions::new(ttl, miss)).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let k = key.clone();
    let t = tracking.clone();
    run(seconds, concurrency, move || {
        let (c, k) = (t.clone(), k.clone());
        async move {
            let got = c.get(&k, GetOptions::new(ttl, miss)).await.expect("hit");
            assert!(got.hit);
        }
    })
    .await
    .print("cdc-cache get, tracking L1 hit");

    // The staleness window: bump, then get until the new version is served.
    // A get served by the L1 costs no round trip, so the first get to read
    // Redis starts right after the invalidation was handled.
    let record = format!("{prefix}{key}");
    let mut writer = client.get_multiplexed_async_connection().await?;
    let (mut from_sent, mut from_acked) = (Vec::new(), Vec::new());
    for n in 0..bumps {
        let before = tracking.get(&key, GetOptions::new(ttl, miss)).await?.data_key;
        let sent = Instant::now();
        let _: i64 = redis::cmd("HINCRBY")
            .arg(&record)
            .arg("v")
            .arg(1)
            .query_async(&mut writer)
            .await?;
        let acked = Instant::now();
        loop {
            let started = Instant::now();
            let v = value.clone();
            let got = tracking
                .get(
                    &key,
                    GetOptions::new(ttl, move || async move { Ok::<_, std::io::Error>(v) }),
                )
                .await?;
            if got.data_key != before {
                from_sent.push(u64::try_from(started.duration_since(sent).as_micros()).unwrap_or(u64::MAX));
                from_acked
                    .push(u64::try_from(started.saturating_duration_since(acked).as_micros()).unwrap_or(u64::MAX));
                break;
            }
            assert!(sent.elapsed() < Duration::from_secs(5), "bump {n} never reached the L1");
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // q in 0..=1 (the calls below): a whole index in 0..len.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let percentile = |v: &mut Vec<u64>, q: f64| {
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * q) as usize]
    };
    println!(
        "tracking L1 staleness window over {bumps} bumps: from the bump sent p50 {} µs p99 {} µs max {} µs; from its reply p50 {} µs p99 {} µs",
        percentile(&mut from_sent, 0.5),
        percentile(&mut from_sent, 0.99),
        percentile(&mut from_sent, 1.0),
        percentile(&mut from_acked, 0.5),
        percentile(&mut from_acked, 0.99),
    );
    Ok(())
}
