// Package setupcheck looks at what the internet sees of a Postie server,
// the way a sending MTA and a mail client would, and says what is wrong and
// exactly which DNS record fixes it: MX records pointing at the host name,
// the host name's addresses, reverse DNS, DMARC, MTA-STS and TLS-RPT
// records, client autoconfiguration records, and the certificate the mail
// ports serve. "postie check" prints its findings.
package setupcheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/postie/postie/internal/plural"
)

// Resolver is the DNS a check needs; *net.Resolver satisfies it.
type Resolver interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupCNAME(ctx context.Context, host string) (string, error)
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
}

// Params say what the server should look like.
type Params struct {
	Hostname string
	Domains  []string
	// Addresses are the server's public addresses. Empty: the addresses
	// the host name resolves to are taken as the server's.
	Addresses []netip.Addr
	// MTASTS is on when the config publishes an MTA-STS policy;
	// MTASTSPolicyID is the id its TXT record must carry.
	MTASTS         bool
	MTASTSPolicyID string
	// Autoconfig is on when the server answers autoconfig.<domain>.
	Autoconfig bool
	// POP3SPort is the port clients use for POP3 over TLS (995).
	POP3SPort int
	// CertProbe is host:port to fetch the certificate from (empty: skip).
	CertProbe string
	// Roots verifies the certificate (nil: the system's roots).
	Roots *x509.CertPool
	// Now is the time certificate expiry is judged against.
	Now time.Time
}

// Severity grades a finding.
type Severity int

// Severities, from fine to broken.
const (
	OK Severity = iota
	Warning
	Problem
)

func (s Severity) String() string { return [...]string{"ok", "warning", "PROBLEM"}[s] }

// Finding is one thing checked.
type Finding struct {
	Severity Severity
	Area     string // "MX", "A/AAAA", "rDNS", "DMARC", "MTA-STS", "TLS-RPT", "autoconfig", "certificate"
	Message  string
	// Fix is what to do, usually the exact DNS record to publish.
	Fix []string
}

// Run runs every check and returns the findings in a stable order.
func Run(ctx context.Context, p Params, r Resolver) []Finding {
	c := &checker{p: p, r: r}
	if c.p.POP3SPort == 0 {
		c.p.POP3SPort = 995
	}
	if c.p.Now.IsZero() {
		c.p.Now = time.Now()
	}
	addrs := c.hostAddresses(ctx)
	for _, d := range p.Domains {
		c.mx(ctx, d)
	}
	c.reverse(ctx, addrs)
	for _, d := range p.Domains {
		c.dmarc(ctx, d)
		if p.MTASTS {
			c.mtaSTS(ctx, d, addrs)
			c.tlsRPT(ctx, d)
		}
		if p.Autoconfig {
			c.autoconfig(ctx, d, addrs)
		}
	}
	if p.CertProbe != "" {
		c.certificate(ctx)
	}
	return c.out
}

type checker struct {
	p   Params
	r   Resolver
	out []Finding
}

func (c *checker) add(sev Severity, area, msg string, fix ...string) {
	c.out = append(c.out, Finding{Severity: sev, Area: area, Message: msg, Fix: fix})
}

func fqdn(s string) string { return strings.TrimSuffix(strings.ToLower(s), ".") + "." }

func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// lookupError words a failed lookup: missing, or the DNS is failing.
func lookupError(what string, err error) string {
	if notFound(err) {
		return what + " does not exist"
	}
	return fmt.Sprintf("looking up %s failed: %v (temporary? try again)", what, err)
}

// mx checks that the domain's MX records point at the host name.
func (c *checker) mx(ctx context.Context, domain string) {
	fix := fmt.Sprintf("%s IN MX 10 %s", fqdn(domain), fqdn(c.p.Hostname))
	mxs, err := c.r.LookupMX(ctx, domain)
	if err != nil || len(mxs) == 0 {
		msg := "no MX record for " + domain + ": senders cannot find this server"
		if err != nil && !notFound(err) {
			msg = lookupError("the MX records of "+domain, err)
		}
		c.add(Problem, "MX", msg, "publish: "+fix)
		return
	}
	var hosts []string
	ours := false
	for _, m := range mxs {
		hosts = append(hosts, fmt.Sprintf("%d %s", m.Pref, m.Host))
		if fqdn(m.Host) == fqdn(c.p.Hostname) {
			ours = true
		}
	}
	if !ours {
		c.add(Problem, "MX", fmt.Sprintf("%s's MX records (%s) do not name %s: mail goes elsewhere", domain, strings.Join(hosts, ", "), c.p.Hostname), "publish: "+fix, "and remove the MX records of other servers unless they are meant to relay to this one")
		return
	}
	if len(mxs) > 1 {
		c.add(Warning, "MX", fmt.Sprintf("%s has several MX records (%s); mail sent to the others does not reach this server unless they relay to it", domain, strings.Join(hosts, ", ")))
		return
	}
	c.add(OK, "MX", fmt.Sprintf("%s: MX %s", domain, strings.Join(hosts, ", ")))
}

// hostAddresses checks the host name's A/AAAA records against the
// expected addresses and returns the addresses to check further.
func (c *checker) hostAddresses(ctx context.Context) []netip.Addr {
	host := c.p.Hostname
	if cname, err := c.r.LookupCNAME(ctx, host); err == nil && fqdn(cname) != fqdn(host) {
		c.add(Warning, "A/AAAA", fmt.Sprintf("%s is an alias (CNAME) of %s; an MX target must have its own A/AAAA records (RFC 2181 §10.3)", host, cname),
			fmt.Sprintf("replace the CNAME with: %s IN A <this server's IPv4 address>", fqdn(host)))
	}
	got, err := c.r.LookupNetIP(ctx, "ip", host)
	for i := range got {
		got[i] = got[i].Unmap()
	}
	if err != nil || len(got) == 0 {
		var fix []string
		for _, a := range c.p.Addresses {
			fix = append(fix, "publish: "+addressRecord(host, a))
		}
		if len(fix) == 0 {
			fix = []string{fmt.Sprintf("publish: %s IN A <this server's IPv4 address> (and AAAA for IPv6); run \"postie check -ip ADDRESS\" to check them", fqdn(host))}
		}
		c.add(Problem, "A/AAAA", lookupError("the address of "+host, err), fix...)
		return c.p.Addresses
	}
	if len(c.p.Addresses) == 0 {
		c.add(OK, "A/AAAA", fmt.Sprintf("%s has %s (pass -ip or set public_addresses to check they are this server's)", host, joinAddrs(got)))
		return got
	}
	for _, want := range c.p.Addresses {
		if !slices.Contains(got, want) {
			c.add(Problem, "A/AAAA", fmt.Sprintf("%s does not resolve to %s (it has %s)", host, want, joinAddrs(got)), "publish: "+addressRecord(host, want))
		}
	}
	for _, a := range got {
		if !slices.Contains(c.p.Addresses, a) {
			c.add(Problem, "A/AAAA", fmt.Sprintf("%s also resolves to %s, which is not this server: some senders will try it", host, a),
				fmt.Sprintf("remove: %s", addressRecord(host, a)))
		}
	}
	if sameSet(got, c.p.Addresses) {
		c.add(OK, "A/AAAA", fmt.Sprintf("%s has %s", host, joinAddrs(got)))
	}
	return c.p.Addresses
}

func addressRecord(host string, a netip.Addr) string {
	if a.Is4() {
		return fmt.Sprintf("%s IN A %s", fqdn(host), a)
	}
	return fmt.Sprintf("%s IN AAAA %s", fqdn(host), a)
}

func joinAddrs(as []netip.Addr) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, ", ")
}

func sameSet(a, b []netip.Addr) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			return false
		}
	}
	return true
}

// reverse checks that each address's reverse DNS names the host name;
// many receivers distrust a server whose reverse DNS does not match.
func (c *checker) reverse(ctx context.Context, addrs []netip.Addr) {
	for _, a := range addrs {
		arpa := reverseName(a)
		fix := []string{
			fmt.Sprintf("publish: %s IN PTR %s", arpa, fqdn(c.p.Hostname)),
			"(reverse DNS belongs to whoever owns the address: set it in your VPS provider's control panel)",
		}
		names, err := c.r.LookupAddr(ctx, a.String())
		if err != nil || len(names) == 0 {
			c.add(Problem, "rDNS", lookupError("reverse DNS of "+a.String(), err), fix...)
			continue
		}
		found := false
		for _, n := range names {
			if fqdn(n) == fqdn(c.p.Hostname) {
				found = true
			}
		}
		if !found {
			c.add(Problem, "rDNS", fmt.Sprintf("reverse DNS of %s is %s, not %s", a, strings.Join(names, ", "), c.p.Hostname), fix...)
			continue
		}
		c.add(OK, "rDNS", fmt.Sprintf("%s -> %s", a, c.p.Hostname))
	}
}

func reverseName(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0])
	}
	b := a.As16()
	var sb strings.Builder
	for i := 15; i >= 0; i-- {
		fmt.Fprintf(&sb, "%x.%x.", b[i]&0xf, b[i]>>4)
	}
	return sb.String() + "ip6.arpa."
}

// txtWith returns the TXT strings of name that start with prefix.
func (c *checker) txtWith(ctx context.Context, name, prefix string) ([]string, error) {
	txts, err := c.r.LookupTXT(ctx, name)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range txts {
		if strings.HasPrefix(strings.ToLower(strings.TrimSpace(t)), strings.ToLower(prefix)) {
			out = append(out, t)
		}
	}
	return out, nil
}

// dmarc recommends a DMARC record: it protects the owner's domain from
// being forged in mail sent to others.
func (c *checker) dmarc(ctx context.Context, domain string) {
	name := "_dmarc." + domain
	recs, err := c.txtWith(ctx, name, "v=DMARC1")
	fix := fmt.Sprintf("publish: %s IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@%s\" (start with p=none if other services send mail as %s)", fqdn(name), domain, domain)
	switch {
	case err != nil && !notFound(err):
		c.add(Warning, "DMARC", lookupError(name, err))
	case len(recs) == 0:
		c.add(Warning, "DMARC", "no DMARC record for "+domain+": others can forge mail from it more easily", fix)
	case len(recs) > 1:
		c.add(Problem, "DMARC", fmt.Sprintf("%s has %d DMARC records; receivers ignore all of them", name, len(recs)), "keep only one")
	default:
		c.add(OK, "DMARC", fmt.Sprintf("%s: %s", name, recs[0]))
	}
}

// pointsHere checks that name resolves (directly or by CNAME) to addrs.
func (c *checker) pointsHere(ctx context.Context, area, name string, addrs []netip.Addr) {
	fix := fmt.Sprintf("publish: %s IN CNAME %s", fqdn(name), fqdn(c.p.Hostname))
	got, err := c.r.LookupNetIP(ctx, "ip", name)
	if err != nil || len(got) == 0 {
		c.add(Problem, area, lookupError(name, err), fix)
		return
	}
	for i := range got {
		got[i] = got[i].Unmap()
	}
	for _, a := range got {
		if len(addrs) > 0 && !slices.Contains(addrs, a) {
			c.add(Problem, area, fmt.Sprintf("%s resolves to %s, not to this server (%s)", name, a, joinAddrs(addrs)), fix)
			return
		}
	}
	c.add(OK, area, fmt.Sprintf("%s -> %s", name, joinAddrs(got)))
}

// mtaSTS checks the records that announce the MTA-STS policy (RFC 8461 §3.1).
func (c *checker) mtaSTS(ctx context.Context, domain string, addrs []netip.Addr) {
	name := "_mta-sts." + domain
	want := "v=STSv1; id=" + c.p.MTASTSPolicyID
	fix := fmt.Sprintf("publish: %s IN TXT %q", fqdn(name), want)
	recs, err := c.txtWith(ctx, name, "v=STSv1")
	switch {
	case err != nil && !notFound(err):
		c.add(Problem, "MTA-STS", lookupError(name, err), fix)
	case len(recs) == 0:
		c.add(Problem, "MTA-STS", "no MTA-STS record for "+domain+": senders never fetch the policy", fix)
	case len(recs) > 1:
		c.add(Problem, "MTA-STS", fmt.Sprintf("%s has %d STSv1 records; senders ignore them", name, len(recs)), fix, "and remove the others")
	case !strings.Contains(strings.ReplaceAll(recs[0], " ", ""), "id="+c.p.MTASTSPolicyID):
		c.add(Problem, "MTA-STS", fmt.Sprintf("%s says %q; the policy now served has id %s, so senders keep an old policy", name, recs[0], c.p.MTASTSPolicyID), fix)
	default:
		c.add(OK, "MTA-STS", fmt.Sprintf("%s: %s", name, recs[0]))
	}
	c.pointsHere(ctx, "MTA-STS", "mta-sts."+domain, addrs)
}

// tlsRPT checks the TLS reporting record (RFC 8460 §3).
func (c *checker) tlsRPT(ctx context.Context, domain string) {
	name := "_smtp._tls." + domain
	fix := fmt.Sprintf("publish: %s IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@%s\"", fqdn(name), domain)
	recs, err := c.txtWith(ctx, name, "v=TLSRPTv1")
	switch {
	case err != nil && !notFound(err):
		c.add(Warning, "TLS-RPT", lookupError(name, err), fix)
	case len(recs) == 0:
		c.add(Warning, "TLS-RPT", "no TLS-RPT record for "+domain+": you will not hear when senders fail to reach you over TLS", fix)
	default:
		c.add(OK, "TLS-RPT", fmt.Sprintf("%s: %s", name, recs[0]))
	}
}

// autoconfig checks the names clients look up to configure themselves.
func (c *checker) autoconfig(ctx context.Context, domain string, addrs []netip.Addr) {
	c.pointsHere(ctx, "autoconfig", "autoconfig."+domain, addrs)
	srvFix := fmt.Sprintf("publish: _pop3s._tcp.%s IN SRV 0 1 %d %s", fqdn(domain), c.p.POP3SPort, fqdn(c.p.Hostname))
	_, srvs, err := c.r.LookupSRV(ctx, "pop3s", "tcp", domain)
	if err != nil || len(srvs) == 0 {
		c.add(Warning, "autoconfig", "no _pop3s._tcp SRV record for "+domain+" (RFC 6186): some clients cannot find the POP3 server by themselves", srvFix)
		return
	}
	for _, s := range srvs {
		if fqdn(s.Target) == fqdn(c.p.Hostname) && int(s.Port) == c.p.POP3SPort {
			c.add(OK, "autoconfig", fmt.Sprintf("_pop3s._tcp.%s -> %s:%d", domain, c.p.Hostname, s.Port))
			return
		}
	}
	c.add(Problem, "autoconfig", fmt.Sprintf("_pop3s._tcp.%s points at %s:%d, not %s:%d", domain, srvs[0].Target, srvs[0].Port, c.p.Hostname, c.p.POP3SPort), srvFix)
}

// certificate fetches the certificate the POP3S port serves, as a client
// would, and judges its chain, name and expiry.
func (c *checker) certificate(ctx context.Context) {
	d := tls.Dialer{Config: &tls.Config{ServerName: c.p.Hostname, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", c.p.CertProbe)
	if err != nil {
		c.add(Problem, "certificate", fmt.Sprintf("no TLS answer from %s: %v", c.p.CertProbe, err), "is \"postie serve\" running, and the port open in the firewall?")
		return
	}
	defer conn.Close()
	chain := conn.(*tls.Conn).ConnectionState().PeerCertificates
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	_, verr := leaf.Verify(x509.VerifyOptions{DNSName: c.p.Hostname, Roots: c.p.Roots, Intermediates: inter, CurrentTime: c.p.Now})
	left := leaf.NotAfter.Sub(c.p.Now)
	days := int(left.Hours() / 24)
	switch {
	case verr != nil:
		c.add(Problem, "certificate", fmt.Sprintf("%s serves a certificate clients will not trust: %v", c.p.CertProbe, verr),
			"with [tls] mode = \"acme\", make sure port 80 or 443 reaches this server and the host name resolves to it; the log says what the CA answered")
	case left < 14*24*time.Hour:
		c.add(Warning, "certificate", fmt.Sprintf("the certificate for %s expires in %s (%s); renewal should have happened by now", c.p.Hostname, plural.Count(days, "day"), leaf.NotAfter.Format(time.DateOnly)),
			"check the log for renewal errors")
	default:
		c.add(OK, "certificate", fmt.Sprintf("%s: trusted, issued by %s, expires %s (%s)", c.p.Hostname, leaf.Issuer.CommonName, leaf.NotAfter.Format(time.DateOnly), plural.Count(days, "day")))
	}
}
