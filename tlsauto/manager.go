package tlsauto

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/postie/postie/internal/connlimit"
)

// errNoCertificate fails a handshake while there is no certificate yet.
var errNoCertificate = errors.New("tlsauto: no certificate for the host name yet")

// Deps are what main hands the Manager besides the config, and the
// options tests use to change its behaviour. Only Logger is required.
type Deps struct {
	// Logger receives the Manager's log, certmagic's included.
	Logger *slog.Logger
	// Web, if not nil, answers the HTTPS requests that are not for an
	// MTA-STS policy (autoconfig, for example).
	Web http.Handler
	// Resolver looks up the host name when a validation fails, to say in
	// the log where it points. Nil means the system's resolver.
	Resolver *net.Resolver

	// HTTPListener and HTTPSListener, if not nil, are open listeners to
	// serve on instead of binding tls.http_listen and tls.https_listen
	// (which must still be set: they say the server is on). Socket
	// activation or a test can use them. The Manager closes them.
	HTTPListener, HTTPSListener net.Listener

	// RetryIntervals are the waits after each failed attempt to obtain a
	// certificate, the last repeating. Empty: one minute growing to six
	// hours.
	RetryIntervals []time.Duration
	// RenewCheckInterval is how often certmagic checks whether a
	// certificate needs renewing. Zero: certmagic's default (10 minutes).
	RenewCheckInterval time.Duration
	// RenewalWindowRatio is the part of a certificate's lifetime, at its
	// end, in which it is renewed. Zero: certmagic's default (1/3).
	RenewalWindowRatio float64
	// FileCheckInterval is how often files mode looks at the files. Zero:
	// 5 seconds.
	FileCheckInterval time.Duration
}

// source is where the certificates of one mode come from.
type source interface {
	// host returns the live certificate for the host name, or nil when
	// none is valid now.
	host() *tls.Certificate
	// webCertificate answers a handshake on the HTTPS listener.
	webCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// Manager provides the certificates of every TLS listener Postie runs and
// keeps them current, and runs the HTTP and HTTPS listeners that answer
// ACME challenges and serve MTA-STS policies.
type Manager struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	src    source
	acme   *acmeSource // nil unless acme mode
	policy []byte      // the MTA-STS policy, nil when off
	hosts  map[string]bool
	mail   *tls.Config

	mu        sync.Mutex
	started   bool
	closed    bool
	cancel    context.CancelFunc
	servers   []*http.Server
	httpAddr  net.Addr // nil when off
	httpsAddr net.Addr // nil when off
	httpsPort string   // for redirects; "" when 443
	wg        sync.WaitGroup
}

// New makes a Manager for a validated config. It does no network I/O: in
// files mode it loads the pair (an error if it does not load), in
// self-signed mode it loads or makes the certificate, in acme mode it
// prepares certmagic. Close releases what New took, even without Start.
func New(cfg Config, deps Deps) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		return nil, errors.New("tlsauto: Deps.Logger is required")
	}
	m := &Manager{
		cfg:    cfg,
		deps:   deps,
		log:    deps.Logger,
		policy: cfg.MTASTSPolicy(),
		hosts:  map[string]bool{},
	}
	for _, n := range cfg.certNames() {
		m.hosts[n] = true
	}
	var err error
	switch cfg.Mode {
	case ModeACME:
		m.acme, err = newACMESource(cfg, deps, m.log)
		m.src = m.acme
	case ModeFiles:
		m.src, err = newFilesSource(cfg, deps, m.log)
	case ModeSelfSigned:
		m.src, err = newSelfSignedSource(cfg, m.log)
	}
	if err != nil {
		return nil, err
	}
	m.mail = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   modernCipherSuites,
		GetCertificate: m.mailCertificate,
		// ALPACA (USENIX Security 2021): a client offering only HTTP (or
		// acme-tls/1) protocols is refused; clients without ALPN, which
		// is every mail client seen, are not affected.
		NextProtos: []string{"smtp", "pop3"},
	}
	return m, nil
}

// modernCipherSuites are the TLS 1.2 suites offered: ECDHE key exchange
// with AEAD ciphers only (TLS 1.3 suites are not configurable in Go and
// are all modern).
var modernCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Start binds the HTTP and HTTPS listeners when something needs them
// (webNeeded; an error if one cannot be bound), starts serving them, and starts the background work: obtaining
// and renewing certificates in acme mode, watching the files in files
// mode. It never waits for the CA and returns at once. The background
// work stops when ctx ends or at Close.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("tlsauto: Start after Close")
	}
	if m.started {
		return errors.New("tlsauto: Start called twice")
	}
	needHTTP, needHTTPS := m.webNeeded()
	httpLn, err := m.listen("tls.http_listen", m.cfg.HTTPListen, m.deps.HTTPListener, needHTTP)
	if err != nil {
		return err
	}
	httpsLn, err := m.listen("tls.https_listen", m.cfg.HTTPSListen, m.deps.HTTPSListener, needHTTPS)
	if err != nil {
		if httpLn != nil {
			httpLn.Close()
		}
		return err
	}
	m.started = true
	ctx, m.cancel = context.WithCancel(ctx)

	if httpLn != nil {
		m.httpAddr = httpLn.Addr()
	}
	if httpsLn != nil {
		m.httpsAddr = httpsLn.Addr()
		if _, port, _ := net.SplitHostPort(m.httpsAddr.String()); port != "443" {
			m.httpsPort = port
		}
	}
	if m.acme != nil {
		// Before serving: the HTTP handler answers challenges through
		// the issuer this makes.
		m.acme.prepare(m.httpAddr, m.httpsAddr)
	}
	if httpLn != nil {
		m.serve(httpLn, m.newServer(http.HandlerFunc(m.serveHTTP)), "http")
	}
	if httpsLn != nil {
		web := &tls.Config{
			MinVersion:     tls.VersionTLS12,
			CipherSuites:   modernCipherSuites,
			GetCertificate: m.src.webCertificate,
			NextProtos:     []string{"http/1.1"},
		}
		if m.acme != nil {
			web.NextProtos = append(web.NextProtos, acmeTLS1)
		}
		m.serve(tls.NewListener(httpsLn, web), m.newServer(http.HandlerFunc(m.serveHTTPS)), "https")
	}

	switch src := m.src.(type) {
	case *acmeSource:
		src.start(ctx)
	case *filesSource:
		m.wg.Go(func() { src.watch(ctx) })
	case *selfSignedSource:
		m.wg.Go(func() { src.watch(ctx) })
	}
	return nil
}

// webNeeded reports whether the HTTP and HTTPS listeners have something
// to serve: ACME challenges (acme mode), an MTA-STS policy, or Deps.Web
// (autoconfig); HTTP redirects those names' pages to HTTPS. In files and
// self-signed mode without MTA-STS and autoconfig, neither is bound, and
// ports 80 and 443 stay free for a web server.
func (m *Manager) webNeeded() (http, https bool) {
	on := m.acme != nil || m.policy != nil || m.deps.Web != nil
	return on, on
}

// listen returns the listener for one of the two HTTP servers: given, or
// bound at addr, or nil when addr is "" (off) or when nothing needs it.
func (m *Manager) listen(key, addr string, given net.Listener, needed bool) (net.Listener, error) {
	if addr == "" || !needed {
		if given != nil {
			given.Close()
		}
		if addr != "" {
			m.log.Info("not listening: nothing to serve there (no ACME challenges, MTA-STS policy or autoconfig)", "service", key[len("tls."):len(key)-len("_listen")], "addr", addr)
		}
		return nil, nil
	}
	l := given
	if l == nil {
		var err error
		if l, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("%s: %w (ports below 1024 need root or CAP_NET_BIND_SERVICE; set it to \"\" to turn this listener off)", key, err)
		}
	}
	m.log.Info("listening", "service", key[len("tls."):len(key)-len("_listen")], "addr", l.Addr().String())
	return connlimit.New(l, m.cfg.HTTPMaxConnections, m.cfg.HTTPMaxConnectionsPerIP, nil), nil
}

// serve runs srv on l in the background until Close.
func (m *Manager) serve(l net.Listener, srv *http.Server, what string) {
	m.servers = append(m.servers, srv)
	m.wg.Go(func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("listener stopped", "service", what, "err", err)
		}
	})
}

// TLSConfig returns the TLS configuration for every mail listener (SMTP
// STARTTLS, POP3 STLS, POP3S): TLS 1.2 or newer, ECDHE with AEAD suites,
// and on each handshake the live certificate for the host name, whatever
// the SNI (also none, as Postfix sends), so a renewed certificate is
// served without a restart. Until there is one, handshakes fail (see
// Ready). Each call returns a new copy sharing the same certificates.
func (m *Manager) TLSConfig() *tls.Config {
	return m.mail.Clone()
}

// mailCertificate serves the host name's certificate on the mail ports.
// It ignores the SNI on purpose: the mail ports answer to the host name
// only, so another name's certificate (mta-sts.<domain>, autoconfig) is
// never served where a browser could be redirected (ALPACA), and no
// handshake ever starts an order.
func (m *Manager) mailCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := m.src.host(); c != nil {
		return c, nil
	}
	return nil, errNoCertificate
}

// Ready reports whether a valid certificate for the host name is there
// now. Until it is, SMTP should not offer STARTTLS and POP3 not STLS.
func (m *Manager) Ready() bool {
	return m.src.host() != nil
}

// Certificate returns the leaf certificate the mail ports serve now, for
// "postie check" and metrics (its expiry), and whether there is one.
func (m *Manager) Certificate() (*x509.Certificate, bool) {
	c := m.src.host()
	if c == nil {
		return nil, false
	}
	return c.Leaf, true
}

// HTTPAddr returns the address the HTTP listener is bound to, or nil
// when it is off or not started.
func (m *Manager) HTTPAddr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.httpAddr
}

// HTTPSAddr returns the address the HTTPS listener is bound to, or nil
// when it is off or not started.
func (m *Manager) HTTPSAddr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.httpsAddr
}

// Close stops the listeners and the background work, and waits for them.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	if m.cancel != nil {
		m.cancel()
	}
	var errs []error
	for _, srv := range m.servers {
		errs = append(errs, srv.Close())
	}
	m.mu.Unlock()
	m.wg.Wait()
	if m.acme != nil {
		m.acme.stop()
	}
	return errors.Join(errs...)
}
