package pop3out

import (
	"encoding/base64"
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/postie/postie/spool"

	"github.com/postie/postie/internal/plural"
)

// canLogin reports whether this session may send a password: over TLS, or
// from a network in plaintext_login_networks (RFC 2595 §2.1, RFC 8314).
func (s *session) canLogin() bool {
	return s.tls || s.st.plaintextAllowed(s.ip)
}

// loginRefusal says why this session may not log in yet, with the code a
// client needs to tell a policy from a passing fault (RFC 3206).
func (s *session) loginRefusal() reply {
	switch {
	case s.srv.tls == nil:
		r := fail("AUTH", "login needs TLS, and this server has none; connect from a network listed in plaintext_login_networks")
		r.strike = true
		return r
	case !s.srv.tlsReady():
		r := fail("SYS/TEMP", "login needs TLS, and the server has no TLS certificate yet; try again later")
		r.strike = true
		return r
	}
	r := fail("AUTH", "plaintext login is not allowed: send STLS first, or use port 995 (POP3S)")
	r.strike = true
	return r
}

// userCmd takes the user name (RFC 1939 §7, USER). The answer is the same
// whether or not the mailbox exists.
func (s *session) userCmd(arg string) reply {
	if !s.canLogin() {
		return s.loginRefusal()
	}
	if arg == "" {
		return strike("USER needs a user name")
	}
	s.user = arg
	return ok("send PASS")
}

// pass checks the password for the user USER named (RFC 1939 §7, PASS).
// The whole rest of the line is the password, spaces included.
func (s *session) pass(arg string) reply {
	if !s.canLogin() {
		return s.loginRefusal()
	}
	if s.user == "" {
		return strike("send USER first")
	}
	user := s.user
	s.user = ""
	return s.authenticate(user, arg)
}

// auth runs SASL authentication (RFC 5034) with the PLAIN mechanism (RFC
// 4616), with or without an initial response.
//
//	C: AUTH PLAIN
//	S: +
//	C: AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==
//	S: +OK maildrop has 2 messages (320 octets)
func (s *session) auth(arg string) reply {
	if !s.canLogin() {
		return s.loginRefusal()
	}
	if arg == "" {
		// Not in RFC 5034, but clients (Outlook among them) send a bare
		// AUTH to list the mechanisms.
		r := ok("SASL mechanisms follow")
		r.body = lines(sasl.Plain)
		return r
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	if !strings.EqualFold(mech, sasl.Plain) {
		return strike("unsupported SASL mechanism; this server offers PLAIN")
	}
	resp := ir
	if !hasIR {
		// RFC 5034 §4: an empty challenge, then the client's response.
		s.bw.WriteString("+ \r\n")
		if err := s.bw.Flush(); err != nil {
			r := fail("", "write failed")
			r.close = true
			return r
		}
		line, err := s.readLine()
		if err != nil {
			r := fail("", "authentication aborted")
			if errors.Is(err, errLineTooLong) {
				r.text = "SASL response too long"
			}
			r.close = true
			s.end = "read failed during AUTH"
			return r
		}
		resp = line
	}
	switch resp {
	case "*":
		// RFC 5034 §4: the client cancels the exchange.
		return fail("", "authentication cancelled")
	case "=":
		// RFC 5034 §4: "=" is an empty initial response.
		resp = ""
	}
	decoded, err := base64.StdEncoding.DecodeString(resp)
	if err != nil {
		return strike("invalid base64 in the SASL response")
	}
	var result reply
	called := false
	server := sasl.NewPlainServer(func(identity, username, password string) error {
		called = true
		if identity != "" && identity != username {
			// RFC 4616 §2: acting as another user is not supported.
			result = s.authFailed(username, "authorization identity differs from the user name")
			return errAuth
		}
		result = s.authenticate(username, password)
		if !result.ok {
			return errAuth
		}
		return nil
	})
	// The authenticator above runs unless the response is malformed; its
	// outcome is in result.
	server.Next(decoded)
	if !called {
		return strike("malformed PLAIN response: want authzid NUL authcid NUL password")
	}
	return result
}

var errAuth = errors.New("pop3: authentication failed")

// maxKeyLength bounds the user name part of a penalty key, so that long
// junk names cannot make the penalty table large.
const maxKeyLength = 320

// authenticate checks a password and, when it is right, opens the
// maildrop. The failure answer and the time it takes are the same for an
// unknown user and a wrong password.
//
// Guessing is bounded per account whatever the number of connections: a
// check from a network the account has not logged in from waits for the
// account's gate (one such check at a time) and then for the penalty of
// the account's earlier failures as well as its own network's. A network
// the account logged in from in the last 30 days (spool.KnownNetwork) only
// waits out its own network's failures: strangers guessing cannot make the
// owner's phone wait.
func (s *session) authenticate(user, password string) reply {
	acct := userKey(user)
	keys := []string{s.netKey}
	known, err := s.srv.deps.Store.KnownNetwork(acct, s.ip)
	if err != nil {
		s.log.Error("pop3 login: the spool failed", "user", acct, "err", err)
	}
	if !known {
		keys = append(keys, "user:"+acct)
		leave, err := s.srv.gate.enter(s.srv.ctx, acct)
		if err != nil {
			r := fail("SYS/TEMP", "server shutting down")
			r.close = true
			return r
		}
		defer leave()
	}
	// Wait out earlier failures of this network (and of this account, for
	// a stranger) first, whatever this attempt's outcome will be.
	if d := s.srv.penalty.Delay(keys...); d > 0 {
		s.srv.deps.Metrics.POP3Login("delayed")
		s.log.Info("pop3 login delayed after earlier failures", "user", acct, "delay", d.Round(time.Millisecond), "known_network", known)
		if !s.sleep(d) {
			r := fail("SYS/TEMP", "server shutting down")
			r.close = true
			return r
		}
	}
	start := time.Now()
	login, err := s.srv.deps.Store.Authenticate(user, password)
	// Only failures are padded: a success says so in its +OK anyway, and
	// what must not show is which kind of failure it was.
	if err != nil && !s.padAuth(start) {
		r := fail("SYS/TEMP", "server shutting down")
		r.close = true
		return r
	}
	switch {
	case errors.Is(err, spool.ErrAuthFailed):
		s.srv.penalty.Fail(keys...)
		return s.authFailed(user, "wrong user name or password")
	case err != nil:
		s.log.Error("pop3 login: the spool failed", "user", user, "err", err)
		return fail("SYS/TEMP", "the mail store is not available; try again later")
	}
	s.srv.penalty.Forgive(keys...)

	if wait := s.srv.loginDelayLeft(login, s.st.cfg.LoginDelay.D()); wait > 0 {
		// RFC 2449 §8.1.1.
		return fail("LOGIN-DELAY", "logged in too recently; wait %d more seconds", int(wait.Seconds()+0.999))
	}
	drop, err := s.srv.deps.Store.OpenMaildrop(s.srv.ctx, login, s.ip.String())
	switch {
	case errors.Is(err, spool.ErrMaildropLocked):
		// RFC 2449 §8.1.2. Nothing changes; the session stays in
		// AUTHORIZATION and may try again.
		s.srv.deps.Metrics.POP3Login("in_use")
		s.log.Info("pop3 login: maildrop in use", "user", login.Account, "device", login.DeviceName)
		return fail("IN-USE", "maildrop is in use by another session; try again later")
	case err != nil:
		s.log.Error("pop3 login: opening the maildrop failed", "user", login.Account, "err", err)
		return fail("SYS/TEMP", "the mail store is not available; try again later")
	}
	s.srv.recordLogin(login, s.st.cfg.LoginDelay.D())
	s.login = login
	s.drop = drop
	go s.watchRevocation(drop)
	s.msgs = drop.Messages()
	s.deleted = make([]bool, len(s.msgs))
	s.state = stateTransaction
	s.srv.deps.Metrics.POP3Login("ok")
	s.log.Info("pop3 login", "user", login.Account, "device", login.DeviceName, "tls", s.tls, "messages", len(s.msgs))
	n, size := s.summary()
	return ok("maildrop has %s (%s)", plural.Count(n, "message"), plural.Count(size, "octet"))
}

// authFailed records a failed login: the one log line fail2ban-style tools
// match (at Warn, on by default; never the password) and the [AUTH] answer.
func (s *session) authFailed(user, reason string) reply {
	s.authFailures++
	s.srv.deps.Metrics.POP3Login("failed")
	s.log.Warn("pop3 login failed", "user", userKey(user), "reason", reason, "tls", s.tls, "failures", s.authFailures)
	r := fail("AUTH", "invalid user name or password")
	if s.authFailures >= s.st.cfg.MaxAuthFailures {
		r.text += "; too many failures, closing"
		r.close = true
		s.end = "too many failed logins"
	}
	return r
}

// userKey is the user name as penalties count and logs show it: lower
// case, bounded, without control characters.
func userKey(user string) string {
	if len(user) > maxKeyLength {
		user = user[:maxKeyLength]
	}
	if norm, err := spool.NormalizeAddress(user); err == nil {
		return norm
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToLower(user))
}

// padAuth waits until AuthDuration, plus up to 20% jitter, has passed since
// start, so every failed password check takes about the same time (the
// spool's dummy hash for unknown users makes the work the same; this hides
// what remains). It returns false if the server shut down meanwhile.
func (s *session) padAuth(start time.Time) bool {
	d := s.st.cfg.AuthDuration.D()
	if d <= 0 {
		return true
	}
	target := d + time.Duration(rand.Int64N(int64(d)/5+1))
	return s.sleep(target - time.Since(start))
}

// sleep waits for d unless the server is aborting sessions.
func (s *session) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.srv.ctx.Done():
		return false
	}
}
