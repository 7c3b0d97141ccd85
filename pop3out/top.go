package pop3out

import (
	"bytes"
	"errors"
	"io"
)

// errTopDone stops the copy of a message once TOP has written what it
// asked for.
var errTopDone = errors.New("pop3: TOP has its lines")

// topWriter passes on a message's header section, the empty line after it,
// and then at most lines lines of the body (RFC 1939 §7, TOP). When it has
// passed all of that, Write returns errTopDone, so the reader stops. A
// message without an empty line is all header, and is passed on whole, as
// is a body shorter than lines.
type topWriter struct {
	w        io.Writer
	lines    int64 // body lines still wanted
	inHeader bool
	lineLen  int64 // octets of the current line so far
	last     byte  // the last octet seen
}

func newTopWriter(w io.Writer, lines int64) *topWriter {
	return &topWriter{w: w, lines: lines, inHeader: true}
}

// Write implements io.Writer.
func (t *topWriter) Write(p []byte) (int, error) {
	if !t.inHeader && t.lines == 0 {
		return 0, errTopDone
	}
	off := 0
	for {
		i := bytes.IndexByte(p[off:], '\n')
		if i < 0 {
			t.lineLen += int64(len(p) - off)
			break
		}
		lf := off + i
		before := t.last
		if lf > 0 {
			before = p[lf-1]
		}
		lineLen := t.lineLen + int64(i+1)
		t.lineLen = 0
		off = lf + 1
		end := off
		if t.inHeader {
			// The header ends at the first empty line: "\r\n", or a bare "\n".
			if lineLen == 1 || (lineLen == 2 && before == '\r') {
				t.inHeader = false
			}
		} else {
			t.lines--
		}
		if !t.inHeader && t.lines == 0 {
			n, err := t.w.Write(p[:end])
			if err != nil {
				return n, err
			}
			return n, errTopDone
		}
	}
	if len(p) > 0 {
		t.last = p[len(p)-1]
	}
	return t.w.Write(p)
}
