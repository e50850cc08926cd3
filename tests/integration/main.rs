//! The integration tests: one binary (one link of the crate, rdkafka and
//! the helpers), one module per area. Most need the local stack
//! (`scripts/stack up`, then `eval "$(scripts/stack env)"`); `cargo test
//! --lib` runs the unit tests without it.
//!
//! `cargo test --test integration <module>::` runs one area, e.g.
//! `cargo test --test integration poison::`.

// Tests may unwrap, expect and index: a panic there is the test failing,
// which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

mod audit;
mod avro;
mod backpressure;
mod connector_status;
mod end_to_end;
mod fanout;
mod faults;
mod first_run;
mod fixtures_decode;
mod fixtures_mariadb;
mod fuzz;
mod key_vectors;
mod lua_guard;
mod mariadb;
mod metrics_outage;
mod notices;
mod poison;
mod prometheus_alerts;
mod readers;
mod readiness;
mod redis_cluster;
mod redis_loss;
mod redis_sentinel;
mod scale_out;
mod secrets;
mod stack_chain;
mod txn_messages;
