package pop3out

import (
	"strconv"
	"strings"

	"github.com/postie/postie/internal/plural"
)

// states is a set of states a command is allowed in.
type states uint8

const (
	inAuthorization states = 1 << stateAuthorization
	inTransaction   states = 1 << stateTransaction
	inAny                  = inAuthorization | inTransaction
)

func (ss states) has(st state) bool { return ss&(1<<st) != 0 }

// command is one entry of the command table.
type command struct {
	states states
	run    func(s *session, arg string) reply
}

// commands maps each keyword (upper case) to its handler. The session loop
// checks the state centrally, so a handler runs only where it is allowed.
var commands = map[string]command{
	"CAPA": {inAny, (*session).capa},
	"QUIT": {inAny, (*session).quit},
	"USER": {inAuthorization, (*session).userCmd},
	"PASS": {inAuthorization, (*session).pass},
	"AUTH": {inAuthorization, (*session).auth},
	"STLS": {inAuthorization, (*session).stls},
	"APOP": {inAuthorization, (*session).apop},
	"STAT": {inTransaction, (*session).stat},
	"LIST": {inTransaction, (*session).list},
	"UIDL": {inTransaction, (*session).uidl},
	"RETR": {inTransaction, (*session).retr},
	"TOP":  {inTransaction, (*session).top},
	"DELE": {inTransaction, (*session).dele},
	"NOOP": {inTransaction, (*session).noop},
	"RSET": {inTransaction, (*session).rset},
}

// otherProtocols are the verbs of other protocols' clients: an HTTP
// request sent to us by a browser (the ALPACA attack's vehicle), an SMTP
// client. None is a POP3 command (POP3's STARTTLS is STLS), so the session
// ends at once: answering such a client line by line only helps an attack.
var otherProtocols = map[string]bool{
	// HTTP.
	"GET": true, "POST": true, "HEAD": true, "PUT": true, "DELETE": true,
	"OPTIONS": true, "CONNECT": true, "PATCH": true, "TRACE": true,
	// SMTP.
	"EHLO": true, "HELO": true, "LHLO": true, "MAIL": true, "RCPT": true, "DATA": true, "BDAT": true,
	"STARTTLS": true,
}

// imapCommands are the commands an IMAP client sends first, after its tag
// ("A001 CAPABILITY"): with them, a tagged line is an IMAP client's.
var imapCommands = map[string]bool{
	"CAPABILITY": true, "LOGIN": true, "AUTHENTICATE": true, "STARTTLS": true,
	"LOGOUT": true, "NOOP": true, "ID": true, "SELECT": true, "EXAMINE": true,
}

// otherProtocol reports whether a command line that is not POP3 is a client
// of another protocol speaking: an HTTP or SMTP verb, or an IMAP tag
// followed by an IMAP command. Any other unknown command is only a
// mistake, answered -ERR and counted against max_errors.
func otherProtocol(verb, arg string) bool {
	if otherProtocols[verb] {
		return true
	}
	next, _, _ := strings.Cut(arg, " ")
	return imapCommands[strings.ToUpper(next)]
}

// dispatch parses a command line and runs its handler. RFC 1939 §3:
// keywords are case-insensitive and separated from arguments by a space.
func (s *session) dispatch(line string) reply {
	s.commands++
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	cmd, known := commands[verb]
	var r reply
	switch {
	case !known && otherProtocol(verb, arg):
		// Not a POP3 client: end the session.
		r = fail("", "unknown command; this is a POP3 server")
		r.close = true
		return r
	case !known:
		r = strike("unknown command")
	case !cmd.states.has(s.state):
		r = strike("%s is not allowed in the %s state", verb, s.state)
	default:
		r = cmd.run(s, arg)
	}
	if r.strike {
		s.errors++
		if s.errors >= s.st.cfg.MaxErrors && !r.close {
			r.text += " (too many errors; closing)"
			r.close = true
		}
	}
	return r
}

// capa lists the capabilities (RFC 2449 §5). What depends on the session
// shows only where it can be used: USER and SASL where login is allowed,
// STLS before TLS on the plaintext port.
func (s *session) capa(arg string) reply {
	if arg != "" {
		return strike("CAPA takes no arguments")
	}
	caps := make([]string, 0, 12)
	caps = append(caps, "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING")
	if s.state == stateAuthorization {
		if s.canLogin() {
			caps = append(caps, "USER", "SASL PLAIN")
		}
		if !s.tls && s.srv.tlsReady() {
			caps = append(caps, "STLS")
		}
	}
	if s.st.expire != "" {
		caps = append(caps, s.st.expire)
	}
	if d := s.st.cfg.LoginDelay.D(); d > 0 {
		caps = append(caps, "LOGIN-DELAY "+strconv.FormatInt(int64(d.Seconds()), 10))
	}
	caps = append(caps, "IMPLEMENTATION Postie")
	r := ok("capability list follows")
	r.body = lines(caps...)
	return r
}

// stls starts TLS on the plaintext port (RFC 2595 §4): only in the
// AUTHORIZATION state, and only once.
func (s *session) stls(arg string) reply {
	switch {
	case arg != "":
		return strike("STLS takes no arguments")
	case s.tls:
		return strike("TLS is already active")
	case s.srv.tls == nil:
		return fail("SYS/PERM", "TLS is not available on this server")
	case !s.srv.tlsReady():
		return fail("SYS/TEMP", "TLS is not available yet: the server has no certificate; try again later")
	}
	r := ok("begin TLS negotiation")
	r.after = s.startTLS
	return r
}

// startTLS runs after STLS's +OK is flushed.
func (s *session) startTLS() error {
	// RFC 2595 §4 and CVE-2011-0411: anything the client sent after STLS
	// in plaintext is discarded, never read as commands inside TLS.
	if n := s.rd.Buffered(); n > 0 {
		s.log.Warn("pop3 discarded input pipelined after STLS", "bytes", n)
	}
	if err := s.handshake(); err != nil {
		// A failed handshake ends the session: never go on in plaintext.
		return err
	}
	s.rd.Reset(sessionIO{s})
	s.user = ""
	return nil
}

// apop refuses APOP (RFC 1939 §7): it would need plaintext passwords on the
// server, and MD5 challenge-response leaks them to a man-in-the-middle.
func (s *session) apop(string) reply {
	return strike("APOP is not supported; use USER/PASS or AUTH PLAIN over TLS")
}

// quit ends the session (RFC 1939 §6). In the TRANSACTION state it enters
// UPDATE: the DELE marks are applied in one spool transaction, and +OK
// comes only once that transaction is durable.
func (s *session) quit(arg string) reply {
	if s.state != stateTransaction {
		r := ok("Postie POP3 server signing off")
		r.close = true
		return r
	}
	s.state = stateUpdate
	var del []int
	for i, d := range s.deleted {
		if d {
			del = append(del, i)
		}
	}
	drop := s.drop
	s.drop = nil // Commit releases it, whatever happens
	if err := drop.Commit(s.srv.ctx, del); err != nil {
		s.log.Error("pop3 QUIT: applying deletions failed; nothing was deleted", "user", s.login.Account, "messages", len(del), "err", err)
		r := fail("SYS/TEMP", "could not delete the messages; nothing was deleted, try again later")
		r.close = true
		return r
	}
	s.ndeleted = len(del)
	r := ok("Postie POP3 server signing off (%s deleted)", plural.Count(len(del), "message"))
	r.close = true
	return r
}
