//! Batching and coalescing: many events, one bump per (target, source) at
//! the highest position seen, plus the staleness rule for moot events.

use std::collections::HashMap;
use std::time::Duration;

use crate::event::Position;
use crate::graph::Target;

/// One guarded bump to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bump {
    pub target: Target,
    pub position: Position,
    /// The earliest commit time among the coalesced changes: propagation is
    /// measured for the change that waited longest.
    pub commit_time_us: Option<i64>,
}

/// Coalesces targets within a batch.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Per target, one pending bump per source (almost always one): a
    /// lookup by the target alone, with no copy of the source's name made
    /// for every target of every event.
    bumps: HashMap<Target, Vec<Pending>>,
    pending: usize,
    added: u64,
}

/// A target's bump for one source, before the batch is sealed.
#[derive(Debug)]
struct Pending {
    position: Position,
    commit_time_us: Option<i64>,
}

impl Plan {
    pub(crate) fn add(&mut self, target: Target, position: &Position, commit_time_us: Option<i64>) {
        self.added += 1;
        let per_source = self.bumps.entry(target).or_default();
        match per_source.iter_mut().find(|p| p.position.source == position.source) {
            Some(pending) => {
                if position.ordinal > pending.position.ordinal {
                    pending.position.ordinal.clone_from(&position.ordinal);
                }
                pending.commit_time_us = match (pending.commit_time_us, commit_time_us) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => {
                self.pending += 1;
                per_source.push(Pending {
                    position: position.clone(),
                    commit_time_us,
                });
            }
        }
    }

    /// Targets added that merged into an existing bump.
    pub(crate) fn coalesced(&self) -> u64 {
        self.added - self.pending as u64
    }

    pub(crate) fn into_bumps(self) -> Vec<Bump> {
        let mut bumps: Vec<Bump> = Vec::with_capacity(self.pending);
        for (target, per_source) in self.bumps {
            for pending in per_source {
                bumps.push(Bump {
                    target: target.clone(),
                    position: pending.position,
                    commit_time_us: pending.commit_time_us,
                });
            }
        }
        // Deterministic order makes logs and tests readable.
        bumps.sort_by(|a, b| (&a.target, &a.position).cmp(&(&b.target, &b.position)));
        bumps
    }
}

/// An event is moot when every cache entry written before it has expired on
/// its own: its age exceeds the entity's longest cache TTL plus the skew margin.
pub(crate) fn is_moot(
    commit_time_us: Option<i64>,
    now_us: i64,
    max_cache_ttl: Option<Duration>,
    skew_margin: Duration,
) -> bool {
    match (commit_time_us, max_cache_ttl) {
        (Some(commit), Some(ttl)) => {
            let age_us = now_us.saturating_sub(commit);
            // Saturating: a TTL beyond i64 microseconds (292,000 years) makes nothing moot.
            age_us > i64::try_from(ttl.saturating_add(skew_margin).as_micros()).unwrap_or(i64::MAX)
        }
        // Without a commit time or a declared TTL nothing is provably moot.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_per_target_and_source_keeping_highest_position() {
        let mut plan = Plan::default();
        let key = Target::Key("product:1".into());
        plan.add(key.clone(), &Position::postgres("shop", 1, 10), Some(500));
        plan.add(key.clone(), &Position::postgres("shop", 5, 50), Some(400));
        plan.add(key.clone(), &Position::postgres("shop", 2, 20), None);
        plan.add(key.clone(), &Position::kafka("t", 0, 3), None);
        assert_eq!(plan.coalesced(), 2);
        let bumps = plan.into_bumps();
        assert_eq!(bumps.len(), 2);
        let pg = bumps.iter().find(|b| b.position.source == "pg:shop").unwrap();
        assert_eq!(pg.position, Position::postgres("shop", 5, 50));
        assert_eq!(pg.commit_time_us, Some(400));
    }

    #[test]
    fn moot_only_past_ttl_plus_margin() {
        let ttl = Some(Duration::from_secs(600));
        let margin = Duration::from_secs(30);
        let now = 10_000_000_000;
        assert!(!is_moot(Some(now - 629_000_000), now, ttl, margin));
        assert!(is_moot(Some(now - 631_000_000), now, ttl, margin));
        assert!(!is_moot(None, now, ttl, margin));
        assert!(!is_moot(Some(0), now, None, margin));
    }
}
