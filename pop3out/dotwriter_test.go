package pop3out

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"

	"github.com/postie/postie/spool"
)

// stuff runs text through a dotWriter, in two writes split at split.
func stuff(t testing.TB, text []byte, split int) []byte {
	var buf bytes.Buffer
	w := bufio.NewWriterSize(&buf, 16) // small, so runs cross flushes
	d := newDotWriter(w)
	if split < 0 || split > len(text) {
		split = len(text) / 2
	}
	for _, part := range [][]byte{text[:split], text[split:]} {
		if n, err := d.Write(part); err != nil || n != len(part) {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	if d.n != int64(len(text)) {
		t.Fatalf("counted %d octets, wrote %d", d.n, len(text))
	}
	return buf.Bytes()
}

// referenceStuff is textproto.DotWriter's encoding.
func referenceStuff(text []byte) []byte {
	var buf bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&buf))
	dw := w.DotWriter()
	dw.Write(text)
	dw.Close()
	return buf.Bytes()
}

// unstuff decodes a multi-line response as RFC 1939 §3 defines it, CRLF
// lines only, and returns the text and whatever followed the terminator.
func unstuff(t testing.TB, b []byte) (text, rest []byte) {
	for len(b) > 0 {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			t.Fatalf("unterminated line %q", b)
		}
		line := b[:i]
		b = b[i+2:]
		if string(line) == "." {
			return text, b
		}
		if len(line) > 0 && line[0] == '.' {
			line = line[1:]
		}
		text = append(append(text, line...), '\r', '\n')
	}
	t.Fatalf("no terminating line")
	return nil, nil
}

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ".\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"..\r\n", "...\r\n.\r\n"},
		{"a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
		{".a\r\n.b\r\n.\r\n", "..a\r\n..b\r\n..\r\n.\r\n"},
		{"a.b\r\n. \r\n", "a.b\r\n.. \r\n.\r\n"},
		{"no final newline", "no final newline\r\n.\r\n"},
		{"ends in CR\r", "ends in CR\r\r\n.\r\n"},
		// A dot after a bare LF is stuffed too, so that an LF-only client
		// cannot see an early end.
		{"a\n.\n", "a\n..\n\r\n.\r\n"},
		{"8-bit \xff\x00\x80\r\n", "8-bit \xff\x00\x80\r\n.\r\n"},
	} {
		for split := 0; split <= len(tc.in); split++ {
			if got := string(stuff(t, []byte(tc.in), split)); got != tc.want {
				t.Errorf("stuff(%q) split at %d = %q, want %q", tc.in, split, got, tc.want)
			}
		}
	}
}

// FuzzDotWriter checks the stuffer against textproto.DotWriter on what the
// spool can store, and on any input that no line before the end reads as
// the terminator, for CRLF clients and for LF-tolerant ones.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", ".", "a\r\n.\r\n", "\n.\n", ".\r\n..\r\n", "x\r\n.\r", "\r.\r\n", strings.Repeat("ab.\r\n.", 40)} {
		f.Add([]byte(s), 1)
	}
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		out := stuff(t, in, split)

		// Safety for any input: the only line that is "." is the last.
		lines := bytes.Split(bytes.TrimSuffix(out, []byte("\n")), []byte("\n"))
		for i, l := range lines {
			l = bytes.TrimSuffix(l, []byte("\r"))
			if string(l) == "." && i != len(lines)-1 {
				t.Fatalf("line %d of %q ends the response early", i, out)
			}
		}
		if !bytes.HasSuffix(out, []byte("\r\n.\r\n")) && string(out) != ".\r\n" {
			t.Fatalf("%q does not end with the terminating line", out)
		}

		// What the spool stores comes back byte for byte, and is encoded
		// as textproto.DotWriter encodes it.
		norm := spool.NormalizeLineEnds(in)
		out = stuff(t, norm, split)
		text, rest := unstuff(t, out)
		if !bytes.Equal(text, norm) || len(rest) != 0 {
			t.Fatalf("round trip of %q: got %q, rest %q", norm, text, rest)
		}
		if len(norm) > 0 {
			if ref := referenceStuff(norm); !bytes.Equal(out, ref) {
				t.Fatalf("stuff(%q) = %q, textproto.DotWriter gives %q", norm, out, ref)
			}
		}
		// And net/textproto's reader agrees (it turns CRLF into LF).
		r := textproto.NewReader(bufio.NewReader(bytes.NewReader(out)))
		got, err := io.ReadAll(r.DotReader())
		if err != nil {
			t.Fatal(err)
		}
		if want := bytes.ReplaceAll(norm, []byte("\r\n"), []byte("\n")); !bytes.Equal(got, want) {
			t.Fatalf("DotReader read %q, want %q", got, want)
		}
	})
}

func TestTopWriter(t *testing.T) {
	msg := "A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
	for _, tc := range []struct {
		msg   string
		lines int64
		want  string
	}{
		{msg, 0, "A: 1\r\nB: 2\r\n\r\n"},
		{msg, 1, "A: 1\r\nB: 2\r\n\r\nl1\r\n"},
		{msg, 3, msg},
		{msg, 99999999, msg},
		{"A: 1\r\nB: 2\r\n", 0, "A: 1\r\nB: 2\r\n"},          // no body at all
		{"A: 1\r\n\r\n", 5, "A: 1\r\n\r\n"},                  // empty body
		{"A: 1\r\n\r\n\r\n\r\nx\r\n", 1, "A: 1\r\n\r\n\r\n"}, // empty body lines count
		{"A: 1\n\nl1\nl2\n", 1, "A: 1\n\nl1\n"},              // bare LF, defensively
	} {
		for split := 0; split <= len(tc.msg); split++ {
			var buf bytes.Buffer
			tw := newTopWriter(&buf, tc.lines)
			var err error
			for _, part := range []string{tc.msg[:split], tc.msg[split:]} {
				if _, err = tw.Write([]byte(part)); err != nil {
					break
				}
			}
			if err != nil && err != errTopDone {
				t.Fatal(err)
			}
			if buf.String() != tc.want {
				t.Errorf("TOP %d of %q split at %d = %q, want %q", tc.lines, tc.msg, split, buf.String(), tc.want)
			}
		}
	}
}

func BenchmarkDotWriter(b *testing.B) {
	// Text lines of 76 octets, one in 20 starting with a dot.
	var msg []byte
	for i := 0; len(msg) < 1<<20; i++ {
		if i%20 == 0 {
			msg = append(msg, '.')
		}
		msg = append(msg, strings.Repeat("x", 74)...)
		msg = append(msg, '\r', '\n')
	}
	b.Run("dotWriter", func(b *testing.B) {
		w := bufio.NewWriterSize(io.Discard, writeBufferSize)
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			d := newDotWriter(w)
			d.Write(msg)
			d.Close()
		}
	})
	b.Run("textproto.DotWriter", func(b *testing.B) {
		w := textproto.NewWriter(bufio.NewWriterSize(io.Discard, writeBufferSize))
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			d := w.DotWriter()
			d.Write(msg)
			d.Close()
		}
	})
}
