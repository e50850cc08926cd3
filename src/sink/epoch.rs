//! Redis data-loss detection and recovery through the epoch record
//! (`{prefix}epoch`, `epoch.lua` beside this file; docs/redis-loss.md).
//! Every applied batch and every periodic check advance two counters in the
//! record: one only this process writes, one all processes share. A counter
//! that went backwards, or a record that is gone, means Redis lost writes it
//! had acknowledged; so do evictions under an evicting `maxmemory-policy`
//! (INFO `evicted_keys`). The recovery advances the epoch (which readers
//! fold into every data key) and every namespace, before anything else is
//! applied.
//!
//! Every replica of the daemon detects the same loss. The epoch advance is
//! a compare-and-set on the epoch the replica saw before it: the first one
//! advances it, the others find it already past what they saw and adopt it,
//! so one loss empties the caches once. Each still bumps every namespace
//! (the guard makes the repeats no-ops).

use super::connection::{Connection, Link, Script};
use super::eviction::{EvictionVerdict, EvictionWatch};
use super::reply::{self, ReplyError};
use super::reply::{EpochReply, EpochStatus};
use super::request::Layout;
use super::request::ScriptCall;
use super::SinkError;
use crate::event::Position;
use crate::graph::Target;
use crate::plan::Bump;

/// The guard source of namespace bumps made by a loss recovery; its
/// positions are the new epoch, so each recovery passes the guard once,
/// whichever replica bumps first.
pub(crate) const LOSS_SOURCE: &str = "loss";

/// Why the daemon concluded that Redis lost acknowledged writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// No epoch record: first use of this Redis, FLUSHALL, a restart without
    /// persistence, or the record was evicted.
    Missing,
    /// A watermark went backwards: a restart from an older snapshot, a
    /// failover to a replica that missed writes, a restore.
    RolledBack,
    /// Redis evicted keys under an evicting maxmemory-policy: version records
    /// may be among them.
    Evicted,
}

impl LossReason {
    /// Every reason, for metrics registered at zero.
    pub(crate) const ALL: [LossReason; 3] = [LossReason::Missing, LossReason::RolledBack, LossReason::Evicted];

    pub fn label(self) -> &'static str {
        match self {
            LossReason::Missing => "missing",
            LossReason::RolledBack => "rolled_back",
            LossReason::Evicted => "evicted",
        }
    }
}

/// What one process remembers of the epoch record between calls.
#[derive(Debug, Clone)]
pub(crate) struct EpochState {
    /// `{prefix}epoch`.
    pub(crate) record: String,
    /// `w:<process>`: a field no other process writes.
    pub(crate) own_field: String,
    /// The value this process last saw in its own field.
    pub(crate) own: Option<i64>,
    /// The highest shared watermark seen.
    pub(crate) shared: Option<i64>,
    /// The epoch as of the last check or recovery.
    pub(crate) epoch: Option<String>,
    /// Whether this process has seen the record at least once (a missing
    /// record at first contact may just be a new Redis).
    pub(crate) seen_record: bool,
    /// Set when a recovery advanced or adopted the epoch, cleared when it
    /// bumped every namespace: the epoch it compared against. A retry
    /// compares against the same one, so it adopts the epoch the first
    /// attempt advanced instead of advancing it again.
    pub(crate) unfinished_recovery: Option<Option<String>>,
    /// INFO's run_id and evicted_keys at the last check.
    pub(crate) server: Option<ServerView>,
}

impl EpochState {
    pub(crate) fn new(prefix: &str, process: &str) -> EpochState {
        EpochState {
            record: epoch_record(prefix),
            own_field: format!("w:{process}"),
            own: None,
            shared: None,
            epoch: None,
            seen_record: false,
            unfinished_recovery: None,
            server: None,
        }
    }

    /// The watermark check: KEYS[1] the record, then what this process saw.
    pub(crate) fn check_call(&self) -> ScriptCall {
        ScriptCall {
            keys: vec![self.record.clone()],
            args: vec![
                "check".into(),
                self.own_field.clone(),
                self.own.map(|n| n.to_string()).unwrap_or_default(),
                self.shared.map(|n| n.to_string()).unwrap_or_default(),
            ],
        }
    }

    /// The epoch advance, a compare-and-set on the epoch this process saw
    /// before the loss (`''` when it never saw one). Remembers that epoch
    /// until the recovery is finished.
    pub(crate) fn advance_call(&mut self) -> ScriptCall {
        let seen = self
            .unfinished_recovery
            .get_or_insert_with(|| self.epoch.clone())
            .clone()
            .unwrap_or_default();
        ScriptCall {
            keys: vec![self.record.clone()],
            args: vec!["advance".into(), self.own_field.clone(), seen],
        }
    }

    /// Takes a check reply in; returns the loss it reveals, if any.
    pub(crate) fn observe(&mut self, reply: &EpochReply) -> Option<LossReason> {
        match reply.status {
            EpochStatus::Ok => {
                self.seen_record = true;
                self.own = Some(reply.own);
                self.shared = Some(self.shared.map_or(reply.shared, |s| s.max(reply.shared)));
                self.epoch = Some(reply.epoch.clone());
                None
            }
            EpochStatus::Missing => Some(LossReason::Missing),
            // An advance's status in a check reply cannot happen; taking it
            // for a loss costs a recovery, taking it for none could cost one.
            EpochStatus::RolledBack | EpochStatus::Advanced | EpochStatus::Adopted => Some(LossReason::RolledBack),
        }
    }

    /// After the epoch was advanced or adopted: the new baseline.
    pub(crate) fn recovered(&mut self, reply: &EpochReply) {
        self.seen_record = true;
        self.own = Some(reply.own);
        self.shared = Some(reply.shared);
        self.epoch = Some(reply.epoch.clone());
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerView {
    pub(crate) run_id: String,
    pub(crate) evicted_keys: u64,
    /// `maxmemory_policy`; `noeviction` never evicts.
    pub(crate) policy: String,
}

impl ServerView {
    /// Parses the fields of INFO (server, stats, memory sections) it needs.
    pub(crate) fn parse(info: &str) -> Option<ServerView> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
        };
        Some(ServerView {
            run_id: field("run_id")?,
            evicted_keys: field("evicted_keys")?.parse().ok()?,
            policy: field("maxmemory_policy").unwrap_or_else(|| "unknown".into()),
        })
    }

    /// Keys evicted since `before` that may be version records. A new run_id
    /// (restart, failover) restarts the counter from zero.
    pub(crate) fn evicted_since(&self, before: &ServerView) -> u64 {
        if self.policy == "noeviction" {
            return 0;
        }
        if self.run_id == before.run_id {
            self.evicted_keys.saturating_sub(before.evicted_keys)
        } else {
            self.evicted_keys
        }
    }
}

/// Loss detection for one sink: the epoch state, the eviction watch
/// (standalone only) and a loss a batch revealed.
pub(crate) struct LossWatch {
    pub(crate) state: EpochState,
    /// Which evictions were of version records.
    evictions: Option<EvictionWatch>,
    /// A loss the last apply revealed, for the caller to recover from.
    pending: Option<LossReason>,
}

impl LossWatch {
    /// `client`: a standalone server's client (none on a cluster): the
    /// eviction notifications get a connection of their own, to whichever
    /// server the sink talks to at each check.
    pub(crate) fn new(prefix: &str, client: Option<&redis::Client>) -> LossWatch {
        let evictions = client.map(|client| {
            let db = client.get_connection_info().redis_settings().db();
            EvictionWatch::new(prefix.to_owned(), db)
        });
        LossWatch {
            state: EpochState::new(prefix, &process_token()),
            evictions,
            pending: None,
        }
    }

    /// The check reply that rode in a batch's pipeline.
    pub(crate) fn observe_batch(&mut self, reply: &EpochReply) {
        if let Some(loss) = self.state.observe(reply) {
            self.pending = Some(loss);
        }
    }

    pub(crate) fn take_loss(&mut self) -> Option<LossReason> {
        self.pending.take()
    }

    /// The periodic check: the watermarks, then (standalone) INFO for a
    /// restart, a failover and evictions. Returns the loss it finds.
    pub(crate) async fn check(&mut self, link: &mut Link) -> Result<Option<LossReason>, SinkError> {
        let reply = reply::epoch(link.run(Script::Epoch, &self.state.check_call()).await?)?;
        if let Some(loss) = self.state.observe(&reply) {
            return Ok(Some(loss));
        }
        if link.connection.layout() == Layout::Cluster {
            // INFO answers for one node only; evictions in a cluster are not
            // watched yet (docs/redis-loss.md).
            return Ok(None);
        }
        // Subscribed before INFO is read: evictions INFO counts from here on
        // are notified before the barrier below.
        if let (Some(watch), Some(client)) = (self.evictions.as_mut(), link.connection.current_client()) {
            watch.ensure_subscribed(&client).await;
        }
        let info: String = link.connection.command(&redis::cmd("INFO")).await?;
        let Some(view) = ServerView::parse(&info) else {
            return Ok(None);
        };
        let previous = self.state.server.replace(view.clone());
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
            None if counted > 0 => EvictionVerdict::Unaccounted(counted),
            None => EvictionVerdict::Harmless,
        };
        match verdict {
            EvictionVerdict::Harmless => {
                if counted > 0 {
                    tracing::debug!(counted, policy = %view.policy, "redis evicted keys; none was a version record");
                }
                Ok(None)
            }
            EvictionVerdict::VersionRecords(n) => {
                tracing::debug!(version_records = n, policy = %view.policy, "redis evicted version records");
                Ok(Some(LossReason::Evicted))
            }
            EvictionVerdict::Unaccounted(n) => {
                tracing::debug!(evictions = n, policy = %view.policy, "redis evicted keys no notification named (notify-keyspace-events without Ee?); treating them as version records");
                Ok(Some(LossReason::Evicted))
            }
        }
    }

    /// Advances the epoch, or adopts the one another process advanced for
    /// the same loss. The caller bumps every namespace next, then calls
    /// [`LossWatch::recovery_done`].
    pub(crate) async fn advance(&mut self, link: &mut Link) -> Result<EpochReply, SinkError> {
        let call = self.state.advance_call();
        let reply = reply::epoch(link.run(Script::Epoch, &call).await?)?;
        if !matches!(reply.status, EpochStatus::Advanced | EpochStatus::Adopted) {
            return Err(SinkError::Reply(ReplyError::Malformed {
                what: "epoch advance",
                problem: format!("status {:?}, expected advanced or adopted", reply.status),
            }));
        }
        self.state.recovered(&reply);
        Ok(reply)
    }

    /// Every namespace was bumped under the new epoch: the recovery is over.
    /// `view`: the server as of now, so evictions before it are not counted
    /// again.
    pub(crate) fn recovery_done(&mut self, view: Option<ServerView>) {
        self.state.unfinished_recovery = None;
        if view.is_some() {
            self.state.server = view;
        }
    }

    /// Removes this process's watermark field on a clean stop.
    pub(crate) async fn forget_watermark(&self, connection: &mut Connection) {
        let cmd = redis::cmd("HDEL")
            .arg(&self.state.record)
            .arg(&self.state.own_field)
            .clone();
        if let Err(e) = connection.command::<i64>(&cmd).await {
            tracing::debug!(error = %e, "watermark field not removed");
        }
    }
}

/// The namespace bumps of a recovery to `epoch`: source `loss`, position the
/// epoch, so every replica recovering from the same loss makes the same
/// bumps and the guard applies each once.
pub(crate) fn namespace_bumps(namespaces: &[String], epoch: &str) -> Vec<Bump> {
    let ordinal = format!("{epoch:0>20}");
    namespaces
        .iter()
        .map(|ns| Bump {
            target: Target::Namespace(ns.clone()),
            position: Position {
                source: LOSS_SOURCE.to_owned(),
                ordinal: ordinal.clone(),
            },
            commit_time_us: None,
        })
        .collect()
}

/// The key of the epoch record readers fold into their data keys.
pub(crate) fn epoch_record(prefix: &str) -> String {
    format!("{prefix}epoch")
}

/// A name for this process's watermark field: unique per process (a restart
/// is a new process that learns nothing from its predecessor's memory).
pub(crate) fn process_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: EpochStatus, own: i64, shared: i64) -> EpochReply {
        EpochReply {
            status,
            epoch: "1700000000000000".into(),
            own,
            shared,
        }
    }

    #[test]
    fn check_arguments_carry_what_was_seen() {
        let mut state = EpochState::new("ver:", "abc");
        assert_eq!(state.record, "ver:epoch");
        assert_eq!(state.check_call().keys, ["ver:epoch"]);
        assert_eq!(state.check_call().args, ["check", "w:abc", "", ""]);
        assert_eq!(state.observe(&reply(EpochStatus::Ok, 1, 7)), None);
        assert_eq!(state.check_call().args, ["check", "w:abc", "1", "7"]);
        // Another process advanced the shared counter further: the highest stays.
        assert_eq!(state.observe(&reply(EpochStatus::Ok, 2, 5)), None);
        assert_eq!(state.shared, Some(7));
        assert_eq!(
            state.observe(&reply(EpochStatus::RolledBack, 1, 3)),
            Some(LossReason::RolledBack)
        );
        assert_eq!(
            state.observe(&reply(EpochStatus::Missing, 0, 0)),
            Some(LossReason::Missing)
        );
    }

    #[test]
    fn a_retried_advance_compares_against_the_epoch_seen_before_the_loss() {
        let mut state = EpochState::new("ver:", "abc");
        // At first contact nothing was seen: the advance compares with ''.
        assert_eq!(state.advance_call().args, ["advance", "w:abc", ""]);
        state.unfinished_recovery = None;
        assert_eq!(state.observe(&reply(EpochStatus::Ok, 1, 7)), None);
        let first = state.advance_call();
        assert_eq!(first.keys, ["ver:epoch"]);
        assert_eq!(first.args, ["advance", "w:abc", "1700000000000000"]);
        // The advance succeeded but the namespace bumps failed: the retry
        // compares with the same epoch, not with the one it advanced to.
        state.recovered(&EpochReply {
            status: EpochStatus::Advanced,
            epoch: "1700000000000999".into(),
            own: 0,
            shared: 8,
        });
        assert_eq!(state.advance_call(), first);
        assert_eq!(state.epoch.as_deref(), Some("1700000000000999"));
    }

    #[test]
    fn recovery_bumps_are_the_same_for_every_replica() {
        let bumps = namespace_bumps(&["product".into(), "category".into()], "1754312345678901");
        assert_eq!(bumps.len(), 2);
        assert_eq!(bumps[0].target, Target::Namespace("product".into()));
        assert_eq!(bumps[1].position.source, "loss");
        assert_eq!(bumps[1].position.ordinal, "00001754312345678901");
    }

    #[test]
    fn evictions_count_only_under_an_evicting_policy_and_per_run() {
        let info =
            "# Server\r\nrun_id:aaa\r\n# Stats\r\nevicted_keys:5\r\n# Memory\r\nmaxmemory_policy:allkeys-lru\r\n";
        let before = ServerView::parse(info).unwrap();
        assert_eq!(before.policy, "allkeys-lru");
        let later = ServerView {
            evicted_keys: 9,
            ..before.clone()
        };
        assert_eq!(later.evicted_since(&before), 4);
        let restarted = ServerView {
            run_id: "bbb".into(),
            evicted_keys: 2,
            ..before.clone()
        };
        assert_eq!(restarted.evicted_since(&before), 2);
        let safe = ServerView {
            policy: "noeviction".into(),
            ..later
        };
        assert_eq!(safe.evicted_since(&before), 0);
        assert_eq!(ServerView::parse("# Server\r\nrun_id:aaa\r\n"), None);
    }
}
