//! The Redis sink: guarded version bumps through `bump.lua`, many targets
//! per call and the calls pipelined, plus the epoch record that detects a
//! Redis data loss. Split by what each part may touch:
//! - `request`    pure: a batch's bumps into pipelines (one per hash slot on
//!   a cluster) and `bump.lua` calls of at most [`BUMPS_PER_CALL`] keys
//! - `reply`      pure: replies decoded; a malformed or short one is a
//!   [`ReplyError`], never a default value
//! - `connection` the one place that opens connections (standalone, TLS,
//!   Sentinel, cluster), bounds every call, replaces a silent connection or
//!   one to a former primary, and keeps the scripts loaded (reloaded on
//!   NOSCRIPT)
//! - `service`    [`RedisSink`]: the I/O around them (pipelining, NOSCRIPT,
//!   WAIT, Pub/Sub notices, what `check` reads)
//! - `epoch`      data-loss detection and recovery: watermarks, INFO, the
//!   epoch advance every replica agrees on
//! - `eviction`   which evicted keys were version records
//! - `durability` `check`'s verdict on persistence and eviction
//! - `sentinel`   `check`'s view of a Sentinel deployment: the primary, the
//!   replicas and how far behind each is
//! - `notice`     invalidation notices
//!
//! Retriable or permanent is decided in one place, [`SinkError::is_retriable`].

pub(crate) mod connection;
pub(crate) mod durability;
pub mod epoch;
pub mod eviction;
pub mod notice;
pub(crate) mod reply;
pub(crate) mod request;
pub(crate) mod sentinel;
mod service;

pub use connection::BUMP_SCRIPT;
pub use reply::ReplyError;
pub use request::BUMPS_PER_CALL;
pub(crate) use service::RedisProbe;
pub use service::RedisSink;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open redis client for {url}: {cause}")]
    Client { url: String, cause: redis::RedisError },
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    #[error("{0}")]
    Reply(ReplyError),
    #[error("only {acknowledged} of {wanted} redis replicas acknowledged the batch within {timeout_ms} ms (redis.wait_replicas)")]
    ReplicasBehind {
        wanted: u32,
        acknowledged: i64,
        timeout_ms: u64,
    },
}

impl From<redis::RedisError> for SinkError {
    fn from(error: redis::RedisError) -> SinkError {
        SinkError::Redis(error)
    }
}

impl From<ReplyError> for SinkError {
    fn from(error: ReplyError) -> SinkError {
        SinkError::Reply(error)
    }
}

impl SinkError {
    /// Every `kind_label`, for metrics registered at zero.
    pub(crate) const KIND_LABELS: [&'static str; 6] =
        ["client", "connection", "refused", "server", "protocol", "replicas"];

    /// Small fixed label set for the errors metric.
    pub(crate) fn kind_label(&self) -> &'static str {
        match self {
            SinkError::Client { .. } => "client",
            SinkError::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => "connection",
            SinkError::Redis(_) if !self.is_retriable() => "refused",
            SinkError::Redis(_) => "server",
            SinkError::Reply(_) => "protocol",
            SinkError::ReplicasBehind { .. } => "replicas",
        }
    }

    /// Whether waiting can make the same write succeed: an unreachable,
    /// loading, failing-over or lagging Redis can. A refusal of the write
    /// itself cannot (a version record that is not a hash, a script error,
    /// an ACL that denies a command, a reply of the wrong shape, a bad
    /// client setting): only an operator can, so it is logged as such. Both
    /// kinds are retried, because nothing past an unapplied invalidation
    /// may be committed; a permanent one at the longest backoff.
    pub(crate) fn is_retriable(&self) -> bool {
        match self {
            SinkError::Client { .. } | SinkError::Reply(_) => false,
            SinkError::ReplicasBehind { .. } => true,
            SinkError::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => true,
            SinkError::Redis(e) => match e.kind() {
                redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => false,
                // A pipeline's error carries each failed command's reply code
                // (WRONGTYPE has no kind of its own in redis-rs).
                _ => !e
                    .clone()
                    .into_server_errors()
                    .is_some_and(|errors| errors.iter().any(|(_, error)| REFUSALS.contains(&error.code()))),
            },
        }
    }
}

/// Reply codes that refuse the write itself: the same write fails again
/// until an operator changes something (the key, the ACL, the script).
/// Everything else a server answers (LOADING, TRYAGAIN, CLUSTERDOWN,
/// MASTERDOWN, READONLY during a failover, OOM, BUSY, NOREPLICAS) passes.
const REFUSALS: &[&str] = &[
    "WRONGTYPE",
    "NOPERM",
    "ERR",
    "EXECABORT",
    "CROSSSLOT",
    "NOAUTH",
    "WRONGPASS",
];

/// What one guarded bump did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BumpResult {
    /// The version the bump wrote; `None` when the record had already seen
    /// this position or a later one and nothing changed (`bump.lua` returns
    /// no version then: nothing downstream names a data key for a no-op).
    pub version: Option<u64>,
}

impl BumpResult {
    /// Whether the bump changed the record (passed the guard).
    pub fn applied(&self) -> bool {
        self.version.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permanent_and_outages_retriable() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        // As the server sends them: a RESP error reply.
        let reply = |text: &str| match redis::parse_redis_value(format!("-{text}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(error)) => SinkError::Redis(RedisError::from(error)),
            other => panic!("not an error reply: {other:?}"),
        };
        for refusal in [
            "WRONGTYPE Operation against a key holding the wrong kind of value script: 1f0e, on @user_script:24.",
            "ERR user_script:3: Script attempted to access nonexistent global variable",
            "NOPERM this user has no permissions to run the 'hset' command",
        ] {
            let error = reply(refusal);
            assert!(!error.is_retriable(), "{refusal}");
            assert_eq!(error.kind_label(), "refused", "{refusal}");
        }
        let short = SinkError::from(ReplyError::Short {
            what: "bumps",
            sent: 2,
            got: 1,
        });
        assert!(!short.is_retriable());
        assert_eq!(short.kind_label(), "protocol");
        let malformed = SinkError::from(ReplyError::Malformed {
            what: "bump",
            problem: "version \"x\" is not a decimal integer below 2^63".into(),
        });
        assert!(!malformed.is_retriable());
        for outage in [
            "LOADING Redis is loading the dataset in memory",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
            "READONLY You can't write against a read only replica.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "BUSY Redis is busy running a script.",
        ] {
            assert!(reply(outage).is_retriable(), "{outage}");
        }
        let general = SinkError::Redis(RedisError::from((ErrorKind::Server(ServerErrorKind::TryAgain), "x")));
        assert!(general.is_retriable());
        let dropped = SinkError::Redis(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(dropped.is_retriable());
        assert_eq!(dropped.kind_label(), "connection");
        assert!(SinkError::ReplicasBehind {
            wanted: 1,
            acknowledged: 0,
            timeout_ms: 1
        }
        .is_retriable());
    }

    #[test]
    fn every_kind_label_is_listed_for_the_metric() {
        let io = || redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let errors = [
            SinkError::Client {
                url: "redis://x".into(),
                cause: io(),
            },
            SinkError::Redis(io()),
            SinkError::Redis(redis::RedisError::from((redis::ErrorKind::Parse, "x"))),
            SinkError::Redis(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
                "x",
            ))),
            SinkError::from(ReplyError::Short {
                what: "bumps",
                sent: 1,
                got: 0,
            }),
            SinkError::ReplicasBehind {
                wanted: 1,
                acknowledged: 0,
                timeout_ms: 1,
            },
        ];
        let mut labels: Vec<&str> = errors.iter().map(SinkError::kind_label).collect();
        labels.sort_unstable();
        let mut listed = SinkError::KIND_LABELS.to_vec();
        listed.sort_unstable();
        assert_eq!(labels, listed);
    }
}
