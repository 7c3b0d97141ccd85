package tlsauto

import (
	"reflect"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/postie/postie/internal/units"
)

func validACME() Config {
	c := DefaultConfig()
	c.Hostname, c.Domains, c.DataDir = "mail.example.com", []string{"example.com"}, "/var/lib/postie"
	c.AgreeTerms = true
	return c
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if c.Mode != ModeACME || c.ACMEDirectory != LetsEncryptProduction || c.HTTPListen != ":80" || c.HTTPSListen != ":443" || c.MTASTSMode != MTASTSOff {
		t.Errorf("defaults: %+v", c)
	}
	// The defaults need only what main fills in and the owner's consent.
	if v := validACME(); v.Validate() != nil {
		err := v.Validate()
		t.Errorf("valid config: %v", err)
	}
	c.Hostname, c.Domains, c.DataDir = "mail.example.com", []string{"example.com"}, "/d"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "tls.agree_terms") {
		t.Errorf("acme without agreement: %v", err)
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Config)
		want []string // substrings of the error; nil: valid
	}{
		{"bad mode", func(c *Config) { c.Mode = "letsencrypt" }, []string{`tls.mode: "letsencrypt"`}},
		{"files without files", func(c *Config) { c.Mode = ModeFiles }, []string{"tls.cert_file: missing", "tls.key_file: missing"}},
		{"files keys in acme mode", func(c *Config) { c.CertFile = "/x.pem" }, []string{"only used with mode = \"files\""}},
		{"http directory", func(c *Config) { c.ACMEDirectory = "http://ca.example/dir" }, []string{"tls.acme_directory", "https://"}},
		{"not a URL", func(c *Config) { c.ACMEDirectory = "ca" }, []string{"tls.acme_directory"}},
		{"staging with another CA", func(c *Config) { c.ACMEStaging = true; c.ACMEDirectory = "https://ca.example/dir" }, []string{"tls.acme_staging"}},
		{"staging", func(c *Config) { c.ACMEStaging = true }, nil},
		{"no challenge listener", func(c *Config) { c.HTTPListen, c.HTTPSListen = "", "" }, []string{"no ACME challenge can be answered"}},
		{"only TLS-ALPN", func(c *Config) { c.HTTPListen = "" }, nil},
		{"localhost in acme", func(c *Config) { c.Hostname = "localhost" }, []string{"not a public DNS name"}},
		{"IP in acme", func(c *Config) { c.Hostname = "192.0.2.1" }, []string{"not a public DNS name"}},
		{"private extra name", func(c *Config) { c.ExtraNames = []string{"autoconfig.lan"} }, []string{"autoconfig.lan"}},
		{"localhost self-signed", func(c *Config) { c.Mode = ModeSelfSigned; c.Hostname = "localhost" }, nil},
		{"bad email", func(c *Config) { c.ACMEEmail = "postmaster" }, []string{"tls.acme_email"}},
		{"bad listen", func(c *Config) { c.HTTPListen = "80" }, []string{"tls.http_listen"}},
		{"mta-sts mode", func(c *Config) { c.MTASTSMode = "strict" }, []string{"tls.mta_sts_mode"}},
		{"mta-sts without https", func(c *Config) { c.MTASTSMode = MTASTSEnforce; c.HTTPSListen = "" }, []string{"https_listen is off"}},
		{"mta-sts self-signed", func(c *Config) { c.Mode = ModeSelfSigned; c.MTASTSMode = MTASTSTesting }, []string{"trusted certificate"}},
		{"mta-sts max_age too long", func(c *Config) { c.MTASTSMode = MTASTSEnforce; c.MTASTSMaxAge.UnmarshalText([]byte("10000h")) }, []string{"tls.mta_sts_max_age"}},
		{"mta-sts max_age fraction", func(c *Config) { c.MTASTSMaxAge.UnmarshalText([]byte("1.5s")) }, []string{"tls.mta_sts_max_age"}},
		{"zero timeout", func(c *Config) { c.HTTPReadTimeout = units.DurationOf(0) }, []string{"tls.http_read_timeout"}},
		{"tiny header cap", func(c *Config) { c.HTTPMaxHeaderBytes = 10 }, []string{"tls.http_max_header_bytes"}},
		{"per-ip above total", func(c *Config) { c.HTTPMaxConnections, c.HTTPMaxConnectionsPerIP = 4, 5 }, []string{"tls.http_max_connections_per_ip"}},
		{"no connections", func(c *Config) { c.HTTPMaxConnections = 0 }, []string{"tls.http_max_connections:"}},
		{"several at once", func(c *Config) { c.AgreeTerms = false; c.HTTPIdleTimeout = units.DurationOf(0) }, []string{"tls.agree_terms", "tls.http_idle_timeout"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validACME()
			tc.mod(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestConfigTOML decodes a [tls] table the way main does (unknown keys are
// errors) and checks that every key lands in its field and that the fields
// main fills in cannot be set from the file.
func TestConfigTOML(t *testing.T) {
	const doc = `
mode = "files"
cert_file = "/etc/ssl/mail.pem"
key_file = "/etc/ssl/mail.key"
acme_directory = "https://ca.example/dir"
acme_staging = false
acme_ca_root = "/etc/ssl/ca.pem"
acme_email = "me@example.com"
agree_terms = true
http_listen = ""
https_listen = "[::]:443"
mta_sts_mode = "enforce"
mta_sts_max_age = "720h"
http_read_timeout = "5s"
http_write_timeout = "6s"
http_idle_timeout = "7s"
http_max_header_bytes = "16KiB"
http_max_connections = 100
http_max_connections_per_ip = 10
`
	c := DefaultConfig()
	dec := toml.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	want := Config{
		Mode: "files", CertFile: "/etc/ssl/mail.pem", KeyFile: "/etc/ssl/mail.key",
		ACMEDirectory: "https://ca.example/dir", ACMECARoot: "/etc/ssl/ca.pem", ACMEEmail: "me@example.com", AgreeTerms: true,
		HTTPListen: "", HTTPSListen: "[::]:443", MTASTSMode: "enforce",
		HTTPMaxHeaderBytes: 16 << 10, HTTPMaxConnections: 100, HTTPMaxConnectionsPerIP: 10,
	}
	want.MTASTSMaxAge.UnmarshalText([]byte("720h"))
	want.HTTPReadTimeout.UnmarshalText([]byte("5s"))
	want.HTTPWriteTimeout.UnmarshalText([]byte("6s"))
	want.HTTPIdleTimeout.UnmarshalText([]byte("7s"))
	if !reflect.DeepEqual(c, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", c, want)
	}
	for _, key := range []string{"hostname", "domains", "data_dir", "extra_names", "Hostname"} {
		dec := toml.NewDecoder(strings.NewReader(key + ` = "x"`))
		dec.DisallowUnknownFields()
		if err := dec.Decode(new(Config)); err == nil {
			t.Errorf("%s can be set in [tls]", key)
		}
	}
}

func TestMTASTSPolicyText(t *testing.T) {
	c := validACME()
	if c.MTASTSPolicy() != nil || c.MTASTSPolicyID() != "" {
		t.Error("a policy while MTA-STS is off")
	}
	c.MTASTSMode = MTASTSEnforce
	c.MTASTSMaxAge.UnmarshalText([]byte("168h"))
	c.Hostname = "Mail.Example.com."
	if got, want := string(c.MTASTSPolicy()), "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmax_age: 604800\r\n"; got != want {
		t.Errorf("policy %q, want %q", got, want)
	}
	id := c.MTASTSPolicyID()
	if len(id) != 20 || c.MTASTSPolicyID() != id {
		t.Errorf("id %q not stable or not 20 characters", id)
	}
	// Any change of the policy changes the id (RFC 8461 §3.1).
	for _, mod := range []func(*Config){
		func(c *Config) { c.MTASTSMode = MTASTSTesting },
		func(c *Config) { c.MTASTSMaxAge.UnmarshalText([]byte("24h")) },
		func(c *Config) { c.Hostname = "mx2.example.com" },
	} {
		d := c
		mod(&d)
		if d.MTASTSPolicyID() == id {
			t.Errorf("policy %q has the id of %q", d.MTASTSPolicy(), c.MTASTSPolicy())
		}
	}
	// The domains do not change the policy: every domain shares it.
	d := c
	d.Domains = []string{"example.com", "example.org"}
	if d.MTASTSPolicyID() != id {
		t.Error("the id depends on the domain list")
	}
}

func TestCertNames(t *testing.T) {
	c := validACME()
	c.Domains = []string{"example.com", "Example.org."}
	c.ExtraNames = []string{"autoconfig.example.com", "mail.example.com"}
	if got, want := c.certNames(), []string{"mail.example.com", "autoconfig.example.com"}; !reflect.DeepEqual(got, want) {
		t.Errorf("MTA-STS off: %v, want %v", got, want)
	}
	c.MTASTSMode = MTASTSTesting
	if got, want := c.certNames(), []string{"mail.example.com", "mta-sts.example.com", "mta-sts.example.org", "autoconfig.example.com"}; !reflect.DeepEqual(got, want) {
		t.Errorf("MTA-STS on: %v, want %v", got, want)
	}
}

func TestDirectory(t *testing.T) {
	c := validACME()
	if c.directory() != LetsEncryptProduction {
		t.Error(c.directory())
	}
	c.ACMEStaging = true
	if c.directory() != LetsEncryptStaging {
		t.Error(c.directory())
	}
}
