//! cdc-cache: the reader half of cdc-invalidator's key protocol, for Rust.
//! The specification both this crate and the Node package follow is
//! readers/spec.md; section numbers below refer to it.
//!
//! - `key`     cache keys rendered exactly as the daemon renders templates
//! - `naming`  records, data keys, lease keys, stale keys, version parsing
//! - `cache`   `Cache::get`: the read path, leases and waiting,
//!   stale-while-revalidate, XFetch, the freshness check
//! - `flight`  single flight: concurrent gets of one key share one read, one
//!   lease attempt and one wait
//! - `l1`      the optional in-process cache, and the daemon's notices
//! - `tracking` the exact L1's Redis connection (client-side caching)
//! - `sentinel` the daemon's `[redis.sentinel]` settings, and the primary
//!   they name, followed across failovers (`Cache::connect_sentinel`)
//! - `metrics` every metric name, described once
//! - `emit`    naming invalidations in the application's own transaction
//!   (a logical-decoding message or an outbox row; the database calls need
//!   the `sqlx` feature)
//!
//! ```no_run
//! # async fn page() -> Result<(), cdc_cache::Error> {
//! use std::time::Duration;
//! use cdc_cache::{Cache, CacheOptions, GetOptions};
//! let cache = Cache::connect("redis://127.0.0.1:6379", CacheOptions::default()).await?;
//! let got = cache
//!     .get("product:42", GetOptions::new(Duration::from_secs(60), || async {
//!         Ok::<_, std::io::Error>(b"{\"name\":\"hammer\"}".to_vec())
//!     }))
//!     .await?;
//! println!("{} hit={} keyed by {}", String::from_utf8_lossy(&got.value), got.hit, got.data_key);
//! # Ok(()) }
//! ```

// Unit tests may unwrap, expect and index: a panic there is the test
// failing. Library code may not (the workspace lint table, Cargo.toml).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

mod cache;
pub mod emit;
mod flight;
pub mod key;
mod l1;
pub mod metrics;
pub mod naming;
mod sentinel;
mod tracking;

use std::sync::Arc;
use std::time::Duration;

pub use cache::{Cache, CacheOptions, Connection, Consistency, GetOptions, Got};
pub use key::{key, KeyValue, Template};
pub use l1::{L1Mode, L1Options};
pub use sentinel::SentinelSettings;

/// The loader's error, as the loader returns it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A loader's error once passed through: shared, because every get of a
/// flight (spec section 5, rule 2) receives the same one.
pub type LoaderError = Arc<dyn std::error::Error + Send + Sync>;

/// Every error of a `get` or of building a `Cache`; `kind()` is the spec's
/// word for it (section 11). Cloneable: the gets of one flight share it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A version field that is not a canonical integer (spec section 3).
    #[error("version record {record:?}: field {field:?} holds {text:?}, not a version (decimal digits, 0 to 2^63-1, no leading zero)")]
    BadVersion {
        record: String,
        field: String,
        text: String,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("loader: {0}")]
    Loader(LoaderError),
    /// The loader ran longer than `CacheOptions::loader_timeout`.
    #[error("loader_timeout: the loader of {data_key:?} ran longer than {after:?}")]
    LoaderTimeout { data_key: String, after: Duration },
    /// Another reader held the lease of `data_key` for the whole
    /// `wait_timeout` without filling it, and there was no previous value to
    /// serve. Nothing was loaded; retry the get to wait again.
    #[error("lease_timeout: waited {waited:?} for another reader to load {data_key:?}")]
    LeaseTimeout { data_key: String, waited: Duration },
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The read script answered something it never returns: a different script
    /// under its SHA, or a proxy in between.
    #[error("unexpected reply from the read script: {0}")]
    Protocol(String),
}

impl Error {
    /// The label the spec uses for this kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadVersion { .. } => "bad_version",
            Error::Redis(_) => "redis",
            Error::Loader(_) => "loader",
            Error::LoaderTimeout { .. } => "loader_timeout",
            Error::LeaseTimeout { .. } => "lease_timeout",
            Error::InvalidOptions(_) => "invalid_options",
            Error::Protocol(_) => "protocol",
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
