package smtpin

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// conn wraps every accepted connection before go-smtp sees it, and keeps
// the limits go-smtp leaves to its users (its Server has no session time,
// data rate or command count): the time of the whole session, a minimum
// data rate during DATA, the number of commands, and a clean "421 ...
// closing connection" when one of them is reached. After STARTTLS
// go-smtp's *tls.Conn sits on top of it, so it still sees every read,
// write and deadline, encrypted.
//
// The session time is a timer that ends the connection. STARTTLS is seen
// as RFC 3207 has it: a 220 reply after the greeting. One fact about
// go-smtp remains, listed with its test in docs/go-smtp.md: it sets a read
// deadline before reading each command line (its readLine, with
// ReadTimeout set), which is how commands are counted and how a session
// waiting for a command is told apart from one inside a message.
type conn struct {
	net.Conn // the accepted connection; closing it releases its connlimit slot

	log          *slog.Logger
	gen          *generation // the configuration the connection was accepted under
	sessionTimer *time.Timer // ends the session after SessionTimeout
	stressed     func() bool // whether the server is under stress now
	onClose      func(*conn)
	closeOnce    sync.Once

	// Counters of the session's refusals, touched by the session (and by
	// a BDAT transfer's goroutine).
	errors  atomic.Int32
	unknown atomic.Int32

	// readFailed is set once a read from the peer failed (the peer
	// closed, reset, or a deadline passed). Nothing more can arrive on the
	// connection then, so a message still being received is incomplete,
	// whatever the reader above says: go-smtp copies a BDAT chunk with
	// io.Copy over an io.LimitReader, which takes an early EOF for the end
	// of the chunk.
	readFailed atomic.Bool

	mu             sync.Mutex
	commands       int             // command lines since the last accepted message
	waitingCommand bool            // waiting for a command that has not started to arrive
	dataMode       bool            // inside DATA: reads get the data-rate deadline
	inTx           bool            // a transaction is open (MAIL accepted): stress does not shorten its waits
	deadline       time.Time       // the read deadline set for the current command
	bdat           bool            // inside a BDAT transaction: data mode lasts to its end
	dataBudget     time.Duration   // how long the next DATA read may wait
	dataEnd        time.Time       // DataTimeout after DATA began
	readCause      *smtp.SMTPError // the reply if the current read deadline passes
	top            net.Conn        // where replies go: c, the *tls.Conn after STARTTLS, nil when not known
	greeted        bool            // the 220 greeting was written
	tlsPending     bool            // STARTTLS was accepted: every later write is a TLS record
	draining       bool            // the server is shutting down: end at the next command
	forced         bool            // the server's shutdown grace is over: end now
	ended          bool
	endReason      string

	// out holds replies not yet sent. Replies are sent when the session
	// is about to wait for input, so that the replies to a pipelined group
	// of commands go out in one write (RFC 2920 §3.2 allows this; a
	// server must not wait for input with replies held back, and does
	// not). wmu guards it and serializes writes; it is apart from mu so
	// that a slow peer blocking a write never blocks Shutdown.
	wmu sync.Mutex
	out []byte
}

// outMax bounds the replies held back; a larger write goes out at once.
const outMax = 4 << 10

func newConn(raw net.Conn, g *generation, log *slog.Logger, onClose func(*conn), stressed func() bool) *conn {
	c := &conn{
		Conn:      raw,
		log:       log,
		gen:       g,
		onClose:   onClose,
		stressed:  stressed,
		readCause: endIdle,
	}
	c.top = c
	c.sessionTimer = time.AfterFunc(g.cfg.SessionTimeout.D(), func() { c.end(endSession, endSession.Message) })
	return c
}

// connOf finds the conn under a go-smtp connection, also after STARTTLS.
func connOf(sc *smtp.Conn) *conn {
	nc := sc.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}

// delivered resets the command count after an accepted message: the limit
// is on commands that deliver nothing (junk loops, probes), not on how much
// mail an MTA sends over one connection.
func (c *conn) delivered() {
	c.mu.Lock()
	c.commands = 0
	c.mu.Unlock()
}

// SetReadDeadline is called by go-smtp before it reads each command line
// (directly, or through tls.Conn). It counts the command, ends the session
// when a limit is reached or the server is shutting down, and caps the
// deadline at the end of the session.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	// A BDAT transaction stays in data mode across its command lines: go-smtp
	// copies each chunk under the deadline of the BDAT line before it.
	c.dataMode = c.bdat
	if c.ended {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.commands++
	var why *smtp.SMTPError
	reason := ""
	switch {
	case c.draining || c.forced:
		why, reason = errShuttingDown, "shutdown"
	case c.commands > c.gen.cfg.MaxCommands:
		why, reason = endCommands, "too many commands"
	}
	if why != nil {
		c.mu.Unlock()
		c.end(why, reason)
		return net.ErrClosed
	}
	c.readCause = endIdle
	c.waitingCommand = true
	if !c.inTx && c.stressed() {
		// Under stress a session that has not started a transaction
		// waits for its next command at most the stress timeout.
		if st := time.Now().Add(c.gen.cfg.StressTimeout.D()); t.IsZero() || st.Before(t) {
			t = st
		}
	}
	c.deadline = t
	err := c.Conn.SetReadDeadline(t)
	c.mu.Unlock()
	return err
}

// Stress shortens the wait of a session that is waiting for a command
// before MAIL to the stress timeout from now (netserve.Stressable): the
// server has just come under stress.
func (c *conn) Stress() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waitingCommand || c.dataMode || c.inTx || c.ended {
		return
	}
	if st := time.Now().Add(c.gen.cfg.StressTimeout.D()); c.deadline.IsZero() || st.Before(c.deadline) {
		c.deadline = st
		c.Conn.SetReadDeadline(st)
	}
}

// setTransaction records whether a transaction is open, so that stress
// spares it.
func (c *conn) setTransaction(open bool) {
	c.mu.Lock()
	c.inTx = open
	c.mu.Unlock()
}

// beginBDAT puts a BDAT transaction (RFC 3030) under the DATA deadlines
// from its first chunk to the end of the message, chunks and the BDAT
// lines between them alike, so that a large chunk is held to the minimum
// data rate and the data timeout rather than to one read timeout.
func (c *conn) beginBDAT() {
	c.beginData()
	c.mu.Lock()
	c.bdat = true
	c.mu.Unlock()
}

// endBDAT ends what beginBDAT started; the next command line gets the
// command deadlines again.
func (c *conn) endBDAT() {
	c.mu.Lock()
	c.bdat = false
	c.mu.Unlock()
}

// beginData switches reads to the DATA deadlines: each read may wait at
// most the data budget, which starts at ReadTimeout, shrinks by the time
// spent waiting and grows by 1/MinDataRate seconds per byte received, never
// beyond ReadTimeout (the Postfix smtpd_min_data_rate rule); and the whole
// transfer ends DataTimeout after DATA. It lasts until the next command.
func (c *conn) beginData() {
	c.mu.Lock()
	c.dataMode = true
	c.waitingCommand = false
	c.dataBudget = c.gen.cfg.ReadTimeout.D()
	c.dataEnd = time.Now().Add(c.gen.cfg.DataTimeout.D())
	c.mu.Unlock()
}

// Read reads from the connection under the deadlines of the session. When
// a deadline passes, it ends the session with the reply for that limit and
// returns net.ErrClosed, so that go-smtp neither answers with its own
// text nor reads a half-sent message as commands (go-smtp issue #196).
func (c *conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		c.readFailed.Store(true)
		return 0, net.ErrClosed
	}
	if c.forced {
		c.mu.Unlock()
		c.readFailed.Store(true)
		c.end(errShuttingDown, "shutdown")
		return 0, net.ErrClosed
	}
	c.mu.Unlock()
	if err := c.flush(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	data := c.dataMode
	var start time.Time
	if data {
		start = time.Now()
		dl := start.Add(c.dataBudget)
		if c.dataEnd.Before(dl) {
			dl = c.dataEnd
		}
		c.readCause = endDataSlow
		c.Conn.SetReadDeadline(dl)
	}
	c.mu.Unlock()

	n, err := c.Conn.Read(p)
	if err != nil {
		c.readFailed.Store(true)
	}

	c.mu.Lock()
	if n > 0 {
		c.waitingCommand = false
	}
	if data {
		cfg := &c.gen.cfg
		b := c.dataBudget - time.Since(start) + time.Duration(n)*time.Second/time.Duration(cfg.MinDataRate)
		c.dataBudget = min(b, cfg.ReadTimeout.D())
	}
	cause := c.readCause
	if c.draining || c.forced {
		cause = errShuttingDown
	}
	c.mu.Unlock()
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		c.end(cause, cause.Message)
		return n, net.ErrClosed
	}
	return n, err
}

// Write writes to the connection. It notices go-smtp accepting STARTTLS,
// after which the replies go through a *tls.Conn this conn does not know
// until the next session; and it ends the session when go-smtp, after a
// failed TLS handshake, would carry on in plaintext (it answers 550 and
// goes on reading commands; a peer that asked for TLS and did not get it
// is not talked to in the clear).
func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.tlsPending && len(p) > 0 && p[0] >= '0' && p[0] <= '9' {
		// A TLS record starts with its content type (20 to 24), never
		// with a digit: this is a plaintext reply after the handshake
		// failed.
		c.mu.Unlock()
		c.end(nil, "TLS handshake failed")
		return 0, net.ErrClosed
	}
	if !c.tlsPending && bytes.HasPrefix(p, []byte("220")) {
		// 220 is the greeting, and after it only the reply that accepts
		// STARTTLS (RFC 3207 §4): from then on the peer expects TLS.
		if c.greeted {
			c.tlsPending, c.top = true, nil
		}
		c.greeted = true
	}
	c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.out)+len(p) <= outMax {
		c.out = append(c.out, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// flush sends the replies held back.
func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

// flushLocked is flush for callers that hold c.wmu.
func (c *conn) flushLocked() error {
	if len(c.out) == 0 {
		return nil
	}
	c.Conn.SetWriteDeadline(time.Now().Add(c.gen.cfg.WriteTimeout.D()))
	_, err := c.Conn.Write(c.out)
	c.out = c.out[:0]
	return err
}

// Close closes the connection; go-smtp calls it when the session is over.
func (c *conn) Close() error {
	c.flush()
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
	c.sessionTimer.Stop()
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.onClose(c) })
	return err
}

// setTop records where replies go for the current go-smtp session.
func (c *conn) setTop(t net.Conn) {
	c.mu.Lock()
	c.top = t
	c.mu.Unlock()
}

// end closes the connection after sending why (if not nil, and if the
// connection is still known to be writable) as the last reply. It may be
// called from any goroutine and more than once; the first call wins.
func (c *conn) end(why *smtp.SMTPError, reason string) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	c.endReason = reason
	top := c.top
	c.mu.Unlock()
	if why != nil && top != nil {
		// Through TLS, or straight into the held-back replies: either way
		// it lands in c.out, after the replies already there.
		line := closing(c.gen.cfg.Hostname, why)
		if top == net.Conn(c) {
			c.wmu.Lock()
			c.out = append(c.out, line...)
			c.wmu.Unlock()
		} else {
			io.WriteString(top, line)
		}
	}
	c.flush()
	c.Conn.Close()
}

// isEnded reports whether end has run, and why.
func (c *conn) isEnded() (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended && c.endReason != "", c.endReason
}

// Drain asks the session to end at its next command (netserve.Session). A
// session that is waiting for a command ends now, with its read deadline
// moved to now.
func (c *conn) Drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining = true
	if c.waitingCommand && !c.dataMode && !c.ended {
		c.Conn.SetReadDeadline(time.Now())
	}
}

// Abort ends the session at its next read, whatever it is doing
// (netserve.Session).
func (c *conn) Abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forced = true
	if !c.ended {
		c.Conn.SetReadDeadline(time.Now())
	}
}
