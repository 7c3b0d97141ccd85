package authcheck

import (
	"context"
	"net"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/postie/postie/internal/dnsname"
)

// SPF is the verdict of the SPF check of one transaction.
type SPF struct {
	Result Result
	// Domain is the domain whose policy was checked: that of MAIL FROM, or
	// the HELO name for the null sender. It is the SPF identifier DMARC
	// aligns with the author domain. Normalized; "" when there was none
	// to check.
	Domain string
	// Property and Value name the identity checked in
	// Authentication-Results: "smtp.mailfrom" and the sender address, or
	// "smtp.helo" and the HELO name.
	Property, Value string
	// Err is the cause of a result other than pass, for the log.
	Err error
	// Comment, if set, follows the result in Authentication-Results as
	// an RFC 8601 comment: why the result is what it is.
	Comment string
}

// CheckSPF evaluates the SPF policy (RFC 7208 §4) for a client at ip that
// said HELO helo and MAIL FROM mailFrom ("" for the null sender, in which
// case the HELO name is checked as postmaster@helo, §2.4). The library
// keeps to the RFC's limits of 10 lookups and 2 void lookups (§4.6.4); ctx
// bounds the time.
func CheckSPF(ctx context.Context, r Resolver, ip net.IP, helo, mailFrom string) (v SPF) {
	v = SPF{Property: "smtp.mailfrom", Value: mailFrom}
	defer recovered("spf", func(err error) { v.Result, v.Err = PermError, err })
	sender := mailFrom
	if mailFrom == "" {
		v.Property, v.Value = "smtp.helo", helo
		sender = "postmaster@" + helo
	}
	at := strings.LastIndexByte(sender, '@')
	v.Domain = dnsname.Normalize(sender[at+1:])
	if v.Domain == "" {
		// An address literal or a malformed name: there is no policy to
		// look up (RFC 7208 §4.3: "none").
		v.Result = None
		return v
	}
	local := sender[:at]
	if strings.Contains(local, "@") {
		// A quoted local part with an "@" in it: the library splits at the
		// first "@", so give it a local part it reads as one.
		local = "postmaster"
	}
	res, err := spf.CheckHostWithSender(ip, helo, local+"@"+v.Domain, spf.WithContext(ctx), spf.WithResolver(r))
	v.Result = Result(res)
	switch res {
	case spf.Pass:
	case spf.None:
		if err != nil && err != spf.ErrNoResult {
			v.Err = err
		}
	default:
		v.Err = err
	}
	if v.Result == TempError && v.Err == nil {
		v.Err = ctx.Err()
	}
	return v
}
