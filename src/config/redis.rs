//! `[redis]`: where the version records live, how long they last, how
//! writes are retried and acknowledged, how data loss is watched for.

use std::time::Duration;

use serde_spanned::Spanned;

use super::env::{Env, ENV_REDIS_URL};
use super::error::ConfigError;
use super::raw::RawRedis;
use super::validator::Validator;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub version_prefix: String,
    pub version_ttl: Duration,
    pub max_retry_backoff: Duration,
    pub cluster: bool,
    pub loss_check_interval: Duration,
    /// `WAIT` for this many replicas after every batch (0: no WAIT).
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
}

// Readers of the key protocol default to `ver:` (docs/architecture.md, "The
// key protocol").
fn default_version_prefix() -> String {
    "ver:".to_owned()
}

// Readers serve stale data from a Redis that lost writes until the daemon
// notices: an idle daemon looks once a second (one small script call and
// one INFO), so the window stays about a second without loading Redis.
pub fn default_loss_check_interval() -> Duration {
    Duration::from_secs(1)
}

// Retrying Redis faster than this only adds load to a struggling server.
pub(super) const DEFAULT_MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// Replication on a LAN takes well under a millisecond; a replica a second
/// behind is one to alert on, and the batch is retried meanwhile.
pub(super) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the Redis client waits for any reply before it reconnects. Not
/// a setting of its own; `redis.wait_timeout` must stay below it, or a slow
/// `WAIT` would end in a reconnect instead of a retry.
pub(crate) const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

impl RawRedis {
    pub(super) fn validate(self, v: &Validator<'_>, env: Env<'_>) -> Result<RedisSettings, ConfigError> {
        let url = env(ENV_REDIS_URL).unwrap_or_else(|| self.url.get_ref().clone());
        v.url_with_scheme(
            &url,
            self.url.span(),
            "redis.url",
            &["redis://", "rediss://"],
            "a redis:// or rediss:// URL",
        )?;
        let version_ttl = v.duration(&self.version_ttl, "redis.version_ttl")?;
        let max_retry_backoff = v
            .optional_duration(self.max_retry_backoff.as_ref(), "redis.max_retry_backoff")?
            .unwrap_or(DEFAULT_MAX_RETRY_BACKOFF);
        let loss_check_interval = v
            .positive_duration(self.loss_check_interval.as_ref(), "redis.loss_check_interval")?
            .unwrap_or_else(default_loss_check_interval);
        let wait_replicas = self.wait_replicas.as_ref().map_or(0, |n| *n.get_ref());
        let wait_timeout = match &self.wait_timeout {
            Some(d) => wait_timeout(d, v)?,
            None => DEFAULT_WAIT_TIMEOUT,
        };
        if let (Some(n), true) = (&self.wait_replicas, self.cluster) {
            if *n.get_ref() > 0 {
                return v.error(
                    n.span(),
                    "redis.wait_replicas",
                    "not supported with cluster = true yet (WAIT answers for one node); use 0",
                );
            }
        }
        Ok(RedisSettings {
            url,
            version_prefix: self
                .version_prefix
                .map_or_else(default_version_prefix, Spanned::into_inner),
            version_ttl,
            max_retry_backoff,
            cluster: self.cluster,
            loss_check_interval,
            wait_replicas,
            wait_timeout,
        })
    }
}

/// `redis.wait_timeout`: at least a millisecond, below the client's own
/// response timeout.
fn wait_timeout(value: &Spanned<String>, v: &Validator<'_>) -> Result<Duration, ConfigError> {
    let timeout = v.duration(value, "redis.wait_timeout")?;
    // WAIT's own 0 means "block forever": a stuck replica would then hang
    // the applier past every shutdown bound.
    if timeout.as_millis() == 0 {
        return v.error(
            value.span(),
            "redis.wait_timeout",
            "expected at least 1ms (WAIT 0 blocks forever)",
        );
    }
    if timeout >= REDIS_RESPONSE_TIMEOUT {
        return v.error(
            value.span(),
            "redis.wait_timeout",
            format!("expected less than {REDIS_RESPONSE_TIMEOUT:?}, the client's response timeout"),
        );
    }
    Ok(timeout)
}
