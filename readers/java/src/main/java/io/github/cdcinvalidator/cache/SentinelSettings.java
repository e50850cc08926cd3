package io.github.cdcinvalidator.cache;

import io.lettuce.core.RedisURI;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;

/**
 * A primary named by Redis Sentinel: the daemon's {@code [redis.sentinel]} settings,
 * same names and meaning (docs/operations.md; readers/spec.md section 14). Immutable;
 * every setter returns a new copy. {@link #toString} never shows a password.
 *
 * <pre>{@code
 * SentinelSettings sentinel = SentinelSettings.of("cdc-redis",
 *     List.of("10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379")).password(secret);
 * Cache cache = Cache.create(sentinel, CacheOptions.defaults());
 * }</pre>
 */
public final class SentinelSettings {
  private final String masterName;
  private final List<String> addresses;
  private String username;
  private String password;
  private String sentinelUsername;
  private String sentinelPassword;
  private boolean tls;
  private int db;

  private SentinelSettings(String masterName, List<String> addresses) {
    this.masterName = masterName;
    this.addresses = List.copyOf(addresses);
  }

  /**
   * The name the Sentinels monitor and the Sentinels' {@code "host:port"} addresses
   * (at least one; three or more in production).
   */
  public static SentinelSettings of(String masterName, List<String> addresses) {
    if (masterName == null || masterName.isEmpty()) {
      throw CacheException.invalid("sentinel: masterName is empty");
    }
    if (addresses == null || addresses.isEmpty()) {
      throw CacheException.invalid("sentinel: addresses is empty (expected at least one \"host:port\")");
    }
    SentinelSettings s = new SentinelSettings(masterName, addresses);
    for (String address : s.addresses) {
      hostAndPort(address);
    }
    return s;
  }

  private SentinelSettings copy() {
    SentinelSettings c = new SentinelSettings(masterName, addresses);
    c.username = username;
    c.password = password;
    c.sentinelUsername = sentinelUsername;
    c.sentinelPassword = sentinelPassword;
    c.tls = tls;
    c.db = db;
    return c;
  }

  /** The primary's and replicas' ACL user. */
  public SentinelSettings username(String value) {
    SentinelSettings c = copy();
    c.username = value;
    return c;
  }

  /** The primary's and replicas' password. */
  public SentinelSettings password(String value) {
    SentinelSettings c = copy();
    c.password = value;
    return c;
  }

  /** The Sentinels' own ACL user. */
  public SentinelSettings sentinelUsername(String value) {
    SentinelSettings c = copy();
    c.sentinelUsername = value;
    return c;
  }

  /** The Sentinels' own password. */
  public SentinelSettings sentinelPassword(String value) {
    SentinelSettings c = copy();
    c.sentinelPassword = value;
    return c;
  }

  /** TLS to the Sentinels and to the data nodes (certificates verified). */
  public SentinelSettings tls(boolean value) {
    SentinelSettings c = copy();
    c.tls = value;
    return c;
  }

  /** The database the version records live in (default 0). */
  public SentinelSettings db(int value) {
    if (value < 0) {
      throw CacheException.invalid("sentinel: db " + value + " is negative");
    }
    SentinelSettings c = copy();
    c.db = value;
    return c;
  }

  public String masterName() {
    return masterName;
  }

  public List<String> addresses() {
    return addresses;
  }

  /**
   * Lettuce's Sentinel URI for these settings (passwords included: never print it).
   * Lettuce asks the Sentinels for the primary at every (re)connection.
   */
  public RedisURI redisUri() {
    RedisURI.Builder b = RedisURI.builder().withSentinelMasterId(masterName).withDatabase(db).withSsl(tls);
    for (RedisURI sentinel : sentinelUris()) {
      b = b.withSentinel(sentinel);
    }
    if (password != null) {
      b = username != null ? b.withAuthentication(username, password) : b.withPassword(password.toCharArray());
    }
    return b.build();
  }

  /** Each Sentinel's own URI, with the Sentinels' credentials. */
  List<RedisURI> sentinelUris() {
    List<RedisURI> out = new ArrayList<>();
    for (String address : addresses) {
      String[] hp = hostAndPort(address);
      RedisURI.Builder sentinel = RedisURI.builder().withHost(hp[0]).withPort(Integer.parseInt(hp[1])).withSsl(tls);
      if (sentinelPassword != null) {
        sentinel = sentinelUsername != null
            ? sentinel.withAuthentication(sentinelUsername, sentinelPassword)
            : sentinel.withPassword(sentinelPassword.toCharArray());
      }
      out.add(sentinel.build());
    }
    return out;
  }

  private static String[] hostAndPort(String address) {
    int at = address == null ? -1 : address.lastIndexOf(':');
    if (at > 0) {
      try {
        int port = Integer.parseInt(address.substring(at + 1));
        if (port > 0 && port < 65536) {
          return new String[] {address.substring(0, at).replaceAll("^\\[(.*)]$", "$1"), Integer.toString(port)};
        }
      } catch (NumberFormatException e) {
        // refused below
      }
    }
    throw CacheException.invalid("sentinel: address \"" + address + "\" is not \"host:port\"");
  }

  @Override
  public String toString() {
    List<String> parts = new ArrayList<>();
    parts.add("masterName=" + masterName);
    parts.add("addresses=" + addresses.stream().collect(Collectors.joining(",")));
    parts.add("username=" + username);
    parts.add("password=" + (password == null ? null : "<redacted>"));
    parts.add("sentinelUsername=" + sentinelUsername);
    parts.add("sentinelPassword=" + (sentinelPassword == null ? null : "<redacted>"));
    parts.add("tls=" + tls);
    parts.add("db=" + db);
    return "SentinelSettings{" + String.join(", ", parts) + "}";
  }
}
