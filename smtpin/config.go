package smtpin

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/units"
)

// Config is the owner's [smtp] table of postie.toml, plus the fields main
// copies in from the top level (those tagged toml:"-"). Every limit has a
// key and a default; DefaultConfig sets them all.
type Config struct {
	// Listen lists the addresses to accept SMTP connections on.
	Listen []string `toml:"listen"`

	// MaxMessageSize bounds a message as the client sends it; it is
	// announced in EHLO (SIZE, RFC 1870), checked against MAIL FROM's
	// SIZE= and enforced while reading (552 5.3.4).
	MaxMessageSize units.Size `toml:"max_message_size"`
	// MaxHeaderSize bounds the header section of a message, the part read
	// into memory for the checks (552 5.3.4 when over). MaxMessageSize
	// bounds it too.
	MaxHeaderSize units.Size `toml:"max_header_size"`
	// MaxRecipients bounds the recipients of one message (452 4.5.3 for
	// the next one; RFC 5321 §4.5.3.1.8 asks for at least 100).
	MaxRecipients int `toml:"max_recipients"`
	// MaxLineLength bounds a command line or a line of message text; a
	// longer one ends the session. RFC 5321 §4.5.3.1 sets 1000 octets as
	// the minimum to accept; mail in the wild has longer lines.
	MaxLineLength units.Size `toml:"max_line_length"`
	// MaxConnections and MaxConnectionsPerIP bound concurrent connections
	// in total and per client address (an IPv6 client counts by its /64);
	// connections over a limit get 421 4.7.0.
	MaxConnections      int `toml:"max_connections"`
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// MaxCommands bounds the commands a session may send without getting a
	// message accepted (junk loops, probes); each accepted message starts
	// the count again, so an MTA may deliver any number of messages over
	// one connection within SessionTimeout.
	MaxCommands int `toml:"max_commands"`
	// MaxErrors bounds the commands of one session that this server
	// refuses (a refused recipient, a bad sender); the session ends with
	// 421 4.7.0 after that many.
	MaxErrors int `toml:"max_errors"`
	// MaxUnknownRecipients bounds the recipients of one session that name
	// no mailbox here. Each one also makes the next unknown recipient from
	// that client address wait longer: UnknownRecipientDelay, doubling up
	// to UnknownRecipientDelayMax.
	MaxUnknownRecipients     int            `toml:"max_unknown_recipients"`
	UnknownRecipientDelay    units.Duration `toml:"unknown_recipient_delay"`
	UnknownRecipientDelayMax units.Duration `toml:"unknown_recipient_delay_max"`

	// SessionTimeout bounds a whole session, from connect to close.
	SessionTimeout units.Duration `toml:"session_timeout"`
	// ReadTimeout bounds the wait for each command, and any pause while a
	// message is sent.
	ReadTimeout units.Duration `toml:"read_timeout"`
	// WriteTimeout bounds the sending of each reply.
	WriteTimeout units.Duration `toml:"write_timeout"`
	// DataTimeout bounds the transfer of one message (DATA to the final
	// dot), and MinDataRate (bytes per second) is the slowest a message
	// may come in on average after the first ReadTimeout.
	DataTimeout units.Duration `toml:"data_timeout"`
	MinDataRate units.Size     `toml:"min_data_rate"`
	// StressThreshold is the share of MaxConnections from which the
	// server is under stress: a session waiting for a command before MAIL
	// (the greeting, EHLO, STARTTLS and its handshake included) then
	// waits at most StressTimeout, so that idle connections cannot hold
	// every slot. A message being sent is never cut short by it. 0: no
	// stress mode.
	StressThreshold float64        `toml:"stress_threshold"`
	StressTimeout   units.Duration `toml:"stress_timeout"`

	// DNSBL lists DNS blocklist zones (RFC 5782) asked about each client
	// at connect; a listed client gets 554 5.7.1 naming the list and is
	// disconnected. Empty (the default): no lists. A lookup that fails or
	// takes longer than DNSBLTimeout lets the client in.
	DNSBL        []string       `toml:"dnsbl"`
	DNSBLTimeout units.Duration `toml:"dnsbl_timeout"`

	// Checks is the [smtp.checks] table: what SPF, DKIM and DMARC
	// verdicts do to a message.
	Checks ChecksConfig `toml:"checks"`
	// Milters are the [[smtp.milter]] tables: content filters asked about
	// every message, in order. None by default.
	Milters []MilterConfig `toml:"milter"`
	// Greylist is the [smtp.greylist] table.
	Greylist GreylistConfig `toml:"greylist"`

	// Hostname is announced in the greeting and EHLO, and is the
	// authserv-id of Authentication-Results.
	Hostname string `toml:"-"`
	// Domains are the mail domains mail is accepted for.
	Domains []string `toml:"-"`
	// Aliases maps an address to the accounts that receive its mail; the
	// key "@domain" is that domain's catch-all.
	Aliases map[string][]string `toml:"-"`
	// Postmaster is the account that receives mail for postmaster@ each
	// domain and for <Postmaster> when no alias or account of that name
	// does. Empty: the first account in address order.
	Postmaster string `toml:"-"`
	// PlusSeparator lists the characters that start a subaddress:
	// with "+", alice+news@ is delivered to alice@. Empty: none.
	PlusSeparator string `toml:"-"`
}

// ChecksConfig is the [smtp.checks] table.
type ChecksConfig struct {
	// DMARCReject refuses (550 5.7.1) a message that fails DMARC for a
	// domain whose policy is p=reject.
	DMARCReject bool `toml:"dmarc_reject"`
	// SPFFailReject refuses (550 5.7.1) a message whose SPF result is fail
	// (the sender's domain says "-all") unless a DKIM signature aligned
	// with the From domain verified.
	SPFFailReject bool `toml:"spf_fail_reject"`
	// TempErrorDefer answers 451 4.4.3 when a check could not finish for
	// a temporary DNS reason; by default such a message is accepted and
	// its verdict recorded as temperror.
	TempErrorDefer bool `toml:"temperror_defer"`
	// Timeout bounds the checks of one message, and so how long a sender
	// waits for them after its final dot.
	Timeout units.Duration `toml:"timeout"`
	// MaxDKIMSignatures bounds the signatures verified per message; the
	// others are recorded as permerror.
	MaxDKIMSignatures int `toml:"max_dkim_signatures"`
}

// GreylistConfig is the [smtp.greylist] table: greylisting (RFC 6647),
// off by default. The first attempt of an unknown (client network: a /24
// or /64, envelope sender, recipient) triplet gets 451 4.7.1; a retry
// after Delay and before Expire passes and lets the network through for
// PassTTL. Mail whose SPF passes, or that passes DMARC (an aligned SPF or
// DKIM pass), and clients in Allow skip it. Kept in the spool, bounded by
// MaxEntries.
type GreylistConfig struct {
	Enabled    bool           `toml:"enabled"`
	Delay      units.Duration `toml:"delay"`
	Expire     units.Duration `toml:"expire"`
	PassTTL    units.Duration `toml:"pass_ttl"`
	Allow      []string       `toml:"allow"`
	MaxEntries int            `toml:"max_entries"`
}

// DefaultConfig returns the defaults of every key.
func DefaultConfig() Config {
	return Config{
		Listen:                   []string{":25"},
		MaxMessageSize:           50 << 20,
		MaxHeaderSize:            256 << 10,
		MaxRecipients:            100,
		MaxLineLength:            16 << 10,
		MaxConnections:           200,
		MaxConnectionsPerIP:      20,
		MaxCommands:              1000,
		MaxErrors:                20,
		MaxUnknownRecipients:     10,
		UnknownRecipientDelay:    units.DurationOf(time.Second),
		UnknownRecipientDelayMax: units.DurationOf(15 * time.Second),
		SessionTimeout:           units.DurationOf(time.Hour),
		ReadTimeout:              units.DurationOf(5 * time.Minute),
		WriteTimeout:             units.DurationOf(time.Minute),
		DataTimeout:              units.DurationOf(30 * time.Minute),
		MinDataRate:              500,
		StressThreshold:          0.75,
		StressTimeout:            units.DurationOf(10 * time.Second),
		DNSBLTimeout:             units.DurationOf(5 * time.Second),
		Checks: ChecksConfig{
			DMARCReject:       true,
			Timeout:           units.DurationOf(20 * time.Second),
			MaxDKIMSignatures: 5,
		},
		Greylist: GreylistConfig{
			Delay:      units.DurationOf(5 * time.Minute),
			Expire:     units.DurationOf(24 * time.Hour),
			PassTTL:    units.DurationOf(35 * 24 * time.Hour),
			MaxEntries: 100000,
		},
		PlusSeparator: "+",
	}
}

// MaxStoredSize is the most a message accepted under c can take in the
// spool: bare LF line ends become CRLF (twice the size, at worst), and the
// trace and the filters' fields go on top. Main gives it to the spool as
// its last line of defence.
func (c Config) MaxStoredSize() units.Size {
	return units.Size(2*c.MaxMessageSize.Bytes() + 1<<20)
}

// Validate checks the owner's keys and returns every problem, each naming
// its key.
func (c *Config) Validate() error {
	p := confkit.Check("smtp")
	if len(c.Listen) == 0 {
		p.Addf("listen", "no addresses: give at least one, e.g. [\":25\"]")
	}
	for _, a := range c.Listen {
		if _, _, err := net.SplitHostPort(a); err != nil {
			p.Addf("listen", "%q: want host:port, e.g. \":25\" or \"192.0.2.1:25\"", a)
		}
	}
	for _, z := range c.DNSBL {
		if !validZone(z) {
			p.Addf("dnsbl", "%q is not a DNS zone name (e.g. \"zen.spamhaus.org\")", z)
		}
	}
	if len(c.DNSBL) > 0 && c.DNSBLTimeout.D() <= 0 {
		p.Addf("dnsbl_timeout", "must be more than 0s when dnsbl lists zones")
	}
	p.AtLeast("max_message_size", c.MaxMessageSize.Bytes(), 64<<10, " bytes")
	p.AtLeast("max_header_size", c.MaxHeaderSize.Bytes(), 16<<10, " bytes")
	// RFC 5321 §4.5.3.1.8: at least 100 recipients must be accepted.
	p.AtLeast("max_recipients", int64(c.MaxRecipients), 100, "")
	// RFC 5321 §4.5.3.1.6: text lines of 1000 octets with the CRLF.
	p.AtLeast("max_line_length", c.MaxLineLength.Bytes(), 1000, " bytes")
	p.AtMost("max_line_length", c.MaxLineLength.Bytes(), 1<<20, " bytes")
	p.AtLeast("max_connections", int64(c.MaxConnections), 1, "")
	p.AtLeast("max_connections_per_ip", int64(c.MaxConnectionsPerIP), 1, "")
	if c.MaxConnectionsPerIP > c.MaxConnections && c.MaxConnections > 0 {
		p.Addf("max_connections_per_ip", "%d is more than max_connections (%d)", c.MaxConnectionsPerIP, c.MaxConnections)
	}
	p.AtLeast("max_commands", int64(c.MaxCommands), 10, "")
	p.AtLeast("max_errors", int64(c.MaxErrors), 1, "")
	p.AtLeast("max_unknown_recipients", int64(c.MaxUnknownRecipients), 1, "")
	p.Positive("session_timeout", c.SessionTimeout.D())
	p.Positive("read_timeout", c.ReadTimeout.D())
	p.Positive("write_timeout", c.WriteTimeout.D())
	p.Positive("data_timeout", c.DataTimeout.D())
	p.Positive("checks.timeout", c.Checks.Timeout.D())
	if c.UnknownRecipientDelayMax.D() < c.UnknownRecipientDelay.D() {
		p.Addf("unknown_recipient_delay_max", "%s is less than unknown_recipient_delay (%s)", c.UnknownRecipientDelayMax, c.UnknownRecipientDelay)
	}
	if c.ReadTimeout.D() > c.SessionTimeout.D() && c.SessionTimeout.D() > 0 {
		p.Addf("read_timeout", "%s is longer than session_timeout (%s)", c.ReadTimeout, c.SessionTimeout)
	}
	p.AtLeast("min_data_rate", c.MinDataRate.Bytes(), 1, " bytes per second")
	if t := c.StressThreshold; t != 0 && (t < 0.1 || t > 1) {
		p.Addf("stress_threshold", "%v: want a share of max_connections between 0.1 and 1, e.g. 0.75, or 0 for no stress mode", t)
	}
	p.Positive("stress_timeout", c.StressTimeout.D())
	if n := c.Checks.MaxDKIMSignatures; n < 1 || n > 50 {
		p.Addf("checks.max_dkim_signatures", "%d: want 1 to 50", n)
	}
	if g := c.Greylist; g.Enabled {
		p.Positive("greylist.delay", g.Delay.D())
		if g.Expire.D() <= g.Delay.D() {
			p.Addf("greylist.expire", "%s must be longer than greylist.delay (%s)", g.Expire, g.Delay)
		}
		p.Positive("greylist.pass_ttl", g.PassTTL.D())
		p.AtLeast("greylist.max_entries", int64(g.MaxEntries), 100, "")
	}
	for _, n := range c.Greylist.Allow {
		if _, err := netip.ParsePrefix(n); err != nil {
			if _, err := netip.ParseAddr(n); err != nil {
				p.Addf("greylist.allow", "%q: want a network such as \"192.0.2.0/24\" or an address", n)
			}
		}
	}
	for i := range c.Milters {
		m := &c.Milters[i]
		key := fmt.Sprintf("milter[%d]", i)
		if _, _, err := m.network(); err != nil {
			p.Addf(key+".address", "%v", err)
		}
		switch m.OnFailure {
		case "":
			m.OnFailure = "accept"
		case "accept", "tempfail":
		default:
			p.Addf(key+".on_failure", "%q: want \"accept\" or \"tempfail\"", m.OnFailure)
		}
		if m.ConnectTimeout.D() == 0 {
			m.ConnectTimeout = units.DurationOf(5 * time.Second)
		}
		if m.Timeout.D() == 0 {
			m.Timeout = units.DurationOf(30 * time.Second)
		}
		p.Positive(key+".connect_timeout", m.ConnectTimeout.D())
		p.Positive(key+".timeout", m.Timeout.D())
	}
	return p.Err()
}
