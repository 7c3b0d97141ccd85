package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/postie/postie/internal/confkit"
	"github.com/postie/postie/internal/dnsname"
	"github.com/postie/postie/internal/units"
	"github.com/postie/postie/pop3out"
	"github.com/postie/postie/smtpin"
	"github.com/postie/postie/spool"
	"github.com/postie/postie/tlsauto"

	"github.com/postie/postie/internal/plural"
)

// defaultConfigPath is where the commands look for the config without -config.
const defaultConfigPath = "/etc/postie/postie.toml"

// Config is the whole postie.toml. Each part's table is that package's own
// config type; the top-level keys are shared by several parts and copied
// into them by (*Config).spread. config.example.toml documents every key.
type Config struct {
	Hostname      string              `toml:"hostname"`
	Domains       []string            `toml:"domains"`
	DataDir       string              `toml:"data_dir"`
	PlusSeparator string              `toml:"plus_separator"`
	Aliases       map[string][]string `toml:"aliases"`
	// Postmaster is the account that receives mail for postmaster@ each
	// domain (and for <Postmaster>), which RFC 5321 §4.5.1 says must be
	// accepted. Empty: the first account in address order.
	Postmaster string `toml:"postmaster"`
	// PublicAddresses are this server's public IP addresses, for "postie
	// check" (the A/AAAA and reverse DNS records must match them).
	PublicAddresses []string `toml:"public_addresses"`

	Log        LogConfig        `toml:"log"`
	DNS        DNSConfig        `toml:"dns"`
	Spool      spool.Options    `toml:"spool"`
	SMTP       smtpin.Config    `toml:"smtp"`
	POP3       pop3out.Config   `toml:"pop3"`
	TLS        tlsauto.Config   `toml:"tls"`
	Metrics    MetricsConfig    `toml:"metrics"`
	Watchdog   WatchdogConfig   `toml:"watchdog"`
	Autoconfig AutoconfigConfig `toml:"autoconfig"`

	local bool   // "postie local": no DNS
	path  string // the file it was read from ("" for "postie local")
}

// LogConfig is the [log] table.
type LogConfig struct {
	Format string `toml:"format"` // "text" or "json"
	Level  string `toml:"level"`  // "debug", "info", "warn", "error"
}

// DNSConfig is the [dns] table.
type DNSConfig struct {
	Resolver     string         `toml:"resolver"` // host:port; empty: the system's
	Timeout      units.Duration `toml:"timeout"`
	CacheEntries int            `toml:"cache_entries"` // 0: no cache
	CacheMaxTTL  units.Duration `toml:"cache_max_ttl"`
}

// MetricsConfig is the [metrics] table.
type MetricsConfig struct {
	Listen string `toml:"listen"` // empty: off
}

// WatchdogConfig is the [watchdog] table.
type WatchdogConfig struct {
	FetchOverdue units.Duration `toml:"fetch_overdue"` // 0: off
	QuotaWarning float64        `toml:"quota_warning"` // fraction of the quota; 0: off
}

// AutoconfigConfig is the [autoconfig] table.
type AutoconfigConfig struct {
	Enabled bool `toml:"enabled"`
}

// DefaultConfig returns the configuration with every default set.
func DefaultConfig() Config {
	return Config{
		DataDir:       "/var/lib/postie",
		PlusSeparator: "+",
		Log:           LogConfig{Format: "text", Level: "info"},
		DNS:           DNSConfig{Timeout: units.DurationOf(5e9), CacheEntries: 4096, CacheMaxTTL: units.DurationOf(time.Hour)},
		Spool:         spool.DefaultOptions(),
		SMTP:          smtpin.DefaultConfig(),
		POP3:          pop3out.DefaultConfig(),
		TLS:           tlsauto.DefaultConfig(),
		Watchdog:      WatchdogConfig{FetchOverdue: units.DurationOf(72 * time.Hour), QuotaWarning: 0.9},
	}
}

// LoadConfig reads and validates a config file. Unknown keys and bad values
// are errors that name the key and its line.
func LoadConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	return parseConfig(path, f)
}

func parseConfig(name string, r io.Reader) (Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxConfigSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", name, err)
	}
	if len(data) > maxConfigSize {
		return Config{}, fmt.Errorf("config %s: larger than %s", name, plural.Count(maxConfigSize, "byte"))
	}
	c := DefaultConfig()
	if err := decodeStrict(data, &c); err != nil {
		return Config{}, decodeError(name, data, err)
	}
	c.spread()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s:\n%w", name, err)
	}
	c.path = name
	return c, nil
}

// maxConfigSize bounds the config file; a real one is a few KiB.
const maxConfigSize = 1 << 20

// decodeStrict decodes TOML into c, refusing unknown keys.
func decodeStrict(data []byte, c *Config) error {
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(c)
}

// decodeError turns go-toml's errors into "file:line: key: problem".
func decodeError(name string, data []byte, err error) error {
	var de *toml.DecodeError
	var se *toml.StrictMissingError
	switch {
	case errors.As(err, &se):
		var lines []string
		for _, e := range se.Errors {
			row, _ := e.Position()
			lines = append(lines, fmt.Sprintf("config %s:%d: unknown key %q (misspelt, or in the wrong table?)", name, row, strings.Join(e.Key(), ".")))
		}
		return errors.New(strings.Join(lines, "\n"))
	case errors.As(err, &de):
		row, _ := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if key := de.Key(); len(key) > 0 {
			if msg == "unknown field" {
				return fmt.Errorf("config %s:%d: unknown key %q (misspelt, or in the wrong table?)", name, row, strings.Join(key, "."))
			}
			return fmt.Errorf("config %s:%d: %s: %s", name, row, strings.Join(key, "."), msg)
		}
		return fmt.Errorf("config %s:%d: %s", name, row, msg)
	}
	if row, key, ok := locateError(data); ok {
		return fmt.Errorf("config %s:%d: %s: %w", name, row, key, err)
	}
	return fmt.Errorf("config %s: %w", name, err)
}

// locateError finds the key-value behind a decode error that go-toml gave no
// position: it does not place errors from UnmarshalText when the value is a
// bare number (a duration written as 30 instead of "30s"). Each key-value is
// decoded again on its own, under its table header, and the first that fails
// is the culprit.
func locateError(data []byte) (row int, key string, ok bool) {
	var p unstable.Parser
	p.Reset(data)
	var header string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table:
			header = "[" + tomlKey(e.Key()) + "]\n"
		case unstable.ArrayTable:
			header = "[[" + tomlKey(e.Key()) + "]]\n"
		case unstable.KeyValue:
			v := e.Value()
			if v == nil || v.Raw.Length == 0 {
				continue
			}
			k := tomlKey(e.Key())
			doc := header + k + " = " + string(p.Raw(v.Raw)) + "\n"
			c := DefaultConfig()
			if decodeStrict([]byte(doc), &c) == nil {
				continue
			}
			it := e.Key()
			it.Next()
			full := k
			if h := strings.Trim(header, "[]\n"); h != "" {
				full = h + "." + k
			}
			return p.Shape(it.Node().Raw).Start.Line, strings.ReplaceAll(full, `"`, ""), true
		}
	}
	return 0, "", false
}

// tomlKey writes a dotted key with every part quoted.
func tomlKey(it unstable.Iterator) string {
	var parts []string
	for it.Next() {
		parts = append(parts, strconv.Quote(string(it.Node().Data)))
	}
	return strings.Join(parts, ".")
}

// spread copies the top-level keys into the parts that need them.
func (c *Config) spread() {
	c.Hostname = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(c.Hostname), "."))
	for i, d := range c.Domains {
		c.Domains[i] = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
	}
	c.SMTP.Hostname, c.SMTP.Domains = c.Hostname, c.Domains
	c.SMTP.Aliases, c.SMTP.PlusSeparator = c.Aliases, c.PlusSeparator
	c.SMTP.Postmaster = c.Postmaster
	c.POP3.Hostname = c.Hostname
	c.TLS.Hostname, c.TLS.Domains, c.TLS.DataDir = c.Hostname, c.Domains, c.DataDir
	c.Spool.Path = filepath.Join(c.DataDir, "spool.db")
	c.Spool.MaxMessageSize = c.SMTP.MaxStoredSize()
}

// Validate checks the whole config and returns every problem it finds.
func (c *Config) Validate() error {
	p := confkit.Check("")
	if c.Hostname == "" {
		p.Addf("hostname", "missing: the name of this mail server, e.g. \"mail.example.com\" (the MX record points at it)")
	} else if err := checkDomainName(c.Hostname); err != nil {
		p.Addf("hostname", "%v", err)
	}
	if len(c.Domains) == 0 {
		p.Addf("domains", "missing: the mail domains this server receives for, e.g. [\"example.com\"]")
	}
	seen := map[string]bool{}
	for _, d := range c.Domains {
		if err := checkDomainName(d); err != nil {
			p.Addf("domains", "%v", err)
		}
		if n := dnsname.Normalize(d); seen[n] {
			p.Addf("domains", "%q is listed twice", d)
		} else {
			seen[n] = true
		}
	}
	if c.DataDir == "" {
		p.Addf("data_dir", "missing: a directory for the spool and certificates, e.g. \"/var/lib/postie\"")
	}
	if c.PlusSeparator == "" {
		// Allowed: no plus-addressing.
	} else if strings.ContainsAny(c.PlusSeparator, "@\" \t<>") {
		p.Addf("plus_separator", "%q: use characters such as \"+\" or \"+-\", not @, quotes or spaces", c.PlusSeparator)
	}
	for from, targets := range c.Aliases {
		if err := c.checkAliasSource(from); err != nil {
			p.Addf("aliases", "%q: %v", from, err)
		}
		if len(targets) == 0 {
			p.Addf("aliases", "%q: no target accounts", from)
		}
		for _, t := range targets {
			if _, err := c.LocalAddress(t); err != nil {
				p.Addf("aliases", "%q -> %q: %v (aliases point at local accounts: Postie does not forward mail)", from, t, err)
			}
		}
	}
	if c.Postmaster != "" {
		if _, err := c.LocalAddress(c.Postmaster); err != nil {
			p.Addf("postmaster", "%q: %v (an account here)", c.Postmaster, err)
		}
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		p.Addf("log.format", "%q: want \"text\" or \"json\"", c.Log.Format)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		p.Addf("log.level", "%v", err)
	}
	for _, a := range c.PublicAddresses {
		if _, err := netip.ParseAddr(a); err != nil {
			p.Addf("public_addresses", "%q is not an IP address", a)
		}
	}
	if c.DNS.CacheEntries < 0 || c.DNS.CacheEntries > 1<<20 {
		p.Addf("dns.cache_entries", "%d: want 0 (no cache) to 1048576, e.g. 4096", c.DNS.CacheEntries)
	}
	if c.DNS.CacheEntries > 0 && c.DNS.CacheMaxTTL.D() <= 0 {
		p.Addf("dns.cache_max_ttl", "%v: want a positive duration, e.g. \"1h\"", c.DNS.CacheMaxTTL.D())
	}
	if q := c.Watchdog.QuotaWarning; q < 0 || q > 1 {
		p.Addf("watchdog.quota_warning", "%v: want a fraction between 0 (off) and 1, e.g. 0.9", q)
	}
	if c.Autoconfig.Enabled && c.TLS.HTTPSListen == "" {
		p.Addf("autoconfig.enabled", "autoconfig is served over HTTPS; set tls.https_listen (default \":443\")")
	}
	if c.Metrics.Listen != "" {
		if ap, err := netip.ParseAddrPort(c.Metrics.Listen); err != nil || !ap.Addr().IsLoopback() {
			p.Addf("metrics.listen", "%q: want a loopback address and port, e.g. \"127.0.0.1:9125\" (metrics are not for the internet)", c.Metrics.Listen)
		}
	}
	for _, v := range []interface{ Validate() error }{&c.SMTP, &c.POP3, &c.TLS, c.Spool} {
		p.Join(v.Validate())
	}
	return p.Err()
}

func (c *Config) checkAliasSource(from string) error {
	if strings.HasPrefix(from, "@") {
		if !c.IsLocalDomain(from[1:]) {
			return fmt.Errorf("catch-all for a domain not in domains")
		}
		return nil
	}
	_, err := c.LocalAddress(from)
	return err
}

// IsLocalDomain reports whether d is one of the configured domains.
func (c *Config) IsLocalDomain(d string) bool {
	_, ok := c.localDomain(d)
	return ok
}

// localDomain returns the configured spelling of d, compared as domain
// names are everywhere (dnsname: case, trailing dot, IDNA).
func (c *Config) localDomain(d string) (string, bool) {
	n := dnsname.Normalize(d)
	if n == "" {
		return "", false
	}
	for _, x := range c.Domains {
		if dnsname.Normalize(x) == n {
			return x, true
		}
	}
	return "", false
}

// LocalAddress normalises addr and checks that its domain is ours: an
// address under an A-label or U-label spelling of a configured domain is
// the same account.
func (c *Config) LocalAddress(addr string) (string, error) {
	a, err := spool.NormalizeAddress(addr)
	if err != nil {
		return "", err
	}
	at := strings.LastIndexByte(a, '@')
	d, ok := c.localDomain(a[at+1:])
	if !ok {
		return "", fmt.Errorf("%s is not in one of the configured domains (%s)", a[at+1:], strings.Join(c.Domains, ", "))
	}
	// The account is stored under the configured spelling of its domain,
	// as SMTP's routing finds it.
	return a[:at+1] + d, nil
}

// checkDomainName accepts a DNS host name: labels of letters, digits and
// hyphens (or U-labels), at most 253 characters.
func checkDomainName(d string) error {
	if d == "localhost" {
		return nil
	}
	if len(d) > 253 || !strings.Contains(d, ".") {
		return fmt.Errorf("%q is not a fully qualified domain name", d)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return fmt.Errorf("%q is not a valid domain name", d)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r > 0x7f) {
				return fmt.Errorf("%q is not a valid domain name (character %q)", d, r)
			}
		}
	}
	return nil
}

// parseLevel reads a log level ("debug", "info", "warn", "error").
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

// pop3sPort is the port of the first implicit-TLS POP3 address (995), for
// the SRV records and autoconfig.
func (c Config) pop3sPort() int {
	port := 995
	if len(c.POP3.ListenTLS) > 0 {
		if _, p, err := net.SplitHostPort(c.POP3.ListenTLS[0]); err == nil {
			fmt.Sscan(p, &port)
		}
	}
	return port
}
