package tlsauto

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"

	"github.com/mholt/acmez/v3/acme"

	"github.com/postie/postie/internal/testutil"
)

// TestDiagnose maps the errors certmagic returns to what the owner should
// do, for the cases the Pebble tests cannot produce.
func TestDiagnose(t *testing.T) {
	dns := testutil.NewDNSServer(t)
	dns.Add("mail.example.com", "A", "192.0.2.7")
	cfg := validACME()
	cfg.DataDir = t.TempDir()
	m, err := New(cfg, Deps{Logger: discard(), Resolver: dns.Resolver()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.acme.prepare(&net.TCPAddr{Port: 80}, nil)

	problem := func(typ string) error {
		return fmt.Errorf("mail.example.com: obtaining certificate: %w", acme.Problem{Type: typ, Detail: "x"})
	}
	cases := []struct {
		err  error
		want string
	}{
		{problem(acme.ProblemTypeRateLimited), "rate limit"},
		{problem(acme.ProblemTypeCAA), "CAA record on mail.example.com"},
		{problem(acme.ProblemTypeExternalAccountRequired), "external account binding"},
		{problem(acme.ProblemTypeRejectedIdentifier), "will not issue"},
		{problem(acme.ProblemTypeUnauthorized), "resolves to 192.0.2.7: make sure those are this server's public addresses (remove stale AAAA records too) and that port 80 (HTTP-01) is open"},
		{fmt.Errorf("wrapped: %w", acme.Problem{Type: acme.ProblemTypeCompound, Subproblems: []acme.Subproblem{{Problem: acme.Problem{Type: acme.ProblemTypeConnection}}}}), "resolves to 192.0.2.7"},
		{fmt.Errorf("provisioning client: %w", &url.Error{Op: "Get", URL: "https://ca/dir", Err: x509.UnknownAuthorityError{}}), "tls.acme_ca_root"},
		{fmt.Errorf("provisioning client: %w", &url.Error{Op: "Get", URL: "https://ca/dir", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}), "cannot be reached"},
		{errors.New("performing request: dial tcp: lookup acme-v02.api.letsencrypt.org: no such host"), "cannot be reached"},
		{errors.New("something else"), "retries on its own"},
	}
	for _, c := range cases {
		if got := m.acme.diagnose(context.Background(), "mail.example.com", c.err); !strings.Contains(got, c.want) {
			t.Errorf("%v:\n got %q\nwant %q", c.err, got, c.want)
		}
	}
	if got := m.acme.diagnose(context.Background(), "nowhere.example.com", problem(acme.ProblemTypeDNS)); !strings.Contains(got, "nowhere.example.com does not resolve") {
		t.Errorf("unresolvable name: %q", got)
	}
}
