//! `Cache::get` (spec sections 1, 5, 6, 7 and 9).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Value};

use crate::l1::{L1Options, L1};
use crate::metrics::Handles;
use crate::naming::{lease_key, parse_version, Fields, Layout};
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
    /// How long a loader may hold a key before others take over.
    pub lease: Duration,
    /// How often a reader waiting for a fill looks again.
    pub poll: Duration,
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
            // A fill is usually a few milliseconds away; 10 ms keeps 200
            // waiters at 20k cheap GETs/s at worst.
            poll: Duration::from_millis(10),
            beta: 1.0,
            sample_rate: 0.0,
            l1: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Never a value older than the last bump the read saw.
    Strong,
    /// A value at most `max_stale` older than the last bump (L1, and the
    /// previous version while a lease holder refills).
    Eventual { max_stale: Duration },
}

pub struct GetOptions<L> {
    /// The cache keys whose version records the value depends on; `None`:
    /// the key itself.
    pub deps: Option<Vec<String>>,
    pub namespaces: Vec<String>,
    pub ttl: Duration,
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
    /// From a cache (L1 or Redis), not from this call's loader.
    pub hit: bool,
    /// The data key the value is keyed by.
    pub version: String,
    /// The previous version's value, served while a lease holder refills.
    pub stale: bool,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
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
    conn: Conn,
    options: CacheOptions,
    read_sha: String,
    release_sha: String,
    /// EVALSHA_RO exists (Redis 7.0+); cleared once a server refuses it.
    read_only: AtomicBool,
    m: Arc<Handles>,
    l1: Option<Arc<L1>>,
    checks: Mutex<VecDeque<bool>>,
    notices: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.notices {
            task.abort();
        }
    }
}

/// A reader of one Redis (standalone or Cluster). Cheap to clone: clones
/// share connections, the L1 and metric handles.
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

pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Cache {
    /// A standalone Redis (`redis://` or `rediss://`); reconnects by itself.
    pub async fn connect(url: &str, options: CacheOptions) -> Result<Cache, Error> {
        let client = redis::Client::open(url)?;
        let conn = Conn::Single(ConnectionManager::new(client.clone()).await?);
        Cache::build(conn, client, options).await
    }

    /// A Redis Cluster, from one or more seed nodes.
    pub async fn connect_cluster(urls: &[&str], options: CacheOptions) -> Result<Cache, Error> {
        let first = urls
            .first()
            .ok_or_else(|| Error::InvalidOptions("connect_cluster: no seed node".into()))?;
        let cluster = redis::cluster::ClusterClient::new(urls.to_vec())?;
        let conn = Conn::Cluster(cluster.get_async_connection().await?);
        // Any node relays a cluster's Pub/Sub messages: one seed suffices.
        Cache::build(conn, redis::Client::open(*first)?, options).await
    }

    async fn build(conn: Conn, client: redis::Client, options: CacheOptions) -> Result<Cache, Error> {
        if options.lease.is_zero() || options.poll.is_zero() {
            return Err(Error::InvalidOptions("lease and poll must be above zero".into()));
        }
        if !(0.0..=1.0).contains(&options.sample_rate) || options.beta.is_nan() || options.beta < 0.0 {
            return Err(Error::InvalidOptions(format!(
                "sample_rate {} must be within 0..=1 and beta {} at least 0",
                options.sample_rate, options.beta
            )));
        }
        let m = Arc::new(Handles::new(&options.name));
        let l1 = options.l1.clone().map(|o| Arc::new(L1::new(o, &options.prefix)));
        let notices = match (&l1, options.l1.as_ref().and_then(|o| o.channel.clone())) {
            (Some(l1), Some(channel)) => Some(tokio::spawn(crate::l1::follow_notices(
                client,
                channel,
                l1.clone(),
                m.clone(),
            ))),
            _ => None,
        };
        let cache = Cache {
            inner: Arc::new(Inner {
                conn,
                read_sha: sha1(READ_LUA),
                release_sha: sha1(RELEASE_LUA),
                read_only: AtomicBool::new(true),
                options,
                m,
                l1,
                checks: Mutex::new(VecDeque::with_capacity(RATIO_WINDOW)),
                notices,
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
                Conn::Single(_) => {
                    let _: String = self.inner.conn.query(cmd.clone()).await?;
                }
                // Every primary needs the scripts; only release.lua runs there.
                Conn::Cluster(c) => {
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
        let inner = &self.inner;
        if options.ttl.is_zero() {
            return Err(Error::InvalidOptions(format!("key {key:?}: ttl must be above zero")));
        }
        let layout = Layout::new(&inner.options.prefix, key, options.deps.as_deref(), &options.namespaces)?;
        let mut loader = Some(options.loader);
        let l1_id = match (&inner.l1, options.consistency) {
            (Some(l1), Consistency::Eventual { max_stale }) => {
                let id = format!("{}\n{}", layout.key, layout.records.join("\n"));
                if let Some((value, data_key)) = l1.fresh(&id, max_stale.min(l1.options.max_stale)) {
                    inner.m.hits_l1.increment(1);
                    self.sample(&value, &mut loader).await;
                    return Ok(Got {
                        value,
                        hit: true,
                        version: data_key,
                        stale: false,
                    });
                }
                Some(id)
            }
            _ => None,
        };

        let started = Instant::now();
        let snap = self.read(&layout).await?;
        if let Some(raw) = snap.value {
            inner.m.hits_redis.increment(1);
            let (delta_ms, payload) = decode(&raw);
            if delta_ms > 0 && snap.pttl_ms > 0 && xfetch_due(delta_ms, inner.options.beta, snap.pttl_ms) {
                if let Some(token) = self.try_lease(&snap.data_key).await? {
                    inner.m.early.increment(1);
                    let loader = loader.take().expect("the loader is taken once");
                    return self
                        .fill(&layout, &snap.data_key, Some(token), loader, options.ttl, l1_id)
                        .await;
                }
            }
            let value = payload.to_vec();
            if let (Some(l1), Some(id)) = (&inner.l1, &l1_id) {
                l1.put(id, &snap.data_key, &value, &layout.records, started);
            }
            self.sample(&value, &mut loader).await;
            return Ok(Got {
                value,
                hit: true,
                version: snap.data_key,
                stale: false,
            });
        }

        inner.m.misses.increment(1);
        let loader = loader.take().expect("the loader is taken once");
        if let Some(token) = self.try_lease(&snap.data_key).await? {
            return self
                .fill(&layout, &snap.data_key, Some(token), loader, options.ttl, l1_id)
                .await;
        }

        if let Consistency::Eventual { max_stale } = options.consistency {
            if let Some((stale_key, age_us)) = layout.stale_key(snap.epoch, &snap.fields, snap.now_us) {
                if age_us <= u64::try_from(max_stale.as_micros()).unwrap_or(u64::MAX) {
                    let raw: Option<Vec<u8>> = inner.conn.query(cmd("GET", &stale_key)).await?;
                    if let Some(raw) = raw {
                        inner.m.prevented.increment(1);
                        inner.m.stale_served.increment(1);
                        return Ok(Got {
                            value: decode(&raw).1.to_vec(),
                            hit: true,
                            version: stale_key,
                            stale: true,
                        });
                    }
                }
            }
        }

        // Wait for the holder's fill, at most one lease in all.
        let lease = lease_key(&snap.data_key);
        let deadline = Instant::now() + inner.options.lease;
        loop {
            tokio::time::sleep(inner.options.poll).await;
            let (value, lease_left) = futures::try_join!(
                inner.conn.query::<Option<Vec<u8>>>(cmd("GET", &snap.data_key)),
                inner.conn.query::<i64>(cmd("PTTL", &lease)),
            )?;
            if let Some(raw) = value {
                inner.m.prevented.increment(1);
                let value = decode(&raw).1.to_vec();
                if let (Some(l1), Some(id)) = (&inner.l1, &l1_id) {
                    l1.put(id, &snap.data_key, &value, &layout.records, started);
                }
                return Ok(Got {
                    value,
                    hit: true,
                    version: snap.data_key,
                    stale: false,
                });
            }
            // -2: the lease key is gone without a fill (holder crashed or failed).
            if lease_left == -2 {
                if let Some(token) = self.try_lease(&snap.data_key).await? {
                    // On a cluster the GET and the PTTL above went to different
                    // nodes: the fill may have landed between them.
                    let raw: Option<Vec<u8>> = inner.conn.query(cmd("GET", &snap.data_key)).await?;
                    if let Some(raw) = raw {
                        self.release(&snap.data_key, &token).await?;
                        inner.m.prevented.increment(1);
                        return Ok(Got {
                            value: decode(&raw).1.to_vec(),
                            hit: true,
                            version: snap.data_key,
                            stale: false,
                        });
                    }
                    inner.m.takeovers.increment(1);
                    return self
                        .fill(&layout, &snap.data_key, Some(token), loader, options.ttl, l1_id)
                        .await;
                }
            }
            if Instant::now() >= deadline {
                // Leases keep changing hands without a fill: load rather than
                // wait without bound.
                return self
                    .fill(&layout, &snap.data_key, None, loader, options.ttl, l1_id)
                    .await;
            }
        }
    }

    /// The read of spec section 5: one script on a standalone server, two
    /// pipelined round trips on a cluster.
    async fn read(&self, layout: &Layout) -> Result<Snapshot, Error> {
        let inner = &self.inner;
        let (now_us, texts, script_key, pttl_ms, value) = match &inner.conn {
            Conn::Single(_) => {
                let reply = self.run_read_script(layout).await?;
                let Value::Array(mut items) = reply else {
                    return Err(Error::Protocol(format!("{reply:?}")));
                };
                let expected = 3 + 2 * (layout.records.len() - 1) + 3;
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
                let now_us = time_us(&items[0], &items[1])?;
                let texts: Vec<Option<Vec<u8>>> = items[2..].iter().map(opt_bytes).collect();
                (now_us, texts, Some(key), pttl, value)
            }
            Conn::Cluster(_) => {
                let mut epoch = redis::cmd("HGET");
                epoch.arg(&layout.records[0]).arg("e");
                let fields = layout.records[1..].iter().map(|r| {
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
        let epoch = parse_version(&layout.records[0], "e", texts[0].as_deref())?.unwrap_or(0);
        let mut fields = Vec::with_capacity(layout.records.len() - 1);
        for (i, record) in layout.records[1..].iter().enumerate() {
            let v = parse_version(record, "v", texts[1 + 2 * i].as_deref())?.unwrap_or(0);
            let pv = parse_version(record, "pv", texts[2 + 2 * i].as_deref())?;
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

    async fn run_read_script(&self, layout: &Layout) -> Result<Value, Error> {
        let inner = &self.inner;
        for _ in 0..3 {
            let ro = inner.read_only.load(Ordering::Relaxed);
            let mut cmd = redis::cmd(if ro { "EVALSHA_RO" } else { "EVALSHA" });
            cmd.arg(&inner.read_sha)
                .arg(layout.records.len())
                .arg(&layout.records)
                .arg(&layout.key)
                .arg(layout.deps);
            match inner.conn.query::<Value>(cmd).await {
                Ok(v) => return Ok(v),
                Err(e) if e.code() == Some("NOSCRIPT") => self.load_scripts().await?,
                Err(e) if ro && e.to_string().to_lowercase().contains("unknown command") => {
                    inner.read_only.store(false, Ordering::Relaxed)
                }
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

    /// Loads and writes the value (spec section 5, the holder). Without a
    /// token (a waiter out of patience) there is no lease to release.
    async fn fill<L, Fut, E>(
        &self,
        layout: &Layout,
        data_key: &str,
        token: Option<String>,
        loader: L,
        ttl: Duration,
        l1_id: Option<String>,
    ) -> Result<Got, Error>
    where
        L: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: Into<BoxError>,
    {
        let inner = &self.inner;
        let started = Instant::now();
        let loaded = loader().await;
        let took = started.elapsed();
        inner.m.fill_latency.record(took.as_secs_f64() * 1000.0);
        let value = match loaded {
            Ok(value) => value,
            Err(e) => {
                inner.m.fill_errors.increment(1);
                if let Some(token) = &token {
                    self.release(data_key, token).await?;
                }
                return Err(Error::Loader(e.into()));
            }
        };
        // The value first, then the lease: a waiter that sees the lease gone
        // finds the value and does not take over.
        let mut set = redis::cmd("SET");
        set.arg(data_key)
            .arg(encode(millis(took), &value))
            .arg("PX")
            .arg(millis(ttl).max(1));
        let _: () = inner.conn.query(set).await?;
        if let Some(token) = &token {
            self.release(data_key, token).await?;
        }
        inner.m.fills.increment(1);
        if let (Some(l1), Some(id)) = (&inner.l1, &l1_id) {
            l1.put(id, data_key, &value, &layout.records, started);
        }
        Ok(Got {
            value,
            hit: false,
            version: data_key.to_owned(),
            stale: false,
        })
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
        let digits = &rest[..colon];
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let delta = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some((delta, &rest[colon + 1..]))
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
        Value::Nil => None,
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
