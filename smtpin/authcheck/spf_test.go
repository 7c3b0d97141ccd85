package authcheck

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postie/postie/internal/testutil"
)

var loopback = net.ParseIP("127.0.0.1")

// TestCheckSPF runs each SPF outcome against a real DNS server on loopback.
func TestCheckSPF(t *testing.T) {
	d := testutil.NewDNSServer(t)
	d.Add("pass.example", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
	d.Add("fail.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")
	d.Add("softfail.example", "TXT", "v=spf1 ~all")
	d.Add("neutral.example", "TXT", "v=spf1 ?all")
	d.Add("nospf.example", "TXT", "some other record")
	d.Add("bad.example", "TXT", "v=spf1 ip4:not-an-ip -all")
	d.Add("viamx.example", "TXT", "v=spf1 mx -all")
	d.Add("viamx.example", "MX", "10 mx.viamx.example.")
	d.Add("mx.viamx.example", "A", "127.0.0.1")
	d.Add("helo.example", "TXT", "v=spf1 a -all")
	d.Add("helo.example", "A", "127.0.0.1")
	d.Fail("servfail.example", dns.RcodeServerFailure)
	d.Drop("dropped.example")
	r := d.Resolver()

	for _, tc := range []struct {
		name, helo, from string
		want             Result
		prop, domain     string
	}{
		{"pass", "client.example", "a@pass.example", Pass, "smtp.mailfrom", "pass.example"},
		{"pass via mx", "client.example", "a@viamx.example", Pass, "smtp.mailfrom", "viamx.example"},
		{"fail", "client.example", "a@fail.example", Fail, "smtp.mailfrom", "fail.example"},
		{"softfail", "client.example", "a@softfail.example", SoftFail, "smtp.mailfrom", "softfail.example"},
		{"neutral", "client.example", "a@neutral.example", Neutral, "smtp.mailfrom", "neutral.example"},
		{"none: no record", "client.example", "a@nospf.example", None, "smtp.mailfrom", "nospf.example"},
		{"none: no domain", "client.example", "a@nxdomain.example", None, "smtp.mailfrom", "nxdomain.example"},
		{"none: address literal", "client.example", "a@[127.0.0.1]", None, "smtp.mailfrom", ""},
		{"permerror", "client.example", "a@bad.example", PermError, "smtp.mailfrom", "bad.example"},
		{"temperror: SERVFAIL", "client.example", "a@servfail.example", TempError, "smtp.mailfrom", "servfail.example"},
		{"null sender checks HELO", "helo.example", "", Pass, "smtp.helo", "helo.example"},
		{"null sender, HELO fails", "fail.example", "", Fail, "smtp.helo", "fail.example"},
		{"case and trailing dot", "client.example", "a@PASS.example.", Pass, "smtp.mailfrom", "pass.example"},
		{"quoted local part with @", "client.example", "a@b@pass.example", Pass, "smtp.mailfrom", "pass.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CheckSPF(context.Background(), r, loopback, tc.helo, tc.from)
			if got.Result != tc.want || got.Property != tc.prop || got.Domain != tc.domain {
				t.Errorf("CheckSPF(%q, %q) = %+v, want %s %s domain %q", tc.helo, tc.from, got, tc.want, tc.prop, tc.domain)
			}
		})
	}

	t.Run("temperror: timeout bounded by the context", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		got := CheckSPF(ctx, r, loopback, "client.example", "a@dropped.example")
		if got.Result != TempError || got.Err == nil {
			t.Errorf("got %+v, want temperror with a cause", got)
		}
	})
}
