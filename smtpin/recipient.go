package smtpin

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/internal/dnsname"
	"github.com/postie/postie/spool"
)

// router decides where a recipient's mail goes: which accounts, or which
// refusal. It is built from the config and never changed; Reload builds a
// new one.
type router struct {
	domains    map[string]string   // normalized (A-label) domain -> the configured spelling
	aliases    map[string][]string // address or "@domain" -> target accounts
	plus       string              // subaddress separators
	postmaster string              // the account for postmaster mail; "": the first account
}

// accountBook is what routing asks the spool; *spool.Store has it.
type accountBook interface {
	HasAccount(addr string) (bool, error)
	Accounts() ([]spool.AccountInfo, error)
}

func newRouter(cfg Config) (*router, error) {
	r := &router{domains: map[string]string{}, aliases: map[string][]string{}, plus: cfg.PlusSeparator}
	var errs []error
	for _, d := range cfg.Domains {
		n := dnsname.Normalize(d)
		if n == "" {
			errs = append(errs, fmt.Errorf("smtp: domain %q is not a domain name", d))
			continue
		}
		r.domains[n] = strings.ToLower(strings.TrimSuffix(d, "."))
	}
	for from, targets := range cfg.Aliases {
		key, ok := r.localKey(from)
		if !ok {
			errs = append(errs, fmt.Errorf("smtp: alias %q is not an address or \"@domain\" in one of the domains", from))
			continue
		}
		for _, t := range targets {
			a, ok := r.localKey(t)
			if !ok || strings.HasPrefix(a, "@") {
				errs = append(errs, fmt.Errorf("smtp: alias %q -> %q: the target is not an address in one of the domains", from, t))
				continue
			}
			r.aliases[key] = append(r.aliases[key], a)
		}
	}
	if cfg.Postmaster != "" {
		a, ok := r.localKey(cfg.Postmaster)
		if !ok || strings.HasPrefix(a, "@") {
			errs = append(errs, fmt.Errorf("smtp: postmaster %q is not an address in one of the domains", cfg.Postmaster))
		}
		r.postmaster = a
	}
	return r, errors.Join(errs...)
}

// postmasterAccount returns the account that receives postmaster mail:
// the configured one, or else the first account in address order.
func postmasterAccount(configured string, book accountBook) (string, error) {
	if configured != "" {
		ok, err := book.HasAccount(configured)
		if err != nil {
			return "", fmt.Errorf("look up postmaster %s: %w", configured, err)
		}
		if !ok {
			return "", fmt.Errorf("postmaster %s is not an account: add it (postie user add) or set postmaster to an account", configured)
		}
		return configured, nil
	}
	accts, err := book.Accounts()
	if err != nil {
		return "", fmt.Errorf("list accounts for postmaster: %w", err)
	}
	if len(accts) == 0 {
		return "", errors.New("no account yet to receive postmaster mail")
	}
	return accts[0].Address, nil
}

// postmasterRoute is where postmaster mail goes when no alias or account
// of that name exists.
func (r *router) postmasterRoute(book accountBook) (route, *smtp.SMTPError, error) {
	a, err := postmasterAccount(r.postmaster, book)
	if err != nil {
		return route{}, errLocal, err
	}
	return route{accounts: []string{a}, via: "postmaster"}, nil, nil
}

// localKey normalizes an address or "@domain" in one of our domains to the
// form accounts and aliases are stored in.
func (r *router) localKey(a string) (string, bool) {
	a = strings.ToLower(strings.TrimSpace(a))
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return "", false
	}
	d, ok := r.domains[dnsname.Normalize(a[at+1:])]
	if !ok {
		return "", false
	}
	if at == 0 {
		return "@" + d, true
	}
	n, err := spool.NormalizeAddress(a[:at] + "@" + d)
	return n, err == nil
}

// route is where one recipient's mail goes.
type route struct {
	accounts []string // the accounts that receive it
	missing  []string // alias targets that are not accounts (a config problem)
	via      string   // the alias or catch-all used, for the log
}

// resolve judges a recipient as go-smtp hands it over: the path without
// source route and with a quoted local part unquoted (go-smtp parse.go),
// so it is split at the last "@" here. utf8 says whether MAIL FROM had
// SMTPUTF8. book asks the spool.
//
// postmaster@ each of our domains, and "Postmaster" without a domain
// (which go-smtp passes on as it is), are always accepted (RFC 5321
// §4.5.1): to an alias or account of that name if there is one, else to
// the postmaster account.
//
// The refusals: anything not for one of our domains, and local parts with
// the routing characters of the percent hack and bang paths, are relay
// attempts (550 5.7.1, RFC 5321 §3.6.1, §3.6.3); malformed addresses get
// 553; an address of ours that reaches no account is an unknown user
// (550 5.1.1). A config problem (an alias whose targets do not exist)
// gives a temporary error, since the owner can mend it.
func (r *router) resolve(rcpt string, utf8Allowed bool, book accountBook) (route, *smtp.SMTPError, error) {
	if strings.EqualFold(rcpt, "postmaster") {
		return r.postmasterRoute(book)
	}
	local, domain, rerr := splitRecipient(rcpt, utf8Allowed)
	if rerr != nil {
		return route{}, rerr, nil
	}
	if strings.HasSuffix(domain, ".") || strings.HasPrefix(domain, "[") {
		// "user@ours." and "user@[192.0.2.1]" are not names of ours.
		return route{}, errRelayDenied, nil
	}
	d, ok := r.domains[dnsname.Normalize(domain)]
	if !ok {
		return route{}, errRelayDenied, nil
	}
	local = strings.ToLower(local)
	try := func(addr string) (route, bool, error) {
		if targets, ok := r.aliases[addr]; ok {
			rt := route{via: addr}
			for _, t := range targets {
				ok, err := book.HasAccount(t)
				if err != nil {
					return route{}, false, err
				}
				if ok {
					rt.accounts = append(rt.accounts, t)
				} else {
					rt.missing = append(rt.missing, t)
				}
			}
			return rt, true, nil
		}
		if strings.HasPrefix(addr, "@") {
			return route{}, false, nil
		}
		ok, err := book.HasAccount(addr)
		if err != nil || !ok {
			return route{}, false, err
		}
		return route{accounts: []string{addr}}, true, nil
	}
	candidates := []string{local + "@" + d}
	postmaster := local == "postmaster"
	if !postmaster {
		if i := strings.IndexAny(local, r.plus); r.plus != "" && i > 0 {
			candidates = append(candidates, local[:i]+"@"+d)
		}
		candidates = append(candidates, "@"+d)
	}
	for _, c := range candidates {
		rt, ok, err := try(c)
		if err != nil {
			return route{}, errLocal, fmt.Errorf("look up %s: %w", c, err)
		}
		if !ok {
			continue
		}
		if len(rt.accounts) == 0 {
			return rt, errLocal, fmt.Errorf("alias %s: none of its target accounts exists: %s", c, strings.Join(rt.missing, ", "))
		}
		return rt, nil, nil
	}
	if postmaster {
		return r.postmasterRoute(book)
	}
	return route{}, errUnknownUser, nil
}

// splitRecipient splits a recipient at its last "@" and checks the local
// part's characters.
func splitRecipient(rcpt string, utf8Allowed bool) (local, domain string, _ *smtp.SMTPError) {
	at := strings.LastIndexByte(rcpt, '@')
	if at <= 0 || at == len(rcpt)-1 {
		return "", "", errBadRecipient
	}
	if bad := checkText(rcpt, utf8Allowed); bad != nil {
		if bad == errNeedUTF8 {
			return "", "", bad
		}
		return "", "", errBadRecipient
	}
	local, domain = rcpt[:at], rcpt[at+1:]
	if strings.ContainsAny(local, "@%!") {
		// "a@evil"@ours (dequoted by go-smtp), user%evil@ours, evil!user@ours.
		return "", "", errRelayDenied
	}
	if len(local) > 64 || len(domain) > 255 || strings.ContainsAny(local, "\"\\<>()[],;: ") {
		return "", "", errBadRecipient
	}
	return local, domain, nil
}

// checkSender checks a MAIL FROM address ("" is the null sender).
func checkSender(from string, utf8Allowed bool) *smtp.SMTPError {
	if from == "" {
		return nil
	}
	at := strings.LastIndexByte(from, '@')
	if at <= 0 || at == len(from)-1 || len(from) > 320 {
		return errBadSender
	}
	if bad := checkText(from, utf8Allowed); bad != nil {
		if bad == errNeedUTF8 {
			return bad
		}
		return errBadSender
	}
	return nil
}

// checkText refuses control characters, and non-ASCII unless SMTPUTF8
// was given (RFC 6531 §3.5).
func checkText(s string, utf8Allowed bool) *smtp.SMTPError {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return errBadRecipient
		}
		if c >= 0x80 && !utf8Allowed {
			return errNeedUTF8
		}
	}
	if !utf8.ValidString(s) {
		return errBadRecipient
	}
	return nil
}

// checkHelo accepts any HELO/EHLO argument made of printable characters:
// broken names are common and harmless, control characters are not.
func checkHelo(helo string) bool {
	if helo == "" || len(helo) > 255 || !utf8.ValidString(helo) {
		return false
	}
	for i := 0; i < len(helo); i++ {
		if helo[i] <= ' ' || helo[i] == 0x7f {
			return false
		}
	}
	return true
}
