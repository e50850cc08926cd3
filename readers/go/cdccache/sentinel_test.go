package cdccache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The private Sentinel deployment's ports (readers/testing/sentinel-topology.sh):
// primary, replica, then three Sentinels; Go's sub-range is 26530-26539.
const sentinelMaster = "cdc-readers"

// A failover is followed within this long after the Sentinels name the new
// primary (readers/spec.md section 14). A Sentinel demotes the old primary,
// killing its clients (which would move any client), only about 8 s after
// the switch: this bound tells following the announcement from that apart.
const failoverBound = 6 * time.Second

// sentinelTopology starts the shared script's deployment and stops it at
// the end of the test, failed or not; it skips the test only when Redis
// Sentinel is not installed.
func sentinelTopology(t *testing.T) (base int, addresses []string) {
	t.Helper()
	base, err := strconv.Atoi(envOr("CDC_CACHE_GO_SENTINEL_PORT", "26530"))
	if err != nil {
		t.Fatal(err)
	}
	script := "../../testing/sentinel-topology.sh"
	dir := t.TempDir()
	t.Cleanup(func() { _ = exec.Command(script, "stop", strconv.Itoa(base), dir).Run() })
	out, err := topologyCommand(t, script, "start", strconv.Itoa(base), dir)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		t.Skip("redis-sentinel is not installed: the Sentinel failover test needs it")
	}
	if err != nil {
		t.Fatalf("sentinel-topology.sh start: %v", err)
	}
	return base, ParseSentinelAddresses(out)
}

func topologyCommand(t *testing.T, script string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}

// onPort is a plain client of one server, to look at it directly.
func onPort(t *testing.T, port int) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// getUntil retries get every 100 ms until it succeeds with a result done
// accepts, or failoverBound passes (then the last result is returned); it
// also returns how many attempts failed or were not done.
func getUntil(get func() (Result, error), done func(Result) bool) (Result, int, error) {
	deadline := time.Now().Add(failoverBound)
	tries := 0
	for {
		got, err := get()
		if (err == nil && done(got)) || time.Now().After(deadline) {
			return got, tries, err
		}
		tries++
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSentinelFailover(t *testing.T) {
	base, addresses := sentinelTopology(t)
	ctx := context.Background()
	settings := SentinelSettings{MasterName: sentinelMaster, Addresses: addresses}
	client, err := NewSentinelClient(settings)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	f := newFixture(t, topology{name: "sentinel", client: client})
	cache := f.cache(unique("sentinel"))
	// With the tracking L1, whose connection must follow the primary too.
	tracked := f.cache(unique("tracked"), WithTrackingL1(TrackingL1{}))
	key := unique("product") + ":1"

	// A version the replica has acknowledged (WAIT 1) before the failover.
	conn := client.Conn()
	reply, err := bumpLua().Run(ctx, conn, []string{f.prefix + key}, 600_000, "p:test", pad(1)).Slice()
	if err != nil {
		t.Fatal(err)
	}
	// Per record the new version (a string) when applied, 0 when not.
	v1, applied := reply[0].(string)
	if !applied {
		t.Fatalf("bump not applied: %v", reply)
	}
	if n, err := conn.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n < 1 {
		t.Fatalf("WAIT 1: %d replicas, %v", n, err)
	}
	_ = conn.Close()

	before, err := cache.Get(ctx, key, newLoads("before", 0).load, TTL(testTTL))
	if err != nil || before.Hit || string(before.Value) != "before" || !strings.HasSuffix(before.DataKey, ":v"+v1) {
		t.Fatalf("before the failover: %+v, %v", before, err)
	}
	for range 2 {
		if got, err := tracked.Get(ctx, key, newLoads("unused", 0).load, TTL(testTTL)); err != nil || got.DataKey != before.DataKey {
			t.Fatalf("tracked before the failover: %+v, %v", got, err)
		}
	}
	replica := onPort(t, base+1)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.HasSuffix(replica.Get(ctx, before.DataKey).Val(), ":before") {
		if time.Now().After(deadline) {
			t.Fatal("the replica never received the fill")
		}
		time.Sleep(20 * time.Millisecond)
	}

	newPrimary, err := topologyCommand(t, "../../testing/sentinel-topology.sh", "failover", strconv.Itoa(base))
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	if newPrimary != strconv.Itoa(base+1) {
		t.Fatalf("the Sentinels name port %s, expected the replica's %d", newPrimary, base+1)
	}

	// The version written before the failover is read from the new primary.
	after, failed, err := getUntil(func() (Result, error) {
		return cache.Get(ctx, key, newLoads("unused", 0).load, TTL(testTTL))
	}, func(Result) bool { return true })
	if err != nil || !after.Hit || after.DataKey != before.DataKey || string(after.Value) != "before" {
		t.Fatalf("after the failover (%d failed attempts): %+v, %v", failed, after, err)
	}
	t.Logf("first get after the failover: %d failed attempts", failed)

	// A bump written straight to the new primary: a cache still reading the
	// old one (not yet demoted) does not see it. Then the lease and the fill
	// there.
	primary := onPort(t, base+1)
	f.top.client = primary
	v2 := f.bump(key, 2)
	suffix := ":v" + strconv.FormatUint(v2, 10)
	filled, failed, err := getUntil(func() (Result, error) {
		return cache.Get(ctx, key, newLoads("after", 0).load, TTL(testTTL))
	}, func(r Result) bool { return strings.HasSuffix(r.DataKey, suffix) })
	if err != nil || filled.Hit || string(filled.Value) != "after" || !strings.HasSuffix(filled.DataKey, suffix) {
		t.Fatalf("fill after the failover (%d attempts before): %+v, %v", failed, filled, err)
	}
	t.Logf("fill after the failover: %d attempts before", failed)
	if got := primary.Get(ctx, filled.DataKey).Val(); !strings.HasSuffix(got, ":after") {
		t.Fatalf("the new primary holds %q under %s", got, filled.DataKey)
	}
	if n := primary.Exists(ctx, filled.DataKey+":lease").Val(); n != 0 {
		t.Fatal("the lease was left behind")
	}

	// The tracking L1 let go of the old primary's entry.
	seen, tries, err := getUntil(func() (Result, error) {
		return tracked.Get(ctx, key, newLoads("unused", 0).load, TTL(testTTL))
	}, func(r Result) bool { return r.DataKey == filled.DataKey })
	if err != nil || seen.DataKey != filled.DataKey || string(seen.Value) != "after" {
		t.Fatalf("tracking L1 after the failover (%d attempts before): %+v, %v", tries, seen, err)
	}
	t.Logf("tracking L1 after the failover: %d attempts before", tries)
}

func TestSentinelSettingsHidePasswords(t *testing.T) {
	s := SentinelSettings{MasterName: "m", Addresses: []string{"h:1"}, Password: "data-secret", SentinelPassword: "sentinel-secret"}
	for _, text := range []string{fmt.Sprint(s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s), s.String()} {
		if strings.Contains(text, "secret") || !strings.Contains(text, "<redacted>") {
			t.Fatalf("printed as %s", text)
		}
	}
	if _, err := NewSentinelClient(SentinelSettings{Addresses: []string{"h:1"}}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("no master name: %v", err)
	}
	if _, err := NewSentinelClient(SentinelSettings{MasterName: "m", Addresses: []string{"h"}}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("an address without a port: %v", err)
	}
}
