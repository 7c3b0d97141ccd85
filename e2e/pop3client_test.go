package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/textproto"
	"os"
	"strings"
	"testing"
	"time"
)

// pop3 is a minimal POP3 client over implicit TLS, for tests that need to
// hold several sessions at once and look at each reply.
type pop3 struct {
	t    *testing.T
	conn *tls.Conn
	tp   *textproto.Conn
}

func dialPOP3(t *testing.T, s *server) *pop3 {
	t.Helper()
	pem, err := os.ReadFile(s.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c, err := tls.Dial("tcp", s.pop3s, &tls.Config{RootCAs: pool, ServerName: hostname})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	p := &pop3{t: t, conn: c, tp: textproto.NewConn(c)}
	p.line("+OK")
	return p
}

// line reads one reply line and checks its start.
func (p *pop3) line(prefix string) string {
	p.t.Helper()
	l, err := p.tp.ReadLine()
	if err != nil {
		p.t.Fatalf("reading a reply: %v", err)
	}
	if !strings.HasPrefix(l, prefix) {
		p.t.Fatalf("got %q, want %q...", l, prefix)
	}
	return l
}

// cmd sends a command and checks the first reply line.
func (p *pop3) cmd(prefix, format string, args ...any) string {
	p.t.Helper()
	if err := p.tp.PrintfLine(format, args...); err != nil {
		p.t.Fatal(err)
	}
	return p.line(prefix)
}

// login logs in with USER/PASS; want is "+OK" or "-ERR [IN-USE]" and so on.
func (p *pop3) login(user, pass, want string) {
	p.t.Helper()
	p.cmd("+OK", "USER %s", user)
	p.cmd(want, "PASS %s", pass)
}

// uidls returns the UIDL listing: number -> UIDL.
func (p *pop3) uidls() map[int]string {
	p.t.Helper()
	p.cmd("+OK", "UIDL")
	lines, err := p.tp.ReadDotLines()
	if err != nil {
		p.t.Fatal(err)
	}
	out := map[int]string{}
	for _, l := range lines {
		var n int
		var u string
		fmt.Sscan(l, &n, &u)
		out[n] = u
	}
	return out
}

// subject retrieves message n and returns its Subject.
func (p *pop3) subject(n int) string {
	p.t.Helper()
	p.cmd("+OK", "RETR %d", n)
	r := bufio.NewReader(p.tp.DotReader())
	tr := textproto.NewReader(r)
	h, err := tr.ReadMIMEHeader()
	if err != nil {
		p.t.Fatal(err)
	}
	for {
		if _, err := r.ReadByte(); err != nil {
			break
		}
	}
	return h.Get("Subject")
}

func (p *pop3) quit() {
	p.t.Helper()
	p.cmd("+OK", "QUIT")
	p.conn.Close()
}
