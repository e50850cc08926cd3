package cdccache

import (
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// SentinelSettings name a primary through Redis Sentinel, with the meaning
// of the daemon's [redis.sentinel] (docs/operations.md) and readers/spec.md
// section 14. Build the client with NewSentinelClient and pass it to New.
//
// Printing them (%v, %+v, %#v) never shows a password.
type SentinelSettings struct {
	// MasterName is the name the Sentinels monitor (sentinel monitor <name>).
	MasterName string
	// Addresses are the Sentinels, "host:port" each; at least one, three or
	// more in production.
	Addresses []string
	// Username and Password are the primary's and replicas' ACL user and
	// password (their requirepass).
	Username string
	Password string
	// SentinelUsername and SentinelPassword are the Sentinels' own.
	SentinelUsername string
	SentinelPassword string
	// TLS to the Sentinels and to the data nodes (the server certificate is
	// verified).
	TLS bool
	// DB is the database the version records live in.
	DB int
}

// String lists the settings with the passwords hidden.
func (s SentinelSettings) String() string {
	hidden := func(p string) string {
		if p == "" {
			return `""`
		}
		return "<redacted>"
	}
	return fmt.Sprintf("SentinelSettings{MasterName:%q Addresses:%q Username:%q Password:%s SentinelUsername:%q SentinelPassword:%s TLS:%t DB:%d}",
		s.MasterName, s.Addresses, s.Username, hidden(s.Password), s.SentinelUsername, hidden(s.SentinelPassword), s.TLS, s.DB)
}

// GoString is String, so %#v hides the passwords too.
func (s SentinelSettings) GoString() string { return s.String() }

// Format makes every verb print String: %+v would otherwise print fields.
func (s SentinelSettings) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

func (s SentinelSettings) check() error {
	if s.MasterName == "" {
		return invalidf("sentinel: MasterName is empty")
	}
	if len(s.Addresses) == 0 {
		return invalidf("sentinel: Addresses is empty (expected at least one \"host:port\")")
	}
	for _, a := range s.Addresses {
		host, port, err := net.SplitHostPort(a)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || host == "" || n < 1 || n > 65535 {
			return invalidf("sentinel: address %q is not \"host:port\"", a)
		}
	}
	if s.DB < 0 {
		return invalidf("sentinel: DB %d is negative", s.DB)
	}
	return nil
}

// NewSentinelClient builds go-redis's failover client for the settings:
// every connection goes to the primary the Sentinels name (never a
// replica: a replica lags, and a get's version check must see the newest
// version), and the client follows a failover by itself. It subscribes to
// the Sentinels' +switch-master and closes its connections to the old
// primary at once; a command that meets a closed connection, a refused
// dial or READONLY is retried (up to three times, 8 to 512 ms apart), and
// each new connection asks the Sentinels where the primary is. The client
// is the caller's, as with any client passed to New: close it after the
// Cache.
func NewSentinelClient(s SentinelSettings) (*redis.Client, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	opt := &redis.FailoverOptions{
		MasterName:       s.MasterName,
		SentinelAddrs:    append([]string(nil), s.Addresses...),
		Username:         s.Username,
		Password:         s.Password,
		SentinelUsername: s.SentinelUsername,
		SentinelPassword: s.SentinelPassword,
		DB:               s.DB,
		// The primary only (the default, said here because it matters).
		ReplicaOnly: false,
	}
	if s.TLS {
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return redis.NewFailoverClient(opt), nil
}

// ParseSentinelAddresses splits the daemon's CDC_REDIS_SENTINELS form
// ("host:port,host:port") into Addresses.
func ParseSentinelAddresses(list string) []string {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
