//! The optional in-process cache (spec section 8): entries served while
//! they were verified against Redis within a bound, dropped early by the
//! daemon's notices, cleared whenever the notice subscription (re)starts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::metrics::Handles;

#[derive(Debug, Clone)]
pub struct L1Options {
    /// The daemon's `[notices] redis_channel`; `None` serves entries for the
    /// bound alone (every invalidation then waits up to `max_stale`).
    pub channel: Option<String>,
    /// The longest an entry is served after it was last verified.
    pub max_stale: Duration,
    pub max_entries: usize,
}

impl Default for L1Options {
    fn default() -> Self {
        L1Options {
            channel: None,
            // A bound users rarely notice, and a hit ratio worth having for hot keys.
            max_stale: Duration::from_secs(1),
            max_entries: 10_000,
        }
    }
}

struct Entry {
    data_key: String,
    value: Vec<u8>,
    records: Vec<String>,
    verified: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    by_record: HashMap<String, HashSet<String>>,
    /// Insertion order, for eviction; ids dropped meanwhile are skipped.
    order: VecDeque<String>,
}

pub(crate) struct L1 {
    pub options: L1Options,
    state: Mutex<State>,
    epoch_record: String,
}

impl L1 {
    pub fn new(options: L1Options, prefix: &str) -> L1 {
        L1 {
            options,
            state: Mutex::new(State::default()),
            epoch_record: format!("{prefix}epoch"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (every
        // mutation below completes or does nothing), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry's value and data key when verified within `bound`.
    pub fn fresh(&self, id: &str, bound: Duration) -> Option<(Vec<u8>, String)> {
        let state = self.lock();
        let entry = state.entries.get(id)?;
        (entry.verified.elapsed() <= bound).then(|| (entry.value.clone(), entry.data_key.clone()))
    }

    /// Stores or re-verifies an entry. `verified` is when the Redis read
    /// began, so the bound also covers a notice that raced with the read.
    pub fn put(&self, id: &str, data_key: &str, value: &[u8], records: &[String], verified: Instant) {
        let mut state = self.lock();
        if !state.entries.contains_key(id) {
            while state.entries.len() >= self.options.max_entries.max(1) {
                let Some(oldest) = state.order.pop_front() else { break };
                remove(&mut state, &oldest);
            }
            state.order.push_back(id.to_owned());
            if state.order.len() > 2 * self.options.max_entries.max(1) {
                let State { entries, order, .. } = &mut *state;
                order.retain(|id| entries.contains_key(id));
            }
            for record in records {
                state.by_record.entry(record.clone()).or_default().insert(id.to_owned());
            }
        }
        state.entries.insert(
            id.to_owned(),
            Entry {
                data_key: data_key.to_owned(),
                value: value.to_vec(),
                records: records.to_vec(),
                verified,
            },
        );
    }

    /// Drops every entry depending on `record`; returns how many.
    pub fn invalidate(&self, record: &str) -> usize {
        if record == self.epoch_record {
            return self.clear();
        }
        let mut state = self.lock();
        let ids = state.by_record.remove(record).unwrap_or_default();
        ids.iter().filter(|id| remove(&mut state, id)).count()
    }

    pub fn clear(&self) -> usize {
        let mut state = self.lock();
        let n = state.entries.len();
        *state = State::default();
        n
    }
}

fn remove(state: &mut State, id: &str) -> bool {
    let Some(entry) = state.entries.remove(id) else {
        return false;
    };
    for record in &entry.records {
        if let Some(ids) = state.by_record.get_mut(record) {
            ids.remove(id);
            if ids.is_empty() {
                state.by_record.remove(record);
            }
        }
    }
    true
}

#[derive(serde::Deserialize)]
struct Notice {
    record_key: String,
    commit_time_us: Option<i64>,
}

/// Follows the notice channel until aborted; reconnects every second after
/// a failure, clearing the L1 on every (re)subscribe: notices sent while not
/// subscribed are lost (Pub/Sub is at most once).
pub(crate) async fn follow_notices(client: redis::Client, channel: String, l1: Arc<L1>, m: Arc<Handles>) {
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(&channel).await.is_ok() {
                m.l1_reset.increment(l1.clear() as u64);
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Ok(notice) = serde_json::from_slice::<Notice>(message.get_payload_bytes()) else {
                        continue;
                    };
                    m.l1_notice.increment(l1.invalidate(&notice.record_key) as u64);
                    if let Some(commit) = notice.commit_time_us.filter(|t| *t > 0) {
                        let now = crate::cache::unix_micros();
                        m.propagation.record(now.saturating_sub(commit as u64) as f64 / 1000.0);
                    }
                }
            }
        }
        m.l1_reset.increment(l1.clear() as u64);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_drop_dependents_and_capacity_evicts_the_oldest() {
        let l1 = L1::new(
            L1Options {
                channel: None,
                max_stale: Duration::from_secs(5),
                max_entries: 2,
            },
            "ver:",
        );
        let now = Instant::now();
        let recs = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        l1.put("a", "a@e0:v1", b"A", &recs(&["ver:epoch", "ver:a"]), now);
        l1.put("b", "b@e0:v1", b"B", &recs(&["ver:epoch", "ver:b", "ver:a"]), now);
        assert_eq!(l1.invalidate("ver:a"), 2);
        assert!(l1.fresh("a", Duration::from_secs(5)).is_none());
        l1.put("a", "a@e0:v2", b"A2", &recs(&["ver:a"]), now);
        l1.put("b", "b@e0:v2", b"B2", &recs(&["ver:b"]), now);
        l1.put("c", "c@e0:v2", b"C2", &recs(&["ver:c"]), now);
        assert!(l1.fresh("a", Duration::from_secs(5)).is_none(), "oldest evicted");
        assert_eq!(l1.fresh("c", Duration::from_secs(5)).unwrap().0, b"C2");
        assert!(l1.fresh("c", Duration::ZERO).is_none() || now.elapsed().is_zero());
        assert_eq!(l1.invalidate("ver:epoch"), 2, "an epoch notice clears everything");
    }
}
