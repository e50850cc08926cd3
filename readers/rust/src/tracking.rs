//! The exact L1's connection (spec section 8, tracking): a RESP3 connection
//! of its own with `CLIENT TRACKING ON`, on which every read whose result
//! the L1 may keep is made. Redis then pushes an `invalidate` message on the
//! same connection when any key read there changes; the push handler drops
//! the dependent entries before the connection delivers any later reply.
//!
//! While the connection is down, or from the moment it is found dead, the
//! L1 is flushed and serves nothing; reads go to the main connection. A
//! background task reconnects and checks the connection every
//! `HEALTH_INTERVAL` (a `PING` answered within `HEALTH_TIMEOUT`), so a
//! connection that died silently stops the L1 within about two seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::l1::L1;
use crate::metrics::Handles;

/// How often the tracking connection is checked, and how long its answer may
/// take: a silently dead connection is noticed within their sum.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The wait before connecting again after a failure.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);

pub(crate) struct Tracking {
    client: redis::Client,
    /// `CLIENT SETNAME` of the tracking connection, so an operator (or a
    /// test) can tell it apart in `CLIENT LIST`.
    connection_name: String,
    l1: Arc<L1>,
    m: Arc<Handles>,
    conn: RwLock<Option<MultiplexedConnection>>,
    /// The connection in use; a push from an older one is ignored.
    generation: AtomicU64,
    lost: Notify,
}

impl Tracking {
    /// `client`: the application's; the tracking connection speaks RESP3
    /// whatever protocol the client was configured with.
    pub fn new(
        client: &redis::Client,
        cache_name: &str,
        l1: Arc<L1>,
        m: Arc<Handles>,
    ) -> Result<Arc<Tracking>, redis::RedisError> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        // Client names allow no spaces or newlines.
        let safe: String = cache_name
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        Ok(Arc::new(Tracking {
            client,
            connection_name: format!("cdc-cache-tracking:{safe}"),
            l1,
            m,
            conn: RwLock::new(None),
            generation: AtomicU64::new(0),
            lost: Notify::new(),
        }))
    }

    /// The tracking connection, when up.
    pub fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Marks connection `generation` lost: the L1 is flushed and stops
    /// serving until a new connection has tracking on.
    fn lose(&self, generation: u64) {
        if self
            .generation
            .compare_exchange(generation, generation + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return; // an older connection, already replaced
        }
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.m.l1_reset.increment(self.l1.set_up(false) as u64);
        self.lost.notify_one();
    }

    fn on_push(this: &Weak<Tracking>, generation: u64, push: PushInfo) {
        let Some(this) = this.upgrade() else { return };
        if this.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        match push.kind {
            PushKind::Invalidate => {
                // `invalidate` carries an array of keys, or null after a
                // FLUSHALL / FLUSHDB.
                let keys = match push.data.first() {
                    Some(Value::Array(keys)) => Some(
                        keys.iter()
                            .filter_map(|k| match k {
                                Value::BulkString(b) => Some(b.clone()),
                                Value::SimpleString(s) => Some(s.clone().into_bytes()),
                                _ => None,
                            })
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                };
                let dropped = this.l1.invalidate_tracked(keys.as_deref());
                this.m.l1_tracking.increment(dropped as u64);
            }
            PushKind::Disconnection => this.lose(generation),
            _ => {}
        }
    }

    async fn connect(self: &Arc<Tracking>) -> Result<(u64, MultiplexedConnection), redis::RedisError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let weak = Arc::downgrade(self);
        let config = AsyncConnectionConfig::new()
            .set_push_sender(move |push: PushInfo| {
                Tracking::on_push(&weak, generation, push);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_response_timeout(Some(HEALTH_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.connection_name)
            .query_async(&mut conn)
            .await?;
        let () = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async(&mut conn)
            .await?;
        if self.generation.load(Ordering::SeqCst) != generation {
            // It dropped while tracking was being turned on.
            return Err(redis::RedisError::from(std::io::Error::other(
                "tracking connection dropped while starting",
            )));
        }
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        self.m.l1_reset.increment(self.l1.set_up(true) as u64);
        Ok((generation, conn))
    }

    /// Keeps a tracking connection up until aborted.
    pub async fn run(self: Arc<Tracking>) {
        loop {
            if let Ok((generation, mut conn)) = self.connect().await {
                loop {
                    let lost = self.lost.notified();
                    tokio::pin!(lost);
                    tokio::select! {
                        _ = &mut lost => {}
                        _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
                    }
                    // A notice left over from an older connection changes nothing.
                    if self.generation.load(Ordering::SeqCst) != generation {
                        break;
                    }
                    let ping =
                        tokio::time::timeout(HEALTH_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut conn)).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        self.lose(generation);
                        break;
                    }
                }
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }
}
