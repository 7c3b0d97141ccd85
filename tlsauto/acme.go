package tlsauto

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
)

// acmeSource gets and renews certificates from an ACME CA with certmagic,
// on a certmagic Config and Cache of its own (never certmagic's package
// defaults), with file storage under the data directory.
//
// Issuance runs in the background: Start loads what storage already has
// (no network), and one goroutine per missing name asks the CA, again and
// again with back-off until it succeeds, so neither start-up nor a mail
// port ever waits for the CA. Renewal is certmagic's maintenance loop.
// There is no on-demand issuance: a handshake never starts an order.
type acmeSource struct {
	cfg      Config
	log      *slog.Logger
	hostname string
	names    []string
	roots    *x509.CertPool
	retry    []time.Duration
	resolver *net.Resolver

	cache  *certmagic.Cache
	magic  *certmagic.Config
	issuer *certmagic.ACMEIssuer // set by start, before anything reads it

	// last remembers the host certificate handed out last, so that a
	// handshake reuses its pointer until certmagic's cache changes.
	last atomic.Pointer[cachedCert]

	wg sync.WaitGroup
}

// cachedCert is a certificate from certmagic's cache with its hash.
type cachedCert struct {
	hash string
	cert *tls.Certificate
}

// defaultRetry is the back-off between attempts to obtain a certificate:
// quick at first (a DNS record that was just published), then no more
// often than every six hours, forever (certmagic's own schedule gives up
// after 30 days). Retries after the first attempt go through Let's
// Encrypt's staging CA first (certmagic does this), so failures do not
// spend the production rate limits (5 failed validations per name per
// hour).
var defaultRetry = []time.Duration{
	time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 4 * time.Hour, 6 * time.Hour,
}

func newACMESource(cfg Config, deps Deps, log *slog.Logger) (*acmeSource, error) {
	a := &acmeSource{
		cfg:      cfg,
		log:      log,
		hostname: normalName(cfg.Hostname),
		names:    cfg.certNames(),
		retry:    deps.RetryIntervals,
		resolver: deps.Resolver,
	}
	if len(a.retry) == 0 {
		a.retry = defaultRetry
	}
	if a.resolver == nil {
		a.resolver = net.DefaultResolver
	}
	if cfg.ACMECARoot != "" {
		pem, err := os.ReadFile(cfg.ACMECARoot)
		if err != nil {
			return nil, fmt.Errorf("tls.acme_ca_root: %w", err)
		}
		a.roots = x509.NewCertPool()
		if !a.roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.acme_ca_root: %s holds no PEM certificate", cfg.ACMECARoot)
		}
	}
	dir := filepath.Join(cfg.DataDir, "certificates")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls: certificate storage: %w", err)
	}

	zl := newZapLogger(log)
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return a.magic, nil },
		RenewCheckInterval: deps.RenewCheckInterval,
		Logger:             zl,
	})
	a.magic = certmagic.New(a.cache, certmagic.Config{
		RenewalWindowRatio: deps.RenewalWindowRatio,
		// Postfix and most MTAs send no SNI (RFC 6066 §3 makes it optional).
		DefaultServerName: a.hostname,
		// Let's Encrypt has ended OCSP; stapling would only add fetches.
		OCSP:    certmagic.OCSPConfig{DisableStapling: true},
		Storage: &certmagic.FileStorage{Path: dir},
		Logger:  zl,
		// Not nil, so that certmagic's package-level defaults stay out.
		Issuers: []certmagic.Issuer{},
	})
	return a, nil
}

// acmeTLS1 is the ALPN protocol of TLS-ALPN-01 challenges (RFC 8737 §6.2).
const acmeTLS1 = "acme-tls/1"

// prepare makes the issuer, now that the challenge listeners' addresses
// are known (nil when off).
func (a *acmeSource) prepare(httpAddr, httpsAddr net.Addr) {
	tmpl := certmagic.ACMEIssuer{
		CA:                      a.cfg.directory(),
		Email:                   a.cfg.ACMEEmail,
		Agreed:                  a.cfg.AgreeTerms,
		DisableHTTPChallenge:    httpAddr == nil,
		DisableTLSALPNChallenge: httpsAddr == nil,
		TrustedRoots:            a.roots,
		Logger:                  a.magic.Logger,
	}
	// certmagic's solvers first try to bind the challenge port themselves;
	// pointing them at our own listeners makes them find it taken (by us)
	// and leave the answering to our servers.
	var httpHost, httpsHost string
	if httpAddr != nil {
		httpHost, tmpl.AltHTTPPort = solverHostPort(httpAddr)
		tmpl.ListenHost = httpHost
	}
	if httpsAddr != nil {
		httpsHost, tmpl.AltTLSALPNPort = solverHostPort(httpsAddr)
		tmpl.ListenHost = httpsHost
	}
	if httpAddr != nil && httpsAddr != nil && httpHost != httpsHost {
		tmpl.ListenHost = "" // one host for both solvers: all addresses
	}
	a.issuer = certmagic.NewACMEIssuer(a.magic, tmpl)
	var iss certmagic.Issuer = a.issuer
	if a.cfg.ACMEEmail == "" {
		iss = quietIssuer{a.issuer}
	}
	a.magic.Issuers = []certmagic.Issuer{iss}
}

// start loads the certificates storage already has (no network), and
// starts obtaining the others in the background.
func (a *acmeSource) start(ctx context.Context) {
	var missing []string
	for _, name := range a.names {
		c, err := a.magic.CacheManagedCertificate(ctx, name)
		switch {
		case err == nil:
			a.log.Info("certificate loaded from storage", "name", name, "expires", c.Leaf.NotAfter, "issuer", c.Leaf.Issuer.CommonName)
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, name)
		default:
			// A damaged file (a full disk, a bad restore) would block
			// certmagic for good: it obtains only when nothing is stored.
			moved := a.setAside(ctx, name)
			a.log.Error("stored certificate unusable; set aside, asking the CA for a new one", "name", name, "err", err, "moved", moved)
			missing = append(missing, name)
		}
	}
	if len(missing) < len(a.names) {
		// A stored certificate may be due for renewal: check now rather
		// than at the first maintenance tick.
		a.wg.Go(func() {
			if err := a.cache.RenewManagedCertificates(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("checking stored certificates for renewal", "err", err)
			}
		})
	}
	for _, name := range missing {
		a.wg.Go(func() { a.obtain(ctx, name) })
	}
}

// setAside moves the stored certificate, key and metadata of name to
// "<file>.unusable" so that a new certificate can be obtained, and returns
// the keys it moved.
func (a *acmeSource) setAside(ctx context.Context, name string) []string {
	st, ik := a.magic.Storage, a.issuer.IssuerKey()
	var moved []string
	for _, key := range []string{certmagic.StorageKeys.SiteCert(ik, name), certmagic.StorageKeys.SitePrivateKey(ik, name), certmagic.StorageKeys.SiteMeta(ik, name)} {
		b, err := st.Load(ctx, key)
		if err != nil {
			continue
		}
		if err := st.Store(ctx, key+".unusable", b); err != nil {
			a.log.Error("could not set a damaged certificate file aside", "key", key, "err", err)
			continue
		}
		if err := st.Delete(ctx, key); err == nil {
			moved = append(moved, key)
		}
	}
	return moved
}

// obtain asks the CA for a certificate for name until it gets one or ctx
// ends, waiting longer after each failure (a.retry, the last interval
// repeating).
func (a *acmeSource) obtain(ctx context.Context, name string) {
	// certmagic reads the attempt count from the context: a retry goes to
	// the staging CA first when the CA is Let's Encrypt's production one.
	attempts := 0
	actx := context.WithValue(ctx, certmagic.AttemptsCtxKey, &attempts)
	a.log.Info("asking the CA for a certificate", "name", name, "ca", a.cfg.directory())
	for {
		err := a.magic.ManageSync(actx, []string{name})
		if err == nil {
			if name == a.hostname {
				a.log.Info("certificate ready: TLS is now offered on the mail ports", "name", name)
			} else {
				a.log.Info("certificate ready", "name", name)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		wait := a.retry[min(attempts, len(a.retry)-1)]
		attempts++
		a.log.Error("could not get a certificate; will retry", "name", name, "attempt", attempts, "retry_in", wait,
			"err", err, "fix", a.diagnose(ctx, name, err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// host returns the newest valid certificate for the host name in
// certmagic's cache, or nil.
func (a *acmeSource) host() *tls.Certificate {
	now := time.Now()
	var best certmagic.Certificate
	for _, c := range a.cache.AllMatchingCertificates(a.hostname) {
		if !usable(&c.Certificate, now) {
			continue
		}
		if best.Leaf == nil || c.Leaf.NotAfter.After(best.Leaf.NotAfter) {
			best = c
		}
	}
	if best.Leaf == nil {
		return nil
	}
	if last := a.last.Load(); last != nil && last.hash == best.Hash() {
		return last.cert
	}
	cc := &cachedCert{hash: best.Hash(), cert: &best.Certificate}
	a.last.Store(cc)
	return cc.cert
}

// webCertificate answers a handshake on the HTTPS listener: TLS-ALPN-01
// challenges (RFC 8737) and every managed name, the host name's
// certificate without SNI.
func (a *acmeSource) webCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return a.magic.GetCertificate(hello)
}

// handleHTTPChallenge answers an ACME HTTP-01 challenge request (RFC 8555
// §8.3) and reports whether it did.
func (a *acmeSource) handleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	return a.issuer != nil && a.issuer.HandleHTTPChallenge(w, r)
}

func (a *acmeSource) stop() {
	a.wg.Wait()
	a.cache.Stop()
}

// solverHostPort returns the host and port certmagic's challenge solvers
// should try to bind, given one of our listeners: the same port, and the
// same host unless it is the unspecified address (then "", all of them).
func solverHostPort(addr net.Addr) (string, int) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return "", 0
	}
	if ta.IP == nil || ta.IP.IsUnspecified() {
		return "", ta.Port
	}
	return ta.IP.String(), ta.Port
}

// quietIssuer is certmagic's ACMEIssuer with a pre-check that never
// prompts. ManageSync runs "interactively", and an interactive pre-check
// without an email address asks for one on the terminal; a server must
// not, so with no acme_email the account is made without a contact.
type quietIssuer struct {
	*certmagic.ACMEIssuer
}

// PreCheck implements certmagic.PreChecker without prompting.
func (q quietIssuer) PreCheck(ctx context.Context, names []string, _ bool) error {
	return q.ACMEIssuer.PreCheck(ctx, names, false)
}
