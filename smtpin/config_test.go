package smtpin

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/postie/postie/internal/units"
)

func TestDefaultConfigValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// TestConfigKeys lists the owner's keys, so that a renamed or added key is
// a conscious change (config.example.toml documents them).
func TestConfigKeys(t *testing.T) {
	var keys []string
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for f := range typ.Fields() {
			tag := f.Tag.Get("toml")
			if tag == "-" {
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == typ.PkgPath() {
				walk(prefix+tag+".", f.Type)
				continue
			}
			keys = append(keys, prefix+tag)
		}
	}
	walk("", reflect.TypeFor[Config]())
	want := []string{
		"listen", "max_message_size", "max_header_size", "max_recipients", "max_line_length",
		"max_connections", "max_connections_per_ip", "max_commands", "max_errors",
		"max_unknown_recipients", "unknown_recipient_delay", "unknown_recipient_delay_max",
		"session_timeout", "read_timeout", "write_timeout", "data_timeout", "min_data_rate", "stress_threshold", "stress_timeout", "dnsbl", "dnsbl_timeout",
		"checks.dmarc_reject", "checks.spf_fail_reject", "checks.temperror_defer", "checks.timeout", "checks.max_dkim_signatures", "milter",
		"greylist.enabled", "greylist.delay", "greylist.expire", "greylist.pass_ttl", "greylist.allow", "greylist.max_entries",
	}
	if !slices.Equal(keys, want) {
		t.Errorf("keys:\n%q\nwant\n%q", keys, want)
	}
}

// TestConfigTOML decodes an [smtp] table the way main does (unknown keys
// are errors) over the defaults.
func TestConfigTOML(t *testing.T) {
	const doc = `
listen = ["127.0.0.1:2525", "[::1]:2525"]
max_message_size = "25MB"
max_line_length = "8KiB"
read_timeout = "2m"
min_data_rate = "1KiB"

[checks]
dmarc_reject = false
spf_fail_reject = true
timeout = "10s"
`
	c := DefaultConfig()
	dec := toml.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.MaxMessageSize != 25_000_000 || c.MaxLineLength != 8192 || c.ReadTimeout.D() != 2*time.Minute || c.MinDataRate != 1024 ||
		c.Checks.DMARCReject || !c.Checks.SPFFailReject || c.Checks.Timeout.D() != 10*time.Second || c.MaxRecipients != 100 {
		t.Errorf("decoded %+v", c)
	}
	bad := toml.NewDecoder(strings.NewReader("max_recipient = 5\n"))
	bad.DisallowUnknownFields()
	if err := bad.Decode(&c); err == nil {
		t.Error("a misspelt key was accepted")
	}
}

// TestConfigValidate: each bad value is reported with its key, and all of
// them at once.
func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		key string
		mod func(*Config)
	}{
		{"smtp.listen", func(c *Config) { c.Listen = nil }},
		{"smtp.listen", func(c *Config) { c.Listen = []string{"25"} }},
		{"smtp.max_message_size", func(c *Config) { c.MaxMessageSize = 100 }},
		{"smtp.max_header_size", func(c *Config) { c.MaxHeaderSize = 10 }},
		{"smtp.max_recipients", func(c *Config) { c.MaxRecipients = 99 }},
		{"smtp.max_line_length", func(c *Config) { c.MaxLineLength = 512 }},
		{"smtp.max_line_length", func(c *Config) { c.MaxLineLength = 2 << 20 }},
		{"smtp.max_connections", func(c *Config) { c.MaxConnections = 0 }},
		{"smtp.max_connections_per_ip", func(c *Config) { c.MaxConnectionsPerIP = 500 }},
		{"smtp.max_commands", func(c *Config) { c.MaxCommands = 2 }},
		{"smtp.max_errors", func(c *Config) { c.MaxErrors = 0 }},
		{"smtp.max_unknown_recipients", func(c *Config) { c.MaxUnknownRecipients = 0 }},
		{"smtp.unknown_recipient_delay_max", func(c *Config) { c.UnknownRecipientDelayMax = units.DurationOf(time.Millisecond) }},
		{"smtp.session_timeout", func(c *Config) { c.SessionTimeout = units.DurationOf(0) }},
		{"smtp.read_timeout", func(c *Config) { c.ReadTimeout = units.DurationOf(0) }},
		{"smtp.read_timeout", func(c *Config) { c.ReadTimeout = units.DurationOf(2 * time.Hour) }},
		{"smtp.write_timeout", func(c *Config) { c.WriteTimeout = units.DurationOf(0) }},
		{"smtp.data_timeout", func(c *Config) { c.DataTimeout = units.DurationOf(0) }},
		{"smtp.min_data_rate", func(c *Config) { c.MinDataRate = 0 }},
		{"smtp.checks.timeout", func(c *Config) { c.Checks.Timeout = units.DurationOf(0) }},
		{"smtp.checks.max_dkim_signatures", func(c *Config) { c.Checks.MaxDKIMSignatures = 0 }},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.key+":") {
			t.Errorf("%s: got %v", tc.key, err)
		}
	}
	c := DefaultConfig()
	c.MaxRecipients, c.ReadTimeout = 1, units.DurationOf(0)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "smtp.max_recipients") || !strings.Contains(err.Error(), "smtp.read_timeout") {
		t.Errorf("two problems: %v", err)
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	c := DefaultConfig()
	if _, err := New(c, Deps{}); err == nil {
		t.Error("New without a store or resolver")
	}
}
