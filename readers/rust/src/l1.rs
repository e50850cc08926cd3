//! The optional in-process cache (spec section 8), in one of two modes:
//!
//! - `Tracking`: exact. The version records are read on a connection with
//!   Redis client-side caching on (`CLIENT TRACKING`, see `tracking`); an
//!   entry is dropped the moment Redis reports a change to any record it
//!   depends on, and the whole L1 is flushed whenever that connection drops.
//!   Served to every get, strong ones too: a hit costs no round trip.
//! - `Bounded`: entries served while verified against Redis within a bound,
//!   to `eventual` gets only, dropped early by the daemon's notices, cleared
//!   whenever the notice subscription (re)starts.
//!
//! Both hold at most `max_entries` entries and `max_bytes` bytes; beyond
//! either the oldest entries are evicted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::metrics::Handles;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L1Mode {
    /// Exact, through Redis client-side caching (Redis 6+, standalone only).
    Tracking,
    /// Served for at most `max_stale` after the entry was last verified.
    Bounded {
        /// The longest an entry is served after it was last verified.
        max_stale: Duration,
        /// The daemon's `[notices] redis_channel`; `None` serves entries for
        /// the bound alone (every invalidation then waits up to `max_stale`).
        channel: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Options {
    pub mode: L1Mode,
    pub max_entries: usize,
    /// Values, data keys and record names counted together.
    pub max_bytes: usize,
}

impl L1Options {
    /// The exact L1 (spec section 8, tracking).
    pub fn tracking() -> L1Options {
        L1Options {
            mode: L1Mode::Tracking,
            ..L1Options::default()
        }
    }

    /// The bounded L1 without notices.
    pub fn bounded(max_stale: Duration) -> L1Options {
        L1Options {
            mode: L1Mode::Bounded {
                max_stale,
                channel: None,
            },
            ..L1Options::default()
        }
    }

    /// The bounded L1 dropping entries on the daemon's notices as well.
    pub fn bounded_with_notices(max_stale: Duration, channel: impl Into<String>) -> L1Options {
        L1Options {
            mode: L1Mode::Bounded {
                max_stale,
                channel: Some(channel.into()),
            },
            ..L1Options::default()
        }
    }

    pub fn max_entries(mut self, max_entries: usize) -> L1Options {
        self.max_entries = max_entries;
        self
    }

    pub fn max_bytes(mut self, max_bytes: usize) -> L1Options {
        self.max_bytes = max_bytes;
        self
    }
}

impl Default for L1Options {
    fn default() -> Self {
        L1Options {
            // A bound users rarely notice, and a hit ratio worth having for hot keys.
            mode: L1Mode::Bounded {
                max_stale: Duration::from_secs(1),
                channel: None,
            },
            max_entries: 10_000,
            // Enough for 10,000 values of 6 KiB; a process caching larger
            // values sets its own.
            max_bytes: 64 << 20,
        }
    }
}

struct Entry {
    data_key: String,
    value: Vec<u8>,
    records: Vec<String>,
    verified: Instant,
    bytes: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    by_record: HashMap<String, HashSet<String>>,
    /// Insertion order, for eviction; ids dropped meanwhile are skipped.
    order: VecDeque<String>,
    bytes: usize,
    /// Tracking only: one more per invalidation message and per flush.
    seq: u64,
    /// Tracking only: the `seq` of the last invalidation of each key, so a
    /// read that began before it does not install what it read.
    invalidated_at: HashMap<Vec<u8>, u64>,
    /// Tracking only: reads that began before this `seq` install nothing
    /// (a flush, a reconnect, or `invalidated_at` forgotten).
    spoiled_before: u64,
    /// Tracking only: the tracking connection is up with tracking on.
    up: bool,
}

pub(crate) struct L1 {
    pub options: L1Options,
    state: Mutex<State>,
    epoch_record: String,
}

/// What a read began at: the L1 installs its result only if nothing that
/// read depends on changed since (tracking), or it verifies as of then (bounded).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadStart {
    pub at: Instant,
    pub seq: u64,
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

    pub fn is_tracking(&self) -> bool {
        self.options.mode == L1Mode::Tracking
    }

    /// Tracking: the entry's value and data key, while tracking is up.
    /// Bounded: when verified within `bound`.
    pub fn lookup(&self, id: &str, bound: Option<Duration>) -> Option<(Vec<u8>, String)> {
        let state = self.lock();
        if self.is_tracking() && !state.up {
            return None;
        }
        let entry = state.entries.get(id)?;
        let fresh = bound.is_none_or(|b| entry.verified.elapsed() <= b);
        fresh.then(|| (entry.value.clone(), entry.data_key.clone()))
    }

    /// Call before the read whose result may be installed.
    pub fn begin(&self) -> ReadStart {
        ReadStart {
            at: Instant::now(),
            seq: self.lock().seq,
        }
    }

    /// Stores or re-verifies an entry. Tracking: only when no record it
    /// depends on was invalidated since `start` (the race between a read's
    /// reply and an invalidation of what it read). Bounded: `start.at` is
    /// when the Redis read began, so the bound also covers a notice that
    /// raced with the read.
    pub fn put(&self, id: &str, data_key: &str, value: &[u8], records: &[String], start: ReadStart) {
        let mut state = self.lock();
        if self.is_tracking() {
            let changed = |r: &String| state.invalidated_at.get(r.as_bytes()).is_some_and(|at| *at > start.seq);
            if !state.up || start.seq < state.spoiled_before || records.iter().any(changed) {
                return;
            }
        }
        let bytes = id.len() + data_key.len() + value.len() + records.iter().map(String::len).sum::<usize>();
        if bytes > self.options.max_bytes {
            return;
        }
        remove(&mut state, id);
        let max_entries = self.options.max_entries.max(1);
        while state.entries.len() >= max_entries || state.bytes + bytes > self.options.max_bytes {
            let Some(oldest) = state.order.pop_front() else { break };
            remove(&mut state, &oldest);
        }
        state.order.push_back(id.to_owned());
        if state.order.len() > 2 * max_entries {
            let State { entries, order, .. } = &mut *state;
            order.retain(|id| entries.contains_key(id));
        }
        for record in records {
            state.by_record.entry(record.clone()).or_default().insert(id.to_owned());
        }
        state.bytes += bytes;
        state.entries.insert(
            id.to_owned(),
            Entry {
                data_key: data_key.to_owned(),
                value: value.to_vec(),
                records: records.to_vec(),
                verified: start.at,
                bytes,
            },
        );
    }

    /// A daemon notice: drops every entry depending on `record`; returns how many.
    pub fn invalidate(&self, record: &str) -> usize {
        if record == self.epoch_record {
            return self.clear();
        }
        let mut state = self.lock();
        let ids = state.by_record.remove(record).unwrap_or_default();
        ids.iter().filter(|id| remove(&mut state, id)).count()
    }

    /// A Redis invalidation message: these keys changed (`None`: the whole
    /// database was flushed). Returns how many entries were dropped.
    pub fn invalidate_tracked(&self, keys: Option<&[Vec<u8>]>) -> usize {
        let mut state = self.lock();
        state.seq += 1;
        let seq = state.seq;
        let Some(keys) = keys else {
            return flush(&mut state);
        };
        let mut dropped = 0;
        for key in keys {
            state.invalidated_at.insert(key.clone(), seq);
            let Ok(record) = std::str::from_utf8(key) else { continue };
            if let Some(ids) = state.by_record.remove(record) {
                dropped += ids.iter().filter(|id| remove(&mut state, id)).count();
            }
        }
        // Forgetting is safe: reads that began before now install nothing.
        if state.invalidated_at.len() > 4 * self.options.max_entries.max(1024) {
            state.invalidated_at.clear();
            state.spoiled_before = seq;
        }
        dropped
    }

    /// Tracking went up (tracking on, on a fresh connection) or down.
    /// Either way every entry goes: changes while down were not reported.
    pub fn set_up(&self, up: bool) -> usize {
        let mut state = self.lock();
        state.up = up;
        flush(&mut state)
    }

    pub fn clear(&self) -> usize {
        flush(&mut self.lock())
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let state = self.lock();
        (state.entries.len(), state.bytes)
    }
}

/// Drops every entry; reads in flight install nothing.
fn flush(state: &mut State) -> usize {
    let n = state.entries.len();
    state.entries.clear();
    state.by_record.clear();
    state.order.clear();
    state.invalidated_at.clear();
    state.bytes = 0;
    state.seq += 1;
    state.spoiled_before = state.seq;
    n
}

fn remove(state: &mut State, id: &str) -> bool {
    let Some(entry) = state.entries.remove(id) else {
        return false;
    };
    state.bytes -= entry.bytes;
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
                    if let Some(commit) = notice
                        .commit_time_us
                        .and_then(|t| u64::try_from(t).ok())
                        .filter(|t| *t > 0)
                    {
                        let now = crate::cache::unix_micros();
                        m.propagation.record(now.saturating_sub(commit) as f64 / 1000.0);
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

    fn recs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn notices_drop_dependents_and_capacity_evicts_the_oldest() {
        let l1 = L1::new(L1Options::bounded(Duration::from_secs(5)).max_entries(2), "ver:");
        let bound = Some(Duration::from_secs(5));
        let start = l1.begin();
        l1.put("a", "a@e0:v1", b"A", &recs(&["ver:epoch", "ver:a"]), start);
        l1.put("b", "b@e0:v1", b"B", &recs(&["ver:epoch", "ver:b", "ver:a"]), start);
        assert_eq!(l1.invalidate("ver:a"), 2);
        assert!(l1.lookup("a", bound).is_none());
        l1.put("a", "a@e0:v2", b"A2", &recs(&["ver:a"]), start);
        l1.put("b", "b@e0:v2", b"B2", &recs(&["ver:b"]), start);
        l1.put("c", "c@e0:v2", b"C2", &recs(&["ver:c"]), start);
        assert!(l1.lookup("a", bound).is_none(), "oldest evicted");
        assert_eq!(l1.lookup("c", bound).unwrap().0, b"C2");
        assert!(l1.lookup("c", Some(Duration::ZERO)).is_none() || start.at.elapsed().is_zero());
        assert_eq!(l1.invalidate("ver:epoch"), 2, "an epoch notice clears everything");
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_and_refuses_what_never_fits() {
        let l1 = L1::new(L1Options::bounded(Duration::from_secs(5)).max_bytes(100), "ver:");
        let start = l1.begin();
        let r = recs(&["ver:k"]);
        // id 1 + data key 4 + record 5 + value = 10 + value bytes.
        l1.put("a", "a@e0", &[0; 50], &r, start);
        l1.put("b", "b@e0", &[0; 40], &r, start);
        assert_eq!(l1.len(), (1, 50), "a evicted to fit b");
        l1.put("c", "c@e0", &[0; 91], &r, start);
        assert_eq!(l1.len(), (1, 50), "a value larger than the bound is not cached");
        l1.put("b", "b@e0", &[0; 10], &r, start);
        assert_eq!(l1.len(), (1, 20), "a replaced entry gives its bytes back");
    }

    #[test]
    fn tracking_serves_until_an_invalidation_and_never_installs_a_raced_read() {
        let l1 = L1::new(L1Options::tracking(), "ver:");
        let r = recs(&["ver:epoch", "ver:a"]);
        let start = l1.begin();
        l1.put("a", "a@e0:v1", b"A", &r, start);
        assert!(
            l1.lookup("a", None).is_none(),
            "nothing is cached while tracking is down"
        );
        l1.set_up(true);
        l1.put("a", "a@e0:v1", b"A", &r, start);
        assert!(
            l1.lookup("a", None).is_none(),
            "a read from before tracking came up installs nothing"
        );

        let start = l1.begin();
        l1.put("a", "a@e0:v1", b"A", &r, start);
        assert_eq!(l1.lookup("a", None).unwrap().0, b"A");
        assert_eq!(l1.invalidate_tracked(Some(&[b"ver:a".to_vec()])), 1);
        assert!(l1.lookup("a", None).is_none());

        // The reply of a read that began before an invalidation of one of
        // its records arrives after it: not installed.
        let raced = l1.begin();
        l1.invalidate_tracked(Some(&[b"ver:a".to_vec()]));
        l1.put("a", "a@e0:v1", b"A", &r, raced);
        assert!(l1.lookup("a", None).is_none());
        // An invalidation of an unrelated key does not spoil it.
        let start = l1.begin();
        l1.invalidate_tracked(Some(&[b"ver:other".to_vec()]));
        l1.put("a", "a@e0:v2", b"A2", &r, start);
        assert_eq!(l1.lookup("a", None).unwrap().0, b"A2");

        // A flushed database, a dropped connection: everything goes.
        assert_eq!(l1.invalidate_tracked(None), 1);
        l1.put("a", "a@e0:v2", b"A2", &r, l1.begin());
        assert_eq!(l1.set_up(false), 1);
        assert!(l1.lookup("a", None).is_none());
    }
}
