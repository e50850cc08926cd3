//! cdc-invalidator: keeps Redis-backed caches correct by following the
//! database's change log (Debezium events in Kafka).
//!
//! The crate, one stage per module, in the order data flows:
//! - [`config`]    strict TOML config: the file's shape, then one file per section with its
//!   settings type, defaults with reasons and validation; passwords kept out of its errors
//! - [`topic_pattern`] `topic_regex` compiled by the POSIX engine librdkafka itself uses
//! - [`kafka_client`] every Kafka client's settings: the passthrough, then what its role forces
//! - [`kafka_forced`] the librdkafka settings the daemon forces, each with its reason (a leaf:
//!   `kafka_client` sets them, `config` refuses them in the passthrough)
//! - [`source`]    rdkafka consumer, rebalance bridge, owned records at the edge, source liveness,
//!   what `check` verifies on a MySQL-family source database
//! - [`event`]     owned domain types: `KafkaRecord`, `ChangeEvent`, `Position`
//! - [`registry`]  the schema registry client (schemas by id, registering the notice schema)
//! - [`decode`]    Debezium envelopes (JSON, wrapped or not, flattened) to `ChangeEvent`, and
//!   logical-decoding message records to `LogicalMessage`
//! - [`graph`]     key templates and entity rules: event to targets, escalation, stalls,
//!   the fan-out lookups to run; invalidations named by messages and outbox rows; pure
//!   (no SQL, no I/O)
//! - [`lookup`]    all SQL against the lookup database: fan-out queries (PostgreSQL, and
//!   MySQL/MariaDB through sqlx's MySQL driver) with their bounds and retries, the one
//!   fan-out resolution `run`, `explain` and `dead-letters replay` share, the catalog
//!   queries `check` reads
//! - [`plan`]      coalescing per (target, source) and the moot-event rule
//! - [`sink`]      guarded version bumps in Redis through `bump.lua`: pure request building and
//!   reply decoding, the connection, the I/O, and the epoch record's data-loss detection
//! - [`dead_letter`] records that could not be decoded or rendered, in PostgreSQL (sqlx)
//! - [`pipeline`]  the consumer stage (a thin rdkafka driver around a pure partition unit, fan-out
//!   lookups as tasks) and the applier, joined by a bounded channel; offsets stored after Redis acknowledged
//! - [`metrics`]   every metric name and recording helper
//! - [`backoff`]   the one capped exponential retry delay and the retry driver every loop runs through
//! - [`admin`]     HTTP `/metrics`, `/healthz`, `/readyz`, and the shared status
//! - [`audit`]     the consistency auditor: sampled changes checked against Redis after an SLO
//! - [`tasks`]     the background tasks, tracked by name so `run` waits for them at shutdown
//! - [`cli`]       one file per command: `run`, `check`, `explain`, `migrate`, `dead-letters`, `audit`
//!
//! Errors say each cause once: an error type that wraps another puts the
//! inner error in its message and does not return it from `source()`
//! (no `#[from]`/`#[source]`, no field named `source`), because the binary
//! prints the whole chain with `{:#}` and the log prints the message alone.
//! Context added with anyhow is the only chain.

// Hostile input must never panic the daemon (a panic on a record is a crash
// loop: the record comes back after every restart). The workspace lint table
// (Cargo.toml) denies unwrap/expect/indexing: input-derived values get real
// error handling, and the few provably safe sites carry the proof and a local
// allow. Unit tests may unwrap: a failed unwrap there is the test failing.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

// admin.rs's remaining `expect`s (the status mutex lock; reading this
// process's own /proc entries) are lock and start-up invariants, not input.
#[cfg_attr(not(test), allow(clippy::expect_used))]
pub mod admin;
pub mod audit;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod event;
pub mod graph;
pub mod kafka_client;
pub mod kafka_forced;
pub mod lookup;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod registry;
pub mod sink;
pub mod source;
pub(crate) mod tasks;
pub mod topic_pattern;

#[cfg(test)]
mod error_policy {
    fn kafka_error() -> rdkafka::error::KafkaError {
        rdkafka::error::KafkaError::ClientCreation("no brokers".into())
    }

    fn redis_error() -> redis::RedisError {
        redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"))
    }

    /// Every wrapping error of the crate: its cause is in the message and
    /// not returned again as a source, so `{:#}` prints it once.
    #[test]
    fn wrapping_errors_say_their_cause_once() {
        let errors: Vec<(Box<dyn std::error::Error + Send + Sync>, &str)> = vec![
            (
                Box::new(crate::config::ConfigError::Read {
                    path: "/nonexistent.toml".into(),
                    cause: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
                }),
                "No such file or directory",
            ),
            (Box::new(crate::sink::SinkError::from(redis_error())), "refused"),
            (
                Box::new(crate::sink::SinkError::Client {
                    url: "redis://x".into(),
                    cause: redis_error(),
                }),
                "refused",
            ),
            (
                Box::new(crate::sink::notice::NoticeError::from(kafka_error())),
                "no brokers",
            ),
            (
                Box::new(crate::pipeline::RunError::Consumer(kafka_error())),
                "no brokers",
            ),
            (
                Box::new(crate::pipeline::RunError::Subscribe {
                    patterns: vec!["t".into()],
                    cause: kafka_error(),
                }),
                "no brokers",
            ),
        ];
        for (error, cause) in errors {
            // `{:#}` prints the message, then each source: with none, the
            // message is the whole chain.
            assert!(error.source().is_none(), "{error}: returns its cause again as a source");
            let printed = error.to_string();
            assert_eq!(printed.matches(cause).count(), 1, "{printed}");
        }
    }
}
