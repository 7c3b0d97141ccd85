package smtpin

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/spool"

	"github.com/postie/postie/internal/plural"
)

// reply builds a go-smtp reply. Every reply carries an enhanced status code
// (RFC 2034, RFC 3463 for the meanings), and the text never carries an
// internal cause: that goes to the log.
func reply(code int, class, subject, detail int, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: asciiText(text)}
}

// asciiText makes a reply text printable US-ASCII, as RFC 5321 §2.4 and
// §4.2 want it: a byte outside it (from a domain name taken from a
// message, say) becomes "?".
func asciiText(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] < 0x20 || b[j] > 0x7e {
					b[j] = '?'
				}
			}
			return string(b)
		}
	}
	return s
}

// The replies this server gives, named by what they mean. The comment is
// the RFC 3463 meaning of the enhanced code.
var (
	// 5.1.1 bad destination mailbox address.
	errUnknownUser = reply(550, 5, 1, 1, "No such user here")
	// 5.7.1 delivery not authorized: we are not a relay.
	errRelayDenied = reply(550, 5, 7, 1, "Relaying denied: this server only accepts mail for its own domains")
	// 5.1.3 bad destination mailbox address syntax.
	errBadRecipient = reply(553, 5, 1, 3, "Malformed recipient address")
	// 5.1.7 bad sender's mailbox address syntax.
	errBadSender = reply(553, 5, 1, 7, "Malformed sender address")
	// 5.6.7 non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
	errNeedUTF8 = reply(553, 5, 6, 7, "Non-ASCII address requires the SMTPUTF8 parameter")
	// 5.5.1 invalid command: RCPT or DATA without a transaction (go-smtp
	// lets them through after a refused MAIL).
	errNoTransaction = reply(503, 5, 5, 1, "Bad sequence of commands: send MAIL FROM first")
	// 5.5.1 invalid command: MAIL inside an open transaction.
	errNestedMail = reply(503, 5, 5, 1, "Bad sequence of commands: a transaction is already open (send RSET first)")
	// 5.5.1: DATA when no recipient of this transaction was accepted
	// (RFC 5321 §3.3 allows 503 or 554 "no valid recipients").
	errNoRecipients = reply(554, 5, 5, 1, "No valid recipients")
	// 5.5.2 syntax error.
	errBadHelo = reply(501, 5, 5, 2, "Invalid HELO/EHLO argument")
	// 5.3.4 message too big for system.
	errTooLarge   = reply(552, 5, 3, 4, "Message exceeds the maximum size")
	errHeaderSize = reply(552, 5, 3, 4, "Header section exceeds the maximum size")
	// 4.3.0 other or undefined mail system status: a fault on our side.
	errLocal = reply(451, 4, 3, 0, "Temporary local problem, please try again later")
	// 4.3.1 mail system full.
	errStorageFull = reply(452, 4, 3, 1, "Insufficient system storage, please try again later")
	// 4.2.2 mailbox full.
	errQuota = reply(452, 4, 2, 2, "Mailbox full, please try again later")
	// 4.4.3 directory server failure: DNS for the checks.
	errCheckTempFail = reply(451, 4, 4, 3, "Temporary DNS failure while checking the sender, please try again later")
	// 5.7.1 delivery not authorized, message refused.
	errSPFReject = reply(550, 5, 7, 1, "Message refused: the sender's SPF policy does not allow this host, and no aligned DKIM signature verified")
	// 4.3.2 system not accepting network messages.
	errShuttingDown = reply(421, 4, 3, 2, "Service shutting down, please try again later")
)

// dmarcReject is the refusal of a message that fails DMARC for a domain
// whose policy is reject (RFC 7489 §6.6.4, §10.3).
func dmarcReject(domain string) *smtp.SMTPError {
	return reply(550, 5, 7, 1, fmt.Sprintf("Message refused: it fails the DMARC policy of %s", domain))
}

// errTooManyAuthors refuses a message whose From field names more domains
// than are checked; one of them might be the one a reader sees.
var errTooManyAuthors = reply(550, 5, 7, 1, "Message refused: too many author domains in From")

// lineTooLong ends a session whose message has a line over the limit.
func lineTooLong(limit int) *smtp.SMTPError {
	// 5.6.0 other or undefined media error: the content is unacceptable.
	return reply(554, 5, 6, 0, fmt.Sprintf("Message has a line longer than %s (RFC 5322 section 2.1.1 allows 998)", plural.Count(limit, "byte")))
}

// stored is the reply to a message that is durably stored: the sender's
// MTA logs it, so it names the id the owner finds in Postie's log.
func stored(id spool.MessageID) *smtp.SMTPError {
	// 2.0.0 other or undefined status: success.
	return reply(250, 2, 0, 0, "Message stored as "+id.String())
}

// storageReply maps a spool error to the reply the sender gets. Nothing was
// stored in each case, so every reply but the size one asks to retry.
func storageReply(err error) *smtp.SMTPError {
	switch {
	case errors.Is(err, spool.ErrStorageFull):
		return errStorageFull
	case errors.Is(err, spool.ErrQuotaExceeded):
		return errQuota
	case errors.Is(err, spool.ErrTooLarge):
		return errTooLarge
	}
	return errLocal
}

// closing is the text of a reply that ends the session: "421 <code>
// <hostname> <text>" as RFC 5321 §3.8 has it.
func closing(hostname string, e *smtp.SMTPError) string {
	c := e.EnhancedCode
	return asciiText(fmt.Sprintf("%d %d.%d.%d %s %s, closing connection", e.Code, c[0], c[1], c[2], hostname, e.Message)) + "\r\n"
}

// The replies that end a session because a limit was reached.
var (
	// 4.4.2 bad connection: too slow.
	endIdle     = reply(421, 4, 4, 2, "Timeout waiting for a command")
	endSession  = reply(421, 4, 4, 2, "Session time limit reached")
	endDataSlow = reply(421, 4, 4, 2, "Message data arrived too slowly")
	// 4.7.0 other security or policy status.
	endCommands = reply(421, 4, 7, 0, "Too many commands")
	endErrors   = reply(421, 4, 7, 0, "Too many errors")
	endUnknown  = reply(421, 4, 7, 0, "Too many unknown recipients")
)
