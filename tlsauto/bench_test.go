package tlsauto

import (
	"context"
	"crypto/tls"
	"sync"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// BenchmarkMailCertificate measures the certificate lookup every mail
// handshake makes, per mode: acme looks in certmagic's cache, files and
// self-signed read an atomic pointer.
func BenchmarkMailCertificate(b *testing.B) {
	ca := testutil.NewCA(b)
	cert := ca.Issue(b, "mx.example.test")
	certFile, keyFile := testutil.WriteFiles(b, b.TempDir(), cert)
	hello := &tls.ClientHelloInfo{}

	b.Run("acme", func(b *testing.B) {
		cfg := DefaultConfig()
		cfg.Hostname, cfg.Domains, cfg.DataDir, cfg.AgreeTerms = "mx.example.test", []string{"example.test"}, b.TempDir(), true
		m, err := New(cfg, Deps{Logger: discard()})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		m.acme.prepare(nil, nil)
		if _, err := m.acme.magic.CacheUnmanagedTLSCertificate(context.Background(), cert, nil); err != nil {
			b.Fatal(err)
		}
		benchLookup(b, m, hello)
	})
	b.Run("files", func(b *testing.B) {
		m, err := New(filesConfig(b, certFile, keyFile), Deps{Logger: discard()})
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		benchLookup(b, m, hello)
	})
}

func benchLookup(b *testing.B, m *Manager, hello *tls.ClientHelloInfo) {
	b.ReportAllocs()
	for b.Loop() {
		if c, err := m.mailCertificate(hello); err != nil || c == nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMailHandshake measures a whole TLS 1.3 handshake (ECDSA P-256)
// against the mail configuration over loopback TCP, client and server
// side together.
func BenchmarkMailHandshake(b *testing.B) {
	ca := testutil.NewCA(b)
	certFile, keyFile := testutil.WriteFiles(b, b.TempDir(), ca.Issue(b, "mx.example.test"))
	m, err := New(filesConfig(b, certFile, keyFile), Deps{Logger: discard()})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	l, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() { l.Close(); wg.Wait() }()
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	})
	client := &tls.Config{RootCAs: ca.Pool, ServerName: "mx.example.test"}
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", l.Addr().String(), client)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
