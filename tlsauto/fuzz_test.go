package tlsauto

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// FuzzParseKeyPair feeds arbitrary certificate and key files to the loader
// of files and self-signed mode: it never panics, and what it accepts is a
// valid certificate whose key belongs to it.
func FuzzParseKeyPair(f *testing.F) {
	ca := testutil.NewCA(f)
	good := ca.Issue(f, "mx.example.test")
	cf, kf := testutil.WriteFiles(f, f.TempDir(), good)
	certPEM, _ := os.ReadFile(cf)
	keyPEM, _ := os.ReadFile(kf)
	_, otherKF := testutil.WriteFiles(f, f.TempDir(), ca.Issue(f, "mx.example.test"))
	otherKey, _ := os.ReadFile(otherKF)
	f.Add(certPEM, keyPEM)
	f.Add(certPEM, otherKey)
	f.Add(certPEM[:len(certPEM)/2], keyPEM)
	f.Add(append(certPEM, certPEM...), keyPEM)
	f.Add(keyPEM, certPEM)
	f.Add([]byte{}, []byte{})
	now := time.Now()
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		c, err := parseKeyPair(certPEM, keyPEM, now)
		if err != nil {
			return
		}
		if c.Leaf == nil || !usable(c, now) {
			t.Fatalf("accepted a pair with leaf %v", c.Leaf)
		}
		if k, ok := c.PrivateKey.(*ecdsa.PrivateKey); ok {
			if pub, ok := c.Leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&k.PublicKey) {
				t.Fatal("accepted a key that does not belong to the certificate")
			}
		}
	})
}

// FuzzHTTPListener sends arbitrary bytes to the live HTTP listener (port
// 80's job: ACME challenges and redirects). Whatever comes in, the answer
// is an HTTP error or a redirect to HTTPS on one of our own names (never
// content, never a redirect elsewhere), and the server keeps answering.
func FuzzHTTPListener(f *testing.F) {
	ca := testutil.NewCA(f)
	certFile, keyFile := testutil.WriteFiles(f, f.TempDir(), ca.Issue(f, "mx.example.test", "mta-sts.example.test"))
	cfg := filesConfig(f, certFile, keyFile)
	cfg.HTTPListen, cfg.HTTPSListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.MTASTSMode = MTASTSEnforce
	cfg.HTTPReadTimeout.UnmarshalText([]byte("3s"))
	cfg.HTTPIdleTimeout.UnmarshalText([]byte("3s"))
	// Inputs that leave a connection half-open hold a slot until the read
	// timeout; the caps have their own test (TestWebLimits).
	cfg.HTTPMaxConnections, cfg.HTTPMaxConnectionsPerIP = 100000, 100000
	m, err := New(cfg, Deps{Logger: discard()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	if err := m.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	addr := m.HTTPAddr().String()
	_, httpsPort, _ := net.SplitHostPort(m.HTTPSAddr().String())
	plain := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	for _, seed := range []string{
		"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n\r\n",
		"GET //evil.example/x HTTP/1.1\r\nHost: mta-sts.example.test\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
		"GET /.well-known/acme-challenge/token HTTP/1.1\r\nHost: mx.example.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: mx.example.test\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: MX.EXAMPLE.TEST.:80\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
		"EHLO mail.example.org\r\n",
		"GET http://mx.example.test@evil.example/ HTTP/1.1\r\nHost: mx.example.test\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(in)
		c.(*net.TCPConn).CloseWrite() // the server answers what it got, then sees the end
		br := bufio.NewReader(c)
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break // closed (or garbage in, nothing out)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusMovedPermanently:
				loc := resp.Header.Get("Location")
				ok := false
				for _, h := range []string{"mx.example.test", "mta-sts.example.test"} {
					ok = ok || strings.HasPrefix(loc, "https://"+h+":"+httpsPort+"/")
				}
				if !ok {
					t.Fatalf("redirect to %q", loc)
				}
			case resp.StatusCode < 400:
				t.Fatalf("status %d on port 80", resp.StatusCode)
			}
		}
		// Still serving.
		resp, err := plain.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("the server stopped answering: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("plain request: %d", resp.StatusCode)
		}
	})
}
