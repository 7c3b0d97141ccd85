package smtpin

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCutShortTransferIsNotStored: a message whose transfer ends because
// the connection does (the client half-closes or closes before a BDAT
// chunk or DATA is complete) is never stored, and never gets a 250.
// go-smtp copies a BDAT chunk through io.LimitReader, which takes the early
// EOF for the end of the chunk; without smtpin's own check, the LAST cases
// stored the 33 bytes as a whole message.
func TestCutShortTransferIsNotStored(t *testing.T) {
	part := "From: a@sender.example\r\nSubject: cut\r\n\r\nonly a part\r\n"
	for _, tc := range []struct {
		name  string
		send  string
		close string // "half": CloseWrite, then read every reply; "full": Close
	}{
		{"bdat-last-half-close", "BDAT 1000 LAST\r\n" + part, "half"},
		{"bdat-last-full-close", "BDAT 1000 LAST\r\n" + part, "full"},
		{"bdat-half-close", "BDAT 1000\r\n" + part, "half"},
		{"bdat-second-chunk-half-close", "BDAT 12\r\nFrom: a@x\r\n\r\nBDAT 1000 LAST\r\n" + part, "half"},
		{"bdat-second-chunk-full-close", "BDAT 12\r\nFrom: a@x\r\n\r\nBDAT 1000 LAST\r\n" + part, "full"},
		{"data-half-close", "DATA\r\n" + part, "half"},
		{"data-full-close", "DATA\r\n" + part, "full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.dial()
			c.hello()
			c.expect("250 ", "MAIL FROM:<a@sender.example>")
			c.expect("250 ", "RCPT TO:<alice@example.test>")
			c.raw(tc.send)
			var out []byte
			if tc.close == "half" {
				c.conn.(*net.TCPConn).CloseWrite()
				c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				rest, err := io.ReadAll(c.r)
				if err != nil {
					t.Fatalf("reading the replies: %v (got %q)", err, rest)
				}
				out = rest
			} else {
				c.conn.Close()
			}
			// The session has ended once the server logged its end.
			e.logs.waitFor(t, "connection closed")
			if strings.Contains(string(out), "250 2.0.0 Message stored") {
				t.Errorf("a cut-short transfer got a 250: %q", out)
			}
			if got := e.messages(alice); len(got) != 0 {
				t.Errorf("a cut-short transfer was stored: %q", got)
			}
			if got := e.logs.find("message accepted"); len(got) != 0 {
				t.Errorf("logged as accepted: %q", got)
			}
		})
	}
}

// TestCompleteTransferThenClose: the other side of the check above. A
// whole message followed at once by the end of the connection (a client
// that pipelines QUIT and closes without waiting) is stored and acknowledged.
func TestCompleteTransferThenClose(t *testing.T) {
	msg := "From: a@sender.example\r\nSubject: whole\r\n\r\nall of it\r\n"
	for _, tc := range []struct{ name, send string }{
		{"bdat", "BDAT " + strconv.Itoa(len(msg)) + " LAST\r\n" + msg + "QUIT\r\n"},
		{"data", "DATA\r\n" + msg + ".\r\nQUIT\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.dial()
			c.hello()
			c.expect("250 ", "MAIL FROM:<a@sender.example>")
			c.expect("250 ", "RCPT TO:<alice@example.test>")
			c.raw(tc.send)
			c.conn.(*net.TCPConn).CloseWrite()
			c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			out, _ := io.ReadAll(c.r)
			if !strings.Contains(string(out), "250 2.0.0 Message stored as ") {
				t.Errorf("no 250 for a whole message: %q", out)
			}
			if got := e.messages(alice); len(got) != 1 || !strings.Contains(got[0], "all of it\r\n") {
				t.Errorf("stored: %q", got)
			}
		})
	}
}

// TestStoredReplyNamesTheMessage: the 250 after the data says the message
// is stored (there is no queue) and gives the id the log has.
func TestStoredReplyNamesTheMessage(t *testing.T) {
	e := newEnv(t)
	c := e.dial()
	c.hello()
	got := c.deliver("a@sender.example", crlf("From: a@sender.example\n\nhello\n"), alice)
	id, ok := strings.CutPrefix(got, "250 2.0.0 Message stored as ")
	if !ok || len(id) != 16 {
		t.Fatalf("reply %q", got)
	}
	e.logs.waitFor(t, "message accepted", "id="+id)
}
