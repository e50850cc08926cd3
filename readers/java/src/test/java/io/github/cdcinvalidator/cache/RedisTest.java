package io.github.cdcinvalidator.cache;

import static io.github.cdcinvalidator.cache.Support.counter;
import static io.github.cdcinvalidator.cache.Support.unique;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.cdcinvalidator.cache.Support.Redis;
import io.github.cdcinvalidator.cache.Support.Topology;
import io.lettuce.core.SetArgs;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;
import java.util.function.Supplier;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The behaviour tests of readers/spec.md section 13 against real Redis, standalone and
 * Cluster, versions bumped by the daemon's own scripts.
 */
class RedisTest {
  private static final GetOptions TTL = GetOptions.ttl(Duration.ofMinutes(5));

  private static byte[] b(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  private static String text(byte[] v) {
    return new String(v, StandardCharsets.UTF_8);
  }

  private static CacheOptions options(String prefix, String name, MeterRegistry registry) {
    return CacheOptions.defaults().prefix(prefix).name(name).meterRegistry(registry);
  }

  // Loaders that sleep get threads of their own (the common pool may have one thread).
  private static final ExecutorService LOADER_THREADS = Executors.newCachedThreadPool(r -> {
    Thread t = new Thread(r, "test-loader");
    t.setDaemon(true);
    return t;
  });

  /** A loader that sleeps, counting loads and how many run at once. */
  private static final class Loads {
    final AtomicInteger started = new AtomicInteger();
    final AtomicInteger inFlight = new AtomicInteger();
    final AtomicInteger maxInFlight = new AtomicInteger();

    byte[] run(long sleepMillis, String value, boolean fail) throws InterruptedException {
      started.incrementAndGet();
      int now = inFlight.incrementAndGet();
      maxInFlight.accumulateAndGet(now, Math::max);
      try {
        Thread.sleep(sleepMillis);
      } finally {
        inFlight.decrementAndGet();
      }
      if (fail) {
        throw new IllegalStateException("the source is down");
      }
      return b(value);
    }

    AsyncLoader async(long sleepMillis, String value, boolean fail) {
      return () -> CompletableFuture.supplyAsync(() -> {
        try {
          return run(sleepMillis, value, fail);
        } catch (InterruptedException e) {
          throw new CompletionException(e);
        }
      }, LOADER_THREADS);
    }
  }

  private static void eventually(String what, long timeoutMillis, BooleanSupplier check) throws InterruptedException {
    long deadline = System.nanoTime() + timeoutMillis * 1_000_000;
    while (!check.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        throw new AssertionError("timed out after " + timeoutMillis + " ms waiting for " + what);
      }
      Thread.sleep(10);
    }
  }

  private static CacheException failure(CompletableFuture<Got> f) {
    CompletionException e = assertThrows(CompletionException.class, f::join);
    assertTrue(e.getCause() instanceof CacheException, "a CacheException, not " + e.getCause());
    return (CacheException) e.getCause();
  }

  // ---------------------------------------------------------------- one load after a bump

  @ParameterizedTest
  @EnumSource(Topology.class)
  void oneLoadAfterABumpFromTwoHundredThreads(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":42";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "one", registry));
      assertEquals("v0", cache.get(key, TTL, () -> b("v0")).text());
      redis.bump(prefix, key, 1); // every reader misses at once now

      Loads loads = new Loads();
      CountDownLatch go = new CountDownLatch(1);
      ConcurrentLinkedQueue<Got> results = new ConcurrentLinkedQueue<>();
      ConcurrentLinkedQueue<Throwable> errors = new ConcurrentLinkedQueue<>();
      List<Thread> threads = new ArrayList<>();
      for (int i = 0; i < 200; i++) {
        Thread t = new Thread(() -> {
          try {
            go.await();
            results.add(cache.get(key, TTL, () -> loads.run(300, "v1", false)));
          } catch (Throwable e) {
            errors.add(e);
          }
        });
        t.start();
        threads.add(t);
      }
      go.countDown();
      for (Thread t : threads) {
        t.join(30_000);
      }
      assertTrue(errors.isEmpty(), "errors: " + errors);
      assertEquals(200, results.size());
      assertEquals(1, loads.started.get(), "one load for 200 gets");
      assertTrue(results.stream().allMatch(g -> g.text().equals("v1") && !g.stale()));
      assertEquals(1, results.stream().filter(g -> !g.hit()).count(), "only the loading get is not a hit");
      // Each get counts one hit or one miss (threads that start after the fill hit).
      double misses = counter(registry, CacheMetrics.MISSES, "one");
      assertEquals(201, misses + counter(registry, CacheMetrics.HITS, "one"));
      assertTrue(misses >= 20, misses + " gets missed together");
      assertTrue(counter(registry, CacheMetrics.STAMPEDE_PREVENTED, "one") <= misses - 2);
      assertEquals(2, counter(registry, CacheMetrics.FILLS, "one"));
    }
  }

  @ParameterizedTest
  @EnumSource(Topology.class)
  void oneLoadAfterABumpAcrossTwoInstances(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":7";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache first = redis.cache(options(prefix, "first", registry));
      Cache second = redis.cache(options(prefix, "second", registry));
      redis.bump(prefix, key, 1);
      Loads loads = new Loads();
      List<CompletableFuture<Got>> gets = new ArrayList<>();
      for (int i = 0; i < 100; i++) {
        gets.add(first.getAsync(key, TTL, loads.async(50, "loaded", false)));
        gets.add(second.getAsync(key, TTL, loads.async(50, "loaded", false)));
      }
      for (CompletableFuture<Got> g : gets) {
        assertEquals("loaded", g.join().text());
      }
      assertEquals(1, loads.started.get(), "one load for 200 gets in two instances");
      double prevented = counter(registry, CacheMetrics.STAMPEDE_PREVENTED, "first")
          + counter(registry, CacheMetrics.STAMPEDE_PREVENTED, "second");
      double misses = counter(registry, CacheMetrics.MISSES, "first") + counter(registry, CacheMetrics.MISSES, "second");
      assertTrue(prevented <= misses - 1, "never the get that loaded");
    }
  }

  @ParameterizedTest
  @EnumSource(Topology.class)
  void theStampedeCountIsEveryGetThatWaitedButNeverTheHolder(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":8";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache holderCache = redis.cache(options(prefix, "holder", registry));
      Cache others = redis.cache(options(prefix, "others", registry));
      CompletableFuture<byte[]> release = new CompletableFuture<>();
      AtomicBoolean loading = new AtomicBoolean();
      CompletableFuture<Got> holder = holderCache.getAsync(key, TTL, () -> {
        loading.set(true);
        return release;
      });
      eventually("the holder's loader", 2000, loading::get);
      List<CompletableFuture<Got>> gets = new ArrayList<>();
      for (int i = 0; i < 20; i++) {
        gets.add(holderCache.getAsync(key, TTL, () -> CompletableFuture.completedFuture(b("never"))));
        gets.add(others.getAsync(key, TTL, () -> CompletableFuture.completedFuture(b("never"))));
      }
      eventually("every get's read", 2000, () -> counter(registry, CacheMetrics.MISSES, "holder") == 21
          && counter(registry, CacheMetrics.MISSES, "others") == 20);
      release.complete(b("value"));
      assertFalse(holder.join().hit());
      for (CompletableFuture<Got> g : gets) {
        assertEquals("value", g.join().text());
        assertTrue(g.join().hit());
      }
      assertEquals(20, counter(registry, CacheMetrics.STAMPEDE_PREVENTED, "holder"), "the holder is not counted");
      // On a Cluster a waiter's GET and PTTL go to different nodes: the fill can land
      // between them, the waiter then takes the lease over and finds the value on its
      // re-read; as the get that took the lease it is not counted.
      assertEquals(20, counter(registry, CacheMetrics.STAMPEDE_PREVENTED, "others")
          + counter(registry, CacheMetrics.LEASE_TAKEOVERS, "others"));
    }
  }

  // ---------------------------------------------------------------- hung holder

  @ParameterizedTest
  @EnumSource(Topology.class)
  void aHungHolderDelaysOthersByItsLeaseThenExactlyOneTakesOver(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":1";
      MeterRegistry registry = new SimpleMeterRegistry();
      CacheOptions o = options(prefix, "hung", registry).lease(Duration.ofMillis(500)).maxPoll(Duration.ofMillis(50))
          .waitTimeout(Duration.ofSeconds(3));
      Cache hung = redis.cache(o);
      Cache waiters = redis.cache(o.name("waiters"));
      String lease = key + "@e0:v0:lease";

      long started = System.nanoTime();
      CompletableFuture<Got> holder = hung.getAsync(key, TTL, new Loads().async(2500, "late", false));
      eventually("the hung holder's lease", 2000, () -> redis.sync.exists(lease) == 1);
      Loads loads = new Loads();
      List<CompletableFuture<Got>> gets = new ArrayList<>();
      for (int i = 0; i < 50; i++) {
        gets.add(waiters.getAsync(key, TTL, loads.async(50, "fresh", false)));
      }
      for (CompletableFuture<Got> g : gets) {
        assertEquals("fresh", g.join().text());
      }
      long tookMillis = (System.nanoTime() - started) / 1_000_000;
      assertEquals(1, loads.started.get(), "exactly one load after the lease expired");
      assertEquals(1, loads.maxInFlight.get());
      // Waiters whose own read came after the lease expired take it at once, not as a takeover.
      assertTrue(counter(registry, CacheMetrics.LEASE_TAKEOVERS, "waiters") <= 1);
      // The lease (500 ms), a re-read interval (50 ms) and the load (50 ms), not the
      // hung loader's 2.5 s: slack for a busy machine.
      assertTrue(tookMillis < 1600, "waiters done after " + tookMillis + " ms");
      assertEquals("late", holder.join().text()); // its fill is harmless: same data key
    }
  }

  @ParameterizedTest
  @EnumSource(Topology.class)
  void aHungHolderDelaysGetsOfItsOwnProcessNoLongerThanOthers(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":1";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "own", registry).lease(Duration.ofMillis(500))
          .maxPoll(Duration.ofMillis(50)).waitTimeout(Duration.ofSeconds(3)));
      long started = System.nanoTime();
      CompletableFuture<Got> holder = cache.getAsync(key, TTL, new Loads().async(2500, "late", false));
      eventually("the hung holder's lease", 2000, () -> redis.sync.exists(key + "@e0:v0:lease") == 1);
      Loads loads = new Loads();
      List<CompletableFuture<Got>> followers = new ArrayList<>();
      for (int i = 0; i < 30; i++) {
        followers.add(cache.getAsync(key, TTL, loads.async(50, "fresh", false)));
      }
      for (CompletableFuture<Got> g : followers) {
        assertEquals("fresh", g.join().text());
      }
      long tookMillis = (System.nanoTime() - started) / 1_000_000;
      assertEquals(1, loads.started.get(), "one follower loads after leaving the hung leader");
      assertEquals(1, counter(registry, CacheMetrics.LEASE_TAKEOVERS, "own"));
      assertTrue(tookMillis < 2000, "followers done after " + tookMillis + " ms, before the hung loader's 2.5 s");
      assertEquals("late", holder.join().text());
    }
  }

  // ---------------------------------------------------------------- failing loader

  @ParameterizedTest
  @EnumSource(Topology.class)
  void aLoaderThatAlwaysFailsNeverHasTwoLoadsInFlight(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":9";
      MeterRegistry registry = new SimpleMeterRegistry();
      long waitMillis = 800;
      long maxPollMillis = 50;
      CacheOptions o = options(prefix, "failing", registry).lease(Duration.ofMillis(200))
          .maxPoll(Duration.ofMillis(maxPollMillis)).waitTimeout(Duration.ofMillis(waitMillis));
      List<Cache> caches = List.of(redis.cache(o.name("f1")), redis.cache(o.name("f2")), redis.cache(o.name("f3")));
      Loads loads = new Loads();
      List<CompletableFuture<Got>> gets = new ArrayList<>();
      List<long[]> times = new ArrayList<>();
      for (int wave = 0; wave < 3; wave++) {
        for (Cache c : caches) {
          for (int i = 0; i < 10; i++) {
            long[] t = {System.nanoTime(), 0};
            times.add(t);
            gets.add(c.getAsync(key, TTL, loads.async(30, "never", true)).whenComplete((g, e) -> t[1] = System.nanoTime()));
          }
        }
        Thread.sleep(100);
      }
      int loaderErrors = 0;
      for (CompletableFuture<Got> g : gets) {
        CacheException e = failure(g);
        assertTrue(e.kind() == CacheException.Kind.LOADER || e.kind() == CacheException.Kind.LEASE_TIMEOUT, e.toString());
        loaderErrors += e.kind() == CacheException.Kind.LOADER ? 1 : 0;
      }
      assertEquals(1, loads.maxInFlight.get(), "loads never overlap");
      assertTrue(loads.started.get() >= 2, loads.started.get() + " loads");
      assertTrue(loaderErrors > 0);
      for (long[] t : times) {
        long waited = (t[1] - t[0]) / 1_000_000;
        // wait_timeout plus one max_poll, plus a round trip's slack on a busy machine.
        assertTrue(waited <= waitMillis + maxPollMillis + 300, "a get waited " + waited + " ms");
      }
    }
  }

  // ---------------------------------------------------------------- cancelled holder

  @ParameterizedTest
  @EnumSource(Topology.class)
  void aCancelledHolderLeavesNoLease(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "cancel", registry));

      String key = unique("product") + ":1";
      String lease = key + "@e0:v0:lease";
      AtomicBoolean stageCancelled = new AtomicBoolean();
      CompletableFuture<byte[]> slow = new CompletableFuture<>();
      slow.whenComplete((v, e) -> stageCancelled.set(slow.isCancelled()));
      AtomicBoolean loading = new AtomicBoolean();
      CompletableFuture<Got> get = cache.getAsync(key, TTL, () -> {
        loading.set(true);
        return slow;
      });
      eventually("the loader", 2000, loading::get);
      assertEquals(1, redis.sync.exists(lease));
      get.cancel(true);
      assertEquals(0, redis.sync.exists(lease), "the lease is gone once cancel returns");
      eventually("the loader's stage cancelled", 1000, stageCancelled::get);

      // The synchronous get: an interrupt cancels it.
      String key2 = unique("product") + ":2";
      String lease2 = key2 + "@e0:v0:lease";
      AtomicBoolean loaderInterrupted = new AtomicBoolean();
      AtomicReference<Throwable> thrown = new AtomicReference<>();
      AtomicBoolean flagKept = new AtomicBoolean();
      AtomicBoolean loading2 = new AtomicBoolean();
      Thread t = new Thread(() -> {
        try {
          cache.get(key2, TTL, () -> {
            loading2.set(true);
            try {
              Thread.sleep(5000);
            } catch (InterruptedException e) {
              loaderInterrupted.set(true);
              throw e;
            }
            return b("never");
          });
        } catch (Throwable e) {
          thrown.set(e);
          flagKept.set(Thread.currentThread().isInterrupted());
        }
      });
      t.start();
      eventually("the second loader", 2000, loading2::get);
      assertEquals(1, redis.sync.exists(lease2));
      t.interrupt();
      t.join(2000);
      assertFalse(t.isAlive());
      assertEquals(0, redis.sync.exists(lease2), "the lease is gone once the get returned");
      assertTrue(thrown.get() instanceof CancellationException, "thrown: " + thrown.get());
      assertTrue(loaderInterrupted.get());
      assertTrue(flagKept.get(), "the interrupt flag stays set for the caller");
    }
  }

  @ParameterizedTest
  @EnumSource(Topology.class)
  void aCancelledLeaderHandsItsFlightOn(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":4";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "handover", registry));
      AtomicBoolean loading = new AtomicBoolean();
      CompletableFuture<Got> leader = cache.getAsync(key, TTL, () -> {
        loading.set(true);
        return new CompletableFuture<>(); // never completes
      });
      eventually("the leader's loader", 2000, loading::get);
      Loads loads = new Loads();
      List<CompletableFuture<Got>> followers = new ArrayList<>();
      for (int i = 0; i < 10; i++) {
        followers.add(cache.getAsync(key, TTL, loads.async(20, "next", false)));
      }
      eventually("the followers' reads", 2000, () -> counter(registry, CacheMetrics.MISSES, "handover") == 11);
      leader.cancel(true);
      for (CompletableFuture<Got> g : followers) {
        assertEquals("next", g.join().text());
      }
      assertEquals(1, loads.started.get(), "one of the followers leads and loads");
      assertTrue(leader.isCancelled());
    }
  }

  @ParameterizedTest
  @EnumSource(Topology.class)
  void aFollowerAtItsWaitTimeoutReadsOnceMoreThenGivesUp(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":6";
      MeterRegistry registry = new SimpleMeterRegistry();
      long waitMillis = 300;
      Cache cache = redis.cache(options(prefix, "deadline", registry).waitTimeout(Duration.ofMillis(waitMillis)));
      AtomicBoolean loading = new AtomicBoolean();
      CompletableFuture<Got> leader = cache.getAsync(key, TTL, () -> {
        loading.set(true);
        return new CompletableFuture<>(); // a holder still loading at the followers' deadlines
      });
      eventually("the leader's loader", 2000, loading::get);

      long started = System.nanoTime();
      CacheException e = failure(cache.getAsync(key, TTL, () -> CompletableFuture.completedFuture(b("never"))));
      long waited = (System.nanoTime() - started) / 1_000_000;
      assertEquals(CacheException.Kind.LEASE_TIMEOUT, e.kind());
      assertTrue(waited >= waitMillis - 20 && waited < waitMillis + 1000, "gave up after " + waited + " ms");

      // Filled meanwhile by another process: the read at the deadline finds it.
      CompletableFuture<Got> follower = cache.getAsync(key, TTL, () -> CompletableFuture.completedFuture(b("never")));
      Thread.sleep(50);
      redis.sync.set(key + "@e0:v0", "c1:3:filled elsewhere");
      Got got = follower.join();
      assertEquals("filled elsewhere", got.text());
      assertTrue(got.hit());
      assertFalse(leader.isDone());
      leader.cancel(true);
      assertEquals(0, redis.sync.exists(key + "@e0:v0:lease"));
    }
  }

  // ---------------------------------------------------------------- loader timeout

  @ParameterizedTest
  @EnumSource(Topology.class)
  void aLoaderTimeoutFailsTheGetReleasesTheLeaseAndWritesNothing(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "timeout", registry).loaderTimeout(Duration.ofMillis(200)));

      String key = unique("product") + ":1";
      AtomicBoolean interrupted = new AtomicBoolean();
      long started = System.nanoTime();
      CacheException e = assertThrows(CacheException.class, () -> cache.get(key, TTL, () -> {
        try {
          Thread.sleep(3000);
        } catch (InterruptedException ie) {
          interrupted.set(true);
          throw ie;
        }
        return b("late");
      }));
      long took = (System.nanoTime() - started) / 1_000_000;
      assertEquals(CacheException.Kind.LOADER_TIMEOUT, e.kind());
      assertTrue(took < 1500, "failed after " + took + " ms");
      assertTrue(interrupted.get(), "the loader was interrupted");
      assertFalse(Thread.currentThread().isInterrupted(), "the timeout's interrupt does not leak to the caller");
      assertEquals(0, redis.sync.exists(key + "@e0:v0:lease"));

      String key2 = unique("product") + ":2";
      CacheException e2 = failure(cache.getAsync(key2, TTL, new Loads().async(500, "late", false)));
      assertEquals(CacheException.Kind.LOADER_TIMEOUT, e2.kind());
      assertEquals(0, redis.sync.exists(key2 + "@e0:v0:lease"));
      Thread.sleep(700);
      assertNull(redis.sync.get(key2 + "@e0:v0"), "a late value is never written");
      assertEquals(2, counter(registry, CacheMetrics.FILL_ERRORS, "timeout"));
    }
  }

  // ---------------------------------------------------------------- refused options

  @Test
  void refusedOptionsFailWithInvalidOptions() throws Exception {
    try (Redis redis = new Redis(Topology.STANDALONE)) {
      Cache cache = redis.cache(options(unique("ver") + ":", "refused", new SimpleMeterRegistry()));
      List<Supplier<CompletableFuture<Got>>> calls = List.of(
          () -> cache.getAsync("", TTL, () -> null),
          () -> cache.getAsync("epoch", TTL, () -> null),
          () -> cache.getAsync("ns:product", TTL, () -> null),
          () -> cache.getAsync("k", TTL.deps("ns:product"), () -> null),
          () -> cache.getAsync("k", TTL.deps("epoch"), () -> null),
          () -> cache.getAsync("k", TTL.deps(List.of()), () -> null),
          () -> cache.getAsync("k", TTL.deps("a", ""), () -> null),
          () -> cache.getAsync("k", TTL.namespaces(""), () -> null),
          () -> cache.getAsync("k", GetOptions.ttl(Duration.ZERO), () -> null),
          () -> cache.getAsync("k", GetOptions.ttl(Duration.ofSeconds(-1)), () -> null),
          () -> cache.getAsync("k", TTL.consistency("eventual", null), () -> null),
          () -> cache.getAsync("k", TTL.consistency("strong", Duration.ofSeconds(1)), () -> null),
          () -> cache.getAsync("k", TTL.eventual(Duration.ofMillis(-1)), () -> null));
      for (Supplier<CompletableFuture<Got>> call : calls) {
        assertEquals(CacheException.Kind.INVALID_OPTIONS, failure(call.get()).kind());
      }
      CacheException misspelt = assertThrows(CacheException.class, () -> TTL.consistency("Strongg", null));
      assertEquals(CacheException.Kind.INVALID_OPTIONS, misspelt.kind());
      assertTrue(misspelt.getMessage().contains("Strongg"));
      CacheException negative = assertThrows(CacheException.class,
          () -> cache.get("k", TTL.eventual(Duration.ofMillis(-5)), () -> null));
      assertTrue(negative.getMessage().contains("max_stale must be at least 0"), negative.getMessage());

      CacheOptions base = CacheOptions.defaults();
      List<CacheOptions> refused = List.of(
          base.lease(Duration.ZERO), base.poll(Duration.ZERO), base.maxPoll(Duration.ZERO),
          base.poll(Duration.ofMillis(50)).maxPoll(Duration.ofMillis(10)), base.waitTimeout(Duration.ZERO),
          base.loaderTimeout(Duration.ZERO), base.sampleRate(1.5), base.sampleRate(-0.1), base.beta(-1),
          base.l1(L1Options.bounded(Duration.ofSeconds(1)).maxEntries(0)), base.l1(L1Options.bounded(Duration.ofMillis(-1))));
      for (CacheOptions o : refused) {
        assertEquals(CacheException.Kind.INVALID_OPTIONS,
            assertThrows(CacheException.class, () -> Cache.create(redis.client(), o)).kind());
      }
    }
  }

  // ---------------------------------------------------------------- epoch and stale-while-revalidate

  @ParameterizedTest
  @EnumSource(Topology.class)
  void theEpochRenamesEveryDataKeyAndNothingFromBeforeItServes(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":3";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "epoch", registry).waitTimeout(Duration.ofMillis(300)));
      redis.bump(prefix, key, 1);
      long v2 = redis.bump(prefix, key, 2);
      Got before = cache.get(key, TTL, () -> b("before"));
      assertEquals(key + "@e0:v" + v2, before.dataKey());

      String epoch = redis.bumpEpoch(prefix);
      Got after = cache.get(key, TTL, () -> b("after"));
      assertFalse(after.hit());
      assertEquals(key + "@e" + epoch + ":v" + v2, after.dataKey());

      // After a Redis loss recovery nothing from before the epoch is a previous value:
      // an eventual get with another holder loading waits, then fails.
      String epoch2 = redis.bumpEpoch(prefix);
      String dataKey = key + "@e" + epoch2 + ":v" + v2;
      redis.sync.set(dataKey + ":lease", "another-process", SetArgs.Builder.px(5000));
      CacheException e = failure(cache.getAsync(key, TTL.eventual(Duration.ofHours(1)), () -> null));
      assertEquals(CacheException.Kind.LEASE_TIMEOUT, e.kind());
    }
  }

  @ParameterizedTest
  @EnumSource(Topology.class)
  void staleWhileRevalidateServesThePreviousValueWithinItsBoundOnly(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":5";
      MeterRegistry registry = new SimpleMeterRegistry();
      long waitMillis = 400;
      Cache cache = redis.cache(options(prefix, "swr", registry).waitTimeout(Duration.ofMillis(waitMillis)));
      long v1 = redis.bump(prefix, key, 1);
      assertEquals("one", cache.get(key, TTL, () -> b("one")).text());
      long v2 = redis.bump(prefix, key, 2);
      // Another process holds the new version's lease and is loading.
      redis.sync.set(key + "@e0:v" + v2 + ":lease", "another-process", SetArgs.Builder.px(10_000));

      long started = System.nanoTime();
      Got stale = cache.get(key, TTL.eventual(Duration.ofSeconds(10)), () -> b("never"));
      assertEquals("one", stale.text());
      assertTrue(stale.stale() && stale.hit());
      assertEquals(key + "@e0:v" + v1, stale.dataKey());
      assertTrue((System.nanoTime() - started) / 1_000_000 < waitMillis, "served at once");
      assertEquals(1, counter(registry, CacheMetrics.STALE_SERVED, "swr"));

      // Beyond its bound the previous value is not served at once: the get waits, and
      // at its wait timeout serves it whatever its age rather than nothing.
      Thread.sleep(50);
      started = System.nanoTime();
      Got late = cache.get(key, TTL.eventual(Duration.ofMillis(10)), () -> b("never"));
      long waited = (System.nanoTime() - started) / 1_000_000;
      assertEquals("one", late.text());
      assertTrue(late.stale());
      assertTrue(waited >= waitMillis - 20, "waited " + waited + " ms");

      // Strong never serves it.
      CacheException e = assertThrows(CacheException.class, () -> cache.get(key, TTL, () -> b("never")));
      assertEquals(CacheException.Kind.LEASE_TIMEOUT, e.kind());

      // Once the other process fills, everyone reads the new value.
      redis.sync.set(key + "@e0:v" + v2, "c1:5:two");
      Got fresh = cache.get(key, TTL.eventual(Duration.ofSeconds(10)), () -> b("never"));
      assertEquals("two", fresh.text());
      assertFalse(fresh.stale());
    }
  }

  // ---------------------------------------------------------------- XFetch and the envelope

  @ParameterizedTest
  @EnumSource(Topology.class)
  void xfetchRefreshesEarlyAndForeignValuesPassThrough(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "xfetch", registry));
      String key = unique("product") + ":1";
      // A loader that took 10,000 s and 1 s left: due for a refresh whatever u is, nearly.
      redis.sync.set(key + "@e0:v0", "c1:10000000:old", SetArgs.Builder.px(1000));
      Got got = cache.get(key, TTL, () -> b("new"));
      assertEquals("new", got.text());
      assertFalse(got.hit());
      assertEquals(1, counter(registry, CacheMetrics.EARLY_REFRESHES, "xfetch"));
      assertTrue(redis.sync.get(key + "@e0:v0").matches("c1:[0-9]+:new"));
      assertTrue(redis.sync.pttl(key + "@e0:v0") > 60_000);

      String hand = unique("product") + ":2";
      redis.sync.set(hand + "@e0:v0", "filled by hand");
      Got raw = cache.get(hand, TTL, () -> b("never"));
      assertEquals("filled by hand", raw.text());
      assertTrue(raw.hit());

      String binary = unique("product") + ":3";
      byte[] bytes = {0, (byte) 0xff, 'c', '1', ':', 10};
      assertArrayEquals(bytes, cache.get(binary, TTL, () -> bytes).value());
      assertArrayEquals(bytes, cache.get(binary, TTL, () -> b("never")).value());
    }
  }

  // ---------------------------------------------------------------- the bounded L1

  @ParameterizedTest
  @EnumSource(Topology.class)
  void theBoundedL1ServesWithinItsBoundAndNoticesDropIt(Topology topology) throws Exception {
    try (Redis redis = new Redis(topology)) {
      String prefix = unique("ver") + ":";
      String channel = unique("notices");
      String key = unique("product") + ":1";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "l1", registry)
          .l1(L1Options.bounded(Duration.ofSeconds(30)).notices(channel)));
      GetOptions eventual = TTL.eventual(Duration.ofSeconds(30));
      assertEquals("a", cache.get(key, eventual, () -> b("a")).text());
      Got l1Hit = cache.get(key, eventual, () -> b("never"));
      assertEquals("a", l1Hit.text());
      assertTrue(l1Hit.stale(), "a bounded L1's hit may be older than the current version");
      assertEquals(1, counter(registry, CacheMetrics.HITS, "l1", "layer", "l1"));
      // Strong gets never use it.
      assertEquals("a", cache.get(key, TTL, () -> b("never")).text());
      assertEquals(1, counter(registry, CacheMetrics.HITS, "l1", "layer", "redis"));

      long v = redis.bump(prefix, key, 1);
      long commitMicros = System.currentTimeMillis() * 1000 - 5000;
      redis.sync.publish(channel, "{\"kind\":\"KEY\",\"target\":\"" + key + "\",\"record_key\":\"" + prefix + key
          + "\",\"version\":" + v + ",\"source\":\"test\",\"position\":\"1\",\"commit_time_us\":" + commitMicros + "}");
      eventually("the notice", 3000, () -> counter(registry, CacheMetrics.L1_INVALIDATIONS, "l1", "reason", "notice") == 1);
      assertEquals("b", cache.get(key, eventual, () -> b("b")).text());
      assertTrue(registry.find(CacheMetrics.PROPAGATION).summary().count() >= 1);
      assertTrue(registry.find(CacheMetrics.PROPAGATION).summary().max() >= 5);

      // An entry older than the bound is verified against Redis again.
      Cache shortBound = redis.cache(options(prefix, "l1short", registry).l1(L1Options.bounded(Duration.ofMillis(300))));
      shortBound.get(key, eventual, () -> b("never"));
      shortBound.get(key, eventual, () -> b("never"));
      assertEquals(1, counter(registry, CacheMetrics.HITS, "l1short", "layer", "l1"));
      Thread.sleep(400);
      shortBound.get(key, eventual, () -> b("never"));
      assertEquals(2, counter(registry, CacheMetrics.HITS, "l1short", "layer", "redis"));
    }
  }

  // ---------------------------------------------------------------- the exact L1

  @Test
  void theTrackingL1ServesWithoutRedisUntilRedisReportsAChange() throws Exception {
    try (Redis redis = new Redis(Topology.STANDALONE)) {
      String prefix = unique("ver") + ":";
      String key = unique("page") + ":1";
      String dep = unique("category") + ":3";
      String namespace = unique("product");
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "exact", registry).l1(L1Options.tracking()));
      GetOptions strong = TTL.deps(key, dep).namespaces(namespace);
      GetOptions eventual = strong.eventual(Duration.ofMillis(1));
      AtomicInteger loads = new AtomicInteger();
      Loader loader = () -> b("v" + loads.incrementAndGet());
      assertEquals("v1", cache.get(key, strong, loader).text());

      // 1000 gets, strong ones included, are L1 hits that reach no Redis.
      for (int i = 0; i < 1000; i++) {
        Got hit = cache.get(key, i % 2 == 0 ? strong : eventual, loader);
        assertEquals("v1", hit.text());
        assertFalse(hit.stale(), "a tracking L1's hit is current");
      }
      assertEquals(1000, counter(registry, CacheMetrics.HITS, "exact", "layer", "l1"));
      assertEquals(0, counter(registry, CacheMetrics.HITS, "exact", "layer", "redis"));
      assertEquals(1, counter(registry, CacheMetrics.MISSES, "exact"));

      // A bump of any record it depends on: the gets return the new data key within 200 ms.
      List<Runnable> bumps = List.of(
          () -> redis.bump(prefix, dep, 1),
          () -> redis.bump(prefix, "ns:" + namespace, 1),
          () -> redis.bumpEpoch(prefix),
          () -> redis.bump(prefix, key, 1));
      for (Runnable bump : bumps) {
        String before = cache.get(key, strong, loader).dataKey();
        bump.run();
        long started = System.nanoTime();
        while (cache.get(key, strong, loader).dataKey().equals(before)) {
          assertTrue(System.nanoTime() - started < 200_000_000L, "the new data key within 200 ms");
        }
      }
      assertTrue(counter(registry, CacheMetrics.L1_INVALIDATIONS, "exact", "reason", "tracking") >= 4);

      // Killing the tracking connection (found by its name) flushes the L1 at once.
      cache.get(key, strong, loader);
      double hits = counter(registry, CacheMetrics.HITS, "exact", "layer", "l1");
      String tracked = null;
      for (String line : redis.sync.clientList().split("\n")) {
        if (line.contains(" name=cdc-cache-tracking:exact ")) {
          tracked = line.replaceAll("^id=([0-9]+) .*", "$1").trim();
        }
      }
      assertTrue(tracked != null, "the tracking connection in CLIENT LIST");
      double resets = counter(registry, CacheMetrics.L1_INVALIDATIONS, "exact", "reason", "reset");
      redis.sync.clientKill(io.lettuce.core.KillArgs.Builder.id(Long.parseLong(tracked)));
      eventually("the flush", 1000,
          () -> counter(registry, CacheMetrics.L1_INVALIDATIONS, "exact", "reason", "reset") > resets);
      cache.get(key, strong, loader);
      assertEquals(hits, counter(registry, CacheMetrics.HITS, "exact", "layer", "l1"), "the next get is not an L1 hit");
      // It serves again once it reconnects.
      eventually("the L1 serving again", 5000, () -> {
        cache.get(key, strong, loader);
        return counter(registry, CacheMetrics.HITS, "exact", "layer", "l1") > hits;
      });
      String before = cache.get(key, strong, loader).dataKey();
      redis.bump(prefix, key, 2);
      eventually("an invalidation after the reconnect", 1000, () -> !cache.get(key, strong, loader).dataKey().equals(before));
    }
  }

  @Test
  void theExactL1IsRefusedOnACluster() throws Exception {
    try (Redis redis = new Redis(Topology.CLUSTER)) {
      CacheException e = assertThrows(CacheException.class,
          () -> redis.cache(options("ver:", "x", new SimpleMeterRegistry()).l1(L1Options.tracking())));
      assertEquals(CacheException.Kind.INVALID_OPTIONS, e.kind());
    }
  }

  // ---------------------------------------------------------------- freshness sampling

  @Test
  void sampledHitsAreComparedWithTheLoader() throws Exception {
    try (Redis redis = new Redis(Topology.STANDALONE)) {
      String prefix = unique("ver") + ":";
      String key = unique("product") + ":1";
      MeterRegistry registry = new SimpleMeterRegistry();
      Cache cache = redis.cache(options(prefix, "sample", registry).sampleRate(1.0));
      cache.get(key, TTL, () -> b("a"));
      assertEquals("a", cache.get(key, TTL, () -> b("b")).text(), "the served value is not replaced");
      assertEquals(1, counter(registry, CacheMetrics.FRESHNESS_CHECKS, "sample"));
      assertEquals(1, counter(registry, CacheMetrics.FRESHNESS_MISMATCHES, "sample"));
      assertEquals(1.0, registry.find(CacheMetrics.STALE_RATIO).tag("cache", "sample").gauge().value());
      cache.get(key, TTL, () -> b("a"));
      assertEquals(0.5, registry.find(CacheMetrics.STALE_RATIO).tag("cache", "sample").gauge().value());
    }
  }
}
