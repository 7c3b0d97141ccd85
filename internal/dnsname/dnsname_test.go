package dnsname

import (
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Example.COM", "example.com"},
		{"example.com.", "example.com"},
		{" mail.example.org ", "mail.example.org"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"[127.0.0.1]", ""},
		{"", ""},
		{"exa mple.com", ""},
		{"a..b", ""},
		{".example.com", ""},
		{"evil.com>", ""},
		{"ex\x00ample.com", ""},
		{"Bücher.Example.", "xn--bcher-kva.example"},
		{strings.Repeat("a.", 130) + "com", ""},
	} {
		if got := Normalize(tc.in); got != tc.want {
			t.Errorf("Normalize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"example.com", "Bücher.example.", "[1.2.3.4]", "a..b", "xn--bcher-kva.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d string) {
		n := Normalize(d)
		if n == "" {
			return
		}
		// A normalised name is its own normal form, ASCII and lower case.
		if Normalize(n) != n {
			t.Fatalf("Normalize(%q) = %q, but Normalize(%q) = %q", d, n, n, Normalize(n))
		}
		for i := 0; i < len(n); i++ {
			if n[i] >= 0x80 || n[i] >= 'A' && n[i] <= 'Z' {
				t.Fatalf("Normalize(%q) = %q is not lower-case ASCII", d, n)
			}
		}
	})
}
