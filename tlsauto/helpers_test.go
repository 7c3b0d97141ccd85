package tlsauto

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuffer collects a Manager's log for assertions, and prints it when
// the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func newLog(t testing.TB) (*slog.Logger, *logBuffer) {
	t.Helper()
	lb := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// count returns how many log lines contain every one of subs.
func (l *logBuffer) count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// mailListener serves the Manager's mail TLS config on 127.0.0.1, as
// POP3S would: each connection completes the handshake and gets a line
// naming the SNI it sent, and its handshake error is recorded.
type mailListener struct {
	addr string
	mu   sync.Mutex
	errs []error
}

func newMailListener(t testing.TB, cfg *tls.Config) *mailListener {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ml := &mailListener{addr: l.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					ml.mu.Lock()
					ml.errs = append(ml.errs, err)
					ml.mu.Unlock()
					return
				}
				io.WriteString(tc, "+OK sni="+tc.ConnectionState().ServerName+"\r\n")
			})
		}
	})
	return ml
}

func (ml *mailListener) handshakeErrors() []error {
	ml.mu.Lock()
	defer ml.mu.Unlock()
	return append([]error(nil), ml.errs...)
}

// dialResult is what a client saw of a TLS server.
type dialResult struct {
	leaf    *x509.Certificate
	greet   string // the first line the server sent
	version uint16
	alpn    string
}

// dialTLS connects to addr with TLS, sending sni as SNI ("" sends none),
// and checks the chain against roots for name (nil roots: no check).
func dialTLS(addr, sni string, roots *x509.CertPool, name string, mod func(*tls.Config)) (dialResult, error) {
	return dial(addr, sni, roots, name, mod, false)
}

// dialMail is dialTLS to a mailListener, reading its greeting line.
func dialMail(addr, sni string, roots *x509.CertPool, name string, mod func(*tls.Config)) (dialResult, error) {
	return dial(addr, sni, roots, name, mod, true)
}

func dial(addr, sni string, roots *x509.CertPool, name string, mod func(*tls.Config), greet bool) (dialResult, error) {
	cfg := &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // verified below, for name, also without SNI
		VerifyConnection: func(cs tls.ConnectionState) error {
			if roots == nil {
				return nil
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name})
			return err
		},
	}
	if mod != nil {
		mod(cfg)
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return dialResult{}, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	cs := tc.ConnectionState()
	r := dialResult{leaf: cs.PeerCertificates[0], version: cs.Version, alpn: cs.NegotiatedProtocol}
	if !greet {
		return r, nil
	}
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := readLine(tc)
	if err != nil && !errors.Is(err, io.EOF) {
		return r, err
	}
	r.greet = line
	return r, nil
}

func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 512 {
		n, err := r.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				return strings.TrimRight(string(b), "\r"), nil
			}
			b = append(b, one[0])
		}
		if err != nil {
			return string(b), err
		}
	}
	return string(b), nil
}

// listen127 opens a listener on 127.0.0.1 and a free port.
func listen127(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func port(a net.Addr) int { return a.(*net.TCPAddr).Port }
