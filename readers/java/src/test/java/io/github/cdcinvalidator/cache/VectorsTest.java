package io.github.cdcinvalidator.cache;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.math.BigInteger;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import org.junit.jupiter.api.Test;

/**
 * The shared conformance vectors (readers/spec.md section 12): the same files the
 * Rust crate's tests/vectors.rs and the Node package's vectors test read.
 */
class VectorsTest {
  // Numbers as written: integers beyond 64 bits and decimals stay exact.
  private static final ObjectMapper JSON = new ObjectMapper()
      .enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS)
      .enable(DeserializationFeature.USE_BIG_INTEGER_FOR_INTS);

  static Path root() {
    String fromProperty = System.getProperty("cdc.repo.root");
    Path dir = fromProperty != null ? Path.of(fromProperty) : Path.of("").toAbsolutePath();
    for (Path p = dir; p != null; p = p.getParent()) {
      if (Files.exists(p.resolve("tests/vectors/keys.json"))) {
        return p;
      }
    }
    throw new IllegalStateException("no tests/vectors/keys.json above " + dir);
  }

  private static JsonNode load(String path) throws IOException {
    return JSON.readTree(root().resolve(path).toFile());
  }

  /** A vector's json value as the Java type an application holds for its SQL type. */
  private static Object typed(String type, JsonNode j) {
    switch (type) {
      case "integer":
      case "date":
      case "time":
      case "timestamp":
        return j.isNumber() ? j.bigIntegerValue() : new BigInteger(j.asText());
      case "float64":
        return Double.parseDouble(j.asText());
      case "float32":
        return (float) Double.parseDouble(j.asText());
      case "decimal":
        return Keys.decimal(j.asText());
      case "boolean":
        return j.booleanValue();
      case "timestamptz":
      case "uuid":
      case "text":
        return j.textValue();
      default:
        throw new IllegalArgumentException("unknown vector type " + type);
    }
  }

  @Test
  void keyRenderingMatchesTheDaemonVectors() throws IOException {
    JsonNode vectors = load("tests/vectors/keys.json").get("vectors");
    assertTrue(vectors.size() >= 20);
    int typedToo = 0;
    for (JsonNode v : vectors) {
      String type = v.get("type").asText();
      String name = "vector " + v.get("name").asText();
      String expected = "k:" + v.get("text").asText();
      Object value = typed(type, v.get("json"));
      assertEquals(Optional.of(expected), Keys.key("k:{c}", Map.of("c", value)), name);
      // The same values as richer Java types render the same.
      Object rich = switch (type) {
        case "uuid" -> UUID.fromString(v.get("json").asText());
        case "timestamptz" -> Instant.parse(v.get("json").asText());
        case "integer" -> value instanceof BigInteger b && b.bitLength() < 64 ? (Object) b.longValue() : null;
        case "date" -> java.time.LocalDate.ofEpochDay(((BigInteger) value).longValue());
        case "time" -> java.time.LocalTime.ofNanoOfDay(((BigInteger) value).longValue() * 1000);
        case "timestamp" -> java.time.LocalDateTime.ofEpochSecond(
            Math.floorDiv(((BigInteger) value).longValue(), 1_000_000), 
            (int) Math.floorMod(((BigInteger) value).longValue(), 1_000_000) * 1000, java.time.ZoneOffset.UTC);
        default -> null;
      };
      if (rich != null) {
        typedToo++;
        assertEquals(Optional.of(expected), Keys.key("k:{c}", Map.of("c", rich)), name + " as " + rich.getClass());
      }
    }
    assertTrue(typedToo >= 6, "richer types tried on " + typedToo + " vectors");
  }

  @Test
  void versionTextsParseOrAreRefused() throws IOException {
    for (JsonNode v : load("readers/vectors/versions.json").get("vectors")) {
      String name = "vector " + v.get("name").asText();
      String field = v.get("field").asText();
      String text = v.get("text").isNull() ? null : v.get("text").asText();
      if (v.has("value")) {
        String parsed = Layout.parseVersion("ver:k", field, text);
        assertEquals(v.get("value").asText(), parsed == null ? "0" : parsed, name);
      } else if (v.has("absent")) {
        assertNull(Layout.parseVersion("ver:k", field, text), name);
      } else {
        CacheException e = assertThrows(CacheException.class, () -> Layout.parseVersion("ver:k", field, text), name);
        assertEquals(v.get("error").asText(), e.kind().word(), name);
        assertTrue(e.getMessage().contains("ver:k"), name + ": names the record");
      }
    }
  }

  @Test
  void dataLeaseAndStaleKeysAreNamedAlike() throws IOException {
    JsonNode vectors = load("readers/vectors/data_keys.json").get("vectors");
    assertTrue(vectors.size() >= 5);
    for (JsonNode v : vectors) {
      String name = "vector " + v.get("name").asText();
      List<String> deps = null;
      if (!v.get("deps").isNull()) {
        deps = new ArrayList<>();
        for (JsonNode d : v.get("deps")) {
          deps.add(d.asText());
        }
      }
      List<String> namespaces = new ArrayList<>();
      for (JsonNode n : v.get("namespaces")) {
        namespaces.add(n.asText());
      }
      Layout layout = new Layout(v.get("prefix").asText(), v.get("key").asText(), deps, namespaces);
      List<String> records = new ArrayList<>();
      for (JsonNode r : v.get("records")) {
        records.add(r.asText());
      }
      assertEquals(records, layout.records(), name + ": records");
      JsonNode fieldsJson = v.get("fields");
      String epoch = field(fieldsJson, layout.records().get(0), "e");
      epoch = epoch == null ? "0" : epoch;
      List<Layout.Fields> fields = new ArrayList<>();
      List<String> versions = new ArrayList<>();
      for (String r : layout.records().subList(1, layout.records().size())) {
        String fv = field(fieldsJson, r, "v");
        fields.add(new Layout.Fields(fv == null ? "0" : fv, field(fieldsJson, r, "pv")));
        versions.add(fv == null ? "0" : fv);
      }
      String dataKey = layout.dataKey(epoch, versions);
      assertEquals(v.get("data_key").asText(), dataKey, name + ": data key");
      assertEquals(v.get("lease_key").asText(), Layout.leaseKey(dataKey), name + ": lease key");
      Optional<Layout.StaleKey> stale = layout.staleKey(epoch, fields, Long.parseLong(v.get("now_us").asText()));
      if (v.get("stale_key").isNull()) {
        assertTrue(stale.isEmpty(), name + ": no stale key");
      } else {
        assertEquals(v.get("stale_key").asText(), stale.map(Layout.StaleKey::key).orElse(null), name + ": stale key");
        assertEquals(v.get("stale_age_us").asText(), Long.toString(stale.get().ageMicros()), name + ": age");
      }
    }
  }

  private static String field(JsonNode fields, String record, String field) {
    JsonNode r = fields.get(record);
    if (r == null || r.get(field) == null) {
      return null;
    }
    return Layout.parseVersion(record, field, r.get(field).asText());
  }

  @Test
  void theVectorFilesAreFound() {
    if (!Files.exists(root().resolve("readers/vectors/versions.json"))) {
      fail("readers/vectors/versions.json is missing");
    }
  }
}
