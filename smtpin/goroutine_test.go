package smtpin

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
)

// TestNoGoroutineLeak: sessions that end every which way (QUIT, a client
// that vanishes mid-DATA or mid-BDAT, a timeout, a refused message, TLS)
// leave no goroutine behind.
func TestNoGoroutineLeak(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.ReadTimeout = units.DurationOf(300 * time.Millisecond) }))
	e.dns.Add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject")
	// Let the listeners and the DNS server settle, then count.
	warm := e.dial()
	warm.hello()
	warm.expect("221 ", "QUIT")
	warm.closed()
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()

	for range 3 {
		c := e.dial()
		c.hello()
		c.deliver("a@sender.example", crlf("From: a@sender.example\n\nbody\n"), alice)
		c.expect("221 ", "QUIT")

		c = e.dial()
		c.hello()
		c.expect("250 ", "MAIL FROM:<a@sender.example>")
		c.expect("250 ", "RCPT TO:<alice@example.test>")
		c.expect("354 ", "DATA")
		c.raw("DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=x; h=from; bh=x; b=x\r\nFrom: a@sender.example\r\n\r\nhalf a message")
		c.conn.Close()

		c = e.dial()
		c.hello()
		c.expect("250 ", "MAIL FROM:<a@sender.example>")
		c.expect("250 ", "RCPT TO:<alice@example.test>")
		c.raw("BDAT 1000\r\nFrom: a@sender.example\r\n\r\npart")
		c.conn.Close()

		c = e.dial()
		c.hello()
		if !strings.HasPrefix(c.line(), "421 4.4.2") {
			t.Error("no idle timeout")
		}

		c = e.dial()
		c.hello()
		if got := c.deliver("a@sender.example", crlf("From: ceo@bank.example\n\nbody\n"), alice); !strings.HasPrefix(got, "550 5.7.1") {
			t.Errorf("DMARC reject: %q", got)
		}
		c.conn.Close()

		c = e.dial()
		c.hello()
		c.starttls(e.ca.ClientConfig(testHost))
		c.expect("221 ", "QUIT")
	}

	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines, %d before the sessions:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}
