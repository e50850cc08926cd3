// @cdc-invalidator/cache: the reader half of cdc-invalidator's key protocol,
// for Node. The specification shared with the Rust crate cdc-cache is
// readers/spec.md.

export { Cache, LeaseTimeoutError, LoaderError, LoaderTimeoutError, ProtocolError, type CacheOptions, type GetOptions, type Got } from './cache';
export { key, Template, KeyError, escape, renderValue, plainDecimal, float32, float64, decimal, integer, type KeyValue } from './key';
export { L1, type L1Options } from './l1';
export { NAMES as METRIC_NAMES, metricsFor } from './metrics';
export { BadVersionError, InvalidOptionsError, Layout, leaseKey, parseVersion, type Fields } from './naming';
