//! The MySQL-family lookup database (MySQL, MariaDB) through sqlx's MySQL
//! driver: `[lookup] url = "mysql://..."` (or `mariadb://`). The bounds are
//! the PostgreSQL lookups' (lookup/mod.rs runs the attempts, the timeout and
//! the `max_rows + 1` check); this file runs one attempt and turns each
//! result row into the JSON Debezium's MariaDB and MySQL connectors print
//! for the same columns, so a child key renders the same from a lookup row
//! as from the child's own change event. It also holds the catalog queries
//! `check` reads here (server variables, a table's columns and keys); what
//! their answers mean is source::mysql_check's.

use std::str::FromStr as _;
use std::time::Duration;

use serde_json::Value;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

use super::FetchError;
use crate::event::Row;
use crate::graph::Fanout;

/// True for the URLs this backend serves.
pub(crate) fn is_mysql_url(url: &str) -> bool {
    url.starts_with("mysql://") || url.starts_with("mariadb://")
}

/// The number of `?` placeholders in a MySQL-dialect query, outside quoted
/// strings and identifiers (what `bind` must match).
pub(crate) fn placeholders(query: &str) -> usize {
    let mut count = 0;
    let mut quote: Option<char> = None;
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '?') => count += 1,
            (None, _) => {}
        }
    }
    count
}

#[derive(Clone)]
pub(crate) struct MySqlLookups {
    pool: MySqlPool,
}

impl MySqlLookups {
    pub(crate) fn connect_lazy(url: &str, timeout: Duration) -> Result<MySqlLookups, sqlx::Error> {
        // sqlx knows the scheme `mysql`; MariaDB speaks the same protocol.
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let options = MySqlConnectOptions::from_str(&url)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Ok(MySqlLookups { pool })
    }

    pub(crate) async fn fetch(&self, fanout: &Fanout, binds: &[Value]) -> Result<Vec<Row>, FetchError> {
        let sql = wrapped_query(fanout);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in binds {
            query = match value {
                Value::Number(n) if n.is_i64() => query.bind(n.as_i64()),
                Value::Number(n) if n.is_u64() => query.bind(n.as_u64()),
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
        rows.iter()
            .map(as_debezium_row)
            .collect::<Result<_, _>>()
            .map_err(FetchError::Permanent)
    }

    pub(crate) async fn prepare(&self, fanout: &Fanout) -> Result<(), sqlx::Error> {
        use sqlx::{Executor as _, SqlSafeStr as _};
        self.pool
            .describe(sqlx::AssertSqlSafe(wrapped_query(fanout)).into_sql_str())
            .await
            .map(|_| ())
    }

    // The catalog queries `check` runs.

    /// A global server setting (`BINLOG_FORMAT`, ...); None when the server
    /// has no such variable. Sessions can override some for themselves; the
    /// global value is what every session gets unless it does.
    pub(crate) async fn global_variable(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query("SELECT variable_value FROM information_schema.global_variables WHERE variable_name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    /// The table's columns with their `column_key` (`PRI` for the primary
    /// key); empty when the table does not exist.
    pub(crate) async fn columns_with_keys(
        &self,
        database: &str,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT column_name, column_key FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
        )
        .bind(database)
        .bind(table)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// The rule's query, capped at one row more than allowed so an overflow is
/// seen without reading it all.
fn wrapped_query(fanout: &Fanout) -> String {
    format!(
        "SELECT * FROM ({}) AS q LIMIT {}",
        fanout.query.trim().trim_end_matches(';'),
        fanout.max_rows + 1
    )
}

/// One result row as Debezium's JSON for the same column types (with
/// `decimal.handling.mode=string`, as the stack's connector runs): integers
/// and YEAR as numbers, floats as shortest round-trip numbers, DECIMAL and
/// text types as strings, DATE as days since the epoch. Types whose Debezium
/// form depends on the column's declared precision or the connector's
/// settings (DATETIME, TIMESTAMP, TIME, BIT, binary strings) are refused:
/// the fan-out escalates instead of naming keys that would not match.
fn as_debezium_row(row: &MySqlRow) -> Result<Row, String> {
    let mut out = Row::new();
    for (i, column) in row.columns().iter().enumerate() {
        let type_name = column.type_info().name();
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            json_value(row, i, type_name).map_err(|e| format!("column {:?} ({type_name}): {e}", column.name()))?
        };
        out.insert(column.name().to_owned(), value);
    }
    Ok(out)
}

fn json_value(row: &MySqlRow, i: usize, type_name: &str) -> Result<Value, String> {
    let unsigned = type_name.ends_with(" UNSIGNED");
    let base = type_name.trim_end_matches(" UNSIGNED");
    let err = |e: sqlx::Error| e.to_string();
    Ok(match base {
        "BOOLEAN" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
            if unsigned {
                Value::from(row.try_get_unchecked::<u64, _>(i).map_err(err)?)
            } else {
                Value::from(row.try_get_unchecked::<i64, _>(i).map_err(err)?)
            }
        }
        "DOUBLE" => number(row.try_get_unchecked::<f64, _>(i).map_err(err)?)?,
        // A FLOAT column holds an f32: its shortest digits, not the f64's.
        "FLOAT" => number(
            format!("{}", row.try_get_unchecked::<f32, _>(i).map_err(err)?)
                .parse()
                .map_err(|_| "not a number")?,
        )?,
        "DECIMAL" | "CHAR" | "VARCHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" | "JSON" => {
            Value::String(row.try_get_unchecked::<String, _>(i).map_err(err)?)
        }
        "DATE" => {
            let date = row.try_get_unchecked::<chrono::NaiveDate, _>(i).map_err(err)?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).ok_or("no epoch")?;
            Value::from((date - epoch).num_days())
        }
        other => {
            return Err(format!(
                "type {other} has no canonical Debezium form here; select it as text or drop it"
            ))
        }
    })
}

fn number(f: f64) -> Result<Value, String> {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| format!("{f} is not a finite number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_quotes_only() {
        assert_eq!(placeholders("SELECT id FROM products WHERE category_id = ?"), 1);
        assert_eq!(
            placeholders("SELECT id FROM p WHERE a = ? AND b = ? AND c = '?' AND `d?` = \"?\""),
            2
        );
        assert_eq!(placeholders(r"SELECT id FROM p WHERE a = 'it\'s ?' AND b = ?"), 1);
        assert_eq!(placeholders("SELECT 1"), 0);
    }

    #[test]
    fn urls_by_scheme() {
        assert!(is_mysql_url("mysql://cdc:cdc@127.0.0.1:3306/shop"));
        assert!(is_mysql_url("mariadb://127.0.0.1/shop"));
        assert!(!is_mysql_url("postgres://127.0.0.1/shop"));
    }

    #[test]
    fn the_query_is_capped_one_row_above_max_rows() {
        let f = Fanout {
            query: "SELECT id FROM products WHERE category_id = ?;".into(),
            bind: vec!["id".into()],
            keys: vec![crate::graph::Template::parse("product:{id}").unwrap()],
            max_rows: 100,
            namespace: None,
        };
        assert_eq!(
            wrapped_query(&f),
            "SELECT * FROM (SELECT id FROM products WHERE category_id = ?) AS q LIMIT 101"
        );
    }
}
