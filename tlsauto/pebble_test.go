package tlsauto

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// pebble is Let's Encrypt's test ACME server (/usr/bin/pebble, the Debian
// package), run as a child process on loopback ports. Its own HTTPS uses
// a certificate from a throwaway CA; its challenges go to httpPort and
// tlsPort on the address the test DNS server gives for a name.
type pebble struct {
	t          testing.TB
	dir        string
	listen     string // host:port of the ACME directory
	mgmt       string // host:port of the management interface
	caRootFile string // PEM of the CA that signed Pebble's HTTPS certificate
	client     *http.Client
	args       []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  strings.Builder
}

// pebbleOptions are the parts of Pebble's config a test chooses.
type pebbleOptions struct {
	httpPort, tlsPort int // where Pebble's VA connects for HTTP-01 and TLS-ALPN-01
	validity          int // certificate lifetime in seconds; 0: Pebble's default
	listenPort        int // 0: a free port
}

func newPebble(t testing.TB, dns *testutil.DNSServer, o pebbleOptions) *pebble {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		t.Fatalf("pebble is not installed (Debian package pebble; CI installs it): %v", err)
	}
	dir := t.TempDir()
	ca := testutil.NewCA(t)
	certFile, keyFile := testutil.WriteFiles(t, dir, ca.Issue(t, "127.0.0.1", "localhost"))
	p := &pebble{t: t, dir: dir, caRootFile: filepath.Join(dir, "pebble-https-ca.pem")}
	if err := os.WriteFile(p.caRootFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if o.listenPort == 0 {
		o.listenPort = freePort(t)
	}
	p.listen = fmt.Sprintf("127.0.0.1:%d", o.listenPort)
	p.mgmt = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":                  p.listen,
		"managementListenAddress":        p.mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       o.httpPort,
		"tlsPort":                        o.tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"certificateValidityPeriod":      o.validity,
	}}
	b, _ := json.Marshal(conf)
	confFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p.args = []string{bin, "-config", confFile, "-dnsserver", dns.Addr}
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: ca.ClientConfig("127.0.0.1")}}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("pebble output:\n%s", p.output())
		}
	})
	return p
}

// URL is the ACME directory URL.
func (p *pebble) URL() string { return "https://" + p.listen + "/dir" }

// start runs Pebble and waits until its directory answers.
func (p *pebble) start() {
	p.t.Helper()
	p.mu.Lock()
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // no random sleeps before validating
		"PEBBLE_WFE_NONCEREJECT=0", // no spurious badNonce retries
		"PEBBLE_AUTHZREUSE=0",      // every order validates its challenge
	)
	w := &lockedWriter{mu: &p.mu, b: &p.out}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		p.t.Fatal(err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	done := p.done
	p.mu.Unlock()
	go func() { cmd.Wait(); close(done) }()
	waitFor(p.t, 20*time.Second, "pebble's directory", func() bool {
		select {
		case <-done:
			p.t.Fatalf("pebble exited:\n%s", p.output())
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

// stop kills Pebble (it keeps no state; a new start is a new CA).
func (p *pebble) stop() {
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

// roots returns Pebble's issuing root, from its management interface.
func (p *pebble) roots() *x509.CertPool {
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
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		p.t.Fatalf("no root from pebble: %q", b)
	}
	return pool
}

// orders counts the new-order requests Pebble has seen.
func (p *pebble) orders() int {
	return strings.Count(p.output(), "POST /order-plz")
}

func (p *pebble) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(b)
}

// acmeConfig is a config for the Manager under test against p.
func acmeConfig(t testing.TB, p *pebble, hostname string) Config {
	cfg := DefaultConfig()
	cfg.Hostname = hostname
	cfg.Domains = []string{strings.SplitN(hostname, ".", 2)[1]}
	cfg.DataDir = t.TempDir()
	cfg.AgreeTerms = true
	cfg.ACMEDirectory = p.URL()
	cfg.ACMECARoot = p.caRootFile
	cfg.HTTPReadTimeout.UnmarshalText([]byte("5s"))
	return cfg
}
