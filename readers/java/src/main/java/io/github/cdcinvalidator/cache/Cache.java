package io.github.cdcinvalidator.cache;

import io.lettuce.core.KeyValue;
import io.lettuce.core.RedisClient;
import io.lettuce.core.RedisCommandExecutionException;
import io.lettuce.core.RedisConnectionStateListener;
import io.lettuce.core.RedisNoScriptException;
import io.lettuce.core.ScriptOutputType;
import io.lettuce.core.SetArgs;
import io.lettuce.core.TrackingArgs;
import io.lettuce.core.api.StatefulRedisConnection;
import io.lettuce.core.api.push.PushListener;
import io.lettuce.core.api.push.PushMessage;
import io.lettuce.core.cluster.RedisClusterClient;
import io.lettuce.core.cluster.api.StatefulRedisClusterConnection;
import io.lettuce.core.cluster.api.async.RedisClusterAsyncCommands;
import io.lettuce.core.codec.ByteArrayCodec;
import io.lettuce.core.codec.StringCodec;
import io.lettuce.core.pubsub.RedisPubSubAdapter;
import io.lettuce.core.pubsub.StatefulRedisPubSubConnection;
import io.netty.util.concurrent.FastThreadLocalThread;
import java.io.IOException;
import java.io.InputStream;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;

/**
 * A reader of cdc-invalidator's versioned cache-aside keys on one Redis, standalone
 * or Cluster (readers/spec.md): {@link #get} and {@link #getAsync}. Thread-safe; one
 * instance per Redis and configuration, shared by the whole application.
 *
 * <pre>{@code
 * RedisClient client = RedisClient.create("redis://127.0.0.1:6379");
 * Cache cache = Cache.create(client, CacheOptions.defaults());
 * Got got = cache.get("product:42", GetOptions.ttl(Duration.ofMinutes(10)),
 *     () -> productJson(42));
 * }</pre>
 */
public final class Cache implements AutoCloseable {
  private static final String READ_LUA = resource("read.lua");
  private static final String RELEASE_LUA = resource("release.lua");
  private static final String READ_SHA = sha1(READ_LUA);
  private static final String RELEASE_SHA = sha1(RELEASE_LUA);
  private static final SecureRandom TOKENS = new SecureRandom();

  private final RedisClusterAsyncCommands<byte[], byte[]> redis;
  private final boolean cluster;
  private final List<AutoCloseable> owned = new ArrayList<>();
  private final String prefix;
  private final long leaseMillis;
  private final long pollNanos;
  private final long maxPollNanos;
  private final long waitTimeoutNanos;
  private final long loaderTimeoutNanos; // 0: none
  private final double beta;
  private final double sampleRate;
  private final CacheMetrics metrics;
  private final L1 l1; // null: no L1
  private final boolean exactL1;
  private final long l1MaxStaleNanos;
  private final Executor loaderExecutor;
  private final ScheduledExecutorService timer;
  private final ConcurrentHashMap<String, Flight> flights = new ConcurrentHashMap<>();
  private volatile boolean readOnlyScripts = true; // EVALSHA_RO exists (Redis 7.0+)
  // The exact L1's tracking connection: the first read of every get while tracking is up.
  private volatile RedisClusterAsyncCommands<byte[], byte[]> tracker;
  private final AtomicBoolean enablingTracking = new AtomicBoolean();

  private Cache(RedisClusterAsyncCommands<byte[], byte[]> redis, boolean cluster, CacheOptions options) {
    this.redis = redis;
    this.cluster = cluster;
    this.prefix = options.prefix;
    this.leaseMillis = Math.max(1, options.lease.toMillis());
    this.pollNanos = options.poll.toNanos();
    this.maxPollNanos = options.maxPoll.toNanos();
    this.waitTimeoutNanos = options.effectiveWaitTimeout().toNanos();
    this.loaderTimeoutNanos = options.loaderTimeout == null ? 0 : options.loaderTimeout.toNanos();
    this.beta = options.beta;
    this.sampleRate = options.sampleRate;
    this.metrics = new CacheMetrics(options.meterRegistry, options.name);
    this.loaderExecutor = options.loaderExecutor;
    if (options.l1 != null) {
      this.l1 = new L1(options.l1.maxEntriesValue(), options.l1.maxBytesValue(), prefix + "epoch");
      this.exactL1 = options.l1.isTracking();
      this.l1MaxStaleNanos = exactL1 ? Long.MAX_VALUE : options.l1.maxStale().toNanos();
    } else {
      this.l1 = null;
      this.exactL1 = false;
      this.l1MaxStaleNanos = 0;
    }
    ScheduledThreadPoolExecutor t = new ScheduledThreadPoolExecutor(1, r -> {
      Thread thread = new Thread(r, "cdc-cache-timer-" + options.name);
      thread.setDaemon(true);
      return thread;
    });
    t.setRemoveOnCancelPolicy(true);
    this.timer = t;
  }

  // ------------------------------------------------------------------ building

  /**
   * A cache on a standalone Redis, with a connection of its own from {@code client}
   * (closed by {@link #close}; the client stays the caller's). Notices and the exact
   * L1 open their own connections from it too.
   */
  public static Cache create(RedisClient client, CacheOptions options) {
    options.validate();
    StatefulRedisConnection<byte[], byte[]> connection = client.connect(ByteArrayCodec.INSTANCE);
    Cache cache = new Cache(connection.async(), false, options);
    cache.owned.add(connection);
    try {
      if (options.l1 != null && options.l1.isTracking()) {
        cache.track(client, options.name);
      }
      if (options.l1 != null && options.l1.channel() != null) {
        cache.followNotices(client.connectPubSub(), options.l1.channel());
      }
    } catch (RuntimeException e) {
      cache.close();
      throw e;
    }
    return cache;
  }

  /** A cache on a Redis Cluster, with a connection of its own from {@code client}. */
  public static Cache create(RedisClusterClient client, CacheOptions options) {
    options.validate();
    refuseTracking(options);
    StatefulRedisClusterConnection<byte[], byte[]> connection = client.connect(ByteArrayCodec.INSTANCE);
    Cache cache = new Cache(connection.async(), true, options);
    cache.owned.add(connection);
    try {
      if (options.l1 != null && options.l1.channel() != null) {
        // Any node relays a cluster's Pub/Sub messages: one subscription suffices.
        cache.followNotices(client.connectPubSub(), options.l1.channel());
      }
    } catch (RuntimeException e) {
      cache.close();
      throw e;
    }
    return cache;
  }

  /**
   * A cache on an existing standalone connection (byte[] codec: {@code
   * client.connect(ByteArrayCodec.INSTANCE)}), which stays the caller's. Notices and
   * the exact L1 need connections of their own: build from the client for those.
   */
  public static Cache create(StatefulRedisConnection<byte[], byte[]> connection, CacheOptions options) {
    options.validate();
    refuseOwnConnections(options);
    return new Cache(connection.async(), false, options);
  }

  /** A cache on an existing Cluster connection (byte[] codec), which stays the caller's. */
  public static Cache create(StatefulRedisClusterConnection<byte[], byte[]> connection, CacheOptions options) {
    options.validate();
    refuseOwnConnections(options);
    return new Cache(connection.async(), true, options);
  }

  private static void refuseTracking(CacheOptions options) {
    if (options.l1 != null && options.l1.isTracking()) {
      throw CacheException.invalid("the exact (tracking) L1 needs a standalone Redis: on a Cluster use L1Options.bounded");
    }
  }

  private static void refuseOwnConnections(CacheOptions options) {
    if (options.l1 != null && (options.l1.isTracking() || options.l1.channel() != null)) {
      throw CacheException.invalid("notices and the exact L1 open connections of their own: build the cache from the client");
    }
  }

  /** Stops the timer and closes the connections this cache opened (not the caller's). */
  @Override
  public void close() {
    timer.shutdownNow();
    for (AutoCloseable c : owned) {
      try {
        c.close();
      } catch (Exception e) {
        // closing is best effort: the connection is gone either way
      }
    }
    owned.clear();
  }

  // ------------------------------------------------------------------ the call

  /**
   * Reads the value of {@code key} (spec section 1), calling {@code loader} on this
   * thread when this get holds the lease. Interrupting the thread cancels the get (its
   * lease is released) and throws {@link CancellationException} with the interrupt flag
   * set.
   *
   * @throws CacheException of the kinds of section 11
   */
  public Got get(String key, GetOptions options, Loader loader) {
    CallerThreadLoader bridge = new CallerThreadLoader(loader);
    Call call = prepare(key, options, bridge);
    start(call);
    CompletableFuture<Got> result = call.result;
    boolean ran = false;
    while (true) {
      try {
        if (ran) {
          result.get();
        } else {
          CompletableFuture.anyOf(result, bridge.requested).get();
        }
      } catch (ExecutionException e) {
        // the result failed: thrown below
      } catch (InterruptedException e) {
        result.cancel(true);
        Thread.currentThread().interrupt();
        throw new CancellationException("the get of " + Layout.quote(key) + " was interrupted");
      }
      if (result.isDone()) {
        return outcome(result);
      }
      if (!ran && bridge.requested.isDone()) {
        ran = true;
        if (bridge.runHere()) {
          result.cancel(true);
          throw new CancellationException("the get of " + Layout.quote(key) + " was interrupted in its loader");
        }
      }
    }
  }

  /**
   * Reads the value of {@code key} (spec section 1) without blocking. Cancelling the
   * returned future cancels the get: its lease, if it holds one, is released at once.
   * Refused options fail the future with {@code invalid_options}.
   */
  public CompletableFuture<Got> getAsync(String key, GetOptions options, AsyncLoader loader) {
    try {
      Call call = prepare(key, options, loader);
      start(call);
      return call.result;
    } catch (CacheException e) {
      return CompletableFuture.failedFuture(e);
    }
  }

  private static Got outcome(CompletableFuture<Got> result) {
    try {
      return result.join();
    } catch (CompletionException e) {
      if (e.getCause() instanceof CacheException c) {
        throw c;
      }
      throw e;
    }
  }

  /** One get. */
  private final class Call {
    final String key;
    final Layout layout;
    final boolean eventual;
    final long maxStaleMicros;
    final long boundNanos;
    final String l1Id; // null: not an L1 get
    final String mode; // the consistency and bound: part of a flight's identity
    final AsyncLoader loader;
    final AtomicBoolean loaderCalled = new AtomicBoolean();
    final long ttlMillis;
    final long startedNanos = System.nanoTime();
    final CompletableFuture<Got> result = new CompletableFuture<>();
    volatile Flight flight;
    volatile Snapshot snap; // this get's own read
    long ticket; // exact L1: this get's read's ticket
    long readStartedNanos;
    volatile boolean counted; // its hit or miss is counted once, at its first read
    volatile boolean leftHungLeader; // a lease taken at its next read is a takeover

    Call(String key, GetOptions options, Layout layout, AsyncLoader loader) {
      this.key = key;
      this.layout = layout;
      this.loader = loader;
      this.eventual = options.consistency() == Consistency.EVENTUAL;
      this.maxStaleMicros = eventual ? saturatedMicros(options.maxStale()) : 0;
      this.boundNanos = eventual ? Math.min(saturatedNanos(options.maxStale()), l1MaxStaleNanos) : 0;
      this.ttlMillis = Math.max(1, options.ttl().toMillis());
      String id = key + "\n" + String.join("\n", layout.records());
      this.l1Id = l1 != null && (eventual || exactL1) ? id : null;
      this.mode = options.consistency() + ":" + (eventual ? options.maxStale().toNanos() : 0);
    }
  }

  private Call prepare(String key, GetOptions options, AsyncLoader loader) {
    if (options == null || loader == null) {
      throw CacheException.invalid("key " + Layout.quote(String.valueOf(key)) + ": options and loader are required");
    }
    options.validate(key);
    Layout layout = new Layout(prefix, key, options.deps(), options.namespaces());
    Call call = new Call(key, options, layout, loader);
    call.result.whenComplete((got, error) -> {
      if (call.result.isCancelled()) {
        Flight f = call.flight;
        if (f != null && f.leader == call) {
          CompletableFuture<Void> released = f.cancel();
          // The canceller sees the lease gone when cancel returns (rule 6), except on
          // an I/O thread, which must never block: there the release is on its way.
          if (!(Thread.currentThread() instanceof FastThreadLocalThread)) {
            // An interrupted caller (the usual way to cancel a blocking get) still waits
            // for the release; its interrupt flag is kept.
            boolean interrupted = Thread.interrupted();
            try {
              released.get(1, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
              interrupted = true;
            } catch (ExecutionException | TimeoutException e) {
              // best effort: the lease expires anyway
            } finally {
              if (interrupted) {
                Thread.currentThread().interrupt();
              }
            }
          }
        }
      }
    });
    return call;
  }

  private void start(Call call) {
    if (call.l1Id != null) {
      L1.Entry entry = l1.fresh(call.l1Id, call.boundNanos, exactL1, System.nanoTime());
      if (entry != null) {
        metrics.hitsL1.increment();
        // Bounded: nothing proves the entry current, only verified within the bound.
        Got got = new Got(entry.value(), true, entry.dataKey(), !exactL1);
        sample(call, entry.value()).whenComplete((x, e) -> call.result.complete(got));
        return;
      }
      if (exactL1) {
        call.ticket = l1.begin(call.l1Id, call.layout.records());
      }
    }
    // Every get reads the versions itself: a read shared with a get that started
    // earlier could predate a bump that landed before this one started.
    call.readStartedNanos = System.nanoTime();
    RedisClusterAsyncCommands<byte[], byte[]> on = exactL1 && l1.trackingUp() && tracker != null ? tracker : redis;
    read(call.layout, on).whenComplete((snap, e) -> {
      if (call.result.isDone()) {
        return; // cancelled meanwhile
      }
      if (e != null) {
        call.result.completeExceptionally(redisError(e));
        return;
      }
      call.snap = snap;
      boolean first = !call.counted;
      call.counted = true;
      try {
        if (snap.value != null) {
          if (first) {
            metrics.hitsRedis.increment();
          }
          onHit(call, snap);
        } else {
          if (first) {
            metrics.misses.increment();
          }
          joinMiss(call);
        }
      } catch (RuntimeException t) {
        call.result.completeExceptionally(redisError(t));
      }
    });
  }

  private void onHit(Call call, Snapshot snap) {
    Envelope.Decoded d = Envelope.decode(snap.value);
    if (d.deltaMillis() > 0 && snap.pttlMillis > 0 && beta > 0
        && Envelope.xfetchDue(d.deltaMillis(), beta, snap.pttlMillis)) {
      // XFetch (section 7): a flight of its own, outside the map, under the same lease.
      Flight f = new Flight(call, null);
      call.flight = f;
      tryLease(snap.dataKey).whenComplete((token, e) -> {
        if (e != null || token == null) {
          serveHit(call, snap.dataKey, d.value()); // someone else refreshes: the cached value serves
        } else if (f.hold(snap.dataKey, token)) {
          metrics.earlyRefreshes.increment();
          load(f, snap.dataKey);
        } else {
          release(snap.dataKey, token);
        }
      });
      return;
    }
    serveHit(call, snap.dataKey, d.value());
  }

  private void serveHit(Call call, String dataKey, byte[] value) {
    putL1(call, dataKey, value);
    Got got = new Got(value, true, dataKey, false);
    sample(call, value).whenComplete((x, e) -> call.result.complete(got));
  }

  /**
   * Section 5, rule 2: the gets of this cache whose own read missed the same data key
   * (with the same consistency and bound) form one flight: one lease attempt, one
   * wait, at most one load; the first leads, the others take its outcome.
   */
  private void joinMiss(Call call) {
    String flightKey = call.snap.dataKey + "\n" + call.mode;
    while (!call.result.isDone()) {
      Flight created = new Flight(call, flightKey);
      Flight flight = flights.putIfAbsent(flightKey, created);
      if (flight == null) {
        call.flight = created;
        leadMiss(created);
        return;
      }
      if (flight.tryJoin()) {
        call.flight = flight;
        AtomicBoolean settled = new AtomicBoolean();
        flight.done.whenComplete((o, e) -> {
          if (settled.compareAndSet(false, true)) {
            settle(call, o, false);
          }
        });
        checkLeader(call, flight, settled);
        followerDeadline(call, flight, settled);
        return;
      }
      flights.remove(flightKey, flight); // ended, not yet unmapped
    }
  }

  /**
   * A follower whose leader still holds the lease and loads one lease after the
   * follower joined leaves the flight, closes it to newcomers and starts over: a hung
   * loader delays the gets of its own process no longer than those of others.
   */
  private void checkLeader(Call call, Flight flight, AtomicBoolean settled) {
    try {
      timer.schedule(() -> {
        if (settled.get() || call.result.isDone() || flight.ended()) {
          return;
        }
        if (!flight.loadingNow()) {
          checkLeader(call, flight, settled); // the leader only waits: check again a lease later
          return;
        }
        if (settled.compareAndSet(false, true)) {
          flight.closeToNewcomers();
          call.leftHungLeader = true;
          start(call);
        }
      }, leaseMillis, TimeUnit.MILLISECONDS);
    } catch (RejectedExecutionException e) {
      // the cache is closing: the follower waits for its leader
    }
  }

  /**
   * Rule 4: a follower whose flight still runs at its own wait timeout reads once more
   * (the value may be there by now) and otherwise gives up as a waiter does.
   */
  private void followerDeadline(Call call, Flight flight, AtomicBoolean settled) {
    long delay = call.startedNanos + waitTimeoutNanos - System.nanoTime();
    try {
      timer.schedule(() -> {
        if (settled.get() || call.result.isDone() || flight.ended() || !settled.compareAndSet(false, true)) {
          return;
        }
        metrics.stampedePrevented.increment(); // missed, did not take the lease, did not load
        read(call.layout, redis).whenComplete((snap, e) -> {
          if (e != null) {
            call.result.completeExceptionally(redisError(e));
          } else if (snap.value != null) {
            byte[] value = Envelope.decode(snap.value).value();
            putL1(call, snap.dataKey, value);
            call.result.complete(new Got(value, true, snap.dataKey, false));
          } else {
            giveUp(call);
          }
        });
      }, Math.max(0, delay), TimeUnit.NANOSECONDS);
    } catch (RejectedExecutionException e) {
      // the cache is closing: the follower waits for its leader
    }
  }

  /** A waiter out of time: the previous value with eventual, whatever its age, or lease_timeout. */
  private void giveUp(Call call) {
    Snapshot snap = call.snap;
    CacheException timeout = new CacheException(CacheException.Kind.LEASE_TIMEOUT,
        "key " + Layout.quote(call.key) + ": waited " + waitTimeoutNanos / 1_000_000 + " ms for another get's load of "
            + Layout.quote(snap.dataKey));
    Optional<Layout.StaleKey> stale =
        call.eventual ? call.layout.staleKey(snap.epoch, snap.fields, snap.nowMicros) : Optional.empty();
    if (stale.isEmpty()) {
      call.result.completeExceptionally(timeout);
      return;
    }
    String staleKey = stale.get().key();
    redis.get(bytes(staleKey)).whenComplete((raw, e) -> {
      if (e == null && raw != null) {
        metrics.staleServed.increment();
        call.result.complete(new Got(Envelope.decode(raw).value(), true, staleKey, true));
      } else {
        call.result.completeExceptionally(e != null ? redisError(e) : timeout);
      }
    });
  }

  private void leadMiss(Flight f) {
    Snapshot snap = f.leader.snap;
    tryLease(snap.dataKey).whenComplete((token, e) -> {
      if (e != null) {
        f.end(Outcome.error(redisError(e), false));
      } else if (token == null) {
        waitForFill(f, snap);
      } else if (f.hold(snap.dataKey, token)) {
        if (f.leader.leftHungLeader) {
          metrics.leaseTakeovers.increment();
        }
        holder(f, snap.dataKey);
      } else {
        release(snap.dataKey, token);
      }
    });
  }

  // ------------------------------------------------------------------ flights

  /**
   * A flight's end. {@code leaseTaken}: its leader took the lease; {@code loaded}: the
   * value came from the leader's loader; {@code restart}: the leader was cancelled and
   * the others start again.
   */
  record Outcome(byte[] value, String dataKey, boolean leaseTaken, boolean loaded, boolean stale,
      CacheException error, boolean restart) {
    static Outcome value(byte[] value, String dataKey, boolean leaseTaken, boolean loaded, boolean stale) {
      return new Outcome(value, dataKey, leaseTaken, loaded, stale, null, false);
    }

    static Outcome error(CacheException error, boolean leaseTaken) {
      return new Outcome(null, null, leaseTaken, false, false, error, false);
    }

    static final Outcome RESTART = new Outcome(null, null, false, false, false, null, true);
  }

  /** The gets of one missed data key in this cache: one lease attempt, one wait, one load. */
  private final class Flight {
    final Call leader;
    final String key; // null: not in the map (an XFetch refresh)
    final CompletableFuture<Outcome> done = new CompletableFuture<>();
    private boolean ended;
    private boolean closed;
    private boolean cancelled;
    private String leaseDataKey;
    private String token;
    private CompletableFuture<byte[]> loading;

    Flight(Call leader, String key) {
      this.leader = leader;
      this.key = key;
    }

    synchronized boolean tryJoin() {
      return !ended && !closed;
    }

    synchronized boolean ended() {
      return ended;
    }

    /** The leader holds the lease and its loader runs. */
    synchronized boolean loadingNow() {
      return token != null && loading != null && !loading.isDone();
    }

    void closeToNewcomers() {
      synchronized (this) {
        closed = true;
      }
      if (key != null) {
        flights.remove(key, this);
      }
    }

    synchronized boolean cancelled() {
      return cancelled;
    }

    /** Records the lease this flight holds; false when the leader was cancelled meanwhile. */
    synchronized boolean hold(String dataKey, String token) {
      if (cancelled) {
        return false;
      }
      this.leaseDataKey = dataKey;
      this.token = token;
      return true;
    }

    synchronized boolean loading(CompletableFuture<byte[]> loading) {
      if (cancelled) {
        return false;
      }
      this.loading = loading;
      return true;
    }

    /** Releases the lease if this flight still holds it (compare-and-delete), best effort. */
    CompletableFuture<Void> releaseLease() {
      String dataKey;
      String held;
      synchronized (this) {
        dataKey = leaseDataKey;
        held = token;
        token = null;
      }
      return held == null ? CompletableFuture.completedFuture(null) : release(dataKey, held);
    }

    /** The leader was cancelled (rule 6): release at once, stop the loader, hand the flight on. */
    CompletableFuture<Void> cancel() {
      CompletableFuture<byte[]> running;
      synchronized (this) {
        if (ended) {
          return CompletableFuture.completedFuture(null);
        }
        cancelled = true;
        running = loading;
      }
      CompletableFuture<Void> released = releaseLease();
      if (running != null) {
        running.cancel(true);
      }
      end(Outcome.RESTART);
      return released;
    }

    void end(Outcome outcome) {
      synchronized (this) {
        if (ended) {
          return;
        }
        ended = true;
      }
      if (key != null) {
        flights.remove(key, this);
      }
      settle(leader, outcome, true);
      done.complete(outcome);
    }
  }

  /** One get's share of its flight's outcome: its counts and its result. */
  private void settle(Call call, Outcome o, boolean leader) {
    if (o.restart()) {
      if (!leader) {
        joinMiss(call); // the leader was cancelled: one of the others leads now
      }
      return;
    }
    if (!(leader && o.leaseTaken())) {
      metrics.stampedePrevented.increment(); // missed, did not take the lease, did not load
    }
    if (o.error() != null) {
      call.result.completeExceptionally(o.error());
      return;
    }
    if (o.stale()) {
      metrics.staleServed.increment();
    } else {
      putL1(call, o.dataKey(), o.value());
    }
    call.result.complete(new Got(o.value(), !(leader && o.loaded()), o.dataKey(), o.stale()));
  }

  /** Rule 5: a holder reads the data key once more before loading. */
  private void holder(Flight f, String dataKey) {
    redis.get(bytes(dataKey)).whenComplete((raw, e) -> {
      if (e != null) {
        f.releaseLease();
        f.end(Outcome.error(redisError(e), true));
      } else if (raw != null) {
        f.releaseLease();
        f.end(Outcome.value(Envelope.decode(raw).value(), dataKey, true, false, false));
      } else {
        load(f, dataKey);
      }
    });
  }

  /** Calls the leader's loader under the lease, fills, releases (rules 5 and 7). */
  private void load(Flight f, String dataKey) {
    Call c = f.leader;
    long started = System.nanoTime();
    CompletableFuture<byte[]> loading = callLoader(c);
    if (!f.loading(loading)) {
      loading.cancel(true);
      return;
    }
    loading.whenComplete((value, e) -> {
      double tookMillis = (System.nanoTime() - started) / 1e6;
      if (f.cancelled()) {
        return; // the cancel released the lease; a late value is not written
      }
      metrics.fillLatency.record(tookMillis);
      if (e == null && value == null) {
        e = new NullPointerException("the loader returned null");
      }
      if (e != null) {
        metrics.fillErrors.increment();
        Throwable cause = unwrap(e);
        CacheException error = cause instanceof CacheException ce && ce.kind() == CacheException.Kind.LOADER_TIMEOUT
            ? ce
            : new CacheException(CacheException.Kind.LOADER,
                "key " + Layout.quote(c.key) + ": the loader failed: " + cause, cause);
        // Ends once the lease is gone: the caller may retry at once and take it.
        f.releaseLease().whenComplete((x, y) -> f.end(Outcome.error(error, true)));
        return;
      }
      byte[] stored = Envelope.encode((long) tookMillis, value);
      // The value first, then the lease: a waiter that sees the lease gone finds the value.
      redis.set(bytes(dataKey), stored, SetArgs.Builder.px(c.ttlMillis)).whenComplete((ok, e2) -> {
        f.releaseLease();
        if (e2 != null) {
          f.end(Outcome.error(redisError(e2), true));
          return;
        }
        metrics.fills.increment();
        f.end(Outcome.value(value, dataKey, true, true, false));
      });
    });
  }

  /** Rules 3 and 4: a get that did not take the lease waits for the value. */
  private void waitForFill(Flight f, Snapshot snap) {
    Call c = f.leader;
    long deadline = c.startedNanos + waitTimeoutNanos;
    Optional<Layout.StaleKey> stale =
        c.eventual ? c.layout.staleKey(snap.epoch, snap.fields, snap.nowMicros) : Optional.empty();
    if (stale.isPresent() && stale.get().ageMicros() <= c.maxStaleMicros) {
      String staleKey = stale.get().key();
      redis.get(bytes(staleKey)).whenComplete((raw, e) -> {
        if (e != null) {
          f.end(Outcome.error(redisError(e), false));
        } else if (raw != null) {
          f.end(Outcome.value(Envelope.decode(raw).value(), staleKey, false, false, true));
        } else {
          pollLater(f, snap.dataKey, stale, deadline, pollNanos);
        }
      });
      return;
    }
    pollLater(f, snap.dataKey, stale, deadline, pollNanos);
  }

  private void pollLater(Flight f, String dataKey, Optional<Layout.StaleKey> stale, long deadline, long interval) {
    if (f.cancelled()) {
      return;
    }
    long delay = Math.max(0, Math.min(interval, deadline - System.nanoTime()));
    try {
      timer.schedule(() -> reread(f, dataKey, stale, deadline, interval), delay, TimeUnit.NANOSECONDS);
    } catch (RejectedExecutionException e) {
      f.end(Outcome.error(new CacheException(CacheException.Kind.REDIS, "the cache is closed"), false));
    }
  }

  private void reread(Flight f, String dataKey, Optional<Layout.StaleKey> stale, long deadline, long interval) {
    if (f.cancelled()) {
      return;
    }
    CompletableFuture<byte[]> get = redis.get(bytes(dataKey)).toCompletableFuture();
    CompletableFuture<Long> left = redis.pttl(bytes(Layout.leaseKey(dataKey))).toCompletableFuture();
    CompletableFuture.allOf(get, left).whenComplete((x, e) -> {
      if (e != null) {
        f.end(Outcome.error(redisError(e), false));
        return;
      }
      byte[] raw = get.join();
      if (raw != null) {
        f.end(Outcome.value(Envelope.decode(raw).value(), dataKey, false, false, false));
        return;
      }
      if (left.join() == -2) {
        // The lease is gone without a value: one SET NX decides who loads next.
        tryLease(dataKey).whenComplete((token, e2) -> {
          if (e2 != null) {
            f.end(Outcome.error(redisError(e2), false));
          } else if (token == null) {
            waitMore(f, dataKey, stale, deadline, interval);
          } else if (f.hold(dataKey, token)) {
            metrics.leaseTakeovers.increment();
            holder(f, dataKey);
          } else {
            release(dataKey, token);
          }
        });
        return;
      }
      waitMore(f, dataKey, stale, deadline, interval);
    });
  }

  private void waitMore(Flight f, String dataKey, Optional<Layout.StaleKey> stale, long deadline, long interval) {
    if (System.nanoTime() - deadline < 0) {
      pollLater(f, dataKey, stale, deadline, Math.min(interval * 2, maxPollNanos));
      return;
    }
    Call c = f.leader;
    CacheException timeout = new CacheException(CacheException.Kind.LEASE_TIMEOUT,
        "key " + Layout.quote(c.key) + ": waited " + waitTimeoutNanos / 1_000_000 + " ms for another get's load of "
            + Layout.quote(dataKey));
    if (stale.isEmpty()) {
      f.end(Outcome.error(timeout, false));
      return;
    }
    // Eventual: the previous value, whatever its age, rather than nothing (rule 4).
    String staleKey = stale.get().key();
    redis.get(bytes(staleKey)).whenComplete((raw, e) -> {
      if (e == null && raw != null) {
        f.end(Outcome.value(Envelope.decode(raw).value(), staleKey, false, false, true));
      } else {
        f.end(Outcome.error(e != null ? redisError(e) : timeout, false));
      }
    });
  }

  private void putL1(Call c, String dataKey, byte[] value) {
    if (c.l1Id == null) {
      return;
    }
    if (exactL1) {
      l1.putExact(c.l1Id, c.ticket, dataKey, value, c.layout.records(), System.nanoTime());
    } else {
      l1.put(c.l1Id, dataKey, value, c.layout.records(), c.readStartedNanos);
    }
  }

  // ------------------------------------------------------------------ loaders

  /** The get's loader, at most once, with the loader timeout (rule 7). */
  private CompletableFuture<byte[]> callLoader(Call c) {
    CompletableFuture<byte[]> out = new CompletableFuture<>();
    if (!c.loaderCalled.compareAndSet(false, true)) {
      out.completeExceptionally(new IllegalStateException("the loader is called at most once per get"));
      return out;
    }
    AtomicReference<CompletionStage<byte[]>> inner = new AtomicReference<>();
    Runnable invoke = () -> {
      if (out.isDone()) {
        return;
      }
      try {
        CompletionStage<byte[]> stage = c.loader.load();
        if (stage == null) {
          throw new NullPointerException("the loader returned no stage");
        }
        inner.set(stage);
        if (out.isDone()) {
          cancelStage(stage);
        }
        stage.whenComplete((v, e) -> {
          if (e != null) {
            out.completeExceptionally(unwrap(e));
          } else {
            out.complete(v);
          }
        });
      } catch (Throwable t) {
        out.completeExceptionally(t);
      }
    };
    if (c.loader instanceof CallerThreadLoader) {
      invoke.run(); // only signals the calling thread, which runs the loader
    } else {
      try {
        loaderExecutor.execute(invoke);
      } catch (RejectedExecutionException e) {
        out.completeExceptionally(e);
      }
    }
    if (loaderTimeoutNanos > 0) {
      try {
        timer.schedule(() -> {
          out.completeExceptionally(new CacheException(CacheException.Kind.LOADER_TIMEOUT,
              "key " + Layout.quote(c.key) + ": the loader ran longer than " + loaderTimeoutNanos / 1_000_000 + " ms"));
        }, loaderTimeoutNanos, TimeUnit.NANOSECONDS);
      } catch (RejectedExecutionException e) {
        // the cache is closing: no timeout then
      }
    }
    // A timed-out or cancelled load stops its loader where it can.
    out.whenComplete((v, e) -> {
      if (e != null) {
        cancelStage(inner.get());
      }
    });
    return out;
  }

  private static void cancelStage(CompletionStage<byte[]> stage) {
    if (stage == null) {
      return;
    }
    try {
      stage.toCompletableFuture().cancel(true);
    } catch (UnsupportedOperationException e) {
      // a stage that cannot be cancelled runs to its end; its result is ignored
    }
  }

  /** The freshness check of section 9 on a sample of hits: never changes what is served. */
  private CompletableFuture<Void> sample(Call c, byte[] served) {
    if (sampleRate <= 0 || ThreadLocalRandom.current().nextDouble() >= sampleRate) {
      return CompletableFuture.completedFuture(null);
    }
    return callLoader(c).handle((truth, e) -> {
      if (e == null && truth != null) {
        metrics.freshnessCheck(!Arrays.equals(truth, served));
      }
      return null; // a loader error says nothing about freshness: not a check
    });
  }

  /**
   * A synchronous loader run by the thread blocked in {@link #get}: the flight asks
   * for it through {@link #load}, the caller runs it and hands the bytes back.
   */
  private static final class CallerThreadLoader implements AsyncLoader {
    private final Loader loader;
    final CompletableFuture<Void> requested = new CompletableFuture<>();
    private volatile Pending pending;
    private Thread runner;
    private boolean running;
    private boolean interruptedByUs;

    CallerThreadLoader(Loader loader) {
      this.loader = loader;
    }

    /** A load whose cancellation (timeout, cancelled get) interrupts the loader. */
    private final class Pending extends CompletableFuture<byte[]> {
      @Override
      public boolean cancel(boolean mayInterruptIfRunning) {
        boolean cancelled = super.cancel(mayInterruptIfRunning);
        interruptRunner();
        return cancelled;
      }
    }

    @Override
    public CompletionStage<byte[]> load() {
      Pending p = new Pending();
      pending = p;
      requested.complete(null);
      return p;
    }

    private synchronized void interruptRunner() {
      if (running) {
        interruptedByUs = true;
        runner.interrupt();
      }
    }

    /**
     * Runs the loader here; true when someone else interrupted the caller's thread
     * meanwhile (the caller then cancels the get, which releases the lease).
     */
    boolean runHere() {
      Pending p = pending;
      synchronized (this) {
        if (p.isDone()) {
          return false;
        }
        runner = Thread.currentThread();
        running = true;
      }
      byte[] value = null;
      Throwable failure = null;
      try {
        value = loader.load();
      } catch (Throwable t) {
        failure = t;
      }
      boolean ours;
      synchronized (this) {
        running = false;
        ours = interruptedByUs;
        if (ours) {
          Thread.interrupted(); // our own interrupt (a timeout) must not leak to the caller
          interruptedByUs = false;
        }
      }
      if (!ours && (Thread.currentThread().isInterrupted() || failure instanceof InterruptedException)) {
        Thread.currentThread().interrupt();
        return true;
      }
      if (failure != null) {
        p.completeExceptionally(failure);
      } else {
        p.complete(value);
      }
      return false;
    }
  }

  // ------------------------------------------------------------------ Redis

  /** What a get read (section 5). */
  static final class Snapshot {
    long nowMicros;
    String epoch;
    List<Layout.Fields> fields;
    String dataKey;
    long pttlMillis;
    byte[] value;
  }

  /** One script on a standalone server, two pipelined round trips on a cluster. */
  private CompletableFuture<Snapshot> read(Layout layout, RedisClusterAsyncCommands<byte[], byte[]> on) {
    List<String> records = layout.records();
    byte[][] keys = new byte[records.size()][];
    for (int i = 0; i < keys.length; i++) {
      keys[i] = bytes(records.get(i));
    }
    if (!cluster) {
      byte[][] args = {bytes(layout.key()), bytes(Integer.toString(layout.deps()))};
      return readScript(on, keys, args, 0).thenCompose(reply -> fromScript(layout, reply));
    }
    CompletableFuture<List<byte[]>> time = redis.time().toCompletableFuture();
    CompletableFuture<byte[]> epoch = redis.hget(keys[0], bytes("e")).toCompletableFuture();
    List<CompletableFuture<List<KeyValue<byte[], byte[]>>>> each = new ArrayList<>();
    for (int i = 1; i < keys.length; i++) {
      each.add(redis.hmget(keys[i], bytes("v"), bytes("pv")).toCompletableFuture());
    }
    List<CompletableFuture<?>> all = new ArrayList<>(each);
    all.add(time);
    all.add(epoch);
    return CompletableFuture.allOf(all.toArray(new CompletableFuture<?>[0])).thenCompose(x -> {
      List<byte[]> t = time.join();
      List<String> texts = new ArrayList<>();
      texts.add(text(epoch.join()));
      for (CompletableFuture<List<KeyValue<byte[], byte[]>>> f : each) {
        List<KeyValue<byte[], byte[]>> fields = f.join();
        texts.add(fields.get(0).hasValue() ? text(fields.get(0).getValue()) : null);
        texts.add(fields.get(1).hasValue() ? text(fields.get(1).getValue()) : null);
      }
      Snapshot s = parse(layout, micros(t.get(0), t.get(1)), texts);
      return fetchValue(s);
    });
  }

  private CompletableFuture<List<Object>> readScript(
      RedisClusterAsyncCommands<byte[], byte[]> on, byte[][] keys, byte[][] args, int attempt) {
    CompletionStage<List<Object>> sent = readOnlyScripts
        ? on.<List<Object>>evalshaReadOnly(READ_SHA, ScriptOutputType.MULTI, keys, args)
        : on.<List<Object>>evalsha(READ_SHA, ScriptOutputType.MULTI, keys, args);
    return sent.toCompletableFuture().handle((reply, e) -> {
      if (e == null) {
        return CompletableFuture.completedFuture(reply);
      }
      Throwable cause = unwrap(e);
      String message = String.valueOf(cause.getMessage());
      if (attempt < 3 && (cause instanceof RedisNoScriptException || message.startsWith("NOSCRIPT"))) {
        return on.scriptLoad(READ_LUA).toCompletableFuture().thenCompose(sha -> readScript(on, keys, args, attempt + 1));
      }
      if (attempt < 3 && readOnlyScripts && cause instanceof RedisCommandExecutionException
          && message.toLowerCase(java.util.Locale.ROOT).contains("unknown command")) {
        readOnlyScripts = false; // a server before 7.0
        return readScript(on, keys, args, attempt + 1);
      }
      return CompletableFuture.<List<Object>>failedFuture(cause);
    }).thenCompose(f -> f);
  }

  private CompletableFuture<Snapshot> fromScript(Layout layout, List<Object> reply) {
    int records = layout.records().size();
    int expected = 3 + 2 * (records - 1) + 3;
    if (reply == null || reply.size() != expected) {
      throw new CacheException(CacheException.Kind.PROTOCOL,
          "unexpected reply from the read script: " + (reply == null ? "nil" : reply.size() + " elements"));
    }
    List<String> texts = new ArrayList<>(expected - 5);
    for (int i = 2; i < expected - 3; i++) {
      texts.add(text(reply.get(i)));
    }
    Snapshot s = parse(layout, micros(reply.get(0), reply.get(1)), texts);
    String scriptKey = text(reply.get(expected - 3));
    if (!s.dataKey.equals(scriptKey) || !(reply.get(expected - 2) instanceof Long)) {
      return fetchValue(s);
    }
    s.pttlMillis = (Long) reply.get(expected - 2);
    Object value = reply.get(expected - 1);
    s.value = value instanceof byte[] b ? b : null;
    return CompletableFuture.completedFuture(s);
  }

  private CompletableFuture<Snapshot> fetchValue(Snapshot s) {
    CompletableFuture<byte[]> value = redis.get(bytes(s.dataKey)).toCompletableFuture();
    CompletableFuture<Long> pttl = redis.pttl(bytes(s.dataKey)).toCompletableFuture();
    return CompletableFuture.allOf(value, pttl).thenApply(x -> {
      s.value = value.join();
      s.pttlMillis = pttl.join();
      return s;
    });
  }

  /** Validates every version text (section 3) and names the data key from them. */
  private static Snapshot parse(Layout layout, long nowMicros, List<String> texts) {
    List<String> records = layout.records();
    Snapshot s = new Snapshot();
    s.nowMicros = nowMicros;
    String epoch = Layout.parseVersion(records.get(0), "e", texts.get(0));
    s.epoch = epoch == null ? "0" : epoch;
    List<Layout.Fields> fields = new ArrayList<>(records.size() - 1);
    List<String> versions = new ArrayList<>(records.size() - 1);
    for (int i = 1; i < records.size(); i++) {
      String v = Layout.parseVersion(records.get(i), "v", texts.get(2 * i - 1));
      String pv = Layout.parseVersion(records.get(i), "pv", texts.get(2 * i));
      fields.add(new Layout.Fields(v == null ? "0" : v, pv));
      versions.add(v == null ? "0" : v);
    }
    s.fields = fields;
    s.dataKey = layout.dataKey(s.epoch, versions);
    return s;
  }

  private static long micros(Object seconds, Object micros) {
    try {
      return Long.parseLong(text(seconds)) * 1_000_000L + Long.parseLong(text(micros));
    } catch (NumberFormatException | NullPointerException e) {
      throw new CacheException(CacheException.Kind.PROTOCOL, "unexpected TIME reply");
    }
  }

  private CompletableFuture<String> tryLease(String dataKey) {
    byte[] raw = new byte[16];
    TOKENS.nextBytes(raw);
    String token = HexFormat.of().formatHex(raw);
    return redis.set(bytes(Layout.leaseKey(dataKey)), bytes(token), SetArgs.Builder.nx().px(leaseMillis))
        .toCompletableFuture()
        .thenApply(ok -> "OK".equals(ok) ? token : null);
  }

  /**
   * The compare-and-delete of the lease (lua/release.lua), best effort: an error is
   * ignored, as the lease expires anyway.
   */
  private CompletableFuture<Void> release(String dataKey, String token) {
    byte[][] keys = {bytes(Layout.leaseKey(dataKey))};
    byte[] arg = bytes(token);
    return redis.<Long>evalsha(RELEASE_SHA, ScriptOutputType.INTEGER, keys, arg).toCompletableFuture()
        .handle((n, e) -> e == null
            ? CompletableFuture.completedFuture(n)
            // EVAL loads the script on that node for the next time.
            : redis.<Long>eval(RELEASE_LUA, ScriptOutputType.INTEGER, keys, arg).toCompletableFuture())
        .thenCompose(f -> f)
        .handle((n, e) -> null);
  }

  // ------------------------------------------------------------------ L1 feeds

  /** Section 8: the daemon's notices drop bounded L1 entries; a (re)subscribe clears the L1. */
  private void followNotices(StatefulRedisPubSubConnection<String, String> sub, String channel) {
    owned.add(sub);
    sub.addListener(new RedisPubSubAdapter<String, String>() {
      @Override
      public void message(String ch, String message) {
        onNotice(message);
      }

      @Override
      public void subscribed(String ch, long count) {
        // On every (re)subscribe: notices sent while not subscribed are lost.
        metrics.l1Reset.increment(l1.clear());
      }
    });
    sub.addListener(new RedisConnectionStateListener() {
      @Override
      public void onRedisDisconnected(io.lettuce.core.RedisChannelHandler<?, ?> connection) {
        metrics.l1Reset.increment(l1.clear());
      }

      @Override
      public void onRedisConnected(io.lettuce.core.RedisChannelHandler<?, ?> connection, SocketAddress address) {
        metrics.l1Reset.increment(l1.clear());
      }
    });
    sub.sync().subscribe(channel);
  }

  private void onNotice(String message) {
    Map<String, String> notice = Json.object(message);
    if (notice == null || notice.get("record_key") == null) {
      return;
    }
    metrics.l1Notice.increment(l1.invalidate(notice.get("record_key")));
    String commit = notice.get("commit_time_us");
    if (commit != null) {
      try {
        long commitMicros = Long.parseLong(commit);
        if (commitMicros > 0) {
          long nowMicros = System.currentTimeMillis() * 1000;
          metrics.propagation.record(Math.max(0, nowMicros - commitMicros) / 1000.0);
        }
      } catch (NumberFormatException e) {
        // a notice without a usable commit time still invalidated its entries
      }
    }
  }

  /**
   * The exact L1 (spec section 8.1): a connection of its own, named {@code
   * cdc-cache-tracking:<name>}, with {@code CLIENT TRACKING ON} (RESP3: invalidations
   * arrive as push messages on it). While tracking is up, the first read of every get
   * goes through it, so Redis reports every version record read that changes.
   */
  private void track(RedisClient client, String name) {
    StatefulRedisConnection<byte[], byte[]> connection = client.connect(ByteArrayCodec.INSTANCE);
    owned.add(connection);
    String info = connection.sync().clientInfo();
    if (info != null && info.contains(" resp=") && !info.contains(" resp=3")) {
      throw CacheException.invalid("the exact (tracking) L1 needs RESP3 (Redis 6 or later, a client not set to RESP2)");
    }
    connection.sync().clientSetname(bytes("cdc-cache-tracking:" + name.replace(' ', '_')));
    connection.addListener((PushListener) this::onPush);
    connection.addListener(new RedisConnectionStateListener() {
      @Override
      public void onRedisDisconnected(io.lettuce.core.RedisChannelHandler<?, ?> c) {
        trackingDown();
      }

      @Override
      public void onRedisConnected(io.lettuce.core.RedisChannelHandler<?, ?> c, SocketAddress address) {
        // A new connection tracks nothing: nothing read before tracking is on again may be cached.
        trackingDown();
        enableTracking(connection);
      }
    });
    tracker = connection.async();
    String ok = connection.sync().clientTracking(TrackingArgs.Builder.enabled());
    if (!"OK".equals(ok)) {
      throw CacheException.invalid("CLIENT TRACKING answered " + ok);
    }
    metrics.l1Reset.increment(l1.tracking(true));
    // Health: a connection that died silently stops the L1 within about two seconds.
    timer.scheduleWithFixedDelay(() -> checkTracking(connection), 1, 1, TimeUnit.SECONDS);
  }

  private void trackingDown() {
    metrics.l1Reset.increment(l1.tracking(false));
  }

  private void enableTracking(StatefulRedisConnection<byte[], byte[]> connection) {
    if (!enablingTracking.compareAndSet(false, true)) {
      return;
    }
    connection.async().clientTracking(TrackingArgs.Builder.enabled()).toCompletableFuture()
        .orTimeout(1, TimeUnit.SECONDS)
        .whenComplete((ok, e) -> {
          enablingTracking.set(false);
          if (e == null && "OK".equals(ok)) {
            metrics.l1Reset.increment(l1.tracking(true)); // flushed once more as it comes up
          }
        });
  }

  private void checkTracking(StatefulRedisConnection<byte[], byte[]> connection) {
    if (!connection.isOpen()) {
      if (l1.trackingUp()) {
        trackingDown();
      }
      return;
    }
    connection.async().ping().toCompletableFuture().orTimeout(1, TimeUnit.SECONDS).whenComplete((pong, e) -> {
      if (e != null) {
        if (l1.trackingUp()) {
          trackingDown();
        }
      } else if (!l1.trackingUp()) {
        enableTracking(connection); // back after a failed check (or a reconnect whose enable failed)
      }
    });
  }

  private void onPush(PushMessage message) {
    if (!"invalidate".equals(message.getType())) {
      return;
    }
    List<Object> content = message.getContent(StringCodec.UTF8::decodeKey);
    Object keys = content.size() > 1 ? content.get(1) : null;
    if (!(keys instanceof List<?> list)) {
      // A null key list: FLUSHALL or FLUSHDB, every entry goes.
      metrics.l1Tracking.increment(l1.clear());
      return;
    }
    int dropped = 0;
    for (Object key : list) {
      if (key instanceof String k) {
        dropped += l1.invalidate(k);
      } else if (key instanceof ByteBuffer b) {
        dropped += l1.invalidate(StringCodec.UTF8.decodeKey(b));
      }
    }
    metrics.l1Tracking.increment(dropped);
  }

  // ------------------------------------------------------------------ helpers

  private static CacheException redisError(Throwable e) {
    Throwable cause = unwrap(e);
    if (cause instanceof CacheException c) {
      return c;
    }
    return new CacheException(CacheException.Kind.REDIS, String.valueOf(cause.getMessage()), cause);
  }

  private static Throwable unwrap(Throwable e) {
    while ((e instanceof CompletionException || e instanceof ExecutionException) && e.getCause() != null) {
      e = e.getCause();
    }
    return e;
  }

  private static long saturatedMicros(Duration d) {
    try {
      return Math.multiplyExact(d.getSeconds(), 1_000_000L) + d.getNano() / 1000;
    } catch (ArithmeticException e) {
      return Long.MAX_VALUE;
    }
  }

  private static long saturatedNanos(Duration d) {
    try {
      return d.toNanos();
    } catch (ArithmeticException e) {
      return Long.MAX_VALUE;
    }
  }

  static byte[] bytes(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  private static String text(Object o) {
    if (o == null) {
      return null;
    }
    if (o instanceof byte[] b) {
      return new String(b, StandardCharsets.UTF_8);
    }
    return o.toString();
  }

  private static String resource(String name) {
    try (InputStream in = Cache.class.getResourceAsStream("lua/" + name)) {
      if (in == null) {
        throw new IllegalStateException("lua/" + name + " is missing from the jar (copied from readers/lua at build)");
      }
      return new String(in.readAllBytes(), StandardCharsets.UTF_8);
    } catch (IOException e) {
      throw new IllegalStateException(e);
    }
  }

  private static String sha1(String text) {
    try {
      return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-1").digest(bytes(text)));
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }
}
