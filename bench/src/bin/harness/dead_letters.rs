//! The dead-letter store of the malformed drains: a schema of the run's own
//! in the stack's PostgreSQL (`--dead-letters-url`), created by the daemon's
//! `migrate`, emptied before each drain, counted after it and dropped at
//! the end of the run.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use sqlx::Connection as _;

pub struct DeadLetterTable {
    /// Holds a password: never printed, never written to the results.
    url: String,
    /// A plain identifier (`bench_malformed_<run id>_<pid>`), spliced into SQL.
    pub schema: String,
    /// Set once `migrate` created the schema: only then is there one to drop.
    created: bool,
}

impl DeadLetterTable {
    pub fn new(url: &str, run_id: &str) -> DeadLetterTable {
        DeadLetterTable {
            url: url.to_owned(),
            schema: format!("bench_malformed_{run_id}_{}", std::process::id()),
            created: false,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates the schema and table once, with `daemon migrate` on `config`
    /// (a config naming this store).
    pub fn ensure_created(&mut self, daemon: &Path, config: &Path) -> anyhow::Result<()> {
        if self.created {
            return Ok(());
        }
        let mut cmd = Command::new(daemon);
        cmd.args(["--log", "warn", "migrate", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (name, _) in std::env::vars() {
            if name.starts_with("CDC_") {
                cmd.env_remove(&name);
            }
        }
        let status = cmd.status().context("cdc-invalidator migrate")?;
        // Set before the check: a half-done migration still leaves a schema to drop.
        self.created = true;
        if !status.success() {
            bail!(
                "cdc-invalidator migrate of the dead-letter schema {} failed ({status})",
                self.schema
            );
        }
        Ok(())
    }

    /// Empties the table: each drain's rows are its own.
    pub fn truncate(&self) -> anyhow::Result<()> {
        self.execute(&format!("TRUNCATE {}.cdc_dead_letters", self.schema))
    }

    /// Rows in the table now.
    pub fn rows(&self) -> anyhow::Result<u64> {
        let sql = format!("SELECT count(*) FROM {}.cdc_dead_letters", self.schema);
        let count: i64 = block_on(async {
            let mut db = sqlx::PgConnection::connect(&self.url).await?;
            let count = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut db).await?;
            db.close().await?;
            Ok::<i64, sqlx::Error>(count)
        })?
        .with_context(|| format!("counting the dead letters in {}", self.schema))?;
        Ok(u64::try_from(count)?)
    }

    /// Drops the schema when this run created it.
    pub fn drop_schema(&mut self) -> anyhow::Result<()> {
        if !self.created {
            return Ok(());
        }
        self.execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))?;
        self.created = false;
        Ok(())
    }

    fn execute(&self, sql: &str) -> anyhow::Result<()> {
        block_on(async {
            let mut db = sqlx::PgConnection::connect(&self.url).await?;
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut db)
                .await?;
            db.close().await
        })?
        .with_context(|| format!("dead-letter schema {}: {sql}", self.schema))
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(future))
}
