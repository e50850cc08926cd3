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
use redis::sentinel::SentinelClient;
use redis::FromRedisValue;

use crate::Error;

/// How long connecting to a Sentinel or to the primary may take, and one
/// question to the Sentinels: an answer on a LAN takes milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before asking the next Sentinel after one failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The daemon's `[redis.sentinel]`, the same type (crates/cdc-sentinel):
/// same names and meaning. `Debug` never shows a password.
pub use cdc_sentinel::SentinelSettings;

impl From<cdc_sentinel::Invalid> for Error {
    fn from(e: cdc_sentinel::Invalid) -> Error {
        Error::InvalidOptions(e.0)
    }
}

fn sentinel_client(settings: &SentinelSettings) -> redis::RedisResult<SentinelClient> {
    settings.client_builder()?.build()
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
            sentinels: tokio::sync::Mutex::new(sentinel_client(&settings)?),
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
                    *sentinels = sentinel_client(&self.settings)?;
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
