//! The one place that opens connections to the Redis holding version
//! records: a standalone server (`redis://`, or `rediss://` for TLS, which
//! redis-rs handles from the URL) or Redis Cluster (`redis.cluster`). The
//! daemon's sink and the auditor both open theirs here; another backend
//! (Sentinel, say) is one more variant of [`Connection`] and one more arm
//! of [`Connection::open`].
//!
//! [`Link`] adds the scripts: both are loaded at connect and reloaded once
//! on `NOSCRIPT` (after a restart or a failover the server forgets them).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::request::ScriptCall;
use super::SinkError;
use crate::config::{redact_url, RedisSettings, REDIS_RESPONSE_TIMEOUT};

pub const BUMP_SCRIPT: &str = include_str!("bump.lua");
pub(crate) const EPOCH_SCRIPT: &str = include_str!("epoch.lua");

/// A connection that may be cloned freely (each clone shares it). Both
/// kinds reconnect by themselves; a failed call surfaces as an error and
/// the caller decides about retrying.
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How one batch's bumps must be split into pipelines (`request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One pipeline for the whole batch.
    Standalone,
    /// One pipeline per hash slot: a cluster pipeline, and one script
    /// call's keys, must not cross slots.
    Cluster,
}

impl Connection {
    /// Connects; fails fast, the caller decides about retries. A standalone
    /// connection also returns its client, for connections of their own
    /// (the eviction notifications' subscription).
    pub(crate) async fn open(settings: &RedisSettings) -> Result<(Connection, Option<redis::Client>), SinkError> {
        let client_error = |cause| SinkError::Client {
            url: redact_url(&settings.url),
            cause,
        };
        if settings.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(vec![settings.url.as_str()])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(REDIS_RESPONSE_TIMEOUT)
                .build()
                .map_err(client_error)?;
            return Ok((Connection::Cluster(client.get_async_connection().await?), None));
        }
        let client = redis::Client::open(settings.url.as_str()).map_err(client_error)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_max_delay(settings.max_retry_backoff)
            .set_number_of_retries(2);
        let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok((Connection::Standalone(manager), Some(client)))
    }

    pub(crate) fn layout(&self) -> Layout {
        match self {
            Connection::Standalone(_) => Layout::Standalone,
            Connection::Cluster(_) => Layout::Cluster,
        }
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        match self {
            Connection::Standalone(c) => pipe.query_async(c).await,
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }

    pub(crate) async fn command<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Standalone(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// INFO of the one server behind a standalone connection; None on a
    /// cluster, where INFO answers for one node only.
    pub(crate) async fn info(&mut self) -> Option<Result<String, SinkError>> {
        match self {
            Connection::Standalone(_) => Some(self.command(&redis::cmd("INFO")).await.map_err(SinkError::from)),
            Connection::Cluster(_) => None,
        }
    }
}

// A server that does not accept a connection within this is down for this
// attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which of the two scripts a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    Bump,
    Epoch,
}

/// A connection with both scripts loaded on it.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    bump_sha: String,
    epoch_sha: String,
}

impl Link {
    /// Loads both scripts; in a cluster SCRIPT LOAD goes to every primary.
    pub(crate) async fn new(mut connection: Connection) -> Result<Link, SinkError> {
        let (bump_sha, epoch_sha) = load_scripts(&mut connection).await?;
        Ok(Link {
            connection,
            bump_sha,
            epoch_sha,
        })
    }

    pub(crate) fn sha(&self, script: Script) -> &str {
        match script {
            Script::Bump => &self.bump_sha,
            Script::Epoch => &self.epoch_sha,
        }
    }

    /// Loads both scripts again (after NOSCRIPT).
    pub(crate) async fn reload(&mut self) -> Result<(), SinkError> {
        (self.bump_sha, self.epoch_sha) = load_scripts(&mut self.connection).await?;
        Ok(())
    }

    /// Runs one script call, reloading the scripts once on NOSCRIPT.
    pub(crate) async fn run(&mut self, script: Script, call: &ScriptCall) -> Result<redis::Value, SinkError> {
        match self.connection.command(&call.evalsha(self.sha(script))).await {
            Err(e) if is_noscript(&e) => {
                self.reload().await?;
                Ok(self.connection.command(&call.evalsha(self.sha(script))).await?)
            }
            other => Ok(other?),
        }
    }
}

pub(crate) fn is_noscript(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

async fn load_scripts(connection: &mut Connection) -> Result<(String, String), SinkError> {
    let bump = connection
        .command(redis::cmd("SCRIPT").arg("LOAD").arg(BUMP_SCRIPT))
        .await?;
    let epoch = connection
        .command(redis::cmd("SCRIPT").arg("LOAD").arg(EPOCH_SCRIPT))
        .await?;
    Ok((bump, epoch))
}
