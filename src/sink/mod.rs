//! Redis apply: guarded bumps through the Lua script beside this file, many
//! targets per call and the calls pipelined, loaded once and reloaded on NOSCRIPT (after a
//! restart or a failover the server forgets it). Standalone servers get one
//! pipeline per batch; Redis Cluster gets one pipeline per hash slot, sent
//! concurrently, because a cluster pipeline must not cross slots.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;

use crate::config::{redact_url, RedisSettings, REDIS_RESPONSE_TIMEOUT};
use crate::event::Position;
use crate::graph::Target;
use crate::plan::Bump;

pub mod epoch;
pub mod eviction;
pub mod notice;

use epoch::{EpochReply, EpochState, LossReason, ServerView};

pub const BUMP_SCRIPT: &str = include_str!("bump.lua");
pub(crate) const EPOCH_SCRIPT: &str = include_str!("epoch.lua");
/// Guarded bumps per script call. A call costs far more than the commands
/// inside it, so keys per second grow with the chunk until the call's own
/// run time blocks the server for too long; the curve is in BENCHMARKS.md
/// ("Bumps per script call").
pub const BUMPS_PER_CALL: usize = 32;
/// The guard source of namespace bumps made by a loss recovery; its
/// positions are the new epoch, so each recovery passes the guard once.
pub(crate) const LOSS_SOURCE: &str = "loss";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open redis client for {url}: {cause}")]
    Client { url: String, cause: redis::RedisError },
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    #[error("redis answered {got} replies to {sent} bumps")]
    ShortReply { sent: usize, got: usize },
    #[error("only {acknowledged} of {wanted} redis replicas acknowledged the batch within {timeout_ms} ms (redis.wait_replicas)")]
    ReplicasBehind {
        wanted: u32,
        acknowledged: i64,
        timeout_ms: u64,
    },
}

impl From<redis::RedisError> for SinkError {
    fn from(error: redis::RedisError) -> SinkError {
        SinkError::Redis(error)
    }
}

impl SinkError {
    /// Small fixed label set for the errors metric.
    pub(crate) fn kind_label(&self) -> &'static str {
        match self {
            SinkError::Client { .. } => "client",
            SinkError::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => "connection",
            SinkError::Redis(_) if !self.is_retriable() => "refused",
            SinkError::Redis(_) => "server",
            SinkError::ShortReply { .. } => "protocol",
            SinkError::ReplicasBehind { .. } => "replicas",
        }
    }

    /// Whether waiting can make the same write succeed: an unreachable,
    /// loading, failing-over or lagging Redis can. A refusal of the write
    /// itself cannot (a version record that is not a hash, a script error,
    /// an ACL that denies a command, a reply of the wrong shape, a bad
    /// client setting): only an operator can, so it is logged as such. Both
    /// kinds are retried, because nothing past an unapplied invalidation
    /// may be committed; a permanent one at the longest backoff.
    pub(crate) fn is_retriable(&self) -> bool {
        match self {
            SinkError::Client { .. } | SinkError::ShortReply { .. } => false,
            SinkError::ReplicasBehind { .. } => true,
            SinkError::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => true,
            SinkError::Redis(e) => match e.kind() {
                redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => false,
                // A pipeline's error carries each failed command's reply code
                // (WRONGTYPE has no kind of its own in redis-rs).
                _ => !e
                    .clone()
                    .into_server_errors()
                    .is_some_and(|errors| errors.iter().any(|(_, error)| REFUSALS.contains(&error.code()))),
            },
        }
    }
}

/// Reply codes that refuse the write itself: the same write fails again
/// until an operator changes something (the key, the ACL, the script).
/// Everything else a server answers (LOADING, TRYAGAIN, CLUSTERDOWN,
/// MASTERDOWN, READONLY during a failover, OOM, BUSY, NOREPLICAS) passes.
const REFUSALS: &[&str] = &[
    "WRONGTYPE",
    "NOPERM",
    "ERR",
    "EXECABORT",
    "CROSSSLOT",
    "NOAUTH",
    "WRONGPASS",
];

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
    epoch_sha: String,
    prefix: String,
    ttl_ms: u64,
    /// `WAIT` for this many replicas after each batch (0: none).
    wait_replicas: u32,
    wait_timeout_ms: u64,
    /// Loss detection, enabled by `run` only (other commands never touch
    /// the epoch record).
    epoch: Option<EpochState>,
    /// A loss the last apply revealed, for the caller to recover from.
    pending_loss: Option<LossReason>,
    /// Standalone only: for the eviction notifications' own connection.
    client: Option<redis::Client>,
    /// Which evictions were of version records (loss detection only).
    evictions: Option<eviction::EvictionWatch>,
}

impl RedisSink {
    /// Connects and loads the script. Fails fast; the caller decides about retries.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisSink, SinkError> {
        let client_error = |cause| SinkError::Client {
            url: redact_url(&settings.url),
            cause,
        };
        let mut standalone_client = None;
        let mut connection = if settings.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(vec![settings.url.as_str()])
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(REDIS_RESPONSE_TIMEOUT)
                .build()
                .map_err(client_error)?;
            Connection::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(settings.url.as_str()).map_err(client_error)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
                .set_max_delay(settings.max_retry_backoff)
                .set_number_of_retries(2);
            standalone_client = Some(client.clone());
            Connection::Standalone(ConnectionManager::new_with_config(client, config).await?)
        };
        // In a cluster, SCRIPT LOAD goes to every primary.
        let (script_sha, epoch_sha) = load_scripts(&mut connection).await?;
        Ok(RedisSink {
            connection,
            script_sha,
            epoch_sha,
            prefix: settings.version_prefix.clone(),
            ttl_ms: settings.version_ttl.as_millis() as u64,
            wait_replicas: settings.wait_replicas,
            wait_timeout_ms: settings.wait_timeout.as_millis() as u64,
            epoch: None,
            pending_loss: None,
            client: standalone_client,
            evictions: None,
        })
    }

    /// Turns on loss detection: every apply also advances this process's
    /// watermark in the epoch record, in the same round trip.
    pub fn enable_loss_detection(&mut self) {
        self.epoch = Some(EpochState::new(&self.prefix, &epoch::process_token()));
        if let Some(client) = &self.client {
            let db = client.get_connection_info().redis_settings().db();
            self.evictions = Some(eviction::EvictionWatch::new(client.clone(), self.prefix.clone(), db));
        }
    }

    /// The loss the last apply revealed (its bumps were applied; nothing
    /// else may be before the recovery).
    pub fn take_loss(&mut self) -> Option<LossReason> {
        self.pending_loss.take()
    }

    /// Whether this process has seen the epoch record before (a missing
    /// record at first contact may be a Redis used for the first time).
    pub(crate) fn has_seen_epoch(&self) -> bool {
        self.epoch.as_ref().is_some_and(|e| e.seen_record)
    }

    /// The epoch as of the last check or recovery.
    pub(crate) fn current_epoch(&self) -> Option<&str> {
        self.epoch.as_ref().and_then(|e| e.epoch.as_deref())
    }

    /// The periodic check: the watermarks, then (standalone) INFO for a
    /// restart, a failover and evictions. Returns the loss it finds.
    pub async fn check_loss(&mut self) -> Result<Option<LossReason>, SinkError> {
        let Some(state) = &self.epoch else { return Ok(None) };
        let state = state.clone();
        let reply: EpochReply = self
            .with_reload(|shas| epoch_check_cmd(shas.1, &state))
            .await
            .map(epoch_reply)?;
        // The epoch state is set at connect and never removed.
        let Some(state) = self.epoch.as_mut() else {
            return Ok(None);
        };
        if let Some(loss) = state.observe(&reply) {
            return Ok(Some(loss));
        }
        if matches!(self.connection, Connection::Cluster(_)) {
            // INFO answers for one node only; evictions in a cluster are not
            // watched yet (docs/redis-loss.md).
            return Ok(None);
        }
        // Subscribed before INFO is read: evictions INFO counts from here on
        // are notified before the barrier below.
        if let Some(watch) = self.evictions.as_mut() {
            watch.ensure_subscribed().await;
        }
        let info: String = self.connection.command(&redis::cmd("INFO")).await?;
        let Some(view) = ServerView::parse(&info) else {
            return Ok(None);
        };
        let Some(state) = self.epoch.as_mut() else {
            return Ok(None);
        };
        let previous = state.server.replace(view.clone());
        let counted = match &previous {
            Some(before) => {
                if before.run_id != view.run_id {
                    tracing::info!(run_id = %view.run_id, "redis restarted or failed over (new run_id); watermarks intact, no loss");
                }
                view.evicted_since(before)
            }
            None => 0,
        };
        let verdict = match &mut self.evictions {
            Some(watch) => {
                let seen = watch.barrier().await;
                watch
                    .ledger
                    .judge(counted, seen.notified, seen.version_records, seen.gap)
            }
            None if counted > 0 => eviction::EvictionVerdict::Unaccounted(counted),
            None => eviction::EvictionVerdict::Harmless,
        };
        match verdict {
            eviction::EvictionVerdict::Harmless => {
                if counted > 0 {
                    tracing::debug!(counted, policy = %view.policy, "redis evicted keys; none was a version record");
                }
                Ok(None)
            }
            eviction::EvictionVerdict::VersionRecords(n) => {
                tracing::debug!(version_records = n, policy = %view.policy, "redis evicted version records");
                Ok(Some(LossReason::Evicted))
            }
            eviction::EvictionVerdict::Unaccounted(n) => {
                tracing::debug!(evictions = n, policy = %view.policy, "redis evicted keys no notification named (notify-keyspace-events without Ee?); treating them as version records");
                Ok(Some(LossReason::Evicted))
            }
        }
    }

    /// Re-establishes safety after a loss: advances the epoch, then bumps
    /// every namespace (for readers that do not fold the epoch). Returns the
    /// new epoch. Safe to repeat after a failure midway.
    pub async fn recover(&mut self, namespaces: &[String]) -> Result<String, SinkError> {
        let Some(state) = &self.epoch else {
            return Ok(String::new());
        };
        let record = state.record.clone();
        let own_field = state.own_field.clone();
        let reply: EpochReply = self
            .with_reload(|shas| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(shas.1).arg(1).arg(&record).arg("bump").arg(&own_field);
                cmd
            })
            .await
            .map(epoch_reply)?;
        let ordinal = format!("{:0>20}", reply.epoch);
        let bumps: Vec<Bump> = namespaces
            .iter()
            .map(|ns| Bump {
                target: Target::Namespace(ns.clone()),
                position: Position {
                    source: LOSS_SOURCE.to_owned(),
                    ordinal: ordinal.clone(),
                },
                commit_time_us: None,
            })
            .collect();
        if let Some(state) = self.epoch.as_mut() {
            state.recovered(&reply);
        }
        // The epoch comes first: it covers every reader that folds it even if
        // the namespace bumps fail and are retried.
        self.apply(&bumps).await?;
        if let Some(view) = self.server_view().await {
            if let Some(state) = self.epoch.as_mut() {
                state.server = Some(view);
            }
        }
        Ok(reply.epoch)
    }

    /// Removes this process's watermark field on a clean stop.
    pub(crate) async fn forget_watermark(&mut self) {
        let Some(state) = &self.epoch else { return };
        let cmd = redis::cmd("HDEL").arg(&state.record).arg(&state.own_field).clone();
        if let Err(e) = self.connection.command::<i64>(&cmd).await {
            tracing::debug!(error = %e, "watermark field not removed");
        }
    }

    async fn server_view(&mut self) -> Option<ServerView> {
        if matches!(self.connection, Connection::Cluster(_)) {
            return None;
        }
        let info: String = self.connection.command(&redis::cmd("INFO")).await.ok()?;
        ServerView::parse(&info)
    }

    /// Runs one script command, reloading the scripts once on NOSCRIPT.
    async fn with_reload<T: redis::FromRedisValue>(
        &mut self,
        build: impl Fn((&str, &str)) -> redis::Cmd,
    ) -> Result<T, SinkError> {
        match self
            .connection
            .command(&build((&self.script_sha, &self.epoch_sha)))
            .await
        {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                (self.script_sha, self.epoch_sha) = load_scripts(&mut self.connection).await?;
                Ok(self
                    .connection
                    .command(&build((&self.script_sha, &self.epoch_sha)))
                    .await?)
            }
            other => Ok(other?),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
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
                (self.script_sha, self.epoch_sha) = load_scripts(&mut self.connection).await?;
                self.try_apply(bumps).await
            }
            other => other,
        }
    }

    async fn try_apply(&mut self, bumps: &[Bump]) -> Result<Vec<BumpResult>, SinkError> {
        let keys: Vec<String> = bumps.iter().map(|b| b.target.record_key(&self.prefix)).collect();
        let standalone = matches!(self.connection, Connection::Standalone(_));
        // One pipeline per request: the whole batch on a standalone server,
        // one per hash slot on a cluster (a cluster pipeline must not cross
        // slots, and neither may one script call's keys).
        let pipelines: Vec<Vec<usize>> = if standalone {
            vec![(0..bumps.len()).collect()]
        } else {
            // redis-rs's own slot function: the one its cluster client routes by.
            let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
            for (i, key) in keys.iter().enumerate() {
                by_slot.entry(Slot::for_key(key)).or_default().push(i);
            }
            by_slot.into_values().collect()
        };
        let check = self.epoch.as_ref().map(|state| epoch_check_cmd(&self.epoch_sha, state));
        let mut checked: Option<EpochReply> = None;
        if let (Some(cmd), false) = (&check, standalone) {
            // A cluster pipeline cannot cross slots: one more round trip, first.
            checked = Some(epoch_reply(self.connection.command(cmd).await?));
        }
        let requests = pipelines.into_iter().map(|indices| {
            let mut pipe = redis::pipe();
            // Standalone: the watermark check rides in the batch's pipeline.
            let with_check = match (&check, standalone) {
                (Some(cmd), true) => {
                    pipe.add_command(cmd.clone());
                    true
                }
                _ => false,
            };
            for call in indices.chunks(BUMPS_PER_CALL) {
                // The keys first, then ARGV: the TTL, then a (guard field,
                // position) pair per key (bump.lua).
                let cmd = pipe.cmd("EVALSHA").arg(&self.script_sha).arg(call.len());
                let mut args = Vec::with_capacity(call.len());
                for &i in call {
                    if let (Some(key), Some(bump)) = (keys.get(i), bumps.get(i)) {
                        cmd.arg(key);
                        args.push((format!("p:{}", bump.position.source), &bump.position.ordinal));
                    }
                }
                cmd.arg(self.ttl_ms);
                for (guard_field, ordinal) in args {
                    cmd.arg(guard_field).arg(ordinal);
                }
            }
            // WAIT covers every write sent before it on this connection, so
            // last in the pipeline it covers the whole batch (and the
            // watermark). Cluster mode refuses wait_replicas in the config.
            let wait = (standalone && self.wait_replicas > 0).then_some((self.wait_replicas, self.wait_timeout_ms));
            if let Some((replicas, timeout_ms)) = wait {
                pipe.cmd("WAIT").arg(replicas).arg(timeout_ms);
            }
            let mut connection = self.connection.clone();
            async move {
                let mut values: Vec<redis::Value> = connection.query(&pipe).await?;
                if let Some((wanted, timeout_ms)) = wait {
                    let acknowledged: i64 = match values.pop() {
                        Some(value) => redis::from_redis_value(value).map_err(redis::RedisError::from)?,
                        None => 0,
                    };
                    if acknowledged < i64::from(wanted) {
                        return Err(SinkError::ReplicasBehind {
                            wanted,
                            acknowledged,
                            timeout_ms,
                        });
                    }
                }
                let check = if with_check && !values.is_empty() {
                    Some(epoch_reply(
                        redis::from_redis_value(values.remove(0)).map_err(redis::RedisError::from)?,
                    ))
                } else {
                    None
                };
                let mut replies: Vec<(i64, String)> = Vec::with_capacity(indices.len());
                for value in values {
                    let call: Vec<(i64, String)> = redis::from_redis_value(value).map_err(redis::RedisError::from)?;
                    replies.extend(call);
                }
                Ok::<_, SinkError>((indices, replies, check))
            }
        });
        let mut results = vec![None; bumps.len()];
        for (indices, replies, check) in futures::future::try_join_all(requests).await? {
            checked = checked.or(check);
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
        if let (Some(reply), Some(state)) = (checked, self.epoch.as_mut()) {
            if let Some(loss) = state.observe(&reply) {
                self.pending_loss = Some(loss);
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
    pub(crate) async fn publish(&mut self, channel: &str, notices: &[notice::Notice]) -> Result<(), SinkError> {
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

    /// What `check` needs to judge durability; refusals are kept as text.
    pub(crate) async fn server_facts(&mut self, namespaces: usize) -> epoch::ServerFacts {
        let mut config = std::collections::HashMap::new();
        let mut refused = None;
        for name in [
            "save",
            "appendonly",
            "appendfsync",
            "maxmemory",
            "maxmemory-policy",
            "notify-keyspace-events",
        ] {
            match self
                .connection
                .command::<Vec<String>>(redis::cmd("CONFIG").arg("GET").arg(name))
                .await
            {
                Ok(pair) => {
                    if let [key, value] = pair.as_slice() {
                        config.insert(key.clone(), value.clone());
                    }
                }
                Err(e) => {
                    refused = Some(e.to_string());
                    break;
                }
            }
        }
        let info = self
            .connection
            .command::<String>(&redis::cmd("INFO"))
            .await
            .map_err(|e| e.to_string());
        epoch::ServerFacts {
            config: match refused {
                Some(e) => Err(e),
                None => Ok(config),
            },
            info,
            cluster: matches!(self.connection, Connection::Cluster(_)),
            namespaces,
            wait_replicas: self.wait_replicas,
        }
    }

    /// A handle for the readiness probe, sharing this sink's connection.
    pub(crate) fn prober(&self) -> RedisProbe {
        RedisProbe {
            connection: self.connection.clone(),
        }
    }

    /// Liveness probe for `check` and readiness.
    pub(crate) async fn ping(&mut self) -> Result<(), SinkError> {
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

/// PINGs Redis for the readiness probe, on its own task.
pub(crate) struct RedisProbe {
    connection: Connection,
}

impl RedisProbe {
    pub(crate) async fn ping(&mut self) -> Result<(), SinkError> {
        self.connection.command::<String>(&redis::cmd("PING")).await?;
        Ok(())
    }
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

fn epoch_check_cmd(sha: &str, state: &EpochState) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(1).arg(&state.record);
    for arg in state.check_args() {
        cmd.arg(arg);
    }
    cmd
}

fn epoch_reply((status, epoch, own, shared): (String, String, i64, i64)) -> EpochReply {
    EpochReply {
        status,
        epoch,
        own,
        shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permanent_and_outages_retriable() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        // As the server sends them: a RESP error reply.
        let reply = |text: &str| match redis::parse_redis_value(format!("-{text}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(error)) => SinkError::Redis(RedisError::from(error)),
            other => panic!("not an error reply: {other:?}"),
        };
        for refusal in [
            "WRONGTYPE Operation against a key holding the wrong kind of value script: 1f0e, on @user_script:24.",
            "ERR user_script:3: Script attempted to access nonexistent global variable",
            "NOPERM this user has no permissions to run the 'hset' command",
        ] {
            let error = reply(refusal);
            assert!(!error.is_retriable(), "{refusal}");
            assert_eq!(error.kind_label(), "refused", "{refusal}");
        }
        assert!(!SinkError::ShortReply { sent: 2, got: 1 }.is_retriable());
        for outage in [
            "LOADING Redis is loading the dataset in memory",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
            "READONLY You can't write against a read only replica.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "BUSY Redis is busy running a script.",
        ] {
            assert!(reply(outage).is_retriable(), "{outage}");
        }
        let general = SinkError::Redis(RedisError::from((ErrorKind::Server(ServerErrorKind::TryAgain), "x")));
        assert!(general.is_retriable());
        let dropped = SinkError::Redis(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(dropped.is_retriable());
        assert_eq!(dropped.kind_label(), "connection");
        assert!(SinkError::ReplicasBehind {
            wanted: 1,
            acknowledged: 0,
            timeout_ms: 1
        }
        .is_retriable());
    }

    #[test]
    fn hash_slots_match_redis() {
        // Values from CLUSTER KEYSLOT on a real server.
        let slot = |n| Slot::new(n).unwrap();
        assert_eq!(Slot::for_key("foo"), slot(12182));
        assert_eq!(Slot::for_key("123456789"), slot(12739));
        assert_eq!(Slot::for_key("{user1000}.following"), Slot::for_key("user1000"));
    }
}
