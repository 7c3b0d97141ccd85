// Package connlimit caps the connections a listener hands out, in total and
// per client address, so that no single peer (or flood of peers) can use up
// a server's file descriptors and memory. SMTP and POP3 wrap their
// listeners in it.
//
// Addresses are grouped for the per-client count: an IPv4 address stands for
// itself, an IPv6 address for its /64, since one IPv6 client commonly holds a
// whole /64.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
)

// Rejecter answers a connection that is over a limit (for example with
// "421 4.7.0 Too many connections") before it is closed. It runs in its own
// goroutine and must bound its own time (a write deadline).
type Rejecter func(c net.Conn, perClient bool)

// Limiter holds the counts that one or more Listeners share, so that a
// service listening on several addresses has one total.
type Limiter struct {
	total, perClient int

	mu     sync.Mutex
	open   int
	byAddr map[netip.Prefix]int
}

// NewLimiter makes a Limiter; total and perClient are the limits (0 means
// none).
func NewLimiter(total, perClient int) *Limiter {
	return &Limiter{total: total, perClient: perClient, byAddr: map[netip.Prefix]int{}}
}

// Listen wraps l so that its connections count against the limiter's
// limits; reject, if not nil, answers a refused connection before it is
// closed.
func (lim *Limiter) Listen(l net.Listener, reject Rejecter) *Listener {
	return &Listener{Listener: l, lim: lim, reject: reject}
}

// Open returns the connections handed out and not yet closed.
func (lim *Limiter) Open() int {
	lim.mu.Lock()
	defer lim.mu.Unlock()
	return lim.open
}

// admit takes a slot for key, reporting which limit refused it if none.
func (lim *Limiter) admit(key netip.Prefix) (ok, perClient bool) {
	lim.mu.Lock()
	defer lim.mu.Unlock()
	overTotal := lim.total > 0 && lim.open >= lim.total
	overClient := lim.perClient > 0 && lim.byAddr[key] >= lim.perClient
	if overTotal || overClient {
		return false, overClient && !overTotal
	}
	lim.open++
	lim.byAddr[key]++
	return true, false
}

func (lim *Limiter) release(key netip.Prefix) {
	lim.mu.Lock()
	lim.open--
	if lim.byAddr[key]--; lim.byAddr[key] <= 0 {
		delete(lim.byAddr, key)
	}
	lim.mu.Unlock()
}

// Listener wraps a net.Listener with connection limits.
type Listener struct {
	net.Listener
	lim    *Limiter
	reject Rejecter
}

// New wraps l with limits of its own. total and perClient are the limits (0
// means none); reject, if not nil, answers a refused connection before it
// is closed.
func New(l net.Listener, total, perClient int, reject Rejecter) *Listener {
	return NewLimiter(total, perClient).Listen(l, reject)
}

// ClientKey returns the group a remote address counts against: the IPv4
// address, or the /64 of an IPv6 address.
func ClientKey(addr net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}
	}
	return Network(ap.Addr())
}

// Network returns the group an IP address counts against: the IPv4
// address, or the /64 of an IPv6 address (IPv4-mapped addresses unmapped).
func Network(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// Accept returns the next connection within the limits. Connections over a
// limit are answered by the Rejecter and closed without being returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := ClientKey(c.RemoteAddr())
		ok, perClient := l.lim.admit(key)
		if ok {
			return &conn{Conn: c, lim: l.lim, key: key}, nil
		}
		go func() {
			if l.reject != nil {
				l.reject(c, perClient)
			}
			c.Close()
		}()
	}
}

// Open returns the number of connections handed out and not yet closed
// (across every listener sharing this one's limiter).
func (l *Listener) Open() int { return l.lim.Open() }

// conn gives its slot back when closed.
type conn struct {
	net.Conn
	lim  *Limiter
	key  netip.Prefix
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.lim.release(c.key) })
	return err
}

// Unwrap returns the underlying connection.
func (c *conn) Unwrap() net.Conn { return c.Conn }
