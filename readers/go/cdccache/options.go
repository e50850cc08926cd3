package cdccache

// Cache and get options (readers/spec.md section 1): the defaults of the
// spec's table, and one place that refuses every option the spec refuses
// with an ErrInvalidOptions that names it.

import (
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Option configures a Cache (New).
type Option func(*settings)

// settings are a cache's options; the zero values of the optional ones mean
// "not set" and checked() fills in the spec's defaults.
type settings struct {
	name          string
	prefix        string
	lease         time.Duration
	poll          time.Duration
	maxPoll       time.Duration
	waitTimeout   *time.Duration
	loaderTimeout *time.Duration
	beta          float64
	sampleRate    float64
	registerer    prometheus.Registerer
	l1            *L1
	tracking      *TrackingL1
	logger        *slog.Logger
}

func defaultSettings() settings {
	return settings{
		name:   "default",
		prefix: "ver:",
		// The spec's defaults (section 1's table).
		lease:      5 * time.Second,
		poll:       10 * time.Millisecond,
		maxPoll:    100 * time.Millisecond,
		beta:       1.0,
		registerer: prometheus.DefaultRegisterer,
		logger:     slog.Default(),
	}
}

// WithName sets the cache label of every metric (default "default").
func WithName(name string) Option { return func(s *settings) { s.name = name } }

// WithPrefix sets the daemon's version_prefix (default "ver:").
func WithPrefix(prefix string) Option { return func(s *settings) { s.prefix = prefix } }

// WithLease sets the lease's time to live (default 5 s).
func WithLease(d time.Duration) Option { return func(s *settings) { s.lease = d } }

// WithPoll sets a waiter's first re-read interval (default 10 ms) and the
// longest one it doubles up to (default 100 ms).
func WithPoll(first, max time.Duration) Option {
	return func(s *settings) { s.poll, s.maxPoll = first, max }
}

// WithWaitTimeout sets the longest a get waits for another's load (default
// twice the lease).
func WithWaitTimeout(d time.Duration) Option { return func(s *settings) { s.waitTimeout = &d } }

// WithLoaderTimeout sets the longest a loader may run (default: no limit).
// A loader running longer fails the get with ErrLoaderTimeout; its context
// is cancelled and its late value is never written.
func WithLoaderTimeout(d time.Duration) Option {
	return func(s *settings) { s.loaderTimeout = &d }
}

// WithBeta sets XFetch's beta (default 1.0; 0 turns early refreshes off).
func WithBeta(beta float64) Option { return func(s *settings) { s.beta = beta } }

// WithSampleRate sets the share of hits checked against the loader (section
// 9; default 0, off).
func WithSampleRate(rate float64) Option { return func(s *settings) { s.sampleRate = rate } }

// WithRegisterer sets where the metrics are registered (default
// prometheus.DefaultRegisterer). Caches sharing a registerer share the
// metric families, told apart by their cache label.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(s *settings) { s.registerer = r }
}

// WithL1 turns on the bounded in-process cache of section 8.
func WithL1(l1 L1) Option { return func(s *settings) { s.l1 = &l1; s.tracking = nil } }

// WithTrackingL1 turns on the exact in-process cache fed by Redis client
// tracking (see TrackingL1).
func WithTrackingL1(t TrackingL1) Option {
	return func(s *settings) { s.tracking = &t; s.l1 = nil }
}

// WithLogger sets where the background connections (the notice
// subscription, client tracking) report trouble (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// L1 is the bounded in-process cache of readers/spec.md section 8, used by
// eventual gets only. An entry is served while it was verified against
// Redis within min(MaxStale, the get's max stale); it is dropped early by
// the daemon's notices on Channel, and the whole L1 is cleared whenever
// that subscription drops or restarts. Its hits are Stale: nothing
// guarantees they are current, only that they were within the bound.
type L1 struct {
	// MaxStale is the longest an entry is served after it was last
	// verified. Zero serves nothing from the L1 (every get reads Redis).
	MaxStale time.Duration
	// MaxEntries bounds the entries held (default 10,000; beyond it the
	// oldest is evicted).
	MaxEntries int
	// Channel is the daemon's [notices] redis_channel; empty serves entries
	// for the bound alone.
	Channel string
}

// TrackingL1 is the exact in-process cache: version records and values
// held in process and dropped the moment Redis reports a change of a
// version record (Redis client tracking in broadcasting mode on the version
// prefix, one tracking connection per primary). Used by strong and eventual
// gets alike; its hits are not Stale. The whole L1 is cleared when a
// tracking connection drops, reconnects or stays silent past twice
// HealthInterval, and is not used until tracking is back. A value is held
// at most until its Redis time to live ends.
type TrackingL1 struct {
	// MaxEntries bounds the values held and the version records held
	// (default 10,000 each; the least recently used is evicted beyond).
	MaxEntries int
	// MaxBytes bounds the bytes of values held (default 64 MiB).
	MaxBytes int
	// HealthInterval: a tracking connection silent this long is pinged;
	// silent for twice this long it is taken as dead (default 1 s).
	HealthInterval time.Duration
}

// checked fills in the defaults and refuses what section 1 refuses.
func (s *settings) checked() (*settings, error) {
	if s.name == "" {
		return nil, invalidf("name must not be empty")
	}
	if s.lease <= 0 {
		return nil, invalidf("lease must be above zero, not %s", s.lease)
	}
	if s.poll <= 0 || s.maxPoll <= 0 {
		return nil, invalidf("poll and max poll must be above zero, not %s and %s", s.poll, s.maxPoll)
	}
	if s.maxPoll < s.poll {
		return nil, invalidf("max poll (%s) must be at least poll (%s)", s.maxPoll, s.poll)
	}
	if s.waitTimeout == nil {
		d := 2 * s.lease
		s.waitTimeout = &d
	} else if *s.waitTimeout <= 0 {
		return nil, invalidf("wait timeout must be above zero, not %s", *s.waitTimeout)
	}
	if s.loaderTimeout != nil && *s.loaderTimeout <= 0 {
		return nil, invalidf("loader timeout must be above zero, not %s (leave it out for no limit)", *s.loaderTimeout)
	}
	if math.IsNaN(s.beta) || s.beta < 0 || math.IsInf(s.beta, 0) {
		return nil, invalidf("beta must be at least 0, not %v", s.beta)
	}
	if math.IsNaN(s.sampleRate) || s.sampleRate < 0 || s.sampleRate > 1 {
		return nil, invalidf("sample rate must be within 0 to 1, not %v", s.sampleRate)
	}
	if s.registerer == nil {
		return nil, invalidf("the registerer must not be nil")
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if l := s.l1; l != nil {
		if l.MaxStale < 0 {
			return nil, invalidf("L1 max stale must be at least 0, not %s", l.MaxStale)
		}
		if l.MaxEntries < 0 {
			return nil, invalidf("L1 max entries must be at least 1, not %d", l.MaxEntries)
		}
		if l.MaxEntries == 0 {
			l.MaxEntries = 10_000
		}
	}
	if t := s.tracking; t != nil {
		if t.MaxEntries < 0 || t.MaxBytes < 0 || t.HealthInterval < 0 {
			return nil, invalidf("tracking L1 max entries, max bytes and health interval must not be negative")
		}
		if t.MaxEntries == 0 {
			t.MaxEntries = 10_000
		}
		if t.MaxBytes == 0 {
			t.MaxBytes = 64 << 20
		}
		if t.HealthInterval == 0 {
			t.HealthInterval = time.Second
		}
	}
	return s, nil
}

// Consistency is a get's mode: exactly ConsistencyStrong or
// ConsistencyEventual; any other value is refused, never read as strong.
type Consistency string

const (
	// ConsistencyStrong never serves a value older than the current
	// versions (the default).
	ConsistencyStrong Consistency = "strong"
	// ConsistencyEventual may serve the previous version's value while the
	// last bump is younger than the get's MaxStale, and the bounded L1's
	// values within that bound.
	ConsistencyEventual Consistency = "eventual"
)

// GetOption configures one Get.
type GetOption func(*request)

// TTL sets the data key's time to live (required). It must not exceed the
// daemon's max_cache_ttl of the entities involved.
func TTL(d time.Duration) GetOption { return func(r *request) { r.ttl = d } }

// Deps sets the cache keys whose version records the value depends on, in
// a fixed order (default: the get's own key). Pass the same deps for the
// same key every time.
func Deps(keys ...string) GetOption {
	return func(r *request) {
		r.deps = append([]string{}, keys...) // non-nil even when empty: refused
	}
}

// Namespaces sets the entity namespaces whose records are folded in too.
func Namespaces(names ...string) GetOption {
	return func(r *request) { r.namespaces = append(r.namespaces[:0:0], names...) }
}

// Mode sets the consistency mode (default ConsistencyStrong); eventual
// needs MaxStale.
func Mode(c Consistency) GetOption { return func(r *request) { r.mode = c } }

// MaxStale sets an eventual get's bound: how old a served value may be
// after the last bump (stale-while-revalidate, and the bounded L1).
func MaxStale(d time.Duration) GetOption {
	return func(r *request) { r.maxStale = d; r.maxStaleSet = true }
}

// Eventual is Mode(ConsistencyEventual) with MaxStale(maxStale).
func Eventual(maxStale time.Duration) GetOption {
	return func(r *request) { r.mode = ConsistencyEventual; r.maxStale = maxStale; r.maxStaleSet = true }
}

// request is one get's options, checked.
type request struct {
	key         string
	deps        []string
	namespaces  []string
	ttl         time.Duration
	mode        Consistency
	maxStale    time.Duration
	maxStaleSet bool

	layout *Layout
	// entryID identifies the value in the bounded L1: the key and its records.
	entryID string
	// flight identifies the get's flight: the same key, records, mode and
	// bound (section 5, rule 2).
	flight string
}

func (c *Cache) request(key string, opts []GetOption) (*request, error) {
	r := &request{key: key, mode: ConsistencyStrong}
	for _, opt := range opts {
		opt(r)
	}
	layout, err := NewLayout(c.s.prefix, key, r.deps, r.namespaces)
	if err != nil {
		return nil, err
	}
	r.layout = layout
	if r.ttl <= 0 {
		return nil, invalidf("key %q: ttl must be above zero, not %s (pass cdccache.TTL)", key, r.ttl)
	}
	switch r.mode {
	case ConsistencyStrong:
		if r.maxStaleSet {
			return nil, invalidf("key %q: max stale is for eventual consistency; a strong get serves no stale value", key)
		}
	case ConsistencyEventual:
		if !r.maxStaleSet {
			return nil, invalidf("key %q: eventual consistency needs max stale (cdccache.Eventual(bound))", key)
		}
		if r.maxStale < 0 {
			return nil, invalidf("key %q: max stale must be at least 0, not %s", key, r.maxStale)
		}
	default:
		return nil, invalidf("key %q: consistency must be %q or %q, not %q", key, ConsistencyStrong, ConsistencyEventual, string(r.mode))
	}
	var b strings.Builder
	for _, record := range layout.Records {
		b.WriteString(record)
		b.WriteByte(0)
	}
	b.WriteString(key)
	b.WriteByte(0)
	b.WriteString(strconv.Itoa(layout.Deps))
	r.entryID = b.String()
	b.WriteByte(0)
	b.WriteString(string(r.mode))
	b.WriteByte(0)
	b.WriteString(strconv.FormatInt(int64(r.maxStale), 10))
	r.flight = b.String()
	return r, nil
}
