//! The lease and wait rule (readers/spec.md section 5, tests of section 13)
//! against a real Redis (`CDC_REDIS_URL`).

// Tests may unwrap, expect and index: a panic there is the test failing,
// which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdc_cache::metrics::{FILLS, LEASE_TAKEOVERS, MISSES, STALE_SERVED, STAMPEDE_PREVENTED};
use cdc_cache::naming::lease_key;
use cdc_cache::{Cache, CacheOptions, Error, GetOptions, Got};
use support::*;

type LoadResult = Result<Vec<u8>, std::io::Error>;
const TTL: Duration = Duration::from_secs(60);

/// Counts loads, and the most ever in flight at once.
#[derive(Default)]
struct Loads {
    started: AtomicUsize,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

impl Loads {
    fn enter(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// A loader that takes `took` and returns `value`, or fails when `value` is `None`.
fn loader(
    loads: Arc<Loads>,
    took: Duration,
    value: Option<&'static str>,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = LoadResult> + Send>> {
    move || {
        Box::pin(async move {
            loads.enter();
            tokio::time::sleep(took).await;
            loads.leave();
            match value {
                Some(v) => Ok(v.as_bytes().to_vec()),
                None => Err(std::io::Error::other("database down")),
            }
        })
    }
}

/// `count` gets of `key` at once, spread over `caches`.
async fn concurrently(
    caches: &[Cache],
    count: usize,
    key: &str,
    get: impl Fn() -> GetOptions<BoxedLoader>,
) -> Vec<(Result<Got, Error>, Duration)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (cache, barrier, key, options) =
                (caches[i % caches.len()].clone(), barrier.clone(), key.to_owned(), get());
            tokio::spawn(async move {
                barrier.wait().await;
                let started = Instant::now();
                let got = cache.get(&key, options).await;
                (got, started.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

type BoxedLoader = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = LoadResult> + Send>> + Send>;

fn boxed(
    l: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = LoadResult> + Send>> + Send + 'static,
) -> BoxedLoader {
    Box::new(l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_load_after_a_bump_in_one_process_and_across_several() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    for instances in [1usize, 4] {
        let name = unique("one_load");
        let mut caches = Vec::new();
        for _ in 0..instances {
            caches.push(cache(options(&name, &prefix)).await);
        }
        bump(&format!("{prefix}{key}")).await;
        let loads = Arc::new(Loads::default());
        let l = loads.clone();
        let got = concurrently(&caches, 200, &key, move || {
            GetOptions::new(TTL, boxed(loader(l.clone(), Duration::from_millis(100), Some("v"))))
        })
        .await;
        assert_eq!(loads.started(), 1, "{instances} instances: one load");
        assert!(got.iter().all(|(g, _)| g.as_ref().unwrap().value == b"v"));
        assert_eq!(got.iter().filter(|(g, _)| !g.as_ref().unwrap().hit).count(), 1);
        // Rule 8: the holder is not counted, each of the 199 others is.
        assert_eq!(counter(MISSES, &name), 200);
        assert_eq!(counter(STAMPEDE_PREVENTED, &name), 199, "{instances} instances");
        assert_eq!(counter(FILLS, &name), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eventual_readers_serve_the_previous_value_while_one_loads() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let name = unique("eventual");
    let caches = [
        cache(options(&name, &prefix)).await,
        cache(options(&name, &prefix)).await,
    ];
    let record = format!("{prefix}{key}");
    bump(&record).await;
    let loads = Arc::new(Loads::default());
    caches[0]
        .get(
            &key,
            GetOptions::new(TTL, loader(loads.clone(), Duration::ZERO, Some("v1"))),
        )
        .await
        .unwrap();
    bump(&record).await;
    let l = loads.clone();
    let got = concurrently(&caches, 100, &key, move || {
        GetOptions::new(TTL, boxed(loader(l.clone(), Duration::from_millis(200), Some("v2"))))
            .eventual(Duration::from_secs(30))
    })
    .await;
    assert_eq!(loads.started(), 2, "one load for v1, one for v2");
    let stale: Vec<_> = got
        .iter()
        .filter_map(|(g, _)| g.as_ref().ok())
        .filter(|g| g.stale)
        .collect();
    assert_eq!(stale.len(), 99);
    assert!(stale.iter().all(|g| g.value == b"v1" && g.hit));
    // The stale ones did not wait for the 200 ms load.
    assert!(got
        .iter()
        .filter(|(g, _)| g.as_ref().unwrap().stale)
        .all(|(_, t)| *t < Duration::from_millis(150)));
    assert_eq!(counter(STALE_SERVED, &name), 99);
    assert_eq!(counter(STAMPEDE_PREVENTED, &name), 99);
}

/// The holder hangs past its lease: exactly one more load starts after the
/// lease expires, never two at once among the waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_holder_is_taken_over_by_exactly_one_waiter() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let name = unique("hung");
    let lease = Duration::from_millis(300);
    let opts = CacheOptions {
        lease,
        wait_timeout: Some(Duration::from_secs(3)),
        ..options(&name, &prefix)
    };
    let hung_cache = cache(opts.clone()).await;
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(cache(opts.clone()).await);
    }
    bump(&format!("{prefix}{key}")).await;

    let hung = Arc::new(Loads::default());
    let holder = {
        let (cache, key, hung) = (hung_cache.clone(), key.clone(), hung.clone());
        tokio::spawn(async move {
            cache
                .get(
                    &key,
                    GetOptions::new(TTL, loader(hung, Duration::from_secs(2), Some("late"))),
                )
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(1), || {
            let h = hung.clone();
            async move { h.started() == 1 }
        })
        .await
    );
    let waiters = Arc::new(Loads::default());
    let w = waiters.clone();
    let started = Instant::now();
    let got = concurrently(&caches, 40, &key, move || {
        GetOptions::new(TTL, boxed(loader(w.clone(), Duration::from_millis(100), Some("fresh"))))
    })
    .await;
    assert_eq!(waiters.started(), 1, "exactly one load after the lease expired");
    assert_eq!(waiters.most(), 1);
    assert!(got.iter().all(|(g, _)| g.as_ref().unwrap().value == b"fresh"));
    let slowest = got.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        slowest >= lease - Duration::from_millis(100) && started.elapsed() < lease + Duration::from_millis(800),
        "waited {slowest:?} for a {lease:?} lease"
    );
    assert_eq!(counter(LEASE_TAKEOVERS, &name), 1);
    // The late holder's fill is harmless; its release deletes nothing of the taker's.
    let late = holder.await.unwrap().unwrap();
    assert!(!late.hit);
}

/// A loader that always fails: loads one at a time, and no get waits longer
/// than wait_timeout plus one max_poll (and a little slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_loader_is_retried_one_at_a_time_and_waits_are_bounded() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let name = unique("failing");
    let wait_timeout = Duration::from_millis(800);
    let opts = CacheOptions {
        lease: Duration::from_millis(400),
        wait_timeout: Some(wait_timeout),
        ..options(&name, &prefix)
    };
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(cache(opts.clone()).await);
    }
    let loads = Arc::new(Loads::default());
    let l = loads.clone();
    let got = concurrently(&caches, 100, &key, move || {
        GetOptions::new(TTL, boxed(loader(l.clone(), Duration::from_millis(30), None)))
    })
    .await;
    assert_eq!(loads.most(), 1, "loads never overlap");
    // One flight per instance, each loading at most once, one after another
    // through takeovers.
    assert!(
        (2..=caches.len()).contains(&loads.started()),
        "{} loads",
        loads.started()
    );
    let slack = opts.max_poll + Duration::from_millis(150);
    for (result, took) in &got {
        assert!(*took <= wait_timeout + slack, "a get waited {took:?}");
        let kind = result.as_ref().unwrap_err().kind();
        assert!(kind == "loader" || kind == "lease_timeout", "{kind}");
    }
    assert!(!exists(&lease_key(&format!("{key}@e0:v0"))).await, "no lease left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_holder_releases_its_lease_at_once() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let cache = cache(options(&unique("cancel"), &prefix)).await;
    let loads = Arc::new(Loads::default());
    let get = cache.get(
        &key,
        GetOptions::new(TTL, loader(loads.clone(), Duration::from_secs(10), Some("x"))),
    );
    assert!(tokio::time::timeout(Duration::from_millis(100), get).await.is_err());
    assert_eq!(loads.started(), 1, "it was the holder, loading");
    let lease = lease_key(&format!("{key}@e0:v0"));
    assert!(
        eventually(Duration::from_millis(50), || {
            let l = lease.clone();
            async move { !exists(&l).await }
        })
        .await,
        "the lease (5 s) is gone right after the cancellation"
    );
    // And the next get loads at once instead of waiting for the lease.
    let started = Instant::now();
    let got = cache
        .get(
            &key,
            GetOptions::new(TTL, loader(loads.clone(), Duration::ZERO, Some("y"))),
        )
        .await
        .unwrap();
    assert_eq!(got.value, b"y");
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_flight_leader_hands_over_to_a_follower() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let cache = cache(options(&unique("handover"), &prefix)).await;
    let loads = Arc::new(Loads::default());
    let leader = {
        let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
        tokio::spawn(async move {
            cache
                .get(
                    &key,
                    GetOptions::new(TTL, loader(loads, Duration::from_secs(10), Some("never"))),
                )
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(1), || {
            let l = loads.clone();
            async move { l.started() == 1 }
        })
        .await
    );
    let follower = {
        let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
        tokio::spawn(async move {
            cache
                .get(
                    &key,
                    GetOptions::new(TTL, loader(loads, Duration::ZERO, Some("second"))),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let got = tokio::time::timeout(Duration::from_millis(500), follower)
        .await
        .expect("the follower did not wait for the 5 s lease")
        .unwrap()
        .unwrap();
    assert_eq!(got.value, b"second");
    assert!(!got.hit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_slower_than_loader_timeout_fails_and_writes_nothing() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let name = unique("loader_timeout");
    let cache = cache(CacheOptions {
        loader_timeout: Some(Duration::from_millis(100)),
        ..options(&name, &prefix)
    })
    .await;
    let loads = Arc::new(Loads::default());
    let started = Instant::now();
    let err = cache
        .get(
            &key,
            GetOptions::new(TTL, loader(loads.clone(), Duration::from_millis(400), Some("late"))),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "loader_timeout");
    assert!(started.elapsed() < Duration::from_millis(300));
    let data_key = format!("{key}@e0:v0");
    assert!(!exists(&lease_key(&data_key)).await, "the lease is released");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!exists(&data_key).await, "the late value is never written");
    assert_eq!(counter(cdc_cache::metrics::FILL_ERRORS, &name), 1);
}

/// The holder re-reads the data key before loading: with readers racing
/// version moves, each data key is loaded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_version_is_loaded_once_while_readers_race_its_moves() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let record = format!("{prefix}{key}");
    let mut caches = Vec::new();
    for _ in 0..8 {
        caches.push(cache(options(&unique("moves"), &prefix)).await);
    }
    let per_key: Arc<Mutex<std::collections::HashMap<String, usize>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|i| {
            let (cache, key, per_key, stop) = (caches[i % 8].clone(), key.clone(), per_key.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let per_key = per_key.clone();
                    let got = cache
                        .get(
                            &key,
                            GetOptions::new(TTL, move || async move { LoadResult::Ok(b"v".to_vec()) })
                                .eventual(Duration::from_secs(10)),
                        )
                        .await
                        .unwrap();
                    if !got.hit {
                        *per_key.lock().unwrap().entry(got.data_key).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for _ in 0..100 {
        bump(&record).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let per_key = per_key.lock().unwrap();
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(per_key.len() > 20, "only {} versions loaded", per_key.len());
    assert!(twice.is_empty(), "loaded more than once: {twice:?}");
}

/// A holder that keeps its lease: waiters give up at wait_timeout, strong
/// ones with lease_timeout, eventual ones with the previous value however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_at_wait_timeout() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let record = format!("{prefix}{key}");
    let name = unique("wait_timeout");
    let wait_timeout = Duration::from_millis(300);
    let waiter = cache(CacheOptions {
        wait_timeout: Some(wait_timeout),
        ..options(&name, &prefix)
    })
    .await;
    let holder = cache(options(&unique("holder"), &prefix)).await;
    bump(&record).await;
    let loads = Arc::new(Loads::default());
    holder
        .get(
            &key,
            GetOptions::new(TTL, loader(loads.clone(), Duration::ZERO, Some("v1"))),
        )
        .await
        .unwrap();
    bump(&record).await;
    let hung = {
        let (holder, key, loads) = (holder.clone(), key.clone(), loads.clone());
        tokio::spawn(async move {
            holder
                .get(
                    &key,
                    GetOptions::new(TTL, loader(loads, Duration::from_secs(3), Some("v2"))),
                )
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(1), || {
            let l = loads.clone();
            async move { l.started() == 2 }
        })
        .await
    );
    // The previous value is older than this get's bound: not served at once.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let started = Instant::now();
    let err = waiter
        .get(
            &key,
            GetOptions::new(TTL, loader(loads.clone(), Duration::ZERO, Some("never"))),
        )
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.kind(), "lease_timeout");
    assert!(
        waited >= wait_timeout && waited <= wait_timeout + Duration::from_millis(250),
        "{waited:?}"
    );

    let started = Instant::now();
    let got = waiter
        .get(
            &key,
            GetOptions::new(TTL, loader(loads.clone(), Duration::ZERO, Some("never")))
                .eventual(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    assert!(started.elapsed() >= wait_timeout);
    assert!(got.stale && got.hit);
    assert_eq!(got.value, b"v1");
    assert_eq!(loads.started(), 2, "the waiters never loaded");
    assert_eq!(counter(STALE_SERVED, &name), 1);
    assert_eq!(counter(STAMPEDE_PREVENTED, &name), 2);
    hung.abort();
}

/// The same within one process: the followers of a hung leader leave its
/// flight one lease after joining, and exactly one of them loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_of_a_hung_leader_in_this_process_take_over_after_the_lease() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let name = unique("hung_here");
    let lease = Duration::from_millis(300);
    let cache = cache(CacheOptions {
        lease,
        ..options(&name, &prefix)
    })
    .await;
    let hung = Arc::new(Loads::default());
    let holder = {
        let (cache, key, hung) = (cache.clone(), key.clone(), hung.clone());
        tokio::spawn(async move {
            cache
                .get(
                    &key,
                    GetOptions::new(TTL, loader(hung, Duration::from_secs(2), Some("late"))),
                )
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(1), || {
            let h = hung.clone();
            async move { h.started() == 1 }
        })
        .await
    );
    let waiters = Arc::new(Loads::default());
    let w = waiters.clone();
    let started = Instant::now();
    let got = concurrently(std::slice::from_ref(&cache), 50, &key, move || {
        GetOptions::new(TTL, boxed(loader(w.clone(), Duration::from_millis(50), Some("fresh"))))
    })
    .await;
    assert_eq!(waiters.started(), 1);
    assert!(got.iter().all(|(g, _)| g.as_ref().unwrap().value == b"fresh"));
    assert!(
        started.elapsed() < lease + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counter(LEASE_TAKEOVERS, &name), 1);
    holder.abort();
}
