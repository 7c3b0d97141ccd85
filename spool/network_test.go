package spool

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestKnownNetworks: a successful login makes its network known to the
// account (an IPv4 address, an IPv6 /64) for 30 days; at most 32 networks
// are kept, the least recent forgotten first; other accounts and unknown
// accounts know nothing.
func TestKnownNetworks(t *testing.T) {
	clock := newClock()
	s := openTest(t, func(o *Options) { o.Now = clock.Now })
	mustAddAccount(t, s, "alice@example.com")
	mustAddAccount(t, s, "bob@example.com")
	ctx := context.Background()
	login := func(ip string) {
		t.Helper()
		m, err := s.OpenMaildrop(ctx, Login{Account: "alice@example.com"}, ip)
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	known := func(addr, ip string) bool {
		t.Helper()
		ok, err := s.KnownNetwork(addr, netip.MustParseAddr(ip))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	login("192.0.2.10")
	login("2001:db8:1:2::5")
	for _, tc := range []struct {
		addr, ip string
		want     bool
	}{
		{"alice@example.com", "192.0.2.10", true},
		{"Alice@Example.com", "192.0.2.10", true},
		{"alice@example.com", "::ffff:192.0.2.10", true},
		{"alice@example.com", "192.0.2.11", false},
		{"alice@example.com", "2001:db8:1:2::99", true}, // the same /64
		{"alice@example.com", "2001:db8:1:3::5", false},
		{"bob@example.com", "192.0.2.10", false},
		{"nobody@example.com", "192.0.2.10", false},
		{"not an address", "192.0.2.10", false},
	} {
		if got := known(tc.addr, tc.ip); got != tc.want {
			t.Errorf("KnownNetwork(%s, %s) = %v, want %v", tc.addr, tc.ip, got, tc.want)
		}
	}
	clock.Advance(31 * 24 * time.Hour)
	if known("alice@example.com", "192.0.2.10") {
		t.Error("a network is still known 31 days after its last login")
	}
	// Bounded: 40 networks log in, the last 32 are kept.
	for i := range 40 {
		clock.Advance(time.Minute)
		login(fmt.Sprintf("198.51.100.%d", i))
	}
	if known("alice@example.com", "198.51.100.7") || !known("alice@example.com", "198.51.100.8") || !known("alice@example.com", "198.51.100.39") {
		t.Error("the 32 most recent networks are not the ones kept")
	}
}
