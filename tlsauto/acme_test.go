package tlsauto

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// TestACMEHTTP01 obtains a certificate from Pebble through HTTP-01 only
// (no HTTPS listener), serves it on a mail listener with and without SNI,
// never starts an order for a stranger's SNI, and after a restart with the
// CA gone serves the stored certificate at once.
func TestACMEHTTP01(t *testing.T) {
	const host = "mx.http01.example.test"
	dns := testutil.NewDNSServer(t)
	dns.Add(host, "A", "127.0.0.1")
	httpLn := listen127(t)
	p := testutil.NewPebble(t, dns, testutil.PebbleOptions{HTTPPort: port(httpLn.Addr()), TLSPort: testutil.FreePort(t)})
	p.Start()

	cfg := acmeConfig(t, p, host)
	cfg.ACMEEmail = "owner@example.org"
	cfg.HTTPListen, cfg.HTTPSListen = httpLn.Addr().String(), ""
	log, logs := newLog(t)
	m, err := New(cfg, Deps{Logger: log, HTTPListener: httpLn, Resolver: dns.Resolver()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Ready() {
		t.Fatal("Ready before Start")
	}
	mail := newMailListener(t, m.TLSConfig())
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 60*time.Second, "a certificate", m.Ready)

	if n := logs.count("answered an ACME HTTP-01 challenge", "name="+host); n == 0 {
		t.Error("no HTTP-01 challenge was answered by our HTTP listener")
	}
	roots := p.Roots()
	withSNI, err := dialTLS(mail.addr, host, roots, host, nil)
	if err != nil {
		t.Fatalf("handshake with SNI, verified against Pebble's root: %v", err)
	}
	noSNI, err := dialMail(mail.addr, "", roots, host, nil)
	if err != nil {
		t.Fatalf("handshake without SNI (as Postfix does): %v", err)
	}
	if noSNI.greet != "+OK sni=" {
		t.Errorf("the client sent an SNI after all: %q", noSNI.greet)
	}
	if withSNI.leaf.SerialNumber.Cmp(noSNI.leaf.SerialNumber) != 0 {
		t.Error("different certificates with and without SNI")
	}
	leaf, ok := m.Certificate()
	if !ok || leaf.SerialNumber.Cmp(withSNI.leaf.SerialNumber) != 0 {
		t.Errorf("Certificate() = %v, %v; want the served one", leaf, ok)
	}

	// A stranger's SNI gets the host's certificate and starts no order
	// (docs/security.md, TLS: SNI-less clients).
	orders := p.Orders()
	other, err := dialTLS(mail.addr, "random-name.example.test", roots, host, nil)
	if err != nil {
		t.Fatalf("handshake with another SNI: %v", err)
	}
	if other.leaf.SerialNumber.Cmp(withSNI.leaf.SerialNumber) != 0 {
		t.Error("another SNI got another certificate")
	}
	if p.Orders() != orders {
		t.Errorf("a handshake started an ACME order (%d -> %d)", orders, p.Orders())
	}

	// The HTTP listener answers nothing but challenges for our names.
	for _, c := range []struct{ host, path string }{
		{host, "/"},
		{"stranger.example.test", "/.well-known/acme-challenge/abc"},
		{host, "/.well-known/acme-challenge/not-a-token"},
	} {
		req, _ := http.NewRequest("GET", "http://"+httpLn.Addr().String()+c.path, nil)
		req.Host = c.host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET http://%s%s: %d, want 404", c.host, c.path, resp.StatusCode)
		}
	}

	// Restart on the same data directory with the CA gone: the stored
	// certificate is served as soon as Start returns, and no order is made.
	m.Close()
	p.Stop()
	log2, _ := newLog(t)
	cfg.HTTPListen = "127.0.0.1:0"
	m2, err := New(cfg, Deps{Logger: log2, Resolver: dns.Resolver()})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !m2.Ready() {
		t.Fatal("after a restart the stored certificate is not served at once")
	}
	mail2 := newMailListener(t, m2.TLSConfig())
	again, err := dialTLS(mail2.addr, "", roots, host, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.leaf.SerialNumber.Cmp(withSNI.leaf.SerialNumber) != 0 {
		t.Error("the restart served a different certificate")
	}
}

// TestACMETLSALPN01 obtains certificates through TLS-ALPN-01 only (no HTTP
// listener) for the host and for mta-sts.<domain>, serves the MTA-STS
// policy over HTTPS with it, and picks up renewals of a short-lived
// certificate on a live mail listener.
func TestACMETLSALPN01(t *testing.T) {
	const host, domain = "mx.alpn.example.test", "alpn.example.test"
	dns := testutil.NewDNSServer(t)
	dns.Add(host, "A", "127.0.0.1")
	dns.Add("mta-sts."+domain, "A", "127.0.0.1")
	httpsLn := listen127(t)
	// Certificates live 30 seconds; renewal starts at half their life.
	p := testutil.NewPebble(t, dns, testutil.PebbleOptions{HTTPPort: testutil.FreePort(t), TLSPort: port(httpsLn.Addr()), Validity: 30})
	p.Start()

	cfg := acmeConfig(t, p, host)
	cfg.Domains = []string{domain}
	cfg.HTTPListen, cfg.HTTPSListen = "", httpsLn.Addr().String()
	cfg.MTASTSMode = MTASTSEnforce
	cfg.MTASTSMaxAge.UnmarshalText([]byte("24h"))
	log, logs := newLog(t)
	m, err := New(cfg, Deps{
		Logger:             log,
		HTTPSListener:      httpsLn,
		RenewCheckInterval: 500 * time.Millisecond,
		RenewalWindowRatio: 0.5,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mail := newMailListener(t, m.TLSConfig())
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 60*time.Second, "a certificate", m.Ready)
	if logs.count("tls-alpn-01", "served key authentication certificate") == 0 {
		t.Error("no TLS-ALPN-01 challenge was answered by our HTTPS listener")
	}
	roots := p.Roots()
	first, err := dialTLS(mail.addr, "", roots, host, nil)
	if err != nil {
		t.Fatalf("handshake without SNI, verified against Pebble's root: %v", err)
	}

	// The MTA-STS policy, fetched as a sender does: HTTPS to
	// mta-sts.<domain>, the certificate checked against the CA.
	testutil.WaitFor(t, 60*time.Second, "the mta-sts certificate", func() bool {
		_, err := dialTLS(httpsLn.Addr().String(), "mta-sts."+domain, roots, "mta-sts."+domain, nil)
		return err == nil
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsLn.Addr().String())
		},
	}}
	resp, err := client.Get("https://mta-sts." + domain + "/.well-known/mta-sts.txt")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "version: STSv1\r\nmode: enforce\r\nmx: " + host + "\r\nmax_age: 86400\r\n"
	if resp.StatusCode != 200 || string(body) != want || resp.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("policy: %d %q %q; want 200 text/plain %q", resp.StatusCode, resp.Header.Get("Content-Type"), body, want)
	}

	// The HTTPS listener has no certificate for a stranger's name and
	// starts no order for it.
	orders := p.Orders()
	if _, err := dialTLS(httpsLn.Addr().String(), "stranger.example.test", nil, "", nil); err == nil {
		t.Error("HTTPS handshake for an unknown name succeeded")
	}
	if p.Orders() != orders {
		t.Errorf("a handshake started an ACME order (%d -> %d)", orders, p.Orders())
	}

	// Renewal: the live listener serves the new certificate, no restart.
	testutil.WaitFor(t, 90*time.Second, "a renewed certificate on the live listener", func() bool {
		r, err := dialTLS(mail.addr, host, roots, host, nil)
		return err == nil && r.leaf.SerialNumber.Cmp(first.leaf.SerialNumber) != 0
	})
}

// TestACMEUnreachableCA starts with nothing at the directory URL: Start
// returns at once, the mail listener fails handshakes cleanly, the log says
// what is wrong, and once the CA comes up the certificate arrives and the
// same listener serves it.
func TestACMEUnreachableCA(t *testing.T) {
	const host = "mx.down.example.test"
	dns := testutil.NewDNSServer(t)
	dns.Add(host, "A", "127.0.0.1")
	httpLn := listen127(t)
	p := testutil.NewPebble(t, dns, testutil.PebbleOptions{HTTPPort: port(httpLn.Addr()), TLSPort: testutil.FreePort(t)})
	// Pebble is not started yet: its port refuses connections.

	cfg := acmeConfig(t, p, host)
	cfg.HTTPListen, cfg.HTTPSListen = httpLn.Addr().String(), ""
	log, logs := newLog(t)
	m, err := New(cfg, Deps{Logger: log, HTTPListener: httpLn, RetryIntervals: []time.Duration{200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mail := newMailListener(t, m.TLSConfig())
	started := make(chan error, 1)
	go func() { started <- m.Start(context.Background()) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Start blocks while the CA is unreachable")
	}

	testutil.WaitFor(t, 30*time.Second, "two failed attempts in the log", func() bool {
		return logs.count("could not get a certificate", "cannot be reached") >= 2
	})
	if m.Ready() {
		t.Fatal("Ready without a certificate")
	}
	if _, ok := m.Certificate(); ok {
		t.Fatal("Certificate() reports one without a certificate")
	}
	_, err = dialTLS(mail.addr, host, nil, "", nil)
	if err == nil {
		t.Fatal("a handshake succeeded without a certificate")
	}
	testutil.WaitFor(t, 5*time.Second, "the server side of the failed handshake", func() bool { return len(mail.handshakeErrors()) > 0 })
	if errs := mail.handshakeErrors(); !strings.Contains(fmt.Sprint(errs), errNoCertificate.Error()) {
		t.Errorf("server handshake errors %v; want %q", errs, errNoCertificate)
	}

	p.Start()
	testutil.WaitFor(t, 60*time.Second, "a certificate once the CA is back", m.Ready)
	if _, err := dialTLS(mail.addr, host, p.Roots(), host, nil); err != nil {
		t.Fatalf("the listener started before the certificate does not serve it: %v", err)
	}
}

// TestACMEValidationFails: when the CA cannot reach us, the log says why
// in the owner's terms: where the name points and which port to open, or
// that the name does not resolve.
func TestACMEValidationFails(t *testing.T) {
	const host, extra = "mx.fail.example.test", "autoconfig.fail.example.test"
	dns := testutil.NewDNSServer(t)
	dns.Add(host, "A", "127.0.0.1") // extra has no record
	// Pebble validates on a port where nothing listens: "port 80 closed".
	p := testutil.NewPebble(t, dns, testutil.PebbleOptions{HTTPPort: testutil.FreePort(t), TLSPort: testutil.FreePort(t)})
	p.Start()

	cfg := acmeConfig(t, p, host)
	cfg.HTTPListen, cfg.HTTPSListen = "127.0.0.1:0", ""
	cfg.ExtraNames = []string{extra}
	log, logs := newLog(t)
	m, err := New(cfg, Deps{Logger: log, Resolver: dns.Resolver(), RetryIntervals: []time.Duration{time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 60*time.Second, "the diagnosis for the host", func() bool {
		return logs.count("could not get a certificate", "name="+host, "resolves to 127.0.0.1", "port 80 (HTTP-01)", "open to the internet") == 1
	})
	testutil.WaitFor(t, 60*time.Second, "the diagnosis for the name without DNS", func() bool {
		return logs.count("could not get a certificate", "name="+extra, extra+" does not resolve", "publish A (and AAAA) records") == 1
	})
	if m.Ready() {
		t.Error("Ready although validation failed")
	}
}

// TestACMEDamagedStorage: what a kill -9 in the middle of a renewal or a
// full disk leaves behind (a stored certificate that no longer loads, the
// issuance lock of the dead process) does not stop the next start: the
// damaged files are set aside, the stale lock is taken over, and a new
// certificate is obtained, with no hands.
func TestACMEDamagedStorage(t *testing.T) {
	const host = "mx.damaged.example.test"
	dns := testutil.NewDNSServer(t)
	dns.Add(host, "A", "127.0.0.1")
	httpLn := listen127(t)
	p := testutil.NewPebble(t, dns, testutil.PebbleOptions{HTTPPort: port(httpLn.Addr()), TLSPort: testutil.FreePort(t)})
	p.Start()
	cfg := acmeConfig(t, p, host)
	cfg.HTTPListen, cfg.HTTPSListen = httpLn.Addr().String(), ""
	log, _ := newLog(t)
	m, err := New(cfg, Deps{Logger: log, HTTPListener: httpLn})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 60*time.Second, "a certificate", m.Ready)
	first, _ := m.Certificate()
	m.Close()

	crts, _ := filepath.Glob(filepath.Join(cfg.DataDir, "certificates", "certificates", "*", host, host+".crt"))
	if len(crts) != 1 {
		t.Fatalf("stored certificate not found: %v", crts)
	}
	if err := os.WriteFile(crts[0], []byte("-----BEGIN CERTIFICATE-----\ntruncated"), 0o600); err != nil {
		t.Fatal(err)
	}

	lock := filepath.Join(cfg.DataDir, "certificates", "locks", "issue_cert_"+host+".lock")
	stale := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	if err := os.WriteFile(lock, []byte(`{"created":"`+stale+`","updated":"`+stale+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	log2, logs2 := newLog(t)
	// cfg.HTTPListen is the port Pebble validates on, free again.
	m2, err := New(cfg, Deps{Logger: log2})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if logs2.count("stored certificate unusable; set aside") != 1 {
		t.Error("the damaged certificate was not set aside")
	}
	if _, err := os.Stat(crts[0] + ".unusable"); err != nil {
		t.Errorf("the damaged file was not kept: %v", err)
	}
	testutil.WaitFor(t, 60*time.Second, "a new certificate", m2.Ready)
	second, _ := m2.Certificate()
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("still the old certificate")
	}
}
