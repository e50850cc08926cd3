package cdccache

// The metrics of readers/spec.md section 10, the names and labels of every
// reader library. The families are registered once per registerer (a
// registerer refuses a second collector of one name); caches share them
// through the cache label. No key ever becomes a label.

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names (spec section 10).
const (
	MetricHits                = "cache_hits_total"
	MetricMisses              = "cache_misses_total"
	MetricFills               = "cache_fills_total"
	MetricFillErrors          = "cache_fill_errors_total"
	MetricFillLatency         = "cache_fill_latency_ms"
	MetricStampedePrevented   = "stampede_prevented_count"
	MetricStaleServed         = "cache_stale_served_total"
	MetricLeaseTakeovers      = "cache_lease_takeovers_total"
	MetricEarlyRefreshes      = "cache_early_refreshes_total"
	MetricFreshnessChecks     = "cache_freshness_checks_total"
	MetricFreshnessMismatches = "cache_freshness_mismatches_total"
	MetricStaleRatio          = "cache_stale_ratio"
	MetricL1Invalidations     = "cache_l1_invalidations_total"
	MetricPropagation         = "invalidation_propagation_ms"
)

var msBuckets = []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000}

// metrics are one cache's series.
type metrics struct {
	hitsL1, hitsRedis, misses, fills, fillErrors         prometheus.Counter
	stampedePrevented, staleServed, leaseTakeovers       prometheus.Counter
	earlyRefreshes, freshnessChecks, freshnessMismatches prometheus.Counter
	l1Notice, l1Tracking, l1Reset                        prometheus.Counter
	fillLatency, propagation                             prometheus.Observer
	staleRatio                                           prometheus.Gauge
}

// register registers c, or returns the collector of that name already
// registered with the same description.
func register[C prometheus.Collector](r prometheus.Registerer, c C) (C, error) {
	if err := r.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

var registerMu sync.Mutex

func newMetrics(r prometheus.Registerer, cache string) (*metrics, error) {
	registerMu.Lock()
	defer registerMu.Unlock()
	var firstErr error
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		v, err := register(r, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append([]string{"cache"}, labels...)))
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return v
	}
	histogram := func(name, help string) *prometheus.HistogramVec {
		v, err := register(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: msBuckets}, []string{"cache"}))
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return v
	}
	hits := counter(MetricHits, "Gets whose first look (L1, or the Redis read) found the value, by layer (l1, redis).", "layer")
	l1 := counter(MetricL1Invalidations, "L1 entries dropped by a notice (reason=notice) or by clearing the L1 on a (re)subscribe or lost tracking (reason=reset).", "reason")
	ratio, err := register(r, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricStaleRatio, Help: "Mismatches among the last 100 freshness checks."}, []string{"cache"}))
	if err != nil && firstErr == nil {
		firstErr = err
	}
	m := &metrics{
		hitsL1:              hits.WithLabelValues(cache, "l1"),
		hitsRedis:           hits.WithLabelValues(cache, "redis"),
		misses:              counter(MetricMisses, "Gets whose read found no value.").WithLabelValues(cache),
		fills:               counter(MetricFills, "Values loaded and written by this process.").WithLabelValues(cache),
		fillErrors:          counter(MetricFillErrors, "Loader failures and loader timeouts (the lease is released).").WithLabelValues(cache),
		fillLatency:         histogram(MetricFillLatency, "The loader's duration in milliseconds.").WithLabelValues(cache),
		stampedePrevented:   counter(MetricStampedePrevented, "Gets that missed, did not take the lease and ended without calling their loader.").WithLabelValues(cache),
		staleServed:         counter(MetricStaleServed, "Previous versions' values served (stale-while-revalidate).").WithLabelValues(cache),
		leaseTakeovers:      counter(MetricLeaseTakeovers, "Leases taken over after their holder vanished.").WithLabelValues(cache),
		earlyRefreshes:      counter(MetricEarlyRefreshes, "XFetch refreshes before the TTL.").WithLabelValues(cache),
		freshnessChecks:     counter(MetricFreshnessChecks, "Sampled hits compared with the loader.").WithLabelValues(cache),
		freshnessMismatches: counter(MetricFreshnessMismatches, "Sampled hits that differed from the loader's value.").WithLabelValues(cache),
		staleRatio:          ratio.WithLabelValues(cache),
		l1Notice:            l1.WithLabelValues(cache, "notice"),
		l1Tracking:          l1.WithLabelValues(cache, "tracking"),
		l1Reset:             l1.WithLabelValues(cache, "reset"),
		propagation:         histogram(MetricPropagation, "Milliseconds from the source commit to the notice received (L1).").WithLabelValues(cache),
	}
	if firstErr != nil {
		return nil, invalidf("registering the metrics: %v", firstErr)
	}
	return m, nil
}

// ratioWindow is the freshness check's window: cache_stale_ratio is the
// share of mismatches among the last 100 checks (section 9).
type ratioWindow struct {
	mu         sync.Mutex
	results    [100]bool
	n, next    int
	mismatches int
}

func (w *ratioWindow) record(mismatch bool) float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == len(w.results) && w.results[w.next] {
		w.mismatches--
	}
	w.results[w.next] = mismatch
	if mismatch {
		w.mismatches++
	}
	w.next = (w.next + 1) % len(w.results)
	if w.n < len(w.results) {
		w.n++
	}
	return float64(w.mismatches) / float64(w.n)
}
