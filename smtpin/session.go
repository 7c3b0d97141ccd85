package smtpin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/internal/connlimit"
	"github.com/postie/postie/internal/netserve"
	"github.com/postie/postie/smtpin/authcheck"
)

// backend makes the go-smtp sessions of one generation.
type backend struct {
	s *Server
	g *generation
}

// NewSession is called by go-smtp at the first HELO or EHLO of a
// connection, and again after STARTTLS.
func (b *backend) NewSession(sc *smtp.Conn) (smtp.Session, error) {
	c := connOf(sc)
	if c == nil {
		return nil, errLocal
	}
	if !checkHelo(sc.Hostname()) {
		return nil, refuse(c, errBadHelo)
	}
	c.setTop(sc.Conn())
	return &session{s: b.s, g: b.g, c: c, sc: sc}, nil
}

// session is one go-smtp session: the commands from HELO/EHLO to QUIT (or
// to STARTTLS, which starts a new one). It holds at most one transaction.
type session struct {
	s  *Server
	g  *generation
	c  *conn
	sc *smtp.Conn

	// mu guards tx: a BDAT transfer runs Data in a goroutine of its own,
	// and RSET or the end of the connection may come meanwhile.
	mu sync.Mutex
	tx *transaction
}

// transaction is one MAIL FROM ... DATA.
type transaction struct {
	id       string
	from     string
	utf8     bool
	helo     string
	rcpts    []string // accepted recipients, as the client gave them
	accounts []string // the accounts they reach, without repeats
	started  time.Time

	// The SPF check starts at the first accepted recipient, so a
	// transaction that reaches nobody costs no lookups, and runs while the
	// message is sent.
	spf    chan authcheck.SPF
	ctx    context.Context
	cancel context.CancelFunc
}

// Mail starts a transaction (RFC 5321 §4.1.1.2). A MAIL inside an open
// transaction is out of sequence (§4.1.4: MAIL starts a transaction only
// after RSET, EHLO or the end of the last one): it gets 503 and leaves the
// open transaction as it was, as Postfix, Exim and Sendmail answer. go-smtp
// keeps its recipients across a second MAIL, so starting a new transaction
// here would make its recipients and ours disagree.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	open := s.tx != nil
	s.mu.Unlock()
	if open {
		return refuse(s.c, errNestedMail)
	}
	helo := s.sc.Hostname()
	if !checkHelo(helo) {
		return refuse(s.c, errBadHelo)
	}
	if e := checkSender(from, opts.UTF8); e != nil {
		s.c.log.Info("sender refused", "from", from, "code", e.Code)
		return refuse(s.c, e)
	}
	if opts.Size > s.g.cfg.MaxMessageSize.Bytes() {
		return refuse(s.c, errTooLarge)
	}
	ctx, cancel := context.WithCancel(s.s.ctx)
	t := &transaction{id: newTxID(), from: from, utf8: opts.UTF8, helo: helo, started: time.Now(), ctx: ctx, cancel: cancel}
	s.mu.Lock()
	s.tx = t
	s.mu.Unlock()
	s.c.setTransaction(true)
	return nil
}

// Rcpt judges a recipient (RFC 5321 §4.1.1.3): mail for our accounts is
// accepted, anything else refused now, never bounced later.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.mu.Lock()
	t := s.tx
	s.mu.Unlock()
	if t == nil {
		return refuse(s.c, errNoTransaction)
	}
	rt, refusal, err := s.g.router.resolve(to, t.utf8, s.s.store)
	if err != nil {
		s.c.log.Error("recipient lookup failed", "rcpt", to, "err", err)
	}
	if len(rt.missing) > 0 && refusal == nil {
		s.c.log.Error("alias points at accounts that do not exist; fix the aliases", "alias", rt.via, "missing", rt.missing)
	}
	if refusal != nil {
		if refusal == errUnknownUser {
			return s.unknownRecipient(to)
		}
		s.c.log.Info("recipient refused", "rcpt", to, "code", refusal.Code, "status", statusString(refusal))
		s.s.metrics.SMTPRefused(reason(refusal))
		if refusal == errLocal {
			// Our fault (the store, an alias): not the client's error.
			return refusal
		}
		return refuse(s.c, refusal)
	}
	t.rcpts = append(t.rcpts, to)
	for _, a := range rt.accounts {
		if !slices.Contains(t.accounts, a) {
			t.accounts = append(t.accounts, a)
		}
	}
	if t.spf == nil && s.s.noDNS {
		t.spf = make(chan authcheck.SPF, 1)
		t.spf <- noDNSSPF(t.helo, t.from)
	}
	if t.spf == nil {
		t.spf = make(chan authcheck.SPF, 1)
		ip := net.IP(netserve.RemoteIP(s.c.Conn).AsSlice())
		go func() {
			ctx, cancel := context.WithTimeout(t.ctx, s.g.cfg.Checks.Timeout.D())
			defer cancel()
			t.spf <- authcheck.CheckSPF(ctx, s.s.resolver, ip, t.helo, t.from)
		}()
	}
	return nil
}

// unknownRecipient refuses a recipient that reaches no mailbox. Each one
// makes the next from the same client network wait longer, and too many
// in one session end it: that is what probing for addresses looks like.
func (s *session) unknownRecipient(to string) error {
	key := connlimit.ClientKey(s.c.RemoteAddr()).String()
	table := s.s.penalty
	table.Fail(key)
	n := int(s.c.unknown.Add(1))
	s.c.log.Info("unknown recipient", "rcpt", to, "count", n)
	s.s.metrics.SMTPRefused("unknown_user")
	if n > s.g.cfg.MaxUnknownRecipients {
		s.c.end(endUnknown, "too many unknown recipients")
		return errUnknownUser
	}
	if d := table.Delay(key); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.s.ctx.Done():
			t.Stop()
		}
	}
	return refuse(s.c, errUnknownUser)
}

// refuse counts a refused command against the session's error budget and
// returns the reply; over the budget, the session ends with 421 instead.
// go-smtp counts only its own syntax errors.
func refuse(c *conn, e *smtp.SMTPError) error {
	if int(c.errors.Add(1)) > c.gen.cfg.MaxErrors {
		c.log.Info("too many errors", "limit", c.gen.cfg.MaxErrors)
		c.end(endErrors, "too many errors")
	}
	return e
}

// Data receives the message of the transaction: DATA (RFC 5321
// §4.1.1.4), or BDAT chunks (RFC 3030) that go-smtp passes through a pipe
// to a goroutine running Data.
func (s *session) Data(r io.Reader) error {
	s.mu.Lock()
	t := s.tx
	s.mu.Unlock()
	if t == nil {
		return refuse(s.c, errNoTransaction)
	}
	if len(t.accounts) == 0 {
		// go-smtp answers DATA itself when it has no recipient; this is
		// the case where it holds recipients this transaction does not.
		return refuse(s.c, errNoRecipients)
	}
	// go-smtp's read deadline covers only the DATA or BDAT line; the
	// message gets the data-rate deadlines of conn.
	if _, bdat := r.(*io.PipeReader); bdat {
		s.c.beginBDAT()
		defer s.c.endBDAT()
	} else {
		s.c.beginData()
	}
	res := s.receive(t, r)
	s.logTransaction(t, res)
	if res.reply != nil {
		return res.reply
	}
	// go-smtp sends the code and text of an *smtp.SMTPError that Data
	// returns, 250 included; its own text for nil says "queued", and
	// nothing here is queued: the message is already stored.
	return stored(res.id)
}

// Reset ends the transaction (RSET, a new MAIL or EHLO, the end of the
// session). Checks still running are cancelled.
func (s *session) Reset() {
	s.mu.Lock()
	t := s.tx
	s.tx = nil
	s.mu.Unlock()
	if t != nil {
		t.cancel()
		s.c.setTransaction(false)
	}
}

// Logout is called by go-smtp when the session ends.
func (s *session) Logout() error {
	s.Reset()
	return nil
}

// newTxID returns a random id for a transaction, shown in the Received
// field and the log.
func newTxID() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// logTransaction writes the one log line of a transaction that reached
// DATA: accepted or refused, with its envelope and verdicts (never the
// body).
func (s *session) logTransaction(t *transaction, res *result) {
	attrs := []any{
		"tx", t.id, "helo", t.helo, "from", t.from, "rcpt", t.rcpts, "size", res.size,
		"spf", string(res.spf.Result), "dkim", dkimSummary(res.dkim), "dmarc", dmarcSummary(res.dmarc),
	}
	if cs, ok := s.sc.TLSConnectionState(); ok {
		attrs = append(attrs, "tls", tlsName(cs))
	}
	attrs = append(attrs, "duration", time.Since(t.started).Round(time.Millisecond))
	s.countVerdicts(res)
	if res.reply == nil && res.quarantine != "" {
		attrs = append(attrs, "code", 250, "id", res.id.String(), "reason", res.quarantine)
		s.c.log.Info("message quarantined", attrs...)
		s.c.delivered()
		s.s.metrics.SMTPQuarantined("filter")
		return
	}
	if res.reply == nil {
		attrs = append(attrs, "code", 250, "id", res.id.String())
		s.c.log.Info("message accepted", attrs...)
		s.c.delivered()
		s.s.metrics.SMTPAccepted(res.size)
		return
	}
	s.s.metrics.SMTPRefused(reason(res.reply))
	attrs = append(attrs, "code", res.reply.Code, "status", statusString(res.reply))
	if res.held != 0 {
		// The owner's copy: postie quarantine show <id>.
		attrs = append(attrs, "quarantine_id", res.held.String())
		s.s.metrics.SMTPQuarantined("refused")
	}
	if res.err != nil {
		attrs = append(attrs, "err", res.err)
	}
	level := slog.LevelInfo
	if res.reply.Code/100 == 4 && !errors.Is(res.err, errClient) {
		level = slog.LevelWarn
	}
	s.c.log.Log(context.Background(), level, "message refused", attrs...)
}
