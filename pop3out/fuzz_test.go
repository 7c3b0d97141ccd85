package pop3out

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
)

// FuzzSession feeds arbitrary client input to a live server over TCP: the
// command reader, the dispatcher and every handler. Whatever the input,
// the server must answer in well-formed lines, end the session, never
// panic, and delete messages only when the input has a QUIT.
func FuzzSession(f *testing.F) {
	// Seeds: the client side of every transcript, and some odd input.
	files, _ := filepath.Glob("testdata/transcripts/*.txt")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		var in bytes.Buffer
		for _, l := range strings.Split(string(data), "\n") {
			if m := transcriptLine.FindStringSubmatch(l); m != nil && m[1] == "C" {
				text := strings.TrimPrefix(m[4], " ")
				if m[3] == "!" {
					if raw, err := strconv.Unquote(text); err == nil {
						in.WriteString(raw)
					}
					continue
				}
				in.WriteString(text + "\r\n")
			}
		}
		f.Add(in.Bytes())
	}
	for _, s := range []string{
		"", "\r\n", "\n\n\n", "USER\r\n", "PASS\r\n", "AUTH PLAIN\r\n=\r\n", "AUTH PLAIN =\r\n",
		"USER alice@example.org\r\nPASS correct horse battery\r\nTOP 1 0\r\nRETR 2\r\nDELE 1\r\nRSET\r\nQUIT\r\n",
		"USER alice@example.org\nPASS correct horse battery\nLIST\nUIDL\nDELE 2\n",
		"STLS\r\nCAPA\r\n", "\x00\xff\r\n", strings.Repeat("A", 10000),
	} {
		f.Add([]byte(s))
	}

	e := newEnv(f, envOptions{config: func(c *Config) {
		c.AuthDuration = units.DurationOf(0)
		c.FailedLoginDelay = units.DurationOf(1)
		c.FailedLoginDelayMax = units.DurationOf(1)
		c.MaxLineLength = 1024
	}})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		done := make(chan []byte)
		go func() {
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			out, _ := io.ReadAll(c)
			done <- out
		}()
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		c.Write(in) // the server may close first; that is fine
		c.(*net.TCPConn).CloseWrite()
		out := <-done

		if len(out) == 0 || !bytes.HasSuffix(out, []byte("\r\n")) {
			t.Fatalf("output %q does not end in CRLF (did the session hang?)", out)
		}
		if !bytes.HasPrefix(out, []byte("+OK ")) {
			t.Fatalf("no greeting: %q", out)
		}
		if strings.Contains(e.logs.String(), "panicked") {
			t.Fatalf("the server panicked:\n%s", e.logs.String())
		}
		msgs := e.messagesT(t, alice)
		if len(msgs) < len(fixtureMessages) {
			if !bytes.Contains(bytes.ToUpper(in), []byte("QUIT")) {
				t.Fatalf("messages deleted without QUIT; input %q", in)
			}
			// Put the fixture back for the next input.
			for _, m := range fixtureMessages[len(msgs):] {
				e.deliverT(t, alice, []byte(m))
			}
		}
	})
}
