package smtpin

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	toml "github.com/pelletier/go-toml/v2"

	"github.com/postie/postie/internal/testutil"
)

// TestTranscripts plays every testdata/transcripts/*.txt over a real
// socket against a fresh server, with the shared harness
// (testutil.Transcript; the syntax is in docs/transcripts.md). Before the
// dialogue, these lines set up the server:
//
//	! config max_errors = 3         a line of TOML for the [smtp] table
//	! dns NAME TYPE VALUE           a record in the DNS server
//	! dnsfail NAME                  SERVFAIL for a name
//	! tls notready                  no certificate yet: no STARTTLS
//	! expect alice@example.test 1   the account has that many messages after
//
// A NAME.verify file beside NAME.txt, if present, must equal the messages
// stored for alice and bob after the dialogue, each under a "=== account
// #n" line, with this server's trace fields (Return-Path,
// Authentication-Results, Received) taken off and CRLF shown as "\n".
func TestTranscripts(t *testing.T) {
	testutil.RunTranscripts(t, "testdata/transcripts/*.txt", runTranscript)
}

func runTranscript(t *testing.T, tr *testutil.Transcript) {
	var tomlLines []string
	var records [][3]string
	var fails []string
	tlsReady := true
	expect := map[string]int{}
	for _, s := range tr.Setup {
		switch s.Verb {
		case "config":
			tomlLines = append(tomlLines, s.Rest)
		case "dns":
			f := strings.SplitN(s.Rest, " ", 3)
			if len(f) != 3 {
				tr.Fatalf(t, s.No, "! dns NAME TYPE VALUE")
			}
			records = append(records, [3]string{f[0], f[1], f[2]})
		case "dnsfail":
			fails = append(fails, s.Rest)
		case "tls":
			if s.Rest != "notready" {
				tr.Fatalf(t, s.No, "! tls notready is the only TLS setting here")
			}
			tlsReady = false
		case "expect":
			acct, n, _ := strings.Cut(s.Rest, " ")
			v, err := strconv.Atoi(n)
			if err != nil {
				tr.Fatalf(t, s.No, "! expect ADDRESS COUNT")
			}
			expect[acct] = v
		default:
			tr.Fatalf(t, s.No, "unknown setup line ! %s", s.Verb)
		}
	}
	e := newEnv(t, withConfig(func(c *Config) {
		if err := toml.Unmarshal([]byte(strings.Join(tomlLines, "\n")), c); err != nil {
			t.Fatalf("%s: config lines: %v", tr.Path, err)
		}
	}))
	for _, r := range records {
		e.dns.Add(r[0], r[1], r[2])
	}
	for _, n := range fails {
		e.dns.Fail(n, dns.RcodeServerFailure)
	}
	e.tlsReady.set(tlsReady)

	tr.Play(t, testutil.Player{
		Dial: func() (net.Conn, error) { return net.DialTimeout("tcp", e.addr, 5*time.Second) },
		TLS:  e.ca.ClientConfig(testHost),
	})

	for acct, want := range expect {
		if got := len(e.messages(acct)); got != want {
			t.Errorf("%s has %d messages, want %d", acct, got, want)
		}
	}
	verifyPath := strings.TrimSuffix(tr.Path, ".txt") + ".verify"
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
