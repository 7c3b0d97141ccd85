// Package tlsauto provides the certificate of every TLS listener Postie
// runs, and keeps it current without the owner's hands.
//
// # Modes
//
// The mode key of the tls table picks one of three:
//
//   - acme (the default): certificates from an ACME CA, Let's Encrypt
//     unless told otherwise, obtained and renewed by certmagic with its
//     file storage in DataDir/certificates (account keys, certificates,
//     locks). Postie answers the challenges itself: HTTP-01 on
//     http_listen (":80") and TLS-ALPN-01 on https_listen (":443"); a
//     mail host has no web server to do it.
//   - files: a certificate chain and key the owner manages (certbot, a
//     company CA), looked at every few seconds and reloaded when they
//     change; a pair that does not load is logged and the previous one
//     stays in service.
//   - self-signed: made once, kept in DataDir/self-signed and reused on
//     every start ("postie local" uses it, with 127.0.0.1 and ::1 as
//     names when the host name is localhost).
//
// # First start in acme mode
//
// Start loads what storage has and returns at once; it never waits for
// the CA. Until a certificate for the host name exists, Ready is false
// (SMTP then offers no STARTTLS, POP3 no STLS) and handshakes on the mail
// ports fail cleanly. One goroutine per name asks the CA, and after a
// failure logs what to fix (DNS not pointing here, port 80/443 closed,
// the CA unreachable) and tries again after one minute, five, fifteen,
// and so on up to every six hours, forever; retries go to Let's
// Encrypt's staging CA first, so mistakes do not spend the production
// rate limits. The certificate is served from the next handshake on.
// certmagic renews it in the background when a third of its lifetime is
// left, and every handshake takes the live certificate, so a renewal needs
// no restart. There is no on-demand issuance: a handshake with an unknown
// name never starts an order. A stored certificate that no longer loads
// (a full disk, a bad restore) is moved to "<file>.unusable" at start and
// obtained again; a lock left by a killed process goes stale in seconds.
//
// # The mail ports
//
// [Manager.TLSConfig] is the one configuration of SMTP STARTTLS, POP3 STLS
// and POP3S: TLS 1.2 or newer, ECDHE with AEAD suites, and the host name's
// certificate whatever the client's SNI, also without SNI, which is what
// Postfix and most MTAs send (RFC 6066 §3 makes SNI optional).
//
// # HTTP and HTTPS
//
// The HTTP listener answers ACME HTTP-01 challenges (RFC 8555 §8.3) for
// the managed names, redirects their other pages to HTTPS, and answers 404
// to everything else. The HTTPS listener answers TLS-ALPN-01 challenges
// (RFC 8737), serves the MTA-STS policy (RFC 8461) at
// https://mta-sts.<domain>/.well-known/mta-sts.txt when mta_sts_mode is
// set, and hands other requests to main's handler. Both have read, write
// and idle timeouts, a header size cap and connection caps.
//
// # MTA-STS and TLS-RPT records
//
// With mta_sts_mode set, every domain needs these DNS records (the id is
// [Config.MTASTSPolicyID], which changes whenever the policy does):
//
//	mta-sts.example.com.      IN CNAME mail.example.com.   (or A/AAAA of this server)
//	_mta-sts.example.com.     IN TXT   "v=STSv1; id=<id>"
//	_smtp._tls.example.com.   IN TXT   "v=TLSRPTv1; rua=mailto:postmaster@example.com"
//
// The last one (RFC 8460) asks senders to report TLS failures.
package tlsauto
