//! The PostgreSQL lookup database: fan-out queries (one attempt each; the
//! attempts, the timeout and the `max_rows` check are lookup/mod.rs's) with
//! their rows turned into the JSON Debezium prints for the same columns, and
//! the catalog queries `check` reads (a table's columns, its primary key and
//! its replica identity).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;

use super::FetchError;
use crate::event::Row;
use crate::graph::Fanout;

#[derive(Clone)]
pub(crate) struct PgLookups {
    pool: PgPool,
    /// Column name to PostgreSQL type name, per query (from `describe`).
    types: Arc<Mutex<HashMap<String, ColumnTypes>>>,
}

/// Result column name to its PostgreSQL type name (`TIMESTAMPTZ`, `DATE`, ...).
type ColumnTypes = Arc<HashMap<String, String>>;

impl PgLookups {
    pub(crate) fn connect_lazy(url: &str, timeout: Duration) -> Result<PgLookups, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_lazy(url)?;
        Ok(PgLookups {
            pool,
            types: Arc::default(),
        })
    }

    /// One attempt: at most `max_rows + 1` rows, as JSON rows.
    pub(crate) async fn fetch(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, FetchError> {
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
            .fetch_all(&self.pool)
            .await
            .map_err(|e| FetchError::Retry(e.to_string()))?;
        let types = column_types(&self.pool, &self.types, fanout).await;
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
        self.pool
            .describe(sqlx::AssertSqlSafe(wrapped_query(fanout)).into_sql_str())
            .await
            .map(|_| ())
    }

    // The catalog queries `check` runs.

    /// The table's column names; empty when the table does not exist.
    pub(crate) async fn columns(&self, schema: &str, table: &str) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether the table is REPLICA IDENTITY FULL (old rows carry every
    /// column); None when the catalog could not be read.
    pub(crate) async fn replica_identity_full(&self, schema: &str, table: &str) -> Option<bool> {
        let identity: Option<String> = sqlx::query(
            "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(&self.pool)
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
        identity.map(|i| i == "f")
    }

    /// The primary key's columns; empty when there is none or the catalog
    /// could not be read (every templated column then counts as non-key).
    pub(crate) async fn primary_key(&self, schema: &str, table: &str) -> Vec<String> {
        sqlx::query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND i.indisprimary",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(&self.pool)
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
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
fn as_debezium(type_name: &str, value: Value) -> Value {
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
    use crate::graph::Template;

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
