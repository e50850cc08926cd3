//! Dead letters in PostgreSQL (through sqlx; table in `migrations/`):
//! records that could not be decoded or rendered, kept with their bytes and
//! the reason, so they can be listed, replayed and purged.

use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row as _;

use crate::config::DeadLetterSettings;
use crate::event::KafkaRecord;

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The inner error is part of the message, not a `source`, so that the
/// binary's `{:#}` chain does not print it twice.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeadLetterError {
    #[error("dead-letter store: {0}")]
    Database(sqlx::Error),
    #[error("dead-letter migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// No answer within [`STATEMENT_TIMEOUT`]: an outage like any other.
    #[error("dead-letter store: no answer within {0:?}")]
    Timeout(Duration),
}

/// How long one statement of the pipeline's (a dead-letter write, the
/// readiness probe's query) may wait, the connection's acquisition
/// included. A store on the same network answers in milliseconds; without
/// a bound, a connection silenced by a partition would hang the applier
/// until TCP gives up, minutes later.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T>(query: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, DeadLetterError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, query).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DeadLetterError::Timeout(STATEMENT_TIMEOUT)),
    }
}

impl DeadLetterError {
    /// PostgreSQL refused this row's data (SQLSTATE class 22 "data exception"
    /// or 23 "integrity constraint violation"): writing it again fails again,
    /// so it is not an outage to wait out. Everything else (connection,
    /// timeout, missing table, permissions) is treated as an outage.
    pub(crate) fn is_data_error(&self) -> bool {
        match self {
            DeadLetterError::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for DeadLetterError {
    fn from(e: sqlx::Error) -> Self {
        DeadLetterError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for DeadLetterError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        DeadLetterError::Migrate(e)
    }
}

/// Where in the pipeline a record failed; a metric label and a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Decode,
    Render,
    /// A logical-decoding message or outbox row whose content was refused.
    Message,
}

impl Stage {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Render => "render",
            Stage::Message => "message",
        }
    }
}

/// Why a record becomes a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub(crate) stage: Stage,
    pub kind: &'static str,
    pub(crate) detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub(crate) id: i64,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) error_kind: String,
    pub(crate) error_detail: String,
    pub(crate) stage: String,
    pub(crate) first_seen: chrono::DateTime<chrono::Utc>,
    pub(crate) attempts: i32,
    pub(crate) replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Header names and values as the producer wrote them.
    pub(crate) headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl DeadLetter {
    pub(crate) fn record(&self) -> KafkaRecord {
        KafkaRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.clone(),
            value: self.value.clone(),
            timestamp_ms: None,
            headers: self.headers.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct DeadLetterStore {
    pool: PgPool,
    schema: String,
}

impl DeadLetterStore {
    /// Connects lazily: an unreachable store shows up on the first write,
    /// where the pipeline treats it like any outage (pause, retry, commit nothing).
    /// Every connection's `search_path` is the configured schema, so the
    /// queries and the migrations (and sqlx's history table) stay in it.
    /// Rows per INSERT: 11 parameters each, well under PostgreSQL's 65,535
    /// parameters per statement.
    pub(crate) const ROWS_PER_STATEMENT: usize = 1000;

    pub(crate) fn connect_lazy(settings: &DeadLetterSettings) -> Result<DeadLetterStore, DeadLetterError> {
        let options: PgConnectOptions = settings.url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(STATEMENT_TIMEOUT)
            .connect_lazy_with(options.options([("search_path", settings.schema.as_str())]));
        Ok(DeadLetterStore {
            pool,
            schema: settings.schema.clone(),
        })
    }

    /// The table's qualified name, for messages.
    pub(crate) fn table(&self) -> String {
        format!("{}.cdc_dead_letters", self.schema)
    }

    /// Creates the schema (migrations cannot: their history table lives in
    /// it) and applies the migrations there.
    pub(crate) async fn migrate(&self) -> Result<(), DeadLetterError> {
        // The schema name is a validated plain identifier (config).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            self.schema
        )))
        .execute(&self.pool)
        .await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// At start: is the table there? `Ok(false)` when it is missing (not
    /// migrated); an error when the database cannot be asked.
    pub(crate) async fn table_exists(&self) -> Result<bool, DeadLetterError> {
        let found: Option<String> = bounded(
            sqlx::query_scalar("SELECT to_regclass(format('%I.cdc_dead_letters', $1::text))::text")
                .bind(&self.schema)
                .fetch_one(&self.pool),
        )
        .await?;
        Ok(found.is_some())
    }

    /// The publications that capture the dead-letter table (or would, once
    /// it exists): `FOR ALL TABLES`, `FOR TABLES IN SCHEMA` of its schema, or
    /// the table itself. Debezium streams what a publication holds, so a
    /// captured dead letter becomes a change event of its own.
    pub(crate) async fn capturing_publications(&self) -> Result<Vec<String>, DeadLetterError> {
        // pg_publication_namespace (FOR TABLES IN SCHEMA) is PostgreSQL 15+.
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&self.pool)
            .await?;
        let by_schema = if version >= 150000 {
            "OR EXISTS (SELECT FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
                        WHERE pn.pnpubid = p.oid AND n.nspname = $1)"
        } else {
            ""
        };
        let query = format!(
            "SELECT p.pubname::text || CASE WHEN p.puballtables THEN ' (FOR ALL TABLES)' ELSE '' END
             FROM pg_publication p
             WHERE p.puballtables {by_schema}
                OR EXISTS (SELECT FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid
                           JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE pr.prpubid = p.oid AND n.nspname = $1 AND c.relname = 'cdc_dead_letters')
             ORDER BY 1"
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .bind(&self.schema)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Writes (or, on redelivery, counts again) one dead letter. Durable when it returns.
    /// Any record can be written: bytes go to bytea columns (header names and
    /// values included), text columns get [`printable`] text.
    pub(crate) async fn write(&self, record: &KafkaRecord, failure: &Failure) -> Result<(), DeadLetterError> {
        self.write_all(&[(record, failure)]).await
    }

    /// Writes several dead letters in one statement, all durable when it
    /// returns; at most [`DeadLetterStore::ROWS_PER_STATEMENT`] of them. A
    /// data error refuses the whole statement: the caller then writes the
    /// records one by one to learn which one the store refuses. A record
    /// listed twice is written once (one statement cannot update a row twice).
    pub(crate) async fn write_all(&self, letters: &[(&KafkaRecord, &Failure)]) -> Result<(), DeadLetterError> {
        let mut seen = std::collections::HashSet::new();
        let mut unique: Vec<(&KafkaRecord, &Failure)> = Vec::with_capacity(letters.len());
        for &(record, failure) in letters.iter().rev() {
            if seen.insert((record.topic.as_str(), record.partition, record.offset)) {
                unique.push((record, failure));
            }
        }
        unique.reverse();
        if unique.is_empty() {
            return Ok(());
        }
        debug_assert!(
            unique.len() <= Self::ROWS_PER_STATEMENT,
            "{} rows in one statement",
            unique.len()
        );
        let encoded: Vec<Encoded> = unique
            .iter()
            .map(|(record, failure)| Encoded::of(record, failure))
            .collect();
        let mut insert = sqlx::QueryBuilder::new(
            r#"INSERT INTO cdc_dead_letters (topic, "partition", "offset", key, value, headers, header_names, header_values,
                                             error_kind, error_detail, stage) "#,
        );
        insert.push_values(unique.iter().zip(&encoded), |mut row, ((record, failure), encoded)| {
            row.push_bind(&encoded.topic)
                .push_bind(record.partition)
                .push_bind(record.offset)
                .push_bind(record.key.as_deref())
                .push_bind(record.value.as_deref())
                .push_bind(&encoded.headers)
                .push_bind(&encoded.header_names)
                .push_bind(&encoded.header_values)
                .push_bind(failure.kind)
                .push_bind(&encoded.detail)
                .push_bind(failure.stage.label());
        });
        insert.push(
            r#" ON CONFLICT (topic, "partition", "offset")
               DO UPDATE SET attempts = cdc_dead_letters.attempts + 1, last_seen = now(),
                             error_kind = EXCLUDED.error_kind, error_detail = EXCLUDED.error_detail, stage = EXCLUDED.stage"#,
        );
        bounded(insert.build().execute(&self.pool)).await?;
        Ok(())
    }

    /// Dead letters, oldest first; `pending_only` hides replayed ones.
    pub(crate) async fn list(&self, pending_only: bool, limit: i64) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let rows = sqlx::query(
            r#"SELECT id, topic, "partition", "offset", key, value, error_kind, error_detail, stage, first_seen, attempts, replayed_at,
                      header_names, header_values
               FROM cdc_dead_letters WHERE ($1 = false OR replayed_at IS NULL) ORDER BY id LIMIT $2"#,
        )
        .bind(pending_only)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let names: Option<Vec<Vec<u8>>> = r.get("header_names");
                let values: Option<Vec<Option<Vec<u8>>>> = r.get("header_values");
                (
                    r,
                    names
                        .unwrap_or_default()
                        .into_iter()
                        .zip(values.unwrap_or_default())
                        .collect(),
                )
            })
            .map(|(r, headers)| DeadLetter {
                id: r.get("id"),
                topic: r.get("topic"),
                partition: r.get("partition"),
                offset: r.get("offset"),
                key: r.get("key"),
                value: r.get("value"),
                error_kind: r.get("error_kind"),
                error_detail: r.get("error_detail"),
                stage: r.get("stage"),
                first_seen: r.get("first_seen"),
                attempts: r.get("attempts"),
                replayed_at: r.get("replayed_at"),
                headers,
            })
            .collect())
    }

    pub(crate) async fn mark_replayed(&self, id: i64) -> Result<(), DeadLetterError> {
        sqlx::query("UPDATE cdc_dead_letters SET replayed_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes replayed dead letters, or all of them with `everything`.
    pub(crate) async fn purge(&self, everything: bool) -> Result<u64, DeadLetterError> {
        let result = sqlx::query("DELETE FROM cdc_dead_letters WHERE $1 OR replayed_at IS NOT NULL")
            .bind(everything)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

/// A dead letter's columns, built without a database so that "every record
/// can be a dead letter" is testable (tests/integration/fuzz.rs): nothing in here can
/// hold a value PostgreSQL refuses (a NUL in text or jsonb).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub(crate) topic: String,
    /// A readable view of the headers for `dead-letters list` and SQL users;
    /// the lossless form is `header_names`/`header_values`.
    pub headers: Value,
    pub header_names: Vec<Vec<u8>>,
    pub(crate) header_values: Vec<Option<Vec<u8>>>,
    pub detail: String,
}

impl Encoded {
    pub fn of(record: &KafkaRecord, failure: &Failure) -> Encoded {
        let headers: Map<String, Value> = record
            .headers
            .iter()
            .map(|(name, value)| {
                let value = value
                    .as_ref()
                    .map(|v| Value::String(printable(&String::from_utf8_lossy(v))))
                    .unwrap_or(Value::Null);
                (printable(&String::from_utf8_lossy(name)), value)
            })
            .collect();
        Encoded {
            topic: printable(&record.topic),
            headers: Value::Object(headers),
            header_names: record.headers.iter().map(|(name, _)| name.clone()).collect(),
            header_values: record.headers.iter().map(|(_, value)| value.clone()).collect(),
            detail: printable(&failure.detail),
        }
    }
}

/// Text PostgreSQL accepts in `text` and `jsonb`: every NUL becomes the six
/// characters `\u0000`. Nothing else needs escaping (a Rust string is UTF-8).
/// For the human-readable columns only: the record's own bytes are kept
/// losslessly in bytea columns.
pub(crate) fn printable(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\\u0000")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_has_no_nul() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\0b"), "a\\u0000b");
    }

    #[test]
    fn any_record_encodes_without_nul_and_keeps_header_bytes() {
        let record = KafkaRecord {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            key: Some(vec![0, 1]),
            value: Some(vec![0xff]),
            timestamp_ms: None,
            headers: vec![(b"h\xff\xfe".to_vec(), Some(b"v\0w".to_vec())), (b"n\0".to_vec(), None)],
        };
        let failure = Failure {
            stage: Stage::Decode,
            kind: "malformed",
            detail: "quoted \"\0\"".into(),
        };
        let e = Encoded::of(&record, &failure);
        assert!(!e.detail.contains('\0'));
        let texts: Vec<String> = e
            .headers
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(k, v)| [k.clone(), v.as_str().unwrap_or_default().to_owned()])
            .collect();
        assert!(texts.iter().all(|t| !t.contains('\0')), "{texts:?}");
        assert!(texts.contains(&"v\\u0000w".to_owned()), "{texts:?}");
        assert_eq!(e.header_names, vec![b"h\xff\xfe".to_vec(), b"n\0".to_vec()]);
        assert_eq!(e.header_values, vec![Some(b"v\0w".to_vec()), None]);
    }
}
