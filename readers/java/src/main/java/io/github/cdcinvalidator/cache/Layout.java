package io.github.cdcinvalidator.cache;

import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Optional;

/**
 * The records a get reads and the data, lease and stale keys named from
 * their versions (readers/spec.md sections 2, 3 and 6). Pure: the
 * conformance vectors test it without Redis.
 */
public final class Layout {
  private static final BigInteger MAX_VERSION = BigInteger.valueOf(Long.MAX_VALUE);

  private final String key;
  private final List<String> records;
  private final int deps;

  /**
   * @param deps the cache keys the value depends on; null means {@code [key]}
   * @throws CacheException {@code invalid_options} for an empty or reserved key or
   *     dependency, an empty deps list, an empty namespace name
   */
  public Layout(String prefix, String key, List<String> deps, List<String> namespaces) {
    if (key == null || key.isEmpty()) {
      throw CacheException.invalid("the cache key is empty");
    }
    if (reserved(key)) {
      throw CacheException.invalid("cache key " + quote(key) + " is reserved (the epoch and namespace records)");
    }
    List<String> own = deps == null ? List.of(key) : deps;
    if (own.isEmpty()) {
      throw CacheException.invalid(
          "key " + quote(key) + ": deps is empty (a value that depends on no record is never invalidated;"
              + " leave deps out to mean [the key])");
    }
    List<String> out = new ArrayList<>(1 + own.size() + namespaces.size());
    out.add(prefix + "epoch");
    for (String dep : own) {
      if (dep == null || dep.isEmpty()) {
        throw CacheException.invalid("key " + quote(key) + ": a dependency name is empty");
      }
      if (reserved(dep)) {
        throw CacheException.invalid(
            "key " + quote(key) + ": dependency " + quote(dep) + " is reserved (the epoch and namespace records)");
      }
      out.add(prefix + dep);
    }
    for (String namespace : namespaces) {
      if (namespace == null || namespace.isEmpty()) {
        throw CacheException.invalid("key " + quote(key) + ": a namespace name is empty");
      }
      out.add(prefix + "ns:" + namespace);
    }
    this.key = key;
    this.records = Collections.unmodifiableList(out);
    this.deps = own.size();
  }

  private static boolean reserved(String name) {
    return name.equals("epoch") || name.startsWith("ns:");
  }

  static String quote(String text) {
    StringBuilder out = new StringBuilder(text.length() + 2).append('"');
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (c == '"' || c == '\\') {
        out.append('\\').append(c);
      } else if (c < 0x20 || c == 0x7f) {
        out.append(String.format("\\u%04x", (int) c));
      } else {
        out.append(c);
      }
    }
    return out.append('"').toString();
  }

  public String key() {
    return key;
  }

  /** The records read, in order: the epoch, the deps, the namespaces. */
  public List<String> records() {
    return records;
  }

  /** How many of {@code records().subList(1, ...)} are deps. */
  public int deps() {
    return deps;
  }

  /** One version record's fields: {@code v} (missing is "0") and {@code pv} (null: none). */
  public record Fields(String v, String pv) {}

  /** The previous version's data key and how old the last bump is at the server time read. */
  public record StaleKey(String key, long ageMicros) {}

  /**
   * A version field's canonical text, or null when the field is missing.
   *
   * @throws CacheException {@code bad_version} for anything but 0 to 2^63-1 in canonical digits
   */
  public static String parseVersion(String record, String field, String text) {
    if (text == null) {
      return null;
    }
    boolean canonical = !text.isEmpty() && text.length() <= 19;
    for (int i = 0; canonical && i < text.length(); i++) {
      char c = text.charAt(i);
      canonical = c >= '0' && c <= '9' && !(i == 0 && c == '0' && text.length() > 1);
    }
    if (!canonical || (text.length() == 19 && new BigInteger(text).compareTo(MAX_VERSION) > 0)) {
      throw new CacheException(
          CacheException.Kind.BAD_VERSION,
          "version record " + quote(record) + ": field " + quote(field) + " holds " + quote(text)
              + ", not a version (decimal digits, 0 to 2^63-1, no leading zero)");
    }
    return text;
  }

  /** {@code K@e<e>:v<..>...:n<..>...}; {@code versions} are the records after the epoch. */
  public String dataKey(String epoch, List<String> versions) {
    StringBuilder out = new StringBuilder(key.length() + 24 * (versions.size() + 1));
    out.append(key).append("@e").append(epoch);
    for (int i = 0; i < versions.size(); i++) {
      out.append(i < deps ? ":v" : ":n").append(versions.get(i));
    }
    return out.toString();
  }

  public static String leaseKey(String dataKey) {
    return dataKey + ":lease";
  }

  /**
   * The previous version's data key (section 6): the record bumped last, alone at
   * the highest version, rolled back to its {@code pv}; none when the epoch is the
   * newest, two records tie, the highest is 0 or it has no {@code pv}.
   */
  public Optional<StaleKey> staleKey(String epoch, List<Fields> fields, long nowMicros) {
    long highest = 0;
    int at = -1;
    boolean tie = false;
    for (int i = 0; i < fields.size(); i++) {
      long v = Long.parseLong(fields.get(i).v());
      if (v > highest) {
        highest = v;
        at = i;
        tie = false;
      } else if (v == highest && v != 0) {
        tie = true;
      }
    }
    if (at < 0 || tie || Long.parseLong(epoch) >= highest) {
      return Optional.empty();
    }
    String previous = fields.get(at).pv();
    if (previous == null) {
      return Optional.empty();
    }
    List<String> versions = new ArrayList<>(fields.size());
    for (int i = 0; i < fields.size(); i++) {
      versions.add(i == at ? previous : fields.get(i).v());
    }
    return Optional.of(new StaleKey(dataKey(epoch, versions), Math.max(0, nowMicros - highest)));
  }
}
