package io.github.cdcinvalidator.cache;

import static io.github.cdcinvalidator.cache.Support.unique;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.lettuce.core.RedisClient;
import io.lettuce.core.RedisURI;
import io.lettuce.core.ScriptOutputType;
import io.lettuce.core.api.StatefulRedisConnection;
import io.lettuce.core.api.sync.RedisCommands;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import java.util.function.Supplier;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Redis Sentinel (readers/spec.md section 14): a cache built from {@link
 * SentinelSettings} on a private primary, replica and three Sentinels
 * (readers/testing/sentinel-topology.sh; ports from {@code -Dcdc.sentinel.port},
 * default 26540, up to +4) follows a failover without a new client.
 */
class SentinelTest {
  private static final int BASE = Integer.getInteger("cdc.sentinel.port", 26540);
  /**
   * A failover is followed within this long after the Sentinels name the new primary:
   * Lettuce's Master/Replica topology refresh runs at most once per 5 s, and a Sentinel
   * demotes the old primary (killing its clients, which would move any client) only
   * about 8 s after the switch, so this bound tells the two apart.
   */
  private static final Duration FAILOVER_BOUND = Duration.ofSeconds(6);
  private static final GetOptions TTL = GetOptions.ttl(Duration.ofMinutes(1));

  private record Run(int status, String out) {}

  private static Run topology(String... args) throws IOException, InterruptedException {
    Path script = VectorsTest.root().resolve("readers/testing/sentinel-topology.sh");
    String[] command = new String[args.length + 1];
    command[0] = script.toString();
    System.arraycopy(args, 0, command, 1, args.length);
    Process p = new ProcessBuilder(command).redirectError(ProcessBuilder.Redirect.INHERIT).start();
    byte[] out = p.getInputStream().readAllBytes();
    if (!p.waitFor(90, TimeUnit.SECONDS)) {
      p.destroyForcibly();
      throw new IllegalStateException("sentinel-topology.sh " + String.join(" ", args) + " did not end");
    }
    return new Run(p.exitValue(), new String(out, StandardCharsets.UTF_8).trim());
  }

  /**
   * Retries every 100 ms until {@code get} succeeds with a result {@code done} accepts,
   * or the bound passes (then the last result or error is returned or thrown).
   */
  private static Got until(Supplier<Got> get, Predicate<Got> done) throws InterruptedException {
    long deadline = System.nanoTime() + FAILOVER_BOUND.toNanos();
    while (true) {
      try {
        Got got = get.get();
        if (done.test(got) || System.nanoTime() > deadline) {
          return got;
        }
      } catch (RuntimeException e) {
        if (System.nanoTime() > deadline) {
          throw e;
        }
      }
      Thread.sleep(100);
    }
  }

  private static Loader loading(String text) {
    return () -> text.getBytes(StandardCharsets.UTF_8);
  }

  @Test
  void settingsHidePasswordsAndRefuseBadAddresses() {
    SentinelSettings s = SentinelSettings.of("m", List.of("h:1")).password("data-secret").sentinelPassword("sentinel-secret");
    assertFalse(s.toString().contains("secret"), s.toString());
    assertTrue(s.toString().contains("<redacted>"), s.toString());
    assertThrows(CacheException.class, () -> SentinelSettings.of("m", List.of("h")));
    assertThrows(CacheException.class, () -> SentinelSettings.of("", List.of("h:1")));
  }

  @Test
  void aReadAndAFillSucceedOnTheNewPrimaryAfterAFailover(@TempDir Path dir) throws Exception {
    Path topologyDir = dir.resolve("sentinel");
    try {
      Run started = topology("start", Integer.toString(BASE), topologyDir.toString());
      Assumptions.assumeFalse(started.status() == 3, "redis-sentinel is not installed: the Sentinel failover test needs it");
      assertEquals(0, started.status(), "sentinel-topology.sh start");
      failover(Arrays.asList(started.out().split(",")));
    } finally {
      topology("stop", Integer.toString(BASE), topologyDir.toString());
    }
  }

  private void failover(List<String> sentinels) throws Exception {
    String prefix = unique("ver") + ":";
    String key = unique("product") + ":1";
    SentinelSettings settings = SentinelSettings.of("cdc-readers", sentinels);
    CacheOptions options = CacheOptions.defaults().name("sentinel").prefix(prefix).meterRegistry(new SimpleMeterRegistry());
    RedisClient plain = RedisClient.create();
    // With the exact L1, whose tracking connection must follow the primary too.
    CacheOptions trackedOptions = options.name("sentinel-tracked").l1(L1Options.tracking());
    try (Cache cache = Cache.create(settings, options);
        Cache tracked = Cache.create(settings, trackedOptions);
        StatefulRedisConnection<String, String> old = plain.connect(RedisURI.create("127.0.0.1", BASE));
        StatefulRedisConnection<String, String> promoted = plain.connect(RedisURI.create("127.0.0.1", BASE + 1))) {
      RedisCommands<String, String> neu = promoted.sync();
      // A version the replica acknowledged (WAIT 1, same connection) before the failover.
      long v1 = bump(old.sync(), prefix, key, 1);
      assertTrue(old.sync().waitForReplication(1, 5000) >= 1, "WAIT 1");
      Got before = cache.get(key, TTL, loading("before"));
      assertFalse(before.hit());
      assertTrue(before.dataKey().endsWith(":v" + v1), before.dataKey());
      for (int i = 0; i < 2; i++) {
        assertEquals(before.dataKey(), tracked.get(key, TTL, loading("unused")).dataKey());
      }
      long replicated = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
      while (!String.valueOf(neu.get(before.dataKey())).endsWith(":before")) {
        assertTrue(System.nanoTime() < replicated, "the replica never received the fill");
        Thread.sleep(20);
      }

      Run failover = topology("failover", Integer.toString(BASE));
      assertEquals(0, failover.status(), "sentinel-topology.sh failover");
      assertEquals(Integer.toString(BASE + 1), failover.out(), "the replica was promoted");

      // The version written before the failover, read from the new primary.
      Got read = until(() -> cache.get(key, TTL, loading("unused")), got -> true);
      assertTrue(read.hit(), read.toString());
      assertEquals(before.dataKey(), read.dataKey());
      assertEquals("before", read.text());

      // A bump written straight to the new primary: a cache still reading the old
      // one (not yet demoted) does not see it, and Lettuce moves within its refresh
      // window. Then the lease and the fill there.
      long v2 = bump(neu, prefix, key, 2);
      Got filled = until(() -> cache.get(key, TTL, loading("after")), got -> got.dataKey().endsWith(":v" + v2));
      assertFalse(filled.hit(), filled.toString());
      assertEquals("after", filled.text());
      assertTrue(filled.dataKey().endsWith(":v" + v2), filled.dataKey());
      assertTrue(String.valueOf(neu.get(filled.dataKey())).endsWith(":after"), "filled on the new primary");
      assertEquals(0L, neu.exists(filled.dataKey() + ":lease"), "no lease left behind");
      // The exact L1 let go of the old primary's entry.
      Got seen = until(() -> tracked.get(key, TTL, loading("unused")), got -> got.dataKey().endsWith(":v" + v2));
      assertEquals(filled.dataKey(), seen.dataKey());
      assertEquals("after", seen.text());
    } finally {
      plain.shutdown();
    }
  }

  private static long bump(RedisCommands<String, String> redis, String prefix, String key, long position) {
    List<Object> reply = redis.eval(Support.script("src/sink/bump.lua"), ScriptOutputType.MULTI,
        new String[] {prefix + key}, "600000", "p:test", String.format("%020d", position));
    // Per record the new version (a string) when applied, 0 when not.
    Object first = reply.get(0);
    assertFalse(first instanceof Long, "bump applied");
    return Long.parseLong(String.valueOf(first));
  }
}
