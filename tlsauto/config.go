package tlsauto

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/units"
)

// The modes of the [tls] table.
const (
	ModeACME       = "acme"        // certificates from an ACME CA (Let's Encrypt by default)
	ModeFiles      = "files"       // a certificate and key the owner manages, reloaded when they change
	ModeSelfSigned = "self-signed" // made once and kept in the data directory
)

// The MTA-STS policy modes (RFC 8461 §5). An empty mode turns MTA-STS off:
// nothing is served and no certificate is requested for mta-sts.<domain>.
const (
	MTASTSOff     = ""
	MTASTSNone    = "none"    // tells senders to forget an earlier policy (RFC 8461 §8.3)
	MTASTSTesting = "testing" // senders report failures but still deliver
	MTASTSEnforce = "enforce" // senders refuse to deliver without valid TLS to hostname
)

// The ACME directories of Let's Encrypt.
const (
	LetsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging    = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// mtaSTSMaxAgeLimit is the largest max_age RFC 8461 §3.2 allows (about one
// year, in seconds).
const mtaSTSMaxAgeLimit = 31557600 * time.Second

// Config is the owner's [tls] table plus the fields main fills in from the
// top-level keys. DefaultConfig gives every key its default.
//
//	[tls]
//	mode        = "acme"   # or "files", "self-signed"
//	agree_terms = true     # to the CA's subscriber agreement; required in acme mode
//	acme_email  = "you@example.com"
//	mta_sts_mode = "testing"
type Config struct {
	// Mode is "acme" (the default), "files" or "self-signed".
	Mode string `toml:"mode"`

	// CertFile and KeyFile are PEM files (the certificate chain, leaf
	// first, and its private key) used in files mode. They are checked
	// every few seconds and reloaded when they change, without a restart;
	// a pair that does not load keeps the previous one in service.
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`

	// ACMEDirectory is the CA's ACME directory URL (RFC 8555 §7.1.1).
	ACMEDirectory string `toml:"acme_directory"`
	// ACMEStaging switches to Let's Encrypt's staging directory, whose
	// certificates are not trusted: for trying a setup without spending
	// the production rate limits.
	ACMEStaging bool `toml:"acme_staging"`
	// ACMECARoot is an optional PEM file of CA certificates to trust when
	// talking to the ACME directory (a private CA, or Pebble in tests).
	ACMECARoot string `toml:"acme_ca_root"`
	// ACMEEmail is the contact address of the ACME account (optional).
	ACMEEmail string `toml:"acme_email"`
	// AgreeTerms states agreement to the CA's subscriber agreement. It
	// must be true in acme mode: Postie does not agree on the owner's
	// behalf.
	AgreeTerms bool `toml:"agree_terms"`

	// HTTPListen is where the HTTP server listens: it answers ACME HTTP-01
	// challenges and redirects MTA-STS requests to HTTPS, and nothing else.
	// Empty turns it off (and with it the HTTP-01 challenge). Without ACME,
	// MTA-STS and autoconfig it is not bound.
	HTTPListen string `toml:"http_listen"`
	// HTTPSListen is where the HTTPS server listens: it answers ACME
	// TLS-ALPN-01 challenges, serves the MTA-STS policy and hands other
	// requests to main's web handler. Empty turns it off (and with it the
	// TLS-ALPN-01 challenge and MTA-STS). Without ACME, MTA-STS and
	// autoconfig it is not bound.
	HTTPSListen string `toml:"https_listen"`

	// MTASTSMode is the mode of the MTA-STS policy served for every domain:
	// "" (off, the default), "none", "testing" or "enforce".
	MTASTSMode string `toml:"mta_sts_mode"`
	// MTASTSMaxAge is how long senders may cache the policy (RFC 8461
	// §3.2: at most 31557600 seconds).
	MTASTSMaxAge units.Duration `toml:"mta_sts_max_age"`

	// HTTPReadTimeout bounds reading a request (and the TLS handshake) on
	// the HTTP and HTTPS listeners.
	HTTPReadTimeout units.Duration `toml:"http_read_timeout"`
	// HTTPWriteTimeout bounds writing a response.
	HTTPWriteTimeout units.Duration `toml:"http_write_timeout"`
	// HTTPIdleTimeout is how long a kept-alive connection may wait for its
	// next request.
	HTTPIdleTimeout units.Duration `toml:"http_idle_timeout"`
	// HTTPMaxHeaderBytes caps the size of request headers.
	HTTPMaxHeaderBytes units.Size `toml:"http_max_header_bytes"`
	// HTTPMaxConnections caps the open connections of each of the two
	// listeners, and HTTPMaxConnectionsPerIP those from one client address
	// (an IPv6 /64 counts as one).
	HTTPMaxConnections      int `toml:"http_max_connections"`
	HTTPMaxConnectionsPerIP int `toml:"http_max_connections_per_ip"`

	// Hostname is the MX host name: the certificate every mail port
	// serves, also to clients that send no SNI. Main fills it in.
	Hostname string `toml:"-"`
	// Domains are the mail domains; with MTA-STS on, each gets a policy
	// and a certificate for mta-sts.<domain>. Main fills them in.
	Domains []string `toml:"-"`
	// DataDir is the data directory: certificates, ACME account keys and
	// locks are kept in DataDir/certificates, the self-signed pair in
	// DataDir/self-signed. Main fills it in.
	DataDir string `toml:"-"`
	// ExtraNames are more host names to get certificates for and to serve
	// on HTTPS (for example autoconfig.<domain>). Main fills them in.
	ExtraNames []string `toml:"-"`
}

// DefaultConfig returns the [tls] table with every default set: ACME with
// Let's Encrypt, challenges on ports 80 and 443, MTA-STS off.
func DefaultConfig() Config {
	return Config{
		Mode:                    ModeACME,
		ACMEDirectory:           LetsEncryptProduction,
		HTTPListen:              ":80",
		HTTPSListen:             ":443",
		MTASTSMaxAge:            units.DurationOf(7 * 24 * time.Hour),
		HTTPReadTimeout:         units.DurationOf(10 * time.Second),
		HTTPWriteTimeout:        units.DurationOf(10 * time.Second),
		HTTPIdleTimeout:         units.DurationOf(60 * time.Second),
		HTTPMaxHeaderBytes:      8 << 10,
		HTTPMaxConnections:      256,
		HTTPMaxConnectionsPerIP: 16,
	}
}

// Validate checks the table and returns every problem it finds, joined,
// each naming its key ("tls.agree_terms: ...").
func (c *Config) Validate() error {
	p := confkit.Check("tls")

	switch c.Mode {
	case ModeACME:
		if !c.AgreeTerms {
			p.Addf("agree_terms", "must be true in acme mode: read the CA's subscriber agreement (Let's Encrypt: https://letsencrypt.org/repository/) and set agree_terms = true, or use mode = \"files\"")
		}
		if err := checkDirectoryURL(c.ACMEDirectory); err != nil {
			p.Addf("acme_directory", "%v", err)
		}
		if c.ACMEStaging && c.ACMEDirectory != LetsEncryptProduction && c.ACMEDirectory != LetsEncryptStaging {
			p.Addf("acme_staging", "only switches Let's Encrypt to its staging directory; for another CA, set tls.acme_directory to its staging URL instead")
		}
		if c.HTTPListen == "" && c.HTTPSListen == "" {
			p.Addf("http_listen, tls.https_listen", "both are off, so no ACME challenge can be answered: turn one on (port 80 for HTTP-01 or 443 for TLS-ALPN-01 must reach this server)")
		}
		if c.Hostname != "" && !publicName(c.Hostname) {
			p.Addf("mode", "acme cannot get a certificate for %q, which is not a public DNS name; use mode = \"self-signed\" or \"files\"", c.Hostname)
		}
		for _, n := range c.ExtraNames {
			if !publicName(n) {
				p.Join(fmt.Errorf("tls: extra name %q is not a public DNS name, so no CA can issue a certificate for it", n))
			}
		}
	case ModeFiles:
		if c.CertFile == "" {
			p.Addf("cert_file", "missing: the PEM certificate chain to serve in files mode")
		}
		if c.KeyFile == "" {
			p.Addf("key_file", "missing: the PEM private key of tls.cert_file")
		}
	case ModeSelfSigned:
	default:
		p.Addf("mode", "%q: want \"acme\", \"files\" or \"self-signed\"", c.Mode)
	}
	if c.Mode != ModeFiles && (c.CertFile != "" || c.KeyFile != "") {
		p.Addf("cert_file, tls.key_file", "only used with mode = \"files\" (mode is %q)", c.Mode)
	}
	if c.ACMEEmail != "" {
		if at := strings.LastIndexByte(c.ACMEEmail, '@'); at <= 0 || at == len(c.ACMEEmail)-1 || strings.ContainsAny(c.ACMEEmail, " \t<>\"") {
			p.Addf("acme_email", "%q is not an email address", c.ACMEEmail)
		}
	}
	for _, l := range []struct{ key, addr string }{{"http_listen", c.HTTPListen}, {"https_listen", c.HTTPSListen}} {
		if l.addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(l.addr); err != nil || port == "" {
			p.Addf(l.key, "%q: want host:port, e.g. \":80\" or \"192.0.2.1:443\"", l.addr)
		}
	}

	switch c.MTASTSMode {
	case MTASTSOff:
	case MTASTSNone, MTASTSTesting, MTASTSEnforce:
		if c.HTTPSListen == "" {
			p.Addf("mta_sts_mode", "senders fetch the policy from https://mta-sts.<domain>/ on port 443, but tls.https_listen is off")
		}
		if c.Mode == ModeSelfSigned {
			p.Addf("mta_sts_mode", "senders only accept the policy over HTTPS with a trusted certificate, which mode = \"self-signed\" does not have")
		}
		if len(c.Domains) == 0 {
			p.Addf("mta_sts_mode", "no domains to publish a policy for")
		}
	default:
		p.Addf("mta_sts_mode", "%q: want \"\" (off), \"none\", \"testing\" or \"enforce\"", c.MTASTSMode)
	}
	if d := c.MTASTSMaxAge.D(); d < time.Second || d > mtaSTSMaxAgeLimit || d%time.Second != 0 {
		p.Addf("mta_sts_max_age", "%s: want whole seconds between 1s and %s (RFC 8461 §3.2), e.g. \"168h\"", c.MTASTSMaxAge, mtaSTSMaxAgeLimit)
	}

	for _, d := range []struct {
		key string
		v   units.Duration
	}{{"http_read_timeout", c.HTTPReadTimeout}, {"http_write_timeout", c.HTTPWriteTimeout}, {"http_idle_timeout", c.HTTPIdleTimeout}} {
		if d.v.D() <= 0 {
			p.Addf(d.key, "must be more than zero, e.g. \"10s\"")
		}
	}
	if c.HTTPMaxHeaderBytes < 1024 || c.HTTPMaxHeaderBytes > 1<<20 {
		p.Addf("http_max_header_bytes", "%s: want between 1KiB and 1MiB", c.HTTPMaxHeaderBytes)
	}
	if c.HTTPMaxConnections < 1 {
		p.Addf("http_max_connections", "must be at least 1")
	}
	if c.HTTPMaxConnectionsPerIP < 1 {
		p.Addf("http_max_connections_per_ip", "must be at least 1")
	} else if c.HTTPMaxConnectionsPerIP > c.HTTPMaxConnections && c.HTTPMaxConnections >= 1 {
		p.Addf("http_max_connections_per_ip", "%d is more than tls.http_max_connections (%d)", c.HTTPMaxConnectionsPerIP, c.HTTPMaxConnections)
	}

	if c.Hostname == "" {
		p.Join(fmt.Errorf("tls: no hostname: the certificate's name (main copies the top-level hostname here)"))
	}
	if c.DataDir == "" {
		p.Join(fmt.Errorf("tls: no data directory (main copies the top-level data_dir here)"))
	}
	return p.Err()
}

// directory returns the ACME directory URL in effect.
func (c *Config) directory() string {
	if c.ACMEStaging && c.ACMEDirectory == LetsEncryptProduction {
		return LetsEncryptStaging
	}
	return c.ACMEDirectory
}

// mtaSTSOn reports whether an MTA-STS policy is published.
func (c *Config) mtaSTSOn() bool { return c.MTASTSMode != MTASTSOff }

// mtaSTSHosts returns mta-sts.<domain> for every domain when MTA-STS is on
// (RFC 8461 §3.3: the policy host).
func (c *Config) mtaSTSHosts() []string {
	if !c.mtaSTSOn() {
		return nil
	}
	hosts := make([]string, 0, len(c.Domains))
	for _, d := range c.Domains {
		hosts = append(hosts, "mta-sts."+normalName(d))
	}
	return hosts
}

// certNames returns every name that needs a certificate, the host name
// first, without duplicates.
func (c *Config) certNames() []string {
	names := []string{normalName(c.Hostname)}
	for _, n := range append(c.mtaSTSHosts(), c.ExtraNames...) {
		if n = normalName(n); n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// normalName lower-cases a host name and drops a trailing dot.
func normalName(s string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
}

// publicName reports whether a public CA could issue a certificate for
// name: a DNS name with at least two labels, not an IP address, not
// localhost and not a name reserved for private networks.
func publicName(name string) bool {
	name = normalName(name)
	if name == "" || net.ParseIP(name) != nil || !strings.Contains(name, ".") {
		return false
	}
	for _, private := range []string{"localhost", "local", "internal", "home.arpa", "lan"} {
		if name == private || strings.HasSuffix(name, "."+private) {
			return false
		}
	}
	return true
}

func checkDirectoryURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not a URL, e.g. %q", s, LetsEncryptProduction)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%q: the directory must be an https:// URL (RFC 8555 §6.1)", s)
	}
	return nil
}
