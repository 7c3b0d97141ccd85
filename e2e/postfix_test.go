package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
)

// postfix is a private Postfix instance on loopback that relays mail for
// example.test to Postie and nothing else.
type postfix struct {
	conf, smtp string
}

// startPostfix runs Postfix with its own config, queue and log directories
// under dir; its smtpd listens on a free loopback port and hands mail for
// example.test to Postie's SMTP address over opportunistic STARTTLS.
func startPostfix(t *testing.T, dir, postieSMTP string) *postfix {
	t.Helper()
	bin := testutil.Tool(t, "postfix")
	if _, err := user.Lookup("postfix"); err != nil {
		t.Fatalf("the postfix user is missing (the postfix package makes it): %v", err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("running Postfix needs root (CI runs as root)")
	}
	// Postfix's daemons run as the postfix user, which must be able to
	// reach its directories through the test's 0700 temporary ones.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "postfix-etc")
	queue := filepath.Join(dir, "postfix-queue")
	data := filepath.Join(dir, "postfix-data")
	for _, d := range []string{conf, queue, data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "postfix", data).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	pf := &postfix{conf: conf, smtp: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))}
	main := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %s
data_directory = %s
mail_owner = postfix
setgid_group = postdrop
maillog_file = %s
maillog_file_prefixes = %s
myhostname = mx.sender.test
mydomain = sender.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relay_domains = %s
transport_maps = texthash:%s/transport
default_transport = error:this test instance only relays to Postie
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtp_tls_security_level = may
smtp_tls_loglevel = 1
alias_maps =
alias_database =
notify_classes =
biff = no
`, queue, data, filepath.Join(dir, "postfix.log"), dir, domain, conf)
	master := fmt.Sprintf(`%s inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, pf.smtp)
	transport := fmt.Sprintf("%s smtp:[127.0.0.1]:%s\n", domain, testutil.Port(postieSMTP))
	for name, content := range map[string]string{"main.cf": main, "master.cf": master, "transport": transport} {
		if err := os.WriteFile(filepath.Join(conf, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(bin, "-c", conf, "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "postfix.log"))
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, log)
	}
	t.Cleanup(func() {
		exec.Command(bin, "-c", conf, "stop").Run()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "postfix.log"))
			t.Logf("postfix log:\n%s", log)
		}
	})
	waitPort(t, pf.smtp, nil)
	return pf
}

// dkimKey makes an RSA key, writes it for dkimsign and returns the DNS
// record that publishes its public half.
func dkimKey(t *testing.T, dir string) (keyFile, record string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile = filepath.Join(dir, "dkim.key")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	return keyFile, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub)
}

// TestPostfixDKIMToRealClients is the whole flow with real programs: a
// message DKIM-signed by python3-dkim's dkimsign goes into a real Postfix,
// which relays it to Postie over STARTTLS; Postie checks SPF, DKIM and
// DMARC against the test's DNS server and stores it for three accounts;
// fetchmail, getmail6 and mpop each fetch one copy. The headers Postie
// added are checked, and the signed message must arrive byte for byte
// below them. The metrics scraped before and after must have moved.
func TestPostfixDKIMToRealClients(t *testing.T) {
	for _, p := range []string{"swaks", "dkimsign", "fetchmail", "getmail", "mpop", "curl"} {
		testutil.Tool(t, p)
	}
	s := newServer(t, serverOptions{})
	accounts := []string{"alice@" + domain, "bob@" + domain, "carol@" + domain}
	for _, a := range accounts {
		s.addUser(t, a)
	}
	// The sender's domain, as the internet would publish it.
	keyFile, dkimRecord := dkimKey(t, s.dir)
	s.dns.Add("sel._domainkey.sender.test", "TXT", dkimRecord)
	s.dns.Add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
	s.dns.Add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
	s.dns.Add("mx.sender.test", "A", "127.0.0.1")
	s.dns.Add("mx.sender.test", "TXT", "v=spf1 a -all")

	before := s.scrape(t)
	pf := startPostfix(t, s.dir, s.smtp)

	// The message: 8-bit text, a line that is only a dot, a long line.
	body := "Hello from Postfix.\r\n.\r\n..leading dots\r\nGr\xc3\xbc\xc3\x9fe, caf\xc3\xa9.\r\n" + strings.Repeat("x", 990) + "\r\nThe end.\r\n"
	raw := "From: Sender <sender@sender.test>\r\nTo: " + strings.Join(accounts, ", ") + "\r\nSubject: end to end\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\nMessage-ID: <e2e-1@sender.test>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
	signed := run(t, s.dir, nil, strings.NewReader(raw), "dkimsign", "sel", "sender.test", keyFile, "--hcanon", "relaxed", "--bcanon", "simple")
	if !strings.HasPrefix(signed, "DKIM-Signature:") {
		t.Fatalf("dkimsign did not sign:\n%s", signed)
	}
	// dkimsign keeps the message's line endings; the wire needs CRLF.
	signed = strings.ReplaceAll(strings.ReplaceAll(signed, "\r\n", "\n"), "\n", "\r\n")
	msgFile := filepath.Join(s.dir, "signed.eml")
	// swaks ends the data with CRLF . CRLF after whatever the file holds,
	// so the file leaves out the message's last CRLF.
	os.WriteFile(msgFile, []byte(strings.TrimSuffix(signed, "\r\n")), 0o600)
	args := []string{"--server", pf.smtp, "--from", "sender@sender.test", "--data", msgFile, "--helo", "client.sender.test", "--to", strings.Join(accounts, ",")}
	if out := run(t, s.dir, nil, nil, "swaks", args...); !strings.Contains(out, "250 2.0.0 Ok: queued") {
		t.Fatalf("Postfix did not take the message:\n%s", out)
	}

	// Wait until Postfix has handed it to Postie.
	s.proc.waitLog(t, "message accepted")

	// Fetch each copy with a different client.
	got := map[string][]byte{
		"fetchmail": onlyOne(t, "fetchmail", fetchmail(t, s, accounts[0], password)),
		"getmail":   onlyOne(t, "getmail", getmail(t, s, accounts[1], password)),
		"mpop":      onlyOne(t, "mpop", mpop(t, s, accounts[2], password)),
	}
	signedLF := strings.ReplaceAll(signed, "\r\n", "\n")
	for client, msg := range got {
		m := strings.ReplaceAll(string(msg), "\r\n", "\n") // mpop and getmail store LF
		header, _, _ := strings.Cut(m, "\n\n")
		for _, want := range []string{
			"Authentication-Results: " + hostname + ";",
			"dkim=pass", "header.d=sender.test",
			"spf=pass", "smtp.mailfrom=sender@sender.test",
			"dmarc=pass", "header.from=sender.test",
			"by " + hostname, "with ESMTPS (TLS1.",
		} {
			if !strings.Contains(header, want) {
				t.Errorf("%s: the header lacks %q:\n%s", client, want, header)
			}
		}
		// Below Postie's and Postfix's trace fields, the signed message is
		// intact, byte for byte.
		if !strings.HasSuffix(m, signedLF) {
			t.Errorf("%s: the message is not the signed message below the added fields:\n%q\nwant suffix\n%q", client, m, signedLF)
		}
	}

	// The metrics moved with what happened.
	after := s.scrape(t)
	for _, c := range []struct {
		metric string
		delta  float64
	}{
		{`postie_smtp_messages_total{reason="",result="accepted"}`, 1},
		{`postie_smtp_verdicts_total{check="dkim",result="pass"}`, 1},
		{`postie_smtp_verdicts_total{check="spf",result="pass"}`, 1},
		{`postie_smtp_verdicts_total{check="dmarc",result="pass"}`, 1},
		{`postie_pop3_logins_total{result="ok"}`, 3},
		{`postie_pop3_messages_total{op="retrieved"}`, 3},
		{`postie_pop3_messages_total{op="deleted"}`, 3},
		{`postie_accounts`, 0},
	} {
		b, _ := strconv.ParseFloat(before[c.metric], 64)
		a, err := strconv.ParseFloat(after[c.metric], 64)
		if err != nil {
			t.Errorf("metric %s missing after the run", c.metric)
			continue
		}
		if a-b != c.delta {
			t.Errorf("metric %s went from %v to %v, want +%v", c.metric, b, a, c.delta)
		}
	}
	if v := after["postie_spool_messages"]; v != "0" {
		t.Errorf("postie_spool_messages = %s after every copy was deleted, want 0", v)
	}
	if v, _ := strconv.ParseFloat(after["postie_smtp_received_bytes_total"], 64); v < float64(len(signed)) {
		t.Errorf("postie_smtp_received_bytes_total = %v, want at least %d", v, len(signed))
	}
}

// fetchmail fetches all of addr's mail over POP3S and deletes it; it
// returns the messages it got.
func fetchmail(t *testing.T, s *server, addr, pass string) [][]byte {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o700)
	mda := filepath.Join(dir, "mda.sh")
	os.WriteFile(mda, []byte("#!/bin/sh\nexec cat > \"$(mktemp "+out+"/msg.XXXXXX)\"\n"), 0o700)
	rc := fmt.Sprintf(`set no syslog
set invisible
poll 127.0.0.1 with proto POP3 port %s
  user "%s" there with password "%s"
  options ssl sslcertck sslcommonname "%s" sslcertfile "%s" fetchall no keep no rewrite no stripcr
  mda "%s"
`, testutil.Port(s.pop3s), addr, pass, hostname, s.caFile, mda)
	rcFile := filepath.Join(dir, "fetchmailrc")
	os.WriteFile(rcFile, []byte(rc), 0o600)
	// fetchmail exits 1 when there is no mail: that is an answer here.
	cmd := exec.Command(testutil.Tool(t, "fetchmail"), "--fetchmailrc", rcFile, "--nodetach", "--nosyslog")
	cmd.Dir, cmd.Env = dir, append(os.Environ(), "HOME="+dir, "FETCHMAILHOME="+dir)
	if outb, err := cmd.CombinedOutput(); err != nil && !strings.Contains(string(outb), "No mail for") {
		t.Fatalf("fetchmail: %v\n%s", err, outb)
	}
	return testutil.ReadFiles(t, out)
}

// getmail fetches addr's mail into a Maildir over POP3S and deletes it.
func getmail(t *testing.T, s *server, addr, pass string) [][]byte {
	t.Helper()
	dir := t.TempDir()
	md := filepath.Join(dir, "Maildir")
	for _, sub := range []string{"cur", "new", "tmp"} {
		os.MkdirAll(filepath.Join(md, sub), 0o700)
	}
	// getmail refuses to deliver as root; CI runs as root, so there it
	// delivers as nobody, into directories nobody may write.
	asUser := ""
	if os.Geteuid() == 0 {
		asUser = "user = nobody"
		for _, d := range []string{filepath.Dir(dir), dir} {
			os.Chmod(d, 0o755)
		}
		filepath.WalkDir(md, func(p string, _ os.DirEntry, err error) error {
			if err == nil {
				err = os.Chmod(p, 0o777)
			}
			return err
		})
	}
	rc := fmt.Sprintf(`[retriever]
type = SimplePOP3SSLRetriever
server = 127.0.0.1
port = %s
username = %s
password = %s
ca_certs = %s

[destination]
type = Maildir
path = %s/
%s

[options]
delete = true
read_all = true
delivered_to = false
received = false
`, testutil.Port(s.pop3s), addr, pass, s.caFile, md, asUser)
	rcFile := filepath.Join(dir, "getmailrc")
	os.WriteFile(rcFile, []byte(rc), 0o600)
	run(t, dir, []string{"HOME=" + dir}, nil, "getmail", "--getmaildir", dir, "--rcfile", rcFile, "--quiet")
	return testutil.ReadFiles(t, md)
}

// mpop fetches addr's mail over the plaintext port with STLS into a
// Maildir and deletes it.
func mpop(t *testing.T, s *server, addr, pass string) [][]byte {
	t.Helper()
	return mpopIn(t, s, t.TempDir(), addr, pass)
}

// mpopIn is mpop with its state (the UIDL file) kept in dir across runs.
func mpopIn(t *testing.T, s *server, dir, addr, pass string) [][]byte {
	t.Helper()
	md := filepath.Join(dir, "Maildir")
	os.RemoveAll(md)
	for _, sub := range []string{"cur", "new", "tmp"} {
		os.MkdirAll(filepath.Join(md, sub), 0o700)
	}
	cfg := fmt.Sprintf(`defaults
account postie
host 127.0.0.1
port %s
user %s
password %s
tls on
tls_starttls on
tls_trust_file %s
tls_host_override %s
auth user
delivery maildir %s
keep off
received_header off
uidls_file %s
`, testutil.Port(s.pop3), addr, pass, s.caFile, hostname, md, filepath.Join(dir, "uidls"))
	cfgFile := filepath.Join(dir, "mpoprc")
	os.WriteFile(cfgFile, []byte(cfg), 0o600)
	run(t, dir, []string{"HOME=" + dir}, nil, "mpop", "--file="+cfgFile, "--quiet", "postie")
	return testutil.ReadFiles(t, md)
}

// onlyOne returns the one message a client stored.
func onlyOne(t *testing.T, client string, msgs [][]byte) []byte {
	t.Helper()
	if len(msgs) != 1 {
		t.Fatalf("%s stored %d messages, want 1", client, len(msgs))
	}
	return bytes.Clone(msgs[0])
}
