package smtpin

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postie/postie/internal/units"
)

func TestReverseName(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":        "7.2.0.192",
		"::ffff:192.0.2.7": "7.2.0.192",
		"2001:db8::1":      "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2",
	} {
		if got := reverseName(netip.MustParseAddr(in)); got != want {
			t.Errorf("reverseName(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestDNSBL runs the connect-time blocklist check against the loopback DNS
// server: the test client connects from 127.0.0.1, so the zone's record for
// 1.0.0.127 says whether it is listed.
func TestDNSBL(t *testing.T) {
	const listed = "1.0.0.127.bl.example"
	tests := []struct {
		name    string
		zone    func(d *dnsZone)
		greets  string
		logPart string
	}{
		{"listed", func(d *dnsZone) { d.add(listed, "A", "127.0.0.2") }, "554 5.7.1", "blocklist"},
		{"not listed", func(d *dnsZone) {}, "220 ", ""},
		{"listed elsewhere only", func(d *dnsZone) { d.add("9.2.0.192.bl.example", "A", "127.0.0.2") }, "220 ", ""},
		{"query refused code", func(d *dnsZone) { d.add(listed, "A", "127.255.255.254") }, "220 ", "dnsbl refused the query"},
		{"list failing", func(d *dnsZone) { d.fail(listed) }, "220 ", "dnsbl lookup failed"},
		{"list silent", func(d *dnsZone) { d.drop(listed) }, "220 ", "dnsbl lookup failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, withConfig(func(c *Config) {
				c.DNSBL = []string{"bl.example"}
				c.DNSBLTimeout = units.DurationOf(500 * time.Millisecond)
			}))
			tt.zone(&dnsZone{e})
			c := e.dial()
			greeting := c.line()
			if !strings.HasPrefix(greeting, tt.greets) {
				t.Fatalf("greeting %q, want %q", greeting, tt.greets)
			}
			if tt.greets == "554 5.7.1" {
				if !strings.Contains(greeting, "blocked using bl.example") || !strings.Contains(greeting, "[127.0.0.1]") {
					t.Fatalf("the refusal does not name the list and the client: %q", greeting)
				}
				if !c.closed() {
					t.Fatal("a listed client was not disconnected")
				}
			} else {
				c.expect("250 ", "EHLO client.example")
				c.deliver("someone@sender.example", "Subject: hi\r\n\r\nhello\r\n", alice)
				if n := len(e.messages(alice)); n != 1 {
					t.Fatalf("%d messages stored, want 1", n)
				}
			}
			if tt.logPart != "" && len(e.logs.find(tt.logPart)) == 0 {
				t.Fatalf("no log line with %q", tt.logPart)
			}
		})
	}
}

// dnsZone adapts the env's DNS server for the table above.
type dnsZone struct{ e *env }

func (z *dnsZone) add(name, typ, value string) { z.e.dns.Add(name, typ, value) }
func (z *dnsZone) fail(name string)            { z.e.dns.Fail(name, dns.RcodeServerFailure) }
func (z *dnsZone) drop(name string)            { z.e.dns.Drop(name) }

func TestDNSBLConfig(t *testing.T) {
	c := testConfig()
	c.DNSBL = []string{"zen.spamhaus.org", "not a zone"}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), `smtp.dnsbl: "not a zone"`) {
		t.Fatalf("Validate: %v", err)
	}
}
