package tlsauto

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

func selfSignedConfig(dataDir, host string) Config {
	cfg := DefaultConfig()
	cfg.Mode = ModeSelfSigned
	cfg.Hostname, cfg.Domains, cfg.DataDir = host, []string{host}, dataDir
	cfg.HTTPListen, cfg.HTTPSListen = "", ""
	return cfg
}

// TestSelfSignedKept: the certificate is made once (key 0600), served on
// the mail ports, and the same one comes back on the next start.
func TestSelfSignedKept(t *testing.T) {
	dir := t.TempDir()
	log, logs := newLog(t)
	m, err := New(selfSignedConfig(dir, "localhost"), Deps{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if logs.count("made a self-signed certificate") != 1 {
		t.Fatal("no certificate made on the first start")
	}
	fi, err := os.Stat(filepath.Join(dir, "self-signed", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", fi.Mode().Perm())
	}
	leaf, ok := m.Certificate()
	if !ok || !m.Ready() {
		t.Fatal("no certificate")
	}
	// "postie local": clients connect to localhost, 127.0.0.1 or ::1.
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("the certificate does not name %s: %v", name, err)
		}
	}
	if time.Until(leaf.NotAfter) < 800*24*time.Hour {
		t.Errorf("expires %v: too soon for a kept certificate", leaf.NotAfter)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	mail := newMailListener(t, m.TLSConfig())
	r, err := dialTLS(mail.addr, "", pool, "localhost", nil)
	if err != nil {
		t.Fatalf("handshake trusting the self-signed certificate: %v", err)
	}
	if !bytes.Equal(r.leaf.Raw, leaf.Raw) {
		t.Error("served another certificate than Certificate() reports")
	}
	m.Close()

	log2, logs2 := newLog(t)
	m2, err := New(selfSignedConfig(dir, "localhost"), Deps{Logger: log2})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	again, _ := m2.Certificate()
	if !bytes.Equal(again.Raw, leaf.Raw) {
		t.Error("a restart made a new certificate")
	}
	if logs2.count("made a self-signed certificate") != 0 || logs2.count("self-signed certificate loaded", "sha256="+fingerprint(leaf)) != 1 {
		t.Errorf("second start did not say it reused the certificate:\n%s", logs2.String())
	}
}

// TestSelfSignedRemade: a kept certificate is replaced when it no longer
// names the host, does not load, or nears its end.
func TestSelfSignedRemade(t *testing.T) {
	ca := testutil.NewCA(t)
	cases := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		reason  string
	}{
		{"hostname changed", func(t *testing.T, dir string) {
			m, err := New(selfSignedConfig(dir, "old.example.test"), Deps{Logger: discard()})
			if err != nil {
				t.Fatal(err)
			}
			m.Close()
		}, "does not name mx.example.test"},
		{"corrupt file", func(t *testing.T, dir string) {
			os.MkdirAll(filepath.Join(dir, "self-signed"), 0o700)
			os.WriteFile(filepath.Join(dir, "self-signed", "cert.pem"), []byte("garbage"), 0o600)
			os.WriteFile(filepath.Join(dir, "self-signed", "key.pem"), []byte("garbage"), 0o600)
		}, "PEM"},
		{"ends in ten days", func(t *testing.T, dir string) {
			sd := filepath.Join(dir, "self-signed")
			os.MkdirAll(sd, 0o700)
			cf, kf := testutil.WriteFiles(t, sd, ca.IssueValid(t, time.Now().Add(10*24*time.Hour), "mx.example.test"))
			os.Rename(cf, filepath.Join(sd, "cert.pem"))
			os.Rename(kf, filepath.Join(sd, "key.pem"))
		}, "expires on"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.prepare(t, dir)
			log, logs := newLog(t)
			m, err := New(selfSignedConfig(dir, "mx.example.test"), Deps{Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if logs.count("made a self-signed certificate", c.reason) != 1 {
				t.Fatalf("no new certificate for reason %q", c.reason)
			}
			leaf, _ := m.Certificate()
			if err := leaf.VerifyHostname("mx.example.test"); err != nil || time.Until(leaf.NotAfter) < 800*24*time.Hour {
				t.Errorf("new certificate %v, expires %v", err, leaf.NotAfter)
			}
			if leaf.VerifyHostname("127.0.0.1") == nil {
				t.Error("an IP address in a certificate for a public host name")
			}
		})
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
