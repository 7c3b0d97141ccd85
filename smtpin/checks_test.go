package smtpin

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"
	"github.com/miekg/dns"

	"github.com/postie/postie/internal/resolver"
	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/smtpin/internal/dkimtest"
)

// header returns the unfolded value of the first field called name in a
// stored message.
func header(t *testing.T, msg, name string) string {
	t.Helper()
	hdr, _, _ := strings.Cut(msg, "\r\n\r\n")
	lines := strings.Split(hdr, "\r\n")
	for i := 0; i < len(lines); i++ {
		k, v, ok := strings.Cut(lines[i], ":")
		if !ok || !strings.EqualFold(k, name) {
			continue
		}
		for i+1 < len(lines) && (strings.HasPrefix(lines[i+1], "\t") || strings.HasPrefix(lines[i+1], " ")) {
			i++
			v += " " + strings.TrimSpace(lines[i])
		}
		return strings.TrimSpace(v)
	}
	t.Fatalf("no %s field in %q", name, msg)
	return ""
}

// TestChecks delivers messages over a real socket to a server whose DNS is
// a real server on loopback, and looks at the verdicts stored in
// Authentication-Results, or at the refusal.
func TestChecks(t *testing.T) {
	rsa := dkimtest.NewRSA(t, "sender.example", "rsa")
	ed := dkimtest.NewEd25519(t, "sender.example", "ed")
	bankKey := dkimtest.NewEd25519(t, "bank.example", "k1")
	espKey := dkimtest.NewEd25519(t, "esp.example", "k1")
	tempKey := dkimtest.NewEd25519(t, "spffail.example", "gone")

	zone := func(e *env) {
		for _, k := range []*dkimtest.Key{rsa, ed, bankKey, espKey} {
			e.dns.Add(k.RecordName(), "TXT", k.Record(t))
		}
		e.dns.Add("spffail.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")
		e.dns.Fail(tempKey.RecordName(), dns.RcodeServerFailure)
		e.dns.Add("softfail.example", "TXT", "v=spf1 ~all")
		e.dns.Add("neutral.example", "TXT", "v=spf1 ?all")
		e.dns.Fail("temp.example", dns.RcodeServerFailure)
		e.dns.Add("bank.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")
		e.dns.Add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject; sp=reject")
		e.dns.Add("_dmarc.quarantine.example", "TXT", "v=DMARC1; p=quarantine")
		e.dns.Add("_dmarc.lenient.example", "TXT", "v=DMARC1; p=none")
		e.dns.Add("_dmarc.sampled.example", "TXT", "v=DMARC1; p=reject; pct=50")
		e.dns.Add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject")
		e.dns.Add("helo.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
		e.dns.Fail("_dmarc.tempdmarc.example", dns.RcodeServerFailure)
		e.dns.Fail("tempbank.example", dns.RcodeServerFailure)
		e.dns.Add("_dmarc.tempbank.example", "TXT", "v=DMARC1; p=reject")
	}
	plain := func(from string) string {
		return crlf("From: " + from + "\nTo: alice@example.test\nSubject: test\n\nHello,\nthis is the body.\n")
	}
	flip := func(m string) string { return strings.Replace(m, "this is the body", "this is the bodY", 1) }

	for _, tc := range []struct {
		name     string
		cfg      func(*Config)
		sample   bool // what a pct= sample says
		helo     string
		mailFrom string
		msg      string
		reply    string   // prefix of the reply to the data
		want     []string // parts of the stored Authentication-Results
	}{
		{name: "spf pass", mailFrom: "a@sender.example", msg: plain("a@sender.example"), reply: "250 ",
			want: []string{"spf=pass smtp.mailfrom=a@sender.example", "dkim=none", "dmarc=pass (p=reject) header.from=sender.example"}},
		{name: "spf fail is recorded", mailFrom: "a@spffail.example", msg: plain("a@spffail.example"), reply: "250 ",
			want: []string{"spf=fail smtp.mailfrom=a@spffail.example", "dmarc=none header.from=spffail.example"}},
		{name: "spf softfail", mailFrom: "a@softfail.example", msg: plain("a@softfail.example"), reply: "250 ",
			want: []string{"spf=softfail smtp.mailfrom=a@softfail.example"}},
		{name: "spf neutral", mailFrom: "a@neutral.example", msg: plain("a@neutral.example"), reply: "250 ",
			want: []string{"spf=neutral"}},
		{name: "spf none", mailFrom: "a@nothing.example", msg: plain("a@nothing.example"), reply: "250 ",
			want: []string{"spf=none smtp.mailfrom=a@nothing.example", "dmarc=none"}},
		{name: "spf temperror is accepted and recorded", mailFrom: "a@temp.example", msg: plain("a@temp.example"), reply: "250 ",
			want: []string{"spf=temperror smtp.mailfrom=a@temp.example"}},
		{name: "spf temperror with temperror_defer", cfg: func(c *Config) { c.Checks.TempErrorDefer = true },
			mailFrom: "a@temp.example", msg: plain("a@temp.example"), reply: "451 4.4.3 "},
		{name: "dmarc temperror with temperror_defer", cfg: func(c *Config) { c.Checks.TempErrorDefer = true },
			mailFrom: "a@sender.example", msg: plain("x@tempdmarc.example"), reply: "451 4.4.3 "},
		{name: "dmarc reject, spf temperror: not refused for good", mailFrom: "ceo@tempbank.example", msg: plain("ceo@tempbank.example"), reply: "250 ",
			want: []string{"spf=temperror smtp.mailfrom=ceo@tempbank.example", "dmarc=temperror (p=reject) header.from=tempbank.example"}},
		{name: "dmarc reject, spf temperror, temperror_defer", cfg: func(c *Config) { c.Checks.TempErrorDefer = true },
			mailFrom: "ceo@tempbank.example", msg: plain("ceo@tempbank.example"), reply: "451 4.4.3 "},
		{name: "dmarc temperror is accepted and recorded", mailFrom: "a@sender.example", msg: plain("x@tempdmarc.example"), reply: "250 ",
			want: []string{"dmarc=temperror header.from=tempdmarc.example"}},
		{name: "spf_fail_reject refuses an spf fail", cfg: func(c *Config) { c.Checks.SPFFailReject = true },
			mailFrom: "a@spffail.example", msg: plain("a@spffail.example"), reply: "550 5.7.1 "},
		{name: "spf_fail_reject spares an aligned dkim pass", cfg: func(c *Config) { c.Checks.SPFFailReject = true },
			mailFrom: "ceo@bank.example", msg: bankKey.Sign(t, plain("ceo@bank.example")), reply: "250 ",
			want: []string{"spf=fail", "dkim=pass header.d=bank.example header.s=k1", "dmarc=pass (p=reject) header.from=bank.example"}},
		{name: "spf_fail_reject spares a dkim temperror", cfg: func(c *Config) { c.Checks.SPFFailReject = true },
			mailFrom: "a@spffail.example", msg: tempKey.Sign(t, plain("a@spffail.example")), reply: "250 ",
			want: []string{"spf=fail", "dkim=temperror header.d=spffail.example"}},
		{name: "spf_fail_reject with an unaligned dkim pass", cfg: func(c *Config) { c.Checks.SPFFailReject = true },
			mailFrom: "a@spffail.example", msg: espKey.Sign(t, plain("a@spffail.example")), reply: "550 5.7.1 "},
		{name: "dkim rsa pass", mailFrom: "a@sender.example", msg: rsa.Sign(t, plain("a@sender.example")), reply: "250 ",
			want: []string{"dkim=pass header.d=sender.example header.s=rsa header.b="}},
		{name: "dkim ed25519 pass", mailFrom: "a@sender.example", msg: ed.Sign(t, plain("a@sender.example")), reply: "250 ",
			want: []string{"dkim=pass header.d=sender.example header.s=ed"}},
		{name: "dkim rsa fails after one body byte changed", mailFrom: "a@sender.example", msg: flip(rsa.Sign(t, plain("a@sender.example"))), reply: "250 ",
			want: []string{"dkim=fail header.d=sender.example header.s=rsa", "dmarc=pass"}},
		{name: "dkim ed25519 fails after one body byte changed", mailFrom: "a@sender.example", msg: flip(ed.Sign(t, plain("a@sender.example"))), reply: "250 ",
			want: []string{"dkim=fail header.d=sender.example header.s=ed"}},
		{name: "dkim signatures over the cap", cfg: func(c *Config) { c.Checks.MaxDKIMSignatures = 1 },
			mailFrom: "a@sender.example", msg: rsa.Sign(t, ed.Sign(t, plain("a@sender.example"))), reply: "250 ",
			want: []string{"dkim=pass header.d=sender.example header.s=rsa", "dkim=permerror header.d=sender.example header.s=ed"}},
		{name: "dkim: a header without its empty line is not verified", mailFrom: "a@sender.example",
			msg: strings.Replace(ed.Sign(t, plain("a@sender.example")), "\r\n\r\n", "\r\nnot a field\r\n"+strings.Repeat(" z\r\n", 5000), 1), reply: "250 ",
			want: []string{"dkim=permerror header.d=sender.example header.s=ed", "spf=pass"}},
		{name: "dkim: a field folded over too many lines is not verified", mailFrom: "a@sender.example",
			msg: ed.Sign(t, strings.Replace(plain("a@sender.example"), "Subject: test\r\n", "Subject: test\r\n"+strings.Repeat(" y\r\n", 600), 1)), reply: "250 ",
			want: []string{"dkim=permerror header.d=sender.example header.s=ed"}},
		{name: "dmarc reject refuses", mailFrom: "a@sender.example", msg: plain("The CEO <ceo@bank.example>"),
			reply: "550 5.7.1 Message refused: it fails the DMARC policy of bank.example"},
		{name: "dmarc reject, subdomain takes sp=", mailFrom: "a@sender.example", msg: plain("ceo@news.bank.example"),
			reply: "550 5.7.1 Message refused: it fails the DMARC policy of news.bank.example"},
		{name: "dmarc reject, broken signature", mailFrom: "a@sender.example", msg: flip(bankKey.Sign(t, plain("ceo@bank.example"))), reply: "550 5.7.1 "},
		{name: "dmarc reject, two From fields", mailFrom: "a@sender.example",
			msg:   crlf("From: a@sender.example\nFrom: ceo@bank.example\nSubject: two\n\nbody\n"),
			reply: "550 5.7.1 Message refused: it fails the DMARC policy of bank.example"},
		{name: "dmarc reject, aligned dkim passes", mailFrom: "a@sender.example", msg: bankKey.Sign(t, plain("ceo@bank.example")), reply: "250 ",
			want: []string{"spf=pass", "dkim=pass header.d=bank.example", "dmarc=pass (p=reject) header.from=bank.example"}},
		{name: "dmarc_reject off", cfg: func(c *Config) { c.Checks.DMARCReject = false },
			mailFrom: "a@sender.example", msg: plain("ceo@bank.example"), reply: "250 ",
			want: []string{"dmarc=fail (p=reject) header.from=bank.example"}},
		{name: "dmarc none accepts with the verdict", mailFrom: "a@sender.example", msg: plain("x@lenient.example"), reply: "250 ",
			want: []string{"dmarc=fail (p=none) header.from=lenient.example"}},
		{name: "dmarc quarantine accepts with the verdict", mailFrom: "a@sender.example", msg: plain("x@quarantine.example"), reply: "250 ",
			want: []string{"dmarc=fail (p=quarantine) header.from=quarantine.example"}},
		{name: "dmarc pct, not sampled", mailFrom: "a@sender.example", msg: plain("x@sampled.example"), sample: false, reply: "250 ",
			want: []string{"dmarc=fail (p=reject) header.from=sampled.example"}},
		{name: "dmarc pct, sampled", mailFrom: "a@sender.example", msg: plain("x@sampled.example"), sample: true, reply: "550 5.7.1 "},
		{name: "null sender: spf of the HELO name, aligned", helo: "helo.example", mailFrom: "", msg: plain("mailer-daemon@helo.example"), reply: "250 ",
			want: []string{"spf=pass smtp.helo=helo.example", "dmarc=none header.from=helo.example"}},
		{name: "null sender: HELO not aligned with a reject domain", helo: "helo.example", mailFrom: "", msg: plain("ceo@bank.example"), reply: "550 5.7.1 "},
		{name: "no From field", mailFrom: "a@sender.example", msg: crlf("Subject: anonymous\n\nbody\n"), reply: "250 ",
			want: []string{"dmarc=permerror (no author domain)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, func(c *Config, d *Deps) {
				if tc.cfg != nil {
					tc.cfg(c)
				}
				d.Sample = func(int) bool { return tc.sample }
			})
			zone(e)
			c := e.dial()
			c.line()
			helo := tc.helo
			if helo == "" {
				helo = "client.example"
			}
			c.expect("250 ", "EHLO %s", helo)
			got := c.deliver(tc.mailFrom, tc.msg, alice)
			if !strings.HasPrefix(got, tc.reply) {
				t.Fatalf("reply %q, want %q", got, tc.reply)
			}
			stored := e.messages(alice)
			if tc.reply != "250 " {
				if len(stored) != 0 {
					t.Fatalf("a refused message was stored: %q", stored)
				}
				return
			}
			if len(stored) != 1 {
				t.Fatalf("%d messages stored, want 1", len(stored))
			}
			ar := header(t, stored[0], "Authentication-Results")
			for _, w := range tc.want {
				if !strings.Contains(ar, w) {
					t.Errorf("Authentication-Results %q lacks %q", ar, w)
				}
			}
			if id, _, err := authres.Parse(ar); err != nil || id != testHost {
				t.Errorf("Authentication-Results %q: authserv-id %q, %v", ar, id, err)
			}
		})
	}
}

// TestChecksOffline: in "postie local" the resolver has no network, and the
// checks say so at once (temperror) instead of making the sender wait for
// the check timeout, which is an hour here.
func TestChecksOffline(t *testing.T) {
	e := newEnv(t, func(c *Config, d *Deps) {
		d.Resolver = resolver.Offline()
		c.Checks.Timeout = units.DurationOf(time.Hour)
	})
	c := e.dial()
	c.hello()
	ed := dkimtest.NewEd25519(t, "sender.example", "ed")
	msg := ed.Sign(t, crlf("From: a@sender.example\nSubject: offline\n\nbody\n"))
	if got := c.deliver("a@sender.example", msg, alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("reply %q", got)
	}
	ar := header(t, e.messages(alice)[0], "Authentication-Results")
	for _, w := range []string{"spf=temperror", "dkim=temperror", "dmarc=temperror"} {
		if !strings.Contains(ar, w) {
			t.Errorf("Authentication-Results %q lacks %q", ar, w)
		}
	}
	if q := e.dns.Queries(); q != 0 {
		t.Errorf("%d queries reached the DNS server", q)
	}
}

// TestChecksNoLookupsWithoutRecipient: a transaction that reaches nobody
// costs no DNS lookups.
func TestChecksNoLookupsWithoutRecipient(t *testing.T) {
	e := newEnv(t)
	c := e.dial()
	c.hello()
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	c.expect("550 5.1.1", "RCPT TO:<nobody@example.test>")
	c.expect("550 5.7.1", "RCPT TO:<x@foreign.example>")
	c.expect("502 5.5.1", "DATA")
	c.expect("250 ", "RSET")
	c.expect("221 ", "QUIT")
	if q := e.dns.Queries(); q != 0 {
		t.Errorf("%d DNS queries for a transaction without recipients: %v", q, e.dns.Log())
	}
}

// TestChecksTimeoutBounded: a DNS server that never answers costs the
// sender the check timeout at most, and the verdict is temperror.
func TestChecksTimeoutBounded(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.Checks.Timeout = units.DurationOf(300 * time.Millisecond) }))
	e.dns.Drop("slow.example")
	e.dns.Drop("_dmarc.slow.example")
	c := e.dial()
	c.hello()
	if got := c.deliver("a@slow.example", crlf("From: a@slow.example\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("reply %q", got)
	}
	ar := header(t, e.messages(alice)[0], "Authentication-Results")
	if !strings.Contains(ar, "spf=temperror") || !strings.Contains(ar, "dmarc=temperror") {
		t.Errorf("Authentication-Results %q: want spf and dmarc temperror", ar)
	}
}

// TestChecksSlowMessage: checks that finished while a message was still
// coming in keep their verdicts, however long the message took past the
// check timeout.
func TestChecksSlowMessage(t *testing.T) {
	// The timeout leaves the checks ample time on a loaded machine; the
	// body then arrives well after it has passed.
	e := newEnv(t, withConfig(func(c *Config) { c.Checks.Timeout = units.DurationOf(500 * time.Millisecond) }))
	e.dns.Add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject")
	ed := dkimtest.NewEd25519(t, "sender.example", "ed")
	e.dns.Add(ed.RecordName(), "TXT", ed.Record(t))
	msg := ed.Sign(t, crlf("From: a@sender.example\nSubject: slow\n\nfirst line\nsecond line\n"))
	head, body, _ := strings.Cut(msg, "\r\n\r\n")
	c := e.dial()
	c.hello()
	c.expect("250 ", "MAIL FROM:<a@sender.example>")
	c.expect("250 ", "RCPT TO:<alice@example.test>")
	c.expect("354 ", "DATA")
	c.raw(head + "\r\n\r\n")
	time.Sleep(1500 * time.Millisecond) // past the check timeout
	c.raw(body + ".\r\n")
	if got := c.reply(); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("reply %q", got)
	}
	ar := header(t, e.messages(alice)[0], "Authentication-Results")
	for _, w := range []string{"spf=pass", "dkim=pass", "dmarc=pass"} {
		if !strings.Contains(ar, w) {
			t.Errorf("Authentication-Results %q lacks %q", ar, w)
		}
	}
}

// TestChecksNoDNS: a server without DNS by design (local mode) records SPF
// and DMARC as none, saying why, and asks the resolver nothing; a
// temperror would claim a lookup failed.
func TestChecksNoDNS(t *testing.T) {
	e := newEnv(t, func(_ *Config, d *Deps) { d.NoDNS = true })
	e.dns.Add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject")
	c := e.dial()
	c.hello()
	if got := c.deliver("a@sender.example", crlf("From: a@sender.example\n\nbody\n"), alice); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("reply %q", got)
	}
	ar := header(t, e.messages(alice)[0], "Authentication-Results")
	for _, w := range []string{"spf=none (local mode: no DNS lookups) smtp.mailfrom=a@sender.example", "dmarc=none (local mode: no DNS lookups) header.from=sender.example"} {
		if !strings.Contains(ar, w) {
			t.Errorf("Authentication-Results %q lacks %q", ar, w)
		}
	}
	if strings.Contains(ar, "temperror") {
		t.Errorf("Authentication-Results %q: temperror without DNS by design", ar)
	}
	if q := e.dns.Queries(); q != 0 {
		t.Errorf("%d DNS queries without DNS: %v", q, e.dns.Log())
	}
	e.logs.waitFor(t, "spf=none", "dmarc=none:sender.example")
}
