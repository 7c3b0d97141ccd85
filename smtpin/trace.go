package smtpin

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/postie/postie/internal/netserve"
	"github.com/postie/postie/smtpin/authcheck"
)

// trace returns the header fields this server puts on top of a message it
// stores, as the final delivery MTA:
//
//	Return-Path: <alice@example.org>                        (RFC 5321 §4.4)
//	Authentication-Results: mx.example.com; spf=pass ...    (RFC 8601)
//	Received: from mail.example.org ([192.0.2.1])           (RFC 5321 §4.4)
//		by mx.example.com (Postie) with ESMTPS (TLS1.3 TLS_AES_128_GCM_SHA256)
//		id 3f2a9c01b7e4
//		for <bob@example.com>; Mon, 02 Jan 2006 15:04:05 +0000
//
// "for" names the recipient only when there is one, so that a message's
// other recipients are not disclosed.
func (s *session) trace(t *transaction, res *result) []byte {
	host := s.g.cfg.Hostname
	var b strings.Builder
	b.Grow(512)
	b.WriteString("Return-Path: <")
	b.WriteString(formatPath(t.from))
	b.WriteString(">\r\nAuthentication-Results: ")
	b.WriteString(authcheck.FormatResults(host, res.spf, res.dkim, res.dmarc))
	b.WriteString("\r\nReceived: from ")
	b.WriteString(headerSafe(t.helo))
	b.WriteString(" (")
	b.WriteString(addressLiteral(netserve.RemoteIP(s.c.Conn).String()))
	b.WriteString(")\r\n\tby ")
	b.WriteString(host)
	b.WriteString(" (Postie) with ")
	cs, isTLS := s.sc.TLSConnectionState()
	b.WriteString(protocolName(t.utf8, isTLS))
	if isTLS {
		b.WriteString(" (")
		b.WriteString(tlsName(cs))
		b.WriteString(")")
	}
	b.WriteString("\r\n\tid ")
	b.WriteString(t.id)
	if len(t.rcpts) == 1 {
		b.WriteString("\r\n\tfor <")
		b.WriteString(formatPath(t.rcpts[0]))
		b.WriteString(">")
	}
	b.WriteString("; ")
	b.WriteString(time.Now().Format(time.RFC1123Z))
	b.WriteString("\r\n")
	return []byte(b.String())
}

// addressLiteral writes an IP address as RFC 5321 §4.1.3 does:
// [192.0.2.1] or [IPv6:2001:db8::1].
func addressLiteral(ip string) string {
	if strings.Contains(ip, ":") {
		return "[IPv6:" + ip + "]"
	}
	return "[" + ip + "]"
}

// protocolName is the "with" of Received (RFC 3848, RFC 6531 §3.7.3).
func protocolName(utf8, isTLS bool) string {
	p := "ESMTP"
	if utf8 {
		p = "UTF8SMTP"
	}
	if isTLS {
		p += "S"
	}
	return p
}

func tlsName(cs tls.ConnectionState) string {
	return strings.ReplaceAll(tls.VersionName(cs.Version), " ", "") + " " + tls.CipherSuiteName(cs.CipherSuite)
}

// formatPath writes an address as the inside of a path, quoting a local
// part that is not a dot-atom (RFC 5321 §4.1.2): go-smtp hands it over
// unquoted.
func formatPath(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return headerSafe(addr)
	}
	local := addr[:at]
	if isDotAtom(local) {
		return headerSafe(addr)
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(headerSafe(local)) + `"@` + headerSafe(addr[at+1:])
}

func isDotAtom(s string) bool {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if r < 0x80 && !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-/=?^_`{|}~.", r)) {
			return false
		}
	}
	return true
}

// headerSafe replaces what must not reach a header field: control
// characters and invalid UTF-8 become "?".
func headerSafe(s string) string {
	ok := utf8.ValidString(s)
	for i := 0; ok && i < len(s); i++ {
		ok = s[i] >= ' ' && s[i] != 0x7f
	}
	if ok {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		if r < ' ' || r == 0x7f || r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD") {
			b.WriteByte('?')
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// statusString formats the codes of a reply for the log.
func statusString(e *smtp.SMTPError) string {
	c := e.EnhancedCode
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

func dkimSummary(v []authcheck.DKIM) string {
	if len(v) == 0 {
		return string(authcheck.None)
	}
	parts := make([]string, len(v))
	for i, d := range v {
		parts[i] = string(d.Result) + ":" + d.Domain
	}
	return strings.Join(parts, ",")
}

func dmarcSummary(v []authcheck.DMARC) string {
	if len(v) == 0 {
		return string(authcheck.None)
	}
	parts := make([]string, len(v))
	for i, d := range v {
		parts[i] = string(d.Result) + ":" + d.Domain
		if d.Policy != "" {
			parts[i] += ":p=" + string(d.Policy)
		}
	}
	return strings.Join(parts, ",")
}
