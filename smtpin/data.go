package smtpin

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/internal/dnsname"
	"github.com/postie/postie/internal/netserve"
	"github.com/postie/postie/smtpin/authcheck"
	"github.com/postie/postie/spool"

	"github.com/postie/postie/internal/plural"
)

// maxAuthorDomains bounds the DMARC lookups of one message: a From field
// with more distinct domains than this is not a real author list.
const maxAuthorDomains = 10

// errClient marks failures the client caused (it went away, it was too
// slow), as opposed to faults of ours.
var errClient = errors.New("client failure")

// result is what became of one message.
type result struct {
	reply *smtp.SMTPError // nil: stored, 250
	err   error           // the cause of a refusal, for the log
	id    spool.MessageID
	size  int64 // bytes received
	spf   authcheck.SPF
	dkim  []authcheck.DKIM
	dmarc []authcheck.DMARC
	// quarantine is a content filter's reason to hold the message for the
	// owner instead of delivering it (answered 250 all the same); id is
	// then its id in the quarantine.
	quarantine string
	// held is the quarantine id of the owner's copy of a refused message.
	held spool.MessageID
}

// receive reads one message from r and stores it, or refuses it. The
// message streams through: its header section is read into a bounded
// buffer (the checks need it whole), then header and body go into the
// spool delivery and, when the message is signed, into the DKIM verifier,
// one buffer at a time. The spool delivery is committed, with the trace
// fields prepended, only after the checks allow it; the sender gets 250
// only once that commit is durable.
func (s *session) receive(t *transaction, r io.Reader) (res *result) {
	res = &result{spf: authcheck.SPF{Result: authcheck.None}}
	cfg := &s.g.cfg
	if _, bdat := r.(*io.PipeReader); bdat {
		// go-smtp lifts its line limit for BDAT chunks; DATA keeps it.
		r = &lineLimiter{r: r, max: int(cfg.MaxLineLength.Bytes())}
	}
	counted := &countingReader{r: r}
	defer func() { res.size = counted.n }()

	br := s.s.readers.Get().(*bufio.Reader)
	br.Reset(counted)
	defer func() { br.Reset(nil); s.s.readers.Put(br) }()
	hbuf := s.s.headers.Get().(*[]byte)
	defer func() {
		if cap(*hbuf) <= 64<<10 {
			s.s.headers.Put(hbuf)
		}
	}()

	raw, rest, err := readHeader(br, int(min(cfg.MaxHeaderSize, cfg.MaxMessageSize)), *hbuf)
	*hbuf = raw[:0]
	if err != nil {
		if errors.Is(err, errHeaderTooLarge) {
			res.reply, res.err = errHeaderSize, err
			return res
		}
		res.reply, res.err = s.readFailure(err)
		return res
	}
	h := msgHeader{raw: raw, fields: parseFields(raw)}

	// The checks that need only the header (DMARC policy lookups, DKIM key
	// lookups) and the content filters run while the body streams in.
	checkCtx, cancel := context.WithTimeout(t.ctx, cfg.Checks.Timeout.D())
	defer cancel()
	ck := s.startChecks(checkCtx, h, rest, res)
	defer ck.abort()
	var filters *filterRun
	if len(cfg.Milters) > 0 {
		filters = s.startFilters(checkCtx, t, h.raw, h.fields)
		defer filters.abort()
	}

	d := s.s.store.Begin(s.s.ctx, spool.Envelope{MailFrom: t.from, RcptTo: t.rcpts, Helo: t.helo, RemoteAddr: netserve.RemoteIP(s.c.Conn).String()})
	defer d.Abort() // does nothing after Commit
	if filters == nil {
		// With filters, the header goes in at commit, with their changes.
		if err := s.writeHeader(d, h.raw, h.fields); err != nil {
			res.reply, res.err = storageReply(err), err
			return res
		}
	}
	if err := s.stream(br, rest, d, ck.verifier, filters); err != nil {
		res.reply, res.err = err.reply, err.cause
		return res
	}

	// The final dot: gather the verdicts. Each check runs under a
	// deadline of Checks.Timeout from its start (SPF from the first
	// recipient, DKIM and DMARC from the header), so the sender waits at
	// most that long for them now.
	ck.finish(t, res, cfg.Checks.Timeout.D())
	if s.c.readFailed.Load() {
		// The reader ended because the connection did, not because the
		// message did (a BDAT chunk cut short): never store a part.
		res.reply, res.err = errLocal, fmt.Errorf("%w: the connection ended before the message did", errClient)
		return res
	}
	s.settle(d, t, h, res, ck.tooManyAuthors, filters)
	return res
}

// msgHeader is a message's header section as read, and its fields.
type msgHeader struct {
	raw    []byte
	fields []field
}

// checks are the header's checks in flight: DMARC policy lookups and the
// DKIM verifier.
type checks struct {
	records        []chan authcheck.Record
	verifier       *authcheck.DKIMVerifier
	tooManyAuthors bool
}

// startChecks starts the lookups and the verifier a header calls for;
// verdicts known at once go into res.
func (s *session) startChecks(ctx context.Context, h msgHeader, rest []byte, res *result) *checks {
	ck := &checks{}
	var froms, sigs []string
	for _, f := range h.fields {
		switch name := f.name(h.raw); {
		case bytes.EqualFold(name, []byte("From")):
			froms = append(froms, f.value(h.raw))
		case bytes.EqualFold(name, []byte("DKIM-Signature")):
			sigs = append(sigs, f.value(h.raw))
		}
	}
	authors := authcheck.AuthorDomains(froms)
	ck.tooManyAuthors = len(authors) > maxAuthorDomains
	if ck.tooManyAuthors {
		authors = authors[:maxAuthorDomains]
	}
	for _, d := range authors {
		if s.s.noDNS {
			res.dmarc = append(res.dmarc, authcheck.DMARC{Result: authcheck.None, Domain: d, Comment: noDNSComment})
			continue
		}
		ch := make(chan authcheck.Record, 1)
		ck.records = append(ck.records, ch)
		go func() { ch <- authcheck.LookupDMARC(ctx, s.s.resolver, d) }()
	}
	if len(sigs) > 0 {
		if err := dkimUnfit(h.raw, rest, h.fields); err != nil {
			res.dkim = authcheck.Unverifiable(sigs, err)
		} else {
			ck.verifier = authcheck.NewDKIMVerifier(ctx, s.s.resolver, sigs, s.g.cfg.Checks.MaxDKIMSignatures)
			ck.verifier.Write(h.raw)
		}
	}
	return ck
}

// finish gathers the verdicts into res.
func (ck *checks) finish(t *transaction, res *result, timeout time.Duration) {
	if ck.verifier != nil {
		res.dkim = ck.verifier.Close()
		ck.verifier = nil
	}
	res.spf = awaitSPF(t.spf, timeout)
	for _, ch := range ck.records {
		res.dmarc = append(res.dmarc, authcheck.EvaluateDMARC(<-ch, res.spf, res.dkim))
	}
}

// abort stops the verifier of a message that was not finished.
func (ck *checks) abort() {
	if ck.verifier != nil {
		ck.verifier.Abort()
	}
}

// streamError is why the body could not be taken: the reply, and the
// cause for the log.
type streamError struct {
	reply *smtp.SMTPError
	cause error
}

// stream copies the body (rest, the first line after the header, then the
// rest of br) into the delivery and, as it goes, to the DKIM verifier and
// the content filters.
func (s *session) stream(br *bufio.Reader, rest []byte, d *spool.Delivery, verifier *authcheck.DKIMVerifier, filters *filterRun) *streamError {
	if _, err := d.Write(rest); err != nil {
		return &streamError{storageReply(err), err}
	}
	if filters != nil {
		filters.body(rest)
	}
	bufp := s.s.copyBuf.Get().(*[]byte)
	defer s.s.copyBuf.Put(bufp)
	buf := *bufp
	for {
		n, err := br.Read(buf)
		if n > 0 {
			if _, werr := d.Write(buf[:n]); werr != nil {
				return &streamError{storageReply(werr), werr}
			}
			if verifier != nil {
				verifier.Write(buf[:n])
			}
			if filters != nil {
				filters.body(buf[:n])
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			reply, cause := s.readFailure(err)
			return &streamError{reply, cause}
		}
	}
}

// settle decides what becomes of a whole message once its verdicts are in
// and carries it out: refused (with the owner's copy held when the
// refusal is permanent), greylisted, held in the quarantine for a filter,
// or committed to the mailboxes with the trace fields (and, with filters,
// the header section with their changes) on top.
func (s *session) settle(d *spool.Delivery, t *transaction, h msgHeader, res *result, tooManyAuthors bool, filters *filterRun) {
	// What goes before the body at commit: the trace fields, and with
	// filters the header section (not yet written).
	prefix := s.trace(t, res)
	var clean []byte
	if filters != nil {
		clean = s.cleanHeader(h.raw, h.fields)
	}
	if e, why := s.decide(res, tooManyAuthors); e != nil {
		res.reply, res.err = e, errors.New(why)
		s.holdRefused(d, t, res, append(prefix, clean...), h.raw, h.fields, why)
		return
	}
	if e, why := s.greylist(t, res); e != nil {
		res.reply, res.err = e, errors.New(why)
		return
	}
	if filters != nil {
		filters.end()
		if filters.reply != nil {
			res.reply, res.err = filters.reply, errors.New(filters.why)
			s.holdRefused(d, t, res, append(prefix, clean...), h.raw, h.fields, filters.why)
			return
		}
		changed, err := applyHeaderMods(clean, parseFields(clean), filters.mods)
		if err != nil {
			// A filter's bad header change is its failure, not the
			// sender's: the message is stored without the changes.
			s.c.log.Warn("content filter sent a header change that was not applied", "err", err)
			changed = clean
		}
		if filters.quarantine != "" && !s.s.store.QuarantineOn() {
			// Never a silent loss: delivered, marked for the mail app.
			s.c.log.Warn("a content filter asked to quarantine the message, but the quarantine is off: delivering it marked", "reason", filters.quarantine)
			prefix = append(prefix, "X-Postie-Quarantine: asked by a content filter ("+headerText(filters.quarantine)+"); the quarantine is off\r\n"...)
			filters.quarantine = ""
		}
		// The store makes the line ends CRLF after the changes, on the
		// same bytes it would see without filters: a header is stored the
		// same whether or not a filter looked at it.
		prefix = append(prefix, changed...)
		if filters.quarantine != "" {
			note := spool.QuarantineNote{Reason: filters.quarantine, From: headerValue(h.raw, h.fields, "From"), Subject: headerValue(h.raw, h.fields, "Subject")}
			id, err := d.CommitQuarantine(prefix, t.accounts, note)
			if err != nil {
				res.reply, res.err = storageReply(err), err
				return
			}
			// Answered 250, as Postfix does: the filter took it.
			res.id, res.quarantine = id, filters.quarantine
			return
		}
	}
	id, err := d.Commit(prefix, t.accounts)
	if err != nil {
		res.reply, res.err = storageReply(err), err
		return
	}
	res.id = id
}

// holdRefused keeps the owner's copy of a message refused after DATA for
// a policy reason (a 5xx: DMARC, SPF, a filter's reject) in the quarantine;
// the sender gets the refusal all the same. Temporary refusals are not
// kept: the sender retries. With the quarantine off it does nothing.
func (s *session) holdRefused(d *spool.Delivery, t *transaction, res *result, prefix, hdr []byte, fields []field, why string) {
	if res.reply == nil || res.reply.Code/100 != 5 {
		return
	}
	note := spool.QuarantineNote{Reason: why, Refused: true, From: headerValue(hdr, fields, "From"), Subject: headerValue(hdr, fields, "Subject")}
	id, err := d.CommitQuarantine(prefix, t.accounts, note)
	switch {
	case err == nil:
		res.held = id
	case errors.Is(err, spool.ErrQuarantineOff):
	default:
		s.c.log.Warn("could not keep a refused message in the quarantine", "err", err)
	}
}

// headerValue returns the value of the first field named name, unfolded.
func headerValue(hdr []byte, fields []field, name string) string {
	for _, f := range fields {
		if bytes.EqualFold(f.name(hdr), []byte(name)) {
			return f.value(hdr)
		}
	}
	return ""
}

// awaitSPF returns the SPF verdict of a transaction. Its check ends by its
// own deadline; the timer here only makes sure of it.
func awaitSPF(ch <-chan authcheck.SPF, timeout time.Duration) authcheck.SPF {
	if ch == nil {
		return authcheck.SPF{Result: authcheck.None}
	}
	select {
	case v := <-ch:
		return v
	default:
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		return authcheck.SPF{Result: authcheck.TempError, Err: context.DeadlineExceeded}
	}
}

// writeHeader writes the header section to the delivery, cleaned.
func (s *session) writeHeader(d *spool.Delivery, hdr []byte, fields []field) error {
	_, err := d.Write(s.cleanHeader(hdr, fields))
	return err
}

// cleanHeader returns the header section without the
// Authentication-Results fields that claim to be ours (RFC 8601 §5): only
// this server may speak for its authserv-id. It returns hdr itself when
// there are none.
func (s *session) cleanHeader(hdr []byte, fields []field) []byte {
	var out []byte
	from := 0
	for _, f := range fields {
		if !bytes.EqualFold(f.name(hdr), []byte("Authentication-Results")) {
			continue
		}
		id := authservID(f.value(hdr))
		if !equalFoldDomain(id, s.g.cfg.Hostname) {
			continue
		}
		s.c.log.Info("removed an Authentication-Results field claiming this server's authserv-id", "authserv_id", id)
		out = append(out, hdr[from:f.start]...)
		from = f.end
	}
	if out == nil {
		return hdr
	}
	return append(out, hdr[from:]...)
}

func equalFoldDomain(a, b string) bool {
	return dnsname.Normalize(a) != "" && dnsname.Normalize(a) == dnsname.Normalize(b)
}

// readFailure maps an error reading the message to the reply and the
// cause to log.
func (s *session) readFailure(err error) (*smtp.SMTPError, error) {
	switch {
	case errors.Is(err, smtp.ErrDataTooLarge):
		return errTooLarge, fmt.Errorf("%w: over %s", errClient, s.g.cfg.MaxMessageSize)
	case errors.Is(err, smtp.ErrTooLongLine):
		// go-smtp ends the session after this reply (its line limit stays
		// exceeded), so end it here with this reply as the last.
		e := lineTooLong(int(s.g.cfg.MaxLineLength.Bytes()))
		s.c.end(e, "line too long")
		return e, fmt.Errorf("%w: line longer than %s", errClient, s.g.cfg.MaxLineLength)
	case errors.Is(err, net.ErrClosed):
		if ended, why := s.c.isEnded(); ended {
			return errShuttingDown, fmt.Errorf("%w: %s", errClient, why)
		}
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, smtp.ErrDataReset):
		return errLocal, fmt.Errorf("%w: transfer aborted: %v", errClient, err)
	}
	return errLocal, fmt.Errorf("%w: read message: %v", errClient, err)
}

// lineLimiter fails with smtp.ErrTooLongLine once a line, with its line
// ending, is longer than max bytes: the limit DATA has in go-smtp, for BDAT.
type lineLimiter struct {
	r   io.Reader
	max int
	cur int // bytes of the current line so far
}

func (l *lineLimiter) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	b := p[:n]
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.cur += len(b)
			break
		}
		if l.cur+i+1 > l.max {
			return 0, smtp.ErrTooLongLine
		}
		l.cur = 0
		b = b[i+1:]
	}
	if l.cur > l.max {
		return 0, smtp.ErrTooLongLine
	}
	return n, err
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// maxFieldLines bounds the lines of one folded header field that the DKIM
// verifier is given. go-msgauth joins a field's lines one at a time, which
// costs the square of their number; no real field comes near this.
const maxFieldLines = 500

// dkimUnfit says why a message's signatures are not verified, or nil.
// The verifier reads its own header section up to the first empty line:
// given a header that ended otherwise (rest is not nil), it would take the
// body, up to the whole message size, for header. And a field folded over
// thousands of short lines would cost it seconds of CPU.
func dkimUnfit(hdr, rest []byte, fields []field) error {
	if rest != nil {
		return errors.New("the header section does not end with an empty line")
	}
	for _, f := range fields {
		if bytes.Count(hdr[f.start:f.end], []byte{'\n'}) > maxFieldLines {
			return fmt.Errorf("a header field is folded over more than %s", plural.Count(maxFieldLines, "line"))
		}
	}
	return nil
}

// headerText makes s safe inside a header field (spool.HeaderText).
func headerText(s string) string { return spool.HeaderText(s) }

// errGreylisted defers a first attempt (RFC 6647 §2.1: 451 4.7.1).
var errGreylisted = reply(451, 4, 7, 1, "Greylisted, please try again in a few minutes")

// greylist applies [smtp.greylist] to a message the checks allowed: a
// refusal for a first attempt, or nil.
func (s *session) greylist(t *transaction, res *result) (*smtp.SMTPError, string) {
	g := s.g.cfg.Greylist
	if !g.Enabled {
		return nil, ""
	}
	ip := netserve.RemoteIP(s.c.Conn)
	if res.spf.Result == authcheck.Pass || dmarcPassed(res.dmarc) || s.g.greyAllowed(ip) {
		s.s.metrics.Verdict("greylist", "skip")
		return nil, ""
	}
	bits := 24
	if ip.Is6() {
		bits = 64
	}
	network, _ := ip.Prefix(bits)
	ok, err := s.s.store.Greylist(t.ctx, network.String(), t.from, t.accounts, time.Now(), greylistOptions(g))
	if err != nil {
		// The store's fault: let the message through rather than defer it.
		s.c.log.Error("greylisting failed; the message is let through", "err", err)
		return nil, ""
	}
	if !ok {
		s.s.metrics.Verdict("greylist", "defer")
		return errGreylisted, "greylisted: first attempt from " + network.String()
	}
	s.s.metrics.Verdict("greylist", "pass")
	return nil, ""
}

// greylistOptions are the spool's rules for g.
func greylistOptions(g GreylistConfig) spool.GreylistOptions {
	return spool.GreylistOptions{Delay: g.Delay.D(), Expire: g.Expire.D(), PassTTL: g.PassTTL.D(), MaxEntries: g.MaxEntries}
}

// GreylistOptions returns the spool's greylisting rules in force, or nil
// while greylisting is off; main hands it to the spool's housekeeping,
// which prunes the table by them each round.
func (s *Server) GreylistOptions() *spool.GreylistOptions {
	g := s.current().cfg.Greylist
	if !g.Enabled {
		return nil
	}
	o := greylistOptions(g)
	return &o
}

// dmarcPassed reports whether any author domain passed DMARC: an aligned
// SPF or DKIM pass.
func dmarcPassed(ds []authcheck.DMARC) bool {
	for _, d := range ds {
		if d.Result == authcheck.Pass {
			return true
		}
	}
	return false
}
