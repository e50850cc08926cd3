//! Redis apply: one guarded bump per target through the Lua script beside
//! this file, pipelined, loaded once and reloaded on NOSCRIPT (after a
//! restart or a failover the server forgets it).

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::config::{redact_url, RedisSettings};
use crate::plan::Bump;

pub const BUMP_SCRIPT: &str = include_str!("bump.lua");

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open redis client for {url}: {source}")]
    Client {
        url: String,
        source: redis::RedisError,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered {got} replies to {sent} bumps")]
    ShortReply { sent: usize, got: usize },
}

impl SinkError {
    /// Small fixed label set for the errors metric.
    pub fn kind_label(&self) -> &'static str {
        match self {
            SinkError::Client { .. } => "client",
            SinkError::Redis(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() =>
            {
                "connection"
            }
            SinkError::Redis(_) => "server",
            SinkError::ShortReply { .. } => "protocol",
        }
    }
}

/// What Redis did with one bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BumpResult {
    pub applied: bool,
    pub version: u64,
}

pub struct RedisSink {
    connection: ConnectionManager,
    script_sha: String,
    prefix: String,
    ttl_ms: u64,
}

impl RedisSink {
    /// Connects and loads the script. Fails fast; the caller decides about retries.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisSink, SinkError> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|source| SinkError::Client {
                url: redact_url(&settings.url),
                source,
            })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_max_delay(settings.max_retry_backoff)
            .set_number_of_retries(2);
        let mut connection = ConnectionManager::new_with_config(client, config).await?;
        let script_sha = load_script(&mut connection).await?;
        Ok(RedisSink {
            connection,
            script_sha,
            prefix: settings.version_prefix.clone(),
            ttl_ms: settings.version_ttl.as_millis() as u64,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Applies every bump in one pipeline. Either all replies come back (each
    /// applied or a guard no-op) or the call fails and nothing may be acknowledged.
    pub async fn apply(&mut self, bumps: &[Bump]) -> Result<Vec<BumpResult>, SinkError> {
        if bumps.is_empty() {
            return Ok(Vec::new());
        }
        match self.try_apply(bumps).await {
            Err(SinkError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // The guard makes a partial first attempt harmless to repeat.
                self.script_sha = load_script(&mut self.connection).await?;
                self.try_apply(bumps).await
            }
            other => other,
        }
    }

    async fn try_apply(&mut self, bumps: &[Bump]) -> Result<Vec<BumpResult>, SinkError> {
        let mut pipe = redis::pipe();
        for bump in bumps {
            pipe.cmd("EVALSHA")
                .arg(&self.script_sha)
                .arg(1)
                .arg(bump.target.record_key(&self.prefix))
                .arg(format!("p:{}", bump.position.source))
                .arg(&bump.position.ordinal)
                .arg(self.ttl_ms);
        }
        let replies: Vec<(i64, String)> = pipe.query_async(&mut self.connection).await?;
        if replies.len() != bumps.len() {
            return Err(SinkError::ShortReply {
                sent: bumps.len(),
                got: replies.len(),
            });
        }
        Ok(replies
            .into_iter()
            .map(|(applied, version)| BumpResult {
                applied: applied == 1,
                version: version.parse().unwrap_or(0),
            })
            .collect())
    }

    /// Liveness probe for `check` and readiness.
    pub async fn ping(&mut self) -> Result<(), SinkError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Reads a version record's `v` (0 when missing), as a cache reader does.
    pub async fn version(&mut self, record_key: &str) -> Result<u64, SinkError> {
        let v: Option<String> = redis::cmd("HGET")
            .arg(record_key)
            .arg("v")
            .query_async(&mut self.connection)
            .await?;
        Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
    }
}

async fn load_script(connection: &mut ConnectionManager) -> Result<String, SinkError> {
    Ok(redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(BUMP_SCRIPT)
        .query_async(connection)
        .await?)
}
