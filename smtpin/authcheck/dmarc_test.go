package authcheck

import (
	"context"
	"testing"

	"github.com/miekg/dns"

	"github.com/postie/postie/internal/testutil"
)

func TestLookupDMARC(t *testing.T) {
	d := testutil.NewDNSServer(t)
	d.Add("_dmarc.reject.example", "TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")
	d.Add("_dmarc.org.example", "TXT", "v=DMARC1; p=quarantine; sp=reject; pct=50")
	d.Add("_dmarc.nosp.example", "TXT", "v=DMARC1; p=none")
	d.Add("_dmarc.bad.example", "TXT", "v=DMARC1; p=maybe")
	d.Add("_dmarc.other.example", "TXT", "v=spf1 -all")
	d.Fail("_dmarc.temp.example", dns.RcodeServerFailure)
	d.Fail("_dmarc.sub.tempo.example", dns.RcodeServerFailure)
	d.Add("_dmarc.tempo.example", "TXT", "v=DMARC1; p=reject")
	r := d.Resolver()

	for _, tc := range []struct {
		domain  string
		result  Result
		policy  Policy
		percent int
		spf     Alignment
	}{
		{"reject.example", "", PolicyReject, 100, Strict},
		{"org.example", "", PolicyQuarantine, 50, Relaxed},
		// A subdomain without its own record takes sp= of the
		// organizational domain (RFC 7489 §6.6.3).
		{"mail.org.example", "", PolicyReject, 50, Relaxed},
		{"mail.nosp.example", "", PolicyNone, 100, Relaxed},
		{"none.example", None, "", 0, ""},
		{"other.example", None, "", 0, ""},
		{"bad.example", PermError, "", 0, ""},
		{"temp.example", TempError, "", 0, ""},
		// A temporary failure at the author domain does not fall back.
		{"sub.tempo.example", TempError, "", 0, ""},
	} {
		t.Run(tc.domain, func(t *testing.T) {
			got := LookupDMARC(context.Background(), r, tc.domain)
			if got.Result != tc.result || got.Policy != tc.policy || got.Percent != tc.percent || got.SPF != tc.spf {
				t.Errorf("LookupDMARC(%s) = %+v, want result %q policy %q pct %d aspf %q", tc.domain, got, tc.result, tc.policy, tc.percent, tc.spf)
			}
		})
	}
}

func TestEvaluateDMARC(t *testing.T) {
	relaxed := Record{Domain: "example.com", Policy: PolicyReject, Percent: 100, SPF: Relaxed, DKIM: Relaxed}
	strict := Record{Domain: "example.com", Policy: PolicyReject, Percent: 100, SPF: Strict, DKIM: Strict}
	sub := relaxed
	sub.Domain = "news.example.com"
	spfPass := func(d string) SPF { return SPF{Result: Pass, Domain: d} }
	dkimPass := func(d string) []DKIM { return []DKIM{{Result: Pass, Domain: d}} }

	for _, tc := range []struct {
		name      string
		rec       Record
		spf       SPF
		dkim      []DKIM
		want      Result
		spfA, dkA bool
	}{
		{"spf aligned", relaxed, spfPass("example.com"), nil, Pass, true, false},
		{"spf subdomain, relaxed", relaxed, spfPass("bounce.example.com"), nil, Pass, true, false},
		{"spf subdomain, strict", strict, spfPass("bounce.example.com"), nil, Fail, false, false},
		{"spf pass, other domain", relaxed, spfPass("example.org"), nil, Fail, false, false},
		{"spf fail, same domain", relaxed, SPF{Result: Fail, Domain: "example.com"}, nil, Fail, false, false},
		{"spf softfail, same domain", relaxed, SPF{Result: SoftFail, Domain: "example.com"}, nil, Fail, false, false},
		{"dkim aligned", relaxed, SPF{Result: Fail}, dkimPass("example.com"), Pass, false, true},
		{"dkim subdomain, relaxed", relaxed, SPF{Result: None}, dkimPass("mail.example.com"), Pass, false, true},
		{"dkim subdomain, strict", strict, SPF{Result: None}, dkimPass("mail.example.com"), Fail, false, false},
		{"dkim parent of author, relaxed", sub, SPF{Result: None}, dkimPass("example.com"), Pass, false, true},
		{"dkim other domain", relaxed, SPF{Result: None}, dkimPass("example.net"), Fail, false, false},
		{"dkim fail, same domain", relaxed, SPF{Result: None}, []DKIM{{Result: Fail, Domain: "example.com"}}, Fail, false, false},
		{"one of two signatures aligned", relaxed, SPF{Result: None}, []DKIM{{Result: Pass, Domain: "esp.example"}, {Result: Pass, Domain: "example.com"}}, Pass, false, true},
		// The null sender: SPF checked the HELO name, which aligns like
		// any SPF identifier.
		{"helo aligned (null sender)", relaxed, SPF{Result: Pass, Domain: "mx.example.com", Property: "smtp.helo"}, nil, Pass, true, false},
		{"no record: none, alignment still judged", Record{Domain: "example.com", Result: None}, spfPass("example.com"), nil, None, true, false},
		{"lookup temperror", Record{Domain: "example.com", Result: TempError}, spfPass("example.net"), nil, TempError, false, false},
		// A temporary failure of an aligned check is not a failure.
		{"aligned spf temperror", relaxed, SPF{Result: TempError, Domain: "example.com"}, nil, TempError, false, false},
		{"aligned dkim temperror", relaxed, SPF{Result: None}, []DKIM{{Result: TempError, Domain: "example.com"}}, TempError, false, false},
		{"unaligned spf temperror", relaxed, SPF{Result: TempError, Domain: "example.org"}, nil, Fail, false, false},
		{"unaligned dkim temperror", relaxed, SPF{Result: None}, []DKIM{{Result: TempError, Domain: "example.org"}}, Fail, false, false},
		{"temperror, but an aligned pass", relaxed, SPF{Result: TempError, Domain: "example.com"}, dkimPass("example.com"), Pass, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := EvaluateDMARC(tc.rec, tc.spf, tc.dkim)
			if got.Result != tc.want || got.SPFAligned != tc.spfA || got.DKIMAligned != tc.dkA {
				t.Errorf("got %s spf-aligned %v dkim-aligned %v, want %s %v %v", got.Result, got.SPFAligned, got.DKIMAligned, tc.want, tc.spfA, tc.dkA)
			}
		})
	}
}
