package pop3out

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/postie/postie/internal/units"
)

func TestDefaultConfigIsValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	if c.IdleTimeout.D() != 10*time.Minute {
		t.Errorf("idle_timeout default %s, want the RFC 1939 minimum of 10m", c.IdleTimeout)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string // substrings of the error, each naming its key
	}{
		{"idle below RFC", func(c *Config) { c.IdleTimeout = units.DurationOf(time.Minute) }, []string{"pop3.idle_timeout: 1m0s is below the 10 minutes RFC 1939 §3 requires"}},
		{"zero timeouts", func(c *Config) { c.LoginTimeout, c.WriteTimeout = units.DurationOf(0), units.DurationOf(0) }, []string{"pop3.login_timeout", "pop3.write_timeout"}},
		{"bad listen", func(c *Config) { c.Listen = []string{"110"} }, []string{`pop3.listen: "110"`}},
		{"bad listen_tls", func(c *Config) { c.ListenTLS = []string{"localhost"} }, []string{`pop3.listen_tls: "localhost"`}},
		{"no listeners", func(c *Config) { c.Listen, c.ListenTLS = nil, nil }, []string{"pop3.listen: no addresses"}},
		{"bad network", func(c *Config) { c.PlaintextLoginNetworks = []string{"10.0.0.0/33", "::1"} }, []string{`pop3.plaintext_login_networks: "10.0.0.0/33"`}},
		{"short lines", func(c *Config) { c.MaxLineLength = 100 }, []string{"pop3.max_line_length"}},
		{"huge lines", func(c *Config) { c.MaxLineLength = 2 << 20 }, []string{"pop3.max_line_length"}},
		{"limits", func(c *Config) { c.MaxErrors, c.MaxAuthFailures, c.MaxConnections = 0, 0, 0 }, []string{"pop3.max_errors", "pop3.max_auth_failures", "pop3.max_connections:"}},
		{"per-ip over total", func(c *Config) { c.MaxConnectionsPerIP = 500 }, []string{"pop3.max_connections_per_ip: 500 is more than max_connections (100)"}},
		{"penalty order", func(c *Config) { c.FailedLoginDelayMax = units.DurationOf(time.Second) }, []string{"pop3.failed_login_delay_max"}},
		{"auth duration", func(c *Config) { c.AuthDuration = units.DurationOf(time.Minute) }, []string{"pop3.auth_duration"}},
		{"expire", func(c *Config) { c.Expire = "soon" }, []string{`pop3.expire: "soon"`}},
		{"login delay", func(c *Config) { c.LoginDelay = units.DurationOf(-1) }, []string{"pop3.login_delay"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate() = nil")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestExpireCapability(t *testing.T) {
	for in, want := range map[string]string{"": "", "never": "EXPIRE NEVER", "NEVER": "EXPIRE NEVER", "30": "EXPIRE 30", " 0 ": "EXPIRE 0"} {
		if got, err := expireCapability(in); err != nil || got != want {
			t.Errorf("expireCapability(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"-1", "1d", "x"} {
		if _, err := expireCapability(bad); err == nil {
			t.Errorf("expireCapability(%q) accepted", bad)
		}
	}
}

func TestPlaintextNetworks(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PlaintextLoginNetworks = []string{"127.0.0.0/8", "::1", "192.0.2.0/24"}
	st, err := newSettings(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{"127.0.0.1": true, "127.9.9.9": true, "::1": true, "192.0.2.200": true, "192.0.3.1": false, "10.0.0.1": false, "::2": false} {
		if got := st.plaintextAllowed(mustAddr(t, addr)); got != want {
			t.Errorf("plaintextAllowed(%s) = %v, want %v", addr, got, want)
		}
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
