//! The Rust reader library (readers/rust, crate cdc-cache) against real
//! Redis, standalone and a three-node Cluster, with versions bumped by the
//! daemon's own code: its bump script through `RedisSink`, and the whole
//! daemon behind PostgreSQL and Debezium for the staleness test
//! (readers/spec.md).

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cdc_cache::{Cache, CacheOptions, GetOptions, L1Options};
use cdc_invalidator::config::RedisSettings;
use cdc_invalidator::event::Position;
use cdc_invalidator::graph::Target;
use cdc_invalidator::plan::Bump;
use cdc_invalidator::sink::RedisSink;
use common::cluster::Cluster;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

type LoadResult = Result<Vec<u8>, std::io::Error>;

// ---------------------------------------------------------------- metrics

/// The debugging recorder, installed once per test binary. A snapshot
/// resets its counters, so every snapshot is added to `totals`.
struct Recorded {
    snapshotter: Snapshotter,
    totals: Mutex<HashMap<(String, String), u64>>,
}

fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other recorder in this test binary");
        Recorded {
            snapshotter,
            totals: Mutex::new(HashMap::new()),
        }
    })
}

/// A counter's total for one cache (all other labels summed).
fn counter(name: &str, cache: &str) -> u64 {
    let r = recorded();
    let mut totals = r.totals.lock().unwrap();
    for (key, _, _, value) in r.snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let label = key
                .key()
                .labels()
                .find(|l| l.key() == "cache")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            *totals.entry((key.key().name().to_owned(), label)).or_default() += n;
        }
    }
    totals.get(&(name.to_owned(), cache.to_owned())).copied().unwrap_or(0)
}

// ---------------------------------------------------------------- topologies

/// The stack's standalone Redis, or a Cluster of our own.
struct Redis {
    url: String,
    cluster: Option<Cluster>,
}

impl Redis {
    fn standalone() -> Redis {
        Redis {
            url: common::redis_url(),
            cluster: None,
        }
    }

    fn cluster() -> Redis {
        let cluster = Cluster::start();
        Redis {
            url: format!("redis://127.0.0.1:{}", cluster.ports[0]),
            cluster: Some(cluster),
        }
    }

    async fn cache(&self, options: CacheOptions) -> Cache {
        recorded();
        match self.cluster {
            Some(_) => Cache::connect_cluster(&[&self.url], options).await.unwrap(),
            None => Cache::connect(&self.url, options).await.unwrap(),
        }
    }

    async fn sink(&self, prefix: &str) -> RedisSink {
        RedisSink::connect(&RedisSettings {
            cluster: self.cluster.is_some(),
            ..common::sink_settings(&self.url, prefix, Duration::from_secs(600))
        })
        .await
        .unwrap()
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match self.cluster {
            Some(_) => {
                let client = redis::cluster::ClusterClient::new(vec![self.url.clone()]).unwrap();
                let mut conn = client.get_async_connection().await.unwrap();
                cmd.query_async(&mut conn).await.unwrap()
            }
            None => cmd.query_async(&mut common::redis_conn().await).await.unwrap(),
        }
    }

    fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }
}

/// One bump of `key` through the daemon's bump script, as source `t`.
async fn bump(sink: &mut RedisSink, key: &str, position: i64) -> u64 {
    let results = sink
        .apply(&[Bump {
            target: Target::Key(key.to_owned()),
            position: Position::kafka("t", 0, position),
            commit_time_us: None,
        }])
        .await
        .unwrap();
    results[0].version.expect("bump applied")
}

fn options(name: &str, prefix: &str) -> CacheOptions {
    CacheOptions {
        name: name.to_owned(),
        prefix: prefix.to_owned(),
        ..CacheOptions::default()
    }
}

fn fixed(value: &'static [u8]) -> impl FnOnce() -> std::future::Ready<LoadResult> {
    move || std::future::ready(Ok(value.to_vec()))
}

// ---------------------------------------------------------------- stampede

/// 200 readers of a key whose version just moved: one loader call; the
/// others wait for its fill (strong) or serve the previous value (eventual).
async fn stampede(redis: &Redis) {
    let prefix = format!("{}:", common::unique("ver"));
    let name = common::unique("stampede");
    let cache = redis.cache(options(&name, &prefix)).await;
    let mut sink = redis.sink(&prefix).await;
    // Leaked: spawned readers need a 'static key, and a test ends soon.
    let key: &'static str = format!("{}:1", common::unique("product")).leak();
    let ttl = Duration::from_secs(60);
    bump(&mut sink, key, 1).await;
    let first = cache.get(key, GetOptions::new(ttl, fixed(b"v1"))).await.unwrap();
    assert!(!first.hit);
    assert!(
        cache
            .get(key, GetOptions::new(ttl, fixed(b"unused")))
            .await
            .unwrap()
            .hit
    );

    for (round, eventual) in [(2, false), (3, true)] {
        bump(&mut sink, key, round).await;
        let previous_value = format!("v{}", round - 1);
        let value = format!("v{round}");
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(200));
        let prevented_before = counter(cdc_cache::metrics::STAMPEDE_PREVENTED, &name);
        let readers: Vec<_> = (0..200)
            .map(|_| {
                let (cache, calls, barrier, value) = (cache.clone(), calls.clone(), barrier.clone(), value.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let loader = move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        LoadResult::Ok(value.into_bytes())
                    };
                    let mut get = GetOptions::new(ttl, loader);
                    if eventual {
                        get = get.eventual(Duration::from_secs(30));
                    }
                    cache.get(key, get).await.unwrap()
                })
            })
            .collect();
        let mut got = Vec::new();
        for r in readers {
            got.push(r.await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "eventual={eventual}: one loader call");
        let loaded: Vec<_> = got.iter().filter(|g| !g.hit).collect();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].value, value.as_bytes());
        let prevented = counter(cdc_cache::metrics::STAMPEDE_PREVENTED, &name) - prevented_before;
        assert_eq!(prevented, 199, "eventual={eventual}: the others counted as prevented");
        if eventual {
            // The lease holder took 300 ms; everyone else served the
            // previous version's value at once, keyed by the previous key.
            let stale: Vec<_> = got.iter().filter(|g| g.stale).collect();
            assert_eq!(stale.len(), 199);
            assert!(stale.iter().all(|g| g.value == previous_value.as_bytes() && g.hit));
            assert!(stale.iter().all(|g| g.data_key != loaded[0].data_key));
        } else {
            assert!(got.iter().all(|g| g.value == value.as_bytes() && !g.stale));
            assert!(got.iter().all(|g| g.data_key == loaded[0].data_key));
        }
    }
    assert_eq!(counter(cdc_cache::metrics::FILLS, &name), 3);
    assert_eq!(counter(cdc_cache::metrics::STALE_SERVED, &name), 199);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_standalone() {
    stampede(&Redis::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_cluster() {
    stampede(&Redis::cluster()).await;
}

// ---------------------------------------------------------------- crashed loader

/// A loader that dies holding the lease delays the next reader by at most
/// the lease; that reader takes the lease over and fills.
async fn crashed_loader(redis: &Redis) {
    let prefix = format!("{}:", common::unique("ver"));
    let name = common::unique("crash");
    let lease = Duration::from_millis(1500);
    let cache = redis
        .cache(CacheOptions {
            lease,
            ..options(&name, &prefix)
        })
        .await;
    let mut sink = redis.sink(&prefix).await;
    let key: &'static str = format!("{}:9", common::unique("product")).leak();
    let version = bump(&mut sink, key, 1).await;

    // A process that took the lease and crashed leaves it behind until it
    // expires. (Within this process a cancelled get releases its lease at
    // once, so the crash is the lease key itself.)
    let data_key = format!("{key}@e0:v{version}");
    let _: () = redis
        .query(
            redis::cmd("SET")
                .arg(cdc_cache::naming::lease_key(&data_key))
                .arg("the-crashed-holder")
                .arg("PX")
                .arg(u64::try_from(lease.as_millis()).unwrap()),
        )
        .await;
    let crashed_at = Instant::now();

    let got = cache
        .get(key, GetOptions::new(Duration::from_secs(60), fixed(b"fresh")))
        .await
        .unwrap();
    let waited = crashed_at.elapsed();
    assert_eq!(got.value, b"fresh");
    assert!(!got.hit);
    assert_eq!(got.data_key, data_key);
    // It waited for the lease (a reader ignoring leases would be immediate),
    // and not much longer than the lease: one poll (at most max_poll) and the fill.
    assert!(waited >= lease - Duration::from_millis(300), "waited {waited:?}");
    assert!(
        waited <= lease + Duration::from_millis(250),
        "waited {waited:?} for a {lease:?} lease"
    );
    assert_eq!(counter(cdc_cache::metrics::LEASE_TAKEOVERS, &name), 1);
    let lease_key = cdc_cache::naming::lease_key(&got.data_key);
    let left: i64 = redis.query(redis::cmd("EXISTS").arg(&lease_key)).await;
    assert_eq!(left, 0, "the taker released its lease after the fill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_loader_delays_others_by_at_most_the_lease_standalone() {
    crashed_loader(&Redis::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_loader_delays_others_by_at_most_the_lease_cluster() {
    crashed_loader(&Redis::cluster()).await;
}

// ---------------------------------------------------------------- staleness

/// One read: when it started (µs since the epoch, this machine's clock,
/// which is also Redis's) and the value it served.
#[derive(Debug, Clone, Copy)]
struct Read {
    started_us: u64,
    value: i64,
    bound_us: u64,
}

/// Reads that served a value older than the last bump before them plus
/// their bound. `bumps`: (value written, version = server time of its bump).
fn violations(bumps: &[(i64, u64)], reads: &[Read]) -> Vec<(Read, i64)> {
    reads
        .iter()
        .filter_map(|r| {
            let required = bumps
                .iter()
                .filter(|(_, at)| at + r.bound_us < r.started_us)
                .map(|(n, _)| *n)
                .max()?;
            (r.value < required).then_some((*r, required))
        })
        .collect()
}

#[test]
fn the_staleness_check_can_fail() {
    let bumps = [(1, 1_000_000), (2, 2_000_000)];
    let ok = Read {
        started_us: 2_000_100,
        value: 2,
        bound_us: 0,
    };
    let late = Read { value: 1, ..ok };
    let within_bound = Read {
        value: 1,
        bound_us: 500,
        ..ok
    };
    assert!(violations(&bumps, &[ok, within_bound]).is_empty());
    assert_eq!(violations(&bumps, &[late]).len(), 1);
}

async fn wait_for_topic(topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .unwrap();
    common::eventually("Debezium to create the topic", Duration::from_secs(60), || {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && !t.partitions().is_empty())
            })
            .unwrap_or(false);
        async move { found.then_some(()) }
    })
    .await;
}

/// While a writer changes a row in PostgreSQL (Debezium -> Kafka -> the
/// daemon), strong readers never serve a value older than the last bump,
/// and eventual readers (L1 with notices, stale-while-revalidate) never one
/// older than the last bump plus their bound.
async fn staleness(redis: &Redis) {
    let table = common::unique("reader_rows");
    let pool = common::pg().await;
    common::sql(
        &pool,
        &format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, price bigint NOT NULL); INSERT INTO {table} VALUES (1, 0);"
        ),
    )
    .await;
    let topic = format!("{}.public.{table}", common::topic_prefix());
    wait_for_topic(&topic).await;

    let prefix = format!("{}:", common::unique("ver"));
    let channel = common::unique("notices");
    let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        config.path(),
        format!(
            r#"
[source]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[source.librdkafka]
"topic.metadata.refresh.interval.ms" = "1000"
[redis]
url = "{url}"
cluster = {cluster}
version_prefix = "{prefix}"
version_ttl = "1h"
max_retry_backoff = "500ms"
[admin]
listen = "127.0.0.1:0"
[notices]
redis_channel = "{channel}"
[[entity]]
table = "public.{table}"
namespace = "{table}"
consistency = "strong"
keys = ["{table}:{{id}}"]
"#,
            brokers = common::kafka_brokers(),
            group = common::unique("group"),
            url = redis.url,
            cluster = redis.is_cluster(),
        ),
    )
    .unwrap();
    let daemon = common::Daemon::start(config.path());
    daemon.wait_ready().await;

    let key = format!("{table}:1");
    let record = format!("{prefix}{key}");
    let version = || {
        let record = record.clone();
        async move {
            let v: Option<u64> = redis.query(redis::cmd("HGET").arg(&record).arg("v")).await;
            v
        }
    };
    let mut last = common::eventually("the seed row's bump", Duration::from_secs(60), version).await;

    let bound = Duration::from_millis(300);
    let strong_cache = redis.cache(options(&common::unique("strong"), &prefix)).await;
    let eventual_name = common::unique("eventual");
    let eventual_cache = redis
        .cache(CacheOptions {
            l1: Some(L1Options::bounded_with_notices(bound, channel.clone()).max_entries(100)),
            ..options(&eventual_name, &prefix)
        })
        .await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let mut readers = Vec::new();
    for i in 0..8 {
        let eventual = i % 2 == 1;
        let cache = if eventual {
            eventual_cache.clone()
        } else {
            strong_cache.clone()
        };
        let (stop, reads, pool, key, table) = (stop.clone(), reads.clone(), pool.clone(), key.clone(), table.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started_us = u64::try_from(common::now_us()).unwrap();
                let pool = pool.clone();
                let query = format!("SELECT price FROM {table} WHERE id = 1");
                let loader = move || async move {
                    let price: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                        .fetch_one(&pool)
                        .await
                        .map_err(std::io::Error::other)?;
                    LoadResult::Ok(price.to_string().into_bytes())
                };
                let mut get = GetOptions::new(Duration::from_secs(60), loader);
                if eventual {
                    get = get.eventual(bound);
                }
                let got = cache.get(&key, get).await.unwrap();
                let value: i64 = String::from_utf8(got.value).unwrap().parse().unwrap();
                reads.lock().unwrap().push(Read {
                    started_us,
                    value,
                    bound_us: if eventual {
                        u64::try_from(bound.as_micros()).unwrap()
                    } else {
                        0
                    },
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let mut bumps = Vec::new();
    for n in 1..=12i64 {
        common::sql(&pool, &format!("UPDATE {table} SET price = {n} WHERE id = 1")).await;
        let moved = common::eventually(&format!("the bump of price {n}"), Duration::from_secs(30), || {
            let v = version();
            async move { v.await.filter(|v| *v > last) }
        })
        .await;
        bumps.push((n, moved));
        last = moved;
        tokio::time::sleep(Duration::from_millis(50 + (u64::try_from(n).unwrap() * 37) % 150)).await;
    }
    tokio::time::sleep(bound * 2).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let reads = reads.lock().unwrap().clone();
    let bad = violations(&bumps, &reads);
    assert!(
        bad.is_empty(),
        "{} of {} reads served a value older than the last bump plus their bound, e.g. {:?}\nbumps {bumps:?}",
        bad.len(),
        reads.len(),
        &bad[..bad.len().min(5)]
    );
    let newest = reads
        .iter()
        .filter(|r| r.started_us > last + u64::try_from(bound.as_micros()).unwrap());
    assert!(newest.clone().count() > 0 && newest.clone().all(|r| r.value == 12));
    assert!(reads.len() > 200, "only {} reads", reads.len());
    // The L1 heard the daemon's notices (one per bump at least).
    assert!(counter(cdc_cache::metrics::L1_INVALIDATIONS, &eventual_name) > 0);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_serve_older_than_the_last_bump_plus_their_bound_standalone() {
    staleness(&Redis::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_serve_older_than_the_last_bump_plus_their_bound_cluster() {
    staleness(&Redis::cluster()).await;
}

// ---------------------------------------------------------------- the rest of the read path

/// Loader errors release the lease; XFetch refreshes early; the freshness
/// sample counts mismatches; the L1 serves within its bound and drops an
/// entry on a notice (the Node package's tests/redis.test.ts, same cases).
async fn read_path(redis: &Redis) {
    let prefix = format!("{}:", common::unique("ver"));
    let ttl = Duration::from_secs(60);
    // Data keys carry no version prefix: keys of their own per run.
    let tag = common::unique("k");
    let [k, x, f, p, bad] = ["k", "x", "f", "p", "bad"].map(|n| format!("{tag}:{n}"));

    let name = common::unique("error");
    let cache = redis.cache(options(&name, &prefix)).await;
    let failing = || std::future::ready(LoadResult::Err(std::io::Error::other("database down")));
    let err = cache.get(&k, GetOptions::new(ttl, failing)).await.unwrap_err();
    assert_eq!(err.kind(), "loader");
    assert!(err.to_string().contains("database down"), "{err}");
    let started = Instant::now();
    assert_eq!(
        cache.get(&k, GetOptions::new(ttl, fixed(b"ok"))).await.unwrap().value,
        b"ok"
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "no lease was left behind"
    );
    assert_eq!(counter(cdc_cache::metrics::FILL_ERRORS, &name), 1);

    // beta 1e9: a 5 ms loader is "close to expiry" for the whole TTL (the
    // chance of no refresh is about one in a million).
    let name = common::unique("xfetch");
    let cache = redis
        .cache(CacheOptions {
            beta: 1e9,
            ..options(&name, &prefix)
        })
        .await;
    let slow = |v: &'static [u8]| {
        move || async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            LoadResult::Ok(v.to_vec())
        }
    };
    cache.get(&x, GetOptions::new(ttl, slow(b"n1"))).await.unwrap();
    let again = cache.get(&x, GetOptions::new(ttl, slow(b"n2"))).await.unwrap();
    assert!(!again.hit, "refreshed early");
    assert_eq!(again.value, b"n2");
    assert_eq!(counter(cdc_cache::metrics::EARLY_REFRESHES, &name), 1);
    let off = redis
        .cache(CacheOptions {
            beta: 0.0,
            ..options(&common::unique("xfetch_off"), &prefix)
        })
        .await;
    assert!(off.get(&x, GetOptions::new(ttl, fixed(b"n3"))).await.unwrap().hit);

    let name = common::unique("fresh");
    let cache = redis
        .cache(CacheOptions {
            sample_rate: 1.0,
            beta: 0.0,
            ..options(&name, &prefix)
        })
        .await;
    cache.get(&f, GetOptions::new(ttl, fixed(b"old"))).await.unwrap();
    // The row changed but no bump came (a lost invalidation): the check sees it.
    cache.get(&f, GetOptions::new(ttl, fixed(b"new"))).await.unwrap();
    cache.get(&f, GetOptions::new(ttl, fixed(b"old"))).await.unwrap();
    assert_eq!(counter(cdc_cache::metrics::FRESHNESS_CHECKS, &name), 2);
    assert_eq!(counter(cdc_cache::metrics::FRESHNESS_MISMATCHES, &name), 1);

    let name = common::unique("l1");
    let channel = common::unique("notices");
    let cache = redis
        .cache(CacheOptions {
            l1: Some(L1Options::bounded_with_notices(Duration::from_secs(60), channel.clone()).max_entries(100)),
            ..options(&name, &prefix)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the subscription
    let eventual = |v: &'static [u8]| GetOptions::new(ttl, fixed(v)).eventual(Duration::from_secs(60));
    cache.get(&p, eventual(b"one")).await.unwrap();
    let mut sink = redis.sink(&prefix).await;
    bump(&mut sink, &p, 1).await;
    // No notice yet: the L1 serves its entry (within the caller's bound).
    assert_eq!(cache.get(&p, eventual(b"two")).await.unwrap().value, b"one");
    let notice = serde_json::json!({"kind": "KEY", "target": p, "record_key": format!("{prefix}{p}"),
        "version": 1, "source": "t", "position": "1", "commit_time_us": common::now_us() - 5000});
    let _: i64 = redis
        .query(redis::cmd("PUBLISH").arg(&channel).arg(notice.to_string()))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.get(&p, eventual(b"two")).await.unwrap().value, b"two");
    assert_eq!(counter(cdc_cache::metrics::L1_INVALIDATIONS, &name), 1);
    // A strong get never reads the L1; a tight bound re-verifies against Redis.
    let strong = cache.get(&p, GetOptions::new(ttl, fixed(b"x"))).await.unwrap();
    assert_eq!(strong.value, b"two");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bounded = cache
        .get(
            &p,
            GetOptions::new(ttl, fixed(b"x")).eventual(Duration::from_millis(10)),
        )
        .await
        .unwrap();
    assert_eq!(bounded.value, b"two");
    assert_eq!(
        counter(cdc_cache::metrics::HITS, &name),
        3,
        "1 from the L1, 2 from Redis"
    );

    // A version record holding what no bump writes is an error naming it.
    let _: () = redis
        .query(redis::cmd("HSET").arg(format!("{prefix}{bad}")).arg("v").arg("1.7e+15"))
        .await;
    let err = cache.get(&bad, GetOptions::new(ttl, fixed(b"x"))).await.unwrap_err();
    assert_eq!(err.kind(), "bad_version");
    assert!(err.to_string().contains(&format!("{prefix}{bad}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_path_standalone() {
    read_path(&Redis::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_path_cluster() {
    read_path(&Redis::cluster()).await;
}
