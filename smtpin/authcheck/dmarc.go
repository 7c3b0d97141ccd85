package authcheck

import (
	"context"
	"errors"

	"github.com/emersion/go-msgauth/dmarc"
)

// Policy is what a DMARC record asks receivers to do with failing mail.
type Policy string

// The DMARC policies (RFC 7489 §6.3, p= and sp=).
const (
	PolicyNone       Policy = "none"
	PolicyQuarantine Policy = "quarantine"
	PolicyReject     Policy = "reject"
)

// Record is the outcome of a DMARC policy lookup for one author domain:
// the record that applies, or why there is none.
type Record struct {
	// Domain is the author domain the record applies to.
	Domain string
	// Policy is the policy for Domain (sp= when the record was found at the
	// organizational domain and has one, p= otherwise); "" without a
	// record.
	Policy Policy
	// Percent is pct=, the share of failing messages the policy is for.
	Percent int
	// SPF and DKIM are the alignment modes (aspf=, adkim=).
	SPF, DKIM Alignment
	// Result is None when there is no record, TempError when the lookup
	// failed for a temporary reason, PermError for a malformed record, and
	// "" when the record was found.
	Result Result
	Err    error
}

// LookupDMARC finds the DMARC record for an author domain (RFC 7489
// §6.6.3): at _dmarc.<domain>, or failing that at the organizational
// domain. domain must be normalized.
func LookupDMARC(ctx context.Context, r Resolver, domain string) (rec Record) {
	rec = Record{Domain: domain}
	defer recovered("dmarc", func(err error) { rec = Record{Domain: domain, Result: PermError, Err: err} })
	opts := &dmarc.LookupOptions{LookupTXT: lookupTXT(ctx, r)}
	found, err := dmarc.LookupWithOptions(domain, opts)
	atOrg := false
	if errors.Is(err, dmarc.ErrNoPolicy) {
		if org := OrgDomain(domain); org != domain {
			found, err = dmarc.LookupWithOptions(org, opts)
			atOrg = true
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, dmarc.ErrNoPolicy):
		rec.Result = None
		return rec
	case dmarc.IsTempFail(err):
		rec.Result, rec.Err = TempError, err
		return rec
	default:
		// A malformed record, or a lookup error that is not temporary.
		rec.Result, rec.Err = PermError, err
		return rec
	}
	rec.Policy = Policy(found.Policy)
	if atOrg && found.SubdomainPolicy != "" {
		rec.Policy = Policy(found.SubdomainPolicy)
	}
	rec.Percent = 100
	if found.Percent != nil {
		rec.Percent = *found.Percent
	}
	rec.SPF, rec.DKIM = Alignment(found.SPFAlignment), Alignment(found.DKIMAlignment)
	return rec
}

// DMARC is the verdict for one author domain.
type DMARC struct {
	Result Result
	// Domain is the author domain (the From field's).
	Domain string
	// Policy and Percent come from the domain's record ("" and 0 without
	// one).
	Policy  Policy
	Percent int
	// SPFAligned and DKIMAligned say whether a passing SPF or DKIM
	// identifier is aligned with Domain. Without a record they are judged
	// in relaxed mode, so that local policy can use them.
	SPFAligned, DKIMAligned bool
	Err                     error
	// Comment, if set, follows the result in Authentication-Results (an
	// RFC 8601 comment).
	Comment string
}

// EvaluateDMARC judges one author domain (RFC 7489 §4.2, §6.6.2): it
// passes when SPF passed for an aligned domain or a DKIM signature of an
// aligned domain verified. When neither did but one of them failed for a
// temporary reason, the verdict is temperror, not fail: the message might
// pass once DNS answers, and must not be refused for good meanwhile.
func EvaluateDMARC(rec Record, spf SPF, sigs []DKIM) DMARC {
	v := DMARC{Domain: rec.Domain, Policy: rec.Policy, Percent: rec.Percent, Err: rec.Err}
	spfMode, dkimMode := rec.SPF, rec.DKIM
	if spfMode == "" {
		spfMode = Relaxed
	}
	if dkimMode == "" {
		dkimMode = Relaxed
	}
	spfAligned := Aligned(spf.Domain, rec.Domain, spfMode)
	v.SPFAligned = spf.Result == Pass && spfAligned
	temp := spf.Result == TempError && spfAligned
	for _, s := range sigs {
		aligned := Aligned(s.Domain, rec.Domain, dkimMode)
		v.DKIMAligned = v.DKIMAligned || s.Result == Pass && aligned
		temp = temp || s.Result == TempError && aligned
	}
	switch {
	case rec.Result != "":
		v.Result = rec.Result
	case v.SPFAligned || v.DKIMAligned:
		v.Result = Pass
	case temp:
		v.Result, v.Err = TempError, errors.New("an aligned SPF or DKIM check failed for a temporary reason")
	default:
		v.Result = Fail
	}
	return v
}
