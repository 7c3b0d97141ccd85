package smtpin

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

const shuttingDown = "421 4.3.2 mx.example.test Service shutting down, please try again later, closing connection"

// TestShutdownIdle: sessions waiting for a command, in plaintext and in
// TLS, are told 421 at once, and Shutdown returns when they are gone.
func TestShutdownIdle(t *testing.T) {
	e := newEnv(t)
	plain := e.dial()
	plain.hello()
	secure := e.dial()
	secure.hello()
	secure.starttls(e.ca.ClientConfig(testHost))
	fresh := e.dial()
	fresh.line()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for name, c := range map[string]*client{"plaintext": plain, "TLS": secure, "before EHLO": fresh} {
		if got := c.line(); got != shuttingDown {
			t.Errorf("%s session: %q, want %q", name, got, shuttingDown)
		}
		if !c.closed() {
			t.Errorf("%s session left open", name)
		}
	}
	if c, err := net.DialTimeout("tcp", e.addr, time.Second); err == nil {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, _ := c.Read(make([]byte, 1)); n > 0 {
			t.Error("a connection was served after Shutdown")
		}
		c.Close()
	}
}

// TestShutdownLetsDataFinish: a message being sent when Shutdown starts is
// received and stored; the session ends at its next command.
func TestShutdownLetsDataFinish(t *testing.T) {
	e := newEnv(t)
	c := e.dial()
	c.hello()
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	c.expect("250 ", "RCPT TO:<alice@example.test>")
	c.expect("354 ", "DATA")
	c.raw("Subject: in flight\r\n\r\nfirst half\r\n")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- e.srv.Shutdown(ctx)
	}()
	// Wait until Shutdown has asked the session to end.
	for deadline := time.Now().Add(10 * time.Second); !allDraining(e.srv); {
		if time.Now().After(deadline) {
			t.Fatal("Shutdown never asked the session to end")
		}
		time.Sleep(time.Millisecond)
	}
	c.raw("second half\r\n.\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("end of DATA during shutdown: %q", got)
	}
	if got := c.cmd("NOOP"); got != shuttingDown {
		t.Fatalf("next command: %q, want %q", got, shuttingDown)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	msgs := e.messages(alice)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "first half\r\nsecond half\r\n") {
		t.Fatalf("stored %q", msgs)
	}
}

// TestShutdownDeadline: a session that does not finish in time is ended,
// its message is not stored, and Shutdown says the deadline passed.
func TestShutdownDeadline(t *testing.T) {
	e := newEnv(t)
	c := e.dial()
	c.hello()
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	c.expect("250 ", "RCPT TO:<alice@example.test>")
	c.expect("354 ", "DATA")
	c.raw("Subject: never finished\r\n\r\nhalf\r\n")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the context's deadline", err)
	}
	if got := c.line(); got != shuttingDown {
		t.Errorf("stuck session: %q, want %q", got, shuttingDown)
	}
	if !c.closed() {
		t.Error("stuck session left open")
	}
	if n := len(e.messages(alice)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func allDraining(s *Server) bool {
	conns := s.base.Sessions()
	for _, sess := range conns {
		c := sess.(*conn)
		c.mu.Lock()
		d := c.draining
		c.mu.Unlock()
		if !d {
			return false
		}
	}
	return len(conns) > 0
}
