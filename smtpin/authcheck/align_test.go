package authcheck

import "testing"

func TestOrgDomain(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"example.com", "example.com"},
		{"mail.example.com", "example.com"},
		{"a.b.c.example.co.uk", "example.co.uk"},
		{"co.uk", "co.uk"},
		{"com", "com"},
		{"sender.example", "sender.example"},
		{"x.sender.example", "sender.example"},
		{"localhost", "localhost"},
	} {
		if got := OrgDomain(tc.in); got != tc.want {
			t.Errorf("OrgDomain(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestAligned is the alignment table of RFC 7489 §3.1: strict needs the
// same name, relaxed the same organizational domain.
func TestAligned(t *testing.T) {
	for _, tc := range []struct {
		id, from string
		mode     Alignment
		want     bool
	}{
		{"example.com", "example.com", Strict, true},
		{"example.com", "example.com", Relaxed, true},
		{"mail.example.com", "example.com", Relaxed, true},
		{"mail.example.com", "example.com", Strict, false},
		{"example.com", "news.example.com", Relaxed, true},
		{"example.com", "news.example.com", Strict, false},
		{"a.example.com", "b.example.com", Relaxed, true},
		{"a.example.com", "b.example.com", Strict, false},
		{"example.org", "example.com", Relaxed, false},
		{"evil-example.com", "example.com", Relaxed, false},
		{"example.com.evil.net", "example.com", Relaxed, false},
		// Different registrations under a public suffix are not aligned.
		{"alice.co.uk", "bob.co.uk", Relaxed, false},
		{"co.uk", "bob.co.uk", Relaxed, false},
		{"shop.alice.co.uk", "alice.co.uk", Relaxed, true},
		// Nothing aligns with nothing.
		{"", "example.com", Relaxed, false},
		{"example.com", "", Relaxed, false},
		{"", "", Strict, false},
	} {
		if got := Aligned(tc.id, tc.from, tc.mode); got != tc.want {
			t.Errorf("Aligned(%q, %q, %s) = %v, want %v", tc.id, tc.from, tc.mode, got, tc.want)
		}
	}
}
