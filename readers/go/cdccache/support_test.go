package cdccache

// Helpers for the tests against real Redis: a standalone server
// (CDC_CACHE_REDIS_URL) and a Cluster (CDC_CACHE_CLUSTER_ADDRS), both
// started by readers/go/run-tests; bumps through the daemon's own bump
// script (src/sink/bump.lua); metric values from a registry.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

func unique(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// topology is one Redis to test against.
type topology struct {
	name    string
	cluster bool
	client  redis.UniversalClient
}

func connectStandalone(t testing.TB) redis.UniversalClient {
	opt, err := redis.ParseURL(envOr("CDC_CACHE_REDIS_URL", "redis://127.0.0.1:16700"))
	if err != nil {
		t.Fatal(err)
	}
	return redis.NewClient(opt)
}

func connectCluster(t testing.TB) redis.UniversalClient {
	addrs := strings.Fields(envOr("CDC_CACHE_CLUSTER_ADDRS", "127.0.0.1:16710 127.0.0.1:16711 127.0.0.1:16712"))
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
}

// reachable fails the test when the server does not answer and the run
// requires it (run-tests sets CDC_CACHE_REQUIRE_REDIS=1), and skips it
// otherwise, so a plain `go test` without servers runs the vectors only.
func reachable(t *testing.T, client redis.UniversalClient, what string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := client.Ping(ctx).Err()
	if err == nil && what == "cluster" {
		info, e := client.ClusterInfo(ctx).Result()
		if e != nil || !strings.Contains(info, "cluster_state:ok") {
			err = e
			if err == nil {
				err = errClusterNotReady
			}
		}
	}
	if err == nil {
		return true
	}
	if os.Getenv("CDC_CACHE_REQUIRE_REDIS") == "1" {
		t.Fatalf("the %s Redis does not answer: %v", what, err)
	}
	t.Skipf("no %s Redis (%v): run readers/go/run-tests", what, err)
	return false
}

var errClusterNotReady = &Error{Kind: KindRedis, message: "cluster_state is not ok"}

// eachTopology runs body against the standalone server and the Cluster.
func eachTopology(t *testing.T, body func(t *testing.T, top topology)) {
	for _, top := range []topology{{name: "standalone"}, {name: "cluster", cluster: true}} {
		t.Run(top.name, func(t *testing.T) {
			if top.cluster {
				top.client = connectCluster(t)
			} else {
				top.client = connectStandalone(t)
			}
			t.Cleanup(func() { _ = top.client.Close() })
			if !reachable(t, top.client, top.name) {
				return
			}
			body(t, top)
		})
	}
}

// fixture is one test's names and registry.
type fixture struct {
	t        *testing.T
	top      topology
	prefix   string
	registry *prometheus.Registry
}

func newFixture(t *testing.T, top topology) *fixture {
	return &fixture{t: t, top: top, prefix: unique("ver") + ":", registry: prometheus.NewRegistry()}
}

// cache builds a cache on the fixture's client, prefix and registry.
func (f *fixture) cache(name string, opts ...Option) *Cache {
	f.t.Helper()
	all := append([]Option{WithName(name), WithPrefix(f.prefix), WithRegisterer(f.registry)}, opts...)
	c, err := New(f.top.client, all...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = c.Close() })
	return c
}

var bumpLua = sync.OnceValue(func() *redis.Script {
	data, err := os.ReadFile("../../../src/sink/bump.lua")
	if err != nil {
		panic(err)
	}
	return redis.NewScript(string(data))
})

// bump bumps record key (under the fixture's prefix; "epoch" for the
// epoch record's v is not what the daemon bumps, see bumpEpoch) through the
// daemon's bump script and returns the new version.
func (f *fixture) bump(key string, position int) uint64 {
	f.t.Helper()
	reply, err := bumpLua().Run(context.Background(), f.top.client, []string{f.prefix + key}, 600_000, "p:test", pad(position)).Slice()
	if err != nil {
		f.t.Fatalf("bump %s: %v", key, err)
	}
	// Per record the new version (a string) when applied, 0 when not.
	text, applied := reply[0].(string)
	if !applied {
		f.t.Fatalf("bump of %s at %d not applied", key, position)
	}
	v, _, err := ParseVersion(key, "v", &text)
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

func pad(n int) string {
	s := strings.Repeat("0", 20) + strconv.Itoa(n)
	return s[len(s)-20:]
}

// metric sums the samples of name whose labels include want.
func (f *fixture) metric(name string, want map[string]string) float64 {
	f.t.Helper()
	families, err := f.registry.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	total := 0.0
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
	samples:
		for _, m := range family.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue samples
				}
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return total
}

func (f *fixture) count(name, cache string) float64 {
	return f.metric(name, map[string]string{"cache": cache})
}

func (f *fixture) exists(key string) bool {
	f.t.Helper()
	n, err := f.top.client.Exists(context.Background(), key).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	return n == 1
}

// loads is a loader that counts its calls and how many ran at once.
type loads struct {
	value   []byte
	delay   time.Duration
	fail    bool
	calls   atomic.Int64
	running atomic.Int64
	most    atomic.Int64
	started chan struct{}
	once    sync.Once
}

func newLoads(value string, delay time.Duration) *loads {
	return &loads{value: []byte(value), delay: delay, started: make(chan struct{})}
}

var errLoadFailed = &Error{Kind: KindLoader, message: "the test loader fails"}

func (l *loads) load(ctx context.Context) ([]byte, error) {
	l.calls.Add(1)
	now := l.running.Add(1)
	defer l.running.Add(-1)
	for {
		most := l.most.Load()
		if now <= most || l.most.CompareAndSwap(most, now) {
			break
		}
	}
	l.once.Do(func() { close(l.started) })
	if l.delay > 0 {
		select {
		case <-time.After(l.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if l.fail {
		return nil, errLoadFailed
	}
	return append([]byte{}, l.value...), nil
}

// stubborn is a loader that ignores its context and sleeps.
func stubborn(value string, delay time.Duration, calls *atomic.Int64) Loader {
	return func(context.Context) ([]byte, error) {
		calls.Add(1)
		time.Sleep(delay)
		return []byte(value), nil
	}
}

func dataKey(key string, version uint64) string {
	return key + "@e0:v" + strconv.FormatUint(version, 10)
}

// until polls cond every 10 ms for at most timeout.
func until(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
