//! Which keys Redis evicted. INFO's `evicted_keys` counts every eviction;
//! on a Redis that also holds the cached data under an `allkeys-*` policy
//! most of them are data keys, and treating each as a loss of version
//! records would bump the epoch (and so empty every cache) all the time.
//! With keyspace notifications for evictions on (`notify-keyspace-events`
//! containing `E` and `e`), Redis names each evicted key on
//! `__keyevent@<db>__:evicted`; the loss check subscribes to them on a
//! connection of its own and compares them with INFO's count.
//!
//! The comparison is exact, not timed: after reading INFO the check sends
//! PING on the subscription. Redis answers it after every notification it
//! published before, and the client hands messages over in the order they
//! arrive, so once the PONG is in, every eviction INFO counted has been
//! notified or never will be. An eviction INFO counted that no notification
//! names (notifications off, the subscription dropped, a message lost) is
//! taken as a loss of version records, exactly as without the watch.

use std::time::Duration;

use futures::FutureExt as _;
use futures::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};

/// A PING on the subscription slower than this counts as a dropped one.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// Notifications that arrived beyond what INFO had counted (evictions
/// between the INFO read and the PING), credited to the next check.
#[derive(Debug, Default, Clone)]
pub(crate) struct EvictionLedger {
    credit: u64,
}

/// The verdict on the evictions INFO counted since the previous check.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EvictionVerdict {
    /// Every eviction is accounted for and none was a version record.
    Harmless,
    /// A version record (or the epoch record) was evicted.
    VersionRecords(u64),
    /// Evictions no notification accounted for: assume the worst.
    Unaccounted(u64),
}

impl EvictionLedger {
    /// `counted`: evictions INFO reports since the previous check (same
    /// server); `notified`, `version_records`: notifications received up to
    /// the barrier; `gap`: the subscription was not continuous since the
    /// previous check (first subscribe, a reconnect).
    pub(crate) fn judge(&mut self, counted: u64, notified: u64, version_records: u64, gap: bool) -> EvictionVerdict {
        if version_records > 0 {
            self.credit = 0;
            return EvictionVerdict::VersionRecords(version_records);
        }
        if gap {
            // Which notifications preceded INFO is unknown: the ones INFO
            // cannot have counted are at most the surplus.
            self.credit = notified.saturating_sub(counted);
            return if counted > notified {
                EvictionVerdict::Unaccounted(counted - notified)
            } else {
                EvictionVerdict::Harmless
            };
        }
        let covered = notified + self.credit;
        if counted > covered {
            self.credit = 0;
            return EvictionVerdict::Unaccounted(counted - covered);
        }
        self.credit = covered - counted;
        EvictionVerdict::Harmless
    }
}

/// The subscription to eviction notifications, driven by the loss check.
pub(crate) struct EvictionWatch {
    /// The server subscribed to (behind Sentinel the primary moves).
    server: Option<String>,
    prefix: String,
    /// The database the version records live in.
    db: i64,
    subscription: Option<(PubSubSink, PubSubStream)>,
    /// The subscription was (re)made since the last barrier.
    gap: bool,
    pub(crate) ledger: EvictionLedger,
}

/// What the barrier found since the previous one.
pub(crate) struct Notified {
    pub(crate) notified: u64,
    pub(crate) version_records: u64,
    pub(crate) gap: bool,
}

impl EvictionWatch {
    pub(crate) fn new(prefix: String, db: i64) -> EvictionWatch {
        EvictionWatch {
            server: None,
            prefix,
            db,
            subscription: None,
            gap: true,
            ledger: EvictionLedger::default(),
        }
    }

    /// Subscribes on `client`'s server if not subscribed there; call before
    /// reading INFO, so that evictions INFO counts after this are notified.
    pub(crate) async fn ensure_subscribed(&mut self, client: &redis::Client) {
        let server = client.get_connection_info().addr().to_string();
        if self.subscription.is_some() && self.server.as_deref() == Some(server.as_str()) {
            return;
        }
        self.subscription = None;
        self.server = Some(server);
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe("__keyevent@*__:evicted").await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        };
        match tokio::time::timeout(BARRIER_TIMEOUT, subscribed).await {
            Ok(Ok(parts)) => self.subscription = Some(parts),
            Ok(Err(e)) => tracing::debug!(error = %e, "eviction notifications: cannot subscribe"),
            Err(_) => tracing::debug!("eviction notifications: subscribing timed out"),
        }
        self.gap = true;
    }

    /// After INFO was read: PING on the subscription, then counts every
    /// notification received before the PONG.
    pub(crate) async fn barrier(&mut self) -> Notified {
        let mut out = Notified {
            notified: 0,
            version_records: 0,
            gap: std::mem::replace(&mut self.gap, false),
        };
        let Some((sink, stream)) = self.subscription.as_mut() else {
            out.gap = true;
            self.gap = true;
            return out;
        };
        let pong = tokio::time::timeout(BARRIER_TIMEOUT, sink.ping::<redis::Value>()).await;
        let ours = format!("__keyevent@{}__:evicted", self.db);
        let mut closed = false;
        // Everything before the PONG is in the channel now; take it without
        // waiting. Unconstrained: tokio's cooperative budget would otherwise
        // report the channel empty after 128 messages in one go.
        while let Some(next) = tokio::task::unconstrained(stream.next()).now_or_never() {
            let Some(message) = next else {
                closed = true;
                break;
            };
            out.notified += 1;
            if message.get_channel_name() == ours && message.get_payload_bytes().starts_with(self.prefix.as_bytes()) {
                out.version_records += 1;
            }
        }
        if closed || !matches!(pong, Ok(Ok(_))) {
            tracing::debug!("eviction notifications: subscription lost; resubscribing at the next check");
            self.subscription = None;
            self.gap = true;
            out.gap = true;
        }
        out
    }
}

/// Whether a `notify-keyspace-events` value makes Redis publish evictions
/// on `__keyevent@<db>__:evicted` (`E`, and `e` or the `A` alias).
pub(crate) fn notifies_evictions(flags: &str) -> bool {
    flags.contains('E') && (flags.contains('e') || flags.contains('A'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notified_evictions_of_other_keys_are_harmless() {
        let mut ledger = EvictionLedger::default();
        assert_eq!(ledger.judge(5, 5, 0, false), EvictionVerdict::Harmless);
        // Two evictions happened between INFO and the PING: notified now,
        // counted next time.
        assert_eq!(ledger.judge(4, 6, 0, false), EvictionVerdict::Harmless);
        assert_eq!(ledger.judge(2, 0, 0, false), EvictionVerdict::Harmless);
        assert_eq!(ledger.judge(1, 0, 0, false), EvictionVerdict::Unaccounted(1));
    }

    #[test]
    fn counted_but_never_notified_is_a_loss() {
        let mut ledger = EvictionLedger::default();
        // Notifications off: INFO counts, nothing is notified.
        assert_eq!(ledger.judge(3, 0, 0, false), EvictionVerdict::Unaccounted(3));
        assert_eq!(ledger.judge(0, 0, 0, false), EvictionVerdict::Harmless);
    }

    #[test]
    fn a_version_record_eviction_is_a_loss_at_once() {
        let mut ledger = EvictionLedger::default();
        assert_eq!(ledger.judge(2, 2, 1, false), EvictionVerdict::VersionRecords(1));
    }

    #[test]
    fn after_a_gap_only_what_was_notified_is_accounted_for() {
        let mut ledger = EvictionLedger::default();
        assert_eq!(ledger.judge(3, 1, 0, true), EvictionVerdict::Unaccounted(2));
        assert_eq!(ledger.judge(0, 0, 0, true), EvictionVerdict::Harmless);
        assert_eq!(ledger.judge(2, 5, 0, true), EvictionVerdict::Harmless);
        // The surplus is credited.
        assert_eq!(ledger.judge(3, 0, 0, false), EvictionVerdict::Harmless);
    }

    #[test]
    fn notification_flags() {
        assert!(notifies_evictions("Ee"));
        assert!(notifies_evictions("KEA"));
        assert!(!notifies_evictions("Kx"));
        assert!(!notifies_evictions("e"));
        assert!(!notifies_evictions(""));
    }
}
