package smtpin

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	toml "github.com/pelletier/go-toml/v2"
)

// TestTranscripts plays every testdata/transcripts/*.txt over a real
// socket against a fresh server. The syntax is in docs/transcripts.md:
//
//	C: EHLO client.example      send a line (CRLF added)
//	C! "DATA\r\n.\n"            send raw bytes (a Go string literal)
//	S: 250 2.0.0 Continue       expect this exact line
//	S~ 250                      expect a line starting with this
//	S* 250                      expect a multi-line reply whose last line starts so
//	-- starttls                 do the client side of a TLS handshake
//	-- closed                   expect the server to close the connection
//	# a comment
//
// and, before the dialogue, lines that set up the server:
//
//	! config max_errors = 3     a line of TOML for the [smtp] table
//	! dns name TYPE value       a record in the DNS server
//	! dnsfail name              SERVFAIL for a name
//	! tls off                   no certificate yet: no STARTTLS
//	! expect alice@example.test 1   the account has that many messages after
//
// A NAME.verify file beside NAME.txt, if present, must equal the messages
// stored for alice and bob after the dialogue, each under a "=== account
// #n" line, with this server's trace fields (Return-Path,
// Authentication-Results, Received) taken off and CRLF shown as "\n".
func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			t.Parallel()
			runTranscript(t, f)
		})
	}
}

func runTranscript(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")

	var setup []string
	i := 0
	for ; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], "! ") {
			setup = append(setup, lines[i][2:])
		} else if lines[i] != "" && !strings.HasPrefix(lines[i], "#") {
			break
		}
	}
	var tomlLines []string
	var records [][3]string
	var fails []string
	tlsOff := false
	expect := map[string]int{}
	for _, s := range setup {
		verb, rest, _ := strings.Cut(s, " ")
		switch verb {
		case "config":
			tomlLines = append(tomlLines, rest)
		case "dns":
			f := strings.SplitN(rest, " ", 3)
			if len(f) != 3 {
				t.Fatalf("bad dns line %q", s)
			}
			records = append(records, [3]string{f[0], f[1], f[2]})
		case "dnsfail":
			fails = append(fails, rest)
		case "tls":
			tlsOff = rest == "off"
		case "expect":
			acct, n, _ := strings.Cut(rest, " ")
			v, err := strconv.Atoi(n)
			if err != nil {
				t.Fatalf("bad expect line %q", s)
			}
			expect[acct] = v
		default:
			t.Fatalf("unknown setup line %q", s)
		}
	}
	e := newEnv(t, withConfig(func(c *Config) {
		if err := toml.Unmarshal([]byte(strings.Join(tomlLines, "\n")), c); err != nil {
			t.Fatalf("config lines: %v", err)
		}
	}))
	for _, r := range records {
		e.dns.Add(r[0], r[1], r[2])
	}
	for _, n := range fails {
		e.dns.Fail(n, dns.RcodeServerFailure)
	}
	e.tlsReady.set(!tlsOff)

	conn, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var c net.Conn = conn
	r := bufio.NewReader(c)
	var dialogue strings.Builder
	fail := func(lineNo int, format string, args ...any) {
		t.Helper()
		t.Fatalf("%s:%d: %s\ndialogue so far:\n%s", path, lineNo+1, fmt.Sprintf(format, args...), dialogue.String())
	}
	readLine := func(n int) string {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		s, err := r.ReadString('\n')
		if err != nil {
			fail(n, "reading: %v (got %q)", err, s)
		}
		s = strings.TrimSuffix(s, "\r\n")
		fmt.Fprintf(&dialogue, "S: %s\n", s)
		return s
	}
	write := func(n int, s string) {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, s); err != nil {
			fail(n, "writing: %v", err)
		}
	}
	for n := i; n < len(lines); n++ {
		line := lines[n]
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case line == "C:" || strings.HasPrefix(line, "C: "):
			fmt.Fprintf(&dialogue, "%s\n", line)
			write(n, strings.TrimPrefix(line[2:], " ")+"\r\n")
		case strings.HasPrefix(line, "C! "):
			s, err := strconv.Unquote(line[3:])
			if err != nil {
				fail(n, "bad C! string: %v", err)
			}
			fmt.Fprintf(&dialogue, "%s\n", line)
			write(n, s)
		case strings.HasPrefix(line, "S: "):
			if got := readLine(n); got != line[3:] {
				fail(n, "got %q, want %q", got, line[3:])
			}
		case strings.HasPrefix(line, "S~ "):
			if got := readLine(n); !strings.HasPrefix(got, line[3:]) {
				fail(n, "got %q, want it to start with %q", got, line[3:])
			}
		case strings.HasPrefix(line, "S* "):
			got := readLine(n)
			for len(got) >= 4 && got[3] == '-' {
				got = readLine(n)
			}
			if !strings.HasPrefix(got, line[3:]) {
				fail(n, "got %q, want a reply ending in a line that starts with %q", got, line[3:])
			}
		case line == "-- starttls":
			if r.Buffered() > 0 {
				fail(n, "%d bytes of plaintext after the STARTTLS reply", r.Buffered())
			}
			tc := tls.Client(conn, e.ca.ClientConfig(testHost))
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				fail(n, "TLS handshake: %v", err)
			}
			fmt.Fprintf(&dialogue, "-- TLS %s\n", tls.VersionName(tc.ConnectionState().Version))
			c, r = tc, bufio.NewReader(tc)
		case line == "-- closed":
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			rest, err := io.ReadAll(r)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				fail(n, "the server did not close the connection")
			}
			if len(rest) > 0 {
				fail(n, "got %q before the close", rest)
			}
			dialogue.WriteString("-- closed\n")
		default:
			fail(n, "unknown transcript line %q", line)
		}
	}
	c.Close()

	for acct, want := range expect {
		if got := len(e.messages(acct)); got != want {
			t.Errorf("%s has %d messages, want %d", acct, got, want)
		}
	}
	verifyPath := strings.TrimSuffix(path, ".txt") + ".verify"
	if want, err := os.ReadFile(verifyPath); err == nil {
		var got strings.Builder
		for _, acct := range []string{alice, bob} {
			for i, m := range e.messages(acct) {
				fmt.Fprintf(&got, "=== %s #%d\n%s", acct, i+1, strings.ReplaceAll(stripTrace(t, m), "\r\n", "\n"))
			}
		}
		if got.String() != string(want) {
			t.Errorf("stored messages differ from %s:\n--- got\n%s--- want\n%s", verifyPath, got.String(), want)
		}
	}
}

// stripTrace takes off the three fields this server puts on top of a
// stored message.
func stripTrace(t *testing.T, msg string) string {
	t.Helper()
	for _, name := range []string{"Return-Path:", "Authentication-Results:", "Received:"} {
		if !strings.HasPrefix(msg, name) {
			t.Fatalf("stored message does not start with %s: %q", name, msg)
		}
		i := strings.Index(msg, "\r\n")
		for i >= 0 && i+2 < len(msg) && (msg[i+2] == ' ' || msg[i+2] == '\t') {
			j := strings.Index(msg[i+2:], "\r\n")
			if j < 0 {
				break
			}
			i += 2 + j
		}
		msg = msg[i+2:]
	}
	return msg
}
