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
  record Entry(String dataKey, byte[] value, List<String> keys, long verifiedNanos) {}

  private final int maxEntries;
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

  L1(int maxEntries, String epochRecord) {
    this.maxEntries = maxEntries;
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
    insert(id, new Entry(dataKey, value, records, verifiedNanos));
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
    List<String> keys = new ArrayList<>(records.size() + 1);
    keys.addAll(records);
    keys.add(dataKey);
    insert(id, new Entry(dataKey, value, keys, nowNanos));
  }

  private void insert(String id, Entry entry) {
    Entry old = entries.remove(id);
    if (old != null) {
      unindex(id, old.keys());
    }
    while (entries.size() >= maxEntries) {
      Iterator<Map.Entry<String, Entry>> oldest = entries.entrySet().iterator();
      Map.Entry<String, Entry> first = oldest.next();
      oldest.remove();
      unindex(first.getKey(), first.getValue().keys());
    }
    entries.put(id, entry);
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
    byKey.clear();
    pending.clear();
    pendingKeys.clear();
    return n;
  }

  /** Exact L1: tracking went off (clears everything) or on again. */
  synchronized int tracking(boolean on) {
    tracking = on;
    return on ? 0 : clear();
  }

  synchronized int size() {
    return entries.size();
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
