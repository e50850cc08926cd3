package io.github.cdcinvalidator.cache;

import static io.github.cdcinvalidator.cache.Support.counter;
import static io.github.cdcinvalidator.cache.Support.unique;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.cdcinvalidator.cache.Support.Redis;
import io.github.cdcinvalidator.cache.Support.Topology;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.Statement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.LongSupplier;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The Java reader with the real daemon: a writer changes a row in PostgreSQL
 * (Debezium, Kafka, cdc-invalidator, Redis) while readers loop; strong readers never
 * serve a value older than the last bump, eventual ones (a bounded L1 with notices,
 * stale-while-revalidate) never one older than the last bump plus their bound.
 * Standalone and Cluster, like tests/integration/readers.rs and the Node package's
 * daemon test. Needs the stack (CDC_* variables of scripts/stack env) and the daemon
 * (CDC_INVALIDATOR_BIN).
 */
class DaemonTest {
  record Read(long startedMicros, long value, long boundMicros) {}

  record Bump(long value, long atMicros) {}

  /** Reads that served a value older than the last bump before them plus their bound. */
  static List<String> violations(List<Bump> bumps, List<Read> reads) {
    List<String> out = new ArrayList<>();
    for (Read r : reads) {
      long due = bumps.stream().filter(b -> b.atMicros() + r.boundMicros() < r.startedMicros())
          .mapToLong(Bump::value).max().orElse(Long.MIN_VALUE);
      if (due != Long.MIN_VALUE && r.value() < due) {
        out.add(r + " should have seen " + due);
      }
    }
    return out;
  }

  @Test
  void theStalenessCheckCanFail() {
    List<Bump> bumps = List.of(new Bump(1, 1_000_000), new Bump(2, 2_000_000));
    Read ok = new Read(2_000_100, 2, 0);
    assertEquals(0, violations(bumps, List.of(ok, new Read(2_000_100, 1, 500))).size());
    assertEquals(1, violations(bumps, List.of(new Read(2_000_100, 1, 0))).size());
  }

  private static String env(String name, String fallback) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? fallback : v;
  }

  private static Connection postgres() throws Exception {
    URI url = URI.create(env("CDC_PG_URL", "postgres://cdc:cdc@127.0.0.1:5432/shop"));
    Properties p = new Properties();
    String[] user = url.getUserInfo() == null ? new String[0] : url.getUserInfo().split(":", 2);
    if (user.length > 0) {
      p.setProperty("user", user[0]);
    }
    if (user.length > 1) {
      p.setProperty("password", user[1]);
    }
    return DriverManager.getConnection("jdbc:postgresql://" + url.getHost() + ":" + url.getPort() + url.getPath(), p);
  }

  private static long eventually(String what, long timeoutMillis, LongSupplier check, Path log) throws Exception {
    long deadline = System.nanoTime() + timeoutMillis * 1_000_000;
    while (true) {
      long v = check.getAsLong();
      if (v >= 0) {
        return v;
      }
      if (System.nanoTime() > deadline) {
        List<String> lines = Files.readAllLines(log);
        throw new AssertionError("timed out after " + timeoutMillis + " ms waiting for " + what + "\n"
            + String.join("\n", lines.subList(Math.max(0, lines.size() - 30), lines.size())));
      }
      Thread.sleep(100);
    }
  }

  @ParameterizedTest
  @EnumSource(Topology.class)
  void readersNeverServeAValueOlderThanTheLastBumpPlusTheirBound(Topology topology) throws Exception {
    Path daemonBin = Path.of(env("CDC_INVALIDATOR_BIN", VectorsTest.root().resolve("target/debug/cdc-invalidator").toString()));
    assertTrue(Files.isExecutable(daemonBin), "the daemon binary " + daemonBin + " (cargo build, or set CDC_INVALIDATOR_BIN)");
    String table = unique("reader_rows_java");
    String prefix = unique("ver") + ":";
    String channel = unique("notices");
    String redisUrl = topology == Topology.STANDALONE
        ? Support.redisUrl()
        : "redis://127.0.0.1:" + Support.clusterUris().get(0).getPort();
    Path dir = Files.createTempDirectory("cdc-cache-java-daemon-");
    Path config = dir.resolve("config.toml");
    Path log = dir.resolve("daemon.log");
    // topic_regex: the daemon picks the topic up once Debezium creates it.
    Files.writeString(config, String.join("\n",
        "[source]",
        "brokers = \"" + env("CDC_KAFKA_BROKERS", "127.0.0.1:9092") + "\"",
        "group_id = \"" + unique("group") + "\"",
        "topic_regex = \"" + env("CDC_TOPIC_PREFIX", "shop") + "\\\\.public\\\\." + table + "\"",
        "[source.librdkafka]",
        "\"topic.metadata.refresh.interval.ms\" = \"1000\"",
        "[redis]",
        "url = \"" + redisUrl + "\"",
        "cluster = " + (topology == Topology.CLUSTER),
        "version_prefix = \"" + prefix + "\"",
        "version_ttl = \"1h\"",
        "max_retry_backoff = \"500ms\"",
        "[admin]",
        "listen = \"127.0.0.1:0\"",
        "[notices]",
        "redis_channel = \"" + channel + "\"",
        "[[entity]]",
        "table = \"public." + table + "\"",
        "namespace = \"" + table + "\"",
        "consistency = \"strong\"",
        "keys = [\"" + table + ":{id}\"]",
        ""), StandardCharsets.UTF_8);

    Process daemon = null;
    try (Redis redis = new Redis(topology); Connection writer = postgres()) {
      try (Statement s = writer.createStatement()) {
        s.execute("CREATE TABLE " + table + " (id integer PRIMARY KEY, price bigint NOT NULL)");
        s.execute("INSERT INTO " + table + " VALUES (1, 0)");
      }
      ProcessBuilder pb = new ProcessBuilder(daemonBin.toString(), "run", "--config", config.toString())
          .redirectErrorStream(true).redirectOutput(log.toFile());
      Map<String, String> environment = pb.environment();
      environment.put("CDC_LOG", "info");
      // The stack's variables override the file: this test's file must win.
      for (String name : List.of("CDC_REDIS_URL", "CDC_KAFKA_BROKERS", "CDC_KAFKA_GROUP", "CDC_ADMIN_LISTEN",
          "CDC_DEAD_LETTERS_URL", "CDC_LOOKUP_URL", "CDC_CONNECT_URL")) {
        environment.remove(name);
      }
      daemon = pb.start();

      String key = table + ":1";
      LongSupplier version = () -> {
        String v = redis.sync.hget(prefix + key, "v");
        return v == null ? -1 : Long.parseLong(v);
      };
      long last = eventually("the seed row bump", 90_000, version, log);

      long boundMillis = 300;
      SimpleMeterRegistry registry = new SimpleMeterRegistry();
      Cache strong = redis.cache(CacheOptions.defaults().name("strong").prefix(prefix).meterRegistry(registry));
      Cache eventual = redis.cache(CacheOptions.defaults().name("eventual").prefix(prefix).meterRegistry(registry)
          .l1(L1Options.bounded(Duration.ofMillis(boundMillis)).notices(channel).maxEntries(100)));
      GetOptions strongGet = GetOptions.ttl(Duration.ofMinutes(1));
      GetOptions eventualGet = strongGet.eventual(Duration.ofMillis(boundMillis));

      AtomicBoolean stop = new AtomicBoolean();
      ConcurrentLinkedQueue<Read> reads = new ConcurrentLinkedQueue<>();
      ConcurrentLinkedQueue<Throwable> errors = new ConcurrentLinkedQueue<>();
      List<Thread> readers = new ArrayList<>();
      for (int i = 0; i < 8; i++) {
        boolean isEventual = i % 2 == 1;
        Thread t = new Thread(() -> {
          try (Connection db = postgres(); Statement q = db.createStatement()) {
            Loader loader = () -> {
              try (ResultSet rs = q.executeQuery("SELECT price FROM " + table + " WHERE id = 1")) {
                rs.next();
                return Long.toString(rs.getLong(1)).getBytes(StandardCharsets.UTF_8);
              }
            };
            while (!stop.get()) {
              // Milliseconds, truncated: never later than the real start, so the check
              // asks nothing of a read that began before a bump.
              long startedMicros = System.currentTimeMillis() * 1000;
              Got got = isEventual ? eventual.get(key, eventualGet, loader) : strong.get(key, strongGet, loader);
              reads.add(new Read(startedMicros, Long.parseLong(got.text()), isEventual ? boundMillis * 1000 : 0));
              Thread.sleep(2);
            }
          } catch (Throwable e) {
            errors.add(e);
          }
        });
        t.start();
        readers.add(t);
      }

      List<Bump> bumps = new ArrayList<>();
      for (int n = 1; n <= 12; n++) {
        try (Statement s = writer.createStatement()) {
          s.executeUpdate("UPDATE " + table + " SET price = " + n + " WHERE id = 1");
        }
        long before = last;
        long moved = eventually("the bump of price " + n, 30_000, () -> {
          long v = version.getAsLong();
          return v > before ? v : -1;
        }, log);
        bumps.add(new Bump(n, moved));
        last = moved;
        Thread.sleep(50 + (n * 37L) % 150);
      }
      Thread.sleep(boundMillis * 2);
      stop.set(true);
      for (Thread t : readers) {
        t.join(30_000);
      }
      assertTrue(errors.isEmpty(), "reader errors: " + errors);
      List<Read> all = new ArrayList<>(reads);
      List<String> bad = violations(bumps, all);
      assertEquals(0, bad.size(), bad.size() + " of " + all.size() + " reads too old, e.g. "
          + bad.subList(0, Math.min(5, bad.size())) + "; bumps " + bumps);
      long lastBump = last;
      List<Read> newest = all.stream().filter(r -> r.startedMicros() > lastBump + boundMillis * 1000).toList();
      assertTrue(!newest.isEmpty() && newest.stream().allMatch(r -> r.value() == 12), "the newest reads serve 12");
      assertTrue(all.size() > 200, "only " + all.size() + " reads");
      assertTrue(counter(registry, CacheMetrics.L1_INVALIDATIONS, "eventual", "reason", "notice") > 0,
          "the L1 heard the notices");
      try (Statement s = writer.createStatement()) {
        s.execute("DROP TABLE " + table);
      }
    } finally {
      if (daemon != null) {
        daemon.destroy();
        daemon.waitFor(10, java.util.concurrent.TimeUnit.SECONDS);
        daemon.destroyForcibly();
      }
    }
  }
}
