package io.github.cdcinvalidator.cache;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.util.List;
import org.junit.jupiter.api.Test;

/** The L1 without Redis: the tracking race, bounds, invalidation. */
class L1Test {
  private static final List<String> RECORDS = List.of("ver:epoch", "ver:product:1");

  @Test
  void aReadBegunBeforeAnInvalidationOfItsRecordsInstallsNothing() {
    L1 l1 = new L1(100, 1 << 20, "ver:epoch");
    l1.tracking(true);
    long ticket = l1.begin("k", RECORDS);
    l1.invalidate("ver:product:1");
    l1.putExact("k", ticket, "k@e0:v1", new byte[] {1}, RECORDS, 0);
    assertNull(l1.fresh("k", 0, true, 0));

    long fresh = l1.begin("k", RECORDS);
    l1.putExact("k", fresh, "k@e0:v2", new byte[] {2}, RECORDS, 0);
    assertNotNull(l1.fresh("k", 0, true, 0));
    // A data key's own invalidation drops nothing; a record's drops the entry.
    assertEquals(0, l1.invalidate("k@e0:v2"));
    assertEquals(1, l1.invalidate("ver:product:1"));
    assertNull(l1.fresh("k", 0, true, 0));
  }

  @Test
  void aFlushOrTrackingDownSpoilsReadsInFlight() {
    L1 l1 = new L1(100, 1 << 20, "ver:epoch");
    l1.tracking(true);
    long ticket = l1.begin("k", RECORDS);
    l1.tracking(false);
    l1.tracking(true);
    l1.putExact("k", ticket, "k@e0:v1", new byte[] {1}, RECORDS, 0);
    assertNull(l1.fresh("k", 0, true, 0));
    l1.tracking(false);
    assertEquals(0, l1.begin("k", RECORDS), "no ticket while tracking is down");
  }

  @Test
  void theEpochRecordDropsEverything() {
    L1 l1 = new L1(100, 1 << 20, "ver:epoch");
    l1.put("a", "a@e0:v1", new byte[1], List.of("ver:epoch", "ver:a"), 0);
    l1.put("b", "b@e0:v1", new byte[1], List.of("ver:epoch", "ver:b"), 0);
    assertEquals(2, l1.invalidate("ver:epoch"));
    assertEquals(0, l1.size());
  }

  @Test
  void entriesAndBytesAreBoundedOldestFirst() {
    L1 l1 = new L1(3, 1000, "ver:epoch");
    for (int i = 0; i < 5; i++) {
      l1.put("k" + i, "d", new byte[10], List.of("r"), 0);
    }
    assertEquals(3, l1.size());
    assertNull(l1.fresh("k0", 10, false, 0));
    assertNotNull(l1.fresh("k4", 10, false, 0));

    L1 small = new L1(100, 100, "ver:epoch");
    small.put("a", "d", new byte[60], List.of("r"), 0);
    small.put("b", "d", new byte[60], List.of("r"), 0);
    assertEquals(1, small.size(), "the oldest went to make room");
    assertNotNull(small.fresh("b", 10, false, 0));
    small.put("huge", "d", new byte[500], List.of("r"), 0);
    assertNull(small.fresh("huge", 10, false, 0), "an entry larger than the L1 is not kept");
    assertEquals(1, small.size());
    assertEquals(60 + 1 + 1 + 1, small.bytes());
  }

  @Test
  void boundedEntriesServeWithinTheirBound() {
    L1 l1 = new L1(10, 1 << 20, "ver:epoch");
    l1.put("k", "k@e0:v1", new byte[1], RECORDS, 1_000);
    assertNotNull(l1.fresh("k", 500, false, 1_500));
    assertNull(l1.fresh("k", 500, false, 1_501));
  }
}
