package pop3out

import (
	"bufio"
	"bytes"
)

// dotWriter dot-stuffs message text on its way to a buffered writer (RFC
// 1939 §3): a line that starts with "." gets another "." in front, and
// Close ends the text with ".\r\n" on a line of its own.
//
// The spool stores bodies with CRLF line ends, so the writer only looks for
// "\n." and writes the runs between such places as they are, in as few
// writes as there are dot lines; textproto.DotWriter, which also rewrites
// bare LF, goes byte by byte. A dot after a bare LF is stuffed too, so a
// client that ends lines at LF alone cannot be made to see an early end.
type dotWriter struct {
	w *bufio.Writer
	// n counts the message octets written, before stuffing.
	n int64
	// last and prev are the last two octets written (0 when none), to know
	// whether a line has just begun and whether the text ends in CRLF.
	last, prev byte
}

var (
	dotCRLF = []byte(".\r\n")
	lfDot   = []byte("\n.")
)

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w} }

// Write implements io.Writer.
func (d *dotWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	total := len(p)
	if (d.n == 0 || d.last == '\n') && p[0] == '.' {
		if err := d.w.WriteByte('.'); err != nil {
			return 0, err
		}
	}
	rest := p
	for {
		i := bytes.Index(rest, lfDot)
		if i < 0 {
			break
		}
		// Write through the LF, then the stuffed dot; the original dot
		// starts the next run.
		if _, err := d.w.Write(rest[:i+1]); err != nil {
			return total - len(rest), err
		}
		if err := d.w.WriteByte('.'); err != nil {
			return total - len(rest) + i + 1, err
		}
		rest = rest[i+1:]
	}
	if _, err := d.w.Write(rest); err != nil {
		return total - len(rest), err
	}
	d.n += int64(total)
	if total >= 2 {
		d.prev, d.last = p[total-2], p[total-1]
	} else {
		d.prev, d.last = d.last, p[0]
	}
	return total, nil
}

// Close ends the multi-line response: a CRLF if the text did not end with
// one (never for what the spool stores), then ".\r\n". An empty text is
// just the terminating line.
func (d *dotWriter) Close() error {
	if d.n > 0 && (d.prev != '\r' || d.last != '\n') {
		if _, err := d.w.WriteString("\r\n"); err != nil {
			return err
		}
	}
	_, err := d.w.Write(dotCRLF)
	return err
}
