package e2e

import (
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// TestQuarantineCommands: a message refused for DMARC (p=reject, nothing
// aligned passes) gets 550 but the owner's copy is held; postie quarantine
// lists it, shows it, releases it into the mailbox with a note, and deletes
// another, while the server runs and when it does not.
func TestQuarantineCommands(t *testing.T) {
	for _, p := range []string{"swaks", "curl"} {
		testutil.Tool(t, p)
	}
	s := newServer(t, serverOptions{})
	alice := "alice@" + domain
	s.addUser(t, alice)
	s.dns.Add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject")
	send := func(subject string) {
		t.Helper()
		out, _ := exec.Command("swaks", "--server", s.smtp, "--from", "alerts@bank.example", "--to", alice,
			"--header", "From: Bank <alerts@bank.example>", "--header", "Subject: "+subject, "--body", "Your statement is ready.").CombinedOutput()
		if !strings.Contains(string(out), "<** 550 5.7.1") {
			t.Fatalf("a message failing DMARC p=reject was not refused:\n%s", out)
		}
	}
	send("statement")
	send("second statement")

	list := s.postie(t, "", "quarantine", "list")
	ids := regexp.MustCompile(`(?m)^([0-9a-f]{16})\s`).FindAllStringSubmatch(list, -1)
	if len(ids) != 2 || !strings.Contains(list, "statement") || !strings.Contains(list, "refused") || !strings.Contains(list, "DMARC") || !strings.Contains(list, "2 messages held") {
		t.Fatalf("quarantine list:\n%s", list)
	}
	first, second := ids[0][1], ids[1][1]
	if mine := s.postie(t, "", "quarantine", "list", alice); !strings.Contains(mine, first) {
		t.Errorf("alice's quarantine lacks %s:\n%s", first, mine)
	}
	show := s.postie(t, "", "quarantine", "show", first)
	if !strings.Contains(show, "Subject: statement") || !strings.Contains(show, "dmarc=fail") || !strings.Contains(show, "Your statement is ready.") {
		t.Errorf("quarantine show:\n%s", show)
	}
	if out := s.curlPOP3(t, alice, password, ""); strings.TrimSpace(out) != "" {
		t.Fatalf("a refused message is in the mailbox: %q", out)
	}
	if out := s.postie(t, "", "quarantine", "release", first); !strings.Contains(out, "released to "+alice) {
		t.Fatalf("release: %s", out)
	}
	got := s.curlPOP3(t, alice, password, "1")
	if !strings.Contains(got, "X-Postie-Released: ") || !strings.Contains(got, "Subject: statement") {
		t.Errorf("the released message:\n%s", got)
	}
	// Without a running server the commands open the spool themselves.
	if err := s.proc.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if out := s.postie(t, "", "quarantine", "del", second); !strings.Contains(out, "deleted") {
		t.Fatalf("del: %s", out)
	}
	if out := s.postie(t, "", "quarantine", "list"); !strings.Contains(out, "0 messages held") {
		t.Errorf("after release and del:\n%s", out)
	}
	out, err := exec.Command(postieBin, "quarantine", "show", "not-an-id", "-config", s.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a message id") {
		t.Errorf("show with a bad id: %v %s", err, out)
	}
}
