package setupcheck

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postie/postie/internal/testutil"
)

const (
	host   = "mail.example.test"
	domain = "example.test"
	ip4    = "192.0.2.10" // TEST-NET-1: never in /etc/hosts
	ip6    = "2001:db8::10"
)

// goodZone publishes everything a correct setup has.
func goodZone(d *testutil.DNSServer) {
	d.Add(domain, "MX", "10 "+host+".")
	d.Add(host, "A", ip4)
	d.Add(host, "AAAA", ip6)
	d.Add("10.2.0.192.in-addr.arpa", "PTR", host+".")
	d.Add(reverseName(netip.MustParseAddr(ip6)), "PTR", host+".")
	d.Add("_dmarc."+domain, "TXT", "v=DMARC1; p=quarantine")
	d.Add("_mta-sts."+domain, "TXT", "v=STSv1; id=20261125T000000")
	d.Add("mta-sts."+domain, "CNAME", host+".")
	d.Add("mta-sts."+domain, "A", ip4)
	d.Add("_smtp._tls."+domain, "TXT", "v=TLSRPTv1; rua=mailto:postmaster@"+domain)
	d.Add("autoconfig."+domain, "A", ip4)
	d.Add("_pop3s._tcp."+domain, "SRV", "0 1 995 "+host+".")
}

func params() Params {
	return Params{
		Hostname:       host,
		Domains:        []string{domain},
		Addresses:      []netip.Addr{netip.MustParseAddr(ip4), netip.MustParseAddr(ip6)},
		MTASTS:         true,
		MTASTSPolicyID: "20261125T000000",
		Autoconfig:     true,
	}
}

func run(t *testing.T, p Params, zone func(d *testutil.DNSServer)) []Finding {
	t.Helper()
	d := testutil.NewDNSServer(t)
	zone(d)
	return Run(context.Background(), p, d.Resolver())
}

func TestAllGood(t *testing.T) {
	fs := run(t, params(), goodZone)
	for _, f := range fs {
		if f.Severity != OK {
			t.Errorf("%s %s: %s %v", f.Severity, f.Area, f.Message, f.Fix)
		}
	}
	areas := map[string]bool{}
	for _, f := range fs {
		areas[f.Area] = true
	}
	for _, a := range []string{"MX", "A/AAAA", "rDNS", "DMARC", "MTA-STS", "TLS-RPT", "autoconfig"} {
		if !areas[a] {
			t.Errorf("no finding for %s", a)
		}
	}
}

// Each problem: a change to the good zone, and the finding it must cause,
// with the record that fixes it.
func TestEachProblem(t *testing.T) {
	tests := []struct {
		name   string
		params func(*Params)
		zone   func(d *testutil.DNSServer)
		sev    Severity
		area   string
		msg    string // in the message
		fix    string // in the fix
	}{
		{"no MX", nil, func(d *testutil.DNSServer) { d.Remove(domain) },
			Problem, "MX", "no MX record", "example.test. IN MX 10 mail.example.test."},
		{"MX elsewhere", nil, func(d *testutil.DNSServer) { d.Remove(domain); d.Add(domain, "MX", "10 mx.other.test.") },
			Problem, "MX", "do not name mail.example.test", "example.test. IN MX 10 mail.example.test."},
		{"second MX", nil, func(d *testutil.DNSServer) { d.Add(domain, "MX", "20 backup.other.test.") },
			Warning, "MX", "several MX records", ""},
		{"MX lookup fails", nil, func(d *testutil.DNSServer) { d.Fail(domain, dns.RcodeServerFailure) },
			Problem, "MX", "failed", "IN MX 10"},
		{"no address", nil, func(d *testutil.DNSServer) { d.Remove(host) },
			Problem, "A/AAAA", "does not exist", "mail.example.test. IN A 192.0.2.10"},
		{"IPv6 missing", nil, func(d *testutil.DNSServer) { d.Remove(host); d.Add(host, "A", ip4) },
			Problem, "A/AAAA", "does not resolve to 2001:db8::10", "mail.example.test. IN AAAA 2001:db8::10"},
		{"stray address", nil, func(d *testutil.DNSServer) { d.Add(host, "A", "198.51.100.7") },
			Problem, "A/AAAA", "also resolves to 198.51.100.7", "remove: mail.example.test. IN A 198.51.100.7"},
		{"no address, none configured", func(p *Params) { p.Addresses = nil }, func(d *testutil.DNSServer) { d.Remove(host) },
			Problem, "A/AAAA", "does not exist", "IN A <this server's IPv4 address>"},
		{"host is a CNAME", nil, func(d *testutil.DNSServer) {
			d.Remove(host)
			d.Add(host, "CNAME", "vps123.provider.test.")
			d.Add("vps123.provider.test", "A", ip4)
			d.Add("vps123.provider.test", "AAAA", ip6)
		}, Warning, "A/AAAA", "alias (CNAME)", "replace the CNAME"},
		{"no reverse DNS", nil, func(d *testutil.DNSServer) { d.Remove("10.2.0.192.in-addr.arpa") },
			Problem, "rDNS", "reverse DNS of 192.0.2.10 does not exist", "10.2.0.192.in-addr.arpa. IN PTR mail.example.test."},
		{"wrong reverse DNS", nil, func(d *testutil.DNSServer) {
			d.Remove("10.2.0.192.in-addr.arpa")
			d.Add("10.2.0.192.in-addr.arpa", "PTR", "vps123.provider.test.")
		}, Problem, "rDNS", "is vps123.provider.test., not mail.example.test", "VPS provider"},
		{"IPv6 reverse DNS", nil, func(d *testutil.DNSServer) { d.Remove(reverseName(netip.MustParseAddr(ip6))) },
			Problem, "rDNS", "2001:db8::10", "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. IN PTR mail.example.test."},
		{"no DMARC", nil, func(d *testutil.DNSServer) { d.Remove("_dmarc." + domain) },
			Warning, "DMARC", "no DMARC record", `_dmarc.example.test. IN TXT "v=DMARC1; p=quarantine`},
		{"two DMARC", nil, func(d *testutil.DNSServer) { d.Add("_dmarc."+domain, "TXT", "v=DMARC1; p=none") },
			Problem, "DMARC", "2 DMARC records", "keep only one"},
		{"no MTA-STS record", nil, func(d *testutil.DNSServer) { d.Remove("_mta-sts." + domain) },
			Problem, "MTA-STS", "no MTA-STS record", `_mta-sts.example.test. IN TXT "v=STSv1; id=20261125T000000"`},
		{"stale MTA-STS id", nil, func(d *testutil.DNSServer) {
			d.Remove("_mta-sts." + domain)
			d.Add("_mta-sts."+domain, "TXT", "v=STSv1; id=old")
		}, Problem, "MTA-STS", "keep an old policy", `"v=STSv1; id=20261125T000000"`},
		{"no mta-sts host", nil, func(d *testutil.DNSServer) { d.Remove("mta-sts." + domain) },
			Problem, "MTA-STS", "mta-sts.example.test does not exist", "mta-sts.example.test. IN CNAME mail.example.test."},
		{"mta-sts host elsewhere", nil, func(d *testutil.DNSServer) {
			d.Remove("mta-sts." + domain)
			d.Add("mta-sts."+domain, "A", "198.51.100.9")
		}, Problem, "MTA-STS", "not to this server", "IN CNAME mail.example.test."},
		{"no TLS-RPT", nil, func(d *testutil.DNSServer) { d.Remove("_smtp._tls." + domain) },
			Warning, "TLS-RPT", "no TLS-RPT record", `_smtp._tls.example.test. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.test"`},
		{"no autoconfig host", nil, func(d *testutil.DNSServer) { d.Remove("autoconfig." + domain) },
			Problem, "autoconfig", "autoconfig.example.test does not exist", "autoconfig.example.test. IN CNAME mail.example.test."},
		{"no SRV", nil, func(d *testutil.DNSServer) { d.Remove("_pop3s._tcp." + domain) },
			Warning, "autoconfig", "no _pop3s._tcp SRV", "_pop3s._tcp.example.test. IN SRV 0 1 995 mail.example.test."},
		{"SRV elsewhere", nil, func(d *testutil.DNSServer) {
			d.Remove("_pop3s._tcp." + domain)
			d.Add("_pop3s._tcp."+domain, "SRV", "0 1 995 pop.other.test.")
		}, Problem, "autoconfig", "points at pop.other.test.:995", "IN SRV 0 1 995 mail.example.test."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := params()
			if tt.params != nil {
				tt.params(&p)
			}
			fs := run(t, p, func(d *testutil.DNSServer) { goodZone(d); tt.zone(d) })
			for _, f := range fs {
				if f.Severity == tt.sev && f.Area == tt.area && strings.Contains(f.Message, tt.msg) && strings.Contains(strings.Join(f.Fix, "\n"), tt.fix) {
					return
				}
			}
			for _, f := range fs {
				if f.Severity != OK {
					t.Logf("got: %s %s: %s %q", f.Severity, f.Area, f.Message, f.Fix)
				}
			}
			t.Errorf("want %s %s containing %q with fix %q", tt.sev, tt.area, tt.msg, tt.fix)
		})
	}
}

func TestCertificate(t *testing.T) {
	ca := testutil.NewCA(t)
	serve := func(cert tls.Certificate) string {
		l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return l.Addr().String()
	}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	tests := []struct {
		name  string
		probe string
		sev   Severity
		msg   string
	}{
		{"trusted", serve(ca.IssueValid(t, time.Now().Add(90*24*time.Hour), host)), OK, "trusted"},
		{"expiring", serve(ca.IssueValid(t, time.Now().Add(5*24*time.Hour), host)), Warning, "expires in"},
		{"wrong name", serve(ca.Issue(t, "other.test")), Problem, "will not trust"},
		{"nothing listening", closedAddr, Problem, "no TLS answer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Params{Hostname: host, CertProbe: tt.probe, Roots: ca.Pool}
			fs := run(t, p, goodZone)
			for _, f := range fs {
				if f.Area == "certificate" {
					if f.Severity != tt.sev || !strings.Contains(f.Message, tt.msg) {
						t.Errorf("got %s %q, want %s containing %q", f.Severity, f.Message, tt.sev, tt.msg)
					}
					return
				}
			}
			t.Error("no certificate finding")
		})
	}
}
