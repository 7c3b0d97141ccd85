package testutil

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postie/postie/internal/resolver"
)

func TestDNSServerThroughTheResolver(t *testing.T) {
	d := NewDNSServer(t)
	d.Add("example.com", "TXT", "v=spf1 -all")
	d.Add("example.com", "MX", "10 mail.example.com.")
	d.Add("mail.example.com", "A", "127.0.0.1")
	long := strings.Repeat("k", 600)
	d.Add("sel._domainkey.example.com", "TXT", long)
	d.Fail("broken.example", dns.RcodeServerFailure)
	d.Drop("slow.example")

	r, err := resolver.New(d.Addr, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	txt, err := r.LookupTXT(ctx, "example.com")
	if err != nil || len(txt) != 1 || txt[0] != "v=spf1 -all" {
		t.Fatalf("TXT: %q, %v", txt, err)
	}
	if txt, err := r.LookupTXT(ctx, "sel._domainkey.example.com"); err != nil || txt[0] != long {
		t.Fatalf("long TXT: %d chars, %v", len(strings.Join(txt, "")), err)
	}
	mx, err := r.LookupMX(ctx, "example.com")
	if err != nil || len(mx) != 1 || mx[0].Host != "mail.example.com." {
		t.Fatalf("MX: %v, %v", mx, err)
	}
	if ips, err := r.LookupHost(ctx, "mail.example.com"); err != nil || ips[0] != "127.0.0.1" {
		t.Fatalf("A: %v, %v", ips, err)
	}
	var de *net.DNSError
	if _, err := r.LookupTXT(ctx, "nothing.example.com"); !errors.As(err, &de) || !de.IsNotFound {
		t.Fatalf("NXDOMAIN: %v", err)
	}
	if _, err := r.LookupTXT(ctx, "broken.example"); !errors.As(err, &de) || de.IsNotFound {
		t.Fatalf("SERVFAIL: %v", err)
	}
	start := time.Now()
	if _, err := r.LookupTXT(ctx, "slow.example"); !errors.As(err, &de) || de.IsNotFound {
		t.Fatalf("dropped: %v", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("dropped query took %v", el)
	}
	if d.Queries() == 0 {
		t.Fatal("no queries counted")
	}
}
