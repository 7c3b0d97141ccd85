// Package netserve is the part of a server that SMTP and POP3 share: it
// accepts connections on any number of listeners, backs off on transient
// accept errors, caps connections in total and per client (through
// internal/connlimit, one count across every listener), keeps the registry
// of live sessions, and shuts down gracefully: no new connections, every
// session asked to drain, and whatever is left after the caller's deadline
// aborted.
//
// A protocol package gives each admitted connection to its own handler and
// registers the session it starts with Track; netserve never reads or
// writes a connection itself.
package netserve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postie/postie/internal/connlimit"
)

// Stressable is a Session that shortens its waits under stress: a session
// that has not yet started real work (no MAIL in SMTP, no login in POP3)
// and is waiting for the client gets at most the stress timeout from now.
type Stressable interface {
	Stress()
}

// Session is a live session as the skeleton sees it.
type Session interface {
	// Drain asks the session to end at its next safe point: at once if it
	// is waiting for the client's next command, after the work in hand
	// (a message being received, a QUIT being applied) otherwise.
	Drain()
	// Abort ends the session now, whatever it is doing.
	Abort()
}

// Config sets up a Server.
type Config struct {
	// Name names the service in log lines and errors ("smtp", "pop3").
	Name string
	// MaxConnections and MaxConnectionsPerIP bound the connections open
	// at once, in total and per client (an IPv6 client counts by its
	// /64); 0 means no limit.
	MaxConnections      int
	MaxConnectionsPerIP int
	// StressAt is the number of open connections from which the server is
	// under stress (Postfix's stress mode): sessions that do no real work
	// yet get short timeouts, so that idle peers cannot hold every slot.
	// It leaves stress below four fifths of it. 0: never.
	StressAt int
	// OnStress, if not nil, is told when stress begins and ends (metrics).
	OnStress func(on bool)
	// Logger receives the skeleton's log lines; nil discards them.
	Logger *slog.Logger
}

// Server accepts connections and keeps track of sessions. Make it with New.
type Server struct {
	name     string
	log      *slog.Logger
	limiter  *connlimit.Limiter
	stressAt int
	onStress func(bool)
	stressed atomic.Bool

	// ctx is cancelled once Shutdown is over, or as soon as it gives up
	// waiting: it is the parent of the sessions' work.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	sessions  map[Session]struct{}
	live      sync.WaitGroup // one per tracked session
}

// New makes a Server.
func New(cfg Config) *Server {
	s := &Server{
		name:      cfg.Name,
		log:       cfg.Logger,
		limiter:   connlimit.NewLimiter(cfg.MaxConnections, cfg.MaxConnectionsPerIP),
		stressAt:  cfg.StressAt,
		onStress:  cfg.OnStress,
		listeners: map[net.Listener]struct{}{},
		sessions:  map[Session]struct{}{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Context is the parent of the sessions' work (checks, deliveries): it is
// cancelled when Shutdown gives up on the sessions still running, or once
// it is over.
func (s *Server) Context() context.Context { return s.ctx }

// Serve accepts connections on l until Shutdown, or until l fails for good.
// Each connection within the limits is handed to handle, which owns it from
// then on (closing it frees its slot); one over a limit is given to reject,
// if not nil, and closed. Serve may run on several listeners at once; the
// limits are shared. It returns nil once Shutdown was called.
func (s *Server) Serve(l net.Listener, reject connlimit.Rejecter, handle func(net.Conn)) error {
	ll := s.limiter.Listen(l, reject)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[ll] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ll)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := ll.Accept()
		if err != nil {
			if s.Closing() {
				return nil
			}
			if temporary(err) {
				// Out of file descriptors, or a connection aborted before
				// it was taken: wait and go on, as net/http does, rather
				// than spin or give up.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "service", s.name, "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("%s: accept on %s: %w", s.name, l.Addr(), err)
		}
		delay = 0
		s.updateStress()
		handle(c)
	}
}

// StressAt returns the number of connections at which stress begins for a
// limit of connections and a threshold (a fraction, such as 0.75).
func StressAt(limit int, threshold float64) int {
	if threshold <= 0 || limit <= 0 {
		return 0
	}
	return max(1, int(float64(limit)*threshold+0.5))
}

// Stressed reports whether the server is under stress now.
func (s *Server) Stressed() bool { return s.stressed.Load() }

// updateStress enters or leaves stress after the count of open
// connections changed. Entering it tells every session that can shorten
// its wait; leaving needs the count to fall below four fifths of StressAt,
// so that a server at the threshold does not flap.
func (s *Server) updateStress() {
	if s.stressAt <= 0 {
		return
	}
	open := s.limiter.Open()
	switch {
	case open >= s.stressAt && s.stressed.CompareAndSwap(false, true):
		s.log.Warn("stress: connections near the limit; waits before real work are shortened", "service", s.name, "open", open, "stress_at", s.stressAt)
		if s.onStress != nil {
			s.onStress(true)
		}
		for _, sess := range s.Sessions() {
			if st, ok := sess.(Stressable); ok {
				st.Stress()
			}
		}
	case open < s.stressAt*4/5 && s.stressed.CompareAndSwap(true, false):
		s.log.Info("stress over", "service", s.name, "open", open)
		if s.onStress != nil {
			s.onStress(false)
		}
	}
}

// temporary reports whether an accept error is worth retrying.
func temporary(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}

// Track registers a session that has started. It reports false when the
// server is shutting down: the caller then ends the session at once. Each
// Track that returns true is matched by one Done when the session is over.
func (s *Server) Track(sess Session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.sessions[sess] = struct{}{}
	s.live.Add(1)
	return true
}

// Done forgets a session that Track registered.
func (s *Server) Done(sess Session) {
	s.mu.Lock()
	_, ok := s.sessions[sess]
	delete(s.sessions, sess)
	s.mu.Unlock()
	if ok {
		s.live.Done()
	}
	s.updateStress()
}

// Closing reports whether Shutdown has been called.
func (s *Server) Closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Sessions returns the live sessions.
func (s *Server) Sessions() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshot()
}

// Open returns the connections handed out and not yet closed.
func (s *Server) Open() int { return s.limiter.Open() }

// Shutdown stops accepting connections and asks every session to drain.
// When they have all ended it returns nil. When ctx is done first, it
// cancels Context, aborts the sessions left, waits at most grace for them
// to end, and returns ctx's error. Calling it again returns nil at once.
func (s *Server) Shutdown(ctx context.Context, grace time.Duration) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, sess := range s.snapshot() {
		sess.Drain()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.live.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return errors.Join(errs...)
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	left := s.snapshot()
	s.mu.Unlock()
	s.log.Warn("shutdown: ending sessions still in flight", "service", s.name, "sessions", len(left))
	for _, sess := range left {
		sess.Abort()
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	return errors.Join(append(errs, ctx.Err())...)
}

// snapshot lists the live sessions. Callers hold s.mu.
func (s *Server) snapshot() []Session {
	out := make([]Session, 0, len(s.sessions))
	for sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// RemoteIP returns the IP address of a connection's peer, IPv4-mapped
// addresses unmapped; the zero Addr if it has none.
func RemoteIP(c net.Conn) netip.Addr {
	a := c.RemoteAddr()
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
