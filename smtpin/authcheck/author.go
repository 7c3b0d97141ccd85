package authcheck

import (
	"io"
	"mime"
	"net/mail"
	"strings"

	"github.com/postie/postie/internal/dnsname"
)

// anyCharset lets the address parser skip encoded words in charsets the
// standard library does not know: only the addresses matter here, not the
// display names.
func anyCharset(_ string, input io.Reader) (io.Reader, error) { return input, nil }

// AuthorDomains returns the distinct author domains of a message, given
// the values of all its From fields, normalized and in order of
// appearance.
//
// RFC 5322 allows one From field, and RFC 7489 §6.6.1 has a receiver apply
// DMARC to every author domain and act on the strictest verdict. A value
// that does not parse as an address list is searched for anything that
// looks like "@domain" instead, so that a malformed field cannot hide its
// domain from the check (a mail reader may still show it). The result is
// empty when no domain is found at all.
func AuthorDomains(values []string) []string {
	parser := mail.AddressParser{WordDecoder: &mime.WordDecoder{CharsetReader: anyCharset}}
	var out []string
	add := func(d string) {
		if d = dnsname.Normalize(d); d == "" {
			return
		}
		for _, x := range out {
			if x == d {
				return
			}
		}
		out = append(out, d)
	}
	for _, v := range values {
		list, err := parser.ParseList(v)
		if err == nil && len(list) > 0 {
			for _, a := range list {
				add(a.Address[strings.LastIndexByte(a.Address, '@')+1:])
			}
			continue
		}
		for _, d := range scanDomains(v) {
			add(d)
		}
	}
	return out
}

// scanDomains returns every run of domain characters that follows an "@".
func scanDomains(v string) []string {
	var out []string
	for {
		i := strings.IndexByte(v, '@')
		if i < 0 {
			return out
		}
		v = v[i+1:]
		j := 0
		for j < len(v) && isDomainByte(v[j]) {
			j++
		}
		if j > 0 {
			out = append(out, v[:j])
		}
		v = v[j:]
	}
}

func isDomainByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c >= 0x80
}
