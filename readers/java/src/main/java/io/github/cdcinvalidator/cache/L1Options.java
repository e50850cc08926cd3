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
  // Large enough for most hot sets, small beside a service's heap.
  private static final long DEFAULT_MAX_BYTES = 64L << 20;
  private static final int DEFAULT_MAX_ENTRIES = 10_000;

  private final int maxEntries;
  private final long maxBytes;
  private final String channel;
  private final boolean tracking;

  private L1Options(Duration maxStale, int maxEntries, long maxBytes, String channel, boolean tracking) {
    this.maxStale = maxStale;
    this.maxEntries = maxEntries;
    this.maxBytes = maxBytes;
    this.channel = channel;
    this.tracking = tracking;
  }

  /**
   * A bounded L1: an entry serves while it was verified against Redis within
   * {@code min(maxStale, the get's maxStale)}; its hits are {@code stale = true}.
   * Default 10,000 entries, 64 MiB.
   */
  public static L1Options bounded(Duration maxStale) {
    return new L1Options(maxStale, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES, null, false);
  }

  /**
   * An exact L1 through Redis client tracking (RESP3 push messages on a connection of
   * its own; a standalone Redis 6 or later, and a cache built from a {@link
   * io.lettuce.core.RedisClient}): entries serve strong and eventual gets until Redis
   * reports a change of one of their version records, and the whole L1 is flushed when
   * the tracking connection drops, reconnects or fails its health check. Its hits are
   * {@code stale = false}. Default 10,000 entries, 64 MiB.
   */
  public static L1Options tracking() {
    return new L1Options(null, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES, null, true);
  }

  /** The daemon's {@code [notices] redis_channel}: its notices drop bounded entries at once. */
  public L1Options notices(String channel) {
    return new L1Options(maxStale, maxEntries, maxBytes, channel, tracking);
  }

  /** At most this many entries (default 10,000); beyond it the oldest is evicted. */
  public L1Options maxEntries(int maxEntries) {
    return new L1Options(maxStale, maxEntries, maxBytes, channel, tracking);
  }

  /**
   * At most this many bytes of values, data keys, ids and record names (default 64 MiB);
   * beyond it the oldest entries are evicted, and an entry larger than it is not kept.
   */
  public L1Options maxBytes(long maxBytes) {
    return new L1Options(maxStale, maxEntries, maxBytes, channel, tracking);
  }

  Duration maxStale() {
    return maxStale;
  }

  int maxEntriesValue() {
    return maxEntries;
  }

  long maxBytesValue() {
    return maxBytes;
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
    if (maxBytes < 1) {
      throw CacheException.invalid("l1 maxBytes " + maxBytes + " must be at least 1");
    }
    if (!tracking && (maxStale == null || maxStale.isNegative())) {
      throw CacheException.invalid("l1 max_stale must be at least 0 (got " + maxStale + ")");
    }
    if (tracking && channel != null) {
      throw CacheException.invalid("an exact (tracking) L1 takes no notice channel: Redis reports every change itself");
    }
  }
}
