package smtpin

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"net/textproto"

	"github.com/emersion/go-milter"

	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/spool"
)

// scriptedMilter is a filter run by go-milter's own server over a real
// socket. It records what Postie told it and answers from its script.
type scriptedMilter struct {
	milter.NoOpMilter
	f *filterScript
}

// filterScript says what the filter does with a message, and records what
// it saw.
type filterScript struct {
	mu       sync.Mutex
	seen     []string // "helo x", "mail <a>", "rcpt <b>", "header N: V", "body ..."
	atHeader func(m *milter.Modifier) (milter.Response, error)
	atEnd    func(body string, m *milter.Modifier) (milter.Response, error)
	body     strings.Builder
}

func (f *filterScript) record(s string) {
	f.mu.Lock()
	f.seen = append(f.seen, s)
	f.mu.Unlock()
}

func (f *filterScript) saw(prefix string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.seen {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func (s scriptedMilter) Helo(name string, m *milter.Modifier) (milter.Response, error) {
	s.f.record("helo " + name)
	return milter.RespContinue, nil
}

func (s scriptedMilter) MailFrom(from string, m *milter.Modifier) (milter.Response, error) {
	s.f.record("mail " + from + " i=" + m.Macros["i"])
	return milter.RespContinue, nil
}

func (s scriptedMilter) RcptTo(rcpt string, m *milter.Modifier) (milter.Response, error) {
	s.f.record("rcpt " + rcpt)
	return milter.RespContinue, nil
}

func (s scriptedMilter) Header(name, value string, m *milter.Modifier) (milter.Response, error) {
	s.f.record("header " + name + ": " + value)
	return milter.RespContinue, nil
}

func (s scriptedMilter) Headers(h textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	if s.f.atHeader != nil {
		return s.f.atHeader(m)
	}
	return milter.RespContinue, nil
}

func (s scriptedMilter) BodyChunk(chunk []byte, m *milter.Modifier) (milter.Response, error) {
	s.f.mu.Lock()
	s.f.body.Write(chunk)
	s.f.mu.Unlock()
	return milter.RespContinue, nil
}

func (s scriptedMilter) Body(m *milter.Modifier) (milter.Response, error) {
	s.f.mu.Lock()
	body := s.f.body.String()
	s.f.body.Reset()
	s.f.mu.Unlock()
	if s.f.atEnd != nil {
		return s.f.atEnd(body, m)
	}
	return milter.RespAccept, nil
}

// startFilter runs a scripted filter on a loopback port and returns its
// address in the milter table's syntax.
func startFilter(t *testing.T, f *filterScript) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &milter.Server{
		NewMilter: func() milter.Milter { return scriptedMilter{f: f} },
		Actions:   milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "tcp:" + l.Addr().String()
}

func withMilters(ms ...MilterConfig) envOption {
	return withConfig(func(c *Config) { c.Milters = ms })
}

const filterTestMessage = "From: a@sender.example\nTo: alice@example.test\nSubject: hello\nX-Old: remove me\n\nfirst line\n.dotted line\nlast line\n"

// TestMilterSeesTheMessageAndChangesTheHeader: the filter sees HELO, MAIL
// with the transaction id, RCPT, every header field and the body; its added
// and changed fields land in the stored message, a field it deletes is gone,
// and the body is stored byte for byte.
func TestMilterSeesTheMessageAndChangesTheHeader(t *testing.T) {
	f := &filterScript{atEnd: func(body string, m *milter.Modifier) (milter.Response, error) {
		if body != "first line\r\n.dotted line\r\nlast line\r\n" {
			return milter.RespTempFail, nil
		}
		m.AddHeader("X-Spam-Score", "1.5 / 15")
		m.AddHeader("X-Spamd-Result", "default: False [1.50 / 15.00];\n\tSYMBOL_A(1.00)")
		m.ChangeHeader(1, "Subject", "[filtered] hello")
		m.ChangeHeader(1, "X-Old", "")
		return milter.RespAccept, nil
	}}
	e := newEnv(t, withMilters(MilterConfig{Name: "test", Address: startFilter(t, f)}))
	c := e.dial()
	c.hello()
	if got := c.deliver("a@sender.example", crlf(filterTestMessage), alice); !strings.HasPrefix(got, "250 2.0.0 Message stored") {
		t.Fatalf("DATA: %q", got)
	}
	for _, want := range []string{"helo client.example", "mail a@sender.example i=", "rcpt alice@example.test", "header Subject: hello", "header X-Old: remove me"} {
		if !f.saw(want) {
			t.Errorf("the filter did not see %q; it saw %q", want, f.seen)
		}
	}
	msgs := e.messages(alice)
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored", len(msgs))
	}
	m := msgs[0]
	for _, want := range []string{
		"Subject: [filtered] hello\r\n",
		"X-Spam-Score: 1.5 / 15\r\n",
		"X-Spamd-Result: default: False [1.50 / 15.00];\r\n\tSYMBOL_A(1.00)\r\n",
		"\r\n\r\nfirst line\r\n.dotted line\r\nlast line\r\n",
		"Received: from client.example",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("stored message lacks %q:\n%s", want, m)
		}
	}
	if strings.Contains(m, "X-Old") || strings.Contains(m, "Subject: hello") {
		t.Errorf("a field the filter changed or deleted is still there:\n%s", m)
	}
}

// TestMilterVerdicts: each of the filter's answers, at the header or at
// the end, gives the sender the right reply, and nothing is stored for a
// refusal.
func TestMilterVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header func(m *milter.Modifier) (milter.Response, error)
		end    func(string, *milter.Modifier) (milter.Response, error)
		want   string
		stored int
	}{
		{"accept", nil, func(string, *milter.Modifier) (milter.Response, error) { return milter.RespAccept, nil }, "250 2.0.0 Message stored", 1},
		{"continue", nil, func(string, *milter.Modifier) (milter.Response, error) { return milter.RespContinue, nil }, "250 2.0.0 Message stored", 1},
		{"reject at end", nil, func(string, *milter.Modifier) (milter.Response, error) { return milter.RespReject, nil }, "550 5.7.1 Message refused by a content filter", 0},
		{"reject at header", func(*milter.Modifier) (milter.Response, error) { return milter.RespReject, nil }, nil, "550 5.7.1 Message refused by a content filter", 0},
		{"tempfail", nil, func(string, *milter.Modifier) (milter.Response, error) { return milter.RespTempFail, nil }, "451 4.7.1 Message deferred by a content filter", 0},
		{"custom reply", nil, func(string, *milter.Modifier) (milter.Response, error) {
			return milter.NewResponseStr('y', "554 5.7.0 Spam message rejected\x00"), nil
		}, "554 5.7.0 Spam message rejected", 0},
		{"custom reply without enhanced code", nil, func(string, *milter.Modifier) (milter.Response, error) {
			return milter.NewResponseStr('y', "450 Try again\x00"), nil
		}, "450 4.7.1 Try again", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &filterScript{atHeader: tc.header, atEnd: tc.end}
			e := newEnv(t, withMilters(MilterConfig{Address: startFilter(t, f)}))
			c := e.dial()
			c.hello()
			if got := c.deliver("a@sender.example", crlf(filterTestMessage), alice); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("DATA: %q, want %q", got, tc.want)
			}
			if n := len(e.messages(alice)); n != tc.stored {
				t.Errorf("%d messages stored, want %d", n, tc.stored)
			}
		})
	}
}

// TestMilterFailure: a filter that cannot be reached, or does not answer in
// time, lets the mail through with on_failure = "accept" (the default) and
// defers it with "tempfail".
func TestMilterFailure(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := "tcp:" + dead.Addr().String()
	dead.Close()
	slow := &filterScript{atEnd: func(string, *milter.Modifier) (milter.Response, error) {
		time.Sleep(2 * time.Second)
		return milter.RespAccept, nil
	}}
	slowAddr := startFilter(t, slow)
	short := units.DurationOf(300 * time.Millisecond)
	for _, tc := range []struct {
		name string
		m    MilterConfig
		want string
	}{
		{"unreachable, accept", MilterConfig{Address: deadAddr}, "250 2.0.0 Message stored"},
		{"unreachable, tempfail", MilterConfig{Address: deadAddr, OnFailure: "tempfail"}, "451 4.7.1"},
		{"too slow, accept", MilterConfig{Address: slowAddr, Timeout: short}, "250 2.0.0 Message stored"},
		{"too slow, tempfail", MilterConfig{Address: slowAddr, Timeout: short, OnFailure: "tempfail"}, "451 4.7.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMilters(tc.m))
			c := e.dial()
			c.hello()
			if got := c.deliver("a@sender.example", crlf(filterTestMessage), alice); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("DATA: %q, want %q", got, tc.want)
			}
			e.logs.waitFor(t, "content filter failed")
		})
	}
}

func TestApplyHeaderMods(t *testing.T) {
	hdr := []byte("A: 1\r\nB: 2\r\n folded\r\nA: 3\r\n\r\n")
	for _, tc := range []struct {
		name string
		mods []milter.ModifyAction
		want string
		err  bool
	}{
		{"none", nil, string(hdr), false},
		{"add", []milter.ModifyAction{{Code: milter.ActAddHeader, HeaderName: "X", HeaderValue: "v"}}, "A: 1\r\nB: 2\r\n folded\r\nA: 3\r\nX: v\r\n\r\n", false},
		{"insert at top", []milter.ModifyAction{{Code: milter.ActInsertHeader, HeaderIndex: 0, HeaderName: "X", HeaderValue: "v"}}, "X: v\r\nA: 1\r\nB: 2\r\n folded\r\nA: 3\r\n\r\n", false},
		{"change the second A", []milter.ModifyAction{{Code: milter.ActChangeHeader, HeaderIndex: 2, HeaderName: "a", HeaderValue: "9"}}, "A: 1\r\nB: 2\r\n folded\r\na: 9\r\n\r\n", false},
		{"delete B", []milter.ModifyAction{{Code: milter.ActChangeHeader, HeaderIndex: 1, HeaderName: "B"}}, "A: 1\r\nA: 3\r\n\r\n", false},
		{"change one that is not there", []milter.ModifyAction{{Code: milter.ActChangeHeader, HeaderIndex: 5, HeaderName: "A", HeaderValue: "x"}}, string(hdr), false},
		{"folded value", []milter.ModifyAction{{Code: milter.ActAddHeader, HeaderName: "X", HeaderValue: "a\n\tb"}}, "A: 1\r\nB: 2\r\n folded\r\nA: 3\r\nX: a\r\n\tb\r\n\r\n", false},
		{"injected line", []milter.ModifyAction{{Code: milter.ActAddHeader, HeaderName: "X", HeaderValue: "a\nBcc: evil"}}, "", true},
		{"bad name", []milter.ModifyAction{{Code: milter.ActAddHeader, HeaderName: "X Y", HeaderValue: "v"}}, "", true},
		{"name with a colon", []milter.ModifyAction{{Code: milter.ActAddHeader, HeaderName: "Subject:x", HeaderValue: "v"}}, "", true},
		{"name with trailing space", []milter.ModifyAction{{Code: milter.ActAddHeader, HeaderName: "X ", HeaderValue: "v"}}, "", true},
		{"control character", []milter.ModifyAction{{Code: milter.ActAddHeader, HeaderName: "X", HeaderValue: "a\x00b"}}, "", true},
	} {
		got, err := applyHeaderMods(hdr, parseFields(hdr), tc.mods)
		if (err != nil) != tc.err || (!tc.err && string(got) != tc.want) {
			t.Errorf("%s: %q, %v; want %q (error %v)", tc.name, got, err, tc.want, tc.err)
		}
	}
}

// FuzzApplyHeaderMods: whatever a filter sends back, the header stays a
// header: every line a field or a continuation, CRLF endings, the empty
// line last.
func FuzzApplyHeaderMods(f *testing.F) {
	f.Add("A: 1\r\nB: 2\r\n\r\n", byte(milter.ActAddHeader), uint32(0), "X", "v")
	f.Add("A: 1\r\n\r\n", byte(milter.ActChangeHeader), uint32(1), "A", "")
	f.Add("A: 1\r\n\r\n", byte(milter.ActInsertHeader), uint32(7), "Y", "a\n b")
	f.Fuzz(func(t *testing.T, hdr string, code byte, idx uint32, name, value string) {
		h := spool.NormalizeLineEnds([]byte(hdr))
		if headerProblem(h) != "" {
			return // only well-formed header sections go in
		}
		out, err := applyHeaderMods(h, parseFields(h), []milter.ModifyAction{{Code: milter.ModifyActCode(code), HeaderIndex: idx, HeaderName: name, HeaderValue: value}})
		if err != nil {
			return
		}
		if p := headerProblem(out); p != "" {
			t.Fatalf("%s in %q", p, out)
		}
	})
}

// headerProblem says what is wrong with a header section, or "": every
// line a field or a continuation of one, CRLF endings, the empty line last
// (or nothing but it).
func headerProblem(h []byte) string {
	if string(h) == "\r\n" {
		return ""
	}
	if !strings.HasSuffix(string(h), "\r\n\r\n") {
		return "no empty line at the end"
	}
	for i, l := range strings.Split(strings.TrimSuffix(string(h), "\r\n\r\n"), "\r\n") {
		if l == "" || strings.ContainsAny(l, "\r\n") {
			return fmt.Sprintf("broken line %q", l)
		}
		if (l[0] == ' ' || l[0] == '\t') && i > 0 {
			continue
		}
		if !isFieldStart([]byte(l)) {
			return fmt.Sprintf("line %q is neither a field nor a continuation", l)
		}
	}
	return ""
}

// FuzzFilterReply: whatever code and text a filter sends as its own reply,
// the sender gets a 4xx or 5xx with an enhanced code of the same class and
// one line of printable ASCII.
func FuzzFilterReply(f *testing.F) {
	for _, s := range []string{"5.7.1 Spam", "4.2.0 later", "9.9.9 x", "", "5.7.1", "line\r\ninjected", "ünïcode"} {
		f.Add(554, s)
	}
	f.Fuzz(func(t *testing.T, code int, text string) {
		e := filterReply(code, text)
		if e.Code < 400 || e.Code > 599 || e.EnhancedCode[0] != e.Code/100 {
			t.Fatalf("filterReply(%d, %q) = %d %v", code, text, e.Code, e.EnhancedCode)
		}
		if e.Message == "" || len(e.Message) > 200 {
			t.Fatalf("filterReply(%d, %q): text %q", code, text, e.Message)
		}
		for i := 0; i < len(e.Message); i++ {
			if c := e.Message[i]; c < 0x20 || c > 0x7e {
				t.Fatalf("filterReply(%d, %q): byte %#x in %q", code, text, c, e.Message)
			}
		}
	})
}

// TestQuarantineFromFilters: a filter's quarantine or discard gets 250 and
// holds the message in the quarantine, not the mailbox; a filter's reject
// gets 550 and the owner's copy is held too; a tempfail keeps nothing.
// With the quarantine off, a quarantined message is delivered, marked.
func TestQuarantineFromFilters(t *testing.T) {
	for _, tc := range []struct {
		name     string
		end      func(string, *milter.Modifier) (milter.Response, error)
		off      bool
		reply    string
		held     int
		refused  bool
		reason   string
		inbox    int
		inboxHas string
	}{
		{name: "quarantine", end: func(_ string, m *milter.Modifier) (milter.Response, error) {
			m.Quarantine("looks like phishing")
			return milter.RespAccept, nil
		}, reply: "250 2.0.0 Message stored", held: 1, reason: "looks like phishing"},
		{name: "discard", end: func(string, *milter.Modifier) (milter.Response, error) { return milter.RespDiscard, nil },
			reply: "250 2.0.0 Message stored", held: 1, reason: "discarded by the filter"},
		{name: "reject", end: func(string, *milter.Modifier) (milter.Response, error) { return milter.RespReject, nil },
			reply: "550 5.7.1", held: 1, refused: true, reason: "reject"},
		{name: "tempfail", end: func(string, *milter.Modifier) (milter.Response, error) { return milter.RespTempFail, nil },
			reply: "451 4.7.1", held: 0},
		{name: "quarantine, then reject", end: func(_ string, m *milter.Modifier) (milter.Response, error) {
			m.Quarantine("suspicious")
			return milter.RespReject, nil
		}, reply: "550 5.7.1", held: 1, refused: true, reason: "reject"},
		{name: "quarantine off", off: true, end: func(_ string, m *milter.Modifier) (milter.Response, error) {
			m.Quarantine("looks like phishing")
			return milter.RespContinue, nil
		}, reply: "250 2.0.0 Message stored", inbox: 1, inboxHas: "X-Postie-Quarantine: asked by a content filter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &filterScript{atEnd: tc.end}
			e := newEnvSpool(t, func(o *spool.Options) {
				if tc.off {
					o.QuarantineRetention = units.DurationOf(0)
				}
			}, withMilters(MilterConfig{Name: "test", Address: startFilter(t, f)}))
			c := e.dial()
			c.hello()
			if got := c.deliver("a@sender.example", crlf(filterTestMessage), alice); !strings.HasPrefix(got, tc.reply) {
				t.Fatalf("DATA: %q, want %q", got, tc.reply)
			}
			held, err := e.store.QuarantineList(alice)
			if err != nil || len(held) != tc.held {
				t.Fatalf("quarantine: %+v, %v; want %d", held, err, tc.held)
			}
			if tc.held > 0 {
				q := held[0]
				if !strings.Contains(q.Reason, tc.reason) || q.Refused != tc.refused || q.Subject != "hello" || q.From != "a@sender.example" {
					t.Errorf("held %+v, want reason %q, refused %v", q, tc.reason, tc.refused)
				}
			}
			msgs := e.messages(alice)
			if len(msgs) != tc.inbox {
				t.Fatalf("%d messages in the mailbox, want %d", len(msgs), tc.inbox)
			}
			if tc.inboxHas != "" && !strings.Contains(msgs[0], tc.inboxHas) {
				t.Errorf("the delivered message lacks %q:\n%s", tc.inboxHas, msgs[0])
			}
		})
	}
}

// TestFilteredHeaderStoredAsUnfiltered: a header with a stray CR (which
// the store turns into a line end, ending the header early) is stored the
// same whether or not a filter looked at it.
func TestFilteredHeaderStoredAsUnfiltered(t *testing.T) {
	msg := "From: a@sender.example\r\nX-Odd: 1\r\r\nSubject: hi\r\n\r\nbody\r\n"
	stored := func(opts ...envOption) string {
		e := newEnv(t, opts...)
		c := e.dial()
		c.hello()
		if got := c.deliver("a@sender.example", msg, alice); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("DATA: %q", got)
		}
		m := e.messages(alice)[0]
		return m[strings.Index(m, "From: a@sender.example"):]
	}
	f := &filterScript{atEnd: func(string, *milter.Modifier) (milter.Response, error) { return milter.RespAccept, nil }}
	plain, filtered := stored(), stored(withMilters(MilterConfig{Address: startFilter(t, f)}))
	if plain != filtered {
		t.Errorf("stored without a filter:\n%q\nwith one:\n%q", plain, filtered)
	}
}
