package pop3out

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/postie/postie/spool"

	"github.com/postie/postie/internal/plural"
)

// summary returns the number and total size of the messages not marked
// deleted.
func (s *session) summary() (n int, size int64) {
	for i, m := range s.msgs {
		if !s.deleted[i] {
			n++
			size += m.Size
		}
	}
	return n, size
}

// messageArg parses a message-number argument (RFC 1939 §3: message
// numbers start at 1) and returns its 0-based index. A number beyond the
// maildrop or of a message marked deleted is refused.
func (s *session) messageArg(arg string) (int, reply, bool) {
	if arg == "" {
		return 0, strike("a message number is required"), false
	}
	if strings.Contains(arg, " ") {
		return 0, strike("too many arguments"), false
	}
	n, ok := parseNumber(arg)
	if !ok {
		return 0, strike("invalid message number %q", truncate(arg, 20)), false
	}
	if n < 1 || n > int64(len(s.msgs)) {
		return 0, fail("", "no such message, only %s in maildrop", plural.Count(len(s.msgs), "message")), false
	}
	i := int(n - 1)
	if s.deleted[i] {
		return 0, fail("", "message %d already deleted", n), false
	}
	return i, reply{}, true
}

// parseNumber parses a non-negative decimal of at most 18 digits, with no
// sign or other decoration.
func parseNumber(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// stat answers the number and size of the messages (RFC 1939 §5, STAT).
func (s *session) stat(arg string) reply {
	if arg != "" {
		return strike("STAT takes no arguments")
	}
	n, size := s.summary()
	return ok("%d %d", n, size)
}

// list gives a message's size, or every message's (RFC 1939 §5, LIST). The
// size is exactly what RETR sends before dot-stuffing.
func (s *session) list(arg string) reply {
	if arg != "" {
		i, r, good := s.messageArg(arg)
		if !good {
			return r
		}
		return ok("%d %d", i+1, s.msgs[i].Size)
	}
	n, size := s.summary()
	r := ok("%s (%s)", plural.Count(n, "message"), plural.Count(size, "octet"))
	r.body = s.listing(func(w *bufio.Writer, i int) {
		w.WriteString(strconv.Itoa(i + 1))
		w.WriteByte(' ')
		w.WriteString(strconv.FormatInt(s.msgs[i].Size, 10))
	})
	return r
}

// uidl gives a message's unique id, or every message's (RFC 1939 §7,
// UIDL). The ids are the spool's: stable across sessions and restarts.
func (s *session) uidl(arg string) reply {
	if arg != "" {
		i, r, good := s.messageArg(arg)
		if !good {
			return r
		}
		return ok("%d %s", i+1, s.msgs[i].UIDL)
	}
	r := ok("unique-id listing follows")
	r.body = s.listing(func(w *bufio.Writer, i int) {
		w.WriteString(strconv.Itoa(i + 1))
		w.WriteByte(' ')
		w.WriteString(s.msgs[i].UIDL)
	})
	return r
}

// listing returns a body with one line per message not marked deleted.
func (s *session) listing(line func(w *bufio.Writer, i int)) func(*bufio.Writer) error {
	return func(w *bufio.Writer) error {
		for i := range s.msgs {
			if s.deleted[i] {
				continue
			}
			line(w, i)
			if _, err := w.WriteString("\r\n"); err != nil {
				return err
			}
		}
		_, err := w.Write(dotCRLF)
		return err
	}
}

// retr sends a whole message (RFC 1939 §5, RETR), dot-stuffed, streamed
// from the spool.
func (s *session) retr(arg string) reply {
	i, r, good := s.messageArg(arg)
	if !good {
		return r
	}
	return s.sendMessage(i, -1)
}

// top sends a message's header, the empty line after it and the first
// lines of its body (RFC 1939 §7, TOP). More lines than the body has send
// the whole message.
func (s *session) top(arg string) reply {
	msg, nlines, found := strings.Cut(arg, " ")
	if !found || msg == "" {
		return strike("TOP needs a message number and a number of lines")
	}
	i, r, good := s.messageArg(msg)
	if !good {
		return r
	}
	n, valid := parseNumber(nlines)
	if !valid {
		return strike("invalid number of lines %q", truncate(nlines, 20))
	}
	return s.sendMessage(i, n)
}

// sendMessage answers RETR (lines < 0) or TOP. The message is opened
// before the +OK, so a message the store no longer has gets an -ERR; once
// the +OK is out, a failure can only end the session.
func (s *session) sendMessage(i int, lines int64) reply {
	m := s.msgs[i]
	rc, err := s.drop.Open(i)
	if err != nil {
		s.log.Error("pop3: opening a message failed", "user", s.login.Account, "uidl", m.UIDL, "err", err)
		if errors.Is(err, spool.ErrNoSuchMessage) {
			return fail("SYS/PERM", "message %d is no longer in the store", i+1)
		}
		return fail("SYS/TEMP", "the mail store is not available; try again later")
	}
	r := ok("%s", plural.Count(m.Size, "octet"))
	if lines >= 0 {
		r = ok("top of message %d follows", i+1)
	}
	r.release = func() { rc.Close() }
	r.body = func(w *bufio.Writer) error {
		defer rc.Close()
		dw := newDotWriter(w)
		var dst io.Writer = dw
		if lines >= 0 {
			dst = newTopWriter(dw, lines)
		}
		// The spool's reader implements io.WriterTo: its chunks go straight
		// into the dot-stuffer, with no copy buffer in between.
		n, err := io.Copy(dst, rc)
		s.sent += n
		if err != nil && !errors.Is(err, errTopDone) {
			return fmt.Errorf("pop3: sending message %s: %w", m.UIDL, err)
		}
		if lines < 0 {
			if n != m.Size {
				return fmt.Errorf("pop3: message %s: sent %d octets, LIST said %d", m.UIDL, n, m.Size)
			}
			s.retrieved++
		}
		return dw.Close()
	}
	return r
}

// dele marks a message for deletion at QUIT (RFC 1939 §5, DELE).
func (s *session) dele(arg string) reply {
	i, r, good := s.messageArg(arg)
	if !good {
		return r
	}
	s.deleted[i] = true
	return ok("message %d deleted", i+1)
}

// noop does nothing (RFC 1939 §5, NOOP).
func (s *session) noop(arg string) reply {
	if arg != "" {
		return strike("NOOP takes no arguments")
	}
	return ok("")
}

// rset removes every deletion mark (RFC 1939 §5, RSET).
func (s *session) rset(arg string) reply {
	if arg != "" {
		return strike("RSET takes no arguments")
	}
	clear(s.deleted)
	n, size := s.summary()
	return ok("maildrop has %s (%s)", plural.Count(n, "message"), plural.Count(size, "octet"))
}
