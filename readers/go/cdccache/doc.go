// Package cdccache is the Go reader of cdc-invalidator's key protocol
// (readers/spec.md): versioned cache-aside over Redis whose version records
// the daemon bumps when a row changes in the database.
//
// A get reads the version records its value depends on, names the data key
// from their versions, and returns the value found there; on a miss exactly
// one get (across every process) holds the lease, calls its loader and fills
// the key, while the others wait for it or, with eventual consistency, serve
// the previous version's value within a bound.
//
// Files, each owning one part of the specification:
//
//   - cache.go: the Cache, its options and Get (sections 1, 5 to 7, 9):
//     single flight in process, the lease rule, stale-while-revalidate,
//     XFetch and the freshness check.
//   - options.go: cache and get options, checked once (section 1's refused
//     options).
//   - errors.go: the error kinds of section 11 as sentinel errors and *Error.
//   - keys.go: cache keys rendered from templates and typed values exactly
//     as the daemon renders them (docs/key-rendering.md).
//   - naming.go: version text, records, data, lease and stale keys (sections
//     2, 3 and 6); pure functions the conformance vectors test.
//   - redis.go: the read path on a standalone server (one EVALSHA_RO of
//     lua/read.lua) and on a Cluster (two pipelined round trips), the lease
//     and its release.
//   - l1.go: the bounded L1 fed by the daemon's notices (section 8).
//   - tracking.go: the exact L1 fed by Redis client tracking.
//   - metrics.go: the Prometheus metrics of section 10.
//
// The Lua scripts in lua/ are copies of readers/lua, which every reader
// library loads; a test keeps them byte-for-byte identical (go:embed cannot
// reach outside the module's directory tree).
package cdccache
