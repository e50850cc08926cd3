// Every metric of the package (readers/spec.md section 10), the same names
// as the Rust crate. Made once per registry: prom-client refuses a second
// metric of the same name in one registry, and several caches share them
// through their `cache` label.

import { Counter, Gauge, Histogram, Registry, register as defaultRegistry } from 'prom-client';

export const NAMES = {
  hits: 'cache_hits_total',
  misses: 'cache_misses_total',
  fills: 'cache_fills_total',
  fillErrors: 'cache_fill_errors_total',
  fillLatency: 'cache_fill_latency_ms',
  stampedePrevented: 'stampede_prevented_count',
  staleServed: 'cache_stale_served_total',
  leaseTakeovers: 'cache_lease_takeovers_total',
  earlyRefreshes: 'cache_early_refreshes_total',
  freshnessChecks: 'cache_freshness_checks_total',
  freshnessMismatches: 'cache_freshness_mismatches_total',
  staleRatio: 'cache_stale_ratio',
  l1Invalidations: 'cache_l1_invalidations_total',
  propagation: 'invalidation_propagation_ms',
} as const;

const MS_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

export interface Metrics {
  hits: Counter<'cache' | 'layer'>;
  misses: Counter<'cache'>;
  fills: Counter<'cache'>;
  fillErrors: Counter<'cache'>;
  fillLatency: Histogram<'cache'>;
  stampedePrevented: Counter<'cache'>;
  staleServed: Counter<'cache'>;
  leaseTakeovers: Counter<'cache'>;
  earlyRefreshes: Counter<'cache'>;
  freshnessChecks: Counter<'cache'>;
  freshnessMismatches: Counter<'cache'>;
  staleRatio: Gauge<'cache'>;
  l1Invalidations: Counter<'cache' | 'reason'>;
  propagation: Histogram<'cache'>;
}

const made = new WeakMap<Registry, Metrics>();

export function metricsFor(registry: Registry = defaultRegistry): Metrics {
  const existing = made.get(registry);
  if (existing) return existing;
  const registers = [registry];
  const counter = <L extends string>(name: string, help: string, labelNames: L[]) =>
    new Counter<L>({ name, help, labelNames, registers });
  const m: Metrics = {
    hits: counter(NAMES.hits, 'Gets whose first read found the value, by layer (l1, redis)', ['cache', 'layer']),
    misses: counter(NAMES.misses, 'Gets whose first read found no value', ['cache']),
    fills: counter(NAMES.fills, 'Values loaded and written by this process', ['cache']),
    fillErrors: counter(NAMES.fillErrors, 'Loader failures and timeouts (the lease is released, nothing cached)', ['cache']),
    fillLatency: new Histogram({ name: NAMES.fillLatency, help: "The loader's duration in milliseconds", labelNames: ['cache'], buckets: MS_BUCKETS, registers }),
    stampedePrevented: counter(NAMES.stampedePrevented, 'Gets that missed, did not take the lease and ended without calling their loader', ['cache']),
    staleServed: counter(NAMES.staleServed, "Previous versions' values served (stale-while-revalidate)", ['cache']),
    leaseTakeovers: counter(NAMES.leaseTakeovers, 'Leases taken over after their holder vanished', ['cache']),
    earlyRefreshes: counter(NAMES.earlyRefreshes, 'XFetch refreshes before the TTL', ['cache']),
    freshnessChecks: counter(NAMES.freshnessChecks, 'Sampled hits compared with the loader', ['cache']),
    freshnessMismatches: counter(NAMES.freshnessMismatches, 'Sampled hits that differed from the loader', ['cache']),
    staleRatio: new Gauge({ name: NAMES.staleRatio, help: 'Share of mismatches among the last 100 freshness checks', labelNames: ['cache'], registers }),
    l1Invalidations: counter(NAMES.l1Invalidations, 'L1 entries dropped, by reason (notice, tracking, reset)', ['cache', 'reason']),
    propagation: new Histogram({ name: NAMES.propagation, help: "Source commit to the daemon's notice received by this process, in milliseconds", labelNames: ['cache'], buckets: MS_BUCKETS, registers }),
  };
  made.set(registry, m);
  return m;
}
