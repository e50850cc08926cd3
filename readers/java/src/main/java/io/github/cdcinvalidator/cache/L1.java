package io.github.cdcinvalidator.cache;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The in-process cache (readers/spec.md section 8). Two kinds, one per cache:
 *
 * <ul>
 *   <li><b>bounded</b>: an entry is served while it was verified against Redis
 *       within the bound; the daemon's notices drop entries early, and the whole
 *       L1 is cleared when the notice subscription (re)starts;
 *   <li><b>exact</b> (Redis client tracking): an entry is served until Redis
 *       reports a change of one of its keys; the whole L1 is cleared when the
 *       tracking connection drops or reconnects.
 * </ul>
 *
 * Memory is bounded by {@code maxEntries}: beyond it the oldest entry goes.
 * All methods are synchronized: entries are few and each operation is short.
 */
final class L1 {
  record Entry(String dataKey, byte[] value, List<String> keys, long verifiedNanos, long bytes) {}

  private final int maxEntries;
  private final long maxBytes;
  private long bytes;
  private final String epochRecord;
  // Insertion order: the first entry is the oldest.
  private final LinkedHashMap<String, Entry> entries = new LinkedHashMap<>();
  // Record (and, for exact entries, data key) -> ids of entries and pending reads.
  private final Map<String, Set<String>> byKey = new HashMap<>();
  // Exact L1: reads under way whose result may become an entry, by id -> ticket.
  private final Map<String, Long> pending = new HashMap<>();
  private final Map<String, List<String>> pendingKeys = new HashMap<>();
  private long nextTicket = 1;
  private boolean tracking;

  L1(int maxEntries, long maxBytes, String epochRecord) {
    this.maxEntries = maxEntries;
    this.maxBytes = maxBytes;
    this.epochRecord = epochRecord;
  }

  synchronized Entry fresh(String id, long boundNanos, boolean exact, long nowNanos) {
    Entry entry = entries.get(id);
    if (entry == null) {
      return null;
    }
    if (exact) {
      return tracking ? entry : null;
    }
    return nowNanos - entry.verifiedNanos() <= boundNanos ? entry : null;
  }

  synchronized void put(String id, String dataKey, byte[] value, List<String> records, long verifiedNanos) {
    insert(id, new Entry(dataKey, value, records, verifiedNanos, size(id, dataKey, value, records)));
  }

  /** What an entry counts against maxBytes: its value, data key, id and record names. */
  private static long size(String id, String dataKey, byte[] value, List<String> records) {
    long n = (long) value.length + dataKey.length() + id.length();
    for (String r : records) {
      n += r.length();
    }
    return n;
  }

  /**
   * Exact L1: called before the read whose result may be cached; 0 while tracking is
   * not on (nothing read then is tracked, so nothing may be cached).
   */
  synchronized long begin(String id, List<String> records) {
    if (!tracking) {
      return 0;
    }
    long ticket = nextTicket++;
    Long previous = pending.put(id, ticket);
    if (previous == null) {
      pendingKeys.put(id, records);
      for (String r : records) {
        byKey.computeIfAbsent(r, k -> new HashSet<>()).add(id);
      }
    }
    return ticket;
  }

  /**
   * Exact L1: caches the value read under {@code ticket} unless Redis reported a
   * change of one of its records since {@link #begin} (which dropped the ticket).
   */
  synchronized void putExact(String id, long ticket, String dataKey, byte[] value, List<String> records, long nowNanos) {
    Long current = pending.get(id);
    if (ticket == 0 || current == null || current != ticket) {
      return;
    }
    dropPending(id);
    // Records only: a data key's own invalidation (another process refilling it, its
    // expiry) says nothing about the versions, so it drops nothing.
    insert(id, new Entry(dataKey, value, records, nowNanos, size(id, dataKey, value, records)));
  }

  private void insert(String id, Entry entry) {
    Entry old = entries.remove(id);
    if (old != null) {
      unindex(id, old.keys());
      bytes -= old.bytes();
    }
    if (entry.bytes() > maxBytes) {
      return; // larger than the whole L1: not kept
    }
    while (!entries.isEmpty() && (entries.size() >= maxEntries || bytes + entry.bytes() > maxBytes)) {
      Iterator<Map.Entry<String, Entry>> oldest = entries.entrySet().iterator();
      Map.Entry<String, Entry> first = oldest.next();
      oldest.remove();
      unindex(first.getKey(), first.getValue().keys());
      bytes -= first.getValue().bytes();
    }
    entries.put(id, entry);
    bytes += entry.bytes();
    for (String k : entry.keys()) {
      byKey.computeIfAbsent(k, x -> new HashSet<>()).add(id);
    }
  }

  /** Drops every entry (and pending read) depending on {@code key}; returns how many entries. */
  synchronized int invalidate(String key) {
    if (key.equals(epochRecord)) {
      return clear();
    }
    Set<String> ids = byKey.get(key);
    if (ids == null) {
      return 0;
    }
    int dropped = 0;
    for (String id : new ArrayList<>(ids)) {
      Entry entry = entries.remove(id);
      if (entry != null) {
        unindex(id, entry.keys());
        bytes -= entry.bytes();
        dropped++;
      }
      if (pending.containsKey(id)) {
        dropPending(id);
      }
    }
    return dropped;
  }

  synchronized int clear() {
    int n = entries.size();
    entries.clear();
    bytes = 0;
    byKey.clear();
    pending.clear();
    pendingKeys.clear();
    return n;
  }

  /**
   * Exact L1: tracking went down or came up again; either way everything goes
   * (nothing read while it was down may be cached). Returns how many entries.
   */
  synchronized int tracking(boolean up) {
    tracking = up;
    return clear();
  }

  synchronized int size() {
    return entries.size();
  }

  synchronized long bytes() {
    return bytes;
  }

  synchronized boolean trackingUp() {
    return tracking;
  }

  private void dropPending(String id) {
    pending.remove(id);
    List<String> keys = pendingKeys.remove(id);
    if (keys != null) {
      // The id may also name a live entry under the same keys: keep those links.
      Entry live = entries.get(id);
      for (String k : keys) {
        if (live == null || !live.keys().contains(k)) {
          unlink(k, id);
        }
      }
    }
  }

  private void unindex(String id, List<String> keys) {
    List<String> stillPending = pendingKeys.get(id);
    for (String k : keys) {
      if (stillPending == null || !stillPending.contains(k)) {
        unlink(k, id);
      }
    }
  }

  private void unlink(String key, String id) {
    Set<String> ids = byKey.get(key);
    if (ids != null) {
      ids.remove(id);
      if (ids.isEmpty()) {
        byKey.remove(key);
      }
    }
  }
}
