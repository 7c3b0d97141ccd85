package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// TestFail2banFilterOnRealLogLines makes a real server log failed POP3
// logins, an unknown-recipient probe and a relay attempt beside successful
// deliveries and logins, then runs fail2ban's own fail2ban-regex with the
// filter in contrib/fail2ban over that log: every failure must match, with
// the client's address, and nothing else may. In text and in JSON.
func TestFail2banFilterOnRealLogLines(t *testing.T) {
	regex := testutil.Tool(t, "fail2ban-regex")
	testutil.Tool(t, "swaks")
	testutil.Tool(t, "curl")
	filter, err := filepath.Abs("../contrib/fail2ban/filter.d/postie.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			s := newServer(t, serverOptions{logFormat: format})
			alice := "alice@" + domain
			s.addUser(t, alice)
			// Successes: none of these may match.
			s.sendMail(t, alice, "hello")
			s.curlPOP3(t, alice, password, "")
			// Failures: two wrong passwords, an unknown user, a relay try.
			for i := 0; i < 2; i++ {
				if !s.curlFails(alice, "not the password") {
					t.Fatal("a wrong password logged in")
				}
			}
			for _, to := range []string{"nobody@" + domain, "victim@elsewhere.test"} {
				out, _ := exec.Command("swaks", "--server", s.smtp, "--from", "probe@elsewhere.test", "--to", to).CombinedOutput()
				if !strings.Contains(string(out), "550 5.") {
					t.Fatalf("swaks to %s was not refused: %s", to, out)
				}
			}
			logFile := filepath.Join(s.dir, "postie.log")
			s.proc.waitLog(t, "recipient refused")
			os.WriteFile(logFile, []byte(s.proc.logs()), 0o600)
			out := run(t, s.dir, nil, nil, regex, "--print-all-matched", logFile, filter)
			m := regexp.MustCompile(`Lines: (\d+) lines, (\d+) ignored, (\d+) matched`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("fail2ban-regex said:\n%s", out)
			}
			if m[3] != "4" {
				t.Fatalf("%s lines matched, want 4 (2 failed logins, an unknown recipient, a relay attempt):\n%s", m[3], out)
			}
			matched := out[strings.Index(out, "Matched line(s):"):]
			for _, want := range []string{"pop3 login failed", "unknown recipient", "recipient refused"} {
				if !strings.Contains(matched, want) {
					t.Errorf("no %q line matched:\n%s", want, matched)
				}
			}
			for _, bad := range []string{"message accepted", "pop3 login\"", "pop3 session"} {
				if strings.Contains(matched, bad) {
					t.Errorf("a %q line matched:\n%s", bad, matched)
				}
			}
		})
	}
}
