package io.github.cdcinvalidator.cache;

import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.DistributionSummary;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.MeterRegistry;
import java.util.ArrayDeque;

/**
 * Every metric of the library (readers/spec.md section 10), named as in the
 * other libraries. Every series has the tag {@code cache}; no key ever
 * becomes a tag. Meters of the same name and tags are shared by the caches
 * of one registry, as Micrometer does.
 */
public final class CacheMetrics {
  public static final String HITS = "cache_hits_total";
  public static final String MISSES = "cache_misses_total";
  public static final String FILLS = "cache_fills_total";
  public static final String FILL_ERRORS = "cache_fill_errors_total";
  public static final String FILL_LATENCY = "cache_fill_latency_ms";
  public static final String STAMPEDE_PREVENTED = "stampede_prevented_count";
  public static final String STALE_SERVED = "cache_stale_served_total";
  public static final String LEASE_TAKEOVERS = "cache_lease_takeovers_total";
  public static final String EARLY_REFRESHES = "cache_early_refreshes_total";
  public static final String FRESHNESS_CHECKS = "cache_freshness_checks_total";
  public static final String FRESHNESS_MISMATCHES = "cache_freshness_mismatches_total";
  public static final String STALE_RATIO = "cache_stale_ratio";
  public static final String L1_INVALIDATIONS = "cache_l1_invalidations_total";
  public static final String PROPAGATION = "invalidation_propagation_ms";

  /** The last N freshness checks make cache_stale_ratio. */
  private static final int RATIO_WINDOW = 100;
  private static final double[] MS_BUCKETS = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000};

  final Counter hitsL1;
  final Counter hitsRedis;
  final Counter misses;
  final Counter fills;
  final Counter fillErrors;
  final DistributionSummary fillLatency;
  final Counter stampedePrevented;
  final Counter staleServed;
  final Counter leaseTakeovers;
  final Counter earlyRefreshes;
  final Counter freshnessChecks;
  final Counter freshnessMismatches;
  final Counter l1Notice;
  final Counter l1Reset;
  final Counter l1Tracking;
  final DistributionSummary propagation;
  private final ArrayDeque<Boolean> checks = new ArrayDeque<>();
  private volatile double staleRatio;

  CacheMetrics(MeterRegistry registry, String cache) {
    hitsL1 = counter(registry, HITS, "Gets whose first look found the value, by layer", cache, "layer", "l1");
    hitsRedis = counter(registry, HITS, "Gets whose first look found the value, by layer", cache, "layer", "redis");
    misses = counter(registry, MISSES, "Gets whose read found no value", cache);
    fills = counter(registry, FILLS, "Values loaded and written by this process", cache);
    fillErrors = counter(registry, FILL_ERRORS, "Loader failures and loader timeouts (the lease is released)", cache);
    fillLatency = summary(registry, FILL_LATENCY, "The loader's duration in milliseconds", cache);
    stampedePrevented = counter(registry, STAMPEDE_PREVENTED,
        "Gets that missed, did not take the lease and ended without calling their loader", cache);
    staleServed = counter(registry, STALE_SERVED, "Previous versions' values served", cache);
    leaseTakeovers = counter(registry, LEASE_TAKEOVERS, "Leases taken over after their holder vanished", cache);
    earlyRefreshes = counter(registry, EARLY_REFRESHES, "XFetch refreshes before the TTL", cache);
    freshnessChecks = counter(registry, FRESHNESS_CHECKS, "Sampled hits compared with the loader", cache);
    freshnessMismatches = counter(registry, FRESHNESS_MISMATCHES, "Sampled hits that differed from the loader", cache);
    l1Notice = counter(registry, L1_INVALIDATIONS, "L1 entries dropped, by reason", cache, "reason", "notice");
    l1Reset = counter(registry, L1_INVALIDATIONS, "L1 entries dropped, by reason", cache, "reason", "reset");
    l1Tracking = counter(registry, L1_INVALIDATIONS, "L1 entries dropped, by reason", cache, "reason", "tracking");
    propagation = summary(registry, PROPAGATION,
        "Source commit to the invalidation received by this process, in milliseconds", cache);
    Gauge.builder(STALE_RATIO, this, m -> m.staleRatio)
        .description("Share of mismatches among the last 100 freshness checks")
        .tag("cache", cache)
        .register(registry);
  }

  private static Counter counter(MeterRegistry registry, String name, String help, String cache, String... tags) {
    return Counter.builder(name).description(help).tag("cache", cache).tags(tags).register(registry);
  }

  private static DistributionSummary summary(MeterRegistry registry, String name, String help, String cache) {
    return DistributionSummary.builder(name)
        .description(help)
        .baseUnit("milliseconds")
        .tag("cache", cache)
        .serviceLevelObjectives(MS_BUCKETS)
        .register(registry);
  }

  synchronized void freshnessCheck(boolean mismatch) {
    freshnessChecks.increment();
    if (mismatch) {
      freshnessMismatches.increment();
    }
    checks.addLast(mismatch);
    if (checks.size() > RATIO_WINDOW) {
      checks.removeFirst();
    }
    long bad = checks.stream().filter(b -> b).count();
    staleRatio = (double) bad / checks.size();
  }
}
