package cdccache

// Hit reads per second and p99 latency beside a plain GET of the same key,
// with and without the L1s (not a test):
//
//	CDC_CACHE_REDIS_URL=redis://127.0.0.1:16700 go test -run '^$' -bench Hit -benchtime 5s ./cdccache
//
// Each benchmark runs its reads from 1 goroutine, then from 16 at once, and
// reports reads/s and p50 and p99 in microseconds beside ns/op.

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

func BenchmarkHit(b *testing.B) {
	opt, err := redis.ParseURL(envOr("CDC_CACHE_REDIS_URL", "redis://127.0.0.1:16700"))
	if err != nil {
		b.Fatal(err)
	}
	opt.PoolSize = 32
	client := redis.NewClient(opt)
	defer client.Close()
	ctx := context.Background()
	if err := client.Ping(ctx).Err(); err != nil {
		b.Skipf("no Redis at %s: %v", opt.Addr, err)
	}
	prefix := unique("bench") + ":"
	key := unique("product") + ":1"
	value := make([]byte, 512)
	if err := client.HSet(ctx, prefix+key, "v", "1754312399000001").Err(); err != nil {
		b.Fatal(err)
	}
	defer client.Del(ctx, prefix+key)
	load := func(context.Context) ([]byte, error) { return value, nil }
	newCache := func(b *testing.B, opts ...Option) *Cache {
		c, err := New(client, append([]Option{WithPrefix(prefix), WithRegisterer(prometheus.NewRegistry())}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		first, err := c.Get(ctx, key, load, TTL(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { client.Del(ctx, first.DataKey) })
		return c
	}

	trackingCache := func(b *testing.B) *Cache {
		c := newCache(b, WithTrackingL1(TrackingL1{}))
		deadline := time.Now().Add(5 * time.Second)
		for {
			c.exact.mu.Lock()
			live := c.exact.serving()
			c.exact.mu.Unlock()
			if live || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		// The first get after tracking is live holds the records and value.
		_, _ = c.Get(ctx, key, load, TTL(time.Hour))
		return c
	}
	for _, readers := range []int{1, 16} {
		name := func(what string) string { return what + "/readers=" + strconv.Itoa(readers) }
		b.Run(name("plain GET"), func(b *testing.B) {
			c := newCache(b)
			first, _ := c.Get(ctx, key, load, TTL(time.Hour))
			measure(b, readers, func() error { return client.Get(ctx, first.DataKey).Err() })
		})
		b.Run(name("strong"), func(b *testing.B) {
			c := newCache(b)
			measure(b, readers, func() error { _, err := c.Get(ctx, key, load, TTL(time.Hour)); return err })
		})
		b.Run(name("eventual with L1"), func(b *testing.B) {
			c := newCache(b, WithL1(L1{MaxStale: time.Second}))
			measure(b, readers, func() error { _, err := c.Get(ctx, key, load, TTL(time.Hour), Eventual(time.Second)); return err })
		})
		b.Run(name("strong with tracking L1"), func(b *testing.B) {
			c := trackingCache(b)
			measure(b, readers, func() error { _, err := c.Get(ctx, key, load, TTL(time.Hour)); return err })
		})
	}
}

// measure runs read from readers goroutines and reports reads/s, p50 and
// p99. Concurrent gets of one key share one flight (one Redis read), as the
// spec's single flight in process says: with 16 readers the cache's hits
// are coalesced, a plain GET's are not.
func measure(b *testing.B, readers int, read func() error) {
	var mu sync.Mutex
	var all []time.Duration
	b.SetParallelism(max(1, readers/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	began := time.Now()
	if readers == 1 {
		all = make([]time.Duration, 0, b.N)
		for range b.N {
			t := time.Now()
			if err := read(); err != nil {
				b.Fatal(err)
			}
			all = append(all, time.Since(t))
		}
	} else {
		b.RunParallel(func(pb *testing.PB) {
			own := make([]time.Duration, 0, 1024)
			for pb.Next() {
				t := time.Now()
				if err := read(); err != nil {
					b.Error(err)
					return
				}
				own = append(own, time.Since(t))
			}
			mu.Lock()
			all = append(all, own...)
			mu.Unlock()
		})
	}
	elapsed := time.Since(began)
	b.StopTimer()
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	at := func(q float64) float64 {
		return float64(all[min(len(all)-1, int(q*float64(len(all))))]) / float64(time.Microsecond)
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "reads/s")
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}
