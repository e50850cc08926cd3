//! `Cache::get` (spec sections 1, 5, 6, 7 and 9): the read, single flight,
//! the lease and the wait for another's load, stale-while-revalidate,
//! XFetch, the freshness check.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Value};

use crate::flight::{Followed, Joined, Leader, Shared};
use crate::l1::{L1Mode, L1Options, ReadStart, L1};
use crate::metrics::Handles;
use crate::naming::{lease_key, parse_version, Fields, Layout};
use crate::tracking::Tracking;
use crate::{millis, BoxError, Error};

const READ_LUA: &str = include_str!("../../lua/read.lua");
const RELEASE_LUA: &str = include_str!("../../lua/release.lua");
/// The last N freshness checks make `cache_stale_ratio` (spec section 9).
const RATIO_WINDOW: usize = 100;

#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The `cache` label of every metric.
    pub name: String,
    /// The daemon's `[redis] version_prefix`.
    pub prefix: String,
    /// The lease's time to live: how long a loader may hold a key before
    /// another reader may take it over.
    pub lease: Duration,
    /// A waiter's first re-read interval; it doubles up to `max_poll`.
    pub poll: Duration,
    /// The longest re-read interval of a waiter.
    pub max_poll: Duration,
    /// The longest a get waits for another reader's load; `None`: twice the lease.
    pub wait_timeout: Option<Duration>,
    /// The longest a loader may run; `None`: no limit.
    pub loader_timeout: Option<Duration>,
    /// XFetch's beta: above 1 refreshes earlier, 0 turns XFetch off.
    pub beta: f64,
    /// The share of hits checked against the loader (0 to 1).
    pub sample_rate: f64,
    pub l1: Option<L1Options>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            name: "default".into(),
            prefix: "ver:".into(),
            // Longer than a typical loader (a few database queries), short
            // enough that a crashed one is not noticed by users for long.
            lease: Duration::from_secs(5),
            // A fill is usually a few milliseconds away: look again soon,
            // then less often, so a slow load does not turn waiters into a
            // flood of GETs (at most 10 per second each at 100 ms).
            poll: Duration::from_millis(10),
            max_poll: Duration::from_millis(100),
            wait_timeout: None,
            loader_timeout: None,
            beta: 1.0,
            sample_rate: 0.0,
            l1: None,
        }
    }
}

impl CacheOptions {
    fn wait_timeout(&self) -> Duration {
        self.wait_timeout.unwrap_or(self.lease.saturating_mul(2))
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |why: String| Err(Error::InvalidOptions(why));
        if self.lease.is_zero() || self.poll.is_zero() || self.max_poll.is_zero() {
            return invalid(format!(
                "lease {:?}, poll {:?} and max_poll {:?} must be above zero",
                self.lease, self.poll, self.max_poll
            ));
        }
        if self.max_poll < self.poll {
            return invalid(format!("max_poll {:?} is below poll {:?}", self.max_poll, self.poll));
        }
        if self.wait_timeout.is_some_and(|t| t.is_zero()) || self.loader_timeout.is_some_and(|t| t.is_zero()) {
            return invalid("wait_timeout and loader_timeout must be above zero when set".into());
        }
        if !(0.0..=1.0).contains(&self.sample_rate) || self.beta.is_nan() || self.beta < 0.0 {
            return invalid(format!(
                "sample_rate {} must be within 0..=1 and beta {} at least 0",
                self.sample_rate, self.beta
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Never a value older than the last bump the read saw.
    Strong,
    /// A value at most `max_stale` older than the last bump (the bounded
    /// L1, and the previous version while a lease holder refills).
    Eventual { max_stale: Duration },
}

pub struct GetOptions<L> {
    /// The cache keys whose version records the value depends on; `None`:
    /// the key itself. An empty list is refused.
    pub deps: Option<Vec<String>>,
    pub namespaces: Vec<String>,
    pub ttl: Duration,
    /// Called at most once, and only while this get holds the lease.
    pub loader: L,
    pub consistency: Consistency,
}

impl<L> GetOptions<L> {
    pub fn new(ttl: Duration, loader: L) -> Self {
        GetOptions {
            deps: None,
            namespaces: Vec::new(),
            ttl,
            loader,
            consistency: Consistency::Strong,
        }
    }

    pub fn deps<S: Into<String>>(mut self, deps: impl IntoIterator<Item = S>) -> Self {
        self.deps = Some(deps.into_iter().map(Into::into).collect());
        self
    }

    pub fn namespaces<S: Into<String>>(mut self, namespaces: impl IntoIterator<Item = S>) -> Self {
        self.namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    pub fn eventual(mut self, max_stale: Duration) -> Self {
        self.consistency = Consistency::Eventual { max_stale };
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub value: Vec<u8>,
    /// Not from this call's own loader: from the L1, from Redis, or from
    /// another get's load.
    pub hit: bool,
    /// The data key the value is keyed by (`product:42@e0:v1754312399000001`):
    /// it names the versions the value belongs to.
    pub data_key: String,
    /// The value may be older than the current version: the previous
    /// version's value (stale-while-revalidate), or a bounded L1's entry.
    pub stale: bool,
}

/// An existing connection for [`Cache::from_connection`].
#[derive(Clone)]
pub enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl From<ConnectionManager> for Connection {
    fn from(c: ConnectionManager) -> Self {
        Connection::Standalone(c)
    }
}

impl From<ClusterConnection> for Connection {
    fn from(c: ClusterConnection) -> Self {
        Connection::Cluster(c)
    }
}

impl Connection {
    async fn query<T: FromRedisValue>(&self, cmd: redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Standalone(c) => cmd.query_async(&mut c.clone()).await,
            Connection::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

/// One command with its arguments, by value.
fn cmd<A: redis::ToRedisArgs>(name: &str, args: A) -> redis::Cmd {
    let mut c = redis::cmd(name);
    c.arg(args);
    c
}

struct Inner {
    conn: Connection,
    options: CacheOptions,
    read_sha: String,
    release_sha: String,
    /// EVALSHA_RO exists (Redis 7.0+); cleared once a server refuses it.
    read_only: AtomicBool,
    m: Arc<Handles>,
    l1: Option<Arc<L1>>,
    tracking: Option<Arc<Tracking>>,
    flights: crate::flight::Flights,
    checks: Mutex<VecDeque<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A reader of one Redis (standalone or Cluster). Cheap to clone: clones
/// share connections, the L1, the flights and metric handles.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// What one read found (spec section 5).
struct Snapshot {
    now_us: u64,
    epoch: u64,
    fields: Vec<Fields>,
    data_key: String,
    pttl_ms: i64,
    value: Option<Vec<u8>>,
}

/// One get's fixed facts, passed down the read path.
struct Ctx<'a> {
    layout: &'a Layout,
    /// The L1 entry's id: the key and its records.
    id: &'a str,
    ttl: Duration,
    consistency: Consistency,
    started: Instant,
    deadline: Instant,
}

pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A lease this get holds. Dropped while armed (the get was cancelled: its
/// future dropped, a timeout around it), it releases the lease at once in a
/// task of its own, best effort (spec section 5, rule 6).
struct LeaseGuard {
    cache: Cache,
    data_key: String,
    token: Option<String>,
}

impl LeaseGuard {
    /// Releases the lease now; an error is ignored (the lease expires anyway).
    async fn release(mut self) {
        if let Some(token) = self.token.take() {
            let _ = self.cache.release(&self.data_key, &token).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left to release it on: it expires
        };
        let (cache, data_key) = (self.cache.clone(), std::mem::take(&mut self.data_key));
        runtime.spawn(async move {
            let _ = cache.release(&data_key, &token).await;
        });
    }
}

impl Cache {
    /// A standalone Redis (`redis://` or `rediss://`); reconnects by itself.
    pub async fn connect(url: &str, options: CacheOptions) -> Result<Cache, Error> {
        Cache::from_client(redis::Client::open(url)?, options).await
    }

    /// A standalone Redis through an existing client (its TLS, credentials
    /// and protocol settings); the cache opens its own connections.
    pub async fn from_client(client: redis::Client, options: CacheOptions) -> Result<Cache, Error> {
        let conn = ConnectionManager::new(client.clone()).await?;
        Cache::build(Connection::Standalone(conn), Some(client), options).await
    }

    /// A Redis Cluster, from one or more seed nodes.
    pub async fn connect_cluster(urls: &[&str], options: CacheOptions) -> Result<Cache, Error> {
        let first = urls
            .first()
            .ok_or_else(|| Error::InvalidOptions("connect_cluster: no seed node".into()))?;
        let cluster = redis::cluster::ClusterClient::new(urls.to_vec())?;
        let conn = Connection::Cluster(cluster.get_async_connection().await?);
        // Any node relays a cluster's Pub/Sub messages: one seed suffices.
        Cache::build(conn, Some(redis::Client::open(*first)?), options).await
    }

    /// Shares the application's connection (a `ConnectionManager` or a
    /// cluster connection). An L1 with notices or tracking needs connections
    /// of its own: pass the client to open them from (for a cluster, a
    /// client of any one node); without an L1 `client` may be `None`.
    pub async fn from_connection(
        conn: impl Into<Connection>,
        client: Option<redis::Client>,
        options: CacheOptions,
    ) -> Result<Cache, Error> {
        Cache::build(conn.into(), client, options).await
    }

    async fn build(conn: Connection, client: Option<redis::Client>, options: CacheOptions) -> Result<Cache, Error> {
        options.validate()?;
        let m = Arc::new(Handles::new(&options.name));
        let l1 = options.l1.clone().map(|o| Arc::new(L1::new(o, &options.prefix)));
        let mut tasks = Vec::new();
        let mut tracking = None;
        if let Some(l1) = &l1 {
            let needs_client = || {
                client.clone().ok_or_else(|| {
                    Error::InvalidOptions(
                        "an L1 with notices or tracking opens connections of its own: pass a client".into(),
                    )
                })
            };
            match &l1.options.mode {
                L1Mode::Tracking => {
                    if matches!(conn, Connection::Cluster(_)) {
                        return Err(Error::InvalidOptions(
                            "the tracking L1 needs a standalone Redis (on a cluster use the bounded L1)".into(),
                        ));
                    }
                    let t = Tracking::new(&needs_client()?, &options.name, l1.clone(), m.clone())?;
                    tasks.push(tokio::spawn(t.clone().run()));
                    tracking = Some(t);
                }
                L1Mode::Bounded {
                    channel: Some(channel), ..
                } => tasks.push(tokio::spawn(crate::l1::follow_notices(
                    needs_client()?,
                    channel.clone(),
                    l1.clone(),
                    m.clone(),
                ))),
                L1Mode::Bounded { channel: None, .. } => {}
            }
        }
        let cache = Cache {
            inner: Arc::new(Inner {
                conn,
                read_sha: sha1(READ_LUA),
                release_sha: sha1(RELEASE_LUA),
                read_only: AtomicBool::new(true),
                options,
                m,
                l1,
                tracking,
                flights: Default::default(),
                checks: Mutex::new(VecDeque::with_capacity(RATIO_WINDOW)),
                tasks,
            }),
        };
        cache.load_scripts().await?;
        Ok(cache)
    }

    async fn load_scripts(&self) -> Result<(), Error> {
        for text in [READ_LUA, RELEASE_LUA] {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(text);
            match &self.inner.conn {
                Connection::Standalone(_) => {
                    let _: String = self.inner.conn.query(cmd.clone()).await?;
                }
                // Every primary needs the scripts; only release.lua runs there.
                Connection::Cluster(c) => {
                    let routing = redis::cluster_routing::RoutingInfo::MultiNode((
                        redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                        None,
                    ));
                    c.clone().route_command(cmd.clone(), routing).await?;
                }
            }
        }
        Ok(())
    }

    /// Reads the value of `key` (spec section 1).
    pub async fn get<L, Fut, E>(&self, key: &str, options: GetOptions<L>) -> Result<Got, Error>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<BoxError>,
    {
        let started = Instant::now();
        let inner = &*self.inner;
        if options.ttl.is_zero() {
            return Err(Error::InvalidOptions(format!("key {key:?}: ttl must be above zero")));
        }
        let layout = Layout::new(&inner.options.prefix, key, options.deps.as_deref(), &options.namespaces)?;
        let mut loader = Some(options.loader);
        let id = format!("{}\n{}", layout.key, layout.records.join("\n"));

        if let Some(l1) = &inner.l1 {
            let bound = match (&l1.options.mode, options.consistency) {
                (L1Mode::Tracking, _) => Some(None),
                (L1Mode::Bounded { max_stale, .. }, Consistency::Eventual { max_stale: asked }) => {
                    Some(Some((*max_stale).min(asked)))
                }
                (L1Mode::Bounded { .. }, Consistency::Strong) => None,
            };
            if let Some((value, data_key)) = bound.and_then(|b| l1.lookup(&id, b)) {
                inner.m.hits_l1.increment(1);
                self.sample(&value, &mut loader).await;
                return Ok(Got {
                    value,
                    hit: true,
                    data_key,
                    // Only the tracking L1 knows its entries are current.
                    stale: !l1.is_tracking(),
                });
            }
        }

        let ctx = Ctx {
            layout: &layout,
            id: &id,
            ttl: options.ttl,
            consistency: options.consistency,
            started,
            deadline: started + inner.options.wait_timeout(),
        };
        // Every get makes its own read: a get started after a bump must see
        // it, so no get takes the reply of a read sent before it started.
        let start = self.begin_read();
        let tracked = inner.tracking.as_ref().and_then(|t| t.connection());
        let snap = self.read(&layout, tracked.as_ref()).await?;
        if let Some(raw) = &snap.value {
            inner.m.hits_redis.increment(1);
            return self.hit(&ctx, &snap, raw, &mut loader, start).await;
        }
        inner.m.misses.increment(1);

        // Single flight from the miss on: the gets of this process that
        // found the same data key missing share one lease attempt and one
        // wait (rule 2).
        let flight = match options.consistency {
            Consistency::Strong => format!("{}\ns", snap.data_key),
            Consistency::Eventual { max_stale } => format!("{}\ne{}", snap.data_key, max_stale.as_nanos()),
        };
        // Set once this get left a flight whose leader outlived its lease.
        let mut after_hung_leader = false;
        loop {
            match inner.flights.join(&flight) {
                Joined::Lead(mut leader) => {
                    let result = self
                        .lead(&ctx, &snap, &mut leader, &mut loader, start, after_hung_leader)
                        .await;
                    if !leader.is_finished() {
                        // Its followers did not load: for them it is a hit.
                        let shared = result.clone().map(|got| Got { hit: true, ..got });
                        leader.finish(Shared { result: shared });
                    }
                    return result;
                }
                Joined::Follow(follower) => match follower.wait(ctx.deadline, inner.options.lease).await {
                    Followed::Done(shared) => {
                        inner.m.prevented.increment(1);
                        if shared.result.as_ref().is_ok_and(|got| got.stale) {
                            inner.m.stale_served.increment(1);
                        }
                        return shared.result;
                    }
                    // Its leader was cancelled: lead or follow anew.
                    Followed::Abandoned => continue,
                    Followed::Left => {
                        after_hung_leader = true;
                        continue;
                    }
                    Followed::TimedOut => {
                        inner.m.prevented.increment(1);
                        let snap = self.read(&layout, None).await?;
                        if let Some(raw) = snap.value {
                            return Ok(Got {
                                value: decode(&raw).1.to_vec(),
                                hit: true,
                                data_key: snap.data_key,
                                stale: false,
                            });
                        }
                        return self.give_up(&ctx, &snap).await;
                    }
                },
            }
        }
    }

    /// The value was there: XFetch may refresh it early (spec section 7).
    async fn hit<L, Fut, E>(
        &self,
        ctx: &Ctx<'_>,
        snap: &Snapshot,
        raw: &[u8],
        loader: &mut Option<L>,
        start: ReadStart,
    ) -> Result<Got, Error>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<BoxError>,
    {
        let inner = &*self.inner;
        let (delta_ms, payload) = decode(raw);
        if delta_ms > 0 && snap.pttl_ms > 0 && xfetch_due(delta_ms, inner.options.beta, snap.pttl_ms) {
            if let Some(token) = self.try_lease(&snap.data_key).await? {
                inner.m.early.increment(1);
                let guard = self.lease_guard(&snap.data_key, token);
                return self.load_and_fill(ctx, guard, loader, start).await;
            }
        }
        let value = payload.to_vec();
        self.l1_put(ctx, &snap.data_key, &value, start);
        self.sample(&value, loader).await;
        Ok(Got {
            value,
            hit: true,
            data_key: snap.data_key.clone(),
            stale: false,
        })
    }

    /// The flight leader after a miss (spec section 5).
    async fn lead<L, Fut, E>(
        &self,
        ctx: &Ctx<'_>,
        snap: &Snapshot,
        leader: &mut Leader<'_>,
        loader: &mut Option<L>,
        start: ReadStart,
        after_hung_leader: bool,
    ) -> Result<Got, Error>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<BoxError>,
    {
        let inner = &*self.inner;
        if let Some(token) = self.try_lease(&snap.data_key).await? {
            leader.holding().store(true, Ordering::SeqCst);
            if after_hung_leader {
                // The lease of this process's own hung leader was free.
                inner.m.takeovers.increment(1);
            }
            let guard = self.lease_guard(&snap.data_key, token);
            if let Consistency::Eventual { .. } = ctx.consistency {
                // The followers serve the previous value, as another
                // process's waiters would; this get loads.
                if let Some(stale) = self.stale_value(ctx, snap, true).await? {
                    leader.finish(Shared { result: Ok(stale) });
                }
            }
            return self.hold(ctx, guard, loader, start).await;
        }

        if let Consistency::Eventual { .. } = ctx.consistency {
            if let Some(stale) = self.stale_value(ctx, snap, true).await? {
                inner.m.prevented.increment(1);
                inner.m.stale_served.increment(1);
                return Ok(stale);
            }
        }
        self.wait(ctx, snap, loader, start, leader.holding()).await
    }

    /// Rule 3: waits for another reader's fill, re-reading with a backoff
    /// from `poll` to `max_poll`; takes the lease over once it is gone
    /// without a value; gives up at the deadline (rule 4).
    async fn wait<L, Fut, E>(
        &self,
        ctx: &Ctx<'_>,
        snap: &Snapshot,
        loader: &mut Option<L>,
        start: ReadStart,
        holding: &AtomicBool,
    ) -> Result<Got, Error>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<BoxError>,
    {
        let inner = &*self.inner;
        let lease = lease_key(&snap.data_key);
        let mut interval = inner.options.poll;
        loop {
            let now = Instant::now();
            if now >= ctx.deadline {
                inner.m.prevented.increment(1);
                return self.give_up(ctx, snap).await;
            }
            tokio::time::sleep(interval.min(ctx.deadline - now)).await;
            interval = (interval * 2).min(inner.options.max_poll);
            let (value, lease_left) = futures::try_join!(
                inner.conn.query::<Option<Vec<u8>>>(cmd("GET", &snap.data_key)),
                inner.conn.query::<i64>(cmd("PTTL", &lease)),
            )?;
            if let Some(raw) = value {
                inner.m.prevented.increment(1);
                let value = decode(&raw).1.to_vec();
                self.l1_put(ctx, &snap.data_key, &value, start);
                return Ok(Got {
                    value,
                    hit: true,
                    data_key: snap.data_key.clone(),
                    stale: false,
                });
            }
            // -2: the lease key is gone without a fill (its holder crashed,
            // hung past its lease, or its loader failed): one attempt to
            // take it over; the winner loads, the others keep waiting.
            if lease_left == -2 {
                if let Some(token) = self.try_lease(&snap.data_key).await? {
                    holding.store(true, Ordering::SeqCst);
                    inner.m.takeovers.increment(1);
                    let guard = self.lease_guard(&snap.data_key, token);
                    return self.hold(ctx, guard, loader, start).await;
                }
            }
        }
    }

    /// Rule 4: the wait is over. `eventual` serves the previous value if
    /// there is one, whatever its age; otherwise `lease_timeout`.
    async fn give_up(&self, ctx: &Ctx<'_>, snap: &Snapshot) -> Result<Got, Error> {
        if let Consistency::Eventual { .. } = ctx.consistency {
            if let Some(stale) = self.stale_value(ctx, snap, false).await? {
                self.inner.m.stale_served.increment(1);
                return Ok(stale);
            }
        }
        Err(Error::LeaseTimeout {
            data_key: snap.data_key.clone(),
            waited: ctx.started.elapsed(),
        })
    }

    /// The previous version's value (spec section 6), if its key holds one;
    /// `bounded`: only while the bump is within the get's `max_stale`.
    async fn stale_value(&self, ctx: &Ctx<'_>, snap: &Snapshot, bounded: bool) -> Result<Option<Got>, Error> {
        let Consistency::Eventual { max_stale } = ctx.consistency else {
            return Ok(None);
        };
        let Some((stale_key, age_us)) = ctx.layout.stale_key(snap.epoch, &snap.fields, snap.now_us) else {
            return Ok(None);
        };
        if bounded && age_us > u64::try_from(max_stale.as_micros()).unwrap_or(u64::MAX) {
            return Ok(None);
        }
        let raw: Option<Vec<u8>> = self.inner.conn.query(cmd("GET", &stale_key)).await?;
        Ok(raw.map(|raw| Got {
            value: decode(&raw).1.to_vec(),
            hit: true,
            data_key: stale_key,
            stale: true,
        }))
    }

    fn lease_guard(&self, data_key: &str, token: String) -> LeaseGuard {
        LeaseGuard {
            cache: self.clone(),
            data_key: data_key.to_owned(),
            token: Some(token),
        }
    }

    /// Rule 5: this get holds the lease. It reads the data key once more
    /// (someone may have filled it since this get's read), then loads.
    async fn hold<L, Fut, E>(
        &self,
        ctx: &Ctx<'_>,
        guard: LeaseGuard,
        loader: &mut Option<L>,
        start: ReadStart,
    ) -> Result<Got, Error>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<BoxError>,
    {
        let raw: Option<Vec<u8>> = self.inner.conn.query(cmd("GET", &guard.data_key)).await?;
        let Some(raw) = raw else {
            return self.load_and_fill(ctx, guard, loader, start).await;
        };
        let data_key = guard.data_key.clone();
        guard.release().await;
        let value = decode(&raw).1.to_vec();
        self.l1_put(ctx, &data_key, &value, start);
        Ok(Got {
            value,
            hit: true,
            data_key,
            stale: false,
        })
    }

    /// Calls the loader (within `loader_timeout`), writes the value, then
    /// releases the lease: the value first, so a waiter that sees the lease
    /// gone finds the value.
    async fn load_and_fill<L, Fut, E>(
        &self,
        ctx: &Ctx<'_>,
        guard: LeaseGuard,
        loader: &mut Option<L>,
        start: ReadStart,
    ) -> Result<Got, Error>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<BoxError>,
    {
        let inner = &*self.inner;
        let data_key = guard.data_key.clone();
        let data_key = data_key.as_str();
        let Some(loader) = loader.take() else {
            // Only a freshness check takes the loader, and only on a hit
            // that then returns: never before a load.
            guard.release().await;
            return Err(Error::Protocol("the loader was already called".into()));
        };
        let as_loader_error = |e: E| Error::Loader(Arc::from(e.into()));
        let loading_started = Instant::now();
        let loaded = match inner.options.loader_timeout {
            Some(limit) => match tokio::time::timeout(limit, loader()).await {
                Ok(result) => result.map_err(as_loader_error),
                Err(_) => Err(Error::LoaderTimeout {
                    data_key: data_key.to_owned(),
                    after: limit,
                }),
            },
            None => loader().await.map_err(as_loader_error),
        };
        let took = loading_started.elapsed();
        inner.m.fill_latency.record(took.as_secs_f64() * 1000.0);
        let value = match loaded {
            Ok(value) => value,
            Err(e) => {
                inner.m.fill_errors.increment(1);
                guard.release().await;
                return Err(e);
            }
        };
        let mut set = redis::cmd("SET");
        set.arg(data_key)
            .arg(encode(millis(took), &value))
            .arg("PX")
            .arg(millis(ctx.ttl).max(1));
        let written: Result<(), _> = inner.conn.query(set).await;
        guard.release().await;
        written?;
        inner.m.fills.increment(1);
        self.l1_put(ctx, data_key, &value, start);
        Ok(Got {
            value,
            hit: false,
            data_key: data_key.to_owned(),
            stale: false,
        })
    }

    fn begin_read(&self) -> ReadStart {
        match &self.inner.l1 {
            Some(l1) => l1.begin(),
            None => ReadStart {
                at: Instant::now(),
                seq: 0,
            },
        }
    }

    /// Keeps a current value in the L1: the tracking L1 for every get, the
    /// bounded one for `eventual` gets (the only ones it serves).
    fn l1_put(&self, ctx: &Ctx<'_>, data_key: &str, value: &[u8], start: ReadStart) {
        let Some(l1) = &self.inner.l1 else { return };
        if l1.is_tracking() || matches!(ctx.consistency, Consistency::Eventual { .. }) {
            l1.put(ctx.id, data_key, value, &ctx.layout.records, start);
        }
    }

    /// The read of spec section 5: one script on a standalone server (on the
    /// tracking connection when given), two pipelined round trips on a cluster.
    async fn read(&self, layout: &Layout, tracked: Option<&MultiplexedConnection>) -> Result<Snapshot, Error> {
        let inner = &self.inner;
        // Layout::new puts the epoch record first; a Layout built by hand without it is refused.
        let Some((epoch_record, field_records)) = layout.records.split_first() else {
            return Err(Error::InvalidOptions(format!("key {:?}: no epoch record", layout.key)));
        };
        let (now_us, texts, script_key, pttl_ms, value) = match &inner.conn {
            Connection::Standalone(_) => {
                let reply = self.run_read_script(layout, tracked).await?;
                let Value::Array(mut items) = reply else {
                    return Err(Error::Protocol(format!("{reply:?}")));
                };
                let expected = 3 + 2 * field_records.len() + 3;
                if items.len() != expected {
                    return Err(Error::Protocol(format!("{} items, {expected} expected", items.len())));
                }
                let value = match items.pop() {
                    Some(Value::BulkString(b)) => Some(b),
                    _ => None,
                };
                let pttl = match items.pop() {
                    Some(Value::Int(t)) => t,
                    other => return Err(Error::Protocol(format!("PTTL {other:?}"))),
                };
                let key = items.pop().map(|v| bytes(&v)).unwrap_or_default();
                // The length was checked above: TIME's two items, then the texts.
                let [seconds, micros, texts @ ..] = items.as_slice() else {
                    return Err(Error::Protocol(format!("{} items, {expected} expected", items.len())));
                };
                let now_us = time_us(seconds, micros)?;
                let texts: Vec<Option<Vec<u8>>> = texts.iter().map(opt_bytes).collect();
                (now_us, texts, Some(key), pttl, value)
            }
            Connection::Cluster(_) => {
                let mut epoch = redis::cmd("HGET");
                epoch.arg(epoch_record).arg("e");
                let fields = field_records.iter().map(|r| {
                    let mut c = redis::cmd("HMGET");
                    c.arg(r).arg("v").arg("pv");
                    c
                });
                let fields: Vec<redis::Cmd> = fields.collect();
                let (t, e, each) = futures::try_join!(
                    inner.conn.query::<Vec<Value>>(redis::cmd("TIME")),
                    inner.conn.query::<Option<Vec<u8>>>(epoch),
                    futures::future::try_join_all(
                        fields
                            .into_iter()
                            .map(|c| inner.conn.query::<(Option<Vec<u8>>, Option<Vec<u8>>)>(c))
                    ),
                )?;
                let now_us = match t.as_slice() {
                    [s, us] => time_us(s, us)?,
                    _ => return Err(Error::Protocol(format!("TIME {t:?}"))),
                };
                let mut texts = vec![e];
                for (v, pv) in each {
                    texts.push(v);
                    texts.push(pv);
                }
                (now_us, texts, None, 0, None)
            }
        };
        // The epoch's text, then `v` and `pv` of each other record (both paths build exactly that).
        let (epoch_text, field_texts) = match texts.split_first() {
            Some((epoch_text, field_texts)) if field_texts.len() == 2 * field_records.len() => {
                (epoch_text, field_texts)
            }
            _ => {
                return Err(Error::Protocol(format!(
                    "{} version texts, {} expected",
                    texts.len(),
                    1 + 2 * field_records.len()
                )))
            }
        };
        let epoch = parse_version(epoch_record, "e", epoch_text.as_deref())?.unwrap_or(0);
        let mut fields = Vec::with_capacity(field_records.len());
        let v_texts = field_texts.iter().step_by(2);
        let pv_texts = field_texts.iter().skip(1).step_by(2);
        for ((record, v_text), pv_text) in field_records.iter().zip(v_texts).zip(pv_texts) {
            let v = parse_version(record, "v", v_text.as_deref())?.unwrap_or(0);
            let pv = parse_version(record, "pv", pv_text.as_deref())?;
            fields.push(Fields { v, pv });
        }
        let data_key = layout.data_key(epoch, fields.iter().map(|f| f.v));
        let (pttl_ms, value) = match script_key {
            // Valid texts are canonical, so the script built the same key.
            Some(key) if key == data_key.as_bytes() => (pttl_ms, value),
            _ => {
                let (pttl, value) = futures::try_join!(
                    inner.conn.query::<i64>(cmd("PTTL", &data_key)),
                    inner.conn.query::<Option<Vec<u8>>>(cmd("GET", &data_key)),
                )?;
                (pttl, value)
            }
        };
        Ok(Snapshot {
            now_us,
            epoch,
            fields,
            data_key,
            pttl_ms,
            value,
        })
    }

    async fn run_read_script(&self, layout: &Layout, tracked: Option<&MultiplexedConnection>) -> Result<Value, Error> {
        let inner = &self.inner;
        let mut tracked = tracked;
        for _ in 0..3 {
            let ro = inner.read_only.load(Ordering::Relaxed);
            let mut cmd = redis::cmd(if ro { "EVALSHA_RO" } else { "EVALSHA" });
            cmd.arg(&inner.read_sha)
                .arg(layout.records.len())
                .arg(&layout.records)
                .arg(&layout.key)
                .arg(layout.deps);
            let reply = match tracked {
                Some(conn) => cmd.query_async::<Value>(&mut conn.clone()).await,
                None => inner.conn.query::<Value>(cmd).await,
            };
            match reply {
                Ok(v) => return Ok(v),
                Err(e) if e.code() == Some("NOSCRIPT") => self.load_scripts().await?,
                Err(e) if ro && e.to_string().to_lowercase().contains("unknown command") => {
                    inner.read_only.store(false, Ordering::Relaxed)
                }
                // The tracking connection failed (it is being replaced, and
                // the L1 flushed): read on the main one.
                Err(_) if tracked.is_some() => tracked = None,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Protocol(
            "the read script kept disappearing (SCRIPT FLUSH in a loop?)".into(),
        ))
    }

    async fn try_lease(&self, data_key: &str) -> Result<Option<String>, Error> {
        let token = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        let mut cmd = redis::cmd("SET");
        cmd.arg(lease_key(data_key))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.inner.options.lease).max(1));
        let set: Option<String> = self.inner.conn.query(cmd).await?;
        Ok(set.map(|_| token))
    }

    async fn release(&self, data_key: &str, token: &str) -> Result<(), Error> {
        let lease = lease_key(data_key);
        for _ in 0..2 {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.inner.release_sha).arg(1).arg(&lease).arg(token);
            match self.inner.conn.query::<i64>(cmd).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Some("NOSCRIPT") => self.load_scripts().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The freshness check of spec section 9, on a sample of hits.
    async fn sample<L, Fut, E>(&self, served: &[u8], loader: &mut Option<L>)
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        let rate = self.inner.options.sample_rate;
        if rate <= 0.0 || rand::random::<f64>() >= rate {
            return;
        }
        let Some(loader) = loader.take() else { return };
        // A loader error says nothing about freshness: not a check.
        let Ok(truth) = loader().await else { return };
        let m = &self.inner.m;
        let stale = truth != served;
        m.checks.increment(1);
        if stale {
            m.mismatches.increment(1);
        }
        let mut window = self.inner.checks.lock().unwrap_or_else(|p| p.into_inner());
        if window.len() == RATIO_WINDOW {
            window.pop_front();
        }
        window.push_back(stale);
        let bad = window.iter().filter(|s| **s).count();
        m.stale_ratio.set(bad as f64 / window.len() as f64);
    }
}

/// `c1:<delta ms>:<bytes>` (spec section 7).
pub(crate) fn encode(delta_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut out = format!("c1:{delta_ms}:").into_bytes();
    out.extend_from_slice(value);
    out
}

/// The loader's duration and the value; a value without the envelope is
/// returned whole with duration 0 (never refreshed early).
pub(crate) fn decode(raw: &[u8]) -> (u64, &[u8]) {
    let parsed = raw.strip_prefix(b"c1:").and_then(|rest| {
        let colon = rest.iter().position(|b| *b == b':')?;
        let (digits, colon_and_value) = rest.split_at_checked(colon)?;
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let delta = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some((delta, colon_and_value.get(1..)?))
    });
    parsed.unwrap_or((0, raw))
}

/// XFetch: refresh when `delta * beta * -ln(u) >= ttl left`, u in (0, 1].
fn xfetch_due(delta_ms: u64, beta: f64, pttl_ms: i64) -> bool {
    let u = 1.0 - rand::random::<f64>();
    delta_ms as f64 * beta * -u.ln() >= pttl_ms as f64
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn opt_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        // A script's `false` arrives as RESP3's boolean on the tracking connection.
        Value::Nil | Value::Boolean(false) => None,
        other => Some(bytes(other)),
    }
}

fn time_us(seconds: &Value, micros: &Value) -> Result<u64, Error> {
    let num = |v: &Value| -> Option<u64> { std::str::from_utf8(&bytes(v)).ok()?.parse().ok() };
    match (num(seconds), num(micros)) {
        (Some(s), Some(us)) => Ok(s * 1_000_000 + us),
        _ => Err(Error::Protocol(format!("TIME {seconds:?} {micros:?}"))),
    }
}

fn sha1(text: &str) -> String {
    redis::Script::new(text).get_hash().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_foreign_values_pass_through() {
        let raw = encode(42, b"c1:x:y");
        assert_eq!(decode(&raw), (42, &b"c1:x:y"[..]));
        assert_eq!(decode(b"plain"), (0, &b"plain"[..]));
        assert_eq!(decode(b"c1:12x:v"), (0, &b"c1:12x:v"[..]));
        assert_eq!(decode(b"c1::v"), (0, &b"c1::v"[..]));
    }

    #[test]
    fn xfetch_is_never_due_far_from_expiry_and_always_at_it() {
        assert!((0..1000).all(|_| !xfetch_due(10, 1.0, 1_000_000)));
        assert!((0..1000).all(|_| xfetch_due(10, 1.0, 0)));
        assert!((0..1000).all(|_| !xfetch_due(10, 0.0, 1)));
    }
}
