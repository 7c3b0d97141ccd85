package smtpin

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// errHeaderTooLarge means the header section is over MaxHeaderSize.
var errHeaderTooLarge = errors.New("smtp: header section too large")

// readHeader reads the header section of a message (RFC 5322 §2.2) into
// buf, at most max bytes of it. It stops after the empty line that ends
// it, or before the first line that is neither a field nor a continuation
// (a message without the empty line); that line is returned as rest, which
// is valid only until br is read again. A message that ends inside the
// header is all header.
func readHeader(br *bufio.Reader, max int, buf []byte) (hdr, rest []byte, err error) {
	hdr = buf[:0]
	lineStart, fields := true, 0
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 && lineStart {
			switch {
			case isBlankLine(line) && err == nil:
				if len(hdr)+len(line) > max {
					return hdr, nil, errHeaderTooLarge
				}
				return append(hdr, line...), nil, nil
			case line[0] == ' ' || line[0] == '\t':
				if fields == 0 {
					return hdr, line, nil
				}
			case isFieldStart(line):
				fields++
			default:
				return hdr, line, nil
			}
		}
		if len(hdr)+len(line) > max {
			return hdr, nil, errHeaderTooLarge
		}
		hdr = append(hdr, line...)
		switch {
		case err == nil:
			lineStart = true
		case errors.Is(err, bufio.ErrBufferFull):
			lineStart = false
		case errors.Is(err, io.EOF):
			return hdr, nil, nil
		default:
			return hdr, nil, err
		}
	}
}

func isBlankLine(line []byte) bool {
	return len(line) == 1 && line[0] == '\n' || len(line) == 2 && line[0] == '\r' && line[1] == '\n'
}

// isFieldStart reports whether line starts a header field: a name of
// printable characters other than ":", then ":" (RFC 5322 §2.2, with the
// obsolete white space before the colon of §4.5).
func isFieldStart(line []byte) bool {
	i := 0
	for i < len(line) && line[i] > ' ' && line[i] < 0x7f && line[i] != ':' {
		i++
	}
	if i == 0 {
		return false
	}
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	return i < len(line) && line[i] == ':'
}

// field is one header field: hdr[start:end] with its folded lines and line
// ending; the name is hdr[start:nameEnd] and the value starts after the
// colon at valueStart.
type field struct {
	start, nameEnd, valueStart, end int
}

// parseFields splits a header section read by readHeader into its fields.
// The empty line at its end, if any, is not a field.
func parseFields(hdr []byte) []field {
	var out []field
	for i := 0; i < len(hdr); {
		j := bytes.IndexByte(hdr[i:], '\n')
		if j < 0 {
			j = len(hdr)
		} else {
			j += i + 1
		}
		line := hdr[i:j]
		switch {
		case isBlankLine(line):
		case (line[0] == ' ' || line[0] == '\t') && len(out) > 0:
			out[len(out)-1].end = j
		default:
			colon := bytes.IndexByte(line, ':')
			if colon < 0 {
				colon = len(line)
			}
			name := bytes.TrimRight(line[:colon], " \t")
			out = append(out, field{start: i, nameEnd: i + len(name), valueStart: min(i+colon+1, j), end: j})
		}
		i = j
	}
	return out
}

func (f field) name(hdr []byte) []byte { return hdr[f.start:f.nameEnd] }

// value returns the field's value unfolded: line breaks removed (RFC 5322
// §2.2.3), surrounding white space trimmed.
func (f field) value(hdr []byte) string {
	v := hdr[f.valueStart:f.end]
	if bytes.IndexByte(v, '\n') == len(v)-1 || !bytes.Contains(v, []byte{'\n'}) {
		return strings.TrimSpace(string(v))
	}
	return strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(string(v)))
}

// authservID returns the authserv-id of an Authentication-Results value
// (RFC 8601 §2.2): the first token after any comments and white space.
func authservID(v string) string {
	depth := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0 || c == ' ' || c == '\t':
		default:
			j := i
			for j < len(v) && v[j] != ';' && v[j] != ' ' && v[j] != '\t' && v[j] != '(' {
				j++
			}
			return v[i:j]
		}
	}
	return ""
}
