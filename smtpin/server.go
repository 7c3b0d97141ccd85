package smtpin

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/metrics"
	"github.com/postie/postie/internal/netserve"
	"github.com/postie/postie/internal/penalty"
	"github.com/postie/postie/smtpin/authcheck"
	"github.com/postie/postie/spool"
)

// Resolver is what the checks need from DNS. *net.Resolver satisfies it,
// and it matches blitiri.com.ar/go/spf's DNSResolver.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// Deps are the parts main hands the server.
type Deps struct {
	// Store is the spool mail is delivered into.
	Store *spool.Store
	// Resolver does every DNS lookup of the checks: the configured
	// resolver, a test's DNS server, or resolver.Offline() in local mode.
	Resolver Resolver
	// TLS is the configuration STARTTLS uses; nil means no STARTTLS.
	TLS *tls.Config
	// TLSReady reports whether a certificate is available. While it is
	// false, sessions are not offered STARTTLS (mail is still accepted).
	// nil means ready whenever TLS is set.
	TLSReady func() bool
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
	// Sample decides whether a DMARC policy with pct=n applies to a
	// message (RFC 7489 §6.6.4); nil means at random, n times in 100.
	Sample func(pct int) bool
	// Metrics counts connections, messages and verdicts; nil counts
	// nothing.
	Metrics *metrics.Metrics
	// NoDNS says that Resolver answers nothing by design ("postie local",
	// with resolver.Offline()): the checks that need DNS are not run, and
	// SPF and DMARC are recorded as none, with the comment "local mode: no
	// DNS lookups", rather than temperror. DKIM signatures, whose keys
	// cannot be fetched, stay temperror.
	NoDNS bool
}

// Server is the inbound MX: it accepts connections, runs SMTP sessions on
// go-smtp, checks and stores the mail. Make it with New.
type Server struct {
	store    *spool.Store
	resolver Resolver
	tls      *tls.Config
	tlsReady func() bool
	log      *slog.Logger
	sample   func(int) bool
	metrics  *metrics.Metrics
	noDNS    bool // Deps.NoDNS

	// base accepts connections on every listener within one set of
	// connection limits, tracks the sessions and runs Shutdown.
	base *netserve.Server
	// ctx is the parent of every check and delivery (base's Context): it
	// is cancelled when Shutdown gives up on the sessions in flight.
	ctx context.Context

	nextID  atomic.Uint64
	copyBuf sync.Pool // *[]byte of copyBufSize
	readers sync.Pool // *bufio.Reader of copyBufSize
	headers sync.Pool // *[]byte header buffers

	reloadMu sync.Mutex // one Reload at a time
	mu       sync.Mutex
	gen      *generation // the configuration new connections get
	// penalty slows down clients that probe for addresses; Reload changes
	// its delays, never its memory of failures.
	penalty *penalty.Table
}

// copyBufSize is the unit the message body is copied in.
const copyBufSize = 32 << 10

// forceGrace is how long Shutdown waits, after ending the sessions still
// running when its context is done, for their goroutines to finish.
const forceGrace = 2 * time.Second

// generation is one configuration and the go-smtp servers that run the
// sessions accepted under it. Reload starts a new generation; sessions
// keep the one they started with.
type generation struct {
	cfg     Config
	greyOK  []netip.Prefix // [smtp.greylist] allow
	router  *router
	plain   *smtp.Server // no STARTTLS
	secure  *smtp.Server // offers STARTTLS
	plainL  *chanListener
	secureL *chanListener
}

// New makes a server. It does not listen: call Serve with each listener.
func New(cfg Config, deps Deps) (*Server, error) {
	if deps.Store == nil || deps.Resolver == nil {
		return nil, errors.New("smtp: a store and a resolver are required")
	}
	if err := checkConfig(&cfg); err != nil {
		return nil, err
	}
	s := &Server{
		store:    deps.Store,
		resolver: deps.Resolver,
		tls:      deps.TLS,
		tlsReady: deps.TLSReady,
		log:      deps.Logger,
		sample:   deps.Sample,
		metrics:  deps.Metrics,
		noDNS:    deps.NoDNS,
		base: netserve.New(netserve.Config{
			Name: "smtp", MaxConnections: cfg.MaxConnections, MaxConnectionsPerIP: cfg.MaxConnectionsPerIP,
			StressAt: netserve.StressAt(cfg.MaxConnections, cfg.StressThreshold),
			OnStress: func(on bool) { deps.Metrics.Stress("smtp", on) },
			Logger:   deps.Logger,
		}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.sample == nil {
		s.sample = func(pct int) bool { return rand.IntN(100) < pct }
	}
	s.ctx = s.base.Context()
	s.copyBuf.New = func() any { b := make([]byte, copyBufSize); return &b }
	s.readers.New = func() any { return bufio.NewReaderSize(nil, copyBufSize) }
	s.headers.New = func() any { b := make([]byte, 0, 16<<10); return &b }
	g, err := s.newGeneration(cfg)
	if err != nil {
		return nil, err
	}
	s.gen = g
	s.penalty = penalty.New(penaltyConfig(cfg))
	return s, nil
}

// checkConfig validates cfg, including the fields main fills in.
func checkConfig(cfg *Config) error {
	err := cfg.Validate()
	if cfg.Hostname == "" {
		err = errors.Join(err, errors.New("smtp: no hostname"))
	}
	if len(cfg.Domains) == 0 {
		err = errors.Join(err, errors.New("smtp: no domains to accept mail for"))
	}
	return err
}

func penaltyConfig(cfg Config) penalty.Config {
	return penalty.Config{Base: cfg.UnknownRecipientDelay.D(), Max: cfg.UnknownRecipientDelayMax.D()}
}

func (s *Server) newGeneration(cfg Config) (*generation, error) {
	r, err := newRouter(cfg)
	if err != nil {
		return nil, err
	}
	g := &generation{cfg: cfg, router: r, plainL: newChanListener(fanInAddr{}), secureL: newChanListener(fanInAddr{})}
	for _, n := range cfg.Greylist.Allow {
		if p, err := netip.ParsePrefix(n); err == nil {
			g.greyOK = append(g.greyOK, p.Masked())
		} else if a, err := netip.ParseAddr(n); err == nil {
			g.greyOK = append(g.greyOK, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		}
	}
	be := &backend{s: s, g: g}
	g.plain = s.newSMTPServer(cfg, be, nil)
	g.secure = s.newSMTPServer(cfg, be, s.tls)
	go g.plain.Serve(g.plainL)
	go g.secure.Serve(g.secureL)
	return g, nil
}

// newSMTPServer sets every limit of go-smtp, whose defaults are off (no
// size, line or recipient limit, no timeouts). ReadTimeout must not be 0:
// conn counts commands by the deadline go-smtp sets before each one
// (docs/go-smtp.md).
func (s *Server) newSMTPServer(cfg Config, be smtp.Backend, tc *tls.Config) *smtp.Server {
	srv := smtp.NewServer(be)
	srv.Domain = cfg.Hostname
	srv.TLSConfig = tc
	srv.MaxMessageBytes = cfg.MaxMessageSize.Bytes()
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = int(cfg.MaxLineLength.Bytes())
	srv.ReadTimeout = cfg.ReadTimeout.D()
	srv.WriteTimeout = cfg.WriteTimeout.D()
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = libraryLog{s.log}
	return srv
}

// Serve accepts connections on l until Shutdown (then it returns nil) or
// until l fails. Main may call it for several listeners; the connection
// limits are shared.
func (s *Server) Serve(l net.Listener) error {
	return s.base.Serve(l, s.reject, s.accepted)
}

// accepted takes a connection within the limits: it is screened against
// the DNS blocklists, if any, and handed to a session.
func (s *Server) accepted(c net.Conn) {
	cfg := s.current().cfg
	if len(cfg.DNSBL) > 0 {
		go s.screen(c, cfg.DNSBL, cfg.DNSBLTimeout.D(), cfg.Hostname)
		return
	}
	s.handoff(c)
}

// reject answers a connection over a limit (connlimit runs it in its own
// goroutine) and logs it with the client address, for fail2ban.
func (s *Server) reject(c net.Conn, perClient bool) {
	cfg := s.current().cfg
	c.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout.D()))
	limit := "max_connections"
	text := "Too many connections, please try again later"
	if perClient {
		limit = "max_connections_per_ip"
		text = "Too many connections from your address, please try again later"
	}
	io.WriteString(c, closing(cfg.Hostname, reply(421, 4, 7, 0, text)))
	s.log.Info("connection refused", "remote", netserve.RemoteIP(c).String(), "limit", limit)
	s.metrics.SMTPConnection("refused")
}

// handoff wraps an accepted connection and gives it to the go-smtp server
// of the current generation that offers STARTTLS when a certificate is
// ready, or to the one that does not.
func (s *Server) handoff(raw net.Conn) {
	s.mu.Lock()
	g := s.gen
	id := s.nextID.Add(1)
	c := newConn(raw, g, s.log.With("conn", id, "remote", netserve.RemoteIP(raw).String()), s.closed, s.base.Stressed)
	if !s.base.Track(c) {
		s.mu.Unlock()
		c.sessionTimer.Stop()
		raw.Close()
		return
	}
	l := g.plainL
	if s.offerTLS() {
		l = g.secureL
	}
	c.log.Debug("connection accepted", "starttls", l == g.secureL)
	s.metrics.SMTPConnection("accepted")
	// Pushed under s.mu, so that Reload and Shutdown cannot close l
	// meanwhile; go-smtp's accept loop takes it at once.
	pushed := l.push(c)
	s.mu.Unlock()
	if !pushed {
		c.Close()
	}
}

// offerTLS reports whether new sessions are offered STARTTLS.
func (s *Server) offerTLS() bool {
	if s.tls == nil {
		return false
	}
	return s.tlsReady == nil || s.tlsReady()
}

// closed forgets a connection that go-smtp has closed.
func (s *Server) closed(c *conn) {
	s.base.Done(c)
	if ended, why := c.isEnded(); ended {
		c.log.Info("session ended by the server", "reason", why)
	}
	c.log.Debug("connection closed")
}

func (s *Server) current() *generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// Shutdown stops accepting connections and lets the sessions in flight
// finish: a session waiting for a command ends at once, the others at
// their next command, each with "421 4.3.2". When ctx is done first, the
// remaining sessions are ended as they are (a message not yet stored is
// not stored; the sender retries) and Shutdown returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.base.Shutdown(ctx, forceGrace)
	// Every session has ended (or been given up on): the go-smtp servers
	// of the current generation take no more connections.
	s.mu.Lock()
	g := s.gen
	g.plainL.Close()
	g.secureL.Close()
	s.mu.Unlock()
	return err
}

// Reload applies cfg to sessions that start from now on: domains, aliases,
// the separator, the postmaster, limits, timeouts, the unknown-recipient
// delays and the check policy. Sessions in flight keep the configuration
// they started with. It reports the [smtp] keys that changed; the listen
// addresses and the connection limits are fixed at start and need a
// restart. On error nothing changes.
func (s *Server) Reload(cfg Config) (confkit.Report, error) {
	if err := checkConfig(&cfg); err != nil {
		return confkit.Report{}, err
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.base.Closing() {
		return confkit.Report{}, errors.New("smtp: reload during shutdown")
	}
	old := s.current()
	g, err := s.newGeneration(cfg)
	if err != nil {
		return confkit.Report{}, err
	}
	s.mu.Lock()
	s.gen = g
	s.mu.Unlock()
	s.penalty.SetConfig(penaltyConfig(cfg))
	// The old generation takes no new connections; its sessions go on.
	old.plainL.Close()
	old.secureL.Close()
	return confkit.NewReport(confkit.Changed("smtp", old.cfg, cfg),
		"smtp.listen", "smtp.max_connections", "smtp.max_connections_per_ip"), nil
}

// libraryLog passes go-smtp's error log to slog. go-smtp recovers from a
// panic in a session and logs it with the stack: one in this module's
// code is logged at Error. go-smtp (v0.25.1 to v0.26.0) has a race of its own, a BDAT
// transfer whose goroutine starts after the connection closed calls Data
// on a nil session (conn.go, handleBdat), which is harmless and logged at
// Warn. Connections that failed are logged at Debug.
type libraryLog struct{ log *slog.Logger }

func (l libraryLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l libraryLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }
func (l libraryLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		if strings.Contains(msg, "github.com/postie/postie/") {
			l.log.Error("smtp session panicked", "detail", msg)
		} else {
			l.log.Warn("smtp library recovered from a panic of its own", "detail", msg)
		}
		return
	}
	l.log.Debug("smtp library", "detail", msg)
}

// A Resolver is what authcheck needs.
var _ authcheck.Resolver = Resolver(nil)

// Postmaster returns the account that postmaster mail goes to when no alias
// or account of that name exists in a domain: Config.Postmaster, or else
// the first account in address order. Main logs it at start.
func (s *Server) Postmaster() (string, error) {
	return postmasterAccount(s.current().router.postmaster, s.store)
}

// DescribePostmaster says, for the owner, where postmaster mail goes under
// cfg, domain by domain ("postie check" prints it).
func DescribePostmaster(cfg Config) []string {
	var out []string
	for _, d := range cfg.Domains {
		addr := "postmaster@" + d
		var alias []string
		for from, targets := range cfg.Aliases {
			if strings.EqualFold(from, addr) {
				alias = targets
			}
		}
		switch {
		case len(alias) > 0:
			out = append(out, fmt.Sprintf("%s -> %s (the alias)", addr, strings.Join(alias, ", ")))
		case cfg.Postmaster != "":
			out = append(out, fmt.Sprintf("%s -> %s (the postmaster key), unless an account %s exists", addr, cfg.Postmaster, addr))
		default:
			out = append(out, fmt.Sprintf("%s -> the first account in address order (set postmaster to choose), unless an account %s exists", addr, addr))
		}
	}
	return out
}

// greyAllowed reports whether a client is in [smtp.greylist] allow.
func (g *generation) greyAllowed(ip netip.Addr) bool {
	for _, p := range g.greyOK {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
