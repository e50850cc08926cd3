//! Fan-out lookups: a parent row's change invalidates its children, found by
//! a parameterised SQL query against a read replica (sqlx, PostgreSQL).
//! Every lookup is bounded: `max_rows` (one more is fetched to detect the
//! overflow), a per-query timeout, and a capped number of retries.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;

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
    pub table: String,
    pub fanout: usize,
    pub binds: Vec<Value>,
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
    pool: PgPool,
    timeout: Duration,
    attempts: u32,
}

// Retrying a lookup faster than this only adds load to a struggling replica.
const FIRST_RETRY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(2);

impl Lookups {
    pub fn connect_lazy(url: &str, timeout: Duration, attempts: u32) -> Result<Lookups, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_lazy(url)?;
        Ok(Lookups {
            pool,
            timeout,
            attempts: attempts.max(1),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs the rule's query. Result values come back as text, the way
    /// Debezium prints them in string mode, so child keys render the same.
    pub async fn run(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, LookupError> {
        let sql = wrapped_query(fanout);
        let mut backoff = FIRST_RETRY_BACKOFF;
        let mut last_error = String::new();
        for attempt in 1..=self.attempts {
            let started = Instant::now();
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for value in binds {
                query = match value {
                    Value::Number(n) if n.is_i64() => query.bind(n.as_i64()),
                    Value::Number(n) => query.bind(n.as_f64()),
                    Value::Bool(b) => query.bind(*b),
                    Value::String(s) => query.bind(s.clone()),
                    other => query.bind(other.to_string()),
                };
            }
            let outcome = tokio::time::timeout(self.timeout, query.fetch_all(&self.pool)).await;
            crate::metrics::lookup(started.elapsed().as_secs_f64());
            match outcome {
                Ok(Ok(rows)) => {
                    if rows.len() > fanout.max_rows {
                        return Err(LookupError::OverLimit {
                            max_rows: fanout.max_rows,
                        });
                    }
                    crate::metrics::fanout_rows(rows.len());
                    return Ok(rows
                        .iter()
                        .filter_map(|r| r.try_get::<Option<Value>, _>(0).ok().flatten())
                        .filter_map(|v| match v {
                            Value::Object(map) => Some(map),
                            _ => None,
                        })
                        .collect());
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("timed out after {:?}", self.timeout),
            }
            if attempt < self.attempts {
                tracing::debug!(attempt, error = %last_error, "lookup failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
            }
        }
        Err(LookupError::Failed {
            attempts: self.attempts,
            detail: last_error,
        })
    }

    /// Prepares the rule's query without running it (for `check`).
    pub async fn prepare(&self, fanout: &Fanout) -> Result<(), sqlx::Error> {
        use sqlx::{Executor as _, SqlSafeStr as _};
        self.pool
            .describe(sqlx::AssertSqlSafe(wrapped_query(fanout)).into_sql_str())
            .await
            .map(|_| ())
    }
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
}
