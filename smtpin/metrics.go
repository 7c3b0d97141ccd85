package smtpin

import (
	"strings"

	"github.com/emersion/go-smtp"
)

// reason names a refusal for the metrics (postie_smtp_messages_total's
// reason label): a short, fixed word per kind of reply.
func reason(e *smtp.SMTPError) string {
	switch e {
	case errUnknownUser, endUnknown:
		return "unknown_user"
	case errRelayDenied:
		return "relay"
	case errBadRecipient, errBadSender, errNeedUTF8, errBadHelo, errNoTransaction:
		return "syntax"
	case errTooLarge, errHeaderSize:
		return "size"
	case errLocal:
		return "local_error"
	case errStorageFull:
		return "storage_full"
	case errQuota:
		return "quota"
	case errCheckTempFail:
		return "dns_temperror"
	case errSPFReject:
		return "spf"
	case errTooManyAuthors:
		return "dmarc"
	case errShuttingDown:
		return "shutdown"
	case endIdle, endSession, endDataSlow:
		return "timeout"
	case endCommands, endErrors:
		return "limits"
	}
	switch {
	case e.Code == 550 && strings.Contains(e.Message, "DMARC"):
		return "dmarc"
	case e.EnhancedCode == smtp.EnhancedCode{5, 6, 0}:
		return "line_length"
	case e.EnhancedCode == smtp.EnhancedCode{5, 7, 1} && strings.Contains(e.Message, "blocked using"):
		return "dnsbl"
	}
	return "other"
}

// countVerdicts records a message's verdicts: one SPF result, and the
// result of each DKIM signature and DMARC evaluation (or none).
func (s *session) countVerdicts(res *result) {
	m := s.s.metrics
	if m == nil {
		return
	}
	m.Verdict("spf", string(res.spf.Result))
	if len(res.dkim) == 0 {
		m.Verdict("dkim", "none")
	}
	for _, d := range res.dkim {
		m.Verdict("dkim", string(d.Result))
	}
	if len(res.dmarc) == 0 {
		m.Verdict("dmarc", "none")
	}
	for _, d := range res.dmarc {
		m.Verdict("dmarc", string(d.Result))
	}
}
