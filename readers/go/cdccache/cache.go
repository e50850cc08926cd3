package cdccache

// The Cache and its Get (readers/spec.md sections 1, 5 to 7 and 9): single
// flight in process, the lease rule, stale-while-revalidate, XFetch, the
// freshness check, and the two L1s' places in the read path.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Loader returns a value's bytes from the source of truth. It is called
// only by a get that holds the value's lease, at most once per get; ctx is
// the get's context, with the cache's loader timeout when one is set.
type Loader func(ctx context.Context) ([]byte, error)

// Result is what a get returns.
type Result struct {
	// Value is the value's bytes, the caller's own copy.
	Value []byte
	// Hit is true when the value did not come from this get's own loader:
	// from an L1, from Redis, or from another get's load.
	Hit bool
	// DataKey is the data key the value is keyed by
	// (product:42@e0:v1754312399000001): it names the versions the value
	// belongs to.
	DataKey string
	// Stale is true when the value may be older than the current version:
	// the previous version's value (stale-while-revalidate) or a hit of the
	// bounded L1. False for a value read from Redis under the current
	// versions, loaded by this get or its flight, or held by the tracking L1.
	Stale bool
}

// Cache reads values by the key protocol through one go-redis client. It
// is safe for concurrent use; Close stops its background connections.
type Cache struct {
	client     redis.UniversalClient
	standalone *redis.Client
	cluster    *redis.ClusterClient
	s          *settings
	m          *metrics

	readLua, releaseLua *redis.Script
	// noReadOnlyScripts: the server has no EVALSHA_RO (before Redis 7.0).
	noReadOnlyScripts atomic.Bool

	l1 *boundedL1
	// noticesLive: the bounded L1's notice subscription is subscribed.
	noticesLive atomic.Bool
	exact       *exactL1
	checks      ratioWindow

	mu      sync.Mutex
	flights map[string]*flight

	stop       context.CancelFunc
	background sync.WaitGroup
	closeOnce  sync.Once
}

// New builds a cache over an existing client: a *redis.Client (a
// standalone server, or Sentinel's failover client) or a
// *redis.ClusterClient. The client stays the caller's (Close leaves it
// open). A *redis.Ring is refused: the read script needs a get's records
// on one server.
func New(client redis.UniversalClient, opts ...Option) (*Cache, error) {
	if client == nil {
		return nil, invalidf("the redis client is nil")
	}
	s := defaultSettings()
	for _, opt := range opts {
		opt(&s)
	}
	checked, err := s.checked()
	if err != nil {
		return nil, err
	}
	c := &Cache{
		client:     client,
		s:          checked,
		readLua:    redis.NewScript(readScript.source),
		releaseLua: redis.NewScript(releaseScript.source),
		flights:    make(map[string]*flight),
	}
	switch typed := client.(type) {
	case *redis.ClusterClient:
		c.cluster = typed
	case *redis.Client:
		c.standalone = typed
	case *redis.Ring:
		return nil, invalidf("a redis.Ring is not supported: it spreads a get's version records over several servers")
	}
	if checked.tracking != nil && c.cluster == nil && c.standalone == nil {
		return nil, invalidf("the tracking L1 needs a *redis.Client or a *redis.ClusterClient, not a %T", client)
	}
	if c.m, err = newMetrics(checked.registerer, checked.name); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	if l := checked.l1; l != nil {
		c.l1 = newBoundedL1(l.MaxEntries, checked.prefix)
		if l.Channel != "" {
			c.background.Go(func() { c.followNotices(ctx, l.Channel) })
		}
	}
	if t := checked.tracking; t != nil {
		c.exact = newExactL1(t.MaxEntries, t.MaxBytes)
		c.background.Go(func() { c.runTracking(ctx) })
	}
	return c, nil
}

// Close stops the L1's background connections and waits for them. Gets in
// progress finish; the client is not closed.
func (c *Cache) Close() error {
	c.closeOnce.Do(func() {
		c.stop()
		c.background.Wait()
	})
	return nil
}

// Client is the go-redis client the cache reads through.
func (c *Cache) Client() redis.UniversalClient { return c.client }

type firstLook int

const (
	lookHit firstLook = iota + 1
	lookMiss
)

// flight is the shared work of concurrent gets of one key with the same
// options (section 5, rule 2). The leader sets the fields before done
// closes; the joiners read them after.
type flight struct {
	done   chan struct{}
	result Result
	err    error
	look   firstLook
	// staleServed: the outcome is the previous version's value.
	staleServed bool
	// handedOn: the leader was cancelled; the joiners start again.
	handedOn bool
	// loading: the leader holds the lease and its loader runs.
	loading atomic.Bool
}

// Get returns the value of key (spec section 1): from an L1, from Redis,
// or from loader, which only the get holding the lease calls. TTL is
// required; Deps, Namespaces, Mode, MaxStale and Eventual are optional.
//
// Errors are *Error values matching ErrBadVersion, ErrRedis, ErrLoader
// (wrapping the loader's error), ErrLoaderTimeout, ErrLeaseTimeout,
// ErrInvalidOptions or ErrProtocol; a cancelled get returns ctx.Err(), and
// releases the lease if it held it.
func (c *Cache) Get(ctx context.Context, key string, loader Loader, opts ...GetOption) (Result, error) {
	started := time.Now()
	if loader == nil {
		return Result{}, invalidf("key %q: the loader is nil", key)
	}
	req, err := c.request(key, opts)
	if err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if res, ok := c.fromL1(req, started); ok {
		c.m.hitsL1.Inc()
		c.sample(ctx, res.Value, loader)
		return res, nil
	}
	leftHungFlight := false
	for {
		c.mu.Lock()
		f := c.flights[req.flight]
		if f == nil {
			f = &flight{done: make(chan struct{})}
			c.flights[req.flight] = f
			c.mu.Unlock()
			return c.lead(ctx, f, req, loader, started, leftHungFlight)
		}
		c.mu.Unlock()
		switch outcome := c.follow(ctx, f, req); outcome {
		case followDone:
			return c.joined(f)
		case followCancelled:
			return Result{}, ctx.Err()
		case followHandedOn:
			// Its leader was cancelled: start again; one of the joiners
			// leads, each still waiting from its own start.
		case followLeft:
			leftHungFlight = true
		}
	}
}

type followOutcome int

const (
	followDone followOutcome = iota
	followCancelled
	followHandedOn
	followLeft
)

// follow waits for the flight f. A follower whose leader holds the lease
// and is still loading one lease after the follower joined (checked again
// every lease while the leader only waits) leaves the flight, closes it to
// newcomers and starts over: a hung loader delays the gets of its own
// process no longer than those of other processes (section 5, rule 2).
func (c *Cache) follow(ctx context.Context, f *flight, req *request) followOutcome {
	check := time.NewTimer(c.s.lease)
	defer check.Stop()
	for {
		select {
		case <-f.done:
			if f.handedOn {
				return followHandedOn
			}
			return followDone
		case <-ctx.Done():
			return followCancelled
		case <-check.C:
			if f.loading.Load() {
				c.mu.Lock()
				if c.flights[req.flight] == f {
					delete(c.flights, req.flight)
				}
				c.mu.Unlock()
				return followLeft
			}
			check.Reset(c.s.lease)
		}
	}
}

// joined is a joiner's outcome: the flight's, counted as its own get.
func (c *Cache) joined(f *flight) (Result, error) {
	switch f.look {
	case lookHit:
		c.m.hitsRedis.Inc()
	case lookMiss:
		c.m.misses.Inc()
		// It missed and ended without calling its loader (rule 8).
		c.m.stampedePrevented.Inc()
	}
	if f.err != nil {
		return Result{}, f.err
	}
	if f.staleServed {
		c.m.staleServed.Inc()
	}
	r := f.result
	r.Value = bytes.Clone(r.Value)
	r.Hit = true
	return r, nil
}

// lead runs a flight. afterLeaving: this get left a flight whose holder
// hung; taking the lease at its read is then a takeover.
func (c *Cache) lead(ctx context.Context, f *flight, req *request, loader Loader, started time.Time, afterLeaving bool) (Result, error) {
	defer func() {
		p := recover()
		c.mu.Lock()
		if c.flights[req.flight] == f {
			delete(c.flights, req.flight)
		}
		c.mu.Unlock()
		if p != nil {
			f.err = loaderError(req.key, fmt.Errorf("the loader panicked: %v", p))
		}
		close(f.done)
		if p != nil {
			panic(p)
		}
	}()
	res, err := c.fly(ctx, f, req, loader, started, afterLeaving)
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		f.handedOn = true
	} else {
		f.result, f.err = res, err
		if err == nil {
			// Joiners clone it; this get's caller owns res.Value.
			f.result.Value = bytes.Clone(res.Value)
		}
	}
	return res, err
}

// fly is a flight's work, done by its leader.
func (c *Cache) fly(ctx context.Context, f *flight, req *request, loader Loader, started time.Time, afterLeaving bool) (Result, error) {
	readAt := time.Now()
	snap, err := c.readTracked(ctx, req.layout)
	if err != nil {
		return Result{}, err
	}
	if snap.found {
		f.look = lookHit
		c.m.hitsRedis.Inc()
		deltaMs, value := decodeEnvelope(snap.value)
		if c.xfetchDue(deltaMs, snap.pttlMs) {
			token, took, err := c.tryLease(ctx, snap.dataKey)
			if err != nil {
				return Result{}, err
			}
			if took {
				res, err := c.load(ctx, f, req, loader, snap.dataKey, token, readAt)
				if err == nil {
					c.m.earlyRefreshes.Inc()
				}
				return res, err
			}
			// Someone else refreshes it: the cached value serves.
		}
		c.remember(req, snap.dataKey, value, readAt, snap.pttlMs)
		c.sample(ctx, value, loader)
		return Result{Value: value, Hit: true, DataKey: snap.dataKey}, nil
	}
	f.look = lookMiss
	c.m.misses.Inc()
	token, took, err := c.tryLease(ctx, snap.dataKey)
	if err != nil {
		return Result{}, err
	}
	if took {
		if afterLeaving {
			c.m.leaseTakeovers.Inc()
		}
		return c.hold(ctx, f, req, loader, snap.dataKey, token, readAt)
	}
	return c.wait(ctx, f, req, loader, snap, started, readAt)
}

// wait is a get that did not take the lease (section 5, rule 3 and 4).
func (c *Cache) wait(ctx context.Context, f *flight, req *request, loader Loader, snap *snapshot, started, readAt time.Time) (Result, error) {
	var staleKey string
	var hasStale bool
	if req.mode == ConsistencyEventual {
		var ageUs uint64
		staleKey, ageUs, hasStale = req.layout.StaleKey(snap.epoch, snap.fields, snap.nowUs)
		if hasStale && ageUs <= uint64(req.maxStale.Microseconds()) {
			if res, ok, err := c.serveStale(ctx, f, staleKey); err != nil || ok {
				return res, err
			}
		}
	}
	deadline := started.Add(*c.s.waitTimeout)
	interval := c.s.poll
	for {
		if pause := min(interval, time.Until(deadline)); pause > 0 {
			if err := sleep(ctx, pause); err != nil {
				return Result{}, err
			}
		}
		raw, found, leaseGone, err := c.poll(ctx, snap.dataKey)
		if err != nil {
			return Result{}, err
		}
		if found {
			c.m.stampedePrevented.Inc()
			_, value := decodeEnvelope(raw)
			c.rememberBounded(req, snap.dataKey, value, readAt)
			return Result{Value: value, Hit: true, DataKey: snap.dataKey}, nil
		}
		if leaseGone {
			// Its holder crashed, hung past its lease or failed: one
			// waiter across all processes wins the lease and loads.
			token, took, err := c.tryLease(ctx, snap.dataKey)
			if err != nil {
				return Result{}, err
			}
			if took {
				c.m.leaseTakeovers.Inc()
				return c.hold(ctx, f, req, loader, snap.dataKey, token, readAt)
			}
		}
		if !time.Now().Before(deadline) {
			if hasStale {
				// Whatever its age: the bounded wait is over (rule 4).
				if res, ok, err := c.serveStale(ctx, f, staleKey); err != nil || ok {
					return res, err
				}
			}
			c.m.stampedePrevented.Inc()
			return Result{}, leaseTimeout(snap.dataKey, time.Since(started))
		}
		interval = min(2*interval, c.s.maxPoll)
	}
}

// serveStale returns the previous version's value when its key holds one.
func (c *Cache) serveStale(ctx context.Context, f *flight, staleKey string) (Result, bool, error) {
	raw, found, err := c.getValue(ctx, staleKey)
	if err != nil || !found {
		return Result{}, false, err
	}
	c.m.staleServed.Inc()
	c.m.stampedePrevented.Inc()
	f.staleServed = true
	_, value := decodeEnvelope(raw)
	return Result{Value: value, Hit: true, DataKey: staleKey, Stale: true}, true, nil
}

// hold is a get that took the lease (rule 5): it reads the data key once
// more, since a holder may have filled it since this get's read, then loads.
func (c *Cache) hold(ctx context.Context, f *flight, req *request, loader Loader, dataKey, token string, readAt time.Time) (Result, error) {
	raw, found, err := c.getValue(ctx, dataKey)
	if err != nil {
		c.release(ctx, dataKey, token)
		return Result{}, err
	}
	if found {
		c.release(ctx, dataKey, token)
		_, value := decodeEnvelope(raw)
		c.rememberBounded(req, dataKey, value, readAt)
		return Result{Value: value, Hit: true, DataKey: dataKey}, nil
	}
	return c.load(ctx, f, req, loader, dataKey, token, readAt)
}

// load calls the loader under the lease, fills the data key, then releases
// the lease; on any failure, a cancellation or a panic it releases the
// lease at once (rules 5 to 7).
func (c *Cache) load(ctx context.Context, f *flight, req *request, loader Loader, dataKey, token string, readAt time.Time) (Result, error) {
	released := false
	defer func() {
		if !released {
			c.release(ctx, dataKey, token)
		}
	}()
	f.loading.Store(true)
	value, elapsed, err := c.runLoader(ctx, loader, dataKey)
	f.loading.Store(false)
	if err != nil {
		if errors.Is(err, ErrLoader) || errors.Is(err, ErrLoaderTimeout) {
			c.m.fillErrors.Inc()
		}
		return Result{}, err
	}
	c.m.fillLatency.Observe(float64(elapsed) / float64(time.Millisecond))
	if err := c.fill(ctx, dataKey, encodeEnvelope(elapsed.Milliseconds(), value), req.ttl); err != nil {
		return Result{}, err
	}
	// Written before the release: a waiter that sees the lease gone finds
	// the value.
	released = true
	c.release(ctx, dataKey, token)
	c.m.fills.Inc()
	c.remember(req, dataKey, value, readAt, req.ttl.Milliseconds())
	return Result{Value: value, Hit: false, DataKey: dataKey}, nil
}

// errLoaderTimedOut is the cause of a loader context that ran out of time.
var errLoaderTimedOut = errors.New("cdccache: loader timeout")

type loaded struct {
	value    []byte
	err      error
	panicked any
}

// runLoader runs the loader in its own goroutine, so that the loader
// timeout and the get's cancellation end the get even when the loader
// ignores its context. A loader's panic is raised again in the caller's
// goroutine (after the lease is released by load's defer).
func (c *Cache) runLoader(ctx context.Context, loader Loader, dataKey string) ([]byte, time.Duration, error) {
	lctx, cancel := ctx, context.CancelFunc(func() {})
	if c.s.loaderTimeout != nil {
		lctx, cancel = context.WithTimeoutCause(ctx, *c.s.loaderTimeout, errLoaderTimedOut)
	}
	defer cancel()
	began := time.Now()
	done := make(chan loaded, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- loaded{panicked: p}
			}
		}()
		value, err := loader(lctx)
		done <- loaded{value: value, err: err}
	}()
	var r loaded
	select {
	case r = <-done:
	case <-lctx.Done():
	}
	elapsed := time.Since(began)
	switch {
	case r.panicked != nil:
		panic(r.panicked)
	case ctx.Err() != nil:
		return nil, elapsed, ctx.Err()
	case context.Cause(lctx) == errLoaderTimedOut:
		// A late value is never written.
		return nil, elapsed, loaderTimeout(dataKey, *c.s.loaderTimeout)
	case r.err != nil:
		return nil, elapsed, loaderError(dataKey, r.err)
	}
	if r.value == nil {
		r.value = []byte{}
	}
	return r.value, elapsed, nil
}

// xfetchDue: refresh early when delta * beta * -ln(u) >= the TTL left,
// u uniform in (0, 1] (section 7).
func (c *Cache) xfetchDue(deltaMs, pttlMs int64) bool {
	if deltaMs <= 0 || pttlMs <= 0 || c.s.beta == 0 {
		return false
	}
	u := 1 - rand.Float64()
	return float64(deltaMs)*c.s.beta*-math.Log(u) >= float64(pttlMs)
}

// sample is the freshness check (section 9): on a share of hits, the
// loader's bytes compared with the value served. A failed loader says
// nothing about freshness and is not counted.
func (c *Cache) sample(ctx context.Context, served []byte, loader Loader) {
	if c.s.sampleRate <= 0 || rand.Float64() >= c.s.sampleRate {
		return
	}
	truth, _, err := c.runLoader(ctx, loader, "")
	if err != nil {
		return
	}
	mismatch := !bytes.Equal(truth, served)
	c.m.freshnessChecks.Inc()
	if mismatch {
		c.m.freshnessMismatches.Inc()
	}
	c.m.staleRatio.Set(c.checks.record(mismatch))
}

// readTracked is the read of section 5, registered with the tracking L1 so
// that versions read while a change was reported are not held.
func (c *Cache) readTracked(ctx context.Context, layout *Layout) (*snapshot, error) {
	if c.exact == nil {
		return c.read(ctx, layout)
	}
	pending := c.exact.begin(layout.Records)
	snap, err := c.read(ctx, layout)
	var versions []uint64
	if err == nil {
		versions = snap.versions()
	}
	var covered func(string) bool
	if c.cluster != nil {
		covered = c.covered
	}
	c.exact.commit(pending, versions, covered)
	return snap, err
}

// fromL1 is an L1 hit: the tracking L1 for any get, the bounded L1 for an
// eventual get within min(its bound, the get's max stale).
func (c *Cache) fromL1(req *request, now time.Time) (Result, bool) {
	if c.exact != nil {
		if dataKey, value, ok := c.exact.lookup(req.layout, now); ok {
			return Result{Value: bytes.Clone(value), Hit: true, DataKey: dataKey}, true
		}
	}
	if c.l1 != nil && req.mode == ConsistencyEventual {
		bound := min(c.s.l1.MaxStale, req.maxStale)
		if value, dataKey, ok := c.l1.fresh(req.entryID, bound, now); ok {
			return Result{Value: bytes.Clone(value), Hit: true, DataKey: dataKey, Stale: true}, true
		}
	}
	return Result{}, false
}

// remember puts a value read under the current versions into the L1s.
// pttlMs is its time to live left (-1: none).
func (c *Cache) remember(req *request, dataKey string, value []byte, readAt time.Time, pttlMs int64) {
	c.rememberBounded(req, dataKey, value, readAt)
	if c.exact != nil {
		var expires time.Time
		if pttlMs > 0 {
			expires = time.Now().Add(time.Duration(pttlMs) * time.Millisecond)
		}
		c.exact.putValue(dataKey, bytes.Clone(value), req.layout.Records, expires)
	}
}

func (c *Cache) rememberBounded(req *request, dataKey string, value []byte, readAt time.Time) {
	if c.l1 != nil {
		c.l1.put(req.entryID, dataKey, bytes.Clone(value), req.layout.Records, readAt)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
