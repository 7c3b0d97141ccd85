// Package authcheck judges who sent a message: SPF (RFC 7208) for the
// envelope sender, DKIM (RFC 6376) for the signatures in the message, and
// DMARC (RFC 7489) tying both to the author's domain in the From field. It
// also formats the verdicts as an Authentication-Results header field
// (RFC 8601).
//
// The checks take a [Resolver] and a context: every DNS lookup goes through
// that one resolver under the context's deadline, and a lookup that fails
// for a temporary reason (a timeout, SERVFAIL, no network) gives the
// verdict temperror, never a silent pass or a permanent failure.
//
// The libraries behind it (blitiri.com.ar/go/spf, go-msgauth's dkim and
// dmarc) do the protocol work. What they leave to their users lives here:
// the DMARC organizational domain and identifier alignment (RFC 7489 §3.1),
// the policy lookup with its fallback to the organizational domain
// (§6.6.3), the author domains of a From field, and a cap on the DKIM
// signatures verified per message.
package authcheck
