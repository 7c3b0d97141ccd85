package authcheck

import (
	"golang.org/x/net/publicsuffix"
)

// Alignment is how closely two domains must match to be aligned
// (RFC 7489 §3.1): "r" (relaxed, the default) or "s" (strict).
type Alignment string

// The alignment modes of a DMARC record's adkim and aspf tags.
const (
	Relaxed Alignment = "r"
	Strict  Alignment = "s"
)

// OrgDomain returns the organizational domain of d (RFC 7489 §3.2): the
// public suffix of d plus one label, or d itself when d is a public suffix
// or not under a known one. d must be normalized.
func OrgDomain(d string) string {
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return org
}

// Aligned reports whether the authenticated domain id is aligned with the
// author domain from (RFC 7489 §3.1): equal in strict mode, with the same
// organizational domain in relaxed mode. Both must be normalized.
func Aligned(id, from string, mode Alignment) bool {
	if id == "" || from == "" {
		return false
	}
	if id == from {
		return true
	}
	if mode == Strict {
		return false
	}
	return OrgDomain(id) == OrgDomain(from)
}
