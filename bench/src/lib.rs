//! cdc-bench: benchmarks of cdc-invalidator against the physical limits
//! (a raw consumer, redis-benchmark, a decode-only microbenchmark) and the
//! naive peer (bench/peers/naive-node), run by `bench/run`.
//!
//! - [`gen`]            Debezium-shaped events for `public.bench_items`, zipf hot keys
//! - [`avro`]           the same events in Avro with the Confluent framing, and their .avsc files
//! - [`daemon_config`]  the daemon's config for a run (templates per row)
//! - [`kafka`]          topic creation with broker append time, watermarks
//! - [`prom`]           scraping the daemon's /metrics (counters, gauges, histograms)
//! - [`stats`]          percentiles, medians, process CPU and peak RSS from /proc
//!
//! Binaries: `load`, `raw-consume`, `probe`, `db-probe` (PostgreSQL commit to
//! Redis through Debezium, run by `bench/db-probe`), and `harness` (the orchestrator
//! `bench/run` calls).

// The bench harness (this library and its binaries) is an operator tool run
// by bench/run, never linked by the daemon or an application: a panic on a
// broken setup or a malformed scrape is the run failing loudly, which is what
// it should do. The cast lints still hold (Cargo.toml): a wrong cast here is a
// wrong number in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod avro;
pub mod daemon_config;
pub mod decode_inputs;
pub mod gen;
pub mod kafka;
pub mod prom;
pub mod stats;

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)) // saturates in the year 294247
        .unwrap_or(0)
}

/// Makes `cmd` run the daemon on `config` the way every benchmark starts
/// it: JSON logs at `warn,cdc_invalidator=info` into `log` (stdout and
/// stderr), no stdin, and no `CDC_*` variable from the shell (the generated
/// config is the whole truth).
pub fn daemon_run_args(
    cmd: &mut std::process::Command,
    config: &std::path::Path,
    log: std::fs::File,
) -> std::io::Result<()> {
    use std::process::Stdio;
    cmd.args([
        "--log-format",
        "json",
        "--log",
        "warn,cdc_invalidator=info",
        "run",
        "--config",
    ])
    .arg(config)
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    for (name, _) in std::env::vars() {
        if name.starts_with("CDC_") {
            cmd.env_remove(&name);
        }
    }
    Ok(())
}
