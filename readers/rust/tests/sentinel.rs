//! Redis Sentinel (readers/spec.md section 14): a cache from
//! `Cache::connect_sentinel` on a private primary, replica and three
//! Sentinels (readers/testing/sentinel-topology.sh; ports from
//! `CDC_CACHE_RUST_SENTINEL_PORT`, default 26500, up to +4) follows a
//! failover without a new cache.

// Tests may unwrap, expect and index: a panic there is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cdc_cache::{Cache, CacheOptions, Error, GetOptions, Got, L1Options, SentinelSettings};

const TTL: Duration = Duration::from_secs(60);
/// A failover is followed within this long after the Sentinels name the new
/// primary. A Sentinel demotes the old primary, killing its clients (which
/// would move any client), only about 8 s after the switch: this bound tells
/// following the announcement from that apart.
const FAILOVER_BOUND: Duration = Duration::from_secs(6);
const BUMP_LUA: &str = include_str!("../../../src/sink/bump.lua");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testing/sentinel-topology.sh")
}

fn base() -> u16 {
    std::env::var("CDC_CACHE_RUST_SENTINEL_PORT").map_or(26500, |p| p.parse().unwrap())
}

/// The topology's run: stopped when dropped, even when the test panics.
struct Topology {
    base: u16,
    dir: PathBuf,
}

impl Topology {
    /// None when Redis Sentinel is not installed (the script exits 3).
    fn start() -> Option<(Topology, Vec<String>)> {
        let dir = std::env::temp_dir().join(format!("cdc-cache-rust-sentinel-{}", std::process::id()));
        let topology = Topology { base: base(), dir };
        let out = topology.run(&["start", &topology.base.to_string(), topology.dir.to_str().unwrap()]);
        if out.status.code() == Some(3) {
            return None;
        }
        assert!(out.status.success(), "sentinel-topology.sh start");
        let addresses = String::from_utf8(out.stdout).unwrap();
        let addresses = addresses.trim().split(',').map(str::to_owned).collect();
        Some((topology, addresses))
    }

    fn run(&self, args: &[&str]) -> Output {
        // The script bounds every wait itself (30 s each).
        Command::new(script())
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .expect("sentinel-topology.sh runs")
    }

    fn failover(&self) -> String {
        let out = self.run(&["failover", &self.base.to_string()]);
        assert!(out.status.success(), "sentinel-topology.sh failover");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.run(&["stop", &self.base.to_string(), self.dir.to_str().unwrap()]);
    }
}

async fn on_port(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn bump(conn: &mut redis::aio::MultiplexedConnection, record: &str, position: u64) -> String {
    // Per record the new version (a string) when applied, 0 when not.
    let reply: Vec<redis::Value> = redis::Script::new(BUMP_LUA)
        .key(record)
        .arg(600_000)
        .arg("p:test")
        .arg(format!("{position:020}"))
        .invoke_async(conn)
        .await
        .unwrap();
    match &reply[0] {
        redis::Value::BulkString(version) => String::from_utf8(version.clone()).unwrap(),
        other => panic!("bump not applied: {other:?}"),
    }
}

fn loading(text: &'static str) -> impl FnOnce() -> std::future::Ready<Result<Vec<u8>, std::io::Error>> {
    move || std::future::ready(Ok(text.as_bytes().to_vec()))
}

/// Retries every 100 ms until `get` succeeds with a result `done` accepts,
/// or the bound passes (then the last result); with the attempts before.
async fn until<F, Fut>(mut get: F, done: impl Fn(&Got) -> bool) -> (Result<Got, Error>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Got, Error>>,
{
    let deadline = Instant::now() + FAILOVER_BOUND;
    let mut tries = 0;
    loop {
        let got = get().await;
        if got.as_ref().is_ok_and(&done) || Instant::now() > deadline {
            return (got, tries);
        }
        tries += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn value_on(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    String::from_utf8_lossy(&v.unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_and_a_fill_succeed_on_the_new_primary_after_a_failover() {
    let Some((topology, addresses)) = Topology::start() else {
        eprintln!("skipped: redis-sentinel is not installed (the Sentinel failover test needs it)");
        return;
    };
    let prefix = format!("ver_{:012x}:", rand::random::<u64>() & 0xffff_ffff_ffff);
    let key = format!("product_{:012x}:1", rand::random::<u64>() & 0xffff_ffff_ffff);
    let options = CacheOptions {
        name: "sentinel".into(),
        prefix: prefix.clone(),
        ..CacheOptions::default()
    };
    let settings = SentinelSettings::new("cdc-readers", &addresses).unwrap();
    let cache = Cache::connect_sentinel(settings.clone(), options.clone())
        .await
        .unwrap();
    // With the tracking L1, whose connection must follow the primary too.
    let tracked = CacheOptions {
        name: "sentinel-tracked".into(),
        l1: Some(L1Options::tracking()),
        ..options
    };
    let tracked = Cache::connect_sentinel(settings, tracked).await.unwrap();
    let (mut old, mut new) = (on_port(topology.base).await, on_port(topology.base + 1).await);

    // A version the replica acknowledged (WAIT 1, same connection) before the failover.
    let v1 = bump(&mut old, &format!("{prefix}{key}"), 1).await;
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query_async(&mut old).await.unwrap();
    assert!(acked >= 1, "WAIT 1");
    let before = cache.get(&key, GetOptions::new(TTL, loading("before"))).await.unwrap();
    assert!(!before.hit);
    assert!(before.data_key.ends_with(&format!(":v{v1}")), "{}", before.data_key);
    for _ in 0..2 {
        let got = tracked
            .get(&key, GetOptions::new(TTL, loading("unused")))
            .await
            .unwrap();
        assert_eq!(got.data_key, before.data_key);
    }
    let replicated = Instant::now() + Duration::from_secs(5);
    while !value_on(&mut new, &before.data_key).await.ends_with(":before") {
        assert!(Instant::now() < replicated, "the replica never received the fill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(
        topology.failover(),
        (topology.base + 1).to_string(),
        "the replica was promoted"
    );
    // Sentinel closed the clients of the promoted server.
    let mut new = on_port(topology.base + 1).await;

    // The version written before the failover, read from the new primary.
    let (read, tries) = until(|| cache.get(&key, GetOptions::new(TTL, loading("unused"))), |_| true).await;
    let read = read.unwrap();
    eprintln!("first get after the failover: {tries} failed attempts");
    assert!(read.hit);
    assert_eq!(read.data_key, before.data_key);
    assert_eq!(read.value, b"before");

    // A bump written straight to the new primary: a cache still reading the
    // old one (not yet demoted) does not see it. Then the lease and the fill there.
    let v2 = bump(&mut new, &format!("{prefix}{key}"), 2).await;
    let suffix = format!(":v{v2}");
    let (filled, tries) = until(
        || cache.get(&key, GetOptions::new(TTL, loading("after"))),
        |got| got.data_key.ends_with(&suffix),
    )
    .await;
    let filled = filled.unwrap();
    eprintln!("fill after the failover: {tries} attempts before");
    assert!(!filled.hit);
    assert_eq!(filled.value, b"after");
    assert!(filled.data_key.ends_with(&suffix), "{}", filled.data_key);
    assert!(
        value_on(&mut new, &filled.data_key).await.ends_with(":after"),
        "filled on the new primary"
    );
    // The tracking L1 let go of the old primary's entry.
    let (seen, tries) = until(
        || tracked.get(&key, GetOptions::new(TTL, loading("unused"))),
        |got| got.data_key.ends_with(&suffix),
    )
    .await;
    let seen = seen.unwrap();
    eprintln!("tracking L1 after the failover: {tries} attempts before");
    assert_eq!(seen.data_key, filled.data_key);
    assert_eq!(seen.value, b"after");
    let lease: i64 = redis::cmd("EXISTS")
        .arg(format!("{}:lease", filled.data_key))
        .query_async(&mut new)
        .await
        .unwrap();
    assert_eq!(lease, 0, "no lease left behind");
}
