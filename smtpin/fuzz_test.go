package smtpin

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
)

// FuzzSession sends raw bytes to a live server over a real socket and
// checks what a hostile client must not be able to do: crash a session
// (go-smtp would recover and log it), hang the server, or make the spool
// and the replies disagree (a message stored without its 250, or a 250
// without a stored message). The limits are small, so that no input can
// use much memory. Seeded with every verb.
func FuzzSession(f *testing.F) {
	verbs := []string{"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY", "EXPN",
		"HELP", "QUIT", "STARTTLS", "AUTH", "TURN", "SEND", "SOML", "SAML", "XCLIENT", "GET"}
	for _, v := range verbs {
		f.Add([]byte("EHLO client.example\r\n" + v + " \r\n" + v + " x\r\nQUIT\r\n"))
	}
	for _, s := range []string{
		"EHLO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"EHLO c\r\nMAIL FROM:<> SIZE=10\r\nRCPT TO:<team@example.test>\r\nRCPT TO:<x@other.test>\r\nDATA\r\nFrom: a@sender.example\r\n\r\n.\r\n",
		"EHLO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nx\n.\nMAIL FROM:<b@c>\r\n.\r\n",
		"EHLO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nBDAT 5\r\nab\r\ncBDAT 0 LAST\r\n",
		"EHLO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nBDAT 99999999 LAST\r\n",
		"EHLO c\r\nMAIL FROM:<a@sender.example> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<jösé@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nDKIM-Signature: v=1; d=x; s=y\r\nAuthentication-Results: mx.example.test; spf=pass\r\n\r\n\xff\x00\r\n.\r\n",
		"EHLO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<\"a@b\"@example.test>\r\nRCPT TO:<@x:alice@example.test>\r\nDATA\r\n" + strings.Repeat("H: v\r\n", 50) + "\r\n.\r\n",
		"HELO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
		"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	} {
		f.Add([]byte(s))
	}

	e := newEnv(f, withConfig(func(c *Config) {
		c.MaxMessageSize = 64 << 10
		c.MaxHeaderSize = 16 << 10
		c.MaxLineLength = 2000
		c.ReadTimeout = units.DurationOf(2 * time.Second)
		c.MaxCommands = 200
	}))
	f.Fuzz(func(t *testing.T, in []byte) {
		before, err := e.store.Stats()
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		go func() {
			conn.Write(in)
			conn.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(conn)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the server did not finish the session; it sent %q", out)
		}
		queued := bytes.Count(out, []byte("250 2.0.0 Message stored as "))
		checkASCIIReplies(t, out)
		after, err := e.store.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if got := after.Messages - before.Messages; got != queued {
			t.Fatalf("%d messages stored, %d acknowledged; replies:\n%s", got, queued, out)
		}
		if p := e.logs.find("smtp session panicked"); len(p) > 0 {
			t.Fatalf("session panicked: %s", p[0])
		}
		// go-smtp's own BDAT race (see libraryLog) is the only panic of
		// the library's that is tolerated.
		for _, p := range e.logs.find("smtp library recovered") {
			if !strings.Contains(p, "handleBdat") || !strings.Contains(p, "nil pointer") {
				t.Fatalf("go-smtp panicked: %s", p)
			}
		}
	})
}

// checkASCIIReplies fails on a reply line with a byte outside printable
// US-ASCII (RFC 5321 §2.4), except in the replies where go-smtp echoes what
// the client sent (the HELO name, the addresses, an unknown verb; listed
// in docs/go-smtp.md).
func checkASCIIReplies(t *testing.T, out []byte) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := strings.TrimSuffix(sc.Text(), "\r")
		if strings.HasPrefix(l, "250 2.0.0 Hello ") || strings.HasPrefix(l, "250-Hello ") ||
			strings.HasPrefix(l, "250 2.0.0 Roger, accepting mail from <") ||
			strings.HasPrefix(l, "250 2.0.0 I'll make sure <") || strings.HasSuffix(l, " command not implemented") || strings.HasSuffix(l, " command unrecognized") {
			continue
		}
		for i := 0; i < len(l); i++ {
			if l[i] < 0x20 || l[i] > 0x7e {
				t.Fatalf("reply %q has a byte outside printable ASCII", l)
			}
		}
	}
}
