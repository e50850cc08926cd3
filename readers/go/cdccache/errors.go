package cdccache

import (
	"errors"
	"fmt"
	"time"
)

// Kind is an error's kind: the same word in every reader library
// (readers/spec.md section 11).
type Kind string

const (
	// KindBadVersion: a version field is not canonical (section 3).
	KindBadVersion Kind = "bad_version"
	// KindRedis: a Redis error; nothing is served from a cache the library
	// could not read.
	KindRedis Kind = "redis"
	// KindLoader: the loader's own error, passed through.
	KindLoader Kind = "loader"
	// KindLoaderTimeout: the loader ran longer than the cache's loader timeout.
	KindLoaderTimeout Kind = "loader_timeout"
	// KindLeaseTimeout: a waiter reached its wait timeout with no value to serve.
	KindLeaseTimeout Kind = "lease_timeout"
	// KindInvalidOptions: a refused option, at the call or when the cache is built.
	KindInvalidOptions Kind = "invalid_options"
	// KindProtocol: a reply the library never expects.
	KindProtocol Kind = "protocol"
)

// Sentinel errors, one per kind: errors.Is(err, cdccache.ErrLeaseTimeout).
// Every error a Cache returns is an *Error whose Is matches its kind's
// sentinel, except a cancelled get, which returns its context's error.
var (
	ErrBadVersion     = errors.New(string(KindBadVersion))
	ErrRedis          = errors.New(string(KindRedis))
	ErrLoader         = errors.New(string(KindLoader))
	ErrLoaderTimeout  = errors.New(string(KindLoaderTimeout))
	ErrLeaseTimeout   = errors.New(string(KindLeaseTimeout))
	ErrInvalidOptions = errors.New(string(KindInvalidOptions))
	ErrProtocol       = errors.New(string(KindProtocol))
)

var sentinels = map[Kind]error{
	KindBadVersion:     ErrBadVersion,
	KindRedis:          ErrRedis,
	KindLoader:         ErrLoader,
	KindLoaderTimeout:  ErrLoaderTimeout,
	KindLeaseTimeout:   ErrLeaseTimeout,
	KindInvalidOptions: ErrInvalidOptions,
	KindProtocol:       ErrProtocol,
}

// Error is every error of a get or of building a cache. Err is the cause
// when there is one (the loader's error, go-redis's error), reachable
// through errors.Is and errors.As.
type Error struct {
	Kind Kind
	// DataKey names the data key the get was reading or loading, when known.
	DataKey string
	// Record, Field and Text describe a bad_version: the record, the field
	// and the text it holds.
	Record, Field, Text string
	// Waited is how long a lease_timeout get waited.
	Waited  time.Duration
	message string
	Err     error
}

func (e *Error) Error() string {
	msg := string(e.Kind) + ": " + e.message
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is matches the kind's sentinel (ErrLoader for a loader error, ...).
func (e *Error) Is(target error) bool { return sentinels[e.Kind] == target }

func (e *Error) Unwrap() error { return e.Err }

func invalidf(format string, args ...any) *Error {
	return &Error{Kind: KindInvalidOptions, message: fmt.Sprintf(format, args...)}
}

func protocolf(format string, args ...any) *Error {
	return &Error{Kind: KindProtocol, message: fmt.Sprintf(format, args...)}
}

func redisError(op string, err error) *Error {
	return &Error{Kind: KindRedis, message: op, Err: err}
}

func badVersion(record, field, text string) *Error {
	return &Error{
		Kind:    KindBadVersion,
		Record:  record,
		Field:   field,
		Text:    text,
		message: fmt.Sprintf("version record %q: field %q holds %q, not a version (decimal digits, 0 to 2^63-1, no leading zero)", record, field, text),
	}
}

func loaderError(dataKey string, err error) *Error {
	return &Error{Kind: KindLoader, DataKey: dataKey, message: fmt.Sprintf("data key %q: the loader failed", dataKey), Err: err}
}

func loaderTimeout(dataKey string, limit time.Duration) *Error {
	return &Error{Kind: KindLoaderTimeout, DataKey: dataKey, message: fmt.Sprintf("data key %q: the loader ran longer than the loader timeout (%s)", dataKey, limit)}
}

func leaseTimeout(dataKey string, waited time.Duration) *Error {
	return &Error{
		Kind:    KindLeaseTimeout,
		DataKey: dataKey,
		Waited:  waited,
		message: fmt.Sprintf("data key %q: no value after waiting %s for the lease holder's load (retry the get to wait again)", dataKey, waited.Round(time.Millisecond)),
	}
}
