//! `RedisSink`: the I/O around the pure parts. It sends what `request`
//! builds (one pipeline per batch on a standalone server; on a cluster one
//! per hash slot, sent concurrently), reloads the scripts on NOSCRIPT and
//! sends again (the guard makes a partial first attempt harmless to
//! repeat), waits for replicas when `redis.wait_replicas` asks, and hands
//! every reply to `reply`. Loss detection rides along (`epoch`).

use super::connection::{is_noscript, Connection, Link, Script};
use super::epoch::{self, LossReason, LossWatch, ServerView};
use super::reply::EpochStatus;
use super::request::Layout;
use super::request::{self, Extras};
use super::{durability, notice, reply, BumpResult, SinkError};
use crate::config::RedisSettings;
use crate::plan::Bump;

pub struct RedisSink {
    link: Link,
    prefix: String,
    ttl_ms: u64,
    /// `WAIT` for this many replicas after each batch (0: none).
    wait_replicas: u32,
    wait_timeout_ms: u64,
    /// Loss detection, enabled by `run` only (other commands never touch
    /// the epoch record).
    loss: Option<LossWatch>,
}

impl RedisSink {
    /// Connects and loads the scripts. Fails fast; the caller decides about retries.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisSink, SinkError> {
        let connection = Connection::open(settings).await?;
        Ok(RedisSink {
            link: Link::new(connection).await?,
            prefix: settings.version_prefix.clone(),
            // Saturating: a TTL beyond u64 milliseconds is refused by Redis, not truncated to a shorter one.
            ttl_ms: u64::try_from(settings.version_ttl.as_millis()).unwrap_or(u64::MAX),
            wait_replicas: settings.wait_replicas,
            wait_timeout_ms: u64::try_from(settings.wait_timeout.as_millis()).unwrap_or(u64::MAX), // below redis.response_timeout
            loss: None,
        })
    }

    /// Turns on loss detection: every apply also advances this process's
    /// watermark in the epoch record, in the same round trip.
    pub fn enable_loss_detection(&mut self) {
        self.loss = Some(LossWatch::new(
            &self.prefix,
            self.link.connection.current_client().as_ref(),
        ));
    }

    /// The loss the last apply revealed (its bumps were applied; nothing
    /// else may be before the recovery).
    pub fn take_loss(&mut self) -> Option<LossReason> {
        self.loss.as_mut().and_then(LossWatch::take_loss)
    }

    /// Whether this process has seen the epoch record before (a missing
    /// record at first contact may be a Redis used for the first time).
    pub(crate) fn has_seen_epoch(&self) -> bool {
        self.loss.as_ref().is_some_and(|w| w.state.seen_record)
    }

    /// The epoch as of the last check or recovery.
    pub(crate) fn current_epoch(&self) -> Option<&str> {
        self.loss.as_ref().and_then(|w| w.state.epoch.as_deref())
    }

    /// The periodic check (`epoch::LossWatch::check`). Returns the loss it finds.
    pub async fn check_loss(&mut self) -> Result<Option<LossReason>, SinkError> {
        match self.loss.as_mut() {
            Some(watch) => watch.check(&mut self.link).await,
            None => Ok(None),
        }
    }

    /// Re-establishes safety after a loss: advances the epoch (or adopts the
    /// epoch another daemon process advanced for the same loss), then bumps
    /// every namespace (for readers that do not fold the epoch). Returns the
    /// new epoch. Safe to repeat after a failure midway: the repeat adopts
    /// the epoch the first attempt advanced, and the namespace bumps pass
    /// the guard once per epoch.
    pub async fn recover(&mut self, namespaces: &[String]) -> Result<String, SinkError> {
        let Some(watch) = self.loss.as_mut() else {
            return Ok(String::new());
        };
        let advanced = watch.advance(&mut self.link).await?;
        if advanced.status == EpochStatus::Adopted {
            tracing::info!(epoch = %advanced.epoch, "the epoch was already advanced past the one this process saw (another replica answered the same loss); adopting it and bumping the namespaces again (no-ops where already bumped)");
        }
        // The epoch comes first: it covers every reader that folds it even if
        // the namespace bumps fail and are retried.
        self.apply(&epoch::namespace_bumps(namespaces, &advanced.epoch)).await?;
        let view = self.server_view().await;
        if let Some(watch) = self.loss.as_mut() {
            watch.recovery_done(view);
        }
        Ok(advanced.epoch)
    }

    /// Removes this process's watermark field on a clean stop.
    pub(crate) async fn forget_watermark(&mut self) {
        if let Some(watch) = &self.loss {
            watch.forget_watermark(&mut self.link.connection).await;
        }
    }

    async fn server_view(&mut self) -> Option<ServerView> {
        let info = self.link.connection.info().await?.ok()?;
        ServerView::parse(&info)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Applies every bump. Either all replies come back (each applied or a
    /// guard no-op) or the call fails and nothing may be acknowledged.
    pub async fn apply(&mut self, bumps: &[Bump]) -> Result<Vec<BumpResult>, SinkError> {
        if bumps.is_empty() {
            return Ok(Vec::new());
        }
        match self.try_apply(bumps).await {
            Err(SinkError::Redis(e)) if is_noscript(&e) => {
                // The guard makes a partial first attempt harmless to repeat.
                self.link.reload().await?;
                self.try_apply(bumps).await
            }
            other => other,
        }
    }

    async fn try_apply(&mut self, bumps: &[Bump]) -> Result<Vec<BumpResult>, SinkError> {
        let layout = self.link.connection.layout();
        let requests = request::bump_requests(bumps, &self.prefix, self.ttl_ms, layout);
        let check = self.loss.as_ref().map(|watch| watch.state.check_call());
        let mut checked = None;
        if let (Some(call), Layout::Cluster) = (&check, layout) {
            // A cluster pipeline cannot cross slots: one more round trip, first.
            let value = self
                .link
                .connection
                .command(&call.evalsha(self.link.sha(Script::Epoch)))
                .await?;
            checked = Some(reply::epoch(value)?);
        }
        // Standalone: the watermark check rides in the batch's pipeline, and
        // WAIT ends it. Cluster mode refuses wait_replicas in the config.
        let standalone = layout == Layout::Standalone;
        let extras = Extras {
            check: standalone && check.is_some(),
            wait: standalone && self.wait_replicas > 0,
        };
        let wait = extras.wait.then_some((self.wait_replicas, self.wait_timeout_ms));
        let in_pipeline = check
            .as_ref()
            .filter(|_| extras.check)
            .map(|call| (self.link.sha(Script::Epoch), call));
        let sent = requests.iter().map(|request| {
            let pipe = request.pipeline(self.link.sha(Script::Bump), in_pipeline, wait);
            let mut connection = self.link.connection.clone();
            async move {
                let values: Vec<redis::Value> = connection.query(&pipe).await?;
                Ok::<_, SinkError>((request, reply::pipeline(values, request, extras)?))
            }
        });
        let mut results = vec![None; bumps.len()];
        for (request, answer) in futures::future::try_join_all(sent).await? {
            if let Some(acknowledged) = answer.replicas.filter(|&n| n < i64::from(self.wait_replicas)) {
                return Err(SinkError::ReplicasBehind {
                    wanted: self.wait_replicas,
                    acknowledged,
                    timeout_ms: self.wait_timeout_ms,
                });
            }
            checked = checked.or(answer.check);
            for (&i, result) in request.indices.iter().zip(answer.results) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(result);
                }
            }
        }
        if let (Some(reply), Some(watch)) = (checked, self.loss.as_mut()) {
            watch.observe_batch(&reply);
        }
        // The requests partition 0..bumps.len() and `reply::pipeline` checked
        // each call's count, so every index is answered.
        let answered: Vec<BumpResult> = results.into_iter().flatten().collect();
        if answered.len() != bumps.len() {
            return Err(SinkError::Reply(reply::ReplyError::Short {
                what: "bumps",
                sent: bumps.len(),
                got: answered.len(),
            }));
        }
        Ok(answered)
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
        self.link.connection.query::<()>(&pipe).await?;
        Ok(())
    }

    /// What `check` needs to judge durability; refusals are kept as text.
    pub(crate) async fn server_facts(&mut self, namespaces: usize) -> durability::ServerFacts {
        let connection = &mut self.link.connection;
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
            match connection
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
        let info = connection
            .command::<String>(&redis::cmd("INFO"))
            .await
            .map_err(|e| e.to_string());
        durability::ServerFacts {
            config: match refused {
                Some(e) => Err(e),
                None => Ok(config),
            },
            info,
            cluster: connection.layout() == Layout::Cluster,
            namespaces,
            wait_replicas: self.wait_replicas,
        }
    }

    /// A handle for the readiness probe, sharing this sink's connection.
    pub(crate) fn prober(&self) -> RedisProbe {
        RedisProbe {
            connection: self.link.connection.clone(),
        }
    }

    /// Liveness probe for `check` and readiness.
    pub(crate) async fn ping(&mut self) -> Result<(), SinkError> {
        self.link.connection.command::<String>(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Reads a version record's `v` (0 when missing), as a cache reader does.
    pub async fn version(&mut self, record_key: &str) -> Result<u64, SinkError> {
        let value = self
            .link
            .connection
            .command(redis::cmd("HGET").arg(record_key).arg("v"))
            .await?;
        Ok(reply::version(value)?)
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
