package pop3out

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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

// The fixture every test starts from.
const (
	alice     = "alice@example.org"
	bob       = "bob@example.org"
	password  = "correct horse battery"
	tlsName   = "pop3.example.test"
	fixedTime = 1767323045 // 2026-01-02T03:04:05Z: UIDLs are "<uid>.1767323045"
)

// fixtureMessages are delivered to alice, in this order. They are stored
// CRLF-normalised, as smtpin hands them over.
var fixtureMessages = []string{
	"From: carol@example.net\r\nTo: alice@example.org\r\nSubject: one\r\n\r\nHello, Alice.\r\n",
	"Subject: dots\r\n\r\n.\r\n..\r\n.hidden\r\nline 4\r\nline 5\r\n",
	"Subject: only a header\r\n",
}

// env is a running server over a temporary spool.
type env struct {
	t       testing.TB
	store   *spool.Store
	srv     *Server
	ca      *testutil.CA
	addr    string // plaintext port (STLS)
	tlsAddr string // implicit TLS port
	logs    *logBuffer
	ready   *readyFlag
}

// envOptions change the environment of one test.
type envOptions struct {
	config    func(*Config)
	spool     func(*spool.Options)
	noTLS     bool
	notReady  bool // TLS configured, but no certificate yet
	noFixture bool
}

// readyFlag is a settable TLSReady.
type readyFlag struct {
	mu sync.Mutex
	v  bool
}

func (r *readyFlag) get() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.v }
func (r *readyFlag) set(v bool) {
	r.mu.Lock()
	r.v = v
	r.mu.Unlock()
}

// testConfig is DefaultConfig with loopback ports and fast logins.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Listen = []string{"127.0.0.1:0"}
	cfg.ListenTLS = []string{"127.0.0.1:0"}
	cfg.AuthDuration = units.DurationOf(5 * time.Millisecond)
	cfg.FailedLoginDelay = units.DurationOf(10 * time.Millisecond)
	cfg.FailedLoginDelayMax = units.DurationOf(40 * time.Millisecond)
	cfg.Hostname = tlsName
	return cfg
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	e := &env{t: t, logs: &logBuffer{}, ready: &readyFlag{v: !o.notReady}}
	opts := spool.DefaultOptions()
	opts.Path = filepath.Join(t.TempDir(), "spool.db")
	opts.HashParams = spool.HashParams{Time: 1, Memory: 64, Threads: 1}
	opts.Now = func() time.Time { return time.Unix(fixedTime, 0).UTC() }
	if o.spool != nil {
		o.spool(&opts)
	}
	store, err := spool.Open(opts)
	if err != nil {
		t.Fatalf("spool.Open: %v", err)
	}
	e.store = store
	ctx := context.Background()
	for _, a := range []string{alice, bob} {
		if err := store.AddAccount(ctx, a, password); err != nil && !errors.Is(err, spool.ErrAccountExists) {
			t.Fatalf("AddAccount: %v", err)
		}
	}
	if !o.noFixture {
		for _, m := range fixtureMessages {
			e.deliver(alice, []byte(m))
		}
	}
	cfg := testConfig()
	if o.config != nil {
		o.config(&cfg)
	}
	deps := Deps{Store: store, Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	e.ca = testutil.NewCA(t)
	if !o.noTLS {
		deps.TLS = e.ca.ServerConfig(t, tlsName, "127.0.0.1")
		deps.TLSReady = e.ready.get
	}
	srv, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.srv = srv
	var wg sync.WaitGroup
	serve := func(fn func(net.Listener) error) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(l); err != nil && !errors.Is(err, net.ErrClosed) {
				t.Errorf("serve: %v", err)
			}
		}()
		return l.Addr().String()
	}
	e.addr = serve(srv.Serve)
	if !o.noTLS {
		e.tlsAddr = serve(srv.ServeTLS)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		wg.Wait()
		store.Close()
		if t.Failed() {
			t.Logf("server log:\n%s", e.logs.String())
		}
	})
	return e
}

// deliver stores a message for an account.
func (e *env) deliver(account string, body []byte) { e.deliverT(e.t, account, body) }

func (e *env) deliverT(t testing.TB, account string, body []byte) {
	t.Helper()
	_, err := e.store.Deliver(context.Background(), spool.Envelope{MailFrom: "carol@example.net", RcptTo: []string{account}}, []string{account}, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
}

// messages returns the messages an account's maildrop holds now, waiting
// for a session that is ending to release its lock.
func (e *env) messages(account string) [][]byte { return e.messagesT(e.t, account) }

func (e *env) messagesT(t testing.TB, account string) [][]byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := e.store.OpenMaildrop(context.Background(), spool.Login{Account: account}, "127.0.0.1")
		if errors.Is(err, spool.ErrMaildropLocked) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatalf("OpenMaildrop(%s): %v", account, err)
		}
		var out [][]byte
		for i := range m.Messages() {
			rc, err := m.Open(i)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			b.ReadFrom(rc)
			rc.Close()
			out = append(out, b.Bytes())
		}
		m.Close()
		return out
	}
}

// logBuffer collects the server's log for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits until the log contains s.
func (e *env) waitLog(s string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs.String(), s) {
		if time.Now().After(deadline) {
			e.t.Fatalf("log never showed %q", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// client is a line-oriented test client.
type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func (e *env) dial() *client {
	e.t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	return newClient(e.t, c)
}

func (e *env) dialTLS() *client {
	e.t.Helper()
	c, err := tls.Dial("tcp", e.tlsAddr, e.ca.ClientConfig(tlsName))
	if err != nil {
		e.t.Fatal(err)
	}
	return newClient(e.t, c)
}

func newClient(t testing.TB, c net.Conn) *client {
	cl := &client{t: t, conn: c, r: bufio.NewReaderSize(c, 64<<10)}
	t.Cleanup(func() { c.Close() })
	return cl
}

func (c *client) send(format string, args ...any) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c.conn, format+"\r\n", args...); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads a line that must start with prefix.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, prefix) {
		c.t.Fatalf("got %q, want a line starting with %q", l, prefix)
	}
	return l
}

// cmd sends a command and expects a reply starting with prefix.
func (c *client) cmd(prefix, format string, args ...any) string {
	c.t.Helper()
	c.send(format, args...)
	return c.expect(prefix)
}

// body reads a dot-stuffed multi-line body and returns it un-stuffed,
// with its CRLFs, exactly as RFC 1939 §3 defines it.
func (c *client) body() []byte {
	c.t.Helper()
	var out []byte
	for {
		c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		l, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			out = append(out, l...)
			continue
		}
		if err != nil {
			c.t.Fatalf("read body: %v", err)
		}
		if string(l) == ".\r\n" {
			return out
		}
		if len(out) == 0 || out[len(out)-1] == '\n' {
			if l[0] == '.' {
				l = l[1:]
			}
		}
		out = append(out, l...)
	}
}

// login logs in with USER/PASS.
func (c *client) login(user, pass string) {
	c.t.Helper()
	c.cmd("+OK", "USER %s", user)
	c.cmd("+OK", "PASS %s", pass)
}

// expectClosed checks that the server closes the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := c.r.ReadString('\n')
	if err == nil {
		c.t.Fatalf("connection still open; got %q", l)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after 10s")
	}
}

// makeMessage returns a message of exactly size octets as the spool stores
// it (CRLF lines, ending in CRLF), with 8-bit and NUL octets, lines that
// start with "." and lines that are only ".": what dot-stuffing and
// byte-exactness must survive. The same seed gives the same message.
func makeMessage(size int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 42))
	out := make([]byte, 0, size+256)
	out = append(out, fmt.Sprintf("Subject: test message %d\r\nX-Size: %d\r\n\r\n", seed, size)...)
	for len(out) < size {
		switch rng.IntN(10) {
		case 0:
			out = append(out, ".\r\n"...)
		case 1:
			out = append(out, '.', '.')
		}
		n := rng.IntN(200)
		for range n {
			c := byte(rng.IntN(256))
			if c == '\r' || c == '\n' {
				c = '.'
			}
			out = append(out, c)
		}
		out = append(out, '\r', '\n')
	}
	out = out[:size-2]
	if out[len(out)-1] == '\r' {
		out[len(out)-1] = 'x'
	}
	return append(out, '\r', '\n')
}
