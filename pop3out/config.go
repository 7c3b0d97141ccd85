package pop3out

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/units"
)

// Config is the owner's [pop3] table of postie.toml, plus Hostname, which
// main copies in from the top level. DefaultConfig sets every key.
type Config struct {
	// Listen lists the plaintext addresses; they offer STLS (RFC 2595).
	Listen []string `toml:"listen"`
	// ListenTLS lists the implicit-TLS addresses (RFC 8314), where TLS
	// starts with the first byte.
	ListenTLS []string `toml:"listen_tls"`
	// PlaintextLoginNetworks lists the client networks (CIDR) that may log
	// in without TLS. An empty list means none may.
	PlaintextLoginNetworks []string `toml:"plaintext_login_networks"`

	// IdleTimeout bounds the wait for each command. RFC 1939 §3 asks for at
	// least 10 minutes.
	IdleTimeout units.Duration `toml:"idle_timeout"`
	// LoginTimeout bounds the time from connect (TLS handshake included) to
	// a successful login.
	LoginTimeout units.Duration `toml:"login_timeout"`
	// HandshakeTimeout bounds a TLS handshake (the implicit-TLS port, and
	// after STLS), whatever the other timeouts leave: a client that
	// connects and says nothing holds a slot this long at most.
	HandshakeTimeout units.Duration `toml:"handshake_timeout"`
	// StressThreshold is the share of MaxConnections from which the
	// server is under stress: a session that has not logged in (its TLS
	// handshake included) then waits at most StressTimeout for the
	// client, so that idle connections cannot hold every slot. A
	// logged-in session is never cut short by it. 0: no stress mode.
	StressThreshold float64        `toml:"stress_threshold"`
	StressTimeout   units.Duration `toml:"stress_timeout"`
	// SessionTimeout bounds a whole session, from connect to close.
	SessionTimeout units.Duration `toml:"session_timeout"`
	// WriteTimeout bounds each write to the client: a client that stops
	// reading in the middle of a message is dropped after this long.
	WriteTimeout units.Duration `toml:"write_timeout"`

	// MaxLineLength bounds a command line, and a SASL response line, with
	// its CRLF. RFC 2449 §4 raises the command limit to 255 octets; AUTH
	// PLAIN responses can be longer. A longer line ends the session.
	MaxLineLength units.Size `toml:"max_line_length"`
	// MaxErrors bounds the refused commands (unknown, out of sequence, bad
	// arguments) of one session; the next one ends it.
	MaxErrors int `toml:"max_errors"`
	// MaxAuthFailures bounds the failed logins of one session; the session
	// ends after that many.
	MaxAuthFailures int `toml:"max_auth_failures"`
	// MaxConnections and MaxConnectionsPerIP bound the concurrent
	// connections of the POP3 service, over all its listening addresses,
	// in total and per client address (an IPv6 client counts by its /64). A connection over a
	// limit gets "-ERR [SYS/TEMP] too many connections" (on the plaintext
	// port; the TLS port just closes it).
	MaxConnections      int `toml:"max_connections"`
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`

	// AuthDuration is the time every failed password check takes (padded,
	// with up to 20% jitter), so that timing says nothing about whether the
	// account exists. A successful login is not padded: its +OK says more
	// than its timing could.
	AuthDuration units.Duration `toml:"auth_duration"`
	// FailedLoginDelay is how long the next login from a client network,
	// or to an account, waits after a failure; it doubles with each further
	// failure up to FailedLoginDelayMax, and a key quiet for
	// FailedLoginForget is forgotten. Nobody is ever locked out.
	FailedLoginDelay    units.Duration `toml:"failed_login_delay"`
	FailedLoginDelayMax units.Duration `toml:"failed_login_delay_max"`
	FailedLoginForget   units.Duration `toml:"failed_login_forget"`

	// LoginDelay, when more than 0, is announced as CAPA LOGIN-DELAY (RFC
	// 2449 §6.5) and enforced: a login sooner than this after the previous
	// one of the same account and device gets "-ERR [LOGIN-DELAY]".
	LoginDelay units.Duration `toml:"login_delay"`
	// Expire, when set, is announced as CAPA EXPIRE (RFC 2449 §6.7): "never"
	// or a number of days the server keeps messages a client has retrieved
	// but not deleted. Postie itself never expires them; set this only to
	// tell clients a policy you enforce otherwise. Empty: not announced.
	Expire string `toml:"expire"`

	// Hostname is announced in the greeting.
	Hostname string `toml:"-"`
}

// DefaultConfig returns the defaults of every key.
func DefaultConfig() Config {
	return Config{
		Listen:                 []string{":110"},
		ListenTLS:              []string{":995"},
		PlaintextLoginNetworks: []string{"127.0.0.0/8", "::1/128"},
		IdleTimeout:            units.DurationOf(10 * time.Minute),
		LoginTimeout:           units.DurationOf(3 * time.Minute),
		HandshakeTimeout:       units.DurationOf(10 * time.Second),
		StressThreshold:        0.75,
		StressTimeout:          units.DurationOf(10 * time.Second),
		SessionTimeout:         units.DurationOf(2 * time.Hour),
		WriteTimeout:           units.DurationOf(2 * time.Minute),
		MaxLineLength:          8 << 10,
		MaxErrors:              10,
		MaxAuthFailures:        3,
		MaxConnections:         100,
		MaxConnectionsPerIP:    10,
		AuthDuration:           units.DurationOf(100 * time.Millisecond),
		FailedLoginDelay:       units.DurationOf(2 * time.Second),
		FailedLoginDelayMax:    units.DurationOf(15 * time.Second),
		FailedLoginForget:      units.DurationOf(10 * time.Minute),
	}
}

// Validate checks the owner's keys against the minimums the RFCs set and
// returns every problem, each naming its key.
func (c *Config) Validate() error {
	p := confkit.Check("pop3")
	c.check(p)
	// RFC 1939 §3: an inactivity autologout timer must be at least 10 minutes.
	if d := c.IdleTimeout.D(); d > 0 && d < 10*time.Minute {
		p.Addf("idle_timeout", "%s is below the 10 minutes RFC 1939 §3 requires", c.IdleTimeout)
	}
	// RFC 2449 §4: command lines of 255 octets must be accepted.
	if n := c.MaxLineLength.Bytes(); n > 0 && n < 512 {
		p.Addf("max_line_length", "%s is too small: at least 512 bytes (RFC 2449 §4 commands, AUTH PLAIN responses)", c.MaxLineLength)
	}
	if c.SessionTimeout.D() > 0 && c.IdleTimeout.D() > c.SessionTimeout.D() {
		p.Addf("idle_timeout", "%s is longer than session_timeout (%s)", c.IdleTimeout, c.SessionTimeout)
	}
	if c.MaxConnections > 0 && c.MaxConnectionsPerIP > c.MaxConnections {
		p.Addf("max_connections_per_ip", "%d is more than max_connections (%d)", c.MaxConnectionsPerIP, c.MaxConnections)
	}
	if len(c.Listen) == 0 && len(c.ListenTLS) == 0 {
		p.Addf("listen", "no addresses in listen or listen_tls: POP3 would be unreachable")
	}
	return p.Err()
}

// check records what makes a config unusable. New refuses such a config;
// Validate adds the owner-facing minimums, which tests may go below.
func (c *Config) check(p *confkit.Problems) {
	for _, key := range []struct {
		name  string
		addrs []string
	}{{"listen", c.Listen}, {"listen_tls", c.ListenTLS}} {
		for _, a := range key.addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				p.Addf(key.name, "%q: want host:port, e.g. \":110\" or \"192.0.2.1:995\"", a)
			}
		}
	}
	for _, n := range c.PlaintextLoginNetworks {
		if _, err := parseNetwork(n); err != nil {
			p.Addf("plaintext_login_networks", "%q: want a CIDR such as \"127.0.0.0/8\" or an address", n)
		}
	}
	p.Positive("idle_timeout", c.IdleTimeout.D())
	p.Positive("login_timeout", c.LoginTimeout.D())
	p.Positive("handshake_timeout", c.HandshakeTimeout.D())
	p.Positive("stress_timeout", c.StressTimeout.D())
	if t := c.StressThreshold; t != 0 && (t < 0.1 || t > 1) {
		p.Addf("stress_threshold", "%v: want a share of max_connections between 0.1 and 1, e.g. 0.75, or 0 for no stress mode", t)
	}
	p.Positive("session_timeout", c.SessionTimeout.D())
	p.Positive("write_timeout", c.WriteTimeout.D())
	p.Positive("failed_login_delay", c.FailedLoginDelay.D())
	p.Positive("failed_login_forget", c.FailedLoginForget.D())
	if c.FailedLoginDelayMax.D() < c.FailedLoginDelay.D() {
		p.Addf("failed_login_delay_max", "%s is less than failed_login_delay (%s)", c.FailedLoginDelayMax, c.FailedLoginDelay)
	}
	if c.AuthDuration.D() < 0 || c.AuthDuration.D() > 10*time.Second {
		p.Addf("auth_duration", "%s: want 0 to 10s", c.AuthDuration)
	}
	if c.LoginDelay.D() < 0 {
		p.Addf("login_delay", "%s must not be negative", c.LoginDelay)
	}
	if n := c.MaxLineLength.Bytes(); n < 64 || n > 1<<20 {
		p.Addf("max_line_length", "%s: want 64 bytes to 1MiB", c.MaxLineLength)
	}
	p.AtLeast("max_errors", int64(c.MaxErrors), 1, "")
	p.AtLeast("max_auth_failures", int64(c.MaxAuthFailures), 1, "")
	p.AtLeast("max_connections", int64(c.MaxConnections), 1, "")
	p.AtLeast("max_connections_per_ip", int64(c.MaxConnectionsPerIP), 1, "")
	if _, err := expireCapability(c.Expire); err != nil {
		p.Addf("expire", "%v", err)
	}
}

// parseNetwork reads a CIDR, or a single address as its own network.
func parseNetwork(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// expireCapability returns the CAPA line for the Expire key, "" when none
// (RFC 2449 §6.7: "EXPIRE NEVER" or "EXPIRE <days>").
func expireCapability(s string) (string, error) {
	switch v := strings.TrimSpace(s); {
	case v == "":
		return "", nil
	case strings.EqualFold(v, "never"):
		return "EXPIRE NEVER", nil
	default:
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100000 {
			return "", fmt.Errorf("%q: want \"never\" or a number of days", s)
		}
		return "EXPIRE " + strconv.Itoa(n), nil
	}
}
