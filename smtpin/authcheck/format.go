package authcheck

import (
	"strings"
	"unicode/utf8"
)

// FormatResults returns the value of an Authentication-Results field
// (RFC 8601 §2.2) for the verdicts, folded with one result per line:
//
//	mx.example.com;
//		spf=pass smtp.mailfrom=alice@example.org;
//		dkim=pass header.d=example.org header.s=sel header.b=AbCdEfGh;
//		dmarc=pass (p=reject) header.from=example.org
//
// Every value that came from the sender is made safe for a header: no
// control characters, quoted where the grammar needs it.
func FormatResults(authservID string, spf SPF, sigs []DKIM, dmarcs []DMARC) string {
	var b strings.Builder
	b.WriteString(authservID)
	next := func(method string, r Result) {
		b.WriteString(";\r\n\t")
		b.WriteString(method)
		b.WriteByte('=')
		b.WriteString(string(r))
	}
	prop := func(name, value string) {
		if value == "" {
			return
		}
		b.WriteByte(' ')
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(pvalue(value))
	}

	comment := func(c string) {
		if c != "" {
			b.WriteString(" (")
			b.WriteString(commentSafe(c))
			b.WriteByte(')')
		}
	}

	next("spf", spf.Result)
	comment(spf.Comment)
	prop(spf.Property, spf.Value)

	if len(sigs) == 0 {
		next("dkim", None)
		b.WriteString(" (no signatures)")
	}
	for _, s := range sigs {
		next("dkim", s.Result)
		prop("header.d", s.Domain)
		prop("header.s", s.Selector)
		prop("header.b", s.B)
	}

	if len(dmarcs) == 0 {
		next("dmarc", PermError)
		b.WriteString(" (no author domain)")
	}
	for _, d := range dmarcs {
		next("dmarc", d.Result)
		if d.Policy != "" {
			b.WriteString(" (p=")
			b.WriteString(string(d.Policy))
			b.WriteByte(')')
		}
		comment(d.Comment)
		prop("header.from", d.Domain)
	}
	return b.String()
}

// commentSafe makes the text of a comment safe: no parentheses,
// backslashes or control characters.
func commentSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r == utf8.RuneError || strings.ContainsRune("()\\", r) {
			return '?'
		}
		return r
	}, s)
}

// pvalue formats a property value (RFC 8601 §2.2 pvalue): bare when it
// is made of letters, digits and "@.-_+" (an address or a domain), a
// quoted-string otherwise. Readers of this field often split it naively
// at ";" and spaces, so characters that could make a value look like more
// results (";", quotes, backslashes, parentheses, spaces, controls,
// invalid UTF-8) become "?" rather than being escaped.
func pvalue(s string) string {
	bare := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@.-_+", r)) {
			bare = false
			break
		}
	}
	if bare {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"),
			r <= ' ', r == 0x7f, strings.ContainsRune("\";\\()", r):
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
