//! Every SQL query the daemon runs against the lookup database (a read
//! replica of the source): the fan-out queries of `[[entity.fanout]]` rules,
//! and the catalog queries `check` reads to hold the graph against the real
//! schema. One file per database kind, picked by the URL's scheme:
//! [`postgres`] and [`mysql`] (MySQL and MariaDB through sqlx's MySQL
//! driver), side by side and never importing each other; this file owns the
//! [`Lookups`] handle, the errors and the dispatch. [`fan_out`] turns a
//! route's lookup requests into targets, the one place `run`, `explain` and
//! `dead-letters replay` do it.
//!
//! Every fan-out lookup is bounded: `max_rows` (one more is fetched to detect
//! the overflow), a per-attempt timeout, and a capped number of attempts.

mod fanout;
pub(crate) mod mysql;
mod postgres;

pub(crate) use fanout::fan_out;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backoff::{Next, Retry};
use crate::event::Row;
use crate::graph::Fanout;
use mysql::MySqlLookups;
use postgres::PgLookups;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("more than max_rows ({max_rows}) rows")]
    OverLimit { max_rows: usize },
    #[error("lookup failed after {attempts} attempts: {detail}")]
    Failed { attempts: u32, detail: String },
}

/// The lookup database: its pool, and the bounds of every fan-out query.
#[derive(Clone)]
pub struct Lookups {
    backend: Backend,
    timeout: Duration,
    attempts: u32,
}

/// The database the queries run against, chosen by the URL's scheme.
#[derive(Clone)]
enum Backend {
    Postgres(PgLookups),
    /// `mysql://` or `mariadb://`.
    MySql(MySqlLookups),
}

/// The lookup database's catalog, per kind: what `check` reads to hold the
/// graph against the real schema (the checks differ per kind, so `check`
/// asks each in its own terms).
pub(crate) enum Catalog<'a> {
    Postgres(&'a PgLookups),
    MySql(&'a MySqlLookups),
}

/// Why one attempt failed: worth another attempt, or certain to fail again
/// (a result the daemon cannot render), which escalates at once.
pub(crate) enum FetchError {
    Retry(String),
    Permanent(String),
}

impl FetchError {
    fn detail(&self) -> &str {
        match self {
            FetchError::Retry(detail) | FetchError::Permanent(detail) => detail,
        }
    }
}

// Retrying a lookup slower than this only delays the fan-out's escalation.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);

impl Lookups {
    /// A lazy pool: nothing is connected until the first query, so an
    /// unreachable database costs nothing until a fan-out needs it.
    pub fn connect_lazy(url: &str, timeout: Duration, attempts: u32) -> Result<Lookups, sqlx::Error> {
        let backend = if mysql::is_mysql_url(url) {
            Backend::MySql(MySqlLookups::connect_lazy(url, timeout)?)
        } else {
            Backend::Postgres(PgLookups::connect_lazy(url, timeout)?)
        };
        Ok(Lookups {
            backend,
            timeout,
            attempts: attempts.max(1),
        })
    }

    pub(crate) fn catalog(&self) -> Catalog<'_> {
        match &self.backend {
            Backend::Postgres(db) => Catalog::Postgres(db),
            Backend::MySql(db) => Catalog::MySql(db),
        }
    }

    /// Runs the rule's query. Result values come back as the JSON Debezium
    /// prints for the same columns (string mode for decimals), so child keys
    /// render the same as from the children's own change events.
    pub async fn run(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, LookupError> {
        let outcome = Retry::new(MAX_RETRY_BACKOFF)
            .attempts(self.attempts)
            .run(
                || self.attempt(fanout, binds),
                |error, attempt| match error {
                    FetchError::Permanent(_) => Next::Stop,
                    FetchError::Retry(detail) => {
                        if attempt.will_retry {
                            tracing::debug!(attempt = attempt.number, error = %detail, "lookup failed; retrying");
                        }
                        Next::Retry
                    }
                },
            )
            .await;
        match outcome {
            Ok(rows) if rows.len() > fanout.max_rows => Err(LookupError::OverLimit {
                max_rows: fanout.max_rows,
            }),
            Ok(rows) => {
                crate::metrics::fanout_rows(rows.len());
                Ok(rows)
            }
            Err(failed) => Err(LookupError::Failed {
                attempts: failed.attempts(),
                detail: failed.error().detail().to_owned(),
            }),
        }
    }

    /// One attempt, bounded by the timeout and timed for the lookup histogram.
    async fn attempt(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, FetchError> {
        let started = Instant::now();
        let fetched = tokio::time::timeout(self.timeout, self.fetch(fanout, binds)).await;
        crate::metrics::lookup(started.elapsed().as_secs_f64());
        fetched.unwrap_or_else(|_| Err(FetchError::Retry(format!("timed out after {:?}", self.timeout))))
    }

    /// One query: at most `max_rows + 1` rows, as JSON rows.
    async fn fetch(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, FetchError> {
        match &self.backend {
            Backend::Postgres(db) => db.fetch(fanout, binds).await,
            Backend::MySql(db) => db.fetch(fanout, binds).await,
        }
    }

    /// Prepares the rule's query without running it (for `check`).
    pub(crate) async fn prepare(&self, fanout: &Fanout) -> Result<(), sqlx::Error> {
        match &self.backend {
            Backend::Postgres(db) => db.prepare(fanout).await,
            Backend::MySql(db) => db.prepare(fanout).await,
        }
    }
}
