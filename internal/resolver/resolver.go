// Package resolver builds the one DNS resolver Postie uses for everything it
// looks up (SPF, DKIM, DMARC, blocklists, "postie check"), so that the
// config can point all of it at one server: [dns] resolver =
// "127.0.0.1:5353" is how the tests run against a DNS server on loopback.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	cachingdns "github.com/ncruces/go-dns"
)

// New returns a resolver. With server empty it uses the system's
// configuration (/etc/resolv.conf); otherwise every query goes to server
// (host:port, UDP with TCP fallback) through Go's own resolver. timeout
// bounds each exchange with the server.
func New(server string, timeout time.Duration) (*net.Resolver, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if server == "" {
		return &net.Resolver{}, nil
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		return nil, fmt.Errorf("dns resolver %q: want host:port, e.g. 127.0.0.1:53", server)
	}
	d := net.Dialer{Timeout: timeout}
	refused := &refusals{}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			if refused.recent() {
				return nil, &net.OpError{Op: "dial", Net: network, Err: errRefusedRecently}
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			c, err := d.DialContext(ctx, network, server)
			if err != nil {
				refused.note(err)
				return nil, err
			}
			// Go's resolver sets its own deadline from resolv.conf (5s,
			// two attempts); clamp it so timeout bounds each exchange.
			if uc, ok := c.(*net.UDPConn); ok {
				return &clampedUDP{uc, timeout, refused}, nil
			}
			return &clampedStream{c, timeout, refused}, nil
		},
	}, nil
}

// refusedFor is how long a resolver that refused (nothing listens on its
// port) is not asked again: while it is down, every message's checks
// would each ask it in vain, and their answer, temperror, is the same.
const refusedFor = time.Second

var errRefusedRecently = errors.New("dns: the resolver refused a moment ago")

// refusals remembers when the DNS server last refused.
type refusals struct{ until atomic.Int64 }

func (r *refusals) recent() bool { return time.Now().UnixNano() < r.until.Load() }

func (r *refusals) note(err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		r.until.Store(time.Now().Add(refusedFor).UnixNano())
	}
}

func clamp(t time.Time, limit time.Duration) time.Time {
	if lim := time.Now().Add(limit); t.IsZero() || t.After(lim) {
		return lim
	}
	return t
}

// clampedUDP keeps net.PacketConn, which Go's resolver checks to frame
// messages for UDP.
type clampedUDP struct {
	*net.UDPConn
	limit   time.Duration
	refused *refusals
}

func (c *clampedUDP) SetDeadline(t time.Time) error { return c.UDPConn.SetDeadline(clamp(t, c.limit)) }

func (c *clampedUDP) Read(p []byte) (int, error) {
	n, err := c.UDPConn.Read(p)
	if err != nil {
		c.refused.note(err)
	}
	return n, err
}

type clampedStream struct {
	net.Conn
	limit   time.Duration
	refused *refusals
}

func (c *clampedStream) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(clamp(t, c.limit)) }

// Cache returns a resolver that answers repeated questions from memory and
// asks r only for the rest. It keeps answers (and, as RFC 2308 allows, "no
// such name" answers) for their TTL, at most maxTTL, and at most entries of
// them; a truncated or failed answer (SERVFAIL, REFUSED) is never kept, so a
// temporary DNS error is retried on the next lookup. entries <= 0 returns r
// unchanged. A mail server asks the same questions all day (the SPF, DKIM
// key and DMARC records of the senders it hears from, blocklist entries), so
// the cache saves a round trip per lookup and spares a recursive resolver
// or a blocklist operator the same query many times a minute.
func Cache(r *net.Resolver, entries int, maxTTL time.Duration) *net.Resolver {
	if entries <= 0 {
		return r
	}
	if maxTTL <= 0 {
		maxTTL = time.Hour
	}
	return cachingdns.NewCachingResolver(r,
		cachingdns.MaxCacheEntries(entries),
		cachingdns.MaxCacheTTL(maxTTL),
		cachingdns.NegativeCache(true))
}

// ErrOffline is what the offline resolver's lookups fail with.
var ErrOffline = errors.New("dns: no network in this mode")

// Offline returns a resolver that fails every lookup at once with a
// temporary error, for "postie local", where there is no DNS and checks must
// never make a sender wait.
func Offline() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: ErrOffline}
		},
	}
}
