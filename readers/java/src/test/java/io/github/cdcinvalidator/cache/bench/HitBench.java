package io.github.cdcinvalidator.cache.bench;

import io.github.cdcinvalidator.cache.Cache;
import io.github.cdcinvalidator.cache.CacheOptions;
import io.github.cdcinvalidator.cache.GetOptions;
import io.github.cdcinvalidator.cache.L1Options;
import io.lettuce.core.RedisClient;
import io.lettuce.core.api.StatefulRedisConnection;
import io.lettuce.core.codec.ByteArrayCodec;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.CountDownLatch;
import java.util.function.Supplier;

/**
 * Reads per second and latency percentiles of a cache hit through cdc-cache, beside a
 * plain GET of the same data key on one Lettuce connection (the most a reader can
 * reach), and L1 hits. Not a test: figures for the report and BENCHMARKS.md.
 *
 * <pre>
 *   readers/java/bench/run [seconds] [concurrency]
 * </pre>
 *
 * Redis: -Dcdc.redis.url (default redis://127.0.0.1:16805). Each case keeps
 * {@code concurrency} gets in flight for {@code seconds}.
 */
public final class HitBench {
  private HitBench() {}

  public static void main(String[] args) throws Exception {
    int seconds = args.length > 0 ? Integer.parseInt(args[0]) : 3;
    int concurrency = args.length > 1 ? Integer.parseInt(args[1]) : 32;
    RedisClient client = RedisClient.create(System.getProperty("cdc.redis.url", "redis://127.0.0.1:16805"));
    StatefulRedisConnection<byte[], byte[]> plain = client.connect(ByteArrayCodec.INSTANCE);
    String prefix = "bench_" + UUID.randomUUID().toString().substring(0, 8) + ":";
    String key = "product:42";
    byte[] value = new byte[200];
    Arrays.fill(value, (byte) 'x');
    GetOptions strong = GetOptions.ttl(Duration.ofMinutes(10));
    GetOptions eventual = strong.eventual(Duration.ofSeconds(1));
    SimpleMeterRegistry registry = new SimpleMeterRegistry();
    Cache redisOnly = Cache.create(client, CacheOptions.defaults().prefix(prefix).name("redis").meterRegistry(registry));
    Cache bounded = Cache.create(client, CacheOptions.defaults().prefix(prefix).name("bounded").meterRegistry(registry)
        .l1(L1Options.bounded(Duration.ofSeconds(1))));
    Cache exact = Cache.create(client, CacheOptions.defaults().prefix(prefix).name("exact").meterRegistry(registry)
        .l1(L1Options.tracking()));
    String dataKey = redisOnly.get(key, strong, () -> value).dataKey();
    byte[] dataKeyBytes = dataKey.getBytes(StandardCharsets.UTF_8);
    System.out.printf("java %s, lettuce, %d s per case, %d in flight, %d-byte value, data key %s%n",
        System.getProperty("java.version"), seconds, concurrency, value.length, dataKey);

    run("plain GET (Lettuce)", seconds, concurrency, () -> plain.async().get(dataKeyBytes));
    run("cdc-cache strong (Redis)", seconds, concurrency, () -> redisOnly.getAsync(key, strong,
        () -> CompletableFuture.completedFuture(value)));
    run("cdc-cache eventual, no L1", seconds, concurrency, () -> redisOnly.getAsync(key, eventual,
        () -> CompletableFuture.completedFuture(value)));
    run("cdc-cache bounded L1 hit", seconds, concurrency, () -> bounded.getAsync(key, eventual,
        () -> CompletableFuture.completedFuture(value)));
    run("cdc-cache tracking L1 hit", seconds, concurrency, () -> exact.getAsync(key, strong,
        () -> CompletableFuture.completedFuture(value)));
    runSync("cdc-cache strong, sync, 1 thread", seconds, () -> redisOnly.get(key, strong, () -> value));
    runSync("cdc-cache bounded L1, sync, 1 thread", seconds, () -> bounded.get(key, eventual, () -> value));
    runSync("cdc-cache tracking L1, sync, 1 thread", seconds, () -> exact.get(key, strong, () -> value));
    runSync("plain GET, sync, 1 thread", seconds, () -> plain.sync().get(dataKeyBytes));

    redisOnly.close();
    bounded.close();
    exact.close();
    plain.close();
    client.shutdown();
  }

  private static void report(String name, long reads, long elapsedNanos, long[] latencies, int n) {
    long[] sorted = Arrays.copyOf(latencies, n);
    Arrays.sort(sorted);
    System.out.printf("%-34s %9.0f reads/s   p50 %6d µs   p99 %6d µs   p99.9 %6d µs%n",
        name, reads / (elapsedNanos / 1e9), at(sorted, 0.50), at(sorted, 0.99), at(sorted, 0.999));
  }

  private static long at(long[] sorted, double q) {
    return sorted[(int) ((sorted.length - 1) * q)] / 1000;
  }

  /** {@code concurrency} chains, each issuing its next get when the last completes. */
  private static void run(String name, int seconds, int concurrency, Supplier<CompletionStage<?>> read)
      throws Exception {
    for (int i = 0; i < 20_000; i++) {
      read.get().toCompletableFuture().join(); // warm up: the JIT, the scripts, the connection
    }
    long[][] latencies = new long[concurrency][1 << 20];
    int[] counts = new int[concurrency];
    long started = System.nanoTime();
    long deadline = started + seconds * 1_000_000_000L;
    CountDownLatch done = new CountDownLatch(concurrency);
    for (int w = 0; w < concurrency; w++) {
      int worker = w;
      Runnable[] next = new Runnable[1];
      // A loop while gets complete at once (L1 hits), a callback when they do not:
      // no recursion however many complete synchronously.
      next[0] = () -> {
        while (true) {
          long t = System.nanoTime();
          if (t >= deadline) {
            done.countDown();
            return;
          }
          CompletableFuture<?> f = read.get().toCompletableFuture();
          if (f.isDone()) {
            record(latencies[worker], counts, worker, System.nanoTime() - t);
            continue;
          }
          f.whenComplete((v, e) -> {
            record(latencies[worker], counts, worker, System.nanoTime() - t);
            next[0].run();
          });
          return;
        }
      };
      next[0].run();
    }
    done.await();
    long elapsed = System.nanoTime() - started;
    int total = Arrays.stream(counts).sum();
    long[] all = new long[total];
    int at = 0;
    for (int w = 0; w < concurrency; w++) {
      System.arraycopy(latencies[w], 0, all, at, counts[w]);
      at += counts[w];
    }
    report(name, total, elapsed, all, total);
  }

  private static void record(long[] latencies, int[] counts, int worker, long nanos) {
    if (counts[worker] < latencies.length) {
      latencies[counts[worker]++] = nanos;
    }
  }

  private static void runSync(String name, int seconds, Runnable read) {
    for (int i = 0; i < 5_000; i++) {
      read.run();
    }
    long[] latencies = new long[1 << 22];
    int n = 0;
    long started = System.nanoTime();
    long deadline = started + seconds * 1_000_000_000L;
    while (true) {
      long t = System.nanoTime();
      if (t >= deadline) {
        break;
      }
      read.run();
      if (n < latencies.length) {
        latencies[n++] = System.nanoTime() - t;
      }
    }
    report(name, n, System.nanoTime() - started, latencies, n);
  }
}
