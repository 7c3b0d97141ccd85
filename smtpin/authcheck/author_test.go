package authcheck

import (
	"slices"
	"testing"

	"github.com/postie/postie/internal/dnsname"
)

func TestAuthorDomains(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string
		want   []string
	}{
		{"plain", []string{"alice@example.com"}, []string{"example.com"}},
		{"display name", []string{`"Alice" <alice@Example.COM>`}, []string{"example.com"}},
		{"encoded word, unknown charset", []string{`=?x-unknown?q?Al=E9?= <a@example.com>`}, []string{"example.com"}},
		{"display name that looks like an address", []string{`"ceo@bank.example" <x@evil.example>`}, []string{"evil.example"}},
		{"two addresses", []string{"a@one.example, b@two.example"}, []string{"one.example", "two.example"}},
		{"two addresses, same domain", []string{"a@one.example, b@ONE.example"}, []string{"one.example"}},
		{"group", []string{"team: a@one.example, b@two.example;"}, []string{"one.example", "two.example"}},
		{"two From fields", []string{"a@one.example", "b@two.example"}, []string{"one.example", "two.example"}},
		{"two From fields, subdomain", []string{"a@example.com", "b@mail.example.com"}, []string{"example.com", "mail.example.com"}},
		{"malformed: still found", []string{"<ceo@bank.example>>"}, []string{"bank.example"}},
		{"malformed, two domains", []string{"x@a.example <y@b.example"}, []string{"a.example", "b.example"}},
		{"no address", []string{"Undisclosed"}, nil},
		{"empty", nil, nil},
		{"address literal", []string{"a@[192.0.2.1]"}, nil},
		{"idn", []string{"a@bücher.example"}, []string{"xn--bcher-kva.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := AuthorDomains(tc.values); !slices.Equal(got, tc.want) {
				t.Errorf("AuthorDomains(%q) = %q, want %q", tc.values, got, tc.want)
			}
		})
	}
}

func FuzzAuthorDomains(f *testing.F) {
	for _, s := range []string{"a@b.example", `"x" <a@b.c>, d@e.f`, "<a@b>>", "=?utf-8?q?x?= <a@b.c>", "g: a@b.c;", "@@@", "a@[1.2.3.4]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		for _, d := range AuthorDomains([]string{v}) {
			if d == "" || dnsname.Normalize(d) != d {
				t.Fatalf("AuthorDomains(%q) gave %q, which is not normalized", v, d)
			}
		}
	})
}
