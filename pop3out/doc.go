// Package pop3out is Postie's POP3 server: the way the owner's mail clients
// fetch and delete the mail that smtpin stored in the spool.
//
// It implements:
//
//   - RFC 1939, POP3: the AUTHORIZATION, TRANSACTION and UPDATE states and
//     USER, PASS, QUIT, STAT, LIST, RETR, DELE, NOOP, RSET, TOP and UIDL.
//     APOP is not offered: it needs the password stored in plaintext on the
//     server and its MD5 challenge leaks password prefixes to a
//     man-in-the-middle (CVE-2007-1558).
//   - RFC 2449, the extension mechanism: CAPA, response codes and
//     PIPELINING, with TOP, UIDL, USER, SASL, RESP-CODES, AUTH-RESP-CODE,
//     IMPLEMENTATION, and EXPIRE and LOGIN-DELAY when configured.
//   - RFC 2595 §4, STLS on the plaintext port; RFC 8314 implicit TLS on the
//     other (995 by default).
//   - RFC 5034, AUTH, with the PLAIN mechanism (RFC 4616) and its initial
//     response.
//   - RFC 3206 response codes: [SYS/TEMP], [SYS/PERM], [AUTH], and [IN-USE]
//     and [LOGIN-DELAY] from RFC 2449.
//
// # Sessions
//
// A session logs in, then takes the spool's per-device maildrop lock and a
// snapshot of the messages (spool.Store.OpenMaildrop): message numbers,
// sizes and UIDLs stay fixed until the session ends, and mail that arrives
// meanwhile appears at the next login. DELE only marks a message. QUIT
// applies the marks in one spool transaction and answers +OK only once it
// is durable; a session that ends any other way (a dropped connection, a
// timeout, a server shutdown) deletes nothing.
//
// RETR and TOP stream the message from the spool through a dot-stuffing
// writer into large buffered writes, so a message of any size costs a few
// hundred KiB of memory, and the bytes a client receives after un-stuffing
// are exactly the LIST size.
//
// # Hostile clients
//
// Every read and write has a deadline, command lines have a bounded length,
// and pipelined input is never read ahead further than one buffer. Logins
// are refused without TLS except from the configured networks; a failed
// login makes the next attempt from the same client network, and on the
// same account, wait longer (internal/penalty), every password check takes
// the same padded time, and an unknown user and a wrong password look the
// same on the wire. Every failure is logged at Warn with the client's
// address, in one stable format (here with slog's text handler, and the
// part=pop3 that main adds):
//
//	level=WARN msg="pop3 login failed" part=pop3 conn=12 ip=192.0.2.7 proto=pop3 user=alice@example.org reason="wrong user name or password" tls=true failures=1
//
// which a fail2ban filter matches with
//
//	failregex = msg="pop3 login failed" .* ip=<HOST> proto=pop3
//
// Anything a client pipelines after STLS is discarded before the TLS
// handshake (the CVE-2011-0411 family).
package pop3out
