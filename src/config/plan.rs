//! `[plan]`: how big a batch may grow, how long eventual entities linger,
//! when lag turns key bumps into namespace bumps, the clock-skew margin of
//! the moot rule, and how many threads decode and route records.

use std::time::Duration;

use super::error::ConfigError;
use super::raw::RawPlan;
use super::validator::Validator;

#[derive(Debug, Clone)]
pub struct PlanSettings {
    pub(crate) max_batch_records: usize,
    /// In-flight budget in bytes (keys and values of the records in a batch).
    pub(crate) max_batch_bytes: usize,
    pub(crate) max_record_bytes: usize,
    /// Consumer lag (records) above which entities with a namespace bump it
    /// once per batch instead of their keys; back to keys below half of it.
    pub(crate) escalate_above_lag: Option<i64>,
    pub(crate) eventual_linger: Duration,
    pub(crate) clock_skew_margin: Duration,
    /// Threads that decode and route records, the consumer task's own
    /// included: 1 routes each record on the consumer task as it is taken.
    pub(crate) route_workers: usize,
}

// 5000 records keep one Redis pipeline well under a megabyte while
// amortising the round trip; the watermark commits after each batch.
pub(super) const DEFAULT_MAX_BATCH_RECORDS: usize = 5000;
// 32 MiB of records in flight at most, whatever the backlog in Kafka.
const DEFAULT_MAX_BATCH_BYTES: usize = 32 << 20;
// Above Kafka's default message.max.bytes tenfold: anything bigger is not a
// row change Debezium would write, and parsing it would only cost memory.
const DEFAULT_MAX_RECORD_BYTES: usize = 10 << 20;
// Eventual entities may wait this long for more changes to the same keys.
pub(super) const DEFAULT_EVENTUAL_LINGER: Duration = Duration::from_millis(100);
// Commit timestamps come from the database host, ages from ours: allow drift.
const DEFAULT_CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(30);
// Decoding and routing is the consumer stage's one CPU-bound step; beyond
// this many threads the rest of the stage (one task) is the limit, and a
// daemon sharing its host should not claim every core.
pub(super) const DEFAULT_MAX_ROUTE_WORKERS: usize = 4;
// More threads than this is a typo, not a host.
const MAX_ROUTE_WORKERS: usize = 64;

/// The cores this process may use (its CPU affinity and cgroup quota
/// included), at most [`DEFAULT_MAX_ROUTE_WORKERS`]: one routing thread per
/// core scales decoding with the cores given to the daemon.
pub(super) fn default_route_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().min(DEFAULT_MAX_ROUTE_WORKERS))
}

pub(super) fn validate_plan(raw: Option<RawPlan>, v: &Validator<'_>) -> Result<PlanSettings, ConfigError> {
    let raw = raw.as_ref();
    Ok(PlanSettings {
        max_batch_records: v
            .at_least_one(raw.and_then(|p| p.max_batch_records.as_ref()), "plan.max_batch_records")?
            .unwrap_or(DEFAULT_MAX_BATCH_RECORDS),
        max_batch_bytes: v
            .at_least_one(raw.and_then(|p| p.max_batch_bytes.as_ref()), "plan.max_batch_bytes")?
            .unwrap_or(DEFAULT_MAX_BATCH_BYTES),
        max_record_bytes: v
            .at_least_one(raw.and_then(|p| p.max_record_bytes.as_ref()), "plan.max_record_bytes")?
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES),
        escalate_above_lag: match raw.and_then(|p| p.escalate_above_lag.as_ref()) {
            Some(n) if *n.get_ref() < 1 => {
                return v.error(
                    n.span(),
                    "plan.escalate_above_lag",
                    "expected a positive number of records",
                )
            }
            Some(n) => Some(*n.get_ref()),
            None => None,
        },
        eventual_linger: v
            .optional_duration(raw.and_then(|p| p.eventual_linger.as_ref()), "plan.eventual_linger")?
            .unwrap_or(DEFAULT_EVENTUAL_LINGER),
        clock_skew_margin: v
            .optional_duration(raw.and_then(|p| p.clock_skew_margin.as_ref()), "plan.clock_skew_margin")?
            .unwrap_or(DEFAULT_CLOCK_SKEW_MARGIN),
        route_workers: match raw.and_then(|p| p.route_workers.as_ref()) {
            Some(n) if !(1..=MAX_ROUTE_WORKERS).contains(n.get_ref()) => {
                return v.error(
                    n.span(),
                    "plan.route_workers",
                    format!("expected 1 to {MAX_ROUTE_WORKERS} threads"),
                )
            }
            Some(n) => *n.get_ref(),
            None => default_route_workers(),
        },
    })
}
