package tlsauto

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// webManager runs a files-mode Manager with both HTTP listeners on
// loopback, MTA-STS on for two domains, and a certificate from a test CA
// for the host and both policy hosts.
func webManager(t *testing.T, web http.Handler, mod func(*Config)) (*Manager, *testutil.CA, *logBuffer) {
	t.Helper()
	ca := testutil.NewCA(t)
	certFile, keyFile := testutil.WriteFiles(t, t.TempDir(), ca.Issue(t, "mx.example.test", "mta-sts.example.test", "mta-sts.example.org"))
	cfg := filesConfig(t, certFile, keyFile)
	cfg.Domains = []string{"example.test", "example.org"}
	cfg.HTTPListen, cfg.HTTPSListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.MTASTSMode = MTASTSTesting
	cfg.MTASTSMaxAge.UnmarshalText([]byte("24h"))
	if mod != nil {
		mod(&cfg)
	}
	log, logs := newLog(t)
	m, err := New(cfg, Deps{Logger: log, Web: web})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m, ca, logs
}

// httpsClient talks to the Manager's HTTPS listener whatever the URL's
// host, trusting only the test CA and following no redirects (RFC 8461
// §3.3: senders do not).
func httpsClient(m *Manager, ca *testutil.CA) *http.Client {
	return &http.Client{
		Timeout:       5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: ca.Pool},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				target := m.HTTPSAddr().String()
				if strings.HasSuffix(addr, ":80") {
					target = m.HTTPAddr().String()
				}
				return (&net.Dialer{}).DialContext(ctx, network, target)
			},
		},
	}
}

// TestMTASTSPolicy fetches the policy over HTTPS as a sender does and
// checks its content, type and id, for each domain.
func TestMTASTSPolicy(t *testing.T) {
	m, ca, _ := webManager(t, nil, nil)
	c := httpsClient(m, ca)
	want := "version: STSv1\r\nmode: testing\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"
	for _, d := range []string{"example.test", "example.org"} {
		resp, err := c.Get("https://mta-sts." + d + "/.well-known/mta-sts.txt")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain" || string(body) != want {
			t.Errorf("%s: %d %q %q; want 200 text/plain %q", d, resp.StatusCode, resp.Header.Get("Content-Type"), body, want)
		}
	}
	if id := m.cfg.MTASTSPolicyID(); len(id) == 0 || len(id) > 32 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("policy id %q: RFC 8461 §3.1 wants 1 to 32 letters and digits", id)
	}

	for _, tc := range []struct {
		method, url string
		status      int
	}{
		{"GET", "https://mta-sts.example.test/", 404},
		{"GET", "https://mta-sts.example.test/.well-known/mta-sts.txt.bak", 404},
		{"POST", "https://mta-sts.example.test/.well-known/mta-sts.txt", 405},
		{"HEAD", "https://mta-sts.example.test/.well-known/mta-sts.txt", 200},
		{"GET", "https://mx.example.test/.well-known/mta-sts.txt", 404}, // no Web handler
		// Port 80 redirects the policy host's pages to HTTPS and answers
		// nothing for other hosts.
		{"GET", "http://mta-sts.example.test/.well-known/mta-sts.txt", 301},
		{"GET", "http://www.example.test/", 404},
		{"GET", "http://mta-sts.example.test/.well-known/acme-challenge/x", 404}, // files mode: no ACME
	} {
		req, _ := http.NewRequest(tc.method, tc.url, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.url, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.url, resp.StatusCode, tc.status)
		}
		if tc.status == 301 {
			_, port, _ := net.SplitHostPort(m.HTTPSAddr().String())
			if loc := resp.Header.Get("Location"); loc != "https://mta-sts.example.test:"+port+"/.well-known/mta-sts.txt" {
				t.Errorf("redirect to %q", loc)
			}
		}
	}
}

// TestWebHandler: HTTPS requests that are not MTA-STS go to main's handler.
func TestWebHandler(t *testing.T) {
	web := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "web:"+r.Host+r.URL.Path)
	})
	m, ca, _ := webManager(t, web, nil)
	resp, err := httpsClient(m, ca).Get("https://mx.example.test/mail/config-v1.1.xml")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "web:mx.example.test/mail/config-v1.1.xml" {
		t.Errorf("got %q", body)
	}
}

// TestWebLimits: oversized headers are refused, an idle client is cut off,
// and a client over its connection cap is closed at once.
func TestWebLimits(t *testing.T) {
	m, _, _ := webManager(t, nil, func(c *Config) {
		c.HTTPReadTimeout.UnmarshalText([]byte("300ms"))
		c.HTTPMaxHeaderBytes = 4096
		c.HTTPMaxConnections, c.HTTPMaxConnectionsPerIP = 10, 2
	})
	addr := m.HTTPAddr().String()

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: mta-sts.example.test\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64KiB header: %d, want 431", resp.StatusCode)
	}

	// A client that connects and sends nothing is disconnected.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: %v, want the server to close it", err)
	}

	// Per-client cap: with two connections open, a third is closed.
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	testutil.WaitFor(t, 5*time.Second, "two connections counted", func() bool {
		// The cap counts accepted connections; give the accept loop a moment.
		third, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer third.Close()
		third.SetReadDeadline(time.Now().Add(time.Second))
		io.WriteString(third, "GET / HTTP/1.1\r\nHost: mta-sts.example.test\r\n\r\n")
		_, err = third.Read(make([]byte, 1))
		return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
	})
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// TestMailTLS checks the mail ports' TLS as docs/security.md (TLS) has it: no
// TLS 1.1, no handshake for a client that offers only HTTP or acme-tls/1,
// the host's certificate without SNI and for a stranger's SNI (never the
// mta-sts certificate), and only modern suites in TLS 1.2.
func TestMailTLS(t *testing.T) {
	ca := testutil.NewCA(t)
	hostCert := ca.Issue(t, "mx.example.test")
	certFile, keyFile := testutil.WriteFiles(t, t.TempDir(), hostCert)
	cfg := filesConfig(t, certFile, keyFile)
	log, _ := newLog(t)
	m, err := New(cfg, Deps{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mail := newMailListener(t, m.TLSConfig())
	ok := func(r dialResult, err error) dialResult {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if r.leaf.SerialNumber.Cmp(hostCert.Leaf.SerialNumber) != 0 {
			t.Errorf("served %v, want the host's certificate", r.leaf.DNSNames)
		}
		return r
	}
	ok(dialMail(mail.addr, "", ca.Pool, "mx.example.test", nil))
	ok(dialTLS(mail.addr, "mta-sts.example.test", nil, "", nil))
	r := ok(dialTLS(mail.addr, "mx.example.test", ca.Pool, "mx.example.test", func(c *tls.Config) { c.NextProtos = []string{"pop3"} }))
	if r.alpn != "pop3" {
		t.Errorf("ALPN pop3 negotiated %q", r.alpn)
	}
	r = ok(dialTLS(mail.addr, "mx.example.test", ca.Pool, "mx.example.test", func(c *tls.Config) {
		c.MaxVersion = tls.VersionTLS12
		c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	}))
	if r.version != tls.VersionTLS12 {
		t.Errorf("version %x", r.version)
	}

	refused := []struct {
		name string
		mod  func(*tls.Config)
	}{
		{"TLS 1.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }},
		{"ALPN http/1.1 only (ALPACA)", func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
		{"ALPN acme-tls/1 only", func(c *tls.Config) { c.NextProtos = []string{acmeTLS1} }},
		{"CBC suites only", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
		}},
	}
	for _, c := range refused {
		if _, err := dialTLS(mail.addr, "mx.example.test", nil, "", c.mod); err == nil {
			t.Errorf("%s: handshake succeeded", c.name)
		}
	}
}

// TestWebListenersOnlyWhenNeeded: in files mode, ports 80 and 443 (here
// free loopback ports) are bound only when something is served there: an
// MTA-STS policy or main's web handler (autoconfig). Without them nothing
// listens, so a web server on the same machine can have the ports.
func TestWebListenersOnlyWhenNeeded(t *testing.T) {
	web := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	for _, tc := range []struct {
		name   string
		mtaSTS string
		web    http.Handler
		listen bool
	}{
		{"nothing to serve", MTASTSOff, nil, false},
		{"mta-sts", MTASTSTesting, nil, true},
		{"autoconfig", MTASTSOff, web, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testutil.FreePort(t)))
			httpsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testutil.FreePort(t)))
			m, _, logs := webManager(t, tc.web, func(c *Config) {
				c.HTTPListen, c.HTTPSListen = httpAddr, httpsAddr
				c.MTASTSMode = tc.mtaSTS
			})
			for _, addr := range []string{httpAddr, httpsAddr} {
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err == nil {
					c.Close()
				}
				if listening := err == nil; listening != tc.listen {
					t.Errorf("%s: listening %v, want %v (dial: %v)", addr, listening, tc.listen, err)
				}
			}
			if got := m.HTTPAddr() != nil && m.HTTPSAddr() != nil; got != tc.listen {
				t.Errorf("HTTPAddr %v, HTTPSAddr %v; want listening %v", m.HTTPAddr(), m.HTTPSAddr(), tc.listen)
			}
			if n := logs.count("not listening: nothing to serve there"); (n == 2) == tc.listen {
				t.Errorf("%d log lines say a listener is not bound; want %d", n, map[bool]int{true: 0, false: 2}[tc.listen])
			}
		})
	}
}
