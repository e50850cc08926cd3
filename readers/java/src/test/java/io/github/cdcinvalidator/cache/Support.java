package io.github.cdcinvalidator.cache;

import io.lettuce.core.RedisClient;
import io.lettuce.core.RedisURI;
import io.lettuce.core.ScriptOutputType;
import io.lettuce.core.cluster.RedisClusterClient;
import io.lettuce.core.cluster.api.sync.RedisClusterCommands;
import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.MeterRegistry;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;

/**
 * The tests' Redis: a standalone server ({@code -Dcdc.redis.url}) and a three-node
 * Cluster ({@code -Dcdc.cluster.ports}), both started by run-tests; versions are bumped
 * with the daemon's own scripts (src/sink/bump.lua, epoch.lua).
 */
final class Support {
  enum Topology { STANDALONE, CLUSTER }

  private Support() {}

  static String redisUrl() {
    return System.getProperty("cdc.redis.url", "redis://127.0.0.1:16800");
  }

  static List<RedisURI> clusterUris() {
    List<RedisURI> out = new ArrayList<>();
    for (String port : System.getProperty("cdc.cluster.ports", "16810,16811,16812").split(",")) {
      out.add(RedisURI.create("127.0.0.1", Integer.parseInt(port.trim())));
    }
    return out;
  }

  static String unique(String prefix) {
    return prefix + "_" + UUID.randomUUID().toString().replace("-", "").substring(0, 12);
  }

  static String script(String path) {
    try {
      return Files.readString(VectorsTest.root().resolve(path));
    } catch (IOException e) {
      throw new IllegalStateException(e);
    }
  }

  /** One Redis of either topology: its client, a cache factory and a plain connection. */
  static final class Redis implements AutoCloseable {
    final Topology topology;
    private final RedisClient standalone;
    private final RedisClusterClient cluster;
    final RedisClusterCommands<String, String> sync;
    private final AutoCloseable connection;
    private final List<Cache> caches = new ArrayList<>();

    Redis(Topology topology) {
      this.topology = topology;
      if (topology == Topology.STANDALONE) {
        standalone = RedisClient.create(redisUrl());
        cluster = null;
        var c = standalone.connect();
        sync = c.sync();
        connection = c;
      } else {
        standalone = null;
        cluster = RedisClusterClient.create(clusterUris());
        var c = cluster.connect();
        sync = c.sync();
        connection = c;
      }
    }

    RedisClient client() {
      return standalone;
    }

    Cache cache(CacheOptions options) {
      Cache c = topology == Topology.STANDALONE ? Cache.create(standalone, options) : Cache.create(cluster, options);
      caches.add(c);
      return c;
    }

    /** One bump of {@code key} through the daemon's bump script; returns the new version. */
    long bump(String prefix, String key, long position) {
      List<Object> reply = sync.eval(script("src/sink/bump.lua"), ScriptOutputType.MULTI,
          new String[] {prefix + key}, "600000", "p:test", String.format("%020d", position));
      // Per record the new version (a string) when applied, 0 when not.
      Object first = reply.get(0);
      if (first instanceof Long) {
        throw new IllegalStateException("bump of " + key + " at " + position + " not applied");
      }
      return Long.parseLong(String.valueOf(first));
    }

    /** Advances the epoch through the daemon's epoch script; returns it. */
    /** Advances the epoch as the daemon does after a loss: from the epoch it saw. */
    String bumpEpoch(String prefix) {
      String seen = sync.hget(prefix + "epoch", "e");
      List<Object> reply = sync.eval(script("src/sink/epoch.lua"), ScriptOutputType.MULTI,
          new String[] {prefix + "epoch"}, "advance", "w:test", seen == null ? "" : seen);
      if (!"advanced".equals(String.valueOf(reply.get(0)))) {
        throw new IllegalStateException("epoch.lua did not advance the epoch: " + reply);
      }
      return String.valueOf(reply.get(1));
    }

    @Override
    public void close() throws Exception {
      for (Cache c : caches) {
        c.close();
      }
      connection.close();
      if (standalone != null) {
        standalone.shutdown();
      }
      if (cluster != null) {
        cluster.shutdown();
      }
    }
  }

  /** A counter's total for one cache (other tags summed). */
  static double counter(MeterRegistry registry, String name, String cache) {
    return registry.find(name).tag("cache", cache).counters().stream().mapToDouble(Counter::count).sum();
  }

  static double counter(MeterRegistry registry, String name, String cache, String tag, String value) {
    return registry.find(name).tag("cache", cache).tag(tag, value).counters().stream().mapToDouble(Counter::count).sum();
  }

}
