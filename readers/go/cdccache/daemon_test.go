package cdccache

// The Go reader with the real daemon: a writer changes a row in PostgreSQL
// (Debezium -> Kafka -> cdc-invalidator -> Redis) while readers loop; strong
// readers never serve a value older than the last bump, eventual ones (the
// bounded L1 with notices, stale-while-revalidate) never one older than the
// last bump plus their bound, and readers with the tracking L1 never one
// older than the last bump plus the invalidation's delivery. Standalone and
// Cluster, like tests/integration/readers.rs and readers/node/test/daemon.test.ts.
//
// Needs the stack (scripts/stack up; CDC_* variables from scripts/stack env)
// and the daemon built (target/debug/cdc-invalidator, or CDC_INVALIDATOR_BIN).

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/lib/pq"
)

type read struct {
	startedUs int64
	value     int64
	boundUs   int64
	reader    string
}

type bump struct {
	value int64
	atUs  int64 // the version: the bump's server time in µs
}

// violations are the reads that served a value older than the last bump
// before them plus their bound, each with the value it should have had.
func violations(bumps []bump, reads []read) map[read]int64 {
	out := map[read]int64{}
	for _, r := range reads {
		due := int64(-1)
		for _, b := range bumps {
			if b.atUs+r.boundUs < r.startedUs {
				due = max(due, b.value)
			}
		}
		if due >= 0 && r.value < due {
			out[r] = due
		}
	}
	return out
}

func TestTheStalenessCheckCanFail(t *testing.T) {
	bumps := []bump{{1, 1_000_000}, {2, 2_000_000}}
	ok := read{startedUs: 2_000_100, value: 2}
	withinBound := read{startedUs: 2_000_100, value: 1, boundUs: 500}
	late := read{startedUs: 2_000_100, value: 1}
	if n := len(violations(bumps, []read{ok, withinBound})); n != 0 {
		t.Fatalf("%d violations among good reads", n)
	}
	if n := len(violations(bumps, []read{late})); n != 1 {
		t.Fatalf("a late read was not caught (%d)", n)
	}
}

func daemonBinary(t *testing.T) string {
	bin := os.Getenv("CDC_INVALIDATOR_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../../../target/debug/cdc-invalidator")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CDC_CACHE_REQUIRE_DAEMON") == "1" {
			t.Fatalf("the daemon binary %s: %v", bin, err)
		}
		t.Skipf("no daemon binary at %s (cargo build --bin cdc-invalidator, or set CDC_INVALIDATOR_BIN)", bin)
	}
	return bin
}

func TestReadersWithTheDaemon(t *testing.T) {
	bin := daemonBinary(t)
	db, err := sql.Open("postgres", pgURL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(6)
	pingCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		if os.Getenv("CDC_CACHE_REQUIRE_DAEMON") == "1" {
			t.Fatalf("PostgreSQL: %v", err)
		}
		t.Skipf("no PostgreSQL (%v): the stack is not up", err)
	}
	eachTopology(t, func(t *testing.T, top topology) {
		staleness(t, top, bin, db)
	})
}

// pgURL is the stack's PostgreSQL URL, without TLS unless it says so (the
// stack's server has none).
func pgURL() string {
	url := envOr("CDC_PG_URL", "postgres://cdc:cdc@127.0.0.1:5432/shop")
	switch {
	case strings.Contains(url, "sslmode="):
		return url
	case strings.Contains(url, "?"):
		return url + "&sslmode=disable"
	default:
		return url + "?sslmode=disable"
	}
}

func staleness(t *testing.T, top topology, bin string, db *sql.DB) {
	ctx := context.Background()
	table := unique("reader_rows_go")
	if _, err := db.ExecContext(ctx, fmt.Sprintf("CREATE TABLE %s (id integer PRIMARY KEY, price bigint NOT NULL); INSERT INTO %s VALUES (1, 0)", table, table)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE IF EXISTS " + table) })
	f := newFixture(t, top)
	channel := unique("notices")
	dir := t.TempDir()
	url := envOr("CDC_CACHE_REDIS_URL", "redis://127.0.0.1:16700")
	if top.cluster {
		url = "redis://" + strings.Fields(envOr("CDC_CACHE_CLUSTER_ADDRS", "127.0.0.1:16710"))[0]
	}
	config := fmt.Sprintf(`[source]
brokers = %q
group_id = %q
topic_regex = "%s\\.public\\.%s"
[source.librdkafka]
"topic.metadata.refresh.interval.ms" = "1000"
[redis]
url = %q
cluster = %t
version_prefix = %q
version_ttl = "1h"
max_retry_backoff = "500ms"
[admin]
listen = "127.0.0.1:0"
[notices]
redis_channel = %q
[[entity]]
table = "public.%s"
namespace = %q
consistency = "strong"
keys = ["%s:{id}"]
`, envOr("CDC_KAFKA_BROKERS", "127.0.0.1:9092"), unique("group_go"), envOr("CDC_TOPIC_PREFIX", "shop"), table,
		url, top.cluster, f.prefix, channel, table, table, table)
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "daemon.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	daemon := exec.Command(bin, "run", "--config", configPath)
	// The stack's variables override the file: this test's file must win.
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "CDC_REDIS_URL", "CDC_KAFKA_BROKERS", "CDC_KAFKA_GROUP", "CDC_ADMIN_LISTEN", "CDC_DEAD_LETTERS_URL", "CDC_LOOKUP_URL", "CDC_CONNECT_URL", "CDC_LOG":
			continue
		}
		daemon.Env = append(daemon.Env, kv)
	}
	daemon.Env = append(daemon.Env, "CDC_LOG=info")
	daemon.Stdout, daemon.Stderr = logFile, logFile
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = daemon.Process.Kill()
		_ = daemon.Wait()
	})
	tail := func() string {
		data, _ := os.ReadFile(logPath)
		lines := strings.Split(string(data), "\n")
		return strings.Join(lines[max(0, len(lines)-30):], "\n")
	}

	key := table + ":1"
	version := func() int64 {
		text, err := top.client.HGet(ctx, f.prefix+key, "v").Result()
		if err != nil {
			return -1
		}
		v, _ := strconv.ParseInt(text, 10, 64)
		return v
	}
	deadline := time.Now().Add(90 * time.Second)
	for version() < 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the seed row's bump never came\n%s", tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	last := version()

	const bound = 300 * time.Millisecond
	// The tracking L1 is exact up to the invalidation's delivery from
	// Redis to this process (the same machine: well under this allowance).
	const delivery = 50 * time.Millisecond
	strongName, eventualName, trackingName := unique("strong"), unique("eventual"), unique("tracking")
	strong := f.cache(strongName)
	eventual := f.cache(eventualName, WithL1(L1{MaxStale: bound, MaxEntries: 100, Channel: channel}))
	tracking := f.cache(trackingName, WithTrackingL1(TrackingL1{HealthInterval: 500 * time.Millisecond}))
	until(t, "the notice subscription", 10*time.Second, eventual.noticesLive.Load)
	until(t, "client tracking", 10*time.Second, func() bool {
		tracking.exact.mu.Lock()
		defer tracking.exact.mu.Unlock()
		return tracking.exact.serving()
	})
	loader := func(ctx context.Context) ([]byte, error) {
		var price int64
		if err := db.QueryRowContext(ctx, "SELECT price FROM "+table+" WHERE id = 1").Scan(&price); err != nil {
			return nil, err
		}
		return []byte(strconv.FormatInt(price, 10)), nil
	}

	var mu sync.Mutex
	var reads []read
	var readErrors []error
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for i := range 9 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				startedUs := time.Now().UnixMicro()
				var got Result
				var err error
				var boundUs int64
				var reader string
				switch i % 3 {
				case 0:
					reader = "strong"
					got, err = strong.Get(ctx, key, loader, TTL(time.Minute))
				case 1:
					reader, boundUs = "eventual", bound.Microseconds()
					got, err = eventual.Get(ctx, key, loader, TTL(time.Minute), Eventual(bound))
				case 2:
					reader, boundUs = "tracking", delivery.Microseconds()
					got, err = tracking.Get(ctx, key, loader, TTL(time.Minute))
				}
				mu.Lock()
				if err != nil {
					readErrors = append(readErrors, err)
				} else {
					value, _ := strconv.ParseInt(string(got.Value), 10, 64)
					reads = append(reads, read{startedUs: startedUs, value: value, boundUs: boundUs, reader: reader})
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		})
	}

	var bumps []bump
	for n := int64(1); n <= 12; n++ {
		if _, err := db.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET price = %d WHERE id = 1", table, n)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for version() <= last {
			if time.Now().After(deadline) {
				close(stop)
				readers.Wait()
				t.Fatalf("the bump of price %d never came\n%s", n, tail())
			}
			time.Sleep(5 * time.Millisecond)
		}
		last = version()
		bumps = append(bumps, bump{value: n, atUs: last})
		time.Sleep(time.Duration(50+(n*37)%150) * time.Millisecond)
	}
	time.Sleep(2 * bound)
	close(stop)
	readers.Wait()

	if len(readErrors) > 0 {
		t.Fatalf("%d reads failed, e.g. %v", len(readErrors), readErrors[0])
	}
	bad := violations(bumps, reads)
	if len(bad) > 0 {
		shown := 0
		for r, due := range bad {
			if shown++; shown <= 5 {
				t.Errorf("%s read started at %d served %d, should have had %d", r.reader, r.startedUs, r.value, due)
			}
		}
		t.Fatalf("%d of %d reads too old; bumps %v", len(bad), len(reads), bumps)
	}
	perReader := map[string]int{}
	for _, r := range reads {
		perReader[r.reader]++
		if r.startedUs > last+bound.Microseconds() && r.value != 12 {
			t.Fatalf("a %s read after the last bump plus the bound served %d", r.reader, r.value)
		}
	}
	if len(reads) < 300 || perReader["strong"] == 0 || perReader["eventual"] == 0 || perReader["tracking"] == 0 {
		t.Fatalf("only %d reads (%v)", len(reads), perReader)
	}
	if n := f.metric(MetricL1Invalidations, map[string]string{"cache": eventualName, "reason": "notice"}); n == 0 {
		t.Fatal("the bounded L1 heard no notice")
	}
	if n := f.metric(MetricHits, map[string]string{"cache": trackingName, "layer": "l1"}); n == 0 {
		t.Fatal("the tracking L1 served nothing")
	}
	t.Logf("%d reads %v; L1 hits: eventual %v, tracking %v", len(reads), perReader,
		f.metric(MetricHits, map[string]string{"cache": eventualName, "layer": "l1"}),
		f.metric(MetricHits, map[string]string{"cache": trackingName, "layer": "l1"}))
	_ = daemon.Process.Signal(os.Interrupt)
}
