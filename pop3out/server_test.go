package pop3out

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/spool"
)

func TestImplicitTLSWithoutCertificate(t *testing.T) {
	e := newEnv(t, envOptions{notReady: true})
	// No certificate yet: the handshake fails cleanly (a TLS alert), and
	// the log says why.
	_, err := tls.Dial("tcp", e.tlsAddr, e.ca.ClientConfig(tlsName))
	if err == nil {
		t.Fatal("TLS handshake succeeded without a certificate")
	}
	e.waitLog("pop3 TLS refused: no certificate yet")
	// Once the certificate is there, the same port works.
	e.ready.set(true)
	c := e.dialTLS()
	c.expect("+OK ")
	c.login(alice, password)
	c.cmd("+OK Postie POP3 server signing off", "QUIT")
}

func TestTLSVersionsAndALPN(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct {
		name   string
		mod    func(*tls.Config)
		wantOK bool
	}{
		{"no ALPN", func(*tls.Config) {}, true},
		{"ALPN pop3", func(c *tls.Config) { c.NextProtos = []string{"pop3"} }, true},
		// ALPACA: a client speaking another protocol is refused at the
		// handshake (RFC 7301 §3.2 no_application_protocol).
		{"ALPN http/1.1 only", func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }, false},
		{"TLS 1.1", func(c *tls.Config) { c.MaxVersion = tls.VersionTLS11; c.MinVersion = tls.VersionTLS10 }, false},
		// A client without SNI still gets the certificate (docs/security.md, TLS).
		{"no SNI", func(c *tls.Config) { c.ServerName = ""; c.InsecureSkipVerify = true }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.ca.ClientConfig(tlsName)
			tc.mod(cfg)
			c, err := tls.Dial("tcp", e.tlsAddr, cfg)
			if (err == nil) != tc.wantOK {
				t.Fatalf("handshake error %v, want success %v", err, tc.wantOK)
			}
			if err == nil {
				newClient(t, c).expect("+OK ")
			}
		})
	}
}

func TestTLSHandshakeFailureAfterSTLSCloses(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dial()
	c.expect("+OK ")
	c.cmd("+OK begin TLS negotiation", "STLS")
	// Not a TLS ClientHello: the server must close, never go on in
	// plaintext (inbucket's mistake).
	c.send("USER alice@example.org")
	c.expectClosed()
	e.waitLog("TLS handshake")
}

func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) { c.IdleTimeout = units.DurationOf(200 * time.Millisecond) }})
	c := e.dial()
	c.expect("+OK ")
	c.login(alice, password)
	c.cmd("+OK message 1 deleted", "DELE 1")
	// RFC 1939 §3: on autologout, close without a response and without
	// entering UPDATE.
	c.expectClosed()
	if n := len(e.messages(alice)); n != 3 {
		t.Fatalf("after a timeout the maildrop has %d messages, want 3", n)
	}
	e.waitLog(`end=timeout`)
}

func TestLoginTimeout(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) { c.LoginTimeout = units.DurationOf(time.Second) }})
	c := e.dial()
	c.expect("+OK ")
	c.cmd("+OK send PASS", "USER %s", alice)
	c.expectClosed()
	e.waitLog(`end="login timeout"`)
}

// A client that stops reading in the middle of a large message is dropped
// after write_timeout, and its maildrop is released (docs/security.md,
// slow and idle clients).
func TestSlowReaderIsDropped(t *testing.T) {
	e := newEnv(t, envOptions{noFixture: true, config: func(c *Config) { c.WriteTimeout = units.DurationOf(300 * time.Millisecond) }})
	e.deliver(alice, makeMessage(16<<20, 1))
	c := e.dial()
	c.expect("+OK ")
	c.login(alice, password)
	c.send("RETR 1")
	// Read nothing more. The server's writes block, time out, and the
	// session ends without deleting.
	e.waitLog(`end="write failed"`)
	if n := len(e.messages(alice)); n != 1 {
		t.Fatalf("maildrop has %d messages, want 1", n)
	}
}

func TestShutdown(t *testing.T) {
	e := newEnv(t, envOptions{})
	idle := e.dial()
	idle.expect("+OK ")
	busy := e.dial()
	busy.expect("+OK ")
	busy.login(alice, password)
	busy.cmd("+OK message 1 deleted", "DELE 1")

	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- e.srv.Shutdown(ctx) }()

	// A session that has not logged in is closed at once; new
	// connections are refused.
	idle.expectClosed()
	if c, err := net.DialTimeout("tcp", e.addr, time.Second); err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 10)); err == nil {
			t.Errorf("a new connection was served after Shutdown (%d bytes)", n)
		}
		c.Close()
	}
	// The logged-in session goes on until its time is up...
	busy.cmd("+OK 2 73", "STAT")
	busy.cmd("+OK message 2 deleted", "DELE 2")
	// ...and when it is, it is closed without applying its deletions.
	cancel()
	busy.expectClosed()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v, want context.Canceled", err)
	}
	if n := len(e.messages(alice)); n != 3 {
		t.Fatalf("maildrop has %d messages after an aborted session, want 3", n)
	}
}

func TestShutdownLetsSessionsQuit(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dial()
	c.expect("+OK ")
	c.login(alice, password)
	c.cmd("+OK message 1 deleted", "DELE 1")
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(context.Background()) }()
	c.cmd("+OK Postie POP3 server signing off (1 message deleted)", "QUIT")
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := len(e.messages(alice)); n != 2 {
		t.Fatalf("maildrop has %d messages, want 2", n)
	}
}

// QUIT answers +OK only after the deletions are durable; when the spool
// fails, it answers [SYS/TEMP] and nothing is deleted.
func TestQuitWhenCommitFails(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dial()
	c.expect("+OK ")
	c.login(alice, password)
	c.cmd("+OK message 1 deleted", "DELE 1")
	path := e.store.Path()
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	c.cmd("-ERR [SYS/TEMP] could not delete the messages; nothing was deleted, try again later", "QUIT")
	c.expectClosed()
	e.waitLog("applying deletions failed")
	s, err := spool.Open(spool.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m, err := s.OpenMaildrop(context.Background(), spool.Login{Account: alice}, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if n := len(m.Messages()); n != 3 {
		t.Fatalf("%d messages left, want 3", n)
	}
}

var failedLogin = regexp.MustCompile(`level=WARN msg="pop3 login failed" conn=\d+ ip=(\S+) proto=pop3 user=(\S+) reason=`)

func TestFailedLogins(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) { c.MaxAuthFailures = 10 }})
	c := e.dial()
	c.expect("+OK ")
	// An unknown user and a wrong password get the same answer...
	c.cmd("+OK send PASS", "USER nobody@example.org")
	unknown := c.cmd("-ERR", "PASS %s", password)
	c.cmd("+OK send PASS", "USER %s", alice)
	wrong := c.cmd("-ERR", "PASS not the password")
	if unknown != wrong {
		t.Errorf("unknown user: %q, wrong password: %q", unknown, wrong)
	}
	// ...and count against the client's network and the account named,
	// whether or not it exists.
	p := e.srv.penalty
	if got := p.Failures("net:127.0.0.1/32"); got != 2 {
		t.Errorf("network failures = %d, want 2", got)
	}
	if p.Failures("user:nobody@example.org") != 1 || p.Failures("user:"+alice) != 1 {
		t.Errorf("account failures: nobody %d, alice %d; want 1 and 1", p.Failures("user:nobody@example.org"), p.Failures("user:"+alice))
	}
	// Each failure is logged at Warn with the client's address, in the
	// format a fail2ban filter matches, and without the password.
	logs := e.logs.String()
	m := failedLogin.FindAllStringSubmatch(logs, -1)
	if len(m) != 2 || m[0][1] != "127.0.0.1" || m[0][2] != "nobody@example.org" || m[1][2] != alice {
		t.Errorf("failed-login lines %q in log:\n%s", m, logs)
	}
	for _, secret := range []string{password, "not the password"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains a password %q", secret)
		}
	}
	// A success forgives the network and the account.
	c.login(alice, password)
	if p.Failures("net:127.0.0.1/32") != 0 || p.Failures("user:"+alice) != 0 {
		t.Errorf("failures not forgiven after a successful login")
	}
}

func TestConnectionLimit(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) { c.MaxConnectionsPerIP = 2 }})
	a, b := e.dial(), e.dial()
	a.expect("+OK ")
	b.expect("+OK ")
	c := e.dial()
	c.expect("-ERR [SYS/TEMP] too many connections")
	c.expectClosed()
	a.cmd("+OK", "QUIT")
	a.expectClosed()
	// The slot is free again once the first session is gone.
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := e.dial()
		if l := d.line(); strings.HasPrefix(l, "+OK ") {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("still refused: %q", l)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReload(t *testing.T) {
	e := newEnv(t, envOptions{})
	old := e.dial()
	old.expect("+OK ")
	cfg := testConfig()
	cfg.PlaintextLoginNetworks = nil
	if _, err := e.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	// New sessions use the new config; the one already open keeps its own.
	c := e.dial()
	c.expect("+OK ")
	c.cmd("-ERR [AUTH] plaintext login is not allowed", "USER %s", alice)
	old.login(alice, password)

	cfg.MaxConnections = 5
	cfg.FailedLoginDelay = units.DurationOf(30 * time.Millisecond)
	rep, err := e.srv.Reload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Changed, []string{"pop3.max_connections", "pop3.failed_login_delay"}) || !slices.Equal(rep.Restart, []string{"pop3.max_connections"}) {
		t.Errorf("report: %+v, want the delay applied and max_connections needing a restart", rep)
	}
	cfg.IdleTimeout = units.DurationOf(-1)
	if _, err := e.srv.Reload(cfg); err == nil || !strings.Contains(err.Error(), "pop3.idle_timeout") {
		t.Fatalf("Reload of a bad config: %v", err)
	}
}

func TestNoTLS(t *testing.T) {
	e := newEnv(t, envOptions{noTLS: true, config: func(c *Config) { c.PlaintextLoginNetworks = []string{"192.0.2.0/24"} }})
	c := e.dial()
	c.expect("+OK ")
	c.cmd("-ERR [SYS/PERM] TLS is not available on this server", "STLS")
	c.cmd("-ERR [AUTH] login needs TLS, and this server has none", "USER %s", alice)
	if err := e.srv.ServeTLS(nil); err == nil {
		t.Error("ServeTLS without TLS succeeded")
	}
}

// UIDLs are the spool's: the same after a restart of server and spool.
func TestUIDLStableAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	uidls := func(first bool) []byte {
		e := newEnv(t, envOptions{noFixture: !first, spool: func(o *spool.Options) { o.Path = path }})
		if !first {
			e.deliver(alice, []byte(lateMessage))
		}
		c := e.dial()
		c.expect("+OK ")
		c.login(alice, password)
		c.cmd("+OK", "UIDL")
		out := c.body()
		c.cmd("+OK", "QUIT")
		e.srv.Shutdown(context.Background())
		if err := e.store.Close(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := uidls(true)
	after := uidls(false)
	want := string(before) + "4 4.1767323045\r\n"
	if string(after) != want {
		t.Fatalf("UIDL after restart:\n%s\nwant:\n%s", after, want)
	}
}

// A device password (issue 7) opens that device's own view; the session's
// one log line names the user, the device, TLS and what was transferred.
func TestDeviceLoginAndSessionLog(t *testing.T) {
	e := newEnv(t, envOptions{})
	devPass, err := e.store.AddDevice(context.Background(), alice, "phone", true)
	if err != nil {
		t.Fatal(err)
	}
	// The account password logs in once, so it counts as an active
	// device that still wants what the phone deletes.
	c := e.dialTLS()
	c.expect("+OK ")
	c.login(alice, password)
	c.cmd("+OK", "QUIT")
	c.expectClosed()

	c = e.dialTLS()
	c.expect("+OK ")
	c.login(alice, devPass)
	c.cmd("+OK 79 octets", "RETR 1")
	if got := string(c.body()); got != fixtureMessages[0] {
		t.Fatalf("RETR 1 = %q", got)
	}
	c.cmd("+OK", "DELE 1")
	c.cmd("+OK Postie POP3 server signing off (1 message deleted)", "QUIT")
	e.waitLog(`device=phone tls=true retrieved=`)
	line := regexp.MustCompile(`msg="pop3 session" conn=\d+ ip=127\.0\.0\.1 proto=pop3 user=alice@example\.org device=phone tls=true retrieved=1 deleted=1 bytes=79 commands=5 duration=\S+ end="Postie POP3 server signing off \(1 message deleted\)"`)
	if !line.MatchString(e.logs.String()) {
		t.Fatalf("no session line like %s in:\n%s", line, e.logs.String())
	}
	// The account password still sees the message the phone deleted.
	c = e.dialTLS()
	c.expect("+OK ")
	c.login(alice, password)
	c.cmd("+OK 3 152", "STAT")
}

// Revoking a device ends its open session at once, however the client
// keeps it alive, and leaves the other devices' sessions alone; deleting
// the account ends every session of it.
func TestRevocationEndsTheSession(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	phonePass, err := e.store.AddDevice(ctx, alice, "phone", true)
	if err != nil {
		t.Fatal(err)
	}
	laptopPass, err := e.store.AddDevice(ctx, alice, "laptop", true)
	if err != nil {
		t.Fatal(err)
	}
	phone, laptop := e.dialTLS(), e.dialTLS()
	phone.expect("+OK ")
	phone.login(alice, phonePass)
	laptop.expect("+OK ")
	laptop.login(alice, laptopPass)
	phone.cmd("+OK", "NOOP")

	if err := e.store.DeleteDevice(ctx, alice, "phone"); err != nil {
		t.Fatalf("revoking the phone while it is logged in: %v", err)
	}
	phone.expectClosed()
	e.waitLog(`end="device revoked or account deleted"`)
	if !regexp.MustCompile(`device=phone .* end="device revoked or account deleted"`).MatchString(e.logs.String()) {
		t.Fatalf("the phone's session line does not say why it ended:\n%s", e.logs.String())
	}
	laptop.cmd("+OK 3 152", "STAT")

	if err := e.store.DeleteAccount(ctx, alice); err != nil {
		t.Fatalf("deleting the account while the laptop is logged in: %v", err)
	}
	laptop.expectClosed()
}

// A login refused with [IN-USE] does not start LOGIN-DELAY: the client's
// retry, once the maildrop is free, logs in instead of being told to wait
// an hour for a login that never happened.
func TestLoginDelayCountsOnlyLogins(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) { c.LoginDelay = units.DurationOf(time.Hour) }})
	held, err := e.store.OpenMaildrop(context.Background(), spool.Login{Account: alice}, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	c := e.dial()
	c.expect("+OK ")
	c.cmd("+OK", "USER %s", alice)
	c.cmd("-ERR [IN-USE] ", "PASS %s", password)
	held.Close()
	c.cmd("+OK", "USER %s", alice)
	c.cmd("+OK maildrop has 3 messages", "PASS %s", password)
	c.cmd("+OK", "QUIT")
	d := e.dial()
	d.expect("+OK ")
	d.cmd("+OK", "USER %s", alice)
	d.cmd("-ERR [LOGIN-DELAY] ", "PASS %s", password)
}

// Store failures are [SYS/TEMP] (RFC 3206), never [AUTH]: a client must
// not take a server fault for a wrong password.
func TestStoreFailures(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := e.dial()
	c.expect("+OK ")
	c.login(alice, password)
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	c.cmd("-ERR [SYS/TEMP] the mail store is not available; try again later", "RETR 1")
	c.cmd("-ERR [SYS/TEMP] the mail store is not available; try again later", "TOP 1 0")
	c.cmd("+OK 3 152", "STAT") // the snapshot is still there

	d := e.dial()
	d.expect("+OK ")
	d.cmd("+OK send PASS", "USER %s", alice)
	d.cmd("-ERR [SYS/TEMP] the mail store is not available; try again later", "PASS %s", password)
	e.waitLog("pop3 login: the spool failed")
}

// After a failure the next login from the same network waits out the
// penalty before its password is even checked. With an hour's penalty the
// answer cannot come within the half second this test waits; Shutdown
// then ends the wait.
func TestPenaltyDelaysNextLogin(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) {
		c.FailedLoginDelay = units.DurationOf(time.Hour)
		c.FailedLoginDelayMax = units.DurationOf(time.Hour)
	}})
	c := e.dial()
	c.expect("+OK ")
	c.cmd("+OK send PASS", "USER %s", alice)
	c.cmd("-ERR [AUTH]", "PASS wrong")
	c.cmd("+OK send PASS", "USER %s", alice)
	c.send("PASS %s", password) // the right one, but it has to wait
	c.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if l, err := c.r.ReadString('\n'); err == nil {
		t.Fatalf("answered %q at once despite the penalty", l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e.srv.Shutdown(ctx)
	c.expectClosed()
}

// TestStressLetsClientsIn: silent connections to the TLS port from many
// addresses hold every slot. A connection that never starts its TLS
// handshake is dropped after handshake_timeout at all times; under stress
// (stress_threshold of max_connections) the idle ones go after
// stress_timeout, so a mail app from a new address logs in; a logged-in
// session is not cut.
func TestStressLetsClientsIn(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) {
		c.MaxConnections = 12
		c.MaxConnectionsPerIP = 4
		c.HandshakeTimeout = units.DurationOf(time.Minute)
		c.StressThreshold = 0.75
		c.StressTimeout = units.DurationOf(time.Second)
	}})
	// A mail app logs in before the flood and stays.
	app := e.dialTLS()
	app.expect("+OK ")
	app.login(alice, password)

	dial := func(src string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		return d.Dial("tcp", e.tlsAddr)
	}
	for i := range 11 {
		c, err := dial(fmt.Sprintf("127.0.0.%d", 2+i/4))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	e.waitLog("stress: connections near the limit")

	start := time.Now()
	logged := false
	for !logged && time.Since(start) < 15*time.Second {
		raw, err := dial("127.0.0.99")
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, e.ca.ClientConfig(tlsName))
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if tc.Handshake() != nil {
			raw.Close()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c := newClient(t, tc)
		c.expect("+OK ")
		c.login(bob, password)
		c.cmd("+OK", "QUIT")
		logged = true
	}
	if !logged {
		t.Fatal("a new client could not log in within 15 s of the flood")
	}
	t.Logf("a new client logged in %v after the slots filled", time.Since(start).Round(10*time.Millisecond))
	// The session that was logged in before goes on.
	app.cmd("+OK", "STAT")
	app.cmd("+OK", "QUIT")
}

// TestHandshakeTimeout: a client that connects to the TLS port and says
// nothing is dropped after handshake_timeout, not after login_timeout.
func TestHandshakeTimeout(t *testing.T) {
	e := newEnv(t, envOptions{config: func(c *Config) {
		c.HandshakeTimeout = units.DurationOf(300 * time.Millisecond)
		c.StressThreshold = 0
	}})
	c, err := net.Dial("tcp", e.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the server sent something to a client that never started TLS")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server held a silent connection for 10 s")
	}
	t.Logf("dropped after %v", time.Since(start).Round(10*time.Millisecond))
}
