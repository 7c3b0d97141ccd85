package smtpin

import "github.com/postie/postie/smtpin/authcheck"

// noDNSComment explains the none verdicts of a server without DNS
// (Deps.NoDNS).
const noDNSComment = "local mode: no DNS lookups"

// noDNSSPF is the SPF verdict of a server without DNS: none, since local
// mode does no DNS lookups and so has no policy to check (rather than
// temperror, which says a lookup failed and might succeed later).
func noDNSSPF(helo, mailFrom string) authcheck.SPF {
	v := authcheck.SPF{Result: authcheck.None, Property: "smtp.mailfrom", Value: mailFrom, Comment: noDNSComment}
	if mailFrom == "" {
		v.Property, v.Value = "smtp.helo", helo
	}
	return v
}
