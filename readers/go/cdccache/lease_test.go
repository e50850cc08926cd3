package cdccache

// The lease rule against real Redis (readers/spec.md section 5 and the
// behaviour tests of section 13), on a standalone server and on a Cluster.
// Versions are bumped by the daemon's own bump script.

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const testTTL = time.Minute

// getAll runs n gets at once (released together) and returns their results.
func getAll(n int, get func(i int) (Result, error)) ([]Result, []error, []time.Duration) {
	results := make([]Result, n)
	errs := make([]error, n)
	took := make([]time.Duration, n)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			began := time.Now()
			results[i], errs[i] = get(i)
			took[i] = time.Since(began)
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	return results, errs, took
}

func TestOneLoadAfterABump(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		for _, instances := range []int{1, 2} {
			f := newFixture(t, top)
			var names []string
			var caches []*Cache
			for range instances {
				names = append(names, unique("one"))
				caches = append(caches, f.cache(names[len(names)-1]))
			}
			prevented := func() float64 {
				total := 0.0
				for _, n := range names {
					total += f.count(MetricStampedePrevented, n)
				}
				return total
			}
			ctx := context.Background()
			key := unique("product") + ":1"
			v1 := f.bump(key, 1)
			first, err := caches[0].Get(ctx, key, newLoads("v1", 0).load, TTL(testTTL))
			if err != nil || first.Hit || string(first.Value) != "v1" || first.DataKey != dataKey(key, v1) || first.Stale {
				t.Fatalf("first get: %+v, %v", first, err)
			}
			again, err := caches[0].Get(ctx, key, newLoads("unused", 0).load, TTL(testTTL))
			if err != nil || !again.Hit || string(again.Value) != "v1" {
				t.Fatalf("second get: %+v, %v", again, err)
			}

			// strong: one load; every get returns the loaded value.
			v2 := f.bump(key, 2)
			loads := newLoads("v2", 300*time.Millisecond)
			got, errs, _ := getAll(200, func(i int) (Result, error) {
				return caches[i%instances].Get(ctx, key, loads.load, TTL(testTTL))
			})
			if n := loads.calls.Load(); n != 1 {
				t.Fatalf("%d instances: %d loads after a bump, want 1", instances, n)
			}
			loaded := 0
			for i, g := range got {
				if errs[i] != nil || string(g.Value) != "v2" || g.DataKey != dataKey(key, v2) || g.Stale {
					t.Fatalf("get %d: %+v, %v", i, g, errs[i])
				}
				if !g.Hit {
					loaded++
				}
			}
			if loaded != 1 {
				t.Fatalf("%d gets with hit=false, want the loader's one", loaded)
			}
			if p := prevented(); p != 199 {
				t.Fatalf("stampede_prevented_count %v, want 199 (never the get that took the lease)", p)
			}

			// eventual: a flight that did not take the lease serves the
			// previous value at once; the flight that took it returns the
			// new one (in one process every get shares the leader's flight).
			v3 := f.bump(key, 3)
			loads = newLoads("v3", 300*time.Millisecond)
			got, errs, _ = getAll(200, func(i int) (Result, error) {
				return caches[i%instances].Get(ctx, key, loads.load, TTL(testTTL), Eventual(30*time.Second))
			})
			if n := loads.calls.Load(); n != 1 {
				t.Fatalf("eventual: %d loads, want 1", n)
			}
			fresh, stale := 0, 0
			for i, g := range got {
				switch {
				case errs[i] != nil:
					t.Fatalf("eventual get %d: %v", i, errs[i])
				case g.Stale:
					stale++
					if string(g.Value) != "v2" || g.DataKey != dataKey(key, v2) || !g.Hit {
						t.Fatalf("stale get: %+v", g)
					}
				default:
					fresh++
					if string(g.Value) != "v3" || g.DataKey != dataKey(key, v3) {
						t.Fatalf("fresh get: %+v", g)
					}
				}
			}
			if fresh != 200/instances || stale != 200-200/instances {
				t.Fatalf("eventual: %d fresh, %d stale", fresh, stale)
			}
			if p := prevented(); p != 199+199 {
				t.Fatalf("stampede_prevented_count %v, want 398", p)
			}
			staleServed := 0.0
			for _, n := range names {
				staleServed += f.count(MetricStaleServed, n)
			}
			if staleServed != float64(stale) {
				t.Fatalf("cache_stale_served_total %v, want %d", staleServed, stale)
			}
			if fills := f.count(MetricFills, names[0]); fills < 1 {
				t.Fatalf("cache_fills_total %v", fills)
			}
		}
	})
}

func TestHungHolder(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		const lease = 500 * time.Millisecond
		holder := f.cache(unique("holder"), WithLease(lease))
		var names []string
		var waiters []*Cache
		for range 3 {
			names = append(names, unique("waiter"))
			waiters = append(waiters, f.cache(names[len(names)-1], WithLease(lease)))
		}
		ctx := context.Background()
		key := unique("product") + ":9"
		version := f.bump(key, 1)

		hung := newLoads("late", 2*time.Second)
		type outcome struct {
			r   Result
			err error
		}
		held := make(chan outcome, 1)
		go func() {
			r, err := holder.Get(ctx, key, hung.load, TTL(testTTL))
			held <- outcome{r, err}
		}()
		<-hung.started
		takenAt := time.Now()

		fresh := newLoads("fresh", 200*time.Millisecond)
		got, errs, took := getAll(60, func(i int) (Result, error) {
			return waiters[i%3].Get(ctx, key, fresh.load, TTL(testTTL))
		})
		if n := fresh.calls.Load(); n != 1 {
			t.Fatalf("%d loads after the lease expired, want exactly 1", n)
		}
		if m := fresh.most.Load(); m != 1 {
			t.Fatalf("%d loads at once", m)
		}
		shortest, longest := took[0], took[0]
		for i, g := range got {
			if errs[i] != nil || string(g.Value) != "fresh" {
				t.Fatalf("waiter %d: %+v, %v", i, g, errs[i])
			}
			shortest, longest = min(shortest, took[i]), max(longest, took[i])
		}
		// Nobody loaded before the lease expired; everyone had the value
		// about one poll after the taker's load.
		if elapsed := time.Since(takenAt); elapsed < lease {
			t.Fatalf("done %s after the lease was taken", elapsed)
		}
		if shortest < lease-250*time.Millisecond {
			t.Fatalf("a waiter ended after %s, before the %s lease expired", shortest, lease)
		}
		if limit := lease + 200*time.Millisecond + 2*100*time.Millisecond + 400*time.Millisecond; longest > limit {
			t.Fatalf("a waiter waited %s (limit %s)", longest, limit)
		}
		takeovers := 0.0
		for _, n := range names {
			takeovers += f.count(MetricLeaseTakeovers, n)
		}
		if takeovers != 1 {
			t.Fatalf("cache_lease_takeovers_total %v, want 1", takeovers)
		}
		// The hung loader ends at last: its fill is harmless (the same data
		// key) and its release deletes nothing (not its token).
		late := <-held
		if late.err != nil || string(late.r.Value) != "late" || late.r.DataKey != dataKey(key, version) {
			t.Fatalf("the hung holder: %+v, %v", late.r, late.err)
		}
		if f.exists(LeaseKey(dataKey(key, version))) {
			t.Fatal("a lease key is left")
		}
	})
}

// A hung holder in the same process: its flight's followers leave it one
// lease after they joined, and one of them takes the lease over, so they
// wait no longer than the gets of other processes do.
func TestHungHolderInTheSameProcess(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		const lease = 500 * time.Millisecond
		name := unique("same")
		cache := f.cache(name, WithLease(lease))
		ctx := context.Background()
		key := unique("product") + ":10"
		f.bump(key, 1)
		hung := newLoads("late", 3*time.Second)
		held := make(chan error, 1)
		go func() {
			_, err := cache.Get(ctx, key, hung.load, TTL(testTTL))
			held <- err
		}()
		<-hung.started
		fresh := newLoads("fresh", 100*time.Millisecond)
		got, errs, took := getAll(20, func(int) (Result, error) {
			return cache.Get(ctx, key, fresh.load, TTL(testTTL))
		})
		if n := fresh.calls.Load(); n != 1 {
			t.Fatalf("%d loads by the followers, want 1", n)
		}
		for i, g := range got {
			if errs[i] != nil || string(g.Value) != "fresh" {
				t.Fatalf("follower %d: %+v, %v", i, g, errs[i])
			}
			if limit := lease + 100*time.Millisecond + 2*100*time.Millisecond + 400*time.Millisecond; took[i] > limit {
				t.Fatalf("a follower waited %s (limit %s)", took[i], limit)
			}
		}
		if n := f.count(MetricLeaseTakeovers, name); n != 1 {
			t.Fatalf("cache_lease_takeovers_total %v, want 1", n)
		}
		if err := <-held; err != nil {
			t.Fatalf("the hung holder: %v", err)
		}
	})
}

func TestFailingLoader(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		const waitTimeout, maxPoll = 600 * time.Millisecond, 100 * time.Millisecond
		var names []string
		var caches []*Cache
		for range 4 {
			names = append(names, unique("failing"))
			caches = append(caches, f.cache(names[len(names)-1], WithLease(300*time.Millisecond), WithWaitTimeout(waitTimeout), WithPoll(10*time.Millisecond, maxPoll)))
		}
		key := unique("product") + ":5"
		f.bump(key, 1)
		loads := newLoads("", 50*time.Millisecond)
		loads.fail = true
		stopAt := time.Now().Add(2 * time.Second)
		var mu sync.Mutex
		var longest time.Duration
		kinds := map[Kind]int{}
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				for time.Now().Before(stopAt) {
					began := time.Now()
					got, err := caches[i%4].Get(context.Background(), key, loads.load, TTL(testTTL))
					took := time.Since(began)
					var e *Error
					mu.Lock()
					if err == nil {
						t.Errorf("a failing loader produced %+v", got)
					} else if errors.As(err, &e) {
						kinds[e.Kind]++
					} else {
						t.Errorf("error %v is not an *Error", err)
					}
					longest = max(longest, took)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if n := loads.calls.Load(); n < 3 {
			t.Fatalf("only %d loads: loads should go on, one at a time", n)
		}
		if m := loads.most.Load(); m != 1 {
			t.Fatalf("%d loads at once with a failing loader", m)
		}
		if limit := waitTimeout + maxPoll + 350*time.Millisecond; longest > limit {
			t.Fatalf("a get took %s (limit %s)", longest, limit)
		}
		for kind := range kinds {
			if kind != KindLoader && kind != KindLeaseTimeout {
				t.Fatalf("error kinds %v", kinds)
			}
		}
		if kinds[KindLoader] == 0 {
			t.Fatalf("no loader error reached a caller: %v", kinds)
		}
		errorsCounted := 0.0
		for _, n := range names {
			errorsCounted += f.count(MetricFillErrors, n)
		}
		if errorsCounted != float64(loads.calls.Load()) {
			t.Fatalf("cache_fill_errors_total %v, loads %d", errorsCounted, loads.calls.Load())
		}
		// The loader's own error is reachable through the *Error.
		_, err := caches[0].Get(context.Background(), unique("other")+":1", loads.load, TTL(testTTL))
		if !errors.Is(err, ErrLoader) || !errors.Is(err, errLoadFailed) {
			t.Fatalf("loader error %v", err)
		}
	})
}

func TestCancelledHolder(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		cache := f.cache(unique("cancel"))
		key := unique("product") + ":7"
		version := f.bump(key, 1)
		lease := LeaseKey(dataKey(key, version))

		stuck := newLoads("never", 30*time.Second)
		leaderCtx, cancel := context.WithCancel(context.Background())
		leaderDone := make(chan error, 1)
		go func() {
			_, err := cache.Get(leaderCtx, key, stuck.load, TTL(testTTL))
			leaderDone <- err
		}()
		<-stuck.started
		if !f.exists(lease) {
			t.Fatal("the holder has no lease")
		}
		after := newLoads("after", 0)
		type outcome struct {
			r   Result
			err error
		}
		joinerDone := make(chan outcome, 1)
		go func() {
			r, err := cache.Get(context.Background(), key, after.load, TTL(testTTL))
			joinerDone <- outcome{r, err}
		}()
		time.Sleep(50 * time.Millisecond)
		cancel()
		if err := <-leaderDone; !errors.Is(err, context.Canceled) {
			t.Fatalf("the cancelled get returned %v", err)
		}
		if f.exists(lease) {
			t.Fatal("the cancelled holder left its lease")
		}
		// The joiner starts again, leads, and loads.
		got := <-joinerDone
		if got.err != nil || string(got.r.Value) != "after" || got.r.Hit || after.calls.Load() != 1 {
			t.Fatalf("the joiner: %+v, %v (%d loads)", got.r, got.err, after.calls.Load())
		}

		// A get cancelled by its deadline while waiting for another
		// process's lease returns the context's error and takes nothing.
		other := f.cache(unique("deadline"))
		key2 := unique("product") + ":8"
		v2 := f.bump(key2, 1)
		if err := top.client.Set(context.Background(), LeaseKey(dataKey(key2, v2)), "someone", 10*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		ctx, cancelWait := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancelWait()
		if _, err := other.Get(ctx, key2, after.load, TTL(testTTL)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a waiter past its deadline: %v", err)
		}
	})
}

func TestLoaderTimeout(t *testing.T) {
	eachTopology(t, func(t *testing.T, top topology) {
		f := newFixture(t, top)
		name := unique("slow")
		cache := f.cache(name, WithLoaderTimeout(200*time.Millisecond))
		key := unique("product") + ":3"
		version := f.bump(key, 1)
		// One loader honours its context, one ignores it.
		polite := newLoads("late", 2*time.Second)
		began := time.Now()
		_, err := cache.Get(context.Background(), key, polite.load, TTL(testTTL))
		if !errors.Is(err, ErrLoaderTimeout) || time.Since(began) > time.Second {
			t.Fatalf("a slow loader: %v after %s", err, time.Since(began))
		}
		if f.exists(LeaseKey(dataKey(key, version))) {
			t.Fatal("the timed-out holder left its lease")
		}
		var ignored atomic.Int64
		began = time.Now()
		_, err = cache.Get(context.Background(), key, stubborn("late", 700*time.Millisecond, &ignored), TTL(testTTL))
		if !errors.Is(err, ErrLoaderTimeout) || time.Since(began) > 600*time.Millisecond {
			t.Fatalf("a loader ignoring its context: %v after %s", err, time.Since(began))
		}
		time.Sleep(800 * time.Millisecond)
		if f.exists(dataKey(key, version)) {
			t.Fatal("a late value was written")
		}
		if n := f.count(MetricFillErrors, name); n != 2 {
			t.Fatalf("cache_fill_errors_total %v, want 2", n)
		}
	})
}

func TestRefusedOptions(t *testing.T) {
	client := connectStandalone(t) // never dialled: every refusal is before I/O
	defer client.Close()
	for name, opts := range map[string][]Option{
		"zero lease":              {WithLease(0)},
		"negative lease":          {WithLease(-time.Second)},
		"zero poll":               {WithPoll(0, time.Second)},
		"max poll below poll":     {WithPoll(time.Second, time.Millisecond)},
		"zero wait timeout":       {WithWaitTimeout(0)},
		"zero loader timeout":     {WithLoaderTimeout(0)},
		"sample rate above 1":     {WithSampleRate(1.5)},
		"negative sample rate":    {WithSampleRate(-0.1)},
		"negative beta":           {WithBeta(-1)},
		"empty name":              {WithName("")},
		"nil registerer":          {WithRegisterer(nil)},
		"negative L1 max stale":   {WithL1(L1{MaxStale: -time.Second})},
		"negative L1 max entries": {WithL1(L1{MaxStale: time.Second, MaxEntries: -1})},
	} {
		if _, err := New(client, append([]Option{WithRegisterer(prometheus.NewRegistry())}, opts...)...); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := New(nil); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("nil client: %v", err)
	}
	f := &fixture{t: t, top: topology{client: client}, prefix: "ver:", registry: prometheus.NewRegistry()}
	cache := f.cache("refusals")
	load := newLoads("x", 0).load
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"empty key":            func() error { _, err := cache.Get(ctx, "", load, TTL(testTTL)); return err },
		"reserved key":         func() error { _, err := cache.Get(ctx, "epoch", load, TTL(testTTL)); return err },
		"reserved dependency":  func() error { _, err := cache.Get(ctx, "k", load, TTL(testTTL), Deps("ns:product")); return err },
		"empty deps":           func() error { _, err := cache.Get(ctx, "k", load, TTL(testTTL), Deps()); return err },
		"empty dependency":     func() error { _, err := cache.Get(ctx, "k", load, TTL(testTTL), Deps("")); return err },
		"empty namespace":      func() error { _, err := cache.Get(ctx, "k", load, TTL(testTTL), Namespaces("")); return err },
		"no ttl":               func() error { _, err := cache.Get(ctx, "k", load); return err },
		"zero ttl":             func() error { _, err := cache.Get(ctx, "k", load, TTL(0)); return err },
		"negative ttl":         func() error { _, err := cache.Get(ctx, "k", load, TTL(-time.Second)); return err },
		"misspelt consistency": func() error { _, err := cache.Get(ctx, "k", load, TTL(testTTL), Mode("eventualy")); return err },
		"eventual without bound": func() error {
			_, err := cache.Get(ctx, "k", load, TTL(testTTL), Mode(ConsistencyEventual))
			return err
		},
		"max stale with strong": func() error { _, err := cache.Get(ctx, "k", load, TTL(testTTL), MaxStale(time.Second)); return err },
		"negative max stale":    func() error { _, err := cache.Get(ctx, "k", load, TTL(testTTL), Eventual(-time.Second)); return err },
		"nil loader":            func() error { _, err := cache.Get(ctx, "k", nil, TTL(testTTL)); return err },
	} {
		if err := call(); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
