package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// TestStatus runs "postie status" against a live server that has received
// one message, refused another and been fetched by one device, then again
// with the server stopped (from the spool file).
func TestStatus(t *testing.T) {
	testutil.Tool(t, "curl")
	testutil.Tool(t, "swaks")
	s := newServer(t, serverOptions{})
	alice, bob := "alice@"+domain, "bob@"+domain
	s.addUser(t, alice)
	s.addUser(t, bob)
	s.postie(t, "", "user", "quota", bob, "1MB")
	out := s.postie(t, "", "device", "add", alice, "phone")
	s.sendMail(t, alice, "hello")
	// A refusal: an unknown recipient (swaks fails, as it should).
	if err := exec.Command("swaks", "--server", s.smtp, "--from", "friend@elsewhere.test", "--to", "nobody@"+domain).Run(); err == nil {
		t.Fatal("mail to an unknown user was accepted")
	}
	if got := s.curlPOP3(t, alice, password, "1"); !strings.Contains(got, "Subject: hello") {
		t.Fatalf("fetch: %s (device add said %s)", got, out)
	}

	out = s.postie(t, "", "status")
	t.Logf("postie status:\n%s", out)
	for _, want := range []string{
		"running since",
		"Accounts (2)",
		alice + "  ", "1 message ", "from 127.0.0.1",
		"account password", "device phone",
		bob, "0% of 976.6 KiB", "never",
		"Mail since the server started", "counted in memory",
		"received  1 message\n",
		"refused   1 time: unknown_user 1",
		hostname + ": expires in 89 days", "served now",
		"Watchdog", "nothing needs attention",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("postie status lacks %q", want)
		}
	}
	// The phone was added before the mail came, and has not fetched it.
	if line := lineWith(out, "device phone"); !strings.Contains(line, "1 message waiting") || !strings.HasSuffix(line, "never") {
		t.Errorf("the phone's line: %q", line)
	}

	if err := s.proc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("serve exited with %v", err)
	}
	out = s.postie(t, "", "status")
	t.Logf("postie status without a server:\n%s", out)
	for _, want := range []string{
		"no server running; shown from the spool file",
		alice, "1 message ", "device phone", bob,
		"only the running server counts them",
		hostname + ": expires in 89 days", "from " + filepath.Join(s.dir, "tls"),
		"nothing needs attention",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("postie status without a server lacks %q", want)
		}
	}
}

// lineWith returns the first line of out that contains s.
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
