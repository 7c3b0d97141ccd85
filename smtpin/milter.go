package smtpin

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-milter"
	"github.com/emersion/go-smtp"

	"github.com/postie/postie/internal/netserve"
	"github.com/postie/postie/internal/units"
)

// MilterConfig is one [[smtp.milter]] table: a mail filter spoken to over
// the milter protocol, as Postfix and Sendmail do (rspamd's proxy worker
// with milter = yes, spamass-milter, clamav-milter, OpenDKIM, OpenDMARC).
// Filters are asked in the order they are listed.
type MilterConfig struct {
	// Name names the filter in the log and the metrics. Default: Address.
	Name string `toml:"name"`
	// Address is where the filter listens: "tcp:127.0.0.1:11332",
	// "unix:/run/rspamd/milter.sock" (Postfix's "inet:host:port" too).
	Address string `toml:"address"`
	// OnFailure is what happens to a message when the filter cannot be
	// reached, times out or breaks the protocol: "accept" (the default:
	// deliver without it, log a warning and count it) or "tempfail"
	// (451 4.7.1, the sender retries later).
	OnFailure string `toml:"on_failure"`
	// ConnectTimeout bounds connecting to the filter; Timeout bounds each
	// step of the conversation (one reply of the filter).
	ConnectTimeout units.Duration `toml:"connect_timeout"`
	Timeout        units.Duration `toml:"timeout"`
}

// network returns the net.Dial network and address of Address.
func (m MilterConfig) network() (string, string, error) {
	scheme, rest, ok := strings.Cut(m.Address, ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("%q: want tcp:host:port or unix:/path", m.Address)
	}
	switch scheme {
	case "tcp", "inet", "tcp4", "inet4", "tcp6", "inet6":
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return "", "", fmt.Errorf("%q: want tcp:host:port", m.Address)
		}
		return strings.Replace(scheme, "inet", "tcp", 1), rest, nil
	case "unix", "local":
		return "unix", rest, nil
	}
	return "", "", fmt.Errorf("%q: want tcp:host:port or unix:/path", m.Address)
}

func (m MilterConfig) name() string {
	if m.Name != "" {
		return m.Name
	}
	return m.Address
}

// The replies a filter's verdicts give.
var (
	// 5.7.1 delivery not authorized: a filter refused the message.
	errFilterReject = reply(550, 5, 7, 1, "Message refused by a content filter")
	// 4.7.1: a filter asked to try later, or could not be asked.
	errFilterTempFail = reply(451, 4, 7, 1, "Message deferred by a content filter, please try again later")
)

// filterRun is the milter conversation about one message: a session with
// each configured filter, from the connection's data to the end of the
// message, and what they decided.
type filterRun struct {
	s      *session
	active []*filterConn

	// Set by the first filter that decides for the message.
	reply      *smtp.SMTPError // a refusal, given to the sender
	quarantine string          // a filter's reason to quarantine (or discard)
	why        string          // for the log

	// Header changes, in the order the filters gave them.
	mods []milter.ModifyAction
}

// filterConn is one filter's session.
type filterConn struct {
	cfg  MilterConfig
	cs   *milter.ClientSession
	conn net.Conn // the connection, closed here whatever go-milter does
}

// close ends the session and closes its connection: go-milter leaves it
// open when its goodbye cannot be written (the filter went away).
func (fc *filterConn) close() {
	fc.cs.Close()
	fc.conn.Close()
}

// startFilters opens a session with every configured filter and gives it
// what it would have seen from Postfix by the end of the header section:
// the connection, HELO, MAIL, every accepted RCPT (with the macros rspamd
// and SpamAssassin read), and the header fields. A filter that decides
// already is not consulted further.
func (s *session) startFilters(ctx context.Context, t *transaction, hdr []byte, fields []field) *filterRun {
	run := &filterRun{s: s}
	for _, m := range s.g.cfg.Milters {
		if run.decided() {
			break
		}
		fc, err := run.open(ctx, m, t, hdr, fields)
		if err != nil {
			run.failed(m, err)
			continue
		}
		if fc != nil {
			run.active = append(run.active, fc)
		}
	}
	return run
}

// decided reports whether a filter refused or quarantined the message.
func (r *filterRun) decided() bool { return r.reply != nil || r.quarantine != "" }

// open runs one filter up to the end of the header section. It returns nil
// (and no error) when the filter already decided: accepted, refused.
func (r *filterRun) open(ctx context.Context, m MilterConfig, t *transaction, hdr []byte, fields []field) (*filterConn, error) {
	network, addr, err := m.network()
	if err != nil {
		return nil, err
	}
	dialer := &limitedDialer{ctx: ctx, d: net.Dialer{Timeout: m.ConnectTimeout.D()}, end: time.Now().Add(r.s.g.cfg.DataTimeout.D())}
	client := milter.NewClientWithOptions(network, addr, milter.ClientOptions{
		Dialer:       dialer,
		ReadTimeout:  m.Timeout.D(),
		WriteTimeout: m.Timeout.D(),
		ActionMask:   milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
	})
	cs, err := client.Session()
	if err != nil {
		if dialer.conn != nil {
			dialer.conn.Close() // go-milter keeps it open on a failed negotiation
		}
		return nil, err
	}
	fc := &filterConn{cfg: m, cs: cs, conn: dialer.conn}
	s := r.s
	ip := netserve.RemoteIP(s.c.Conn)
	family, port := milter.FamilyInet, uint16(0)
	if ip.Is6() {
		family = milter.FamilyInet6
	}
	if ap, err := netip.ParseAddrPort(s.c.RemoteAddr().String()); err == nil {
		port = ap.Port()
	}
	host := s.g.cfg.Hostname
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) {
			if err := cs.Macros(milter.CodeConn, "j", host, "{daemon_name}", "postie", "{client_addr}", ip.String(), "{client_name}", "["+ip.String()+"]"); err != nil {
				return nil, err
			}
			return cs.Conn("["+ip.String()+"]", family, port, ip.String())
		},
		func() (*milter.Action, error) {
			kv := []string{}
			if st, ok := s.sc.TLSConnectionState(); ok {
				kv = append(kv, "{tls_version}", tlsVersionName(st.Version))
			}
			if len(kv) > 0 {
				if err := cs.Macros(milter.CodeHelo, kv...); err != nil {
					return nil, err
				}
			}
			return cs.Helo(t.helo)
		},
		func() (*milter.Action, error) {
			if err := cs.Macros(milter.CodeMail, "i", t.id, "{mail_addr}", t.from); err != nil {
				return nil, err
			}
			return cs.Mail(t.from, nil)
		},
	}
	for _, rcpt := range t.rcpts {
		steps = append(steps, func() (*milter.Action, error) {
			if err := cs.Macros(milter.CodeRcpt, "{rcpt_addr}", rcpt); err != nil {
				return nil, err
			}
			return cs.Rcpt(rcpt, nil)
		})
	}
	for _, f := range fields {
		steps = append(steps, func() (*milter.Action, error) {
			return cs.HeaderField(string(f.name(hdr)), milterValue(hdr[f.valueStart:f.end]))
		})
	}
	steps = append(steps, cs.HeaderEnd)
	for _, step := range steps {
		act, err := step()
		if err != nil {
			fc.close()
			return nil, err
		}
		if !r.take(fc, act, nil) {
			fc.close()
			return nil, nil
		}
	}
	return fc, nil
}

// body gives a piece of the body to every filter still listening.
func (r *filterRun) body(p []byte) {
	for len(p) > 0 && len(r.active) > 0 && !r.decided() {
		n := min(len(p), milter.MaxBodyChunk)
		keep := r.active[:0]
		for _, fc := range r.active {
			act, err := fc.cs.BodyChunk(p[:n])
			switch {
			case err != nil:
				r.failed(fc.cfg, err)
				fc.close()
			case r.take(fc, act, nil):
				keep = append(keep, fc)
			default:
				fc.close()
			}
		}
		r.active = keep
		p = p[n:]
	}
}

// end tells every filter still listening that the message is complete and
// collects its header changes and last verdict.
func (r *filterRun) end() {
	for _, fc := range r.active {
		if r.decided() {
			fc.close()
			continue
		}
		mods, act, err := fc.cs.End()
		fc.close()
		if err != nil {
			r.failed(fc.cfg, err)
			continue
		}
		r.take(fc, act, mods)
	}
	r.active = nil
}

// abort ends every session without a verdict (the message was refused for
// another reason, or the transfer failed).
func (r *filterRun) abort() {
	for _, fc := range r.active {
		fc.close()
	}
	r.active = nil
}

// take applies a filter's action and reports whether the filter is still
// to be consulted (it said continue).
func (r *filterRun) take(fc *filterConn, act *milter.Action, mods []milter.ModifyAction) bool {
	name := fc.cfg.name()
	// A refusal wins over a quarantine asked for in the same breath, as
	// in Postfix: the sender must learn, and the owner's copy is held
	// with the refusal anyway.
	switch act.Code {
	case milter.ActReject:
		r.refuse(errFilterReject, name, "reject")
		return false
	case milter.ActTempFail:
		r.refuse(errFilterTempFail, name, "tempfail")
		return false
	case milter.ActReplyCode:
		r.refuse(filterReply(act.SMTPCode, act.SMTPText), name, fmt.Sprintf("reply %d %s", act.SMTPCode, act.SMTPText))
		return false
	}
	for _, m := range mods {
		switch m.Code {
		case milter.ActQuarantine:
			r.quarantineFor(name, m.Reason)
		case milter.ActAddHeader, milter.ActInsertHeader, milter.ActChangeHeader:
			r.mods = append(r.mods, m)
		}
	}
	switch act.Code {
	case milter.ActContinue:
		return true
	case milter.ActDiscard:
		// Never a silent loss: the owner finds it in the quarantine.
		r.quarantineFor(name, "discarded by the filter")
	}
	return false
}

func (r *filterRun) refuse(e *smtp.SMTPError, name, what string) {
	if r.decided() {
		return
	}
	r.reply, r.why = e, fmt.Sprintf("filter %s: %s", name, what)
}

func (r *filterRun) quarantineFor(name, reason string) {
	if r.decided() {
		return
	}
	if reason == "" {
		reason = "quarantined by the filter"
	}
	r.quarantine, r.why = fmt.Sprintf("%s: %s", name, reason), "filter "+name+": quarantine"
}

// failed handles a filter that could not be asked: per its on_failure, the
// message goes on without it, or is deferred.
func (r *filterRun) failed(m MilterConfig, err error) {
	s := r.s
	s.s.metrics.MilterFailure(m.name())
	if m.OnFailure == "tempfail" {
		s.c.log.Warn("content filter failed; deferring the message", "filter", m.name(), "err", err)
		r.refuse(errFilterTempFail, m.name(), "failed: "+err.Error())
		return
	}
	s.c.log.Warn("content filter failed; the message goes on without it", "filter", m.name(), "err", err)
}

// filterReply makes a filter's own reply (SMFIR_REPLYCODE) an SMTP reply:
// its code if it is a 4xx or 5xx, its enhanced code when its text starts
// with one of the same class, and its text made safe.
func filterReply(code int, text string) *smtp.SMTPError {
	if code < 400 || code > 599 {
		code = 550
	}
	class := code / 100
	enh := smtp.EnhancedCode{class, 7, 1}
	if f := strings.Fields(text); len(f) > 0 {
		if e, ok := parseEnhanced(f[0]); ok && e[0] == class {
			enh, text = e, strings.TrimSpace(strings.TrimPrefix(text, f[0]))
		}
	}
	text = strings.NewReplacer("\r", " ", "\n", " ").Replace(text)
	if len(text) > 200 {
		text = text[:200]
	}
	if strings.TrimSpace(text) == "" {
		text = "Message refused by a content filter"
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: asciiText(text)}
}

// parseEnhanced reads an enhanced status code "5.7.1".
func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, false
	}
	var e smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 || len(p) > 3 {
			return smtp.EnhancedCode{}, false
		}
		e[i] = n
	}
	return e, e[0] == 4 || e[0] == 5
}

// milterValue is a header field's value as a filter expects it: without
// the space after the colon and the final line ending, folded lines kept
// with LF.
func milterValue(v []byte) string {
	v = bytes.TrimRight(v, "\r\n")
	v = bytes.TrimLeft(v, " \t")
	return strings.ReplaceAll(string(v), "\r\n", "\n")
}

// maxHeaderMods bounds the header changes applied to one message.
const maxHeaderMods = 100

// applyHeaderMods returns the header section hdr (its fields, then the
// empty line if it has one) with the filters' changes: added fields go at
// the end, inserted ones at their index (0: the top), a changed field is
// replaced, and changed to an empty value, removed. Field names that are
// not names and values that would break the header are refused, so a
// filter cannot inject lines.
func applyHeaderMods(hdr []byte, fields []field, mods []milter.ModifyAction) ([]byte, error) {
	type hf struct{ name, raw []byte }
	list := make([]hf, 0, len(fields)+len(mods))
	for _, f := range fields {
		list = append(list, hf{f.name(hdr), hdr[f.start:f.end]})
	}
	var tail []byte
	if len(fields) > 0 {
		tail = hdr[fields[len(fields)-1].end:]
	} else {
		tail = hdr
	}
	if len(mods) > maxHeaderMods {
		return nil, fmt.Errorf("%d header changes; at most %d", len(mods), maxHeaderMods)
	}
	for _, m := range mods {
		raw, err := formatField(m.HeaderName, m.HeaderValue)
		if err != nil {
			return nil, err
		}
		switch m.Code {
		case milter.ActAddHeader:
			list = append(list, hf{[]byte(m.HeaderName), raw})
		case milter.ActInsertHeader:
			i := min(int(m.HeaderIndex), len(list))
			list = append(list[:i], append([]hf{{[]byte(m.HeaderName), raw}}, list[i:]...)...)
		case milter.ActChangeHeader:
			// HeaderIndex counts the fields of that name from 1.
			n := 0
			for i := range list {
				if !bytes.EqualFold(list[i].name, []byte(m.HeaderName)) {
					continue
				}
				if n++; n != int(m.HeaderIndex) && !(m.HeaderIndex == 0 && n == 1) {
					continue
				}
				if m.HeaderValue == "" {
					list = append(list[:i], list[i+1:]...)
				} else {
					list[i].raw = raw
				}
				break
			}
		}
	}
	var out bytes.Buffer
	for _, f := range list {
		out.Write(f.raw)
	}
	out.Write(tail)
	return out.Bytes(), nil
}

// formatField makes a header field from a filter's name and value, with
// CRLF line endings; it refuses a name that is not a field name and a value
// with a line that does not continue the field.
func formatField(name, value string) ([]byte, error) {
	if name == "" || len(name) > 128 || strings.IndexFunc(name, func(r rune) bool { return r < 33 || r > 126 || r == ':' }) >= 0 {
		return nil, fmt.Errorf("header name %q from a filter is not a field name", name)
	}
	if len(value) > 8<<10 {
		return nil, fmt.Errorf("header %s from a filter is longer than 8 KiB", name)
	}
	value = strings.ReplaceAll(strings.ReplaceAll(value, "\r\n", "\n"), "\r", "\n")
	lines := strings.Split(value, "\n")
	for i, l := range lines {
		if i > 0 && (l == "" || (l[0] != ' ' && l[0] != '\t')) {
			return nil, fmt.Errorf("header %s from a filter has a line that does not continue it", name)
		}
		for j := 0; j < len(l); j++ {
			if c := l[j]; c < 0x20 && c != '\t' || c == 0x7f {
				return nil, fmt.Errorf("header %s from a filter has a control character", name)
			}
		}
	}
	sep := " "
	if strings.HasPrefix(value, " ") || strings.HasPrefix(value, "\t") {
		sep = ""
	}
	return []byte(name + ":" + sep + strings.Join(lines, "\r\n") + "\r\n"), nil
}

// limitedDialer dials a filter under a context, so that Shutdown's
// cancellation cuts a slow connect short, and keeps the connection, whose
// deadlines it clamps to end: go-milter sets a fresh deadline for every
// packet and waits through any number of progress packets, and the
// conversation about one message must still end.
type limitedDialer struct {
	ctx  context.Context
	d    net.Dialer
	end  time.Time
	conn net.Conn
}

func (l *limitedDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := l.d.DialContext(l.ctx, network, addr)
	if err != nil {
		return nil, err
	}
	l.conn = &clampedConn{Conn: c, end: l.end}
	return l.conn, nil
}

// clampedConn never lets a deadline fall after end.
type clampedConn struct {
	net.Conn
	end time.Time
}

func (c *clampedConn) clamp(t time.Time) time.Time {
	if t.IsZero() || t.After(c.end) {
		return c.end
	}
	return t
}

func (c *clampedConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *clampedConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *clampedConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.clamp(t)) }

// tlsVersionName is the {tls_version} macro's value, as Postfix gives it.
func tlsVersionName(v uint16) string {
	switch v {
	case 0x0304:
		return "TLSv1.3"
	case 0x0303:
		return "TLSv1.2"
	}
	return "TLS"
}
