package tlsauto

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// diagnose says what the owner can do about a failure to get a
// certificate for name: the log line carries it beside the CA's error.
func (a *acmeSource) diagnose(ctx context.Context, name string, err error) string {
	var p acme.Problem
	if errors.As(err, &p) {
		types := []string{p.Type}
		for _, sp := range p.Subproblems {
			types = append(types, sp.Type)
		}
		has := func(t string) bool {
			for _, x := range types {
				if x == t {
					return true
				}
			}
			return false
		}
		switch {
		case has(acme.ProblemTypeRateLimited):
			return "the CA's rate limit was reached: Postie waits and retries on its own (restarting does not help; try tls.acme_staging = true while experimenting)"
		case has(acme.ProblemTypeCAA):
			return fmt.Sprintf("a CAA record on %s does not allow this CA: add one that does (for Let's Encrypt: 0 issue \"letsencrypt.org\") or remove it", name)
		case has(acme.ProblemTypeExternalAccountRequired):
			return "this CA wants an external account binding, which Postie does not support: use Let's Encrypt, or mode = \"files\""
		case has(acme.ProblemTypeRejectedIdentifier), has(acme.ProblemTypeUnsupportedIdentifier):
			return fmt.Sprintf("the CA will not issue a certificate for %s", name)
		case has(acme.ProblemTypeConnection), has(acme.ProblemTypeDNS), has(acme.ProblemTypeUnauthorized),
			has(acme.ProblemTypeIncorrectResponse), has(acme.ProblemTypeTLS):
			return a.reachability(ctx, name)
		}
	}
	var x509Err x509.UnknownAuthorityError
	if errors.As(err, &x509Err) || strings.Contains(err.Error(), "certificate signed by unknown authority") {
		return fmt.Sprintf("the HTTPS certificate of the CA at %s is not trusted: for a private CA, set tls.acme_ca_root to its root certificate", a.cfg.directory())
	}
	var ue *url.Error
	var ne net.Error
	if errors.As(err, &ue) || errors.As(err, &ne) || looksLikeNetworkError(err.Error()) {
		return fmt.Sprintf("the CA at %s cannot be reached: check that this server can make outbound HTTPS connections and resolve names (firewall, [dns] resolver); Postie retries on its own", a.cfg.directory())
	}
	return "Postie retries on its own; the error above is the CA's answer"
}

// reachability explains a failed validation: the CA could not reach this
// server under name.
func (a *acmeSource) reachability(ctx context.Context, name string) string {
	var ports []string
	if !a.issuer.DisableHTTPChallenge {
		ports = append(ports, "80 (HTTP-01)")
	}
	if !a.issuer.DisableTLSALPNChallenge {
		ports = append(ports, "443 (TLS-ALPN-01)")
	}
	open := "port " + strings.Join(ports, " or port ")
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := a.resolver.LookupHost(lctx, name)
	if err != nil || len(addrs) == 0 {
		return fmt.Sprintf("%s does not resolve (%v): publish A (and AAAA) records for it with this server's public addresses; then the CA also needs %s open to the internet", name, err, open)
	}
	return fmt.Sprintf("the CA could not reach this server as %s, which resolves to %s: make sure those are this server's public addresses (remove stale AAAA records too) and that %s is open to the internet (firewall, provider's security group)",
		name, strings.Join(addrs, ", "), open)
}

func looksLikeNetworkError(s string) bool {
	for _, sub := range []string{"connection refused", "no such host", "i/o timeout", "network is unreachable", "connection reset", "TLS handshake timeout"} {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
