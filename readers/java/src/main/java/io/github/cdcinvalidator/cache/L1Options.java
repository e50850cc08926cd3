package io.github.cdcinvalidator.cache;

import java.time.Duration;

/**
 * The in-process cache of a {@link Cache} (readers/spec.md section 8), for eventual
 * gets. Either bounded ({@link #bounded}: entries verified within {@code maxStale},
 * dropped early by the daemon's notices when a channel is given) or exact
 * ({@link #tracking}: entries dropped the moment Redis reports a change, through
 * Redis client tracking).
 */
public final class L1Options {
  private final Duration maxStale;
  private final int maxEntries;
  private final String channel;
  private final boolean tracking;

  private L1Options(Duration maxStale, int maxEntries, String channel, boolean tracking) {
    this.maxStale = maxStale;
    this.maxEntries = maxEntries;
    this.channel = channel;
    this.tracking = tracking;
  }

  /**
   * A bounded L1: an entry serves while it was verified against Redis within
   * {@code min(maxStale, the get's maxStale)}; its hits are {@code stale = true}.
   * Default 10,000 entries.
   */
  public static L1Options bounded(Duration maxStale) {
    return new L1Options(maxStale, 10_000, null, false);
  }

  /**
   * An exact L1 through Redis client tracking (RESP3 push messages; a standalone Redis
   * 6 or later, and a cache built from a {@link io.lettuce.core.RedisClient}): entries
   * serve until Redis reports a change of one of their version records or their data
   * key, and the whole L1 is cleared when the tracking connection drops. Its hits are
   * {@code stale = false}. Default 10,000 entries.
   */
  public static L1Options tracking() {
    return new L1Options(null, 10_000, null, true);
  }

  /** The daemon's {@code [notices] redis_channel}: its notices drop bounded entries at once. */
  public L1Options notices(String channel) {
    return new L1Options(maxStale, maxEntries, channel, tracking);
  }

  /** At most this many entries; beyond it the oldest is evicted. */
  public L1Options maxEntries(int maxEntries) {
    return new L1Options(maxStale, maxEntries, channel, tracking);
  }

  Duration maxStale() {
    return maxStale;
  }

  int maxEntriesValue() {
    return maxEntries;
  }

  String channel() {
    return channel;
  }

  boolean isTracking() {
    return tracking;
  }

  void validate() {
    if (maxEntries < 1) {
      throw CacheException.invalid("l1 maxEntries " + maxEntries + " must be at least 1");
    }
    if (!tracking && (maxStale == null || maxStale.isNegative())) {
      throw CacheException.invalid("l1 max_stale must be at least 0 (got " + maxStale + ")");
    }
    if (tracking && channel != null) {
      throw CacheException.invalid("an exact (tracking) L1 takes no notice channel: Redis reports every change itself");
    }
  }
}
