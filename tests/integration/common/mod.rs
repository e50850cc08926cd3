//! Shared helpers for the integration tests against the real local stack
//! (`scripts/stack up`), by concern. Addresses come from the environment
//! with loopback defaults; every test uses its own random table, topic,
//! group and prefix.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use rand::Rng;

pub mod chain;
pub mod cluster;
mod config;
mod daemon;
mod kafka;
mod redis;
mod stack;

pub use self::config::*;
pub use self::daemon::*;
pub use self::kafka::*;
pub use self::redis::*;
pub use self::stack::*;

pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{:012x}", n & 0xffff_ffff_ffff)
}

/// Polls `check` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn now_us() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_micros()).unwrap()
}
