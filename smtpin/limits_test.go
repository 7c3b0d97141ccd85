package smtpin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/connlimit"
	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/spool"
)

func TestTooManyRecipients(t *testing.T) {
	e := newEnv(t)
	c := e.dial()
	c.hello()
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	for i := range 100 {
		c.expect("250 ", "RCPT TO:<alice+%d@example.test>", i)
	}
	// RFC 5321 §4.5.3.1.10: 452 for the recipient over the limit, and
	// the message goes to the accepted ones.
	c.expect("452 4.5.3 ", "RCPT TO:<bob@example.test>")
	if got := c.data(crlf("Subject: many\n\nbody\n")); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA: %q", got)
	}
	if n := len(e.messages(alice)); n != 1 {
		t.Errorf("alice has %d messages, want 1", n)
	}
	if n := len(e.messages(bob)); n != 0 {
		t.Errorf("bob has %d messages, want 0", n)
	}
}

func TestMessageSize(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.MaxMessageSize = 64 << 10 }))
	c := e.dial()
	c.hello()
	// Refused at MAIL by SIZE= (RFC 1870).
	c.expect("552 5.3.4 ", "MAIL FROM:<a@sender.example> SIZE=65537")
	// Refused while reading, when the bytes are over the limit, whatever
	// SIZE= said; the session goes on.
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 1000)
	if got := c.deliver("a@sender.example", big, alice); !strings.HasPrefix(got, "552 5.3.4 ") {
		t.Fatalf("oversized DATA: %q", got)
	}
	// Just under the limit is fine.
	under := "Subject: fits\r\n\r\n" + strings.Repeat(strings.Repeat("y", 998)+"\r\n", 65)
	under += strings.Repeat("y", 64<<10-len(under)-3) + "\r\n"
	if got := c.deliver("a@sender.example", under, alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA of %d bytes: %q", len(under), got)
	}
	// BDAT: refused by the chunk size before it is read.
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	c.expect("250 ", "RCPT TO:<alice@example.test>")
	c.raw(fmt.Sprintf("BDAT %d LAST\r\n%s", len(big), big))
	if got := c.reply(); !strings.HasPrefix(got, "552 5.3.4 ") {
		t.Fatalf("oversized BDAT: %q", got)
	}
	c.expect("221 ", "QUIT")
	got := e.messages(alice)
	if len(got) != 1 || !strings.Contains(got[0], "Subject: fits") {
		t.Fatalf("stored %d messages, want only the one that fits", len(got))
	}
}

func TestHeaderTooLarge(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.MaxHeaderSize = 16 << 10 }))
	c := e.dial()
	c.hello()
	hdr := strings.Repeat("X-Filler: "+strings.Repeat("h", 90)+"\r\n", 200)
	if got := c.deliver("a@sender.example", hdr+"\r\nbody\r\n", alice); !strings.HasPrefix(got, "552 5.3.4 Header") {
		t.Fatalf("DATA: %q", got)
	}
	// One long folded field, too.
	folded := "Subject: " + strings.Repeat("word\r\n ", 4000) + "end\r\n\r\nbody\r\n"
	if got := c.deliver("a@sender.example", folded, alice); !strings.HasPrefix(got, "552 5.3.4 Header") {
		t.Fatalf("DATA: %q", got)
	}
	if got := c.deliver("a@sender.example", crlf("Subject: small\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA after the refusals: %q", got)
	}
	if n := len(e.messages(alice)); n != 1 {
		t.Errorf("alice has %d messages, want 1", n)
	}
}

func TestLineTooLong(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.MaxLineLength = 2000 }))
	c := e.dial()
	c.hello()
	got := c.deliver("a@sender.example", "Subject: long\r\n\r\n"+strings.Repeat("z", 5000)+"\r\n", alice)
	if !strings.HasPrefix(got, "554 5.6.0 ") {
		t.Fatalf("DATA with a 5000-byte line: %q", got)
	}
	if !c.closed() {
		t.Error("the session went on after a line over the limit")
	}
	if n := len(e.messages(alice)); n != 0 {
		t.Errorf("alice has %d messages, want 0", n)
	}

	// A command line over the limit: go-smtp answers and closes.
	c = e.dial()
	c.hello()
	if got := c.cmd("NOOP %s", strings.Repeat("n", 3000)); !strings.HasPrefix(got, "500 5.4.0 ") {
		t.Fatalf("long command: %q", got)
	}
	if !c.closed() {
		t.Error("the session went on after a command over the limit")
	}
}

// dialFrom connects from a given loopback address (all of 127.0.0.0/8 is
// local on Linux), to look like different clients.
func dialFrom(t *testing.T, e *env, ip string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func TestConnectionLimits(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.MaxConnections, c.MaxConnectionsPerIP = 3, 2 }))
	a1, a2 := dialFrom(t, e, "127.0.0.1"), dialFrom(t, e, "127.0.0.1")
	a1.line()
	a2.line()
	// A third from the same address is refused with 421, and logged with
	// the address for fail2ban.
	a3 := dialFrom(t, e, "127.0.0.1")
	if got := a3.line(); got != "421 4.7.0 mx.example.test Too many connections from your address, please try again later, closing connection" {
		t.Fatalf("third connection from one address: %q", got)
	}
	if !a3.closed() {
		t.Error("refused connection left open")
	}
	e.logs.waitFor(t, "connection refused", "remote=127.0.0.1", "limit=max_connections_per_ip")
	// Another client may still come in, up to the total.
	b1 := dialFrom(t, e, "127.0.0.2")
	b1.line()
	c1 := dialFrom(t, e, "127.0.0.3")
	if got := c1.line(); !strings.HasPrefix(got, "421 4.7.0 mx.example.test Too many connections,") {
		t.Fatalf("connection over the total: %q", got)
	}
	e.logs.waitFor(t, "connection refused", "remote=127.0.0.3", "limit=max_connections")
	// A slot freed is a slot available again.
	a1.expect("221 ", "QUIT")
	a1.closed()
	var again *client
	for range 100 {
		again = dialFrom(t, e, "127.0.0.3")
		if got := again.line(); strings.HasPrefix(got, "220 ") {
			break
		}
		again = nil
		time.Sleep(10 * time.Millisecond)
	}
	if again == nil {
		t.Fatal("no connection accepted after one closed")
	}
	again.expect("250 ", "EHLO client.example")
	if got := again.deliver("a@sender.example", crlf("Subject: hi\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("DATA: %q", got)
	}
}

func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.ReadTimeout = units.DurationOf(200 * time.Millisecond) }))
	c := e.dial()
	c.hello()
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	if got := c.line(); got != "421 4.4.2 mx.example.test Timeout waiting for a command, closing connection" {
		t.Fatalf("after idling: %q", got)
	}
	if !c.closed() {
		t.Error("idle connection left open")
	}
	e.logs.waitFor(t, "session ended by the server", "reason=Timeout waiting for a command")
}

func TestSessionTimeout(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) {
		c.SessionTimeout = units.DurationOf(400 * time.Millisecond)
		c.ReadTimeout = units.DurationOf(300 * time.Millisecond)
	}))
	c := e.dial()
	c.hello()
	for {
		got := c.cmd("NOOP")
		if strings.HasPrefix(got, "250 ") {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if got != "421 4.4.2 mx.example.test Session time limit reached, closing connection" {
			t.Fatalf("NOOP: %q", got)
		}
		break
	}
	if !c.closed() {
		t.Error("connection left open")
	}
}

// TestSessionTimeoutInsideTLSData: the session time is a timer of its
// own, so it also ends a session that is inside a message over TLS and
// sending at a good rate (no read deadline of go-smtp's is involved); the
// 421 goes through TLS and the message is not stored.
func TestSessionTimeoutInsideTLSData(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) {
		c.SessionTimeout = units.DurationOf(time.Second)
		c.ReadTimeout = units.DurationOf(time.Second)
	}))
	c := e.dial()
	c.hello()
	c.starttls(e.ca.ClientConfig(testHost))
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	c.expect("250 ", "RCPT TO:<alice@example.test>")
	c.expect("354 ", "DATA")
	c.raw("From: a@sender.example\r\n\r\n")
	ended := make(chan string, 1)
	go func() {
		c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		l, _ := c.r.ReadString('\n')
		ended <- l
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var got string
loop:
	for {
		select {
		case got = <-ended:
			break loop
		case <-tick.C:
			c.conn.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(c.conn, strings.Repeat("x", 70)+"\r\n")
		}
	}
	if got != "421 4.4.2 mx.example.test Session time limit reached, closing connection\r\n" {
		t.Fatalf("got %q, want the session limit's 421 through TLS", got)
	}
	e.logs.waitFor(t, "session ended by the server", "reason=Session time limit reached")
	if msgs := e.messages(alice); len(msgs) != 0 {
		t.Errorf("%d messages stored", len(msgs))
	}
}

// TestTricklingData: go-smtp's read deadline covers only the DATA line; a
// message that arrives slower than min_data_rate is cut off with 421, its
// rest is not read as commands, and nothing is stored.
func TestTricklingData(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   func(*Config)
		chunk string
		every time.Duration
		want  string
	}{
		{"below the minimum rate", func(c *Config) {
			c.ReadTimeout = units.DurationOf(300 * time.Millisecond)
			c.MinDataRate = 1000
		}, "x", 50 * time.Millisecond, "421 4.4.2 mx.example.test Message data arrived too slowly, closing connection"},
		{"over the data timeout", func(c *Config) {
			c.ReadTimeout = units.DurationOf(time.Second)
			c.DataTimeout = units.DurationOf(400 * time.Millisecond)
			c.MinDataRate = 1
		}, "MAIL FROM:<smuggled@sender.example>\r\n", 20 * time.Millisecond, "421 4.4.2 mx.example.test Message data arrived too slowly, closing connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withConfig(tc.cfg))
			c := e.dial()
			c.hello()
			c.expect("250 ", "MAIL FROM:<a@sender.example>")
			c.expect("250 ", "RCPT TO:<alice@example.test>")
			c.expect("354 ", "DATA")
			c.raw("Subject: slow\r\n\r\n")
			done := make(chan string, 1)
			go func() {
				c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				s, _ := c.r.ReadString('\n')
				done <- strings.TrimSuffix(s, "\r\n")
			}()
			var got string
		trickle:
			for {
				select {
				case got = <-done:
					break trickle
				case <-time.After(tc.every):
					io.WriteString(c.conn, tc.chunk)
				}
			}
			if got != tc.want {
				t.Fatalf("reply %q, want %q", got, tc.want)
			}
			c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, _ := io.ReadAll(c.r); len(rest) > 0 {
				t.Errorf("more after the 421: %q", rest)
			}
			if n := len(e.messages(alice)); n != 0 {
				t.Errorf("%d messages stored", n)
			}
		})
	}
}

// TestTricklingBDAT holds BDAT chunks (RFC 3030) to the data-rate rule of
// DATA: a chunk that keeps up with min_data_rate may take far longer than
// read_timeout (a large chunk from a slow sender), and one that falls below
// it gets the 421 that says so.
func TestTricklingBDAT(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int
		piece int
		want  string
	}{
		// 8 bytes every 50ms earns 80ms of budget per 50ms waited: the
		// chunk takes about 750ms, well past the 300ms read timeout.
		{"at the minimum rate", 120, 8, "250 2.0.0 "},
		// 1 byte every 50ms earns 10ms: the budget runs out.
		{"below the minimum rate", 1000, 1, "421 4.4.2 mx.example.test Message data arrived too slowly, closing connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withConfig(func(c *Config) {
				c.ReadTimeout = units.DurationOf(300 * time.Millisecond)
				c.DataTimeout = units.DurationOf(time.Minute)
				c.MinDataRate = 100
			}))
			c := e.dial()
			c.hello()
			c.expect("250 ", "MAIL FROM:<a@sender.example>")
			c.expect("250 ", "RCPT TO:<alice@example.test>")
			msg := "Subject: slow\r\n\r\n"
			msg += strings.Repeat("x", tc.size-len(msg)-2) + "\r\n"
			io.WriteString(c.conn, fmt.Sprintf("BDAT %d LAST\r\n", len(msg)))
			done := make(chan string, 1)
			go func() {
				c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				s, _ := c.r.ReadString('\n')
				done <- strings.TrimSuffix(s, "\r\n")
			}()
			var got string
		trickle:
			for rest := msg; ; {
				select {
				case got = <-done:
					break trickle
				case <-time.After(50 * time.Millisecond):
					if rest != "" {
						n := min(tc.piece, len(rest))
						io.WriteString(c.conn, rest[:n])
						rest = rest[n:]
					}
				}
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("reply %q, want %q", got, tc.want)
			}
			stored := e.messages(alice)
			if strings.HasPrefix(tc.want, "250") {
				if len(stored) != 1 || !strings.HasSuffix(stored[0], msg) {
					t.Fatalf("stored %d messages, want the one sent", len(stored))
				}
			} else if len(stored) != 0 {
				t.Fatalf("%d messages stored", len(stored))
			}
		})
	}
}

// TestUnknownRecipientPenalty: unknown recipients are logged with the
// client address (for fail2ban) and count against the client network
// across connections.
func TestUnknownRecipientPenalty(t *testing.T) {
	e := newEnv(t)
	for range 2 {
		c := e.dial()
		c.hello()
		c.expect("250 ", "MAIL FROM:<a@sender.example>")
		c.expect("550 5.1.1 ", "RCPT TO:<probe1@example.test>")
		c.expect("550 5.1.1 ", "RCPT TO:<probe2@example.test>")
		c.expect("221 ", "QUIT")
	}
	key := connlimit.ClientKey(&net.TCPAddr{IP: net.ParseIP("127.0.0.1")}).String()
	if n := e.srv.penalty.Failures(key); n != 4 {
		t.Errorf("penalty failures for %s: %d, want 4", key, n)
	}
	if d := e.srv.penalty.Delay(key); d != e.cfg.UnknownRecipientDelayMax.D() {
		t.Errorf("delay after 4 failures: %v, want the maximum %v", d, e.cfg.UnknownRecipientDelayMax)
	}
	if got := e.logs.find("unknown recipient", "remote=127.0.0.1", "rcpt=probe2@example.test"); len(got) != 2 {
		t.Errorf("log lines for probe2: %q", got)
	}
}

// TestStorageErrors: a full spool and a full mailbox give temporary
// replies (never 5xx, never 250), and nothing half-stored.
func TestStorageErrors(t *testing.T) {
	t.Run("spool full", func(t *testing.T) {
		e := newEnvSpool(t, func(o *spool.Options) { o.MaxSize = 4 << 20 })
		c := e.dial()
		c.hello()
		body := "Subject: filler\r\n\r\n" + strings.Repeat(strings.Repeat("f", 998)+"\r\n", 256)
		accepted := 0
		for range 40 {
			got := c.deliver("a@sender.example", body, alice)
			if strings.HasPrefix(got, "250 ") {
				accepted++
				continue
			}
			if !strings.HasPrefix(got, "452 4.3.1 ") {
				t.Fatalf("after %d messages: %q, want 452 4.3.1", accepted, got)
			}
			break
		}
		if accepted == 0 || accepted == 40 {
			t.Fatalf("%d messages accepted before the spool was full", accepted)
		}
		if n := len(e.messages(alice)); n != accepted {
			t.Errorf("%d messages stored, %d acknowledged", n, accepted)
		}
	})
	t.Run("mailbox over quota", func(t *testing.T) {
		e := newEnv(t)
		if err := e.store.SetQuota(context.Background(), alice, 4096); err != nil {
			t.Fatal(err)
		}
		c := e.dial()
		c.hello()
		got := c.deliver("a@sender.example", "Subject: big\r\n\r\n"+strings.Repeat("q", 5000)+"\r\n", alice)
		if !strings.HasPrefix(got, "452 4.2.2 ") {
			t.Fatalf("DATA over quota: %q", got)
		}
		if n := len(e.messages(alice)); n != 0 {
			t.Errorf("%d messages stored", n)
		}
	})
}

// TestStressLetsNewSendersIn: idle connections from many addresses fill
// every slot. Stress mode (from stress_threshold of max_connections) cuts
// the idle ones after stress_timeout, so a new sender from a new address
// gets its banner and delivers well within 15 s; a sender in the middle of
// a message at a good rate is not cut.
func TestStressLetsNewSendersIn(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) {
		c.MaxConnections = 20
		c.MaxConnectionsPerIP = 5
		c.StressThreshold = 0.75
		c.StressTimeout = units.DurationOf(time.Second)
	}))
	// A real sender starts a message before the flood.
	busy := e.dial()
	busy.hello()
	busy.expect("250 ", "MAIL FROM:<a@sender.example>")
	busy.expect("250 ", "RCPT TO:<alice@example.test>")
	busy.expect("354 ", "DATA")
	busy.raw("From: a@sender.example\r\nSubject: sent during the flood\r\n\r\n")

	// The flood: idle connections from four addresses up to the limit.
	idle := 0
	for i := 2; idle < 19; i++ {
		for range 5 {
			if idle == 19 {
				break
			}
			c := dialFrom(t, e, fmt.Sprintf("127.0.0.%d", i))
			if l := c.line(); !strings.HasPrefix(l, "220 ") {
				t.Fatalf("flood connection %d: %q", idle, l)
			}
			idle++
		}
	}
	e.logs.waitFor(t, "stress: connections near the limit")

	// The busy sender keeps sending at a good rate for longer than the
	// stress timeout, while a new sender tries to get in.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 15 {
			time.Sleep(100 * time.Millisecond)
			busy.conn.SetWriteDeadline(time.Now().Add(time.Second))
			io.WriteString(busy.conn, strings.Repeat("x", 70)+"\r\n")
		}
	}()
	start := time.Now()
	var got string
	for time.Since(start) < 15*time.Second {
		cl := dialFrom(t, e, "127.0.0.99")
		if l := cl.line(); !strings.HasPrefix(l, "220 ") {
			cl.conn.Close()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		cl.expect("250 ", "EHLO new.example")
		got = cl.deliver("b@sender.example", crlf("From: b@sender.example\nSubject: new sender\n\nhello\n"), alice)
		break
	}
	if !strings.HasPrefix(got, "250 ") {
		t.Fatalf("a new sender could not deliver within 15 s of the flood (last reply %q)", got)
	}
	t.Logf("a new sender delivered %v after the slots filled", time.Since(start).Round(10*time.Millisecond))
	<-done
	busy.raw(".\r\n")
	if r := busy.reply(); !strings.HasPrefix(r, "250 ") {
		t.Errorf("the sender in DATA during stress got %q, want its message stored", r)
	}
	msgs := e.messages(alice)
	var subjects []string
	for _, m := range msgs {
		for _, s := range []string{"new sender", "sent during the flood"} {
			if strings.Contains(m, "Subject: "+s) {
				subjects = append(subjects, s)
			}
		}
	}
	if len(subjects) != 2 {
		t.Errorf("stored %v, want both the new sender's message and the one sent during the flood", subjects)
	}
}

// TestGreylisting: the first attempt of an unknown triplet gets 451 4.7.1,
// so does a retry before the delay; one after it passes and lets the
// network through for others; SPF pass and the allow list skip it.
func TestGreylisting(t *testing.T) {
	on := func(allow ...string) envOption {
		return withConfig(func(c *Config) {
			c.Greylist.Enabled = true
			c.Greylist.Delay = units.DurationOf(time.Second)
			c.Greylist.Allow = allow
		})
	}
	msg := crlf("From: a@nospf.example\nSubject: hi\n\nhello\n")
	send := func(e *env, from string) string {
		c := e.dial()
		c.hello()
		return c.deliver(from, msg, alice)
	}
	e := newEnv(t, on())
	if got := send(e, "a@nospf.example"); !strings.HasPrefix(got, "451 4.7.1 Greylisted") {
		t.Fatalf("first attempt: %q", got)
	}
	if got := send(e, "a@nospf.example"); !strings.HasPrefix(got, "451 4.7.1") {
		t.Fatalf("retry before the delay: %q", got)
	}
	time.Sleep(1100 * time.Millisecond)
	if got := send(e, "a@nospf.example"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("retry after the delay: %q", got)
	}
	if got := send(e, "b@other-nospf.example"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("another sender from the network that passed: %q", got)
	}
	if n := len(e.messages(alice)); n != 2 {
		t.Errorf("%d messages stored, want 2", n)
	}
	// SPF pass, and the allow list, skip it on a fresh table.
	if got := send(newEnv(t, on()), "a@sender.example"); !strings.HasPrefix(got, "250 ") {
		t.Errorf("SPF pass was greylisted: %q", got)
	}
	if got := send(newEnv(t, on("127.0.0.0/8")), "a@nospf.example"); !strings.HasPrefix(got, "250 ") {
		t.Errorf("an allowed network was greylisted: %q", got)
	}
}
