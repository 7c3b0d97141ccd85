package smtpin

import (
	"slices"
	"strings"
	"testing"
)

// TestReload: a reloaded configuration applies to sessions that start
// after it; sessions in flight keep theirs.
func TestReload(t *testing.T) {
	e := newEnv(t)
	old := e.dial()
	old.hello()

	cfg := e.cfg
	cfg.Domains = append([]string{"new.test"}, cfg.Domains...)
	cfg.Aliases = map[string][]string{"hello@new.test": {bob}}
	cfg.MaxRecipients = 150
	cfg.Listen = []string{"127.0.0.1:2525"}
	rep, err := e.srv.Reload(cfg)
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if !slices.Equal(rep.Changed, []string{"smtp.listen", "smtp.max_recipients"}) || !slices.Equal(rep.Restart, []string{"smtp.listen"}) {
		t.Errorf("report: %+v, want max_recipients and listen changed, listen needing a restart", rep)
	}

	old.expect("250 ", "MAIL FROM:<a@sender.example>")
	old.expect("550 5.7.1 ", "RCPT TO:<hello@new.test>")

	c := e.dial()
	c.line()
	c.send("EHLO client.example")
	var last string
	for last = c.line(); last[3] == '-'; last = c.line() {
	}
	if last != "250 LIMITS RCPTMAX=150" {
		t.Errorf("last EHLO line after reload: %q", last)
	}
	if got := c.deliver("a@sender.example", crlf("Subject: new domain\n\nbody\n"), "hello@new.test"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA: %q", got)
	}
	// The alias of the old config is gone.
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	c.expect("550 5.1.1 ", "RCPT TO:<team@example.test>")
	if n := len(e.messages(bob)); n != 1 {
		t.Errorf("bob has %d messages, want 1", n)
	}

	bad := cfg
	bad.MaxRecipients = 5
	if _, err := e.srv.Reload(bad); err == nil || !strings.Contains(err.Error(), "smtp.max_recipients") {
		t.Errorf("Reload of a bad config: %v", err)
	}
	again := e.dial()
	again.hello()
	again.expect("250 ", "MAIL FROM:<a@sender.example>")
	again.expect("250 ", "RCPT TO:<hello@new.test>")
}
