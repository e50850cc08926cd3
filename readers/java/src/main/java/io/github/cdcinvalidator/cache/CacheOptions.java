package io.github.cdcinvalidator.cache;

import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Metrics;
import java.time.Duration;
import java.util.concurrent.Executor;
import java.util.concurrent.ForkJoinPool;

/**
 * Per-cache settings (readers/spec.md section 1's table). Immutable; every setter
 * returns a new copy.
 *
 * <pre>{@code
 * CacheOptions options = CacheOptions.defaults()
 *     .name("catalog")
 *     .l1(L1Options.bounded(Duration.ofMillis(500)).notices("cdc-notices"))
 *     .meterRegistry(registry);
 * }</pre>
 */
public final class CacheOptions {
  // Longer than a typical loader, short enough that a crashed holder is not noticed for long.
  static final Duration DEFAULT_LEASE = Duration.ofSeconds(5);
  // A fill is usually a few milliseconds away.
  static final Duration DEFAULT_POLL = Duration.ofMillis(10);
  // Bounds the extra wait after a fill and the re-read rate of a long wait.
  static final Duration DEFAULT_MAX_POLL = Duration.ofMillis(100);

  String name = "default";
  String prefix = "ver:";
  Duration lease = DEFAULT_LEASE;
  Duration poll = DEFAULT_POLL;
  Duration maxPoll = DEFAULT_MAX_POLL;
  Duration waitTimeout; // null: twice the lease
  Duration loaderTimeout; // null: none
  double beta = 1.0;
  double sampleRate = 0;
  L1Options l1;
  MeterRegistry meterRegistry = Metrics.globalRegistry;
  Executor loaderExecutor = ForkJoinPool.commonPool();

  private CacheOptions() {}

  public static CacheOptions defaults() {
    return new CacheOptions();
  }

  private CacheOptions copy() {
    CacheOptions c = new CacheOptions();
    c.name = name;
    c.prefix = prefix;
    c.lease = lease;
    c.poll = poll;
    c.maxPoll = maxPoll;
    c.waitTimeout = waitTimeout;
    c.loaderTimeout = loaderTimeout;
    c.beta = beta;
    c.sampleRate = sampleRate;
    c.l1 = l1;
    c.meterRegistry = meterRegistry;
    c.loaderExecutor = loaderExecutor;
    return c;
  }

  /** The {@code cache} tag of every metric (default {@code default}). */
  public CacheOptions name(String name) {
    CacheOptions c = copy();
    c.name = name;
    return c;
  }

  /** The daemon's {@code [redis] version_prefix} (default {@code ver:}). */
  public CacheOptions prefix(String prefix) {
    CacheOptions c = copy();
    c.prefix = prefix;
    return c;
  }

  /** The lease's time to live (default 5 s). */
  public CacheOptions lease(Duration lease) {
    CacheOptions c = copy();
    c.lease = lease;
    return c;
  }

  /** A waiter's first re-read interval (default 10 ms); it doubles up to {@link #maxPoll}. */
  public CacheOptions poll(Duration poll) {
    CacheOptions c = copy();
    c.poll = poll;
    return c;
  }

  /** The longest re-read interval (default 100 ms). */
  public CacheOptions maxPoll(Duration maxPoll) {
    CacheOptions c = copy();
    c.maxPoll = maxPoll;
    return c;
  }

  /** The longest a get waits for another's load (default twice the lease). */
  public CacheOptions waitTimeout(Duration waitTimeout) {
    CacheOptions c = copy();
    c.waitTimeout = waitTimeout;
    return c;
  }

  /** The longest a loader may run before its get fails with {@code loader_timeout} (default none). */
  public CacheOptions loaderTimeout(Duration loaderTimeout) {
    CacheOptions c = copy();
    c.loaderTimeout = loaderTimeout;
    return c;
  }

  /** XFetch's beta: above 1 refreshes earlier, 0 turns XFetch off (default 1). */
  public CacheOptions beta(double beta) {
    CacheOptions c = copy();
    c.beta = beta;
    return c;
  }

  /** The share of hits checked against the loader, 0 to 1 (default 0: off). */
  public CacheOptions sampleRate(double sampleRate) {
    CacheOptions c = copy();
    c.sampleRate = sampleRate;
    return c;
  }

  /** The in-process cache (default off). */
  public CacheOptions l1(L1Options l1) {
    CacheOptions c = copy();
    c.l1 = l1;
    return c;
  }

  /** Where the metrics go (default Micrometer's global registry). */
  public CacheOptions meterRegistry(MeterRegistry registry) {
    CacheOptions c = copy();
    c.meterRegistry = registry;
    return c;
  }

  /** Where {@link AsyncLoader}s are called (default the common fork-join pool). */
  public CacheOptions loaderExecutor(Executor executor) {
    CacheOptions c = copy();
    c.loaderExecutor = executor;
    return c;
  }

  Duration effectiveWaitTimeout() {
    return waitTimeout != null ? waitTimeout : lease.multipliedBy(2);
  }

  /** The per-cache refusals of section 1. */
  void validate() {
    positive("lease", lease);
    positive("poll", poll);
    positive("max_poll", maxPoll);
    if (maxPoll.compareTo(poll) < 0) {
      throw CacheException.invalid("max_poll " + maxPoll + " is below poll " + poll);
    }
    if (waitTimeout != null) {
      positive("wait_timeout", waitTimeout);
    }
    if (loaderTimeout != null) {
      positive("loader_timeout", loaderTimeout);
    }
    if (!(sampleRate >= 0 && sampleRate <= 1)) {
      throw CacheException.invalid("sample_rate " + sampleRate + " must be within 0 to 1");
    }
    if (!(beta >= 0)) {
      throw CacheException.invalid("beta " + beta + " must be at least 0");
    }
    if (name == null || prefix == null || meterRegistry == null || loaderExecutor == null) {
      throw CacheException.invalid("name, prefix, meterRegistry and loaderExecutor must not be null");
    }
    if (l1 != null) {
      l1.validate();
    }
  }

  private static void positive(String what, Duration d) {
    if (d == null || d.isZero() || d.isNegative()) {
      throw CacheException.invalid(what + " " + d + " must be above zero");
    }
  }
}
