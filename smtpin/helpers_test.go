package smtpin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postie/postie/internal/testutil"
	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/spool"
)

// The test world: mx.example.test receives for example.test and
// other.test; sender.example sends from 127.0.0.1 with SPF, no DMARC.
const (
	testHost   = "mx.example.test"
	testDomain = "example.test"
	alice      = "alice@example.test"
	bob        = "bob@example.test"
)

// testConfig is the configuration the tests start from: the defaults with
// short delays, so that refusals do not slow the suite.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.Hostname = testHost
	cfg.Domains = []string{testDomain, "other.test"}
	cfg.Aliases = map[string][]string{
		"postmaster@example.test": {alice},
		"team@example.test":       {alice, bob},
		"ghost@example.test":      {"nobody@example.test"},
		"@other.test":             {bob},
	}
	cfg.UnknownRecipientDelay = units.DurationOf(time.Millisecond)
	cfg.UnknownRecipientDelayMax = units.DurationOf(4 * time.Millisecond)
	cfg.Checks.Timeout = units.DurationOf(3 * time.Second)
	return cfg
}

// env is a running server with its spool, DNS server and certificates.
type env struct {
	t     testing.TB
	cfg   Config
	store *spool.Store
	dns   *testutil.DNSServer
	ca    *testutil.CA
	srv   *Server
	addr  string
	logs  *logRecorder

	tlsReady *readyFlag
}

// readyFlag is a switchable TLSReady.
type readyFlag struct {
	mu sync.Mutex
	v  bool
}

func (r *readyFlag) get() bool  { r.mu.Lock(); defer r.mu.Unlock(); return r.v }
func (r *readyFlag) set(v bool) { r.mu.Lock(); r.v = v; r.mu.Unlock() }

// envOption changes the config or the dependencies before the server
// starts.
type envOption func(*Config, *Deps)

// newEnv starts a server on 127.0.0.1 with accounts alice and bob. Options
// change the config or the dependencies before it starts.
func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	return newEnvSpool(t, nil, opts...)
}

// newEnvSpool is newEnv with the spool options changed by mod.
func newEnvSpool(t testing.TB, mod func(*spool.Options), opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, cfg: testConfig(), dns: testutil.NewDNSServer(t), ca: testutil.NewCA(t), logs: &logRecorder{}, tlsReady: &readyFlag{v: true}}
	e.dns.Add("sender.example", "TXT", "v=spf1 ip4:127.0.0.1 ip6:::1 -all")
	deps := Deps{Resolver: e.dns.Resolver(), TLS: e.ca.ServerConfig(t, testHost), TLSReady: e.tlsReady.get, Logger: slog.New(e.logs)}
	for _, o := range opts {
		o(&e.cfg, &deps)
	}
	sopts := spool.DefaultOptions()
	sopts.Path = filepath.Join(t.TempDir(), "spool.db")
	sopts.HashParams = spool.HashParams{Time: 1, Memory: 64, Threads: 1}
	sopts.MaxMessageSize = units.Size(2*e.cfg.MaxMessageSize.Bytes() + 1<<20)
	if mod != nil {
		mod(&sopts)
	}
	store, err := spool.Open(sopts)
	if err != nil {
		t.Fatal(err)
	}
	e.store = store
	for _, a := range []string{alice, bob} {
		if err := store.AddAccount(context.Background(), a, "correct horse battery"); err != nil {
			t.Fatal(err)
		}
	}
	deps.Store = store
	e.srv, err = New(e.cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		for _, p := range store.Verify() {
			t.Errorf("spool verification: %v", p)
		}
		store.Close()
		e.logs.checkNoPanic(t)
	})
	return e
}

// withConfig changes the config.
func withConfig(f func(*Config)) envOption { return func(c *Config, _ *Deps) { f(c) } }

// messages returns the messages stored for an account, oldest first.
func (e *env) messages(account string) []string {
	e.t.Helper()
	m, err := e.store.OpenMaildrop(context.Background(), spool.Login{Account: account}, "127.0.0.1")
	if err != nil {
		e.t.Fatalf("OpenMaildrop(%s): %v", account, err)
	}
	defer m.Close()
	var out []string
	for i := range m.Messages() {
		r, err := m.Open(i)
		if err != nil {
			e.t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// client is a raw SMTP client over a real socket.
type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func (e *env) dial() *client {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	cl := &client{t: e.t, conn: c, r: bufio.NewReader(c)}
	return cl
}

// line reads one reply line, without its CRLF.
func (c *client) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	s, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading a reply: %v (got %q)", err, s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

// reply reads a whole (possibly multi-line) reply and returns its last
// line.
func (c *client) reply() string {
	c.t.Helper()
	for {
		l := c.line()
		if len(l) < 4 || l[3] != '-' {
			return l
		}
	}
}

func (c *client) send(format string, args ...any) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.conn, format+"\r\n", args...); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) raw(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// cmd sends a command and returns the last line of its reply.
func (c *client) cmd(format string, args ...any) string {
	c.t.Helper()
	c.send(format, args...)
	return c.reply()
}

// expect sends a command and fails unless the reply starts with want.
func (c *client) expect(want string, format string, args ...any) {
	c.t.Helper()
	if got := c.cmd(format, args...); !strings.HasPrefix(got, want) {
		c.t.Fatalf("%s: got %q, want %q...", fmt.Sprintf(format, args...), got, want)
	}
}

// hello reads the greeting and says EHLO.
func (c *client) hello() {
	c.t.Helper()
	if g := c.line(); !strings.HasPrefix(g, "220 ") {
		c.t.Fatalf("greeting %q", g)
	}
	c.expect("250 ", "EHLO client.example")
}

// starttls upgrades the connection and says EHLO again.
func (c *client) starttls(cfg *tls.Config) {
	c.t.Helper()
	c.expect("220 2.0.0", "STARTTLS")
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
	c.expect("250 ", "EHLO client.example")
}

// data sends DATA, the message (dot-stuffed) and the final dot, and
// returns the reply.
func (c *client) data(msg string) string {
	c.t.Helper()
	if got := c.cmd("DATA"); !strings.HasPrefix(got, "354") {
		return got
	}
	var b bytes.Buffer
	for _, line := range strings.SplitAfter(msg, "\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	if !strings.HasSuffix(msg, "\n") {
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	c.raw(b.String())
	return c.reply()
}

// deliver runs one whole transaction and returns the reply to the data.
func (c *client) deliver(from, msg string, to ...string) string {
	c.t.Helper()
	c.expect("250 ", "MAIL FROM:<%s>", from)
	for _, r := range to {
		c.expect("250 ", "RCPT TO:<%s>", r)
	}
	return c.data(msg)
}

// closed reports whether the server closed the connection: a read returns
// EOF (or a reset) within a few seconds, after any replies still queued.
func (c *client) closed() bool {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// crlf turns "\n" line ends into "\r\n".
func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// logRecorder is a slog handler that keeps every record for the test to
// look at.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
	attrs []slog.Attr // of the handler made by WithAttrs
	root  *logRecorder
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range l.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	root := l
	if l.root != nil {
		root = l.root
	}
	root.mu.Lock()
	root.lines = append(root.lines, b.String())
	root.mu.Unlock()
	return nil
}

func (l *logRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	root := l
	if l.root != nil {
		root = l.root
	}
	return &logRecorder{attrs: append(append([]slog.Attr(nil), l.attrs...), attrs...), root: root}
}

func (l *logRecorder) WithGroup(string) slog.Handler { return l }

// find returns the log lines that contain every one of parts.
func (l *logRecorder) find(parts ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range l.lines {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

// waitFor waits until a log line with every one of parts appears.
func (l *logRecorder) waitFor(t testing.TB, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if got := l.find(parts...); len(got) > 0 {
			return got[0]
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no log line with %q", parts)
	return ""
}

func (l *logRecorder) checkNoPanic(t testing.TB) {
	for _, line := range l.find("smtp session panicked") {
		t.Errorf("a session panicked: %s", line)
	}
}
