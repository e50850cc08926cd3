package io.github.cdcinvalidator.cache;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.LocalTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.junit.jupiter.api.Test;

/** Java values rendered like the daemon (docs/key-rendering.md), beyond the shared vectors. */
class KeysTest {
  private static String one(Object value) {
    Map<String, Object> values = new HashMap<>();
    values.put("x", value);
    return Keys.key("n:{x}", values).orElse(null);
  }

  @Test
  void decimalsRenderPlainWithTheirScaleWhateverTheNotation() {
    assertEquals("n:1000", one(Keys.decimal("1E+3")));
    assertEquals("n:0.015", one(Keys.decimal("1.5E-2")));
    assertEquals("n:12.50", one(new BigDecimal("12.50")));
    assertEquals("n:1000", one(new BigDecimal("1E+3")));
    assertEquals("n:0.00", one(Keys.decimal("-0.00")));
    assertEquals("n:12.5", one(Keys.decimal("+0012.5")));
    assertEquals("n:12.50", one(Keys.decimal(new BigDecimal("12.5"), 2)));
    assertThrows(KeyException.class, () -> Keys.decimal(new BigDecimal("12.555"), 2));
    assertThrows(KeyException.class, () -> Keys.decimal("12,5"));
  }

  @Test
  void integersAreExact() {
    assertEquals("n:-7", one(-7));
    assertEquals("n:9223372036854775807", one(Long.MAX_VALUE));
    assertEquals("n:18446744073709551617", one(new BigInteger("18446744073709551617")));
    assertEquals("n:3", one((short) 3));
    assertEquals("n:-128", one((byte) -128));
  }

  @Test
  void floatsAreShortestAndPlain() {
    assertEquals("n:1024", one(1024.0));
    assertEquals("n:0", one(-0.0));
    assertEquals("n:0.0000001", one(1e-7));
    assertEquals("n:-15000000000000000000000", one(-1.5e22));
    // Java 17's Double.toString prints 2.82879384806159008E17 here: not the shortest.
    assertEquals("n:282879384806159000", one(2.82879384806159E17));
    assertEquals("n:NaN", one(Double.NaN));
    assertEquals("n:-Infinity", one(Double.NEGATIVE_INFINITY));
    assertEquals("n:0.1", one(0.1f));
    assertEquals("n:16777216", one(16777217f));
    assertEquals("n:340282350000000000000000000000000000000", one(Float.MAX_VALUE));
    assertEquals("n:0.000000000000000000000000000000000000000000001", one(Float.MIN_VALUE));
    assertEquals("n:123456.79", one(123456.79f));
    assertEquals("n:Infinity", one(Float.POSITIVE_INFINITY));
  }

  @Test
  void doublesMatchShortestRoundTripDigitsEverywhere() throws IOException {
    int n = 0;
    try (BufferedReader in = new BufferedReader(new InputStreamReader(
        KeysTest.class.getResourceAsStream("/float64_shortest.txt"), StandardCharsets.UTF_8))) {
      for (String line = in.readLine(); line != null; line = in.readLine()) {
        if (line.startsWith("#")) {
          continue;
        }
        String[] parts = line.split(" ");
        double d = Double.longBitsToDouble(Long.parseUnsignedLong(parts[0], 16));
        assertEquals(parts[1], Keys.render(d), "bits " + parts[0]);
        n++;
      }
    }
    assertTrue(n > 2000, n + " doubles");
  }

  @Test
  void textTimesAndUuidsRenderLikeDebezium() {
    assertEquals("pair:1:2%3A3", Keys.key("pair:{a}:{b}", Map.of("a", "1", "b", "2:3")).get());
    assertEquals("pair:1%3A2:3", Keys.key("pair:{a}:{b}", Map.of("a", "1:2", "b", "3")).get());
    assertEquals("n:Caf%C3%A9".replace("%C3%A9", "é"), one("Café"));
    assertEquals("n:%7F%00%25", one("\u007f\u0000%"));
    assertEquals("n:2024-02-18T16%3A00%3A00.120000Z", one(Instant.parse("2024-02-18T16:00:00.120Z")));
    assertEquals("n:2024-02-18T16%3A00%3A00.000001Z",
        one(OffsetDateTime.of(2024, 2, 18, 18, 0, 0, 1000, ZoneOffset.ofHours(2))));
    assertEquals("n:19771", one(LocalDate.of(2024, 2, 18)));
    assertEquals("n:3723000000", one(LocalTime.of(1, 2, 3)));
    assertEquals("n:1708272000000000", one(LocalDateTime.of(2024, 2, 18, 16, 0)));
    assertEquals("n:-1", one(LocalDateTime.of(1969, 12, 31, 23, 59, 59, 999_999_000)));
    assertThrows(KeyException.class, () -> one(Instant.ofEpochSecond(0, 1)));
    assertThrows(KeyException.class, () -> one(new Object()));
    assertEquals("n:true", one(true));
  }

  @Test
  void templatesParseLikeTheDaemon() {
    assertEquals(Optional.of("{tag}:a"), Keys.key("{{tag}}:{id}", Map.of("id", "a")));
    assertEquals(Optional.of("größe:1"), Keys.key("größe:{ id }", Map.of("id", 1)));
    assertEquals(Optional.empty(), one(null) == null ? Optional.empty() : Optional.of("x"));
    assertEquals(List.of("a", "b"), KeyTemplate.parse("p:{a}:{b}").columns());
    assertTrue(assertThrows(KeyException.class, () -> KeyTemplate.parse("p:{id")).getMessage().contains("unclosed `{` at byte 2"));
    assertTrue(assertThrows(KeyException.class, () -> KeyTemplate.parse("p:{}")).getMessage().contains("empty `{}` at byte 2"));
    assertTrue(assertThrows(KeyException.class, () -> KeyTemplate.parse("p:}")).getMessage().contains("unmatched `}` at byte 2"));
    assertTrue(assertThrows(KeyException.class, () -> KeyTemplate.parse("ü:}")).getMessage().contains("at byte 3"));
    assertTrue(assertThrows(KeyException.class, () -> Keys.key("p:{id}", Map.of())).getMessage()
        .contains("\"p:{id}\": no value for column \"id\""));
  }
}
