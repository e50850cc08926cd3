package io.github.cdcinvalidator.cache;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.concurrent.ThreadLocalRandom;

/**
 * The stored form of a value (readers/spec.md section 7): {@code c1:<delta ms>:}
 * then the value's bytes, delta being the loader's duration. A value without
 * that prefix (filled by hand) is returned whole and never refreshed early.
 */
final class Envelope {
  private Envelope() {}

  record Decoded(long deltaMillis, byte[] value) {}

  static byte[] encode(long deltaMillis, byte[] value) {
    byte[] head = ("c1:" + Math.max(0, deltaMillis) + ":").getBytes(StandardCharsets.US_ASCII);
    byte[] out = Arrays.copyOf(head, head.length + value.length);
    System.arraycopy(value, 0, out, head.length, value.length);
    return out;
  }

  static Decoded decode(byte[] raw) {
    if (raw.length > 3 && raw[0] == 'c' && raw[1] == '1' && raw[2] == ':') {
      int colon = 3;
      while (colon < raw.length && colon < 3 + 20 && raw[colon] >= '0' && raw[colon] <= '9') {
        colon++;
      }
      int digits = colon - 3;
      if (digits >= 1 && digits <= 19 && colon < raw.length && raw[colon] == ':') {
        long delta = 0;
        for (int i = 3; i < colon; i++) {
          delta = delta * 10 + (raw[i] - '0');
          if (delta < 0) {
            return new Decoded(0, raw); // beyond a long: not our envelope
          }
        }
        return new Decoded(delta, Arrays.copyOfRange(raw, colon + 1, raw.length));
      }
    }
    return new Decoded(0, raw);
  }

  /** XFetch: refresh when {@code delta * beta * -ln(u) >= ttl left}, u uniform in (0, 1]. */
  static boolean xfetchDue(long deltaMillis, double beta, long pttlMillis) {
    double u = 1.0 - ThreadLocalRandom.current().nextDouble();
    return deltaMillis * beta * -Math.log(u) >= pttlMillis;
  }
}
