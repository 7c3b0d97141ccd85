package testutil

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A Transcript is a protocol dialogue written down: setup lines, which the
// package under test reads to build its server, then the steps of one or
// more client connections. docs/transcripts.md describes the syntax; in
// short:
//
//	# a comment (blank lines are ignored too)
//	! VERB REST           setup, before the first step; the package reads it
//	C: TEXT               send TEXT and CRLF
//	C! "GO STRING"        send these bytes exactly (a Go string literal)
//	S: TEXT               expect this exact line
//	S~ PREFIX             expect a line that starts with PREFIX
//	S* PREFIX             expect an SMTP multi-line reply ("250-..." lines)
//	                      whose last line starts with PREFIX
//	@starttls [N]         the client side of a TLS handshake on connection N
//	@closed [N]           expect the server to close connection N, sending
//	                      nothing more
//	@drop [N]             close connection N from the client side
//	@dial-tls [N]         connect connection N to the implicit-TLS port
//	@NAME ARGS...         a directive of the package (Player.Directive)
//
// A digit after C or S (C2:, S2~) picks connection 2; without one it is
// connection 1. A connection is dialled at its first use.
type Transcript struct {
	Path  string
	Setup []SetupLine
	Steps []Step
}

// SetupLine is one "! VERB REST" line.
type SetupLine struct {
	No   int    // line number in the file, from 1
	Verb string // the first word
	Rest string // the rest of the line after one space
}

// Step is one line of the dialogue.
type Step struct {
	No   int    // line number in the file, from 1
	Text string // the line as written
	// Op is "C:", "C!", "S:", "S~" or "S*" for a line sent or expected,
	// "@" for a directive.
	Op   string
	Conn string // the connection: "1" unless the line names another
	// Arg is the text to send or expect (for "C!", already unquoted).
	Arg string
	// Name and Args are a directive's name (without "@") and its words.
	Name string
	Args []string
}

var stepLine = regexp.MustCompile(`^([CS])(\d?)([:!~*])(?: (.*))?$`)

// ParseTranscript reads a transcript file.
func ParseTranscript(path string) (*Transcript, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	tr := &Transcript{Path: path}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	for i, l := range lines {
		no := i + 1
		l = strings.TrimSuffix(l, "\r")
		switch {
		case strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "!"):
			if len(tr.Steps) > 0 {
				return nil, fmt.Errorf("%s:%d: setup line after the dialogue started", path, no)
			}
			verb, rest, _ := strings.Cut(strings.TrimSpace(l[1:]), " ")
			if verb == "" {
				return nil, fmt.Errorf("%s:%d: empty setup line", path, no)
			}
			tr.Setup = append(tr.Setup, SetupLine{No: no, Verb: verb, Rest: rest})
		case strings.HasPrefix(l, "@"):
			f := strings.Fields(l[1:])
			if len(f) == 0 {
				return nil, fmt.Errorf("%s:%d: empty directive", path, no)
			}
			s := Step{No: no, Text: l, Op: "@", Conn: "1", Name: f[0], Args: f[1:]}
			switch s.Name {
			case "starttls", "closed", "drop", "dial-tls":
				if len(s.Args) > 1 {
					return nil, fmt.Errorf("%s:%d: @%s takes at most a connection number", path, no, s.Name)
				}
				if len(s.Args) == 1 {
					if _, err := strconv.Atoi(s.Args[0]); err != nil {
						return nil, fmt.Errorf("%s:%d: @%s %s: not a connection number", path, no, s.Name, s.Args[0])
					}
					s.Conn = s.Args[0]
				}
			}
			tr.Steps = append(tr.Steps, s)
		default:
			m := stepLine.FindStringSubmatch(l)
			if m == nil {
				return nil, fmt.Errorf("%s:%d: cannot parse %q", path, no, l)
			}
			s := Step{No: no, Text: l, Op: m[1] + m[3], Conn: m[2], Arg: m[4]}
			if s.Conn == "" {
				s.Conn = "1"
			}
			switch s.Op {
			case "C!":
				raw, err := strconv.Unquote(s.Arg)
				if err != nil {
					return nil, fmt.Errorf("%s:%d: C! wants a Go string literal: %v", path, no, err)
				}
				s.Arg = raw
			case "C*", "C~":
				return nil, fmt.Errorf("%s:%d: %s is not a client line (C: or C!)", path, no, s.Op)
			}
			tr.Steps = append(tr.Steps, s)
		}
	}
	return tr, nil
}

// RunTranscripts runs play for every file that pattern matches, each in a
// parallel subtest named after the file. It fails when nothing matches.
func RunTranscripts(t *testing.T, pattern string, play func(t *testing.T, tr *Transcript)) {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts match %s: %v", pattern, err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), filepath.Ext(f))
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tr, err := ParseTranscript(f)
			if err != nil {
				t.Fatal(err)
			}
			play(t, tr)
		})
	}
}

// Fatalf fails the test naming the file and line.
func (tr *Transcript) Fatalf(t testing.TB, line int, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s:%d: %s", tr.Path, line, fmt.Sprintf(format, args...))
}

// Player is what Play needs from the package under test.
type Player struct {
	// Dial connects a connection that is used without @dial-tls.
	Dial func() (net.Conn, error)
	// DialTLS connects for @dial-tls; nil makes @dial-tls an error.
	DialTLS func() (net.Conn, error)
	// TLS is the client configuration for @starttls.
	TLS *tls.Config
	// Directive carries out a directive Play does not know. nil makes
	// every such directive an error.
	Directive func(s Step) error
	// Timeout bounds each read, write and handshake; 0 means 10 seconds.
	Timeout time.Duration
}

type transcriptConn struct {
	raw net.Conn // the TCP connection
	c   net.Conn // raw, or the TLS connection over it
	r   *bufio.Reader
}

// Play runs the steps against the server and fails the test at the first
// step that does not go as written, with the dialogue so far.
func (tr *Transcript) Play(t testing.TB, p Player) {
	t.Helper()
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	var dialogue strings.Builder
	failf := func(s Step, format string, args ...any) {
		t.Helper()
		t.Fatalf("%s:%d: %s\n%s\ndialogue so far:\n%s", tr.Path, s.No, s.Text, fmt.Sprintf(format, args...), dialogue.String())
	}
	conns := map[string]*transcriptConn{}
	add := func(s Step, c net.Conn) *transcriptConn {
		tc := &transcriptConn{raw: c, c: c, r: bufio.NewReader(c)}
		conns[s.Conn] = tc
		t.Cleanup(func() { tc.c.Close() })
		return tc
	}
	conn := func(s Step) *transcriptConn {
		if c := conns[s.Conn]; c != nil {
			return c
		}
		c, err := p.Dial()
		if err != nil {
			failf(s, "dial: %v", err)
		}
		return add(s, c)
	}
	tag := func(s Step, kind string) string {
		if s.Conn == "1" {
			return kind
		}
		return kind[:1] + s.Conn + kind[1:]
	}
	readLine := func(s Step, c *transcriptConn) string {
		t.Helper()
		c.c.SetReadDeadline(time.Now().Add(timeout))
		l, err := c.r.ReadString('\n')
		if err != nil {
			failf(s, "reading: %v (got %q)", err, l)
		}
		if !strings.HasSuffix(l, "\r\n") {
			failf(s, "line %q does not end in CRLF", l)
		}
		l = strings.TrimSuffix(l, "\r\n")
		fmt.Fprintf(&dialogue, "%s %s\n", tag(s, "S:"), l)
		return l
	}
	write := func(s Step, c *transcriptConn, b string) {
		t.Helper()
		c.c.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := io.WriteString(c.c, b); err != nil {
			failf(s, "writing: %v", err)
		}
	}

	for _, s := range tr.Steps {
		switch s.Op {
		case "C:":
			c := conn(s)
			fmt.Fprintf(&dialogue, "%s %s\n", tag(s, "C:"), s.Arg)
			write(s, c, s.Arg+"\r\n")
		case "C!":
			c := conn(s)
			fmt.Fprintf(&dialogue, "%s %q\n", tag(s, "C!"), s.Arg)
			write(s, c, s.Arg)
		case "S:":
			if got := readLine(s, conn(s)); got != s.Arg {
				failf(s, "got  %q\nwant %q", got, s.Arg)
			}
		case "S~":
			if got := readLine(s, conn(s)); !strings.HasPrefix(got, s.Arg) {
				failf(s, "got  %q\nwant a line starting with %q", got, s.Arg)
			}
		case "S*":
			c := conn(s)
			got := readLine(s, c)
			for len(got) >= 4 && got[3] == '-' {
				got = readLine(s, c)
			}
			if !strings.HasPrefix(got, s.Arg) {
				failf(s, "got  %q\nwant a reply whose last line starts with %q", got, s.Arg)
			}
		case "@":
			dialogue.WriteString(s.Text + "\n")
			switch s.Name {
			case "dial-tls":
				if p.DialTLS == nil {
					failf(s, "this server has no implicit-TLS port")
				}
				if conns[s.Conn] != nil {
					failf(s, "connection %s is already open", s.Conn)
				}
				c, err := p.DialTLS()
				if err != nil {
					failf(s, "TLS dial: %v", err)
				}
				add(s, c)
			case "starttls":
				c := conn(s)
				if n := c.r.Buffered(); n > 0 {
					failf(s, "%d bytes of plaintext after the reply that starts TLS", n)
				}
				if p.TLS == nil {
					failf(s, "no client TLS configuration")
				}
				tc := tls.Client(c.raw, p.TLS)
				tc.SetDeadline(time.Now().Add(timeout))
				if err := tc.Handshake(); err != nil {
					failf(s, "TLS handshake: %v", err)
				}
				tc.SetDeadline(time.Time{})
				fmt.Fprintf(&dialogue, "# %s\n", tls.VersionName(tc.ConnectionState().Version))
				c.c, c.r = tc, bufio.NewReader(tc)
			case "closed":
				c := conn(s)
				c.c.SetReadDeadline(time.Now().Add(timeout))
				rest, err := io.ReadAll(c.r)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					failf(s, "the server did not close the connection (got %q)", rest)
				}
				if len(rest) > 0 {
					failf(s, "got %q before the close", rest)
				}
			case "drop":
				conn(s).c.Close()
			default:
				if p.Directive == nil {
					failf(s, "unknown directive @%s", s.Name)
				}
				if err := p.Directive(s); err != nil {
					failf(s, "%v", err)
				}
			}
		default:
			failf(s, "cannot run %q", s.Op)
		}
	}
}
