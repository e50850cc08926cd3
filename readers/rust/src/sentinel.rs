//! Redis Sentinel (spec section 14): the daemon's `[redis.sentinel]`
//! settings and the connection to the primary the Sentinels name, followed
//! across failovers.
//!
//! redis-rs's `ConnectionManager` reconnects to the address it was given,
//! never to a new primary, and a primary that a failover replaced keeps
//! answering (stale versions) until Sentinel demotes it, several seconds
//! later. So the connection here is replaced whole: when the Sentinels
//! announce `+switch-master` for the master name (a task subscribed to one
//! Sentinel at a time), and when a call meets `READONLY`, a dropped or
//! refused connection, or a timeout. The next call asks the Sentinels anew.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::FromRedisValue;

use crate::Error;

/// How long connecting to a Sentinel or to the primary may take, and one
/// question to the Sentinels: an answer on a LAN takes milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before asking the next Sentinel after one failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The daemon's `[redis.sentinel]`, same names and meaning
/// (docs/operations.md). `Debug` never shows a password.
#[derive(Clone)]
pub struct SentinelSettings {
    /// The name the Sentinels monitor (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// `(host, port)` of each Sentinel; three or more in production.
    pub addresses: Vec<(String, u16)>,
    /// The primary's and replicas' ACL user and password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The Sentinels' own.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// TLS to the Sentinels and to the data nodes (certificates verified).
    pub tls: bool,
    /// The database the version records live in.
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

impl SentinelSettings {
    /// The master name and the Sentinels as `"host:port"` (the daemon's
    /// `CDC_REDIS_SENTINELS` entries); no credentials, no TLS, database 0.
    pub fn new<S: AsRef<str>>(
        master_name: impl Into<String>,
        addresses: impl IntoIterator<Item = S>,
    ) -> Result<Self, Error> {
        let addresses = addresses
            .into_iter()
            .map(|a| {
                let a = a.as_ref();
                a.rsplit_once(':')
                    .and_then(|(host, port)| Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?)))
                    .filter(|(host, port): &(String, u16)| !host.is_empty() && *port > 0)
                    .ok_or_else(|| Error::InvalidOptions(format!("sentinel: address {a:?} is not \"host:port\"")))
            })
            .collect::<Result<_, _>>()?;
        let settings = SentinelSettings {
            master_name: master_name.into(),
            addresses,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: false,
            db: 0,
        };
        settings.validate()?;
        Ok(settings)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.master_name.is_empty() {
            return Err(Error::InvalidOptions("sentinel: master_name is empty".into()));
        }
        if self.addresses.is_empty() {
            return Err(Error::InvalidOptions("sentinel: addresses is empty".into()));
        }
        if self.db < 0 {
            return Err(Error::InvalidOptions(format!("sentinel: db {} is negative", self.db)));
        }
        Ok(())
    }

    fn address(&self, host: &str, port: u16) -> redis::ConnectionAddr {
        match self.tls {
            true => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            },
            false => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        }
    }

    /// redis-rs's Sentinel client, asked for the primary only (a replica
    /// lags: a get's version check must see the newest version).
    fn client(&self) -> redis::RedisResult<SentinelClient> {
        let addresses = self.addresses.iter().map(|(host, port)| self.address(host, *port));
        let mut builder = SentinelClientBuilder::new(addresses, &self.master_name, SentinelServerType::Master)?
            .set_client_to_redis_db(self.db);
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &self.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        builder.build()
    }

    /// One Sentinel, with the Sentinels' credentials.
    fn sentinel_connection_info(&self, host: &str, port: u16) -> redis::RedisResult<redis::ConnectionInfo> {
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(user) = &self.sentinel_username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            settings = settings.set_password(password);
        }
        Ok(redis::IntoConnectionInfo::into_connection_info(self.address(host, port))?.set_redis_settings(settings))
    }
}

/// The connection to the primary, replaced whole when it moves. Clones of
/// the cache share it.
pub(crate) struct Primary {
    settings: SentinelSettings,
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Current>>,
    generations: AtomicU64,
    /// One (re)connection at a time.
    establishing: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Current {
    generation: u64,
    manager: ConnectionManager,
    client: redis::Client,
}

impl Primary {
    /// Connects to the primary and starts following `+switch-master`.
    pub(crate) async fn connect(settings: SentinelSettings) -> Result<Arc<Primary>, Error> {
        settings.validate()?;
        let primary = Arc::new(Primary {
            sentinels: tokio::sync::Mutex::new(settings.client()?),
            settings,
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            establishing: tokio::sync::Mutex::new(()),
        });
        primary.current().await?;
        tokio::spawn(watch_switches(Arc::downgrade(&primary)));
        Ok(primary)
    }

    /// The client of the primary in use, for the L1's own connections,
    /// with the generation of the connection it belongs to.
    pub(crate) async fn client(&self) -> redis::RedisResult<(u64, redis::Client)> {
        let current = self.current().await?;
        Ok((current.generation, current.client))
    }

    /// The generation of the connection in use; None after it was dropped
    /// (the primary may have moved).
    pub(crate) fn generation(&self) -> Option<u64> {
        lock(&self.current).as_ref().map(|c| c.generation)
    }

    async fn current(&self) -> redis::RedisResult<Current> {
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        let _one = self.establishing.lock().await;
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        let client = {
            let mut sentinels = self.sentinels.lock().await;
            match tokio::time::timeout(CONNECT_TIMEOUT, sentinels.async_get_client()).await {
                Ok(Ok(client)) => client,
                failed => {
                    // A fresh client next time: no connection to a Sentinel
                    // that stopped answering is kept.
                    *sentinels = self.settings.client()?;
                    return Err(match failed {
                        Ok(Err(e)) => e,
                        _ => timed_out("asking the sentinels for the primary"),
                    });
                }
            }
        };
        let config = ConnectionManagerConfig::new().set_connection_timeout(Some(CONNECT_TIMEOUT));
        let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
        let current = Current {
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            manager,
            client,
        };
        *lock(&self.current) = Some(current.clone());
        Ok(current)
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let Current {
            generation,
            mut manager,
            ..
        } = self.current().await?;
        let result = cmd.query_async(&mut manager).await;
        if let Err(e) = &result {
            if moved(e) {
                self.forget(Some(generation));
            }
        }
        result
    }

    /// Drops the connection `generation` (None: whichever is in use); the
    /// next call asks the Sentinels.
    fn forget(&self, generation: Option<u64>) {
        let mut current = lock(&self.current);
        if generation.is_none() || current.as_ref().map(|c| c.generation) == generation {
            *current = None;
        }
    }
}

/// A failed call that may mean the primary moved: READONLY (the server was
/// demoted), a dropped or refused connection, or no answer in time.
fn moved(error: &redis::RedisError) -> bool {
    error.is_timeout()
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

fn timed_out(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer within {CONNECT_TIMEOUT:?}"),
    ))
}

/// Subscribed to one Sentinel's `+switch-master` at a time (the next one
/// when it fails), until the cache is dropped.
async fn watch_switches(primary: Weak<Primary>) {
    let Some(settings) = primary.upgrade().map(|p| p.settings.clone()) else {
        return;
    };
    let announcement = format!("{} ", settings.master_name);
    for (host, port) in settings.addresses.iter().cycle() {
        let subscribed = async {
            let client = redis::Client::open(settings.sentinel_connection_info(host, *port)?)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        let Ok(Ok(mut messages)) = tokio::time::timeout(CONNECT_TIMEOUT, subscribed).await else {
            if primary.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(RETRY_DELAY).await;
            continue;
        };
        loop {
            // Bounded only to notice a dropped cache; the stream ends when
            // the Sentinel goes away.
            match tokio::time::timeout(CONNECT_TIMEOUT, messages.next()).await {
                Ok(Some(message)) => {
                    let payload: String = message.get_payload().unwrap_or_default();
                    let Some(primary) = primary.upgrade() else { return };
                    if payload.starts_with(&announcement) {
                        primary.forget(None);
                    }
                }
                Ok(None) => break,
                Err(_) if primary.strong_count() == 0 => return,
                Err(_) => {}
            }
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// A poisoned lock only means a thread panicked while holding it; the slot
/// is one assignment, always consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords_and_addresses_are_checked() {
        let mut s = SentinelSettings::new("m", ["h:1", "[::1]:2"]).unwrap();
        assert_eq!(s.addresses, vec![("h".to_owned(), 1), ("::1".to_owned(), 2)]);
        s.password = Some("data-secret".into());
        s.sentinel_password = Some("sentinel-secret".into());
        let printed = format!("{s:?} {s:#?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(matches!(
            SentinelSettings::new("m", ["h"]),
            Err(Error::InvalidOptions(_))
        ));
        assert!(matches!(
            SentinelSettings::new("", ["h:1"]),
            Err(Error::InvalidOptions(_))
        ));
        assert!(matches!(
            SentinelSettings::new("m", Vec::<String>::new()),
            Err(Error::InvalidOptions(_))
        ));
    }
}
