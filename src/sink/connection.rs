//! The one place that opens connections to the Redis holding version
//! records: a standalone server (`redis://`, or `rediss://` for TLS, which
//! redis-rs handles from the URL), the primary Redis Sentinel names
//! (`[redis.sentinel]`, through redis-rs's own Sentinel client) or Redis
//! Cluster (`redis.cluster`). The daemon's sink and the auditor both open
//! theirs here.
//!
//! Every call is bounded (`redis.response_timeout`), and a single server's
//! connection is replaced whole when it stops answering or stops being the
//! primary ([`Switchable`]); its sockets carry TCP keepalive and a user
//! timeout, so the kernel gives up on a dead peer too.
//!
//! [`Link`] adds the scripts: both are loaded at connect and reloaded once
//! on `NOSCRIPT` (after a restart or a failover the server forgets them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::{socket2, TcpSettings};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};

use super::request::{Layout, ScriptCall};
use super::SinkError;
use crate::config::{RedisSettings, SentinelSettings};

pub const BUMP_SCRIPT: &str = include_str!("bump.lua");
pub(crate) const EPOCH_SCRIPT: &str = include_str!("epoch.lua");

/// A connection that may be cloned freely (each clone shares it). Both
/// kinds reconnect by themselves; a failed call surfaces as an error and
/// the caller decides about retrying.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One server: named by the URL, or the primary the Sentinels name.
    Standalone(Switchable),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects; fails fast, the caller decides about retries.
    pub(crate) async fn open(settings: &RedisSettings) -> Result<Connection, SinkError> {
        let client_error = |cause| SinkError::Client {
            url: settings.describe(),
            cause,
        };
        let tcp = tcp_settings(settings.response_timeout);
        if settings.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(vec![settings.url.as_str()])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(settings.response_timeout)
                .tcp_settings(tcp)
                .build()
                .map_err(client_error)?;
            let connection = bounded(CONNECT_TIMEOUT, client.get_async_connection()).await?;
            return Ok(Connection::Cluster(connection));
        }
        let source = match &settings.sentinel {
            Some(sentinel) => Source::Sentinel(Box::new(SentinelSource {
                client: tokio::sync::Mutex::new(sentinel_client(sentinel, &tcp).map_err(client_error)?),
                settings: sentinel.clone(),
                tcp,
            })),
            None => {
                let info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
                    .map_err(client_error)?
                    .set_tcp_settings(tcp);
                Source::Url(Box::new(redis::Client::open(info).map_err(client_error)?))
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(settings.response_timeout))
            .set_max_delay(settings.max_retry_backoff)
            .set_number_of_retries(2);
        let switchable = Switchable(Arc::new(Shared {
            source,
            config,
            response_timeout: settings.response_timeout,
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            establishing: tokio::sync::Mutex::new(()),
        }));
        switchable.current().await?;
        if let Some(sentinel) = &settings.sentinel {
            let tcp = tcp_settings(settings.response_timeout);
            tokio::spawn(watch_switches(Arc::downgrade(&switchable.0), sentinel.clone(), tcp));
        }
        Ok(Connection::Standalone(switchable))
    }

    pub(crate) fn layout(&self) -> Layout {
        match self {
            Connection::Standalone(_) => Layout::Standalone,
            Connection::Cluster(_) => Layout::Cluster,
        }
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        match self {
            Connection::Standalone(c) => {
                let (generation, mut manager) = c.current().await?;
                let result = pipe.query_async(&mut manager).await;
                c.after(generation, &result);
                result
            }
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }

    pub(crate) async fn command<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Standalone(c) => {
                let (generation, mut manager) = c.current().await?;
                let result = cmd.query_async(&mut manager).await;
                c.after(generation, &result);
                result
            }
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

    /// A client of the server the standalone connection talks to now, for
    /// connections of their own (the eviction notifications); None on a
    /// cluster, or before the first connection.
    pub(crate) fn current_client(&self) -> Option<redis::Client> {
        match self {
            Connection::Standalone(c) => c.current_client(),
            Connection::Cluster(_) => None,
        }
    }
}

// A server that does not accept a connection within this is down for this
// attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP settings of every socket to Redis. Keepalive notices a dead peer on
/// an idle connection (the eviction subscription) within about 11 s; the
/// user timeout makes the kernel give up on a connection whose data stays
/// unacknowledged as long as a call may wait (a partition), so the client
/// sees it dropped and connects again.
fn tcp_settings(response_timeout: Duration) -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(response_timeout)
}

async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        ))),
    }
}

fn sentinel_client(settings: &SentinelSettings, tcp: &TcpSettings) -> redis::RedisResult<SentinelClient> {
    let addresses = settings.addresses.iter().map(|(host, port)| match settings.tls {
        true => redis::ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: false,
            tls_params: None,
        },
        false => redis::ConnectionAddr::Tcp(host.clone(), *port),
    });
    let mut builder = SentinelClientBuilder::new(addresses, &settings.master_name, SentinelServerType::Master)?
        .set_client_to_redis_db(settings.db)
        .set_client_to_redis_tcp_settings(tcp.clone())
        .set_client_to_sentinel_tcp_settings(tcp.clone());
    if settings.tls {
        builder = builder
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
    }
    if let Some(user) = &settings.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &settings.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = &settings.sentinel_username {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &settings.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder.build()
}

/// Where a single server's connection comes from.
// Boxed: the two differ much in size, and there is one per connection.
enum Source {
    Url(Box<redis::Client>),
    Sentinel(Box<SentinelSource>),
}

/// Asked anew at every (re)connection. The client is rebuilt after a
/// failed question, so no connection to a silent Sentinel is kept.
struct SentinelSource {
    client: tokio::sync::Mutex<SentinelClient>,
    settings: SentinelSettings,
    tcp: TcpSettings,
}

/// A single server's connection, replaced whole when it stops answering or
/// stops being the primary. redis-rs's `ConnectionManager` reconnects by
/// itself only when its socket fails: a call that timed out leaves a silent
/// socket in place (after a partition heals, TCP's retransmission backoff
/// keeps it quiet for up to minutes), and it reconnects to the address it
/// was given, never to a new primary. A call that fails so (see
/// [`needs_replacing`]) drops the connection it used; the next call makes a
/// new one (asking the Sentinels again). Clones share it: the readiness
/// probe sees the sink's replacement.
#[derive(Clone)]
pub(crate) struct Switchable(Arc<Shared>);

struct Shared {
    source: Source,
    config: ConnectionManagerConfig,
    response_timeout: Duration,
    /// The connection in use and its generation; None after a failure.
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

impl Switchable {
    fn current_now(&self) -> Option<Current> {
        lock(&self.0.current).clone()
    }

    fn current_client(&self) -> Option<redis::Client> {
        self.current_now().map(|c| c.client)
    }

    /// The connection in use, or a new one.
    async fn current(&self) -> redis::RedisResult<(u64, ConnectionManager)> {
        if let Some(c) = self.current_now() {
            return Ok((c.generation, c.manager));
        }
        let _one = self.0.establishing.lock().await;
        if let Some(c) = self.current_now() {
            return Ok((c.generation, c.manager));
        }
        let client = self.resolve().await?;
        let manager = bounded(
            CONNECT_TIMEOUT + self.0.response_timeout,
            ConnectionManager::new_with_config(client.clone(), self.0.config.clone()),
        )
        .await?;
        let generation = self.0.generations.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 {
            tracing::info!(server = %client.get_connection_info().addr(), "redis: connected again on a new connection");
        }
        *lock(&self.0.current) = Some(Current {
            generation,
            manager: manager.clone(),
            client,
        });
        Ok((generation, manager))
    }

    /// The client of the server to connect to: the URL's, or the primary the
    /// Sentinels name now.
    async fn resolve(&self) -> redis::RedisResult<redis::Client> {
        match &self.0.source {
            Source::Url(client) => Ok(client.as_ref().clone()),
            Source::Sentinel(source) => {
                let SentinelSource { client, settings, tcp } = source.as_ref();
                let mut sentinel = client.lock().await;
                let asked = bounded(CONNECT_TIMEOUT + self.0.response_timeout, sentinel.async_get_client()).await;
                if asked.is_err() {
                    *sentinel = sentinel_client(settings, tcp)?;
                }
                asked
            }
        }
    }

    /// Drops the connection `generation` when `result` says it is silent or
    /// no longer the primary.
    fn after<T>(&self, generation: u64, result: &redis::RedisResult<T>) {
        let Err(error) = result else { return };
        let sentinel = matches!(self.0.source, Source::Sentinel(_));
        if !needs_replacing(error, sentinel) {
            return;
        }
        let mut current = lock(&self.0.current);
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            tracing::warn!(error = %error, "redis: dropping the connection; the next call opens a new one{}",
                if sentinel { " to the primary the Sentinels name" } else { "" });
            crate::metrics::redis_reconnect(if error.is_timeout() { "silent" } else { "moved" });
            *current = None;
        }
    }
}

/// Sentinel names a new primary before it demotes the old one, and a
/// manually failed-over primary kept taking writes for about 10 s (seen in
/// the fault suite), writes its resync then lost. So the connection is not
/// left to find out by itself: this task listens to the Sentinels'
/// `+switch-master` announcements (on one Sentinel at a time, the next
/// after a failure) and drops the connection at once, so the next call asks
/// the Sentinels again. It ends when the connection is gone.
async fn watch_switches(shared: std::sync::Weak<Shared>, settings: SentinelSettings, tcp: TcpSettings) {
    use futures::StreamExt as _;
    let prefix = format!("{} ", settings.master_name);
    for (host, port) in settings.addresses.iter().cycle() {
        if shared.strong_count() == 0 {
            return;
        }
        let subscribed = async {
            let info = super::sentinel::sentinel_info(&settings, host, *port)?.set_tcp_settings(tcp.clone());
            let mut pubsub = redis::Client::open(info)?.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        let mut messages = match tokio::time::timeout(CONNECT_TIMEOUT, subscribed).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => {
                tracing::debug!(sentinel = %format!("{host}:{port}"), error = %e, "redis sentinel: cannot subscribe to +switch-master");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                tracing::debug!(sentinel = %format!("{host}:{port}"), "redis sentinel: subscribing to +switch-master timed out");
                continue;
            }
        };
        // A message every time any master switches. The socket's keepalive
        // ends a subscription to a Sentinel that went away (then the next
        // one is asked); the timeout only looks whether the sink is gone.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(Some(message)) => {
                    let payload: String = message.get_payload().unwrap_or_default();
                    let Some(shared) = shared.upgrade() else { return };
                    if payload.starts_with(&prefix) {
                        tracing::warn!(switch = %payload, "redis sentinel: the primary switched; connecting to the new one");
                        crate::metrics::redis_reconnect("moved");
                        *lock(&shared.current) = None;
                    }
                }
                Ok(None) => break,
                Err(_) if shared.strong_count() == 0 => return,
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A poisoned lock only means a thread panicked while holding it; the slot
/// is one assignment, always consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a failed call means the connection must be replaced, not
/// retried: no answer in time (a silent connection stays silent), the server
/// turned replica (READONLY: a failover happened), and behind Sentinel also
/// a dropped or refused connection (the primary may have moved: redis-rs
/// would reconnect to the old address).
pub(crate) fn needs_replacing(error: &redis::RedisError, sentinel: bool) -> bool {
    if error.is_timeout() || is_readonly(error) {
        return true;
    }
    sentinel && (error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal())
}

/// READONLY, alone or as the reply of one command of a pipeline.
fn is_readonly(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || error
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "READONLY"))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> redis::RedisError {
        match redis::parse_redis_value(format!("-{text}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(error)) => redis::RedisError::from(error),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn silent_and_demoted_connections_are_replaced_and_refusals_are_not() {
        let timed_out = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let refused = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let readonly = reply("READONLY You can't write against a read only replica.");
        let wrongtype = reply("WRONGTYPE Operation against a key holding the wrong kind of value");
        for sentinel in [false, true] {
            assert!(
                needs_replacing(&timed_out, sentinel),
                "a silent connection stays silent"
            );
            assert!(needs_replacing(&readonly, sentinel), "the server is a replica now");
            assert!(!needs_replacing(&wrongtype, sentinel), "a refusal of the write itself");
        }
        // A refused connection: redis-rs reconnects to the same address by
        // itself, which is right for a URL and wrong behind Sentinel.
        assert!(!needs_replacing(&refused, false));
        assert!(needs_replacing(&refused, true));
    }
}
