package io.github.cdcinvalidator.cache;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.math.MathContext;
import java.math.RoundingMode;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.LocalTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;

/**
 * Cache keys rendered exactly as the daemon renders its templates
 * (docs/key-rendering.md, tests/vectors/keys.json; the daemon's code is
 * src/graph/template.rs). A reader that renders {@code product:{id}}
 * differently from the daemon reads a version record nobody bumps.
 *
 * <p>Java values and the SQL types they stand for: {@code Integer}, {@code
 * Long}, {@code Short}, {@code Byte}, {@code BigInteger} (integers, exact);
 * {@code Double} ({@code double precision}); {@code Float} ({@code real});
 * {@code BigDecimal} ({@code numeric}, plain notation with its scale);
 * {@code Boolean}; {@code String} and {@code Character} (text, escaped);
 * {@code UUID}; {@code Instant}, {@code OffsetDateTime}, {@code
 * ZonedDateTime} ({@code timestamptz}); {@code LocalDate} ({@code date}, days
 * since 1970-01-01); {@code LocalTime} ({@code time}, microseconds since
 * midnight); {@code LocalDateTime} ({@code timestamp}, microseconds since the
 * epoch); {@code null} (SQL NULL: the template names no key). Anything else
 * is refused rather than guessed.
 */
public final class Keys {
  private static final DateTimeFormatter ZONED =
      DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.SSSSSS'Z'").withZone(ZoneOffset.UTC);

  private Keys() {}

  /** {@code Keys.key("product:{id}", Map.of("id", 42))} is {@code product:42}; empty for SQL NULL. */
  public static Optional<String> key(String template, Map<String, ?> values) {
    return KeyTemplate.parse(template).render(values);
  }

  /** A {@code numeric} given as text in any notation: {@code "1E+3"} renders {@code 1000}. */
  public static BigDecimal decimal(String text) {
    try {
      return new BigDecimal(text);
    } catch (NumberFormatException e) {
      throw new KeyException(Layout.quote(text) + " is not a decimal number");
    }
  }

  /**
   * A {@code numeric(p, s)} value at its column's scale, as the database stores it
   * and Debezium prints it: {@code decimal(new BigDecimal("12.5"), 2)} renders
   * {@code 12.50}.
   *
   * @throws KeyException when the value has more fractional digits than the scale
   */
  public static BigDecimal decimal(BigDecimal value, int columnScale) {
    try {
      return value.setScale(columnScale, RoundingMode.UNNECESSARY);
    } catch (ArithmeticException e) {
      throw new KeyException(value.toPlainString() + " does not fit the scale " + columnScale);
    }
  }

  /** The canonical text of one value; null for SQL NULL. */
  public static String render(Object value) {
    if (value == null) {
      return null;
    }
    if (value instanceof String s) {
      return escape(s);
    }
    if (value instanceof Integer || value instanceof Long || value instanceof Short || value instanceof Byte) {
      return Long.toString(((Number) value).longValue());
    }
    if (value instanceof BigInteger b) {
      return b.toString();
    }
    if (value instanceof Double d) {
      return float64(d);
    }
    if (value instanceof Float f) {
      return float32(f);
    }
    if (value instanceof BigDecimal d) {
      // Debezium's string mode is toPlainString: plain notation, scale kept.
      return d.toPlainString();
    }
    if (value instanceof Boolean b) {
      return b.toString();
    }
    if (value instanceof Character c) {
      return escape(c.toString());
    }
    if (value instanceof UUID u) {
      return u.toString();
    }
    if (value instanceof Instant i) {
      return zoned(i);
    }
    if (value instanceof OffsetDateTime t) {
      return zoned(t.toInstant());
    }
    if (value instanceof ZonedDateTime t) {
      return zoned(t.toInstant());
    }
    if (value instanceof LocalDate d) {
      return Long.toString(d.toEpochDay());
    }
    if (value instanceof LocalTime t) {
      wholeMicros(t.getNano(), t);
      return Long.toString(t.toNanoOfDay() / 1000);
    }
    if (value instanceof LocalDateTime t) {
      wholeMicros(t.getNano(), t);
      Instant i = t.toInstant(ZoneOffset.UTC);
      return BigInteger.valueOf(i.getEpochSecond())
          .multiply(BigInteger.valueOf(1_000_000))
          .add(BigInteger.valueOf(i.getNano() / 1000))
          .toString();
    }
    throw new KeyException(
        "a " + value.getClass().getName() + " has no canonical key text (see the Keys class for the types taken)");
  }

  /** timestamptz: UTC with exactly six fractional digits, then escaped like any text. */
  private static String zoned(Instant i) {
    wholeMicros(i.getNano(), i);
    return escape(ZONED.format(i));
  }

  // The database keeps microseconds: a finer value is not one it holds, and
  // rounding it here could name another row's key.
  private static void wholeMicros(int nanos, Object value) {
    if (nanos % 1000 != 0) {
      throw new KeyException(value + " has a fraction finer than a microsecond, which the database does not hold");
    }
  }

  /**
   * {@code %}, {@code :}, <code>{</code>, <code>}</code> and the control
   * characters U+0000 to U+001F and U+007F as {@code %XX}: text can never be
   * mistaken for key structure.
   */
  public static String escape(String text) {
    int i = 0;
    while (i < text.length() && !reserved(text.charAt(i))) {
      i++;
    }
    if (i == text.length()) {
      return text;
    }
    StringBuilder out = new StringBuilder(text.length() + 8).append(text, 0, i);
    for (; i < text.length(); i++) {
      char c = text.charAt(i);
      if (reserved(c)) {
        out.append('%').append(Character.toUpperCase(Character.forDigit(c >> 4, 16)))
            .append(Character.toUpperCase(Character.forDigit(c & 0xf, 16)));
      } else {
        out.append(c);
      }
    }
    return out.toString();
  }

  private static boolean reserved(char c) {
    return c == '%' || c == ':' || c == '{' || c == '}' || c < 0x20 || c == 0x7f;
  }

  /**
   * A double's shortest round-trip digits in plain notation, as the daemon (Rust's
   * {@code Display}) prints it: {@code 1024}, {@code 0.1}, {@code
   * 1000000000000000000000}. Not {@code Double.toString}: Java 17's is not
   * always the shortest and uses exponents.
   */
  static String float64(double d) {
    if (Double.isNaN(d)) {
      return "NaN";
    }
    if (Double.isInfinite(d)) {
      return d > 0 ? "Infinity" : "-Infinity";
    }
    if (d == 0) {
      return "0";
    }
    return shortest(new BigDecimal(d), 17, c -> Double.parseDouble(c) == d);
  }

  /** A float's shortest digits that read back as the same float ({@code 0.1}, not 0.10000000149011612). */
  static String float32(float f) {
    if (Float.isNaN(f)) {
      return "NaN";
    }
    if (Float.isInfinite(f)) {
      return f > 0 ? "Infinity" : "-Infinity";
    }
    if (f == 0) {
      return "0";
    }
    return shortest(new BigDecimal(f), 9, c -> Float.parseFloat(c) == f);
  }

  private interface RoundTrip {
    boolean holds(String candidate);
  }

  /**
   * The fewest significant digits that read back as the value, and among those the
   * nearest to it. Rounding to p digits gives the nearest p-digit decimal; where the
   * rounding interval is lopsided (at a power of two) that one can fall outside while
   * a neighbour lies inside, so the neighbours are tried before adding a digit.
   */
  private static String shortest(BigDecimal exact, int maxDigits, RoundTrip reads) {
    for (int p = 1; p <= maxDigits; p++) {
      BigDecimal nearest = exact.round(new MathContext(p, RoundingMode.HALF_EVEN));
      if (reads.holds(nearest.toString())) {
        return plain(nearest);
      }
      BigDecimal step = BigDecimal.ONE.scaleByPowerOfTen(-nearest.scale());
      BigDecimal best = null;
      for (BigDecimal candidate : new BigDecimal[] {nearest.subtract(step), nearest.add(step)}) {
        if (candidate.precision() <= p && candidate.signum() != 0 && reads.holds(candidate.toString())) {
          if (best == null
              || candidate.subtract(exact).abs().compareTo(best.subtract(exact).abs()) < 0) {
            best = candidate;
          }
        }
      }
      if (best != null) {
        return plain(best);
      }
    }
    return plain(exact.round(new MathContext(maxDigits, RoundingMode.HALF_EVEN)));
  }

  private static String plain(BigDecimal value) {
    BigDecimal stripped = value.stripTrailingZeros();
    return stripped.scale() < 0 ? stripped.setScale(0).toPlainString() : stripped.toPlainString();
  }

  /** UTF-8 length of a prefix, for messages that give byte offsets like the daemon's. */
  static int utf8Length(String text, int end) {
    return text.substring(0, end).getBytes(StandardCharsets.UTF_8).length;
  }
}
