//! Helpers for the tests against a real Redis: its address
//! (`CDC_REDIS_URL`, default the stack's `redis://127.0.0.1:6379`), unique
//! names per test, bumps that write `v` and `pv` as the daemon's bump script
//! does, and counters from a debugging metrics recorder.

#![allow(dead_code)] // each test binary uses its own part of this file

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cdc_cache::{Cache, CacheOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

pub fn redis_url() -> String {
    std::env::var("CDC_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

pub async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// What src/sink/bump.lua does to one record: `v` becomes the server time
/// in µs (or one above the old `v`), `pv` the old `v`.
const BUMP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local old = redis.call('HGET', KEYS[1], 'v')
local v = now
if old and tonumber(old) >= now then v = tonumber(old) + 1 end
local text = string.format('%d', v)
if old then
  redis.call('HSET', KEYS[1], 'v', text, 'pv', old)
else
  redis.call('HSET', KEYS[1], 'v', text)
end
return text
";

pub async fn bump(record: &str) -> String {
    redis::Script::new(BUMP)
        .key(record)
        .invoke_async(&mut conn().await)
        .await
        .unwrap()
}

pub async fn exists(key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn().await)
        .await
        .unwrap();
    n == 1
}

pub fn options(name: &str, prefix: &str) -> CacheOptions {
    CacheOptions {
        name: name.to_owned(),
        prefix: prefix.to_owned(),
        ..CacheOptions::default()
    }
}

pub async fn cache(options: CacheOptions) -> Cache {
    recorded();
    Cache::connect(&redis_url(), options).await.unwrap()
}

/// The debugging recorder, installed once per test binary. A snapshot
/// resets its counters, so every snapshot is added to `totals`.
struct Recorded {
    snapshotter: Snapshotter,
    totals: Mutex<HashMap<(String, String, String), u64>>,
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

/// A counter's total for one cache, with `layer` or `reason` equal to
/// `label` (or summed over them when `label` is empty).
pub fn counter_with(name: &str, cache: &str, label: &str) -> u64 {
    let r = recorded();
    let mut totals = r.totals.lock().unwrap();
    for (key, _, _, value) in r.snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let get = |k: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == k)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let sub = format!("{}{}", get("layer"), get("reason"));
            *totals
                .entry((key.key().name().to_owned(), get("cache"), sub))
                .or_default() += n;
        }
    }
    totals
        .iter()
        .filter(|((n, c, sub), _)| n == name && c == cache && (label.is_empty() || sub == label))
        .map(|(_, v)| *v)
        .sum()
}

pub fn counter(name: &str, cache: &str) -> u64 {
    counter_with(name, cache, "")
}

/// Polls `check` every millisecond until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
