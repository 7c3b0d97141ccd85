package smtpin

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestReadHeader(t *testing.T) {
	for _, tc := range []struct {
		name, in  string
		max, size int // bufio size (0: 4096)
		hdr, rest string
		err       error
	}{
		{name: "plain", in: "From: a\r\nSubject: b\r\n\r\nbody\r\n", hdr: "From: a\r\nSubject: b\r\n\r\n"},
		{name: "bare LF", in: "From: a\nSubject: b\n\nbody\n", hdr: "From: a\nSubject: b\n\n"},
		{name: "folded", in: "Subject: a\r\n b\r\n\tc\r\n\r\nx", hdr: "Subject: a\r\n b\r\n\tc\r\n\r\n"},
		{name: "no empty line", in: "From: a\r\nThis is body\r\nmore\r\n", hdr: "From: a\r\n", rest: "This is body\r\n"},
		{name: "body first", in: "hello there\r\n", hdr: "", rest: "hello there\r\n"},
		{name: "continuation first", in: " folded\r\nFrom: a\r\n\r\n", hdr: "", rest: " folded\r\n"},
		{name: "header only", in: "From: a\r\nSubject: b\r\n", hdr: "From: a\r\nSubject: b\r\n"},
		{name: "header only, no final CRLF", in: "From: a\r\nSubject: b", hdr: "From: a\r\nSubject: b"},
		{name: "empty message", in: "", hdr: ""},
		{name: "only the empty line", in: "\r\nbody", hdr: "\r\n"},
		{name: "obsolete space before colon", in: "Subject : x\r\n\r\n", hdr: "Subject : x\r\n\r\n"},
		{name: "mbox From_ line is body", in: "From a@b Mon Jan 1\r\nSubject: x\r\n\r\n", hdr: "", rest: "From a@b Mon Jan 1\r\n"},
		{name: "field longer than the buffer", size: 16, in: "X-Long: " + strings.Repeat("v", 100) + "\r\nX: y\r\n\r\n", hdr: "X-Long: " + strings.Repeat("v", 100) + "\r\nX: y\r\n\r\n"},
		{name: "too large", max: 20, in: "From: a\r\nSubject: bbbbbbbbbb\r\n\r\n", err: errHeaderTooLarge},
		{name: "too large by the empty line", max: 10, in: "From: abc\r\n\r\n", err: errHeaderTooLarge},
		{name: "exactly the limit", max: 13, in: "From: abc\r\n\r\nbody", hdr: "From: abc\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := tc.size
			if size == 0 {
				size = 4096
			}
			max := tc.max
			if max == 0 {
				max = 1 << 20
			}
			br := bufio.NewReaderSize(strings.NewReader(tc.in), size)
			hdr, rest, err := readHeader(br, max, nil)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if string(hdr) != tc.hdr || string(rest) != tc.rest {
				t.Errorf("got header %q rest %q, want %q %q", hdr, rest, tc.hdr, tc.rest)
			}
		})
	}
}

func TestParseFields(t *testing.T) {
	hdr := []byte("From: Alice\r\n <a@b>\r\nSubject:x\r\nDKIM-Signature : v=1;\r\n\td=x\r\n\r\n")
	f := parseFields(hdr)
	if len(f) != 3 {
		t.Fatalf("%d fields", len(f))
	}
	for i, want := range [][2]string{{"From", "Alice <a@b>"}, {"Subject", "x"}, {"DKIM-Signature", "v=1;\td=x"}} {
		if string(f[i].name(hdr)) != want[0] || f[i].value(hdr) != want[1] {
			t.Errorf("field %d: %q = %q, want %q = %q", i, f[i].name(hdr), f[i].value(hdr), want[0], want[1])
		}
	}
	if string(hdr[f[0].start:f[0].end]) != "From: Alice\r\n <a@b>\r\n" {
		t.Errorf("field 0 spans %q", hdr[f[0].start:f[0].end])
	}
}

func TestAuthservID(t *testing.T) {
	for in, want := range map[string]string{
		"mx.example.test; spf=pass":              "mx.example.test",
		"  mx.example.test 1; none":              "mx.example.test",
		"(comment) MX.example.test;spf=pass":     "MX.example.test",
		"(nested (comment)) mx.example.test;":    "mx.example.test",
		"mx.example.test(c); dkim=pass":          "mx.example.test",
		"":                                       "",
		"(unterminated comment mx.example.test;": "",
	} {
		if got := authservID(in); got != want {
			t.Errorf("authservID(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzReadHeader(f *testing.F) {
	for _, s := range []string{"From: a\r\n\r\nbody", "a\r\n", " x\r\n", "X: y\n\n", "X: " + strings.Repeat("z", 300) + "\r\n\r\n", "\r\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 64)
		hdr, rest, err := readHeader(br, 256, nil)
		if errors.Is(err, errHeaderTooLarge) {
			if len(in) <= 256 {
				t.Fatalf("%d bytes too large for 256", len(in))
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(hdr) > 256 {
			t.Fatalf("header of %d bytes over the limit", len(hdr))
		}
		// Nothing is lost or reordered: header, rest and what is left
		// in the reader make the input.
		left := new(bytes.Buffer)
		left.Write(hdr)
		left.Write(rest)
		left.ReadFrom(br)
		if !bytes.Equal(left.Bytes(), in) {
			t.Fatalf("input %q came back as %q", in, left.Bytes())
		}
		for _, fl := range parseFields(hdr) {
			if fl.start > fl.nameEnd || fl.nameEnd > fl.valueStart || fl.valueStart > fl.end || fl.end > len(hdr) {
				t.Fatalf("field %+v out of order in %q", fl, hdr)
			}
			_ = fl.value(hdr)
			_ = authservID(fl.value(hdr))
		}
	})
}

// TestDKIMUnfit checks which headers the DKIM verifier is spared: one that
// does not end with an empty line (the verifier would read the body as
// header) and one with a field folded over too many lines (joining them
// costs the verifier the square of their number).
func TestDKIMUnfit(t *testing.T) {
	folded := func(n int) string { return "Subject: x\r\n" + strings.Repeat(" y\r\n", n) }
	for _, tc := range []struct {
		name, in string
		unfit    bool
	}{
		{name: "plain", in: "From: a\r\nSubject: b\r\n\r\nbody\r\n"},
		{name: "all header", in: "From: a\r\nSubject: b\r\n"},
		{name: "folded within bounds", in: "From: a\r\n" + folded(maxFieldLines-1) + "\r\nbody\r\n"},
		{name: "no empty line", in: "DKIM-Signature: v=1\r\nnot a field\r\n" + strings.Repeat(" z\r\n", 1000), unfit: true},
		{name: "folded over too many lines", in: "From: a\r\n" + folded(maxFieldLines) + "\r\nbody\r\n", unfit: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr, rest, err := readHeader(bufio.NewReader(strings.NewReader(tc.in)), 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := dkimUnfit(hdr, rest, parseFields(hdr)) != nil; got != tc.unfit {
				t.Fatalf("unfit = %v, want %v", got, tc.unfit)
			}
		})
	}
}
