//! Redis apply: one guarded bump per target through the Lua script beside
//! this file, pipelined, loaded once and reloaded on NOSCRIPT (after a
//! restart or a failover the server forgets it). Standalone servers get one
//! pipeline per batch; Redis Cluster gets one pipeline per hash slot, sent
//! concurrently, because a cluster pipeline must not cross slots.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use crate::config::{redact_url, RedisSettings};
use crate::plan::Bump;

pub mod notice;

pub const BUMP_SCRIPT: &str = include_str!("bump.lua");

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open redis client for {url}: {source}")]
    Client { url: String, source: redis::RedisError },
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
            SinkError::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => "connection",
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

/// Both reconnect by themselves; a failed call surfaces as an error and the
/// pipeline retries the whole batch.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        match self {
            Connection::Standalone(c) => pipe.query_async(c).await,
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }

    async fn command<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Standalone(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

pub struct RedisSink {
    connection: Connection,
    script_sha: String,
    prefix: String,
    ttl_ms: u64,
}

impl RedisSink {
    /// Connects and loads the script. Fails fast; the caller decides about retries.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisSink, SinkError> {
        let client_error = |source| SinkError::Client {
            url: redact_url(&settings.url),
            source,
        };
        let mut connection = if settings.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(vec![settings.url.as_str()])
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(Duration::from_secs(10))
                .build()
                .map_err(client_error)?;
            Connection::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(settings.url.as_str()).map_err(client_error)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_max_delay(settings.max_retry_backoff)
                .set_number_of_retries(2);
            Connection::Standalone(ConnectionManager::new_with_config(client, config).await?)
        };
        // In a cluster, SCRIPT LOAD goes to every primary.
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
            Err(SinkError::Redis(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // The guard makes a partial first attempt harmless to repeat.
                self.script_sha = load_script(&mut self.connection).await?;
                self.try_apply(bumps).await
            }
            other => other,
        }
    }

    async fn try_apply(&mut self, bumps: &[Bump]) -> Result<Vec<BumpResult>, SinkError> {
        let keys: Vec<String> = bumps.iter().map(|b| b.target.record_key(&self.prefix)).collect();
        let groups: Vec<Vec<usize>> = match self.connection {
            Connection::Standalone(_) => vec![(0..bumps.len()).collect()],
            Connection::Cluster(_) => {
                let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
                for (i, key) in keys.iter().enumerate() {
                    by_slot.entry(hash_slot(key.as_bytes())).or_default().push(i);
                }
                by_slot.into_values().collect()
            }
        };
        let requests = groups.into_iter().map(|indices| {
            let mut pipe = redis::pipe();
            for (key, bump) in indices.iter().filter_map(|&i| keys.get(i).zip(bumps.get(i))) {
                pipe.cmd("EVALSHA")
                    .arg(&self.script_sha)
                    .arg(1)
                    .arg(key)
                    .arg(format!("p:{}", bump.position.source))
                    .arg(&bump.position.ordinal)
                    .arg(self.ttl_ms);
            }
            let mut connection = self.connection.clone();
            async move {
                let replies: Vec<(i64, String)> = connection.query(&pipe).await?;
                Ok::<_, SinkError>((indices, replies))
            }
        });
        let mut results = vec![None; bumps.len()];
        for (indices, replies) in futures::future::try_join_all(requests).await? {
            if replies.len() != indices.len() {
                return Err(SinkError::ShortReply {
                    sent: indices.len(),
                    got: replies.len(),
                });
            }
            for (i, (applied, version)) in indices.into_iter().zip(replies) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(BumpResult {
                        applied: applied == 1,
                        version: version.parse().unwrap_or(0),
                    });
                }
            }
        }
        // The groups partition 0..bumps.len() and each reply count was
        // checked above, so every index is answered.
        let answered = results.len();
        let results: Vec<BumpResult> = results.into_iter().flatten().collect();
        if results.len() != answered {
            return Err(SinkError::ShortReply {
                sent: answered,
                got: results.len(),
            });
        }
        Ok(results)
    }

    /// Announces applied bumps on a Pub/Sub channel, one JSON message each,
    /// in one round trip.
    pub async fn publish(&mut self, channel: &str, notices: &[notice::Notice]) -> Result<(), SinkError> {
        if notices.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for n in notices {
            pipe.cmd("PUBLISH")
                .arg(channel)
                // A notice holds strings and integers only: it always serialises.
                .arg(serde_json::to_string(n).unwrap_or_default())
                .ignore();
        }
        self.connection.query::<()>(&pipe).await?;
        Ok(())
    }

    /// Liveness probe for `check` and readiness.
    pub async fn ping(&mut self) -> Result<(), SinkError> {
        self.connection.command::<String>(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Reads a version record's `v` (0 when missing), as a cache reader does.
    pub async fn version(&mut self, record_key: &str) -> Result<u64, SinkError> {
        let v: Option<String> = self
            .connection
            .command(redis::cmd("HGET").arg(record_key).arg("v"))
            .await?;
        Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
    }
}

async fn load_script(connection: &mut Connection) -> Result<String, SinkError> {
    Ok(connection
        .command(redis::cmd("SCRIPT").arg("LOAD").arg(BUMP_SCRIPT))
        .await?)
}

/// Redis Cluster's hash slot: CRC16 (XMODEM) of the key, or of its hash tag
/// (the part between the first `{` and the next `}`, when non-empty).
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = key.get(open + 1..)?;
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .and_then(|close| rest.get(..close))
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_slots_match_redis() {
        // Values from CLUSTER KEYSLOT on a real server.
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"123456789"), 12739);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(hash_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
    }
}
