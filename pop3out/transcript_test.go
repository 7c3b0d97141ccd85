package pop3out

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/spool"
)

// TestTranscripts plays every testdata/transcripts/*.txt against a real
// server on 127.0.0.1 with a temporary spool holding the fixture (alice has
// fixtureMessages, bob nothing; both use the password "correct horse
// battery"; UIDLs are "<uid>.1767323045").
//
// The syntax (docs/transcripts.md), where a digit after C or S picks a second
// connection:
//
//	# a comment
//	@option KEY=VALUE     before the first line: plaintext_login_networks=a,b
//	                      (empty: none), tls=none|notready, retention=1h,
//	                      max_errors=N, login_delay=D, max_line_length=N
//	@dial-tls [N]         connect connection N to the implicit-TLS port
//	C: USER alice         send a line (CRLF added)
//	C! "raw\r\n"          send raw bytes (a Go string literal)
//	S: +OK text           expect exactly this line
//	S~ +OK                expect a line starting with this
//	@starttls [N]         start TLS on connection N (after the STLS +OK)
//	@closed [N]           expect the server to close the connection
//	@drop [N]             close the connection from the client side
//	@messages ADDR N      the spool holds N messages for ADDR (after the
//	                      sessions release the maildrop)
//	@restore ADDR N       Store.Restore(ADDR) brings back N messages
//	@deliver ADDR         deliver lateMessage to ADDR now
//
// A connection that is used without @dial-tls is dialled to the plaintext
// port.
func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			t.Parallel()
			playTranscript(t, f)
		})
	}
}

// lateMessage is what @deliver delivers (23 octets).
const lateMessage = "Subject: late\r\n\r\nlate\r\n"

var transcriptLine = regexp.MustCompile(`^([CS])(\d?)([:!~])(.*)$`)

type transcriptConn struct {
	conn net.Conn
	r    *bufio.Reader
}

func playTranscript(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")

	// Options come first.
	var o envOptions
	var mods []func(*Config)
	for len(lines) > 0 && (strings.HasPrefix(lines[0], "@option ") || strings.HasPrefix(lines[0], "#") || strings.TrimSpace(lines[0]) == "") {
		l := lines[0]
		lines = lines[1:]
		if !strings.HasPrefix(l, "@option ") {
			continue
		}
		key, val, _ := strings.Cut(strings.TrimPrefix(l, "@option "), "=")
		switch key {
		case "plaintext_login_networks":
			nets := []string{}
			if val != "" {
				nets = strings.Split(val, ",")
			}
			mods = append(mods, func(c *Config) { c.PlaintextLoginNetworks = nets })
		case "tls":
			o.noTLS = val == "none"
			o.notReady = val == "notready"
		case "retention":
			d, err := time.ParseDuration(val)
			if err != nil {
				t.Fatal(err)
			}
			o.spool = func(so *spool.Options) { so.Retention = units.DurationOf(d) }
		case "max_errors", "max_line_length":
			n, err := strconv.Atoi(val)
			if err != nil {
				t.Fatal(err)
			}
			if key == "max_errors" {
				mods = append(mods, func(c *Config) { c.MaxErrors = n })
			} else {
				mods = append(mods, func(c *Config) { c.MaxLineLength = units.Size(n) })
			}
		case "login_delay":
			d, err := time.ParseDuration(val)
			if err != nil {
				t.Fatal(err)
			}
			mods = append(mods, func(c *Config) { c.LoginDelay = units.DurationOf(d) })
		default:
			t.Fatalf("unknown option %q", key)
		}
	}
	o.config = func(c *Config) {
		for _, m := range mods {
			m(c)
		}
	}
	e := newEnv(t, o)

	var dialogue strings.Builder
	conns := map[string]*transcriptConn{}
	failf := func(lineNo int, format string, args ...any) {
		t.Helper()
		t.Fatalf("%s:%d: %s\ndialogue so far:\n%s", filepath.Base(path), lineNo, fmt.Sprintf(format, args...), dialogue.String())
	}
	conn := func(lineNo int, n string) *transcriptConn {
		if n == "" {
			n = "1"
		}
		c := conns[n]
		if c == nil {
			nc, err := net.Dial("tcp", e.addr)
			if err != nil {
				failf(lineNo, "dial: %v", err)
			}
			c = &transcriptConn{conn: nc, r: bufio.NewReader(nc)}
			conns[n] = c
			t.Cleanup(func() { nc.Close() })
		}
		return c
	}
	readLine := func(lineNo int, c *transcriptConn) string {
		c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		l, err := c.r.ReadString('\n')
		if err != nil {
			failf(lineNo, "reading a reply: %v (partial %q)", err, l)
		}
		if !strings.HasSuffix(l, "\r\n") {
			failf(lineNo, "reply line %q does not end in CRLF", l)
		}
		return strings.TrimSuffix(l, "\r\n")
	}

	// The options' line count, for line numbers in messages.
	first := strings.Count(strings.TrimRight(string(data), "\n"), "\n") + 1 - len(lines)
	for i, l := range lines {
		lineNo := first + i + 1
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "@") {
			fields := strings.Fields(l)
			n := ""
			if len(fields) > 1 {
				n = fields[1]
			}
			switch fields[0] {
			case "@dial-tls":
				if n == "" {
					n = "1"
				}
				nc, err := tls.Dial("tcp", e.tlsAddr, e.ca.ClientConfig(tlsName))
				if err != nil {
					failf(lineNo, "TLS dial: %v", err)
				}
				conns[n] = &transcriptConn{conn: nc, r: bufio.NewReader(nc)}
				t.Cleanup(func() { nc.Close() })
			case "@starttls":
				c := conn(lineNo, n)
				if c.r.Buffered() > 0 {
					failf(lineNo, "the server sent more before TLS: %d bytes", c.r.Buffered())
				}
				tc := tls.Client(c.conn, e.ca.ClientConfig(tlsName))
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					failf(lineNo, "TLS handshake: %v", err)
				}
				tc.SetDeadline(time.Time{})
				c.conn, c.r = tc, bufio.NewReader(tc)
			case "@closed":
				c := conn(lineNo, n)
				c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				if l, err := c.r.ReadString('\n'); err == nil {
					failf(lineNo, "expected the server to close the connection; got %q", l)
				} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
					failf(lineNo, "the server did not close the connection")
				}
			case "@deliver":
				e.deliver(n, []byte(lateMessage))
			case "@drop":
				conn(lineNo, n).conn.Close()
			case "@messages", "@restore":
				if len(fields) != 3 {
					failf(lineNo, "%s ADDRESS COUNT", fields[0])
				}
				want, _ := strconv.Atoi(fields[2])
				var got int
				if fields[0] == "@messages" {
					got = len(e.messages(fields[1]))
				} else {
					got, err = e.store.Restore(context.Background(), fields[1])
					if err != nil {
						failf(lineNo, "Restore: %v", err)
					}
				}
				if got != want {
					failf(lineNo, "%s %s: got %d messages, want %d", fields[0], fields[1], got, want)
				}
			default:
				failf(lineNo, "unknown directive %q", fields[0])
			}
			dialogue.WriteString(l + "\n")
			continue
		}
		m := transcriptLine.FindStringSubmatch(l)
		if m == nil {
			failf(lineNo, "cannot parse %q", l)
		}
		who, n, kind, text := m[1], m[2], m[3], strings.TrimPrefix(m[4], " ")
		c := conn(lineNo, n)
		switch who + kind {
		case "C:":
			c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.conn.Write([]byte(text + "\r\n")); err != nil {
				failf(lineNo, "send: %v", err)
			}
		case "C!":
			raw, err := strconv.Unquote(text)
			if err != nil {
				failf(lineNo, "C! wants a Go string literal: %v", err)
			}
			c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.conn.Write([]byte(raw)); err != nil {
				failf(lineNo, "send: %v", err)
			}
		case "S:":
			if got := readLine(lineNo, c); got != text {
				dialogue.WriteString("S" + n + ": " + got + "\n")
				failf(lineNo, "got  %q\nwant %q", got, text)
			}
		case "S~":
			if got := readLine(lineNo, c); !strings.HasPrefix(got, text) {
				dialogue.WriteString("S" + n + ": " + got + "\n")
				failf(lineNo, "got  %q\nwant a line starting with %q", got, text)
			}
		default:
			failf(lineNo, "cannot parse %q", l)
		}
		dialogue.WriteString(l + "\n")
	}
}
