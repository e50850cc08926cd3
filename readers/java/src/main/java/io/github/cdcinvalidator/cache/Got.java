package io.github.cdcinvalidator.cache;

import java.nio.charset.StandardCharsets;

/**
 * A get's result (readers/spec.md section 1).
 *
 * @param value the bytes, as the loader returned them
 * @param hit true when the value did not come from this get's own loader (L1, Redis,
 *     or another get's load)
 * @param dataKey the data key the value is keyed by: it names the versions the value
 *     belongs to
 * @param stale true when the value may be older than the current version: the previous
 *     version's value (stale-while-revalidate) or a bounded L1's entry
 */
public record Got(byte[] value, boolean hit, String dataKey, boolean stale) {
  /** The value decoded as UTF-8. */
  public String text() {
    return new String(value, StandardCharsets.UTF_8);
  }

  @Override
  public String toString() {
    return "Got[" + value.length + " bytes, hit=" + hit + ", dataKey=" + dataKey + ", stale=" + stale + "]";
  }
}
