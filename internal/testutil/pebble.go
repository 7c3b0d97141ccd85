package testutil

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Pebble is Let's Encrypt's test ACME server (/usr/bin/pebble, the Debian
// package), run as a child process on loopback ports. Its own HTTPS uses
// a certificate from a throwaway CA; its challenges go to httpPort and
// tlsPort on the address the test DNS server gives for a name.
type Pebble struct {
	t          testing.TB
	dir        string
	listen     string // host:port of the ACME directory
	mgmt       string // host:port of the management interface
	CARootFile string // PEM of the CA that signed Pebble's HTTPS certificate
	client     *http.Client
	args       []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  strings.Builder
}

// PebbleOptions are the parts of Pebble's config a test chooses.
type PebbleOptions struct {
	HTTPPort, TLSPort int // where Pebble's VA connects for HTTP-01 and TLS-ALPN-01
	Validity          int // certificate lifetime in seconds; 0: Pebble's default
	ListenPort        int // 0: a free port
}

// NewPebble prepares Pebble with its own config; Start runs it. It is
// stopped when the test ends.
func NewPebble(t testing.TB, dns *DNSServer, o PebbleOptions) *Pebble {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		t.Fatalf("pebble is not installed (Debian package pebble; CI installs it): %v", err)
	}
	dir := t.TempDir()
	ca := NewCA(t)
	certFile, keyFile := WriteFiles(t, dir, ca.Issue(t, "127.0.0.1", "localhost"))
	p := &Pebble{t: t, dir: dir, CARootFile: filepath.Join(dir, "pebble-https-ca.pem")}
	if err := os.WriteFile(p.CARootFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if o.ListenPort == 0 {
		o.ListenPort = FreePort(t)
	}
	p.listen = fmt.Sprintf("127.0.0.1:%d", o.ListenPort)
	p.mgmt = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":                  p.listen,
		"managementListenAddress":        p.mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       o.HTTPPort,
		"tlsPort":                        o.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"certificateValidityPeriod":      o.Validity,
	}}
	b, _ := json.Marshal(conf)
	confFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p.args = []string{bin, "-config", confFile, "-dnsserver", dns.Addr}
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientConfig("127.0.0.1")}}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("pebble output:\n%s", p.Output())
		}
	})
	return p
}

// URL is the ACME directory URL.
func (p *Pebble) URL() string { return "https://" + p.listen + "/dir" }

// Start runs Pebble and waits until its directory answers.
func (p *Pebble) Start() {
	p.t.Helper()
	p.mu.Lock()
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // no random sleeps before validating
		"PEBBLE_WFE_NONCEREJECT=0", // no spurious badNonce retries
		"PEBBLE_AUTHZREUSE=0",      // every order validates its challenge
	)
	w := &pebbleWriter{mu: &p.mu, b: &p.out}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		p.t.Fatal(err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	done := p.done
	p.mu.Unlock()
	go func() { cmd.Wait(); close(done) }()
	WaitFor(p.t, 20*time.Second, "pebble's directory", func() bool {
		select {
		case <-done:
			p.t.Fatalf("pebble exited:\n%s", p.Output())
		default:
		}
		resp, err := p.client.Get(p.URL())
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// Stop kills Pebble (it keeps no state; a new start is a new CA).
func (p *Pebble) Stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// RootPEM returns Pebble's issuing root as PEM, from its management
// interface.
func (p *Pebble) RootPEM() []byte {
	p.t.Helper()
	resp, err := p.client.Get("https://" + p.mgmt + "/roots/0")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	return b
}

// Roots returns a pool holding Pebble's issuing root.
func (p *Pebble) Roots() *x509.CertPool {
	p.t.Helper()
	b := p.RootPEM()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		p.t.Fatalf("no root from pebble: %q", b)
	}
	return pool
}

// Orders counts the new-order requests Pebble has seen.
func (p *Pebble) Orders() int {
	return strings.Count(p.Output(), "POST /order-plz")
}

// Output is what Pebble has printed.
func (p *Pebble) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

type pebbleWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w *pebbleWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(b)
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	// Below Linux's ephemeral range (32768-60999): a port taken from it
	// and closed may be handed out at once as the source port of some
	// other connection, and the server that was to bind it fails with
	// "address already in use".
	for range 100 {
		port := 20000 + rand.IntN(12000)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			return port
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitFor polls cond until it holds, failing the test after deadline.
func WaitFor(t testing.TB, deadline time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("gave up after %s waiting for %s", deadline, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
