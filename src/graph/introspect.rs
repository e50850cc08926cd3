//! What `check` reads from the source database through the lookup
//! connection, to hold the graph against the real schema: a table's
//! columns, its primary key and its replica identity. Beside the fan-out
//! lookups because it uses their pool, timeout and SQL dialect; a new
//! database kind adds its catalog queries here. These are PostgreSQL's:
//! `check` asks a MySQL-family database through source::mysql_check, so on
//! such a connection they answer as if the catalog could not be read.

use sqlx::Row as _;

use super::Lookups;

impl Lookups {
    /// The table's column names; empty when the table does not exist.
    pub(crate) async fn columns(&self, schema: &str, table: &str) -> Result<Vec<String>, sqlx::Error> {
        let Some(pool) = self.postgres_pool() else {
            return Err(sqlx::Error::Configuration(
                "the PostgreSQL catalog queries need a PostgreSQL lookup url".into(),
            ));
        };
        let rows = sqlx::query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether the table is REPLICA IDENTITY FULL (old rows carry every
    /// column); None when the catalog could not be read.
    pub(crate) async fn replica_identity_full(&self, schema: &str, table: &str) -> Option<bool> {
        let pool = self.postgres_pool()?;
        let identity: Option<String> = sqlx::query(
            "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
        identity.map(|i| i == "f")
    }

    /// The primary key's columns; empty when there is none or the catalog
    /// could not be read (every templated column then counts as non-key).
    pub(crate) async fn primary_key(&self, schema: &str, table: &str) -> Vec<String> {
        let Some(pool) = self.postgres_pool() else {
            return Vec::new();
        };
        sqlx::query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND i.indisprimary",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(pool)
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
    }
}
