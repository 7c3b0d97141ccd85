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

// Listener wraps a net.Listener with connection limits.
type Listener struct {
	net.Listener
	total, perClient int
	reject           Rejecter

	mu     sync.Mutex
	open   int
	byAddr map[netip.Prefix]int
}

// New wraps l. total and perClient are the limits (0 means none); reject, if
// not nil, answers a refused connection before it is closed.
func New(l net.Listener, total, perClient int, reject Rejecter) *Listener {
	return &Listener{Listener: l, total: total, perClient: perClient, reject: reject, byAddr: map[netip.Prefix]int{}}
}

// ClientKey returns the group a remote address counts against: the IPv4
// address, or the /64 of an IPv6 address.
func ClientKey(addr net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
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
		l.mu.Lock()
		overTotal := l.total > 0 && l.open >= l.total
		overClient := l.perClient > 0 && l.byAddr[key] >= l.perClient
		if !overTotal && !overClient {
			l.open++
			l.byAddr[key]++
			l.mu.Unlock()
			return &conn{Conn: c, l: l, key: key}, nil
		}
		l.mu.Unlock()
		go func() {
			if l.reject != nil {
				l.reject(c, overClient && !overTotal)
			}
			c.Close()
		}()
	}
}

// Open returns the number of connections handed out and not yet closed.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

func (l *Listener) release(key netip.Prefix) {
	l.mu.Lock()
	l.open--
	if l.byAddr[key]--; l.byAddr[key] <= 0 {
		delete(l.byAddr, key)
	}
	l.mu.Unlock()
}

// conn gives its slot back when closed.
type conn struct {
	net.Conn
	l    *Listener
	key  netip.Prefix
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// Unwrap returns the underlying connection.
func (c *conn) Unwrap() net.Conn { return c.Conn }
