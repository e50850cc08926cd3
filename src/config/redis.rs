//! `[redis]`: where the version records live, how long they last, how
//! writes are retried and acknowledged, how data loss is watched for.

use std::ops::Range;
use std::time::Duration;

use serde_spanned::Spanned;

use super::env::{
    Env, ENV_REDIS_PASSWORD, ENV_REDIS_SENTINELS, ENV_REDIS_SENTINEL_MASTER, ENV_REDIS_SENTINEL_PASSWORD, ENV_REDIS_URL,
};
use super::error::ConfigError;
use super::raw::{RawRedis, RawSentinel};
use super::redact::redact_url;
use super::validator::Validator;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// A standalone server, or a cluster's seed node with `cluster`; empty
    /// when `sentinel` names the deployment.
    pub url: String,
    /// The primary as Redis Sentinel names it, followed across failovers.
    pub sentinel: Option<SentinelSettings>,
    /// Every Redis call's bound; a connection silent this long is replaced.
    pub response_timeout: Duration,
    pub version_prefix: String,
    pub version_ttl: Duration,
    pub max_retry_backoff: Duration,
    pub cluster: bool,
    pub loss_check_interval: Duration,
    /// `WAIT` for this many replicas after every batch (0: no WAIT).
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
}

/// `[redis.sentinel]`, validated.
#[derive(Clone)]
pub struct SentinelSettings {
    pub master_name: String,
    /// `(host, port)` of each Sentinel.
    pub addresses: Vec<(String, u16)>,
    /// The data nodes' ACL user and password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The Sentinels' own.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub tls: bool,
    pub db: i64,
}

// By hand: the passwords must never reach a log line or an error.
impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("master_name", &self.master_name)
            .field("addresses", &self.addresses)
            .field("username", &self.username)
            .field("sentinel_username", &self.sentinel_username)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Where the version records live, for logs and `check`: the URL with its
    /// password hidden, or the master name and the Sentinels.
    pub fn describe(&self) -> String {
        match &self.sentinel {
            Some(s) => format!(
                "sentinel master {:?} via {}",
                s.master_name,
                s.addresses
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => redact_url(&self.url),
        }
    }
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
/// How long any Redis call waits for its reply before it fails and its
/// connection is replaced (`redis.response_timeout`). A healthy server on
/// the same network answers a batch in milliseconds, so 5 s means it is
/// gone or its connection silent (a partition: TCP itself would wait for
/// minutes), and the daemon says so within seconds; a batch that can
/// legitimately take longer needs a larger value. `redis.wait_timeout` must
/// stay below it, or a slow `WAIT` would end in a reconnect instead of a retry.
pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl RawRedis {
    pub(super) fn validate(
        self,
        section: Range<usize>,
        v: &Validator<'_>,
        env: Env<'_>,
    ) -> Result<RedisSettings, ConfigError> {
        let (url, sentinel) = match (self.url, self.sentinel) {
            (Some(_), Some(sentinel)) => {
                return v.error(
                    sentinel.span(),
                    "redis.sentinel",
                    "expected either `url` or [redis.sentinel], not both (the Sentinels name the primary)",
                )
            }
            (None, None) => {
                return v.error(
                    section,
                    "redis.url",
                    "expected `url` (a server, or a cluster's seed node) or a [redis.sentinel] section",
                )
            }
            (Some(raw), None) => {
                let url = env(ENV_REDIS_URL).unwrap_or_else(|| raw.get_ref().clone());
                v.url_with_scheme(
                    &url,
                    raw.span(),
                    "redis.url",
                    &["redis://", "rediss://"],
                    "a redis:// or rediss:// URL",
                )?;
                (url, None)
            }
            (None, Some(raw)) => {
                if self.cluster {
                    return v.error(
                        raw.span(),
                        "redis.sentinel",
                        "not with cluster = true (a Redis Cluster fails over by itself)",
                    );
                }
                (String::new(), Some(raw.into_inner().validate(v, env)?))
            }
        };
        let response_timeout = v
            .positive_duration(self.response_timeout.as_ref(), "redis.response_timeout")?
            .unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
        let version_ttl = v.duration(&self.version_ttl, "redis.version_ttl")?;
        let max_retry_backoff = v
            .optional_duration(self.max_retry_backoff.as_ref(), "redis.max_retry_backoff")?
            .unwrap_or(DEFAULT_MAX_RETRY_BACKOFF);
        let loss_check_interval = v
            .positive_duration(self.loss_check_interval.as_ref(), "redis.loss_check_interval")?
            .unwrap_or_else(default_loss_check_interval);
        let wait_replicas = self.wait_replicas.as_ref().map_or(0, |n| *n.get_ref());
        let wait_timeout = match &self.wait_timeout {
            Some(d) => wait_timeout(d, response_timeout, v)?,
            None => DEFAULT_WAIT_TIMEOUT,
        };
        // An explicit wait_timeout was checked against it above; this is
        // the default one against a response_timeout set below it.
        if let (Some(set), true) = (
            &self.response_timeout,
            wait_replicas > 0 && wait_timeout >= response_timeout,
        ) {
            return v.error(
                set.span(),
                "redis.response_timeout",
                format!("expected more than redis.wait_timeout ({wait_timeout:?}): a WAIT must be answered before the call times out"),
            );
        }
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
            sentinel,
            response_timeout,
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
fn wait_timeout(
    value: &Spanned<String>,
    response_timeout: Duration,
    v: &Validator<'_>,
) -> Result<Duration, ConfigError> {
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
    if timeout >= response_timeout {
        return v.error(
            value.span(),
            "redis.wait_timeout",
            format!("expected less than {response_timeout:?}, redis.response_timeout"),
        );
    }
    Ok(timeout)
}

impl RawSentinel {
    fn validate(self, v: &Validator<'_>, env: Env<'_>) -> Result<SentinelSettings, ConfigError> {
        let master_name = env(ENV_REDIS_SENTINEL_MASTER).unwrap_or_else(|| self.master_name.get_ref().clone());
        if master_name.is_empty() {
            return v.error(
                self.master_name.span(),
                "redis.sentinel.master_name",
                "expected a master name",
            );
        }
        let texts = match env(ENV_REDIS_SENTINELS) {
            Some(list) => list.split(',').map(|a| a.trim().to_owned()).collect(),
            None => self.addresses.get_ref().clone(),
        };
        let mut addresses = Vec::new();
        for text in &texts {
            let parsed = text
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.trim_matches(['[', ']']).to_owned(), port.parse::<u16>().ok()?)))
                .filter(|(host, port)| !host.is_empty() && *port > 0);
            match parsed {
                Some(address) => addresses.push(address),
                None => {
                    return v.error(
                        self.addresses.span(),
                        "redis.sentinel.addresses",
                        format!("expected host:port, got {text:?}"),
                    )
                }
            }
        }
        if addresses.is_empty() {
            return v.error(
                self.addresses.span(),
                "redis.sentinel.addresses",
                "expected at least one Sentinel (host:port); three or more in production",
            );
        }
        let db = match &self.db {
            Some(db) if *db.get_ref() < 0 => {
                return v.error(db.span(), "redis.sentinel.db", "expected a database number, 0 or more")
            }
            Some(db) => *db.get_ref(),
            None => 0,
        };
        Ok(SentinelSettings {
            master_name,
            addresses,
            username: self.username.map(Spanned::into_inner),
            password: env(ENV_REDIS_PASSWORD).or_else(|| self.password.map(Spanned::into_inner)),
            sentinel_username: self.sentinel_username.map(Spanned::into_inner),
            sentinel_password: env(ENV_REDIS_SENTINEL_PASSWORD)
                .or_else(|| self.sentinel_password.map(Spanned::into_inner)),
            tls: self.tls,
            db,
        })
    }
}
