package tlsauto

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/postie/postie/internal/durable"
)

const (
	// selfSignedLifetime is how long a self-signed certificate is made
	// for: 825 days, the longest Apple's clients accept for a TLS server
	// certificate.
	selfSignedLifetime = 825 * 24 * time.Hour
	// selfSignedRenewBefore is how long before its end a self-signed
	// certificate is replaced.
	selfSignedRenewBefore = 30 * 24 * time.Hour
)

// selfSignedSource serves a self-signed certificate made once and kept in
// DataDir/self-signed (key mode 0600), so clients that were told to trust
// it keep trusting it across restarts. It is made again only when it
// nears its end or no longer names the host. For hostname "localhost" it
// also names 127.0.0.1 and ::1 ("postie local").
type selfSignedSource struct {
	certFile, keyFile string
	names             []string
	ips               []net.IP
	log               *slog.Logger

	cur atomic.Pointer[tls.Certificate]
}

func newSelfSignedSource(cfg Config, log *slog.Logger) (*selfSignedSource, error) {
	dir := filepath.Join(cfg.DataDir, "self-signed")
	s := &selfSignedSource{
		certFile: filepath.Join(dir, "cert.pem"),
		keyFile:  filepath.Join(dir, "key.pem"),
		names:    cfg.certNames(),
		log:      log,
	}
	if s.names[0] == "localhost" {
		s.ips = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls: self-signed certificate: %w", err)
	}
	if err := s.ensure(time.Now()); err != nil {
		return nil, fmt.Errorf("tls: self-signed certificate: %w", err)
	}
	return s, nil
}

// ensure loads the kept certificate, or makes and keeps a new one when
// there is none, it does not load, nears its end or misses a name.
func (s *selfSignedSource) ensure(now time.Time) error {
	c, err := loadKeyPair(s.certFile, s.keyFile, now)
	reason := ""
	switch {
	case errors.Is(err, fs.ErrNotExist):
		reason = "none yet"
	case err != nil:
		reason = err.Error()
	case now.Add(selfSignedRenewBefore).After(c.Leaf.NotAfter):
		reason = "it expires on " + c.Leaf.NotAfter.UTC().Format(time.DateOnly)
	default:
		reason = s.missingName(c.Leaf)
	}
	if reason == "" {
		if s.cur.Load() == nil {
			s.log.Info("self-signed certificate loaded", "file", s.certFile, "sha256", fingerprint(c.Leaf), "expires", c.Leaf.NotAfter)
		}
		s.cur.Store(c)
		return nil
	}
	c, err = s.make(now)
	if err != nil {
		return err
	}
	s.cur.Store(c)
	s.log.Info("made a self-signed certificate", "reason", reason, "file", s.certFile, "names", s.names,
		"sha256", fingerprint(c.Leaf), "expires", c.Leaf.NotAfter)
	return nil
}

func (s *selfSignedSource) missingName(leaf *x509.Certificate) string {
	for _, n := range s.names {
		if leaf.VerifyHostname(n) != nil {
			return "it does not name " + n
		}
	}
	for _, ip := range s.ips {
		if leaf.VerifyHostname(ip.String()) != nil {
			return "it does not name " + ip.String()
		}
	}
	return ""
}

// make creates a key and a certificate and writes them, the key first
// (0600), each atomically.
func (s *selfSignedSource) make(now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: s.names[0], Organization: []string{"Postie (self-signed)"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(selfSignedLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              s.names,
		IPAddresses:           s.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileAtomic(s.keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(s.certFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	return parseKeyPair(certPEM, keyPEM, now)
}

// watch checks once a day whether the certificate needs replacing.
func (s *selfSignedSource) watch(ctx context.Context) {
	t := time.NewTicker(24 * time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.ensure(time.Now()); err != nil {
				s.log.Error("could not replace the self-signed certificate; still serving the old one", "err", err)
			}
		}
	}
}

func (s *selfSignedSource) host() *tls.Certificate {
	if c := s.cur.Load(); usable(c, time.Now()) {
		return c
	}
	return nil
}

func (s *selfSignedSource) webCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.host(); c != nil {
		return c, nil
	}
	return nil, errNoCertificate
}

// fingerprint is the SHA-256 of a certificate, as clients show it.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
