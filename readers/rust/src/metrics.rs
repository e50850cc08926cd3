//! Every metric of the crate (spec section 10): names as constants, handles
//! made once per `Cache`. The application installs the `metrics` recorder
//! (e.g. metrics-exporter-prometheus) before it builds a `Cache`: handles
//! bind to the recorder installed when they are made.

use metrics::{Counter, Gauge, Histogram};

pub const HITS: &str = "cache_hits_total";
pub const MISSES: &str = "cache_misses_total";
pub const FILLS: &str = "cache_fills_total";
pub const FILL_ERRORS: &str = "cache_fill_errors_total";
pub const FILL_LATENCY: &str = "cache_fill_latency_ms";
pub const STAMPEDE_PREVENTED: &str = "stampede_prevented_count";
pub const STALE_SERVED: &str = "cache_stale_served_total";
pub const LEASE_TAKEOVERS: &str = "cache_lease_takeovers_total";
pub const EARLY_REFRESHES: &str = "cache_early_refreshes_total";
pub const FRESHNESS_CHECKS: &str = "cache_freshness_checks_total";
pub const FRESHNESS_MISMATCHES: &str = "cache_freshness_mismatches_total";
pub const STALE_RATIO: &str = "cache_stale_ratio";
pub const L1_INVALIDATIONS: &str = "cache_l1_invalidations_total";
pub const PROPAGATION: &str = "invalidation_propagation_ms";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HITS, "Gets whose first read found the value, by layer (l1, redis)");
    describe_counter!(MISSES, "Gets whose first read found no value");
    describe_counter!(FILLS, "Values loaded and written by this process");
    describe_counter!(
        FILL_ERRORS,
        "Loader failures and timeouts (the lease is released, nothing cached)"
    );
    describe_histogram!(FILL_LATENCY, Unit::Milliseconds, "The loader's duration");
    describe_counter!(
        STAMPEDE_PREVENTED,
        "Gets that missed, did not take the lease and ended without calling their loader"
    );
    describe_counter!(
        STALE_SERVED,
        "Previous versions' values served (stale-while-revalidate)"
    );
    describe_counter!(LEASE_TAKEOVERS, "Leases taken over after their holder vanished");
    describe_counter!(EARLY_REFRESHES, "XFetch refreshes before the TTL");
    describe_counter!(FRESHNESS_CHECKS, "Sampled hits compared with the loader");
    describe_counter!(FRESHNESS_MISMATCHES, "Sampled hits that differed from the loader");
    describe_gauge!(STALE_RATIO, "Share of mismatches among the last 100 freshness checks");
    describe_counter!(
        L1_INVALIDATIONS,
        "L1 entries dropped, by reason (notice, tracking, reset)"
    );
    describe_histogram!(
        PROPAGATION,
        Unit::Milliseconds,
        "Source commit to the daemon's notice received by this process"
    );
}

pub(crate) struct Handles {
    pub hits_l1: Counter,
    pub hits_redis: Counter,
    pub misses: Counter,
    pub fills: Counter,
    pub fill_errors: Counter,
    pub fill_latency: Histogram,
    pub prevented: Counter,
    pub stale_served: Counter,
    pub takeovers: Counter,
    pub early: Counter,
    pub checks: Counter,
    pub mismatches: Counter,
    pub stale_ratio: Gauge,
    pub l1_notice: Counter,
    pub l1_reset: Counter,
    pub l1_tracking: Counter,
    pub propagation: Histogram,
}

impl Handles {
    pub fn new(cache: &str) -> Handles {
        describe();
        let c = cache.to_owned();
        Handles {
            hits_l1: metrics::counter!(HITS, "cache" => c.clone(), "layer" => "l1"),
            hits_redis: metrics::counter!(HITS, "cache" => c.clone(), "layer" => "redis"),
            misses: metrics::counter!(MISSES, "cache" => c.clone()),
            fills: metrics::counter!(FILLS, "cache" => c.clone()),
            fill_errors: metrics::counter!(FILL_ERRORS, "cache" => c.clone()),
            fill_latency: metrics::histogram!(FILL_LATENCY, "cache" => c.clone()),
            prevented: metrics::counter!(STAMPEDE_PREVENTED, "cache" => c.clone()),
            stale_served: metrics::counter!(STALE_SERVED, "cache" => c.clone()),
            takeovers: metrics::counter!(LEASE_TAKEOVERS, "cache" => c.clone()),
            early: metrics::counter!(EARLY_REFRESHES, "cache" => c.clone()),
            checks: metrics::counter!(FRESHNESS_CHECKS, "cache" => c.clone()),
            mismatches: metrics::counter!(FRESHNESS_MISMATCHES, "cache" => c.clone()),
            stale_ratio: metrics::gauge!(STALE_RATIO, "cache" => c.clone()),
            l1_notice: metrics::counter!(L1_INVALIDATIONS, "cache" => c.clone(), "reason" => "notice"),
            l1_reset: metrics::counter!(L1_INVALIDATIONS, "cache" => c.clone(), "reason" => "reset"),
            l1_tracking: metrics::counter!(L1_INVALIDATIONS, "cache" => c.clone(), "reason" => "tracking"),
            propagation: metrics::histogram!(PROPAGATION, "cache" => c),
        }
    }
}
