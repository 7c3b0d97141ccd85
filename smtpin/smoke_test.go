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
	// Our three header fields go on top; the message follows byte for
	// byte, its dot line unstuffed.
	stored := got[0]
	if !strings.HasPrefix(stored, "Return-Path: <a@sender.example>\r\nAuthentication-Results: mx.example.test;\r\n") {
		t.Fatalf("stored message does not start with our header fields:\n%s", stored)
	}
	head, _, _ := strings.Cut(stored, msg)
	if !strings.HasSuffix(stored, msg) || !strings.Contains(head, "Received: from ") || !strings.Contains(head, "Authentication-Results: mx.example.test;") {
		t.Fatalf("stored message is not Return-Path, Authentication-Results, Received and the message:\n%s", stored)
	}
	if lines := e.logs.find("message accepted", "spf=pass", "dkim=none", "dmarc=none", "code=250"); len(lines) != 1 {
		t.Fatalf("transaction log: %q", lines)
	}
}
