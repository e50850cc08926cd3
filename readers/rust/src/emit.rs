//! Naming invalidations where the application writes: keys, namespaces and
//! rows the daemon's relationship graph cannot derive, named inside the
//! application's own transaction, so they are applied if and only if it
//! commits, in order with its rows (docs/readers.md, "Naming invalidations";
//! the daemon's `[messages]` section).
//!
//! - PostgreSQL: [`emit`] / [`emit_invalidation`] write a transactional
//!   logical-decoding message (`pg_logical_emit_message(true, prefix, content)`).
//! - MySQL, MariaDB (or PostgreSQL without messages): [`insert_outbox_mysql`] /
//!   [`insert_outbox_postgres`] insert the same content into an outbox table
//!   the daemon is configured to read (`[messages] outbox_tables`).
//!
//! The database functions need the `sqlx` feature; [`Invalidation::content`]
//! (the content text, version 1) does not.
//!
//! ```no_run
//! # #[cfg(feature = "sqlx")]
//! # async fn order(pool: sqlx::PgPool) -> Result<(), cdc_cache::emit::EmitError> {
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE stock SET n = n - 1 WHERE sku = 'A'").execute(&mut *tx).await?;
//! cdc_cache::emit::emit_invalidation(&mut tx, ["stock:A", "category:3:count"], ["catalogue"]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use serde_json::{json, Map, Value};

/// The daemon's default `[messages] prefix`.
pub const DEFAULT_PREFIX: &str = "cdc-invalidator";

/// The content version this module writes and the daemon reads.
pub const CONTENT_VERSION: u64 = 1;

/// The daemon's default `[messages] outbox_column`.
pub const OUTBOX_COLUMN: &str = "content";

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The daemon would refuse this content (as a dead letter): caught here,
    /// before the transaction commits.
    #[error("invalid invalidation: {0}")]
    Invalid(String),
    #[error("outbox table {0:?} is not a plain name (letters, digits and `_`, optionally `schema.table`)")]
    BadTable(String),
    #[cfg(feature = "sqlx")]
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What one transaction names: cache keys (rendered, e.g. with
/// [`crate::key`]), namespaces the daemon's config declares, and rows of
/// configured entities (invalidated as if they had changed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invalidation {
    keys: Vec<String>,
    namespaces: Vec<String>,
    rows: Vec<(String, Map<String, Value>)>,
}

impl Invalidation {
    pub fn new() -> Invalidation {
        Invalidation::default()
    }

    pub fn keys<I, S>(mut self, keys: I) -> Invalidation
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    pub fn namespaces<I, S>(mut self, namespaces: I) -> Invalidation
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namespaces.extend(namespaces.into_iter().map(Into::into));
        self
    }

    /// A row of `entity` (the `[[entity]] table`, e.g. `public.products`),
    /// with its columns as Debezium would print them (docs/key-rendering.md).
    pub fn row(mut self, entity: impl Into<String>, row: Map<String, Value>) -> Invalidation {
        self.rows.push((entity.into(), row));
        self
    }

    /// The content text (version 1), checked as the daemon checks it:
    /// something is named, every key is a rendered cache key and not a
    /// reserved record, no name is empty.
    pub fn content(&self) -> Result<String, EmitError> {
        if self.keys.is_empty() && self.namespaces.is_empty() && self.rows.is_empty() {
            return Err(EmitError::Invalid("names no key, namespace or row".into()));
        }
        for key in &self.keys {
            check_key(key).map_err(EmitError::Invalid)?;
        }
        if self.namespaces.iter().any(String::is_empty) {
            return Err(EmitError::Invalid("an empty namespace".into()));
        }
        if self.rows.iter().any(|(entity, _)| entity.is_empty()) {
            return Err(EmitError::Invalid("a row with an empty entity".into()));
        }
        let mut content = Map::new();
        content.insert("v".into(), json!(CONTENT_VERSION));
        if !self.keys.is_empty() {
            content.insert("keys".into(), json!(self.keys));
        }
        if !self.namespaces.is_empty() {
            content.insert("namespaces".into(), json!(self.namespaces));
        }
        if !self.rows.is_empty() {
            let rows: Vec<Value> = self
                .rows
                .iter()
                .map(|(entity, row)| json!({"entity": entity, "row": row}))
                .collect();
            content.insert("rows".into(), Value::Array(rows));
        }
        Ok(Value::Object(content).to_string())
    }
}

/// The daemon's rule for a named key: not empty, not `epoch` or `ns:*`
/// (the key protocol's own records), and nothing rendering always escapes
/// (control characters, braces, a `%` that is not `%XX`). A brace is most
/// often a template that was never rendered.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("an empty key".into());
    }
    if key == "epoch" || key.starts_with("ns:") {
        return Err(format!(
            "key {key:?} is reserved (`epoch`, `ns:*`): name namespaces as namespaces"
        ));
    }
    let bytes = key.as_bytes();
    let hex = |i: usize| bytes.get(i).is_some_and(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
    for (at, c) in key.char_indices() {
        let bad = c.is_ascii_control() || c == '{' || c == '}' || (c == '%' && !(hex(at + 1) && hex(at + 2)));
        if bad {
            return Err(format!(
                "key {key:?} holds {c:?} at byte {at}: not a rendered cache key (render it with cdc_cache::key)"
            ));
        }
    }
    Ok(())
}

/// A table name spliced into the outbox insert: plain identifiers only.
#[cfg(any(feature = "sqlx", test))]
fn check_table(table: &str) -> Result<(), EmitError> {
    let plain = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| plain(p)) {
        Ok(())
    } else {
        Err(EmitError::BadTable(table.to_owned()))
    }
}

/// Names `keys` and `namespaces` in the transaction, under the daemon's
/// default prefix.
#[cfg(feature = "sqlx")]
pub async fn emit_invalidation<K, KS, N, NS>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    keys: K,
    namespaces: N,
) -> Result<(), EmitError>
where
    K: IntoIterator<Item = KS>,
    KS: Into<String>,
    N: IntoIterator<Item = NS>,
    NS: Into<String>,
{
    let invalidation = Invalidation::new().keys(keys).namespaces(namespaces);
    emit(tx, DEFAULT_PREFIX, &invalidation).await
}

/// Writes `invalidation` as a transactional logical-decoding message with
/// `prefix` (the daemon's `[messages] prefix`). Delivered only if the
/// transaction commits; nothing is written to any table.
#[cfg(feature = "sqlx")]
pub async fn emit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    prefix: &str,
    invalidation: &Invalidation,
) -> Result<(), EmitError> {
    let content = invalidation.content()?;
    // `true`: transactional. The daemon refuses the other kind, which is
    // delivered even when the transaction rolls back.
    sqlx::query("SELECT pg_logical_emit_message(true, $1, $2::text)")
        .bind(prefix)
        .bind(content)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts `invalidation` into the outbox `table` (column `content`) of a
/// MySQL or MariaDB transaction. Keep the table small: delete old rows (the
/// daemon skips the deletes).
#[cfg(feature = "sqlx")]
pub async fn insert_outbox_mysql(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    table: &str,
    invalidation: &Invalidation,
) -> Result<(), EmitError> {
    check_table(table)?;
    let content = invalidation.content()?;
    let statement = format!("INSERT INTO {table} ({OUTBOX_COLUMN}) VALUES (?)");
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(content)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The outbox insert for PostgreSQL, where messages are not wanted. The
/// content column is `text` (the parameter is sent as text, and PostgreSQL
/// has no implicit cast from text to `jsonb`).
#[cfg(feature = "sqlx")]
pub async fn insert_outbox_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &str,
    invalidation: &Invalidation,
) -> Result<(), EmitError> {
    check_table(table)?;
    let content = invalidation.content()?;
    let statement = format!("INSERT INTO {table} ({OUTBOX_COLUMN}) VALUES ($1)");
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(content)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_is_version_1_json_with_only_what_is_named() {
        let content = Invalidation::new().keys(["product:42"]).content().unwrap();
        assert_eq!(content, r#"{"keys":["product:42"],"v":1}"#);
        let mut row = Map::new();
        row.insert("id".into(), json!(42));
        let content = Invalidation::new()
            .keys(["category:3:count", "caf%C3%A9:1"])
            .namespaces(["category"])
            .row("public.products", row)
            .content()
            .unwrap();
        let parsed: Value = serde_json::from_str(&content).unwrap();
        assert_eq!(
            parsed,
            json!({"v": 1, "keys": ["category:3:count", "caf%C3%A9:1"], "namespaces": ["category"],
                   "rows": [{"entity": "public.products", "row": {"id": 42}}]})
        );
    }

    #[test]
    fn what_the_daemon_would_refuse_is_refused_before_the_commit() {
        for bad in [
            Invalidation::new(),
            Invalidation::new().keys([""]),
            Invalidation::new().keys(["epoch"]),
            Invalidation::new().keys(["ns:product"]),
            Invalidation::new().keys(["product:{id}"]),
            Invalidation::new().keys(["a\nb"]),
            Invalidation::new().keys(["100%"]),
            Invalidation::new().namespaces([""]),
            Invalidation::new().row("", Map::new()),
        ] {
            assert!(matches!(bad.content(), Err(EmitError::Invalid(_))), "{bad:?}");
        }
        // A key rendered by the library passes.
        let rendered = crate::key("pair:{a}:{b}", &[("a", "1".into()), ("b", "2:3".into())])
            .unwrap()
            .unwrap();
        assert_eq!(rendered, "pair:1:2%3A3");
        assert!(Invalidation::new().keys([rendered]).content().is_ok());
    }

    #[test]
    fn outbox_table_names_are_plain() {
        for ok in ["cache_outbox", "shop.cache_outbox", "Outbox2"] {
            assert!(check_table(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b.c", "outbox; DROP TABLE x", "out box", "\"quoted\"", "a."] {
            assert!(matches!(check_table(bad), Err(EmitError::BadTable(_))), "{bad}");
        }
    }
}
