package pop3out

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// Tests with the real POP3 clients the owner may use (Debian packages,
// installed by .ci/run): curl, fetchmail, mpop, getmail6 and Python's
// poplib. A missing client fails the test. Each checks that the messages
// arrived byte for byte; clients that store mail with Unix line ends are
// compared after CRLF -> LF, the only change they are allowed.

// clientMessages are what the client tests fetch: the fixture and a
// larger message with 8-bit octets and dot lines.
func clientMessages() [][]byte {
	msgs := make([][]byte, 0, len(fixtureMessages)+1)
	for _, m := range fixtureMessages {
		msgs = append(msgs, []byte(m))
	}
	return append(msgs, makeMessage(300<<10, 3))
}

// newClientEnv is a server whose alice has clientMessages, and a
// directory with the test CA in ca.pem.
func newClientEnv(t *testing.T) (*env, string) {
	e := newEnv(t, envOptions{noFixture: true})
	for _, m := range clientMessages() {
		e.deliver(alice, m)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), e.ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return e, dir
}

// sameMessages compares what a client stored with what was delivered, as
// sets (clients may deliver in any order).
func sameMessages(t *testing.T, client string, got, want [][]byte, unixEOL bool) {
	t.Helper()
	w := make([]string, len(want))
	for i, m := range want {
		if unixEOL {
			m = bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n"))
		}
		w[i] = string(m)
	}
	g := make([]string, len(got))
	for i, m := range got {
		g[i] = string(m)
	}
	slices.Sort(w)
	slices.Sort(g)
	if len(g) != len(w) {
		t.Fatalf("%s stored %d messages, want %d", client, len(g), len(w))
	}
	for i := range w {
		if g[i] != w[i] {
			t.Fatalf("%s: message differs:\ngot  %d octets %q...\nwant %d octets %q...", client, len(g[i]), truncate(g[i], 200), len(w[i]), truncate(w[i], 200))
		}
	}
}

// headerEnded adds the empty line that ends a header section to messages
// that are all header, as fetchmail and getmail do when they store them.
func headerEnded(msgs [][]byte) [][]byte {
	for i, m := range msgs {
		if !bytes.Contains(m, []byte("\r\n\r\n")) {
			msgs[i] = append(m, '\r', '\n')
		}
	}
	return msgs
}

func TestClientCurl(t *testing.T) {
	t.Parallel()
	e, dir := newClientEnv(t)
	want := clientMessages()
	user := alice + ":" + password
	for _, base := range []string{
		"pop3://127.0.0.1:" + testutil.Port(e.addr),
		"pop3s://127.0.0.1:" + testutil.Port(e.tlsAddr),
	} {
		common := []string{"--silent", "--show-error", "--max-time", "60", "--cacert", filepath.Join(dir, "ca.pem"), "--user", user}
		// LIST
		list := testutil.Run(t, dir, nil, nil, "curl", append(common, base+"/")...)
		var wantList strings.Builder
		for i, m := range want {
			fmt.Fprintf(&wantList, "%d %d\r\n", i+1, len(m))
		}
		if string(list) != wantList.String() {
			t.Fatalf("curl %s LIST:\n%q\nwant\n%q", base, list, wantList.String())
		}
		// RETR, each message
		var got [][]byte
		for i := range want {
			got = append(got, testutil.Run(t, dir, nil, nil, "curl", append(common, fmt.Sprintf("%s/%d", base, i+1))...))
		}
		sameMessages(t, "curl "+base, got, want, false)
	}
	// DELE (curl sends QUIT afterwards, so it is applied).
	base := "pop3s://127.0.0.1:" + testutil.Port(e.tlsAddr)
	testutil.Run(t, dir, nil, nil, "curl", "--silent", "--show-error", "--cacert", filepath.Join(dir, "ca.pem"), "--user", user, "--request", "DELE", "--head", base+"/1")
	left := e.messages(alice)
	sameMessages(t, "spool after curl DELE", left, want[1:], false)
}

func TestClientFetchmail(t *testing.T) {
	t.Parallel()
	e, dir := newClientEnv(t)
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	// The MDA writes each message into a file of its own.
	mda := filepath.Join(dir, "mda.sh")
	if err := os.WriteFile(mda, []byte("#!/bin/sh\nexec cat > \"$(mktemp "+out+"/msg.XXXXXX)\"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	// Implicit TLS with certificate checks; everything fetched, then
	// deleted; no header added (invisible), none rewritten, CRs kept.
	rc := fmt.Sprintf(`set no syslog
set invisible
poll 127.0.0.1 with proto POP3 port %s
  user "%s" there with password "%s"
  options ssl sslcertck sslcommonname "%s" sslcertfile "%s" fetchall no keep no rewrite no stripcr
  mda "%s"
`, testutil.Port(e.tlsAddr), alice, password, tlsName, filepath.Join(dir, "ca.pem"), mda)
	rcFile := filepath.Join(dir, "fetchmailrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, dir, []string{"HOME=" + dir, "FETCHMAILHOME=" + dir}, nil, "fetchmail", "--fetchmailrc", rcFile, "--nodetach", "--nosyslog", "--verbose")
	// fetchmail, like getmail, completes a header-only message with the
	// empty line that ends a header section.
	sameMessages(t, "fetchmail", testutil.ReadFiles(t, out), headerEnded(clientMessages()), false)
	if n := len(e.messages(alice)); n != 0 {
		t.Fatalf("%d messages left on the server after fetchmail, want 0", n)
	}
}

func TestClientMpop(t *testing.T) {
	t.Parallel()
	e, dir := newClientEnv(t)
	maildir := filepath.Join(dir, "Maildir")
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(maildir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The plaintext port with STLS (required), pipelining as mpop does
	// when CAPA offers it, delivery into a Maildir.
	cfg := fmt.Sprintf(`defaults
account postie
host 127.0.0.1
port %s
user %s
password %s
tls on
tls_starttls on
tls_trust_file %s
auth user
delivery maildir %s
received_header off
uidls_file %s
`, testutil.Port(e.addr), alice, password, filepath.Join(dir, "ca.pem"), maildir, filepath.Join(dir, "uidls"))
	cfgFile := filepath.Join(dir, "mpoprc")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Twice leaving the mail on the server: thanks to stable UIDLs the
	// second run fetches nothing (docs/durability.md, UIDs and UIDLs). Then once more
	// deleting what was fetched.
	for _, keep := range []string{"--keep=on", "--keep=on", "--keep=off"} {
		testutil.Run(t, dir, []string{"HOME=" + dir}, nil, "mpop", "--file="+cfgFile, "--quiet", keep, "postie")
		sameMessages(t, "mpop "+keep, testutil.ReadFiles(t, maildir), clientMessages(), true)
	}
	if n := len(e.messages(alice)); n != 0 {
		t.Fatalf("%d messages left on the server after mpop, want 0", n)
	}
}

func TestClientGetmail(t *testing.T) {
	t.Parallel()
	e, dir := newClientEnv(t)
	maildir := filepath.Join(dir, "Maildir")
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(maildir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// getmail refuses to deliver as root; CI runs as root, so it
	// delivers as nobody there, into directories nobody may write.
	asUser := ""
	if os.Geteuid() == 0 {
		asUser = "user = nobody"
		for _, d := range []string{filepath.Dir(dir), dir} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		err := filepath.WalkDir(maildir, func(p string, _ os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Chmod(p, 0o777)
		})
		if err != nil {
			t.Fatal(err)
		}
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
read_all = true
delete = true
received = false
delivered_to = false
verbose = 0
`, testutil.Port(e.tlsAddr), alice, password, filepath.Join(dir, "ca.pem"), maildir, asUser)
	rcFile := filepath.Join(dir, "getmailrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, dir, []string{"HOME=" + dir}, nil, "getmail", "--getmaildir="+dir, "--rcfile="+rcFile)
	// getmail always writes a Return-Path header of its own first (from
	// the envelope sender POP3 does not carry); take it off again.
	got := testutil.ReadFiles(t, maildir)
	for i, m := range got {
		var found bool
		if got[i], found = bytes.CutPrefix(m, []byte("Return-Path: <unknown>\n")); !found {
			t.Fatalf("getmail stored %q..., without the Return-Path it adds", truncate(string(m), 100))
		}
	}
	// Python's email package, which getmail parses with, ends a message
	// that is all header with the empty line a header section ends with.
	sameMessages(t, "getmail", got, headerEnded(clientMessages()), true)
	if n := len(e.messages(alice)); n != 0 {
		t.Fatalf("%d messages left on the server after getmail, want 0", n)
	}
}

// poplibScript fetches every message with Python's poplib, over implicit
// TLS or STLS, writes each to OUT/N, checks that UIDL matches between two
// sessions, and deletes everything.
const poplibScript = `
import os, poplib, ssl, sys
mode, host, port, user, password, cafile, out = sys.argv[1:]
ctx = ssl.create_default_context(cafile=cafile)
def connect():
    if mode == "ssl":
        p = poplib.POP3_SSL(host, int(port), context=ctx)
    else:
        p = poplib.POP3(host, int(port))
        p.stls(context=ctx)
    p.user(user)
    p.pass_(password)
    return p
p = connect()
caps = p.capa()
assert "UIDL" in caps and "PIPELINING" in caps, caps
uidls = p.uidl()[1]
p.quit()
p = connect()
assert p.uidl()[1] == uidls, "UIDL changed between sessions"
count, size = p.stat()
total = 0
for i in range(1, count + 1):
    resp, lines, octets = p.retr(i)
    body = b"\r\n".join(lines) + b"\r\n"
    total += len(body)
    with open(os.path.join(out, str(i)), "wb") as f:
        f.write(body)
    p.dele(i)
assert total == size, (total, size)
p.quit()
`

func TestClientPoplib(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"ssl", "stls"} {
		t.Run(mode, func(t *testing.T) {
			e, dir := newClientEnv(t)
			out := filepath.Join(dir, "out")
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			addr := e.tlsAddr
			if mode == "stls" {
				addr = e.addr
			}
			testutil.Run(t, dir, nil, nil, "python3", "-c", poplibScript, mode, "127.0.0.1", testutil.Port(addr), alice, password, filepath.Join(dir, "ca.pem"), out)
			sameMessages(t, "poplib "+mode, testutil.ReadFiles(t, out), clientMessages(), false)
			if n := len(e.messages(alice)); n != 0 {
				t.Fatalf("%d messages left on the server after poplib, want 0", n)
			}
		})
	}
}
