//! Fan-out lookups: a parent row's change invalidates its children, found by
//! a parameterised SQL query against a read replica (sqlx: PostgreSQL here,
//! MySQL and MariaDB in lookup_mysql.rs, picked by the URL's scheme).
//! Every lookup is bounded: `max_rows` (one more is fetched to detect the
//! overflow), a per-query timeout, and a capped number of retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;

use super::lookup_mysql::{self, MySqlLookups};
use super::Template;
use crate::event::Row;

/// One `[[entity.fanout]]` rule.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub query: String,
    /// Columns of the changed row bound to `$1`, `$2`, ...
    pub bind: Vec<String>,
    /// Templates rendered from each result row.
    pub keys: Vec<Template>,
    pub max_rows: usize,
    /// Bumped instead when the children cannot be listed exactly.
    pub namespace: Option<String>,
}

/// A lookup the graph asks for: which rule, with which values.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupRequest {
    pub(crate) table: String,
    pub(crate) fanout: usize,
    pub(crate) binds: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("more than max_rows ({max_rows}) rows")]
    OverLimit { max_rows: usize },
    #[error("lookup failed after {attempts} attempts: {detail}")]
    Failed { attempts: u32, detail: String },
}

#[derive(Clone)]
pub struct Lookups {
    backend: Backend,
    timeout: Duration,
    attempts: u32,
}

/// The database the fan-out queries run against, chosen by the URL's scheme.
#[derive(Clone)]
enum Backend {
    Postgres {
        pool: PgPool,
        /// Column name to PostgreSQL type name, per query (from `describe`).
        types: Arc<Mutex<HashMap<String, ColumnTypes>>>,
    },
    /// `mysql://` or `mariadb://` (src/graph/lookup_mysql.rs).
    MySql(MySqlLookups),
}

/// Result column name to its PostgreSQL type name (`TIMESTAMPTZ`, `DATE`, ...).
type ColumnTypes = Arc<HashMap<String, String>>;

/// Why one attempt failed: worth another attempt, or certain to fail again
/// (a result the daemon cannot render), which escalates at once.
pub(crate) enum FetchError {
    Retry(String),
    Permanent(String),
}

// Retrying a lookup slower than this only delays the fan-out's escalation.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);

impl Lookups {
    pub fn connect_lazy(url: &str, timeout: Duration, attempts: u32) -> Result<Lookups, sqlx::Error> {
        let backend = if lookup_mysql::is_mysql_url(url) {
            Backend::MySql(MySqlLookups::connect_lazy(url, timeout)?)
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(timeout)
                .connect_lazy(url)?;
            Backend::Postgres {
                pool,
                types: Arc::default(),
            }
        };
        Ok(Lookups {
            backend,
            timeout,
            attempts: attempts.max(1),
        })
    }

    /// The PostgreSQL pool, when the lookup database is PostgreSQL.
    pub(crate) fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres { pool, .. } => Some(pool),
            Backend::MySql(_) => None,
        }
    }

    /// The MySQL-family pool, when the lookup database is MySQL or MariaDB.
    pub(crate) fn mysql_pool(&self) -> Option<&sqlx::MySqlPool> {
        match &self.backend {
            Backend::MySql(m) => Some(m.pool()),
            Backend::Postgres { .. } => None,
        }
    }

    /// Runs the rule's query. Result values come back as the JSON Debezium
    /// prints for the same columns (string mode for decimals), so child keys
    /// render the same as from the children's own change events.
    pub async fn run(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, LookupError> {
        let mut backoff = crate::backoff::Backoff::new(MAX_RETRY_BACKOFF);
        let mut last_error = String::new();
        for attempt in 1..=self.attempts {
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.timeout, self.fetch(fanout, binds)).await;
            crate::metrics::lookup(started.elapsed().as_secs_f64());
            match outcome {
                Ok(Ok(rows)) => {
                    if rows.len() > fanout.max_rows {
                        return Err(LookupError::OverLimit {
                            max_rows: fanout.max_rows,
                        });
                    }
                    crate::metrics::fanout_rows(rows.len());
                    return Ok(rows);
                }
                Ok(Err(FetchError::Retry(e))) => last_error = e,
                Ok(Err(FetchError::Permanent(detail))) => {
                    return Err(LookupError::Failed {
                        attempts: attempt,
                        detail,
                    })
                }
                Err(_) => last_error = format!("timed out after {:?}", self.timeout),
            }
            if attempt < self.attempts {
                tracing::debug!(attempt, error = %last_error, "lookup failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        Err(LookupError::Failed {
            attempts: self.attempts,
            detail: last_error,
        })
    }

    /// One attempt: at most `max_rows + 1` rows, as JSON rows.
    async fn fetch(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, FetchError> {
        let (pool, types) = match &self.backend {
            Backend::MySql(m) => return m.fetch(fanout, binds).await,
            Backend::Postgres { pool, types } => (pool, types),
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(wrapped_query(fanout)));
        for value in binds {
            query = match value {
                Value::Number(n) if n.is_i64() => query.bind(n.as_i64()),
                Value::Number(n) => query.bind(n.as_f64()),
                Value::Bool(b) => query.bind(*b),
                Value::String(s) => query.bind(s.clone()),
                other => query.bind(other.to_string()),
            };
        }
        let rows = query
            .fetch_all(pool)
            .await
            .map_err(|e| FetchError::Retry(e.to_string()))?;
        let types = column_types(pool, types, fanout).await;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<Option<Value>, _>(0).ok().flatten())
            .filter_map(|v| match v {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .map(|mut row| {
                for (column, value) in row.iter_mut() {
                    if let Some(ty) = types.get(column) {
                        *value = as_debezium(ty, std::mem::take(value));
                    }
                }
                row
            })
            .collect())
    }

    /// Prepares the rule's query without running it (for `check`).
    pub(crate) async fn prepare(&self, fanout: &Fanout) -> Result<(), sqlx::Error> {
        use sqlx::{Executor as _, SqlSafeStr as _};
        match &self.backend {
            Backend::MySql(m) => m.prepare(fanout).await,
            Backend::Postgres { pool, .. } => pool
                .describe(sqlx::AssertSqlSafe(wrapped_query(fanout)).into_sql_str())
                .await
                .map(|_| ()),
        }
    }
}

/// The result columns' PostgreSQL types, described once per query. When
/// the database cannot describe it, no column is converted (text stays).
async fn column_types(pool: &PgPool, cache: &Mutex<HashMap<String, ColumnTypes>>, fanout: &Fanout) -> ColumnTypes {
    use sqlx::{Column as _, Executor as _, SqlSafeStr as _, TypeInfo as _};
    let cached = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&fanout.query)
        .cloned();
    if let Some(types) = cached {
        return types;
    }
    let described = pool
        .describe(sqlx::AssertSqlSafe(fanout.query.trim().trim_end_matches(';').to_owned()).into_sql_str())
        .await;
    let types: ColumnTypes = match described {
        Ok(d) => Arc::new(
            d.columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(query = %fanout.query, error = %e, "cannot describe the fan-out query; its values render as PostgreSQL prints them");
            return Arc::default();
        }
    };
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(fanout.query.clone(), types.clone());
    types
}

/// Each result row as one JSON object of text values, capped at one row
/// more than allowed so an overflow is seen without reading it all.
fn wrapped_query(fanout: &Fanout) -> String {
    format!(
        "SELECT (SELECT jsonb_object_agg(key, value #>> '{{}}') FROM jsonb_each(to_jsonb(q))) FROM ({}) q LIMIT {}",
        fanout.query.trim().trim_end_matches(';'),
        fanout.max_rows + 1
    )
}

/// A lookup value (PostgreSQL's text, through jsonb) as the JSON Debezium
/// prints for the same column with its default `time.precision.mode`
/// (adaptive), so a child key renders the same from a lookup row as from its
/// own change event (docs/key-rendering.md): `timestamptz` as a UTC
/// ZonedTimestamp with six fractional digits, `date` as days since the epoch,
/// `timestamp` as microseconds since the epoch, `time` as microseconds since
/// midnight, floats as numbers. Other types keep their text. A value that does not parse is
/// left as it is.
pub(crate) fn as_debezium(type_name: &str, value: Value) -> Value {
    use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};
    let Value::String(text) = &value else {
        return value;
    };
    let converted = match type_name {
        "TIMESTAMPTZ" => chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| {
            Value::String(
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string(),
            )
        }),
        "DATE" => NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
            Some(Value::from((d - epoch).num_days()))
        }),
        "TIMESTAMP" => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|t| Value::from(t.and_utc().timestamp_micros())),
        // Floats print as shortest round-trip numbers: PostgreSQL's text
        // (`1e+300`, `-0`) is only another spelling of the same value.
        "FLOAT8" => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        "FLOAT4" => text
            .parse::<f32>()
            .ok()
            .and_then(|f| format!("{f}").parse::<f64>().ok())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        "TIME" => NaiveTime::parse_from_str(text, "%H:%M:%S%.f").ok().map(|t| {
            Value::from(i64::from(t.num_seconds_from_midnight()) * 1_000_000 + i64::from(t.nanosecond() / 1000))
        }),
        _ => None,
    };
    converted.unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_the_query_with_a_limit_one_above_max_rows() {
        let f = Fanout {
            query: "SELECT id FROM products WHERE category_id = $1;".into(),
            bind: vec!["id".into()],
            keys: vec![Template::parse("product:{id}").unwrap()],
            max_rows: 100,
            namespace: None,
        };
        let sql = wrapped_query(&f);
        assert!(
            sql.ends_with("FROM (SELECT id FROM products WHERE category_id = $1) q LIMIT 101"),
            "{sql}"
        );
        assert!(sql.contains("value #>> '{}'"), "{sql}");
    }

    #[test]
    fn temporal_values_take_debezium_forms() {
        let text = |t: &str| Value::String(t.into());
        assert_eq!(
            as_debezium("TIMESTAMPTZ", text("2024-02-18T16:00:00+00:00")),
            text("2024-02-18T16:00:00.000000Z")
        );
        assert_eq!(
            as_debezium("TIMESTAMPTZ", text("2024-05-01T12:34:56.789012+02:00")),
            text("2024-05-01T10:34:56.789012Z")
        );
        assert_eq!(as_debezium("DATE", text("2024-05-01")), Value::from(19844));
        assert_eq!(
            as_debezium("TIMESTAMP", text("1970-01-01T00:00:01.5")),
            Value::from(1_500_000)
        );
        assert_eq!(as_debezium("TIME", text("00:00:02.25")), Value::from(2_250_000));
        assert_eq!(as_debezium("TEXT", text("2024-05-01")), text("2024-05-01"));
    }
}
