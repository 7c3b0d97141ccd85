package smtpin

import (
	"strings"
	"testing"
)

func TestDeliverOne(t *testing.T) {
	e := newEnv(t)
	c := e.dial()
	c.hello()
	msg := crlf("From: a@sender.example\nTo: alice@example.test\nSubject: hi\n\nHello\n.dot line\n")
	if got := c.deliver("a@sender.example", msg, alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA: %q", got)
	}
	c.expect("221 ", "QUIT")
	got := e.messages(alice)
	if len(got) != 1 {
		t.Fatalf("%d messages", len(got))
	}
	t.Logf("%s", got[0])
	t.Log(strings.Join(e.logs.find(""), "\n"))
}
