package tlsauto

import (
	"context"
	"crypto/tls"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

func filesConfig(t testing.TB, certFile, keyFile string) Config {
	cfg := DefaultConfig()
	cfg.Mode = ModeFiles
	cfg.CertFile, cfg.KeyFile = certFile, keyFile
	cfg.Hostname, cfg.Domains, cfg.DataDir = "mx.example.test", []string{"example.test"}, t.TempDir()
	cfg.HTTPListen, cfg.HTTPSListen = "", ""
	return cfg
}

// writePair writes cert and key as the owner's tools would: the
// certificate first, then the key, each in place (not atomically).
func writePair(t testing.TB, certFile, keyFile string, c tls.Certificate) {
	t.Helper()
	dir := t.TempDir()
	cf, kf := testutil.WriteFiles(t, dir, c)
	for _, p := range [][2]string{{cf, certFile}, {kf, keyFile}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFilesReload serves the owner's files on a live listener, picks up a
// new pair without a restart, keeps the old pair through every kind of
// broken file, and warns about a certificate that ends soon.
func TestFilesReload(t *testing.T) {
	ca := testutil.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	first := ca.Issue(t, "mx.example.test")
	writePair(t, certFile, keyFile, first)

	log, logs := newLog(t)
	m, err := New(filesConfig(t, certFile, keyFile), Deps{Logger: log, FileCheckInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !m.Ready() {
		t.Fatal("not Ready with a good pair")
	}
	mail := newMailListener(t, m.TLSConfig())
	serial := func() *big.Int {
		t.Helper()
		r, err := dialTLS(mail.addr, "", ca.Pool, "mx.example.test", nil)
		if err != nil {
			t.Fatal(err)
		}
		return r.leaf.SerialNumber
	}
	if got := serial(); got.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatalf("serving serial %x, want %x", got, first.Leaf.SerialNumber)
	}
	if logs.count("expires soon") == 0 {
		t.Error("no warning about a certificate that ends within two weeks")
	}

	second := ca.Issue(t, "mx.example.test")
	writePair(t, certFile, keyFile, second)
	testutil.WaitFor(t, 10*time.Second, "the new pair on the live listener", func() bool {
		return serial().Cmp(second.Leaf.SerialNumber) == 0
	})

	other := ca.Issue(t, "mx.example.test")
	expired := ca.IssueValid(t, time.Now().Add(-time.Minute), "mx.example.test")
	cf, kf := testutil.WriteFiles(t, t.TempDir(), other)
	otherKey, _ := os.ReadFile(kf)
	otherCert, _ := os.ReadFile(cf)
	broken := []struct {
		name      string
		cert, key []byte
	}{
		{"garbage certificate", []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), nil},
		{"empty certificate", []byte{}, nil},
		{"half-written certificate", otherCert[:len(otherCert)/2], nil},
		{"key of another certificate", otherCert, nil}, // the key file still holds second's key
		{"certificate without its key", nil, otherKey},
		{"expired certificate", pemOf(t, expired), keyPEMOf(t, expired)},
	}
	for i, b := range broken {
		before := logs.count("do not load")
		if b.cert != nil {
			os.WriteFile(certFile, b.cert, 0o600)
		}
		if b.key != nil {
			os.WriteFile(keyFile, b.key, 0o600)
		}
		testutil.WaitFor(t, 10*time.Second, "the log about "+b.name, func() bool { return logs.count("do not load") > before })
		if got := serial(); got.Cmp(second.Leaf.SerialNumber) != 0 {
			t.Fatalf("case %d (%s): serving %x, want the previous %x", i, b.name, got, second.Leaf.SerialNumber)
		}
		if !m.Ready() {
			t.Fatalf("case %d (%s): not Ready", i, b.name)
		}
		// Back to a good pair before the next case.
		writePair(t, certFile, keyFile, second)
		testutil.WaitFor(t, 10*time.Second, "the good pair again", func() bool {
			return logs.count("certificate loaded", "serial="+second.Leaf.SerialNumber.Text(16)) >= i+2
		})
	}

	// A certificate that does not name the host is served, with a warning.
	stranger := ca.Issue(t, "elsewhere.example.test")
	writePair(t, certFile, keyFile, stranger)
	testutil.WaitFor(t, 10*time.Second, "the warning about the names", func() bool {
		return logs.count("does not cover a name", "name=mx.example.test") > 0
	})
}

// TestFilesStartBroken: files that do not load at start are an error that
// names the keys.
func TestFilesStartBroken(t *testing.T) {
	dir := t.TempDir()
	log, _ := newLog(t)
	_, err := New(filesConfig(t, filepath.Join(dir, "missing.pem"), filepath.Join(dir, "missing.key")), Deps{Logger: log})
	if err == nil || !strings.Contains(err.Error(), "tls.cert_file") {
		t.Fatalf("New with missing files: %v", err)
	}
}

func pemOf(t testing.TB, c tls.Certificate) []byte {
	cf, _ := testutil.WriteFiles(t, t.TempDir(), c)
	b, _ := os.ReadFile(cf)
	return b
}

func keyPEMOf(t testing.TB, c tls.Certificate) []byte {
	_, kf := testutil.WriteFiles(t, t.TempDir(), c)
	b, _ := os.ReadFile(kf)
	return b
}
