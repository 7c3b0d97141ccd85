package tlsauto

import (
	"strings"
	"testing"

	"github.com/postie/postie/internal/testutil"
)

// acmeConfig is a config for the Manager under test against p.
func acmeConfig(t testing.TB, p *testutil.Pebble, hostname string) Config {
	cfg := DefaultConfig()
	cfg.Hostname = hostname
	cfg.Domains = []string{strings.SplitN(hostname, ".", 2)[1]}
	cfg.DataDir = t.TempDir()
	cfg.AgreeTerms = true
	cfg.ACMEDirectory = p.URL()
	cfg.ACMECARoot = p.CARootFile
	cfg.HTTPReadTimeout.UnmarshalText([]byte("5s"))
	return cfg
}
