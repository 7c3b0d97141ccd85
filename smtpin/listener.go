package smtpin

import (
	"net"
	"sync"
)

// chanListener is a net.Listener fed by the server's own accept loop: the
// server decides, per connection, which go-smtp server (with STARTTLS or
// without, of the configuration in force) handles it.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// Accept returns the next connection handed over, or net.ErrClosed.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// push hands c to whoever calls Accept; it reports false if the listener
// was closed first.
func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

// Close makes Accept and push fail from now on.
func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr returns the address given at creation.
func (l *chanListener) Addr() net.Addr { return l.addr }

// fanInAddr is the address of the listeners that feed go-smtp the
// connections of every listen address.
type fanInAddr struct{}

func (fanInAddr) Network() string { return "tcp" }
func (fanInAddr) String() string  { return "smtpin" }
