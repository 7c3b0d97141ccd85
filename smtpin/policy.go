package smtpin

import (
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/smtpin/authcheck"
)

// decide applies the check policy of [smtp.checks] to a message's
// verdicts. It returns the refusal, if any, and why (for the log).
func (s *session) decide(res *result, tooManyAuthors bool) (*smtp.SMTPError, string) {
	cfg := s.g.cfg.Checks
	if cfg.TempErrorDefer {
		temp := res.spf.Result == authcheck.TempError
		for _, d := range res.dkim {
			temp = temp || d.Result == authcheck.TempError
		}
		for _, d := range res.dmarc {
			temp = temp || d.Result == authcheck.TempError
		}
		if temp {
			return errCheckTempFail, "a check failed for a temporary reason (temperror_defer)"
		}
	}
	if cfg.DMARCReject {
		if tooManyAuthors {
			return errTooManyAuthors, fmt.Sprintf("more than %d author domains", maxAuthorDomains)
		}
		// RFC 7489 §6.6.1: with several author domains, the strictest
		// verdict wins. §6.6.4: pct= samples the messages the policy is
		// for; the others get the next policy down, quarantine, which
		// here means accept with the verdict recorded.
		for _, d := range res.dmarc {
			if d.Result == authcheck.Fail && d.Policy == authcheck.PolicyReject && (d.Percent >= 100 || s.s.sample(d.Percent)) {
				return dmarcReject(d.Domain), "DMARC fail for " + d.Domain + ", p=reject"
			}
		}
	}
	if cfg.SPFFailReject && res.spf.Result == authcheck.Fail {
		aligned := len(res.dmarc) > 0
		for _, d := range res.dmarc {
			aligned = aligned && d.DKIMAligned
		}
		// A signature that could not be checked for a temporary reason
		// might be the aligned pass: no permanent refusal on that.
		for _, d := range res.dkim {
			aligned = aligned || d.Result == authcheck.TempError
		}
		if !aligned {
			return errSPFReject, "SPF fail for " + res.spf.Domain + " without an aligned DKIM pass (spf_fail_reject)"
		}
	}
	return nil, ""
}
