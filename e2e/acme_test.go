package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// TestACMECertificateOnTheMailPorts runs postie serve in acme mode against
// Let's Encrypt's Pebble on loopback. Postie answers the HTTP-01 challenge
// on its HTTP listener, and then real clients check the chain against
// Pebble's root and the host name: curl over POP3S, swaks and OpenSSL over
// SMTP STARTTLS (OpenSSL also without SNI, as Postfix connects), and
// OpenSSL over POP3 STLS.
func TestACMECertificateOnTheMailPorts(t *testing.T) {
	for _, p := range []string{"curl", "swaks", "openssl"} {
		testutil.Tool(t, p)
	}
	dir := t.TempDir()
	dns := testutil.NewDNSServer(t)
	dns.Add(hostname, "A", "127.0.0.1")
	httpPort := testutil.FreePort(t)
	pb := testutil.NewPebble(t, dns, testutil.PebbleOptions{HTTPPort: httpPort})
	pb.Start()

	smtp := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	pop3 := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	pop3s := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	cfg := fmt.Sprintf(`hostname = %q
domains = [%q]
data_dir = %q

[dns]
resolver = %q

[smtp]
listen = [%q]

[pop3]
listen = [%q]
listen_tls = [%q]
plaintext_login_networks = []

[tls]
mode = "acme"
acme_directory = %q
acme_ca_root = %q
agree_terms = true
http_listen = "127.0.0.1:%d"
https_listen = ""
`, hostname, domain, filepath.Join(dir, "data"), dns.Addr, smtp, pop3, pop3s, pb.URL(), pb.CARootFile, httpPort)
	config := filepath.Join(dir, "postie.toml")
	os.WriteFile(config, []byte(cfg), 0o600)
	p := start(t, dir, "serve", "-config", config)
	waitPort(t, pop3s, p)
	run(t, dir, nil, strings.NewReader(password+"\n"), postieBin, "user", "add", "alice@"+domain, "-config", config)

	root := filepath.Join(dir, "pebble-root.pem")
	os.WriteFile(root, pb.RootPEM(), 0o644)
	// Wait for the certificate: until then 995 fails the handshake.
	testutil.WaitFor(t, 60*time.Second, "a certificate from Pebble", func() bool {
		return strings.Contains(p.logs(), "certificate obtained") || strings.Contains(p.logs(), "certificate loaded")
	})

	// POP3S: curl checks the chain and the name (--resolve keeps the name).
	list := run(t, dir, nil, nil, "curl", "--silent", "--show-error", "--max-time", "20", "--cacert", root,
		"--resolve", fmt.Sprintf("%s:%s:127.0.0.1", hostname, testutil.Port(pop3s)),
		"--user", "alice@"+domain+":"+password, fmt.Sprintf("pop3s://%s:%s/", hostname, testutil.Port(pop3s)))
	if strings.TrimSpace(list) != "" { // curl prints an empty listing as a bare CRLF
		t.Fatalf("LIST of an empty mailbox: %q", list)
	}
	// SMTP STARTTLS: swaks verifies the chain and delivers.
	out := run(t, dir, nil, nil, "swaks", "--server", smtp, "--tls", "--tls-verify", "--tls-ca-path", root, "--tls-sni", hostname,
		"--from", "someone@elsewhere.test", "--to", "alice@"+domain)
	if !strings.Contains(out, "250 2.0.0") {
		t.Fatalf("swaks over verified STARTTLS: %s", out)
	}
	// OpenSSL checks the name too, with SNI and without (Postfix sends none).
	for _, c := range []struct {
		what string
		args []string
	}{
		{"smtp with SNI", []string{"-starttls", "smtp", "-connect", smtp, "-servername", hostname}},
		{"smtp without SNI", []string{"-starttls", "smtp", "-connect", smtp, "-noservername"}},
		{"pop3 STLS", []string{"-starttls", "pop3", "-connect", pop3, "-servername", hostname}},
		{"pop3s without SNI", []string{"-connect", pop3s, "-noservername"}},
	} {
		args := append([]string{"s_client", "-CAfile", root, "-verify_hostname", hostname, "-verify_return_error", "-brief"}, c.args...)
		// With -verify_return_error, openssl exits non-zero (and run fails
		// the test) unless the chain and the name verify.
		run(t, dir, nil, strings.NewReader("QUIT\r\n"), "openssl", args...)
	}
	// And a client that does not trust Pebble is refused.
	if err := runErr(dir, "openssl", "s_client", "-CAfile", "/dev/null", "-verify_return_error", "-brief", "-connect", pop3s); err == nil {
		t.Fatal("a client without Pebble's root accepted the certificate")
	}
}
