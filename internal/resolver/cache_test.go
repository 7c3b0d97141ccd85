package resolver_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postie/postie/internal/resolver"
	"github.com/postie/postie/internal/testutil"
)

// lookup asks r for name's TXT records and returns them, whether the name
// was reported as not existing, and how many queries reached the server.
func lookup(t *testing.T, d *testutil.DNSServer, r *net.Resolver, name string) (txt []string, notFound bool, queries int64, err error) {
	t.Helper()
	before := d.Queries()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	txt, err = r.LookupTXT(ctx, name)
	var de *net.DNSError
	if errors.As(err, &de) {
		notFound = de.IsNotFound
	}
	return txt, notFound, d.Queries() - before, err
}

func TestCache(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup prepares the server; change alters it after the first lookup.
		setup, change func(d *testutil.DNSServer)
		entries       int
		maxTTL        time.Duration
		wait          time.Duration // between the lookups
		// The second lookup: whether it reaches the server, and what it sees.
		wantAsked bool
		wantTXT   string // "" with wantNX
		wantNX    bool
	}{
		{
			name:    "an answer is kept: a changed record is not seen within its TTL",
			setup:   func(d *testutil.DNSServer) { d.Add("a.example", "TXT", "v=spf1 -all") },
			change:  func(d *testutil.DNSServer) { d.Remove("a.example"); d.Add("a.example", "TXT", "changed") },
			entries: 100, maxTTL: time.Hour,
			wantTXT: "v=spf1 -all",
		},
		{
			name:    "no such name is kept too (RFC 2308)",
			setup:   func(d *testutil.DNSServer) {},
			change:  func(d *testutil.DNSServer) { d.Add("a.example", "TXT", "now there") },
			entries: 100, maxTTL: time.Hour,
			wantNX: true,
		},
		{
			name:    "a server failure is never kept: the next lookup asks again",
			setup:   func(d *testutil.DNSServer) { d.Fail("a.example", dns.RcodeServerFailure) },
			change:  func(d *testutil.DNSServer) { d.Heal("a.example"); d.Add("a.example", "TXT", "healed") },
			entries: 100, maxTTL: time.Hour,
			wantAsked: true, wantTXT: "healed",
		},
		{
			name:    "max TTL bounds how long an answer is kept",
			setup:   func(d *testutil.DNSServer) { d.Add("a.example", "TXT", "old") },
			change:  func(d *testutil.DNSServer) { d.Remove("a.example"); d.Add("a.example", "TXT", "new") },
			entries: 100, maxTTL: time.Second, wait: 1500 * time.Millisecond,
			wantAsked: true, wantTXT: "new",
		},
		{
			name:    "no entries: no cache",
			setup:   func(d *testutil.DNSServer) { d.Add("a.example", "TXT", "old") },
			change:  func(d *testutil.DNSServer) { d.Remove("a.example"); d.Add("a.example", "TXT", "new") },
			entries: 0, maxTTL: time.Hour,
			wantAsked: true, wantTXT: "new",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testutil.NewDNSServer(t)
			tc.setup(d)
			r := resolver.Cache(d.Resolver(), tc.entries, tc.maxTTL)
			if _, _, asked, _ := lookup(t, d, r, "a.example"); asked == 0 {
				t.Fatal("the first lookup did not reach the server")
			}
			tc.change(d)
			time.Sleep(tc.wait)
			txt, nx, asked, err := lookup(t, d, r, "a.example")
			if (asked > 0) != tc.wantAsked {
				t.Errorf("second lookup sent %d queries to the server, want asked=%v", asked, tc.wantAsked)
			}
			switch {
			case tc.wantNX:
				if !nx {
					t.Errorf("second lookup = %q, %v; want no such name", txt, err)
				}
			default:
				if err != nil || len(txt) != 1 || txt[0] != tc.wantTXT {
					t.Errorf("second lookup = %q, %v; want [%q]", txt, err, tc.wantTXT)
				}
			}
		})
	}
}

// TestCacheKeepsAtMostEntries: the cache is bounded, so a peer that makes
// the server look up many names (random sender domains) costs bounded
// memory; old entries make room and are asked again.
func TestCacheKeepsAtMostEntries(t *testing.T) {
	d := testutil.NewDNSServer(t)
	const names = 64
	for i := range names {
		d.Add(name(i), "TXT", "x")
	}
	r := resolver.Cache(d.Resolver(), 8, time.Hour)
	for i := range names {
		if _, _, _, err := lookup(t, d, r, name(i)); err != nil {
			t.Fatal(err)
		}
	}
	var asked int64
	for i := range names {
		_, _, n, err := lookup(t, d, r, name(i))
		if err != nil {
			t.Fatal(err)
		}
		asked += n
	}
	// At most 8 of the 64 can still be held.
	if asked < names-8 {
		t.Fatalf("second round sent %d queries for %d names: more than 8 answers were kept", asked, names)
	}
}

func name(i int) string { return "n" + string(rune('a'+i/26)) + string(rune('a'+i%26)) + ".example" }

// TestCacheConcurrent exercises the cache from many goroutines under -race.
func TestCacheConcurrent(t *testing.T) {
	d := testutil.NewDNSServer(t)
	for i := range 10 {
		d.Add(name(i), "TXT", name(i))
	}
	r := resolver.Cache(d.Resolver(), 4, time.Hour)
	errs := make(chan error, 20)
	for g := range 20 {
		go func() {
			var err error
			for i := range 50 {
				n := name((g + i) % 10)
				var txt []string
				if txt, err = r.LookupTXT(context.Background(), n); err == nil && (len(txt) != 1 || txt[0] != n) {
					err = errors.New(n + ": wrong answer " + txt[0])
				}
				if err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
