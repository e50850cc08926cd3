package cdccache

// The read path against real Redis: the epoch, deps and namespaces,
// stale-while-revalidate and its bounds, XFetch, the freshness check, bad
// versions, and both L1s (readers/spec.md sections 2 to 9).

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func (f *fixture) serverTimeUs() uint64 {
	f.t.Helper()
	now, err := f.top.client.Time(context.Background()).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	return uint64(now.UnixMicro())
}

func TestEpochDepsAndNamespaces(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		cache := f.cache(unique("epoch"))
		ctx := context.Background()
		key := unique("product") + ":1"
		v1 := f.bump(key, 1)
		if _, err := cache.Get(ctx, key, newLoads("before", 0).load, TTL(testTTL)); err != nil {
			t.Fatal(err)
		}
		f.bump(key, 2)
		f.bump(key, 3) // pv now names v2's key, which nobody filled

		// A Redis loss recovery moves the epoch: values from before it are
		// exactly what must not be served, not even to an eventual get.
		epoch := f.serverTimeUs()
		if err := top.client.HSet(ctx, f.prefix+"epoch", "e", epoch).Err(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { top.client.Del(context.Background(), f.prefix+"epoch") })
		got, err := cache.Get(ctx, key, newLoads("after", 0).load, TTL(testTTL), Eventual(time.Hour))
		if err != nil || got.Hit || got.Stale || string(got.Value) != "after" ||
			!strings.HasPrefix(got.DataKey, key+"@e"+strconv.FormatUint(epoch, 10)+":v") {
			t.Fatalf("after the epoch moved: %+v, %v", got, err)
		}
		if strings.Contains(got.DataKey, strconv.FormatUint(v1, 10)) {
			t.Fatalf("data key %q names the old version", got.DataKey)
		}

		// deps and namespaces: a bump of any record names a new data key.
		page := unique("page") + ":1"
		dep := unique("category") + ":3"
		ns := unique("ns")
		opts := []GetOption{TTL(testTTL), Deps(key, dep), Namespaces(ns)}
		first, err := cache.Get(ctx, page, newLoads("p1", 0).load, opts...)
		if err != nil || first.Hit {
			t.Fatalf("page: %+v, %v", first, err)
		}
		if again, _ := cache.Get(ctx, page, newLoads("unused", 0).load, opts...); !again.Hit || again.DataKey != first.DataKey {
			t.Fatalf("page again: %+v", again)
		}
		nsVersion := f.bump("ns:"+ns, 1)
		moved, err := cache.Get(ctx, page, newLoads("p2", 0).load, opts...)
		if err != nil || moved.Hit || string(moved.Value) != "p2" || !strings.HasSuffix(moved.DataKey, ":n"+strconv.FormatUint(nsVersion, 10)) {
			t.Fatalf("after a namespace bump: %+v, %v", moved, err)
		}
		depVersion := f.bump(dep, 1)
		moved, err = cache.Get(ctx, page, newLoads("p3", 0).load, opts...)
		if err != nil || moved.Hit || !strings.Contains(moved.DataKey, ":v"+strconv.FormatUint(depVersion, 10)+":n") {
			t.Fatalf("after a dependency bump: %+v, %v", moved, err)
		}
	})
}

func TestStaleWhileRevalidateBounds(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		const waitTimeout, bound = 400 * time.Millisecond, 300 * time.Millisecond
		name := unique("swr")
		cache := f.cache(name, WithWaitTimeout(waitTimeout))
		ctx := context.Background()
		key := unique("product") + ":2"
		v1 := f.bump(key, 1)
		if _, err := cache.Get(ctx, key, newLoads("v1", 0).load, TTL(testTTL)); err != nil {
			t.Fatal(err)
		}
		v2 := f.bump(key, 2)
		// Another process holds the new version's lease and loads slowly.
		lease := LeaseKey(dataKey(key, v2))
		if err := top.client.Set(ctx, lease, "another", 30*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		never := newLoads("never", 0)

		// Within the bound: the previous value at once.
		began := time.Now()
		got, err := cache.Get(ctx, key, never.load, TTL(testTTL), Eventual(bound))
		if err != nil || !got.Stale || !got.Hit || string(got.Value) != "v1" || got.DataKey != dataKey(key, v1) {
			t.Fatalf("within the bound: %+v, %v", got, err)
		}
		if took := time.Since(began); took > 150*time.Millisecond {
			t.Fatalf("a stale value took %s", took)
		}

		// Past the bound: no stale value at once; the get waits for the
		// holder until its wait timeout, then serves the previous value
		// whatever its age (rule 4), still stale.
		time.Sleep(bound + 50*time.Millisecond)
		began = time.Now()
		got, err = cache.Get(ctx, key, never.load, TTL(testTTL), Eventual(bound))
		took := time.Since(began)
		if err != nil || !got.Stale || string(got.Value) != "v1" {
			t.Fatalf("past the bound: %+v, %v", got, err)
		}
		if took < waitTimeout-50*time.Millisecond || took > waitTimeout+300*time.Millisecond {
			t.Fatalf("past the bound the get took %s, want about the wait timeout %s", took, waitTimeout)
		}

		// strong: never the previous value; lease_timeout at the wait timeout.
		began = time.Now()
		_, err = cache.Get(ctx, key, never.load, TTL(testTTL))
		var e *Error
		if !errors.Is(err, ErrLeaseTimeout) || !errors.As(err, &e) || e.DataKey != dataKey(key, v2) || e.Waited < waitTimeout-50*time.Millisecond {
			t.Fatalf("strong with a held lease: %v after %s", err, time.Since(began))
		}
		if never.calls.Load() != 0 {
			t.Fatal("a get that never held the lease called its loader")
		}
		if n := f.count(MetricStaleServed, name); n != 2 {
			t.Fatalf("cache_stale_served_total %v, want 2", n)
		}

		// The holder is gone: the next get takes the lease and loads.
		top.client.Del(ctx, lease)
		got, err = cache.Get(ctx, key, newLoads("v2", 0).load, TTL(testTTL), Eventual(bound))
		if err != nil || got.Hit || got.Stale || string(got.Value) != "v2" {
			t.Fatalf("after the holder left: %+v, %v", got, err)
		}

		// Two records bumped in one call share their version's time: the
		// key before the last bump is unknowable, so an eventual get waits
		// as a strong one does.
		page, dep := unique("page")+":1", unique("category")+":1"
		opts := []GetOption{TTL(testTTL), Deps(key, dep), Eventual(time.Hour)}
		if _, err := cache.Get(ctx, page, newLoads("p1", 0).load, opts...); err != nil {
			t.Fatal(err)
		}
		reply, err := bumpLua().Run(ctx, top.client, []string{f.prefix + key}, 600_000, "p:test", pad(3)).Slice()
		if err != nil {
			t.Fatalf("bump: %v", err)
		}
		// Per record the new version (a string) when applied, 0 when not.
		text, applied := reply[0].(string)
		if !applied {
			t.Fatalf("bump not applied: %v", reply)
		}
		// The dependency's record gets the very same version, as one
		// transaction's bump of both would.
		if err := top.client.HSet(ctx, f.prefix+dep, "v", text, "pv", "1").Err(); err != nil {
			t.Fatal(err)
		}
		snapshot, err := cache.read(ctx, mustLayout(t, f.prefix, page, key, dep))
		if err != nil {
			t.Fatal(err)
		}
		if err := top.client.Set(ctx, LeaseKey(snapshot.dataKey), "another", 30*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := cache.Get(ctx, page, never.load, opts...); !errors.Is(err, ErrLeaseTimeout) {
			t.Fatalf("tied versions: %v", err)
		}
	})
}

func mustLayout(t *testing.T, prefix, key string, deps ...string) *Layout {
	t.Helper()
	l, err := NewLayout(prefix, key, deps, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestXFetch(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		name := unique("xfetch")
		cache := f.cache(name)
		ctx := context.Background()
		key := unique("product") + ":4"
		v := f.bump(key, 1)
		dk := dataKey(key, v)
		// A load that took "10,000 s" and 1 s left: refreshing is due
		// unless -ln(u) < 1e-4, one draw in 10,000.
		top.client.Set(ctx, dk, "c1:10000000:old", time.Second)
		got, err := cache.Get(ctx, key, newLoads("new", 0).load, TTL(testTTL))
		if err != nil || got.Hit || string(got.Value) != "new" {
			t.Fatalf("an early refresh: %+v, %v", got, err)
		}
		if n := f.count(MetricEarlyRefreshes, name); n != 1 {
			t.Fatalf("cache_early_refreshes_total %v", n)
		}
		if pttl := top.client.PTTL(ctx, dk).Val(); pttl < 50*time.Second {
			t.Fatalf("the refill's TTL left %s, want about the get's %s", pttl, testTTL)
		}
		// Someone else refreshing: the cached value serves.
		top.client.Set(ctx, dk, "c1:10000000:old2", time.Second)
		top.client.Set(ctx, LeaseKey(dk), "another", 10*time.Second)
		got, err = cache.Get(ctx, key, newLoads("unused", 0).load, TTL(testTTL))
		if err != nil || !got.Hit || string(got.Value) != "old2" {
			t.Fatalf("while another refreshes: %+v, %v", got, err)
		}
		// beta 0: never early; a value without the envelope as it is.
		off := f.cache(unique("xfetch_off"), WithBeta(0))
		top.client.Del(ctx, LeaseKey(dk))
		if got, _ := off.Get(ctx, key, newLoads("unused", 0).load, TTL(testTTL)); !got.Hit || string(got.Value) != "old2" {
			t.Fatalf("beta 0: %+v", got)
		}
		top.client.Set(ctx, dk, "plain", time.Second)
		if got, _ := cache.Get(ctx, key, newLoads("unused", 0).load, TTL(testTTL)); !got.Hit || string(got.Value) != "plain" {
			t.Fatalf("a hand-filled value: %+v", got)
		}
	})
}

func TestFreshnessCheck(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		name := unique("fresh")
		cache := f.cache(name, WithSampleRate(1))
		ctx := context.Background()
		key := unique("product") + ":5"
		f.bump(key, 1)
		if _, err := cache.Get(ctx, key, newLoads("a", 0).load, TTL(testTTL)); err != nil {
			t.Fatal(err)
		}
		got, err := cache.Get(ctx, key, newLoads("b", 0).load, TTL(testTTL))
		if err != nil || string(got.Value) != "a" {
			t.Fatalf("the served value is not replaced: %+v, %v", got, err)
		}
		if _, err := cache.Get(ctx, key, newLoads("a", 0).load, TTL(testTTL)); err != nil {
			t.Fatal(err)
		}
		checks, mismatches, ratio := f.count(MetricFreshnessChecks, name), f.count(MetricFreshnessMismatches, name), f.count(MetricStaleRatio, name)
		if checks != 2 || mismatches != 1 || ratio != 0.5 {
			t.Fatalf("checks %v, mismatches %v, ratio %v", checks, mismatches, ratio)
		}
	})
}

func TestBadVersion(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		cache := f.cache(unique("bad"))
		key := unique("product") + ":6"
		top.client.HSet(context.Background(), f.prefix+key, "v", "007")
		never := newLoads("never", 0)
		_, err := cache.Get(context.Background(), key, never.load, TTL(testTTL))
		var e *Error
		if !errors.Is(err, ErrBadVersion) || !errors.As(err, &e) || e.Record != f.prefix+key || e.Text != "007" || never.calls.Load() != 0 {
			t.Fatalf("a bad version: %v", err)
		}
	})
}

// killPubSub closes every Pub/Sub connection of the topology's servers.
func killPubSub(t *testing.T, top topology) {
	t.Helper()
	ctx := context.Background()
	kill := func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err()
	}
	var err error
	switch c := top.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachShard(ctx, kill)
	case *redis.Client:
		err = kill(ctx, c)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestBoundedL1(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		name := unique("l1")
		channel := unique("notices")
		cache := f.cache(name, WithL1(L1{MaxStale: 5 * time.Second, MaxEntries: 3, Channel: channel}))
		until(t, "the notice subscription", 5*time.Second, cache.noticesLive.Load)
		ctx := context.Background()
		key := unique("product") + ":1"
		f.bump(key, 1)
		eventual := []GetOption{TTL(testTTL), Eventual(10 * time.Second)}
		if got, err := cache.Get(ctx, key, newLoads("v1", 0).load, eventual...); err != nil || got.Hit {
			t.Fatalf("first: %+v, %v", got, err)
		}
		never := newLoads("never", 0)
		got, err := cache.Get(ctx, key, never.load, eventual...)
		if err != nil || !got.Hit || !got.Stale || string(got.Value) != "v1" {
			t.Fatalf("an L1 hit: %+v, %v", got, err)
		}
		if n := f.metric(MetricHits, map[string]string{"cache": name, "layer": "l1"}); n != 1 {
			t.Fatalf("L1 hits %v", n)
		}
		// strong gets never read the L1.
		if got, _ := cache.Get(ctx, key, never.load, TTL(testTTL)); got.Stale || !got.Hit {
			t.Fatalf("strong: %+v", got)
		}
		if n := f.metric(MetricHits, map[string]string{"cache": name, "layer": "l1"}); n != 1 {
			t.Fatalf("a strong get read the L1 (%v L1 hits)", n)
		}
		// A bump without a notice: the entry serves within its bound.
		f.bump(key, 2)
		if got, _ := cache.Get(ctx, key, never.load, eventual...); string(got.Value) != "v1" || !got.Stale {
			t.Fatalf("within the bound: %+v", got)
		}
		// The notice drops it at once; the next get reads Redis and loads.
		payload, _ := json.Marshal(map[string]any{
			"kind": "KEY", "target": key, "record_key": f.prefix + key, "version": 2,
			"source": "test", "position": "0", "commit_time_us": time.Now().UnixMicro() - 5000,
		})
		if err := top.client.Publish(ctx, channel, payload).Err(); err != nil {
			t.Fatal(err)
		}
		until(t, "the notice", 5*time.Second, func() bool {
			return f.metric(MetricL1Invalidations, map[string]string{"cache": name, "reason": "notice"}) == 1
		})
		got, err = cache.Get(ctx, key, newLoads("v2", 0).load, eventual...)
		if err != nil || got.Hit || string(got.Value) != "v2" {
			t.Fatalf("after the notice: %+v, %v", got, err)
		}
		if n := f.count(MetricPropagation, name); n != 1 {
			t.Fatalf("invalidation_propagation_ms observed %v times", n)
		}
		// The get's own bound is the tighter one: a 0 bound reads Redis.
		if got, _ := cache.Get(ctx, key, never.load, TTL(testTTL), Eventual(0)); got.Stale {
			t.Fatalf("max stale 0 served the L1: %+v", got)
		}
		// At most MaxEntries.
		for i := range 5 {
			k := unique("many") + ":" + strconv.Itoa(i)
			if _, err := cache.Get(ctx, k, newLoads("x", 0).load, eventual...); err != nil {
				t.Fatal(err)
			}
		}
		if n := cache.l1.len(); n > 3 {
			t.Fatalf("%d L1 entries, max 3", n)
		}
		// A lost subscription clears the whole L1, then resubscribes.
		resets := f.metric(MetricL1Invalidations, map[string]string{"cache": name, "reason": "reset"})
		killPubSub(t, top)
		until(t, "the L1 cleared", 10*time.Second, func() bool { return cache.l1.len() == 0 })
		if after := f.metric(MetricL1Invalidations, map[string]string{"cache": name, "reason": "reset"}); after < resets+3 {
			t.Fatalf("reset invalidations %v -> %v, want the 3 entries", resets, after)
		}
		until(t, "the resubscription", 10*time.Second, cache.noticesLive.Load)
	})
}

func TestTrackingL1(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		name := unique("tracking")
		cache := f.cache(name, WithTrackingL1(TrackingL1{MaxEntries: 4, HealthInterval: 200 * time.Millisecond}))
		serving := func() bool {
			cache.exact.mu.Lock()
			defer cache.exact.mu.Unlock()
			return cache.exact.serving()
		}
		until(t, "tracking", 10*time.Second, serving)
		ctx := context.Background()
		key := unique("product") + ":1"
		f.bump(key, 1)
		// The bump's own invalidation may reach the tracking connection
		// after the first get's read began, which then (rightly) holds
		// nothing; let it arrive first.
		time.Sleep(100 * time.Millisecond)
		l1Hits := func() float64 { return f.metric(MetricHits, map[string]string{"cache": name, "layer": "l1"}) }
		if got, err := cache.Get(ctx, key, newLoads("v1", 0).load, TTL(testTTL)); err != nil || got.Hit {
			t.Fatalf("first: %+v, %v", got, err)
		}
		never := newLoads("never", 0)
		got, err := cache.Get(ctx, key, never.load, TTL(testTTL))
		if err != nil || !got.Hit || got.Stale || string(got.Value) != "v1" || l1Hits() != 1 {
			t.Fatalf("a strong L1 hit: %+v, %v (L1 hits %v)", got, err, l1Hits())
		}
		// A bump by another connection: Redis reports it, the record is
		// dropped at once, and the next get names the new data key.
		layout := mustLayout(t, f.prefix, key, key)
		bumpedAt := time.Now()
		v2 := f.bump(key, 2)
		until(t, "the invalidation", 2*time.Second, func() bool {
			_, _, held := cache.exact.lookup(layout, time.Now())
			return !held
		})
		t.Logf("invalidated %s after the bump", time.Since(bumpedAt))
		got, err = cache.Get(ctx, key, newLoads("v2", 0).load, TTL(testTTL))
		if err != nil || got.Hit || string(got.Value) != "v2" || got.DataKey != dataKey(key, v2) {
			t.Fatalf("after the bump: %+v, %v", got, err)
		}
		if got, _ := cache.Get(ctx, key, never.load, TTL(testTTL), Eventual(time.Second)); !got.Hit || got.Stale || string(got.Value) != "v2" || l1Hits() != 2 {
			t.Fatalf("an eventual L1 hit: %+v", got)
		}
		// The epoch record is tracked too.
		top.client.HSet(ctx, f.prefix+"epoch", "e", f.serverTimeUs())
		t.Cleanup(func() { top.client.Del(context.Background(), f.prefix+"epoch") })
		until(t, "the epoch's invalidation", 2*time.Second, func() bool {
			_, _, held := cache.exact.lookup(layout, time.Now())
			return !held
		})
		// Bounded memory.
		for i := range 6 {
			k := unique("many") + ":" + strconv.Itoa(i)
			if _, err := cache.Get(ctx, k, newLoads("x", 0).load, TTL(testTTL)); err != nil {
				t.Fatal(err)
			}
		}
		if records, values, _ := cache.exact.sizes(); records > 4 || values > 4 {
			t.Fatalf("%d records and %d values held, max 4 each", records, values)
		}
		// A lost tracking connection clears the whole L1; it serves again
		// once tracking is back.
		if _, err := cache.Get(ctx, key, newLoads("v3", 0).load, TTL(testTTL)); err != nil {
			t.Fatal(err)
		}
		if _, _, held := cache.exact.lookup(layout, time.Now()); !held {
			t.Fatal("not held before the kill")
		}
		killPubSub(t, top)
		until(t, "the L1 cleared", 5*time.Second, func() bool {
			records, values, _ := cache.exact.sizes()
			return records == 0 && values == 0
		})
		until(t, "tracking again", 10*time.Second, serving)
		got, err = cache.Get(ctx, key, never.load, TTL(testTTL))
		if err != nil || !got.Hit || got.Stale {
			t.Fatalf("after tracking came back: %+v, %v", got, err)
		}
		if n := f.metric(MetricL1Invalidations, map[string]string{"cache": name, "reason": "reset"}); n < 1 {
			t.Fatalf("reset invalidations %v", n)
		}
		if top.cluster {
			return
		}
		// A silent tracking connection (the server answers nothing, not
		// even its pings) is taken as dead after twice the health
		// interval: the L1 stops serving rather than trust it.
		if err := top.client.Do(ctx, "CLIENT", "PAUSE", "1500", "ALL").Err(); err != nil {
			t.Fatal(err)
		}
		pausedAt := time.Now()
		until(t, "the silent connection taken as dead", 3*time.Second, func() bool { return !serving() })
		if took := time.Since(pausedAt); took > time.Second {
			t.Fatalf("a silent tracking connection served for %s", took)
		}
		until(t, "tracking after the pause", 10*time.Second, serving)
	})
}
