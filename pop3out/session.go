package pop3out

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/postie/postie/internal/connlimit"
	"github.com/postie/postie/internal/netserve"
	"github.com/postie/postie/spool"

	"github.com/postie/postie/internal/plural"
)

// state is where a session is in RFC 1939's state machine.
type state int

const (
	stateAuthorization state = iota // before a successful login (RFC 1939 §4)
	stateTransaction                // the maildrop is locked and open (§5)
	stateUpdate                     // QUIT is applying deletions (§6)
)

func (st state) String() string {
	switch st {
	case stateAuthorization:
		return "AUTHORIZATION"
	case stateTransaction:
		return "TRANSACTION"
	case stateUpdate:
		return "UPDATE"
	}
	return fmt.Sprintf("state(%d)", int(st))
}

// writeBufferSize is the reply buffer. Large message runs bypass it, so it
// mostly batches the replies to pipelined commands and small messages.
const writeBufferSize = 64 << 10

// session is one client connection.
type session struct {
	srv *Server
	st  *settings // the config the session started with
	id  uint64
	log *slog.Logger

	// The connection.
	raw             net.Conn      // the TCP connection (as the listener gave it)
	conn            net.Conn      // raw, or the TLS connection over it
	rd              *bufio.Reader // command lines; at most MaxLineLength read ahead
	bw              *bufio.Writer // replies
	ip              netip.Addr    // the client's address
	netKey          string        // the client's network, for penalties
	implicitTLS     bool          // TLS from the first byte (port 995)
	tls             bool          // TLS is up (implicit, or after STLS)
	start           time.Time
	loginDeadline   time.Time // LoginTimeout after connect
	sessionDeadline time.Time // SessionTimeout after connect

	// The protocol.
	state   state
	user    string          // USER's argument, waiting for PASS
	login   spool.Login     // who logged in
	drop    *spool.Maildrop // the locked maildrop, in TRANSACTION
	msgs    []spool.Message // the snapshot; message n is msgs[n-1]
	deleted []bool          // DELE marks, applied at QUIT (RFC 1939 §6)

	// Counters, for limits and the session's log line.
	errors       int   // refused commands
	authFailures int   // failed logins
	commands     int   // commands read
	retrieved    int   // messages sent whole by RETR
	ndeleted     int   // messages deleted at QUIT
	sent         int64 // message octets sent by RETR and TOP
	end          string

	// Shutdown: idle is set while the session waits for a command in the
	// AUTHORIZATION state, when Shutdown may close it at once.
	mu          sync.Mutex
	idle        bool
	handshaking bool // in the TLS handshake before login
	closed      bool
	revoked     bool          // closed because the maildrop was taken away
	done        chan struct{} // closed when the session ends
}

func newSession(srv *Server, c net.Conn, implicitTLS bool) *session {
	st := srv.settings.Load()
	now := time.Now()
	s := &session{
		done:            make(chan struct{}),
		srv:             srv,
		st:              st,
		id:              srv.nextID.Add(1),
		raw:             c,
		conn:            c,
		ip:              netserve.RemoteIP(c),
		netKey:          "net:" + connlimit.ClientKey(c.RemoteAddr()).String(),
		implicitTLS:     implicitTLS,
		start:           now,
		loginDeadline:   now.Add(st.cfg.LoginTimeout.D()),
		sessionDeadline: now.Add(st.cfg.SessionTimeout.D()),
	}
	s.log = srv.log.With("conn", s.id, "ip", s.ip.String(), "proto", "pop3")
	s.rd = bufio.NewReaderSize(sessionIO{s}, int(st.cfg.MaxLineLength.Bytes()))
	s.bw = bufio.NewWriterSize(sessionIO{s}, writeBufferSize)
	return s
}

// sessionIO reads and writes the session's current connection, setting a
// fresh deadline for every call (never one deadline for the session):
// IdleTimeout for reads (LoginTimeout's end before login), WriteTimeout for
// writes, both capped by the session's end.
type sessionIO struct{ s *session }

func (sio sessionIO) Read(p []byte) (int, error) {
	s := sio.s
	now := time.Now()
	d := now.Add(s.st.cfg.IdleTimeout.D())
	if s.state == stateAuthorization {
		if s.loginDeadline.Before(d) {
			d = s.loginDeadline
		}
		if st := now.Add(s.st.cfg.StressTimeout.D()); s.srv.base.Stressed() && st.Before(d) {
			// Under stress, a client that has not logged in gets little time.
			d = st
		}
	}
	if s.sessionDeadline.Before(d) {
		d = s.sessionDeadline
	}
	if err := s.conn.SetReadDeadline(d); err != nil {
		return 0, err
	}
	return s.conn.Read(p)
}

func (sio sessionIO) Write(p []byte) (int, error) {
	s := sio.s
	d := time.Now().Add(s.st.cfg.WriteTimeout.D())
	if s.sessionDeadline.Before(d) {
		d = s.sessionDeadline
	}
	if err := s.conn.SetWriteDeadline(d); err != nil {
		return 0, err
	}
	return s.conn.Write(p)
}

// errShuttingDown ends a session that has not logged in when the server
// shuts down.
var errShuttingDown = errors.New("pop3: server shutting down")

// errLineTooLong means a command line did not fit MaxLineLength.
var errLineTooLong = errors.New("pop3: line too long")

// run serves the session until it ends.
func (s *session) run() {
	defer s.finish()
	defer func() {
		if p := recover(); p != nil {
			s.end = "internal error"
			s.log.Error("pop3 session panicked", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	if s.implicitTLS {
		if err := s.handshake(); err != nil {
			s.end = "TLS handshake failed"
			s.log.Info("pop3 TLS handshake failed", "err", err)
			return
		}
	}
	host := s.st.cfg.Hostname
	if host == "" {
		host = "Postie"
	}
	// RFC 1939 §4: the greeting. No APOP timestamp: APOP is not offered.
	if err := s.write(ok("%s POP3 server ready", host)); err != nil {
		s.end = "write failed"
		return
	}
	for {
		// Replies to pipelined commands (RFC 2449 §6.6) wait in the buffer
		// until the client has no more commands in flight.
		if s.rd.Buffered() == 0 {
			if err := s.bw.Flush(); err != nil {
				s.end = "write failed"
				return
			}
		}
		line, err := s.readCommand()
		if err != nil {
			s.readFailed(err)
			return
		}
		r := s.dispatch(line)
		if err := s.write(r); err != nil {
			if s.end == "" {
				s.end = "write failed"
				s.log.Info("pop3 write failed", "err", err)
			}
			return
		}
		if r.after != nil {
			if err := s.bw.Flush(); err != nil {
				s.end = "write failed"
				return
			}
			if err := r.after(); err != nil {
				s.end = err.Error()
				s.log.Info("pop3 session ends", "reason", err)
				return
			}
		}
		if r.close {
			s.bw.Flush()
			if s.end == "" {
				s.end = r.text
			}
			return
		}
	}
}

// readCommand reads a command line. In the AUTHORIZATION state the session
// is marked idle meanwhile, so Shutdown may close it.
func (s *session) readCommand() (string, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return "", net.ErrClosed
	}
	s.idle = s.state == stateAuthorization && s.rd.Buffered() == 0
	s.mu.Unlock()
	// Checked after idle is set: a Shutdown that began before this point
	// is seen here, and one that begins after it finds the session idle
	// and closes it.
	if s.state == stateAuthorization && s.srv.shuttingDown() {
		// Shutdown lets sessions that hold a maildrop finish; no new
		// ones start.
		return "", errShuttingDown
	}
	line, err := s.readLine()
	s.mu.Lock()
	s.idle = false
	s.mu.Unlock()
	return line, err
}

// readLine reads one line of at most MaxLineLength octets, without its
// CRLF (a bare LF ends a line too).
func (s *session) readLine() (string, error) {
	b, err := s.rd.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	b = b[:len(b)-1]
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return string(b), nil
}

// readFailed ends the session after a failed read, saying why where that
// helps the client.
func (s *session) readFailed(err error) {
	switch {
	case errors.Is(err, errLineTooLong):
		s.end = "line too long"
		s.write(fail("", "line too long (at most %s); closing", plural.Count(s.st.cfg.MaxLineLength.Bytes(), "octet")))
		s.bw.Flush()
	case errors.Is(err, os.ErrDeadlineExceeded):
		// RFC 1939 §3: on autologout the server closes the connection
		// without a response and without entering UPDATE.
		s.end = "timeout"
		if s.state == stateAuthorization && !time.Now().Before(s.loginDeadline) {
			s.end = "login timeout"
		} else if !time.Now().Before(s.sessionDeadline) {
			s.end = "session timeout"
		}
	case errors.Is(err, errShuttingDown):
		s.end = "server shutdown"
	case errors.Is(err, io.EOF):
		s.end = "client closed the connection"
	default:
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			s.end = "server shutdown" // or revoked: finish says so
		} else {
			s.end = "read failed"
		}
	}
}

// handshake runs the TLS handshake of the implicit-TLS port, or of STLS,
// within the login deadline.
func (s *session) handshake() error {
	cfg := s.srv.tls
	if !s.srv.tlsReady() {
		// No certificate yet: fail the handshake with a TLS alert rather
		// than a bare reset, and say so in the log.
		cfg = s.srv.notReady
		s.log.Warn("pop3 TLS refused: no certificate yet")
	}
	now := time.Now()
	d := now.Add(s.st.cfg.HandshakeTimeout.D())
	if s.loginDeadline.Before(d) {
		d = s.loginDeadline
	}
	if st := now.Add(s.st.cfg.StressTimeout.D()); s.srv.base.Stressed() && st.Before(d) {
		d = st
	}
	if err := s.raw.SetDeadline(d); err != nil {
		return err
	}
	s.mu.Lock()
	s.handshaking = true
	s.mu.Unlock()
	tc := tls.Server(s.raw, cfg)
	err := tc.HandshakeContext(s.srv.ctx)
	s.mu.Lock()
	s.handshaking = false
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	s.conn = tc
	s.tls = true
	return nil
}

// Stress cuts the wait of a session that has not logged in and is waiting
// for the client (a command, or its side of the TLS handshake) to the
// stress timeout from now (netserve.Stressable).
func (s *session) Stress() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if (s.idle || s.handshaking) && !s.closed {
		s.raw.SetReadDeadline(time.Now().Add(s.st.cfg.StressTimeout.D()))
	}
}

// Drain closes the connection of a session that is waiting for a command
// before login (netserve.Session, for Shutdown); a session holding a
// maildrop may finish, and one in the middle of a command ends before its
// next one.
func (s *session) Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idle && !s.closed {
		s.closed = true
		s.raw.Close()
	}
}

// watchRevocation ends the session at once when an admin change takes its
// maildrop away (postie device del, postie user del): a stolen phone must
// not keep reading mail, and its QUIT would change nothing anyway.
func (s *session) watchRevocation(drop *spool.Maildrop) {
	select {
	case <-drop.Revoked():
	case <-s.done:
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed, s.revoked = true, true
		s.raw.Close()
	}
}

// Abort closes the connection whatever the session is doing (for Shutdown
// when its time is up). The maildrop is released without deletions.
func (s *session) Abort() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.raw.Close()
	}
}

// finish releases what the session holds and logs its one line.
func (s *session) finish() {
	close(s.done)
	if s.drop != nil {
		// RFC 1939 §6: without QUIT there is no UPDATE; nothing is deleted.
		s.drop.Close()
		s.drop = nil
	}
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	if s.tls {
		// Send close_notify, within a short time.
		s.raw.SetWriteDeadline(time.Now().Add(time.Second))
	}
	s.conn.Close()
	s.mu.Lock()
	if s.revoked {
		s.end = "device revoked or account deleted"
	}
	s.mu.Unlock()
	if s.end == "" {
		s.end = "closed"
	}
	attrs := make([]any, 0, 20)
	attrs = append(attrs, "user", s.login.Account)
	if s.login.DeviceName != "" {
		attrs = append(attrs, "device", s.login.DeviceName)
	}
	attrs = append(attrs, "tls", s.tls, "retrieved", s.retrieved, "deleted", s.ndeleted,
		"bytes", s.sent, "commands", s.commands, "duration", time.Since(s.start).Round(time.Millisecond), "end", s.end)
	s.log.Info("pop3 session", attrs...)
	s.srv.deps.Metrics.POP3Session(s.retrieved, s.ndeleted, s.sent)
}
