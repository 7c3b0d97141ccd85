package pop3out

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/postie/postie/internal/testutil"
	"github.com/postie/postie/spool"
)

// TestTranscripts plays every testdata/transcripts/*.txt against a real
// server on 127.0.0.1 with a temporary spool holding the fixture (alice has
// fixtureMessages, bob nothing; both use the password "correct horse
// battery"; UIDLs are "<uid>.1767323045"), with the shared harness
// (testutil.Transcript; the syntax is in docs/transcripts.md). A
// connection that is used without @dial-tls is dialled to the plaintext
// port.
//
// Before the dialogue, these lines set up the server:
//
//	! config max_errors = 3       a line of TOML for the [pop3] table
//	! spool retention = "1h"      a line of TOML for the [spool] table
//	! tls none                    no TLS at all
//	! tls notready                TLS configured, no certificate yet
//
// and in the dialogue, these directives act on the spool:
//
//	@messages ADDR N   the spool holds N messages for ADDR (waiting for
//	                   the sessions to release the maildrop)
//	@restore ADDR N    Store.Restore(ADDR) brings back N messages
//	@deliver ADDR      deliver lateMessage to ADDR now
func TestTranscripts(t *testing.T) {
	testutil.RunTranscripts(t, "testdata/transcripts/*.txt", playTranscript)
}

// transcriptLine matches a C or S line of a transcript, for FuzzSession's
// seeds: who, connection, kind and the rest.
var transcriptLine = regexp.MustCompile(`^([CS])(\d?)([:!~*])(.*)$`)

// lateMessage is what @deliver delivers (23 octets).
const lateMessage = "Subject: late\r\n\r\nlate\r\n"

func playTranscript(t *testing.T, tr *testutil.Transcript) {
	var o envOptions
	var configLines, spoolLines []string
	for _, s := range tr.Setup {
		switch s.Verb {
		case "config":
			configLines = append(configLines, s.Rest)
		case "spool":
			spoolLines = append(spoolLines, s.Rest)
		case "tls":
			switch s.Rest {
			case "none":
				o.noTLS = true
			case "notready":
				o.notReady = true
			default:
				tr.Fatalf(t, s.No, "! tls none|notready")
			}
		default:
			tr.Fatalf(t, s.No, "unknown setup line ! %s", s.Verb)
		}
	}
	o.config = func(c *Config) {
		if err := toml.Unmarshal([]byte(strings.Join(configLines, "\n")), c); err != nil {
			t.Fatalf("%s: config lines: %v", tr.Path, err)
		}
	}
	o.spool = func(so *spool.Options) {
		if err := toml.Unmarshal([]byte(strings.Join(spoolLines, "\n")), so); err != nil {
			t.Fatalf("%s: spool lines: %v", tr.Path, err)
		}
	}
	e := newEnv(t, o)

	p := testutil.Player{
		Dial: func() (net.Conn, error) { return net.Dial("tcp", e.addr) },
		TLS:  e.ca.ClientConfig(tlsName),
		Directive: func(s testutil.Step) error {
			switch s.Name {
			case "deliver":
				if len(s.Args) != 1 {
					return fmt.Errorf("@deliver ADDRESS")
				}
				e.deliverT(t, s.Args[0], []byte(lateMessage))
			case "messages", "restore":
				if len(s.Args) != 2 {
					return fmt.Errorf("@%s ADDRESS COUNT", s.Name)
				}
				want, err := strconv.Atoi(s.Args[1])
				if err != nil {
					return fmt.Errorf("@%s ADDRESS COUNT: %v", s.Name, err)
				}
				var got int
				if s.Name == "messages" {
					got = len(e.messagesT(t, s.Args[0]))
				} else if got, err = e.store.Restore(context.Background(), s.Args[0]); err != nil {
					return fmt.Errorf("Restore: %v", err)
				}
				if got != want {
					return fmt.Errorf("%s: got %d messages, want %d", s.Args[0], got, want)
				}
			default:
				return fmt.Errorf("unknown directive @%s", s.Name)
			}
			return nil
		},
	}
	if !o.noTLS {
		p.DialTLS = func() (net.Conn, error) { return tls.Dial("tcp", e.tlsAddr, e.ca.ClientConfig(tlsName)) }
	}
	tr.Play(t, p)
}
