package netserve

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// echoSession is a session that reads lines until its connection closes;
// Drain closes it only while it waits for a line, unless busy is set.
type echoSession struct {
	c       net.Conn
	busy    atomic.Bool
	drained atomic.Bool
	aborted atomic.Bool
}

func (e *echoSession) Drain() {
	e.drained.Store(true)
	if !e.busy.Load() {
		e.c.Close()
	}
}

func (e *echoSession) Abort() {
	e.aborted.Store(true)
	e.c.Close()
}

// start runs a Server on a loopback listener whose sessions are
// echoSessions; it returns the server, its address and the sessions made.
func start(t *testing.T, cfg Config) (*Server, string, func() []*echoSession, chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(cfg)
	var mu sync.Mutex
	var made []*echoSession
	served := make(chan error, 1)
	go func() {
		served <- s.Serve(l, func(c net.Conn, perClient bool) {
			c.Write([]byte("busy\n"))
		}, func(c net.Conn) {
			sess := &echoSession{c: c}
			if !s.Track(sess) {
				c.Close()
				return
			}
			mu.Lock()
			made = append(made, sess)
			mu.Unlock()
			go func() {
				defer s.Done(sess)
				defer c.Close()
				c.Write([]byte("hello\n"))
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
				}
			}()
		})
	}()
	t.Cleanup(func() { s.Shutdown(context.Background(), time.Second) })
	return s, l.Addr().String(), func() []*echoSession {
		mu.Lock()
		defer mu.Unlock()
		return append([]*echoSession(nil), made...)
	}, served
}

func greet(t *testing.T, addr string) (net.Conn, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("no greeting: %v", err)
	}
	return c, l
}

func TestLimitsAcrossListenersAndShutdown(t *testing.T) {
	s, addr, sessions, served := start(t, Config{Name: "test", MaxConnections: 2})
	greet(t, addr)
	greet(t, addr)
	if _, l := greet(t, addr); l != "busy\n" {
		t.Fatalf("third connection got %q, want the rejecter's reply", l)
	}
	if n := s.Open(); n != 2 {
		t.Errorf("Open() = %d, want 2", n)
	}
	if err := s.Shutdown(context.Background(), time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, sess := range sessions() {
		if !sess.drained.Load() || sess.aborted.Load() {
			t.Errorf("idle session: drained %v, aborted %v; want drained only", sess.drained.Load(), sess.aborted.Load())
		}
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after Shutdown: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if s.Context().Err() == nil {
		t.Error("Context not cancelled after Shutdown")
	}
}

func TestShutdownDeadlineAborts(t *testing.T) {
	s, addr, sessions, _ := start(t, Config{Name: "test"})
	greet(t, addr)
	// Wait for the session to be tracked, then make it busy: Drain
	// leaves it running.
	deadline := time.Now().Add(5 * time.Second)
	for len(sessions()) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	sessions()[0].busy.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx, time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the deadline", err)
	}
	if sess := sessions()[0]; !sess.drained.Load() || !sess.aborted.Load() {
		t.Errorf("busy session: drained %v, aborted %v; want both", sess.drained.Load(), sess.aborted.Load())
	}
	if len(s.Sessions()) != 0 {
		t.Errorf("%d sessions left after the abort", len(s.Sessions()))
	}
	// New connections are no longer tracked.
	if s.Track(&echoSession{}) {
		t.Error("Track succeeded after Shutdown")
	}
}

func TestRemoteIP(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 25}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 25}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 25}, "2001:db8::1"},
		{&net.UnixAddr{Name: "/x", Net: "unix"}, "invalid IP"},
	} {
		if got := RemoteIP(fakeConn{remote: tc.addr}).String(); got != tc.want {
			t.Errorf("RemoteIP(%v) = %s, want %s", tc.addr, got, tc.want)
		}
	}
}

type fakeConn struct {
	net.Conn
	remote net.Addr
}

func (f fakeConn) RemoteAddr() net.Addr { return f.remote }
