// Package dnsname is the one place domain names are normalised: the mail
// domains of the config, the domains of addresses in SMTP, the domains the
// SPF, DKIM and DMARC checks compare. Every part compares names in the form
// Normalize returns, so "Bücher.example." and "xn--bcher-kva.example" are
// the same domain everywhere.
package dnsname

import (
	"strings"

	"golang.org/x/net/idna"
)

// Normalize returns d in the form domain names are compared in: lower
// case, without a trailing dot, internationalized labels as A-labels
// (xn--). It returns "" for a name that is not a domain.
func Normalize(d string) string {
	d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	if d == "" || strings.HasPrefix(d, "[") {
		return ""
	}
	ascii := true
	for i := 0; i < len(d); i++ {
		c := d[i]
		if c >= 0x80 {
			ascii = false
			continue
		}
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return ""
		}
	}
	if !ascii {
		a, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return ""
		}
		d = a
	}
	if strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") || len(d) > 253 {
		return ""
	}
	return d
}
