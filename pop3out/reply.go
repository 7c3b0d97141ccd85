package pop3out

import (
	"bufio"
	"fmt"
)

// reply is what a command answers. session.write is the one place that
// turns it into bytes on the wire.
type reply struct {
	ok bool
	// code is the RFC 2449 §8 / RFC 3206 response code of an -ERR, without
	// brackets: "AUTH", "SYS/TEMP", "SYS/PERM", "IN-USE", "LOGIN-DELAY".
	code string
	text string
	// body writes the lines of a multi-line reply, terminating line
	// included (RFC 1939 §3). It runs only after a +OK status line.
	body func(w *bufio.Writer) error
	// release frees what body would have released (an open message) when
	// the status line fails and body never runs.
	release func()
	// after runs once the reply is flushed (STLS starts TLS there).
	after func() error
	// strike marks a client mistake that counts toward MaxErrors.
	strike bool
	// close ends the session after the reply.
	close bool
}

// ok makes a +OK reply.
func ok(format string, args ...any) reply {
	return reply{ok: true, text: fmt.Sprintf(format, args...)}
}

// fail makes an -ERR reply with an optional response code.
func fail(code, format string, args ...any) reply {
	return reply{code: code, text: fmt.Sprintf(format, args...)}
}

// strike makes an -ERR reply to a client mistake (RFC 1939 §3: an
// unknown command, a bad argument), which counts toward MaxErrors.
func strike(format string, args ...any) reply {
	return reply{text: fmt.Sprintf(format, args...), strike: true}
}

// write puts a reply into the write buffer: the status line, and for a
// multi-line reply its body. An error means the connection is unusable.
//
//	+OK 2 messages (320 octets)
//	-ERR [IN-USE] maildrop is in use by another session
func (s *session) write(r reply) error {
	w := s.bw
	if r.ok {
		w.WriteString("+OK")
	} else {
		w.WriteString("-ERR")
		if r.code != "" {
			w.WriteString(" [")
			w.WriteString(r.code)
			w.WriteByte(']')
		}
	}
	if r.text != "" {
		w.WriteByte(' ')
		w.WriteString(r.text)
	}
	if _, err := w.WriteString("\r\n"); err != nil {
		if r.release != nil {
			r.release()
		}
		return err
	}
	if r.ok && r.body != nil {
		return r.body(w)
	}
	if r.release != nil {
		r.release()
	}
	return nil
}

// lines returns a body that writes the given lines and the terminating
// line. The lines must not start with "." (none of CAPA's, LIST's or
// UIDL's can).
func lines(ls ...string) func(w *bufio.Writer) error {
	return func(w *bufio.Writer) error {
		for _, l := range ls {
			w.WriteString(l)
			w.WriteString("\r\n")
		}
		_, err := w.Write(dotCRLF)
		return err
	}
}
