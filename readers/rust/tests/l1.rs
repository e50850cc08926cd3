//! The exact L1 through Redis client-side caching (readers/spec.md section
//! 8) against a real Redis (`CDC_REDIS_URL`).

// Tests may unwrap, expect and index: a panic there is the test failing,
// which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use cdc_cache::metrics::{HITS, L1_INVALIDATIONS, MISSES};
use cdc_cache::{Cache, CacheOptions, GetOptions, Got, L1Options};
use support::*;

type LoadResult = Result<Vec<u8>, std::io::Error>;
const TTL: Duration = Duration::from_secs(60);

async fn get(cache: &Cache, key: &str, value: &'static str) -> Got {
    cache
        .get(
            key,
            GetOptions::new(TTL, move || async move { LoadResult::Ok(value.as_bytes().to_vec()) }),
        )
        .await
        .unwrap()
}

/// A tracking cache whose L1 is up: a get's read was installed and the next
/// get of the key is an L1 hit.
async fn tracking_cache(name: &str, prefix: &str, key: &str) -> Cache {
    let cache = cache(CacheOptions {
        l1: Some(L1Options::tracking()),
        ..options(name, prefix)
    })
    .await;
    let up = eventually(Duration::from_secs(3), || {
        let cache = cache.clone();
        let name = name.to_owned();
        let key = key.to_owned();
        async move {
            let before = counter_with(HITS, &name, "l1");
            get(&cache, &key, "v").await;
            get(&cache, &key, "v").await;
            counter_with(HITS, &name, "l1") > before
        }
    })
    .await;
    assert!(up, "the tracking connection came up");
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_cost_no_round_trip_and_a_bump_drops_the_entry_at_once() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let name = unique("tracking");
    let record = format!("{prefix}{key}");
    bump(&record).await;
    let cache = tracking_cache(&name, &prefix, &key).await;

    let (redis_before, misses_before) = (counter_with(HITS, &name, "redis"), counter(MISSES, &name));
    let l1_before = counter_with(HITS, &name, "l1");
    let first = get(&cache, &key, "unused").await;
    for _ in 0..999 {
        let got = get(&cache, &key, "unused").await;
        assert!(got.hit && !got.stale, "an exact L1 hit is current: {got:?}");
    }
    assert_eq!(
        counter_with(HITS, &name, "l1") - l1_before,
        1000,
        "strong gets are served by the L1"
    );
    assert_eq!(
        counter_with(HITS, &name, "redis"),
        redis_before,
        "no read reached Redis"
    );
    assert_eq!(counter(MISSES, &name), misses_before);

    // Another process bumps the record: the entry is gone at once.
    let bumped = Instant::now();
    let version = bump(&record).await;
    let fresh = loop {
        let got = get(&cache, &key, "v2").await;
        if got.data_key != first.data_key {
            break got;
        }
        assert!(
            bumped.elapsed() < Duration::from_millis(200),
            "still the old version after 200 ms"
        );
        tokio::task::yield_now().await;
    };
    assert!(fresh.data_key.ends_with(&format!(":v{version}")));
    assert_eq!(fresh.value, b"v2");
    assert!(counter_with(L1_INVALIDATIONS, &name, "tracking") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_any_dependency_or_namespace_drops_the_entry() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("page");
    let name = unique("tracking_deps");
    let cache = tracking_cache(&name, &prefix, &unique("warmup")).await;
    let page = |value: &'static str| {
        GetOptions::new(TTL, move || async move { LoadResult::Ok(value.as_bytes().to_vec()) })
            .deps(["product:1", "category:3"])
            .namespaces(["product"])
    };
    for (n, record) in ["product:1", "category:3", "ns:product", "epoch"]
        .into_iter()
        .enumerate()
    {
        let before = cache.get(&key, page("x")).await.unwrap();
        let again = cache.get(&key, page("x")).await.unwrap();
        assert_eq!(again.data_key, before.data_key);
        if record == "epoch" {
            // The epoch record's field is `e` (a Redis loss recovery).
            let _: i64 = redis::cmd("HINCRBY")
                .arg(format!("{prefix}epoch"))
                .arg("e")
                .arg(1)
                .query_async(&mut conn().await)
                .await
                .unwrap();
        } else {
            bump(&format!("{prefix}{record}")).await;
        }
        let moved = eventually(Duration::from_millis(200), || {
            let cache = cache.clone();
            let key = key.clone();
            let before = before.data_key.clone();
            async move { cache.get(&key, page("y")).await.unwrap().data_key != before }
        })
        .await;
        assert!(moved, "bump {n} of {record} reached the L1");
    }
}

/// The tracking connection drops: the L1 is flushed at once (a change while
/// it is down would go unreported) and comes back with a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tracking_connection_flushes_the_l1_and_it_comes_back() {
    let prefix = format!("{}:", unique("ver"));
    let key = unique("product");
    let name = unique("tracking_drop");
    let cache = tracking_cache(&name, &prefix, &key).await;
    let resets = counter_with(L1_INVALIDATIONS, &name, "reset");

    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn().await)
        .await
        .unwrap();
    let id = list
        .lines()
        .find(|l| l.contains(&format!("name=cdc-cache-tracking:{name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("the tracking connection is named")
        .to_owned();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut conn().await)
        .await
        .unwrap();
    let flushed = eventually(Duration::from_millis(100), || async {
        counter_with(L1_INVALIDATIONS, &name, "reset") > resets
    })
    .await;
    assert!(flushed, "the L1 was flushed when its connection dropped");
    let l1_hits = counter_with(HITS, &name, "l1");
    get(&cache, &key, "v").await;
    assert_eq!(
        counter_with(HITS, &name, "l1"),
        l1_hits,
        "nothing served from a flushed L1"
    );

    // A new tracking connection, and the L1 serves again.
    let back = eventually(Duration::from_secs(3), || {
        let cache = cache.clone();
        let (name, key) = (name.clone(), key.clone());
        async move {
            get(&cache, &key, "v").await;
            let before = counter_with(HITS, &name, "l1");
            get(&cache, &key, "v").await;
            counter_with(HITS, &name, "l1") > before
        }
    })
    .await;
    assert!(back);
}

#[tokio::test]
async fn the_tracking_l1_needs_a_client_and_a_standalone_redis() {
    let manager = redis::aio::ConnectionManager::new(redis::Client::open(redis_url()).unwrap())
        .await
        .unwrap();
    let options = CacheOptions {
        l1: Some(L1Options::tracking()),
        ..CacheOptions::default()
    };
    let err = Cache::from_connection(manager.clone(), None, options.clone())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), "invalid_options");
    // With the client it opens its connections from, it works; without an
    // L1 the application's connection alone is enough.
    let client = redis::Client::open(redis_url()).unwrap();
    Cache::from_connection(manager.clone(), Some(client), options)
        .await
        .unwrap();
    let shared = Cache::from_connection(manager, None, CacheOptions::default())
        .await
        .unwrap();
    let key = unique("shared");
    assert!(!get(&shared, &key, "v").await.hit);
    assert!(get(&shared, &key, "v").await.hit);
}
