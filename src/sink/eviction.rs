//! Which keys Redis evicted. INFO's `evicted_keys` counts every eviction;
//! on a Redis that also holds the cached data under an `allkeys-*` policy
//! most of them are data keys, and treating each as a loss of version
//! records would bump the epoch (and so empty every cache) all the time.
//! With keyspace notifications for evictions on (`notify-keyspace-events`
//! containing `E` and `e`), Redis names each evicted key on
//! `__keyevent@<db>__:evicted`; this watch counts them and remembers
//! whether any was a version record.
//!
//! The rule stays conservative: an eviction INFO counted that no
//! notification accounts for by the next check (notifications off, the
//! subscription dropped, a message lost) is taken as a loss of version
//! records, exactly as without the watch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

/// What the subscriber task has seen since the last check.
#[derive(Debug, Default)]
struct Seen {
    /// Evictions notified, in any database.
    notified: u64,
    /// Of those, keys under the version prefix in the daemon's database.
    version_records: u64,
    /// The subscription was not continuous (not yet up, dropped, resubscribed):
    /// evictions in the gap were not notified.
    gap: bool,
    /// Subscribed right now.
    subscribed: bool,
}

impl Seen {
    /// Hands over the counts and starts the next interval; a subscription
    /// that is down now makes the next interval a gap from its start.
    fn take(&mut self) -> Seen {
        let next = Seen {
            gap: !self.subscribed,
            subscribed: self.subscribed,
            ..Seen::default()
        };
        std::mem::replace(self, next)
    }
}

/// Shared between the subscriber task and the loss check.
#[derive(Clone)]
pub struct EvictionWatch {
    seen: Arc<Mutex<Seen>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for EvictionWatch {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

/// Evictions INFO counted, checked against what was notified.
#[derive(Debug, Default, Clone)]
pub struct EvictionLedger {
    /// Evictions INFO counted up to the previous check and not yet notified.
    unexplained: u64,
}

/// The verdict on the evictions since the previous check.
#[derive(Debug, PartialEq, Eq)]
pub enum EvictionVerdict {
    /// Every eviction so far is accounted for and none was a version record.
    Harmless,
    /// A version record (or the epoch record) was evicted.
    VersionRecords(u64),
    /// Evictions no notification accounted for in time: assume the worst.
    Unaccounted(u64),
}

impl EvictionLedger {
    /// `counted`: evictions INFO reports since the previous check (same
    /// server); `notified`, `version_records`, `gap`: what the watch saw in
    /// the same interval. Notifications may trail INFO by a moment (another
    /// connection), so an eviction counted now needs its notification by
    /// the next check, not by this one.
    fn judge(&mut self, counted: u64, notified: u64, version_records: u64, gap: bool) -> EvictionVerdict {
        if version_records > 0 {
            self.unexplained = 0;
            return EvictionVerdict::VersionRecords(version_records);
        }
        if gap && (counted > 0 || self.unexplained > 0) {
            let lost = counted + self.unexplained;
            self.unexplained = 0;
            return EvictionVerdict::Unaccounted(lost);
        }
        // Notifications first pay off what the previous check counted.
        let late = self.unexplained.saturating_sub(notified);
        if late > 0 {
            self.unexplained = 0;
            return EvictionVerdict::Unaccounted(late);
        }
        let spare = notified - self.unexplained;
        self.unexplained = counted.saturating_sub(spare);
        EvictionVerdict::Harmless
    }
}

impl EvictionWatch {
    /// Subscribes to eviction notifications of every database (INFO's
    /// counter covers them all) and keeps subscribing after a drop.
    pub fn start(client: redis::Client, version_prefix: String, db: i64) -> EvictionWatch {
        let seen = Arc::new(Mutex::new(Seen {
            gap: true,
            ..Seen::default()
        }));
        let task = tokio::spawn(subscribe_forever(client, version_prefix, db, Arc::clone(&seen)));
        EvictionWatch {
            seen,
            task: Arc::new(task),
        }
    }

    /// Takes what was seen since the last call and judges `counted`.
    pub fn judge(&self, ledger: &mut EvictionLedger, counted: u64) -> EvictionVerdict {
        let seen = match self.seen.lock() {
            Ok(mut seen) => seen.take(),
            // The subscriber panicked while holding the lock: nothing it
            // counted can be trusted.
            Err(_) => Seen {
                gap: true,
                ..Seen::default()
            },
        };
        ledger.judge(counted, seen.notified, seen.version_records, seen.gap)
    }
}

async fn subscribe_forever(client: redis::Client, prefix: String, db: i64, seen: Arc<Mutex<Seen>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.psubscribe("__keyevent@*__:evicted").await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if let Ok(mut seen) = seen.lock() {
                        seen.subscribed = true;
                    }
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let ours = message.get_channel_name() == format!("__keyevent@{db}__:evicted");
                        let key = message.get_payload_bytes();
                        if let Ok(mut seen) = seen.lock() {
                            seen.notified += 1;
                            if ours && key.starts_with(prefix.as_bytes()) {
                                seen.version_records += 1;
                            }
                        }
                    }
                    tracing::debug!("eviction notifications: subscription ended; resubscribing");
                }
                Err(e) => tracing::debug!(error = %e, "eviction notifications: PSUBSCRIBE failed"),
            },
            Err(e) => tracing::debug!(error = %e, "eviction notifications: cannot connect"),
        }
        if let Ok(mut seen) = seen.lock() {
            seen.gap = true;
            seen.subscribed = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Whether a `notify-keyspace-events` value makes Redis publish evictions
/// on `__keyevent@<db>__:evicted` (`E`, and `e` or the `A` alias).
pub fn notifies_evictions(flags: &str) -> bool {
    flags.contains('E') && (flags.contains('e') || flags.contains('A'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notified_evictions_of_other_keys_are_harmless_even_when_late() {
        let mut ledger = EvictionLedger::default();
        // INFO counted 5; 3 notifications have arrived so far.
        assert_eq!(ledger.judge(5, 3, 0, false), EvictionVerdict::Harmless);
        // The 2 stragglers arrive with 4 new ones, INFO counted 4 more.
        assert_eq!(ledger.judge(4, 6, 0, false), EvictionVerdict::Harmless);
        assert_eq!(ledger.judge(0, 0, 0, false), EvictionVerdict::Harmless);
    }

    #[test]
    fn counted_but_never_notified_is_a_loss_one_check_later() {
        let mut ledger = EvictionLedger::default();
        // Notifications off: INFO counts, nothing is notified.
        assert_eq!(ledger.judge(3, 0, 0, false), EvictionVerdict::Harmless);
        assert_eq!(ledger.judge(0, 0, 0, false), EvictionVerdict::Unaccounted(3));
        // Reported once, then the ledger starts over.
        assert_eq!(ledger.judge(0, 0, 0, false), EvictionVerdict::Harmless);
    }

    #[test]
    fn a_version_record_eviction_is_a_loss_at_once() {
        let mut ledger = EvictionLedger::default();
        assert_eq!(ledger.judge(2, 2, 1, false), EvictionVerdict::VersionRecords(1));
    }

    #[test]
    fn evictions_during_a_subscription_gap_are_a_loss() {
        let mut ledger = EvictionLedger::default();
        assert_eq!(ledger.judge(1, 0, 0, true), EvictionVerdict::Unaccounted(1));
        // A gap without evictions is nothing.
        assert_eq!(ledger.judge(0, 0, 0, true), EvictionVerdict::Harmless);
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
