package pop3out

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/metrics"
	"github.com/postie/postie/internal/netserve"
	"github.com/postie/postie/internal/penalty"
	"github.com/postie/postie/spool"
)

// Deps are what the server uses but does not own.
type Deps struct {
	// Store is the spool the maildrops come from.
	Store *spool.Store
	// TLS serves STLS and the implicit-TLS port. nil: no TLS at all, so
	// only clients in plaintext_login_networks can log in.
	TLS *tls.Config
	// TLSReady reports whether a certificate is there yet. nil: ready
	// whenever TLS is set. While it is false, STLS and logins that need TLS
	// get "-ERR [SYS/TEMP]" with the reason, and TLS handshakes fail.
	TLSReady func() bool
	// Logger receives the server's log lines. nil: discard.
	Logger *slog.Logger
	// Metrics counts logins and transfers. nil: none.
	Metrics *metrics.Metrics
	// Now returns the current time, for LOGIN-DELAY and the penalty
	// table. nil: time.Now.
	Now func() time.Time
}

// Server is a POP3 server. Serve and ServeTLS may run on any number of
// listeners at once.
type Server struct {
	deps     Deps
	log      *slog.Logger
	tls      *tls.Config // deps.TLS with the POP3 ALPN; nil without TLS
	notReady *tls.Config // fails every handshake: no certificate yet
	penalty  *penalty.Table
	gate     *gate // one password check at a time per account, for strangers
	// base accepts, limits and tracks connections (one total across
	// every listener) and runs Shutdown. Its Context ends when Shutdown
	// gives up on sessions in flight.
	base *netserve.Server
	ctx  context.Context

	settings atomic.Pointer[settings]
	nextID   atomic.Uint64

	loginsMu   sync.Mutex
	lastLogins map[spool.Login]time.Time // for LOGIN-DELAY
}

// settings are a Config digested for sessions. A session keeps the
// settings it started with; Reload affects sessions that start later.
type settings struct {
	cfg       Config
	plainNets []netip.Prefix
	expire    string // CAPA line, or ""
}

func newSettings(cfg Config) (*settings, error) {
	p := confkit.Check("pop3")
	cfg.check(p)
	if err := p.Err(); err != nil {
		return nil, err
	}
	st := &settings{cfg: cfg}
	for _, n := range cfg.PlaintextLoginNetworks {
		p, _ := parseNetwork(n) // checked above
		st.plainNets = append(st.plainNets, p)
	}
	st.expire, _ = expireCapability(cfg.Expire)
	return st, nil
}

// plaintextAllowed reports whether ip may log in without TLS.
func (st *settings) plaintextAllowed(ip netip.Addr) bool {
	for _, p := range st.plainNets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// alpnPOP3 is the ALPN protocol id of POP3 (IANA "pop3", RFC 7301
// registry). With NextProtos set, Go refuses clients that offer only other
// protocols, which stops cross-protocol attacks such as ALPACA.
const alpnPOP3 = "pop3"

// New makes a server. It checks what it needs to run (cfg.Validate also
// enforces the owner-facing minimums; main calls it first).
func New(cfg Config, deps Deps) (*Server, error) {
	if deps.Store == nil {
		return nil, errors.New("pop3: no spool store")
	}
	st, err := newSettings(cfg)
	if err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Server{
		deps:       deps,
		log:        deps.Logger,
		lastLogins: map[spool.Login]time.Time{},
		base: netserve.New(netserve.Config{
			Name: "pop3", MaxConnections: cfg.MaxConnections, MaxConnectionsPerIP: cfg.MaxConnectionsPerIP,
			StressAt: netserve.StressAt(cfg.MaxConnections, cfg.StressThreshold),
			OnStress: func(on bool) { deps.Metrics.Stress("pop3", on) },
			Logger:   deps.Logger,
		}),
		penalty: penalty.New(penaltyConfig(cfg, deps.Now)),
		gate:    newGate(),
	}
	s.settings.Store(st)
	if deps.TLS != nil {
		s.tls = deps.TLS.Clone()
		s.tls.NextProtos = []string{alpnPOP3}
		if s.tls.MinVersion < tls.VersionTLS12 {
			s.tls.MinVersion = tls.VersionTLS12
		}
		s.notReady = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				return nil, errNoCertificate
			},
		}
	}
	s.ctx = s.base.Context()
	return s, nil
}

var errNoCertificate = errors.New("pop3: no TLS certificate yet")

// tlsReady reports whether TLS can be offered now.
func (s *Server) tlsReady() bool {
	if s.tls == nil {
		return false
	}
	return s.deps.TLSReady == nil || s.deps.TLSReady()
}

// Serve accepts plaintext connections on l, which offer STLS, until l is
// closed or Shutdown is called (then it returns nil).
func (s *Server) Serve(l net.Listener) error { return s.serve(l, false) }

// ServeTLS accepts connections on l that speak TLS from the first byte
// (RFC 8314), until l is closed or Shutdown is called.
func (s *Server) ServeTLS(l net.Listener) error {
	if s.tls == nil {
		return errors.New("pop3: ServeTLS without a TLS config")
	}
	return s.serve(l, true)
}

func (s *Server) serve(l net.Listener, implicitTLS bool) error {
	reject := func(c net.Conn, perClient bool) {
		if !implicitTLS {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("-ERR [SYS/TEMP] too many connections, try again later\r\n"))
		}
		s.log.Warn("pop3 connection refused: too many connections", "ip", netserve.RemoteIP(c).String(), "per_client", perClient, "tls", implicitTLS)
	}
	return s.base.Serve(l, reject, func(c net.Conn) { s.startSession(c, implicitTLS) })
}

// startSession registers and starts a session unless the server is
// shutting down.
func (s *Server) startSession(c net.Conn, implicitTLS bool) {
	sess := newSession(s, c, implicitTLS)
	if !s.base.Track(sess) {
		c.Close()
		return
	}
	go func() {
		defer s.base.Done(sess)
		sess.run()
	}()
}

// shuttingDown reports whether Shutdown has been called.
func (s *Server) shuttingDown() bool { return s.base.Closing() }

// Shutdown stops accepting connections and ends sessions that have not
// logged in. Sessions in the TRANSACTION state may go on, and QUIT, until
// ctx ends; then their connections are closed without applying any
// deletions (RFC 1939 §6: no UPDATE without QUIT). Shutdown returns when
// every session has ended, with ctx's error if it had to cut some short.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.base.Shutdown(ctx, abortGrace)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		s.log.Warn("pop3 shutdown: sessions cut short; their deletions were not applied")
	}
	return err
}

// abortGrace is how long Shutdown waits, after closing the sessions still
// running when its context is done, for their goroutines to finish.
const abortGrace = 5 * time.Second

// Reload applies a new config to sessions that start from now on, and the
// failed-login delays at once (the failures remembered are kept). It
// reports the [pop3] keys that changed; the listen addresses and the
// connection limits are fixed at start and need a restart. On error
// nothing changes.
func (s *Server) Reload(cfg Config) (confkit.Report, error) {
	st, err := newSettings(cfg)
	if err != nil {
		return confkit.Report{}, err
	}
	old := s.settings.Swap(st)
	s.penalty.SetConfig(penaltyConfig(cfg, s.deps.Now))
	return confkit.NewReport(confkit.Changed("pop3", old.cfg, cfg),
		"pop3.listen", "pop3.listen_tls", "pop3.max_connections", "pop3.max_connections_per_ip"), nil
}

// penaltyConfig is the failed-login penalty of cfg.
func penaltyConfig(cfg Config, now func() time.Time) penalty.Config {
	return penalty.Config{
		Base:   cfg.FailedLoginDelay.D(),
		Max:    cfg.FailedLoginDelayMax.D(),
		Forget: cfg.FailedLoginForget.D(),
		Now:    now,
	}
}

// loginDelayLeft returns how long l must still wait before it may log in
// again (RFC 2449 LOGIN-DELAY), or 0.
func (s *Server) loginDelayLeft(l spool.Login, delay time.Duration) time.Duration {
	if delay <= 0 {
		return 0
	}
	now := s.deps.Now()
	s.loginsMu.Lock()
	defer s.loginsMu.Unlock()
	if last, ok := s.lastLogins[l]; ok && now.Sub(last) < delay {
		return delay - now.Sub(last)
	}
	return 0
}

// recordLogin starts l's LOGIN-DELAY. It runs only once the maildrop is
// open, so that a login refused for another reason ([IN-USE], [SYS/TEMP])
// is not answered with [LOGIN-DELAY] when the client retries.
func (s *Server) recordLogin(l spool.Login, delay time.Duration) {
	if delay <= 0 {
		return
	}
	s.loginsMu.Lock()
	s.lastLogins[l] = s.deps.Now()
	s.loginsMu.Unlock()
}
