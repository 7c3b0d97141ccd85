// Package smtpin is Postie's inbound MX: the SMTP server on port 25 that
// senders on the internet hand mail to for the owner's domains. It checks
// who sent each message, records the verdicts, and stores the message in
// the spool. It never relays, never needs AUTH, and never sends a bounce:
// a message is accepted (250, once stored durably) or refused during the
// session.
//
// # One message's journey
//
//   - Accept: Serve takes connections from each listener into one queue
//     that internal/connlimit caps in total and per client address (421
//     4.7.0 beyond). Each connection is wrapped in a conn, which enforces
//     the session's time, its command count and DATA's minimum rate, and
//     handed to one of two go-smtp servers of the current configuration:
//     the one that offers STARTTLS when a certificate is ready, or the one
//     that does not.
//   - EHLO (backend.NewSession): the HELO name must be printable.
//   - MAIL FROM (session.Mail): the sender must be well formed; SIZE= is
//     checked against max_message_size.
//   - RCPT TO (session.Rcpt, router.resolve): only addresses in our
//     domains that reach an account, through an alias, a subaddress
//     (alice+news@) or a catch-all, are accepted; relay attempts get 550
//     5.7.1 and unknown users 550 5.1.1, each slower than the last
//     (internal/penalty). The first accepted recipient starts the SPF
//     check in the background.
//   - DATA or BDAT (session.Data, session.receive): the header section is
//     read into a bounded buffer; its From field starts the DMARC policy
//     lookups and its DKIM-Signature fields the DKIM verifier. Header and
//     body then stream into the spool delivery and the verifier.
//   - The final dot: the verdicts are gathered (all within
//     [smtp.checks] timeout), the policy applied (policy.go), and the
//     message committed with Return-Path, Authentication-Results and
//     Received on top (trace.go). Only then does the sender get 250.
//
// # Standards
//
// SMTP (RFC 5321) with SIZE (RFC 1870), 8BITMIME (RFC 6152), PIPELINING
// (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034, codes from RFC 3463),
// SMTPUTF8 (RFC 6531), CHUNKING (RFC 3030) and STARTTLS (RFC 3207), as
// github.com/emersion/go-smtp implements them; SPF (RFC 7208), DKIM (RFC
// 6376, RFC 8463), DMARC (RFC 7489) and Authentication-Results (RFC 8601)
// through package authcheck.
//
// # Hostile peers
//
// Only <CRLF>.<CRLF> ends DATA (go-smtp ≥ 0.20.1), so a message carrying
// <LF>.<LF> or the like followed by a second transaction is stored as one
// message (the SMTP smuggling of CVE-2023-51766 and its family); the spool
// stores it with CRLF line endings, so POP3 dot-stuffing covers it. Commands
// pipelined after STARTTLS are discarded with the plaintext buffer
// (CVE-2011-0411), and a failed TLS handshake ends the session. Incoming
// Authentication-Results fields that claim this server's authserv-id are
// removed (RFC 8601 §5). Every limit is a key of Config.
package smtpin
