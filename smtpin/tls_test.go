package smtpin

import (
	"bufio"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ehloHasStartTLS says EHLO on a new connection and reports whether
// STARTTLS is offered.
func ehloHasStartTLS(t *testing.T, c *client) bool {
	t.Helper()
	c.line()
	c.send("EHLO client.example")
	found := false
	for {
		l := c.line()
		if strings.HasSuffix(l, "STARTTLS") {
			found = true
		}
		if len(l) < 4 || l[3] != '-' {
			return found
		}
	}
}

// TestTLSReadiness: without a certificate yet, SMTP takes mail without
// offering STARTTLS; once one is ready, new sessions are offered it.
func TestTLSReadiness(t *testing.T) {
	e := newEnv(t)
	e.tlsReady.set(false)
	early := e.dial()
	if ehloHasStartTLS(t, early) {
		t.Fatal("STARTTLS offered with no certificate ready")
	}
	early.expect("502 5.5.1 ", "STARTTLS")
	if got := early.deliver("a@sender.example", crlf("Subject: plain\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA without TLS: %q", got)
	}

	e.tlsReady.set(true)
	late := e.dial()
	if !ehloHasStartTLS(t, late) {
		t.Fatal("STARTTLS not offered once the certificate is ready")
	}
	late.starttls(e.ca.ClientConfig(testHost))
	if got := late.deliver("a@sender.example", crlf("Subject: secure\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA over TLS: %q", got)
	}
	// The session that started without a certificate keeps its view.
	early.send("EHLO client.example")
	for {
		l := early.line()
		if strings.HasSuffix(l, "STARTTLS") {
			t.Error("an established session changed its capabilities")
		}
		if l[3] != '-' {
			break
		}
	}

	msgs := e.messages(alice)
	if len(msgs) != 2 {
		t.Fatalf("%d messages", len(msgs))
	}
	if rcv := header(t, msgs[0], "Received"); !strings.Contains(rcv, " with ESMTP id ") && !strings.Contains(rcv, "with ESMTP ") {
		t.Errorf("plaintext Received: %q", rcv)
	}
	rcv := header(t, msgs[1], "Received")
	if !strings.Contains(rcv, "with ESMTPS (TLS1.3 TLS_") {
		t.Errorf("Received of a TLS session lacks the version and cipher: %q", rcv)
	}
}

// TestNoTLSConfig: a server given no TLS configuration never offers
// STARTTLS.
func TestNoTLSConfig(t *testing.T) {
	e := newEnv(t, func(_ *Config, d *Deps) { d.TLS, d.TLSReady = nil, nil })
	c := e.dial()
	if ehloHasStartTLS(t, c) {
		t.Fatal("STARTTLS offered without a TLS configuration")
	}
}

// TestTLS12: an older client still gets in, and the Received field says
// what it used.
func TestTLS12(t *testing.T) {
	e := newEnv(t)
	c := e.dial()
	c.hello()
	cfg := e.ca.ClientConfig(testHost)
	cfg.MaxVersion = tls.VersionTLS12
	c.starttls(cfg)
	if got := c.deliver("a@sender.example", crlf("Subject: tls12\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA: %q", got)
	}
	if rcv := header(t, e.messages(alice)[0], "Received"); !strings.Contains(rcv, "with ESMTPS (TLS1.2 TLS_ECDHE_") {
		t.Errorf("Received: %q", rcv)
	}
}

// TestSwaks delivers with swaks, a real SMTP client, through STARTTLS, and
// checks the bytes stored.
func TestSwaks(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatalf("swaks is needed (Debian package swaks): %v", err)
	}
	e := newEnv(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, e.ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	body := "Hello from swaks.\n.A line that starts with a dot.\n..and two.\nBye."
	cmd := exec.Command(swaks,
		"--server", e.addr, "--tls", "--tls-verify", "--tls-ca-path", caFile, "--tls-sni", testHost,
		"--helo", "client.example", "--from", "a@sender.example", "--to", "alice+swaks@example.test",
		"--header", "Subject: from swaks", "--header", "From: a@sender.example", "--body", body,
		"--timeout", "20")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "<~  250 2.0.0 Message stored as ") {
		t.Errorf("swaks transcript has no 250 over TLS:\n%s", out)
	}
	msgs := e.messages(alice)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored", len(msgs))
	}
	m := msgs[0]
	for _, want := range []string{
		"Subject: from swaks\r\n",
		"\r\n\r\nHello from swaks.\r\n.A line that starts with a dot.\r\n..and two.\r\nBye.\r\n",
		"spf=pass smtp.mailfrom=a@sender.example",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("stored message lacks %q:\n%s", want, m)
		}
	}
	if rcv := header(t, m, "Received"); !strings.Contains(rcv, "from client.example ([127.0.0.1])") || !strings.Contains(rcv, "with ESMTPS (TLS1.") || !strings.Contains(rcv, "for <alice+swaks@example.test>") {
		t.Errorf("Received: %q", rcv)
	}
	if strings.Contains(m, "\n\n") || strings.Contains(strings.ReplaceAll(m, "\r\n", ""), "\n") {
		t.Errorf("stored message has bare line feeds: %q", m)
	}
}

func TestAddressLiteral(t *testing.T) {
	for in, want := range map[string]string{"192.0.2.1": "[192.0.2.1]", "2001:db8::1": "[IPv6:2001:db8::1]", "::1": "[IPv6:::1]"} {
		if got := addressLiteral(in); got != want {
			t.Errorf("addressLiteral(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestIPv6Client: a client on IPv6 gets an IPv6 address literal in
// Received and its SPF checked against ip6: mechanisms.
func TestIPv6Client(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback: %v", err)
	}
	go e.srv.Serve(l)
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, conn: conn, r: bufio.NewReader(conn)}
	defer conn.Close()
	c.hello()
	if got := c.deliver("a@sender.example", crlf("From: a@sender.example\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA: %q", got)
	}
	m := e.messages(alice)[0]
	if rcv := header(t, m, "Received"); !strings.Contains(rcv, "from client.example ([IPv6:::1])") {
		t.Errorf("Received: %q", rcv)
	}
	if ar := header(t, m, "Authentication-Results"); !strings.Contains(ar, "spf=pass") {
		t.Errorf("Authentication-Results: %q", ar)
	}
}
